//! Partitions: an isolated old leader acknowledges no write and serves no linearizable read;
//! the majority side goes on; healing converges.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use raft_core::testing::cluster::{seed, test_config, TestCluster};
use raft_core::testing::kv::{encode_op, KvClient};
use raft_core::testing::linearizability::{assert_linearizable, History, KvOp};
use raft_core::ReadConsistency;
use support::init_tracing;

const KEYS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_acknowledges_nothing() {
    init_tracing();
    let seed = seed("isolated_leader_acknowledges_nothing");
    let cluster = TestCluster::start(3, test_config(), seed).await;
    let history = History::new();
    cluster
        .run_workload(&history, 4, KEYS, Duration::from_millis(500), seed)
        .await;
    let old = cluster.wait_for_leader(Duration::from_secs(5)).await;
    cluster.faults().isolate(old);

    // Through the isolated node: no write is acknowledged, no linearizable or lease read
    // is served, while the majority elects a new leader and accepts writes.
    let isolated = cluster
        .mailbox(old)
        .with_timeout(Duration::from_millis(1500));
    let client = KvClient::new(1000, history.clone());
    let write = client
        .run(
            &isolated,
            KvOp::Put {
                key: "k0".into(),
                value: "from-isolated".into(),
            },
        )
        .await;
    assert!(
        write.is_err(),
        "isolated old leader acknowledged a write: {write:?}"
    );
    let read = client.run(&isolated, KvOp::Get { key: "k0".into() }).await;
    assert!(
        read.is_err(),
        "isolated old leader served a linearizable read: {read:?}"
    );
    let lease = isolated
        .query_with(
            encode_op(&KvOp::Get { key: "k0".into() }),
            ReadConsistency::Lease,
        )
        .await;
    assert!(
        lease.is_err(),
        "isolated old leader served a lease read: {lease:?}"
    );

    let majority: Vec<u64> = (1..=3).filter(|&id| id != old).collect();
    let new = cluster
        .wait_for_leader_among(&majority, Duration::from_secs(5))
        .await;
    let majority_client = KvClient::new(1001, history.clone());
    majority_client
        .run(
            &cluster.mailbox(new),
            KvOp::Put {
                key: "k1".into(),
                value: "majority".into(),
            },
        )
        .await
        .expect("the majority accepts writes");

    cluster.faults().heal();
    cluster.wait_for_leader(Duration::from_secs(5)).await;
    cluster.wait_converged(Duration::from_secs(10)).await;
    cluster.final_reads(&history, KEYS).await;
    assert_linearizable(&history);
    cluster.assert_replicas_agree(KEYS).await;
    cluster.assert_no_pending(Duration::from_secs(5)).await;
    cluster.shutdown().await;
}

/// Five nodes split 2/3 with the leader in the minority, under load from every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_majority_split_under_load() {
    init_tracing();
    let seed = seed("minority_majority_split_under_load");
    let cluster = TestCluster::start(5, test_config(), seed).await;
    let history = History::new();
    let load = {
        let (cluster, history) = (cluster.clone(), history.clone());
        tokio::spawn(async move {
            cluster
                .run_workload(&history, 8, KEYS, Duration::from_secs(5), seed)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await;
    let other = (1..=5).find(|&id| id != leader).expect("another node");
    let minority = [leader, other];
    let majority: Vec<u64> = (1..=5).filter(|id| !minority.contains(id)).collect();
    cluster.faults().partition(&[&minority, &majority]);
    let new = cluster
        .wait_for_leader_among(&majority, Duration::from_secs(5))
        .await;
    assert!(majority.contains(&new));
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.faults().heal();
    let stats = load.await.expect("workload");
    eprintln!("workload: {stats:?}, {} operations", history.len());
    assert!(stats.ok > 20, "{stats:?}");
    cluster.wait_for_leader(Duration::from_secs(5)).await;
    cluster.wait_converged(Duration::from_secs(10)).await;
    cluster.final_reads(&history, KEYS).await;
    assert_linearizable(&history);
    cluster.assert_replicas_agree(KEYS).await;
    cluster.assert_no_pending(Duration::from_secs(5)).await;
    cluster.shutdown().await;
}
