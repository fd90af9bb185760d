//! Raft clusters over real QUIC on loopback: the same cluster tests as the gRPC transport
//! (writes and reads through every node, leader stopped and restarted, a snapshot bigger than
//! one chunk), the fault-injecting wrapper over QUIC, a peer from another CA, certificates used
//! to speak for another node, and garbage.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{init_tracing, quic, Certs};
use raft_core::testing::cluster::{seed, test_config, TestCluster};
use raft_core::testing::impersonation::{assert_impersonation_refused, Impostors};
use raft_core::testing::kv::{decode_value, encode_op, KvStore};
use raft_core::testing::linearizability::{assert_linearizable, History, KvOp};
use raft_core::testing::transport_conformance::{
    eventually, free_udp_addr, status_request, CALL_TIMEOUT,
};
use raft_core::wire::{self, response};
use raft_core::{Config, MemLogStorage, Raft, Transport, TransportError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn put(key: &str, value: &str) -> Vec<u8> {
    encode_op(&KvOp::Put {
        key: key.into(),
        value: value.into(),
    })
}

fn get(key: &str) -> Vec<u8> {
    encode_op(&KvOp::Get { key: key.into() })
}

/// Nodes `1..=n` over QUIC with certificates from `certs`.
async fn start(n: usize, config: Config, seed: u64, certs: &Arc<Certs>) -> Arc<TestCluster> {
    TestCluster::start_over(n, config, seed, quic(certs.clone())).await
}

fn is_unreachable(e: &TransportError) -> bool {
    matches!(e, TransportError::Unreachable { .. })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_serve_writes_and_reads_from_every_node() {
    init_tracing();
    let certs = Arc::new(Certs::new(&[1, 2, 3]));
    let cluster = start(3, test_config(), 0, &certs).await;
    for id in 1..=3u64 {
        for i in 0..5 {
            cluster
                .mailbox(id)
                .send_proposal(put(&format!("n{id}-{i}"), &format!("v{i}")))
                .await
                .unwrap();
        }
    }
    // Linearizable reads through every node see every write, whichever node took it.
    for reader in 1..=3u64 {
        for writer in 1..=3u64 {
            let bytes = cluster
                .mailbox(reader)
                .query(get(&format!("n{writer}-4")))
                .await
                .unwrap();
            assert_eq!(decode_value(&bytes).unwrap().as_deref(), Some("v4"));
        }
    }
    cluster.wait_converged(Duration::from_secs(5)).await;
    for id in 1..=3u64 {
        assert_eq!(cluster.stale_read(id, "n2-3").await.as_deref(), Some("v3"));
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_leader_is_replaced_and_rejoins_when_restarted() {
    init_tracing();
    let certs = Arc::new(Certs::new(&[1, 2, 3]));
    let cluster = start(3, test_config(), 0, &certs).await;
    let old = cluster.wait_for_leader(Duration::from_secs(5)).await;
    cluster
        .mailbox(old)
        .send_proposal(put("before", "1"))
        .await
        .unwrap();

    cluster.crash(old).await;
    let rest: Vec<u64> = (1..=3).filter(|&id| id != old).collect();
    let new = cluster
        .wait_for_leader_among(&rest, Duration::from_secs(10))
        .await;
    assert_ne!(new, old);
    for &id in &rest {
        cluster
            .mailbox(id)
            .send_proposal(put(&format!("during-{id}"), "2"))
            .await
            .unwrap();
    }

    let restarted = Instant::now();
    cluster.restart(old).await;
    cluster
        .wait_for_leader_among(&[1, 2, 3], Duration::from_secs(10))
        .await;
    cluster.wait_converged(Duration::from_secs(10)).await;
    eprintln!("restarted leader caught up in {:?}", restarted.elapsed());
    for &id in &rest {
        assert_eq!(
            cluster
                .stale_read(old, &format!("during-{id}"))
                .await
                .as_deref(),
            Some("2")
        );
    }
    // And it serves writes and linearizable reads again.
    cluster
        .mailbox(old)
        .send_proposal(put("after", "3"))
        .await
        .unwrap();
    for id in 1..=3u64 {
        let bytes = cluster.mailbox(id).query(get("after")).await.unwrap();
        assert_eq!(decode_value(&bytes).unwrap().as_deref(), Some("3"));
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_node_catches_up_from_a_snapshot_of_many_chunks() {
    init_tracing();
    let config = Config {
        snapshot_chunk_size: 1024,
        snapshot_threshold: 50,
        snapshot_log_tail: 10,
        ..test_config()
    };
    let certs = Arc::new(Certs::new(&[1, 2, 3]));
    let cluster = start(3, config, 0, &certs).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await;
    let lagging = if leader == 3 { 2 } else { 3 };
    let before = cluster.statuses().await[&lagging].clone();
    cluster.crash(lagging).await;

    // ~300 keys of 40-byte values: a snapshot of well over ten 1 KiB chunks.
    let value = "x".repeat(40);
    let mailbox = cluster.mailbox(leader);
    let writes: Vec<_> = (0..300)
        .map(|i| {
            let mailbox = mailbox.clone();
            let op = put(&format!("k{i}"), &format!("{i}-{value}"));
            tokio::spawn(async move { mailbox.send_proposal(op).await })
        })
        .collect();
    for w in writes {
        w.await.unwrap().unwrap();
    }
    let leader_status = eventually("the leader compacts", Duration::from_secs(10), || {
        let cluster = cluster.clone();
        async move {
            let s = cluster
                .statuses()
                .await
                .remove(&leader)
                .ok_or("no status")?;
            if s.first_log_index > before.last_log_index + 1 {
                Ok(s)
            } else {
                Err(format!("first log index {}", s.first_log_index))
            }
        }
    })
    .await;
    eprintln!(
        "leader snapshot at {}, lagging node stopped at {}",
        leader_status.snapshot_index, before.last_log_index
    );

    cluster.restart(lagging).await;
    cluster.wait_converged(Duration::from_secs(15)).await;
    let after = cluster.statuses().await[&lagging].clone();
    assert!(
        after.snapshot_index > before.snapshot_index
            && after.snapshot_index > before.last_log_index,
        "no snapshot installed: before {before:?}, after {after:?}"
    );
    for i in [0, 150, 299] {
        assert_eq!(
            cluster.stale_read(lagging, &format!("k{i}")).await,
            Some(format!("{i}-{value}"))
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_stay_linearizable_with_faults_injected_over_quic() {
    init_tracing();
    let seed = seed("histories_stay_linearizable_with_faults_injected_over_quic");
    let certs = Arc::new(Certs::new(&[1, 2, 3]));
    let cluster = start(3, test_config(), seed, &certs).await;
    let faults = cluster.faults();
    let history = History::new();

    faults.set_drop_rate(0.05);
    faults.set_duplicate_rate(0.05);
    faults.set_reorder_rate(0.02);
    faults.set_delay(Duration::from_millis(0), Duration::from_millis(5));
    let load = {
        let (cluster, history) = (cluster.clone(), history.clone());
        tokio::spawn(async move {
            cluster
                .run_workload(&history, 4, 3, Duration::from_secs(4), seed)
                .await
        })
    };
    // Cut the leader off for a while in the middle.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    faults.isolate(leader);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    faults.heal();
    let stats = load.await.unwrap();
    faults.clear();

    // Final linearizable reads, so a lost acknowledged write would show.
    cluster.final_reads(&history, 3).await;
    eprintln!("{stats:?} of {} operations", history.len());
    assert!(stats.ok > 20, "too few operations succeeded: {stats:?}");
    assert_linearizable(&history);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_a_certificate_from_another_ca_is_refused() {
    init_tracing();
    let certs = Arc::new(Certs::new(&[1]));
    let cluster = start(1, test_config(), 0, &certs).await;
    let addr1 = cluster.addr(1);
    let rogue_certs = Certs::new(&[4]);
    let request = status_request();

    // A node of another CA trusts neither the cluster's servers nor they its certificate.
    let rogue = rogue_certs.transport(4);
    let e = rogue
        .call(&addr1, request.clone(), CALL_TIMEOUT)
        .await
        .unwrap_err();
    assert!(is_unreachable(&e), "{e}");
    let batch = wire::RaftBatch {
        cluster_id: 0,
        from: 4,
        to: 1,
        messages: vec![],
        from_addr: String::new(),
    };
    assert!(rogue.send(&addr1, batch.clone()).await.is_err());

    // An impostor that trusts the cluster CA but holds a certificate from another CA: the
    // server refuses it during the handshake.
    let impostor = raft_transport_quic::QuicTransport::new(raft_transport_quic::TlsConfig::mutual(
        certs.certs.ca.clone(),
        rogue_certs.tls(4).cert,
        rogue_certs.tls(4).key,
    ))
    .unwrap();
    let e = impostor
        .call(&addr1, request.clone(), CALL_TIMEOUT)
        .await
        .unwrap_err();
    assert!(is_unreachable(&e), "{e}");
    // (Its raft stream may look open for a round trip before the refusal arrives.)
    eventually("the impostor's sends fail", Duration::from_secs(5), || {
        let impostor = impostor.clone();
        let addr1 = addr1.clone();
        let batch = batch.clone();
        async move {
            match impostor.send(&addr1, batch).await {
                Err(_) => Ok(()),
                Ok(()) => Err("send accepted".to_string()),
            }
        }
    })
    .await;

    // A rogue node cannot join.
    let rogue_addr = free_udp_addr();
    let raft = Raft::builder(4, KvStore::new())
        .raft_addr(rogue_addr.clone())
        .transport(rogue_certs.transport(4))
        .log_storage(MemLogStorage::new())
        .config(test_config())
        .build()
        .unwrap();
    let joining = tokio::spawn(raft.join(1, addr1.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = cluster.statuses().await[&1].clone();
    assert!(
        !status.members.contains_key(&4) && !status.learners.contains(&4),
        "the rogue got in: {status:?}"
    );
    if joining.is_finished() {
        assert!(joining.await.unwrap().is_err());
    } else {
        joining.abort();
    }

    // And the cluster's nodes cannot call a server whose certificate is from another CA.
    let server = rogue_certs.transport(4);
    let rogue_server_addr = free_udp_addr();
    let _guard = server
        .serve(&rogue_server_addr, Arc::new(Nobody))
        .await
        .unwrap();
    let member = certs.transport(1);
    let e = member
        .call(&rogue_server_addr, request.clone(), CALL_TIMEOUT)
        .await
        .unwrap_err();
    assert!(is_unreachable(&e), "{e}");

    // The cluster is unharmed.
    cluster
        .mailbox(1)
        .send_proposal(put("still", "ok"))
        .await
        .unwrap();
    cluster.shutdown().await;
}

/// A handler that must never be reached.
struct Nobody;

#[raft_core::async_trait]
impl raft_core::transport::InboundHandler for Nobody {
    async fn raft_batch(
        &self,
        _: raft_core::transport::PeerIdentity,
        _: wire::RaftBatch,
    ) -> Result<(), raft_core::TransportError> {
        panic!("a refused peer reached the node");
    }
    async fn call(
        &self,
        _: raft_core::transport::PeerIdentity,
        _: wire::Request,
    ) -> wire::Response {
        panic!("a refused peer reached the node");
    }
}

/// A raw QUIC connection with a valid cluster certificate, for writing arbitrary bytes.
async fn raw_connection(tls: &raft_transport_quic::TlsConfig, addr: &str) -> quinn::Connection {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&tls.ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<_> = CertificateDer::pem_file_iter(&tls.cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(&tls.key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![raft_transport_quic::ALPN.to_vec()];
    let config = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(config)).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(config)));
    endpoint
        .connect(addr.parse().unwrap(), "127.0.0.1")
        .unwrap()
        .await
        .unwrap()
}

/// Certificates of the cluster's own CA: a member's used to speak as another member, a client
/// certificate naming no node, and a certificate of a node that is not a member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_certificate_speaks_only_for_its_own_node() {
    init_tracing();
    let certs = Arc::new(Certs::new(&[1, 2, 3]));
    let cluster = start(3, test_config(), 0, &certs).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let mut others = (1..=3u64).filter(|&id| id != leader);
    let (member, victim) = (others.next().unwrap(), others.next().unwrap());
    let dir = certs.dir.path();
    let outsider = raft_transport_quic::dev_certs::generate(dir, &[9]).unwrap();
    let client = raft_transport_quic::dev_certs::generate_client(dir, "anonymous").unwrap();
    let quic = |tls| Arc::new(raft_transport_quic::QuicTransport::new(tls).unwrap());
    let impostors = Impostors {
        member: (member, Arc::new(certs.transport(member))),
        without_node_id: quic(raft_transport_quic::TlsConfig::mutual(
            client.ca,
            client.cert,
            client.key,
        )),
        outsider: (9, quic(outsider.tls(9).unwrap())),
    };
    assert_impersonation_refused(
        &cluster.mailbox(leader),
        &cluster.addr(leader),
        victim,
        &impostors,
    )
    .await;
    cluster
        .mailbox(victim)
        .send_proposal(put("after-impostors", "yes"))
        .await
        .unwrap();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_and_streams_leave_the_cluster_serving() {
    init_tracing();
    let certs = Arc::new(Certs::new(&[1, 2, 3]));
    let cluster = start(3, test_config(), 0, &certs).await;
    let addr1 = cluster.addr(1);
    let mut rng = StdRng::seed_from_u64(seed("garbage"));

    // 1. UDP junk: random bytes, and random bytes dressed as QUIC long-header packets.
    let junk = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..2000 {
        let len = rng.gen_range(1..1400);
        let mut datagram: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        if i % 2 == 0 {
            datagram[0] = 0xC0 | (datagram[0] & 0x0F);
            if len > 5 {
                datagram[1..5].copy_from_slice(&1u32.to_be_bytes());
            }
        }
        junk.send_to(&datagram, &addr1).await.unwrap();
    }

    // 2. Streams with a valid certificate but bad frames. Node 9's certificate is from the
    // cluster CA but node 9 is no member.
    let outsider = raft_transport_quic::dev_certs::generate(certs.dir.path(), &[9]).unwrap();
    let conn = raw_connection(&outsider.tls(9).unwrap(), &addr1).await;
    let huge: Vec<u8> = vec![0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3];
    let undecodable: Vec<u8> = [0, 0, 0, 8].into_iter().chain([0xFF; 8]).collect();
    let truncated: Vec<u8> = vec![0, 0, 1, 0, 1, 2, 3];
    for (what, bytes) in [("huge", &huge), ("undecodable", &undecodable)] {
        // On a raft stream (left open): the server stops the stream.
        let mut uni = conn.open_uni().await.unwrap();
        uni.write_all(bytes).await.unwrap();
        let stopped = tokio::time::timeout(Duration::from_secs(5), uni.stopped())
            .await
            .unwrap();
        assert!(
            matches!(stopped, Ok(Some(_))),
            "a {what} raft frame did not close its stream: {stopped:?}"
        );
    }
    for (what, bytes) in [
        ("huge", &huge),
        ("undecodable", &undecodable),
        ("truncated", &truncated),
    ] {
        // On a call stream: the server resets it without answering.
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(bytes).await.unwrap();
        send.finish().unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1 << 20))
            .await
            .unwrap();
        assert!(
            answer.is_err(),
            "a {what} call frame got an answer: {answer:?}"
        );
    }
    // A truncated raft frame ends its stream too (whether the stop or the end arrives first).
    let mut uni = conn.open_uni().await.unwrap();
    uni.write_all(&truncated).await.unwrap();
    uni.finish().unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), uni.stopped())
        .await
        .unwrap();
    // The same connection still answers a good call.
    let request = prost::Message::encode_to_vec(&status_request());
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&(request.len() as u32).to_be_bytes())
        .await
        .unwrap();
    send.write_all(&request).await.unwrap();
    send.finish().unwrap();
    let answer = recv.read_to_end(1 << 20).await.unwrap();
    let response: wire::Response = prost::Message::decode(&answer[4..]).unwrap();
    assert!(
        matches!(response.kind, Some(response::Kind::Status(_))),
        "{response:?}"
    );

    // 3. The cluster still replicates and serves through the attacked node.
    cluster
        .mailbox(1)
        .send_proposal(put("after-garbage", "yes"))
        .await
        .unwrap();
    for id in 1..=3u64 {
        let bytes = cluster
            .mailbox(id)
            .query(get("after-garbage"))
            .await
            .unwrap();
        assert_eq!(decode_value(&bytes).unwrap().as_deref(), Some("yes"));
    }
    cluster.shutdown().await;
}
