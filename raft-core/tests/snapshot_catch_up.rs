//! A node far behind catches up through a chunked snapshot after the log was compacted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use raft_core::testing::cluster::{seed, test_config, TestCluster};
use raft_core::testing::kv::padding;
use raft_core::testing::linearizability::{assert_linearizable, History};
use raft_core::Config;
use support::init_tracing;

const KEYS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_node_catches_up_through_a_chunked_snapshot() {
    init_tracing();
    let seed = seed("lagging_node_catches_up_through_a_chunked_snapshot");
    let config = Config {
        snapshot_threshold: 50,
        snapshot_log_tail: 10,
        // Many chunks per snapshot: the snapshot below is tens of KiB.
        snapshot_chunk_size: 1024,
        ..test_config()
    };
    let cluster = TestCluster::start(3, config, seed).await;
    let history = History::new();
    cluster
        .run_workload(&history, 4, KEYS, Duration::from_millis(300), seed)
        .await;
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await;
    let lagging = (1..=3).find(|&id| id != leader).expect("a follower");
    let before = cluster.mailbox(lagging).status().await.expect("status");
    cluster.crash(lagging).await;

    // Keys k100.. hold big values so the snapshot needs many chunks.
    let mailbox = cluster.mailbox(leader);
    for i in 0..300 {
        mailbox
            .send_proposal(padding(200))
            .await
            .expect("padding write");
        if i % 10 == 0 {
            let key = format!("k{}", 100 + i / 10);
            let op = raft_core::testing::linearizability::KvOp::Put {
                key,
                value: "v".repeat(1000),
            };
            mailbox
                .send_proposal(raft_core::testing::kv::encode_op(&op))
                .await
                .expect("big write");
        }
    }
    let leader_status = mailbox.status().await.expect("status");
    assert!(
        leader_status.first_log_index > before.last_log_index + 1,
        "the leader compacted past the lagging node: first {} vs lagging last {}",
        leader_status.first_log_index,
        before.last_log_index
    );

    cluster.restart(lagging).await;
    cluster.wait_converged(Duration::from_secs(15)).await;
    let status = cluster.mailbox(lagging).status().await.expect("status");
    assert!(
        status.snapshot_index > before.last_log_index,
        "the lagging node installed a snapshot: {status:?}"
    );
    cluster
        .run_workload(&history, 4, KEYS, Duration::from_millis(300), seed + 1)
        .await;
    cluster.wait_converged(Duration::from_secs(10)).await;
    cluster.final_reads(&history, KEYS).await;
    assert_linearizable(&history);
    // Every replica agrees on the big keys too.
    cluster.assert_replicas_agree(KEYS).await;
    for k in 100..130 {
        let get = raft_core::testing::linearizability::KvOp::Get {
            key: format!("k{k}"),
        };
        let bytes = cluster
            .mailbox(lagging)
            .query_with(
                raft_core::testing::kv::encode_op(&get),
                raft_core::ReadConsistency::Stale,
            )
            .await
            .expect("stale read");
        assert_eq!(
            raft_core::testing::kv::decode_value(&bytes).expect("value"),
            Some("v".repeat(1000)),
            "k{k} on the caught-up node"
        );
    }
    cluster.assert_no_pending(Duration::from_secs(5)).await;
    cluster.shutdown().await;
}
