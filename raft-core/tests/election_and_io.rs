//! Elections, and proposals and linearizable reads from every node, checked for
//! linearizability.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use raft_core::testing::cluster::{seed, test_config, TestCluster};
use raft_core::testing::kv::KvClient;
use raft_core::testing::linearizability::{assert_linearizable, History, KvOp, KvOutput};

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

async fn io_from_every_node(n: usize) {
    init_tracing();
    let seed = seed(&format!("io_from_every_node({n})"));
    let cluster = TestCluster::start(n, test_config(), seed).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await;
    let history = History::new();
    // A write through each node, read back through each node.
    for id in 1..=n as u64 {
        let client = KvClient::new(id, history.clone());
        let mailbox = cluster.mailbox(id);
        let key = format!("from-{id}");
        let out = client
            .run(
                &mailbox,
                KvOp::Put {
                    key: key.clone(),
                    value: format!("v{id}"),
                },
            )
            .await
            .expect("put through any node");
        assert_eq!(out, KvOutput::Done);
        for reader in 1..=n as u64 {
            let got = KvClient::new(100 + reader, history.clone())
                .run(&cluster.mailbox(reader), KvOp::Get { key: key.clone() })
                .await
                .expect("linearizable read on any node");
            assert_eq!(
                got,
                KvOutput::Value(Some(format!("v{id}"))),
                "node {reader} reads {key}"
            );
        }
    }
    let stats = cluster
        .run_workload(&history, 8, 4, Duration::from_secs(2), seed)
        .await;
    assert!(stats.ok > 50, "the workload made progress: {stats:?}");
    assert_eq!(
        stats.failed + stats.unknown,
        0,
        "no faults, no failures: {stats:?}"
    );
    assert_eq!(
        cluster.wait_for_leader(Duration::from_secs(5)).await,
        leader,
        "no spurious election"
    );
    assert_linearizable(&history);
    let metrics = cluster.mailbox(leader).metrics();
    assert!(
        metrics.proposals > 0 && metrics.applied_entries >= metrics.proposals,
        "{metrics:?}"
    );
    assert!(metrics.log_writes > 0 && metrics.log_write_seconds.count == metrics.log_writes);
    assert!(metrics.proposal_seconds.count > 0 && metrics.read_seconds.count > 0);
    assert!(metrics
        .render_prometheus("raftkit")
        .contains("raftkit_proposals_total"));
    cluster.wait_converged(Duration::from_secs(5)).await;
    cluster.assert_no_pending(Duration::from_secs(3)).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_and_serve_every_node() {
    io_from_every_node(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_elect_and_serve_every_node() {
    io_from_every_node(5).await;
}
