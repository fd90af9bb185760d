//! Raft clusters over real gRPC on loopback: writes and linearizable reads from every node,
//! a leader stopped and restarted, a snapshot of many chunks installed over the wire, the
//! fault-injecting wrapper over gRPC, mutual TLS keeping a foreign node out and every
//! certificate to its own node id, and bad raft input sent to a live node.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft_core::testing::cluster::{seed, test_config, TestCluster};
use raft_core::testing::impersonation::{assert_impersonation_refused, Impostors};
use raft_core::testing::kv::{encode_op, KvClient, KvStore};
use raft_core::testing::linearizability::{assert_linearizable, History, KvOp, KvOutput};
use raft_core::testing::transport_conformance::{free_tcp_addr, status_id, TransportFactory};
use raft_core::transport::{InboundHandler, ServerGuard};
use raft_core::wire::{self, request, RaftBatch};
use raft_core::{async_trait, Raft, Transport, TransportError};
use raft_transport_grpc::{GrpcTransport, TlsConfig};

use support::{init_tracing, mutual_tls, plain, Pki};

fn get(key: &str) -> KvOp {
    KvOp::Get { key: key.into() }
}

fn put(key: &str, value: &str) -> KvOp {
    KvOp::Put {
        key: key.into(),
        value: value.into(),
    }
}

const LONG: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_write_and_read_everywhere_across_a_leader_restart() {
    init_tracing();
    let seed = seed("three_nodes_write_and_read_everywhere_across_a_leader_restart");
    let cluster = TestCluster::start_over(3, test_config(), seed, plain()).await;
    let history = History::new();
    let client = KvClient::new(1000, history.clone());

    // A write through every node, read back linearizably through every node.
    for id in 1..=3u64 {
        let key = format!("k{id}");
        let value = format!("from-{id}");
        cluster
            .run_until_ok(&client, id, put(&key, &value), LONG)
            .await;
        for reader in 1..=3u64 {
            let out = cluster.run_until_ok(&client, reader, get(&key), LONG).await;
            assert_eq!(out, KvOutput::Value(Some(value.clone())), "node {reader}");
        }
    }

    // Concurrent clients on all nodes.
    let stats = cluster
        .run_workload(&history, 4, 8, Duration::from_millis(1500), seed)
        .await;
    assert!(stats.ok > 50, "only {stats:?} operations succeeded");

    // Stop the leader: the others elect a new one and keep serving.
    let old = cluster.wait_for_leader(LONG).await;
    cluster.crash(old).await;
    let new = cluster.wait_for_leader(LONG).await;
    assert_ne!(new, old);
    let survivor = cluster.running()[0];
    cluster
        .run_until_ok(&client, survivor, put("k1", "after-failover"), LONG)
        .await;
    let stats = cluster
        .run_workload(&history, 4, 8, Duration::from_millis(1000), seed + 1)
        .await;
    assert!(stats.ok > 20, "only {stats:?} succeeded after the failover");

    // Restart it from its storage on the same address: it rejoins and serves reads.
    cluster.restart(old).await;
    cluster.wait_for_leader(LONG).await;
    cluster.wait_converged(LONG).await;
    let out = cluster.run_until_ok(&client, old, get("k1"), LONG).await;
    assert_ne!(out, KvOutput::Value(Some("from-1".into())), "stale read");
    for id in 1..=3u64 {
        cluster
            .run_until_ok(
                &client,
                id,
                put(&format!("k{id}"), &format!("last-{id}")),
                LONG,
            )
            .await;
    }
    let stats = cluster
        .run_workload(&history, 4, 8, Duration::from_millis(1000), seed + 2)
        .await;
    assert!(stats.ok > 20, "only {stats:?} succeeded after the restart");
    cluster.final_reads(&history, 8).await;
    cluster.shutdown().await;
    assert_linearizable(&history);
}

/// Counts the snapshot chunks a node sends and how many bytes they carry.
struct CountChunks {
    inner: GrpcTransport,
    chunks: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

#[async_trait]
impl Transport for CountChunks {
    async fn serve(
        &self,
        addr: &str,
        handler: Arc<dyn InboundHandler>,
    ) -> Result<ServerGuard, TransportError> {
        self.inner.serve(addr, handler).await
    }

    async fn send(&self, addr: &str, batch: RaftBatch) -> Result<(), TransportError> {
        self.inner.send(addr, batch).await
    }

    async fn call(
        &self,
        addr: &str,
        request: wire::Request,
        timeout: Duration,
    ) -> Result<wire::Response, TransportError> {
        if let Some(request::Kind::SnapshotChunk(chunk)) = &request.kind {
            self.chunks.fetch_add(1, Ordering::Relaxed);
            self.bytes
                .fetch_add(chunk.data.len() as u64, Ordering::Relaxed);
        }
        self.inner.call(addr, request, timeout).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_many_chunks_is_installed_over_the_wire() {
    init_tracing();
    let config = raft_core::Config {
        snapshot_chunk_size: 1024,
        snapshot_threshold: 50,
        snapshot_log_tail: 10,
        ..test_config()
    };
    let chunks = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let factory = {
        let (chunks, bytes) = (chunks.clone(), bytes.clone());
        TransportFactory::new(
            move |_| {
                Arc::new(CountChunks {
                    inner: GrpcTransport::default(),
                    chunks: chunks.clone(),
                    bytes: bytes.clone(),
                })
            },
            |_| free_tcp_addr(),
        )
    };
    let cluster = TestCluster::start_over(3, config, 0, factory).await;
    let leader = cluster.wait_for_leader(LONG).await;
    let lagging = if leader == 3 { 2 } else { 3 };
    let lagging_last = cluster.statuses().await[&lagging].last_log_index;
    cluster.crash(lagging).await;

    let history = History::new();
    let client = KvClient::new(1, history.clone());
    const KEYS: usize = 300;
    let value = |k: usize| format!("{k:04}-{}", "v".repeat(100));
    for k in 0..KEYS {
        cluster
            .run_until_ok(&client, leader, put(&format!("key{k}"), &value(k)), LONG)
            .await;
    }
    // The leader has compacted past everything the stopped node has: only a snapshot
    // (about 30 KiB, so about 30 chunks of 1 KiB) can bring it back.
    let deadline = Instant::now() + LONG;
    loop {
        let s = cluster.statuses().await;
        if s[&leader].first_log_index > lagging_last + 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the leader never compacted: {s:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let chunks_before = chunks.load(Ordering::Relaxed);
    let bytes_before = bytes.load(Ordering::Relaxed);
    cluster.restart(lagging).await;
    cluster.wait_converged(LONG).await;
    let sent_chunks = chunks.load(Ordering::Relaxed) - chunks_before;
    let sent_bytes = bytes.load(Ordering::Relaxed) - bytes_before;
    eprintln!("snapshot catch-up: {sent_chunks} chunks, {sent_bytes} bytes");
    assert!(
        sent_chunks >= 20 && sent_bytes > 20 * 1024,
        "expected a snapshot of many chunks, saw {sent_chunks} chunks of {sent_bytes} bytes"
    );
    let status = cluster.mailbox(lagging).status().await.unwrap();
    assert!(
        status.snapshot_index > lagging_last,
        "no snapshot installed: {status:#?}"
    );
    for k in 0..KEYS {
        let got = cluster.stale_read(lagging, &format!("key{k}")).await;
        assert_eq!(got, Some(value(k)), "key{k}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fault_injecting_wrapper_works_over_grpc() {
    init_tracing();
    let seed = seed("the_fault_injecting_wrapper_works_over_grpc");
    let cluster = TestCluster::start_over(3, test_config(), seed, plain()).await;
    let faults = cluster.faults();
    let history = History::new();

    faults.set_drop_rate(0.05);
    faults.set_duplicate_rate(0.05);
    faults.set_reorder_rate(0.02);
    faults.set_delay(Duration::ZERO, Duration::from_millis(5));
    let lossy = cluster
        .run_workload(&history, 4, 6, Duration::from_secs(3), seed)
        .await;
    eprintln!("lossy network: {lossy:?}");

    // Cut the leader off for a while, then heal.
    let leader = cluster.wait_for_leader(LONG).await;
    faults.isolate(leader);
    let partitioned = cluster
        .run_workload(&history, 4, 6, Duration::from_secs(2), seed + 1)
        .await;
    faults.clear();
    cluster.wait_for_leader(LONG).await;
    let healed = cluster
        .run_workload(&history, 4, 6, Duration::from_secs(1), seed + 2)
        .await;
    eprintln!("partitioned: {partitioned:?}; healed: {healed:?}");
    assert!(lossy.ok + healed.ok > 20, "too few operations succeeded");
    cluster.final_reads(&history, 6).await;
    cluster.wait_converged(LONG).await;
    cluster.shutdown().await;
    assert_linearizable(&history);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mutual_tls_only_members_get_in_and_only_as_themselves() {
    init_tracing();
    let pki = Arc::new(Pki::new("cluster"));
    let cluster = TestCluster::start_over(3, test_config(), 0, mutual_tls(pki.clone())).await;
    let history = History::new();
    let client = KvClient::new(1, history.clone());
    for id in 1..=3u64 {
        cluster
            .run_until_ok(&client, id, put("k0", &format!("v{id}")), LONG)
            .await;
    }

    // The intruder trusts the cluster CA but its own certificate comes from another CA.
    let rogue_ca = Pki::new("rogue");
    let (cert, key) = rogue_ca.node("node4");
    let rogue = GrpcTransport::with_tls(TlsConfig::mutual(pki.ca(), cert, key)).unwrap();
    let addr1 = cluster.addr(1);

    // Raw transport: neither raft messages nor calls get through.
    for _ in 0..3 {
        let batch = RaftBatch {
            cluster_id: 0,
            from: 4,
            to: 1,
            messages: Vec::new(),
            from_addr: String::new(),
        };
        assert!(rogue.send(&addr1, batch).await.is_err());
        assert!(status_id(&rogue, &addr1).await.is_err());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // As a node: it cannot join, and a proposal through it fails.
    let addr4 = free_tcp_addr();
    let raft = Raft::builder(4, KvStore::new())
        .raft_addr(addr4)
        .transport(rogue.clone())
        .config(test_config())
        .build()
        .unwrap();
    let intruder = raft.mailbox();
    let join = tokio::spawn(raft.join(1, addr1.clone()));
    let proposal = intruder
        .with_timeout(Duration::from_secs(2))
        .send_proposal(encode_op(&put("k0", "intruder")))
        .await;
    assert!(
        proposal.is_err(),
        "a proposal through the intruder succeeded"
    );
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        for (id, s) in cluster.statuses().await {
            assert!(
                !s.members.contains_key(&4) && !s.voters.contains(&4) && !s.learners.contains(&4),
                "node {id} lists the intruder: {s:#?}"
            );
        }
        if join.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if join.is_finished() {
        assert!(
            join.await.unwrap().is_err(),
            "the intruder's join succeeded"
        );
    } else {
        join.abort();
    }

    // Certificates of the cluster's own CA: a member's used to speak as another member, one
    // naming no node, one naming a node that is not a member.
    let leader = cluster.wait_for_leader(LONG).await;
    let mut others = (1..=3u64).filter(|&id| id != leader);
    let (member, victim) = (others.next().unwrap(), others.next().unwrap());
    let tls = |config: TlsConfig| Arc::new(GrpcTransport::with_tls(config).unwrap());
    let impostors = Impostors {
        member: (member, tls(pki.mutual_as("impostor", member))),
        without_node_id: tls(pki.mutual("client")),
        outsider: (9, tls(pki.mutual_as("node9", 9))),
    };
    assert_impersonation_refused(
        &cluster.mailbox(leader),
        &cluster.addr(leader),
        victim,
        &impostors,
    )
    .await;

    // The cluster never saw the intruders' writes, and still takes its own.
    let out = cluster.run_until_ok(&client, 1, get("k0"), LONG).await;
    assert_eq!(out, KvOutput::Value(Some("v3".into())));
    cluster
        .run_until_ok(&client, 2, put("k1", "after"), LONG)
        .await;
    cluster.shutdown().await;
    assert_linearizable(&history);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_raft_input_is_refused_and_the_cluster_keeps_running() {
    init_tracing();
    let cluster = TestCluster::start_over(3, test_config(), 0, plain()).await;
    let history = History::new();
    let client = KvClient::new(1, history.clone());
    let outsider = GrpcTransport::default();
    let addr1 = cluster.addr(1);
    let bad = [
        // Wrong node id.
        RaftBatch {
            cluster_id: 0,
            from: 2,
            to: 42,
            messages: Vec::new(),
            from_addr: cluster.addr(2),
        },
        // Raft messages that do not decode.
        RaftBatch {
            cluster_id: 0,
            from: 2,
            to: 1,
            messages: vec![vec![0xff; 64].into(), b"garbage".to_vec().into()],
            from_addr: cluster.addr(2),
        },
    ];
    for round in 0..20 {
        for batch in &bad {
            outsider.send(&addr1, batch.clone()).await.unwrap();
        }
        cluster
            .run_until_ok(&client, 1, put("k0", &format!("v{round}")), LONG)
            .await;
    }
    let out = cluster.run_until_ok(&client, 2, get("k0"), LONG).await;
    assert_eq!(out, KvOutput::Value(Some("v19".into())));
    assert_eq!(cluster.running(), vec![1, 2, 3]);
    cluster.shutdown().await;
    assert_linearizable(&history);
}
