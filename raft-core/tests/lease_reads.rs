//! Lease reads are served without a quorum round trip only while no other node can lead:
//! never for the rest of a term in which a leadership transfer started (the transferee
//! campaigns past the followers' lease), never when check-quorum is off.
//!
//! Each test first shows that a lease read does get served from the lease when it should (an
//! isolated leader answers it), then that it is not in the case under test (the isolated
//! leader must go through a quorum, which it cannot reach).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use raft_core::testing::cluster::{seed, test_config, TestCluster};
use raft_core::testing::kv::encode_op;
use raft_core::testing::linearizability::KvOp;
use raft_core::{Config, ReadConsistency};
use support::init_tracing;

/// Slower ticks than the other tests: a 400 ms lease leaves room on a busy machine between
/// establishing it and reading under it.
fn lease_config() -> Config {
    Config {
        tick_interval: Duration::from_millis(50),
        ..test_config()
    }
}

fn get() -> Vec<u8> {
    encode_op(&KvOp::Get { key: "k".into() })
}

/// A linearizable read through `leader` (it renews the lease), then the leader is cut off
/// and asked for a lease read at once.
async fn lease_read_when_isolated(cluster: &TestCluster, leader: u64) -> bool {
    let mailbox = cluster.mailbox(leader);
    mailbox.query(get()).await.unwrap();
    cluster.faults().isolate(leader);
    let answer = mailbox
        .with_timeout(Duration::from_millis(150))
        .query_with(get(), ReadConsistency::Lease)
        .await;
    cluster.faults().heal();
    answer.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_lease_for_the_rest_of_a_term_with_a_transfer() {
    init_tracing();
    let cluster = TestCluster::start(3, lease_config(), seed("lease_transfer")).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    assert!(
        lease_read_when_isolated(&cluster, leader).await,
        "control: an isolated leader serves a lease read from its lease"
    );
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let term = cluster.mailbox(leader).status().await.unwrap().term;

    // A transfer to a node that cannot hear it starts, then raft-rs aborts it after an
    // election timeout; the leader keeps leading in the same term.
    let target = (1..=3).find(|&id| id != leader).unwrap();
    cluster.faults().isolate(target);
    let transfer = cluster
        .mailbox(leader)
        .with_timeout(Duration::from_millis(100))
        .transfer_leader(target)
        .await;
    assert!(transfer.is_err(), "the transfer cannot complete");
    tokio::time::sleep(cluster.config().tick_interval * 25).await;
    cluster.faults().heal();
    let status = cluster.mailbox(leader).status().await.unwrap();
    assert_eq!(
        (status.leader_id, status.term),
        (Some(leader), term),
        "still leading in the same term"
    );

    assert!(
        !lease_read_when_isolated(&cluster, leader).await,
        "no lease read in a term in which a transfer started"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_lease_without_check_quorum() {
    init_tracing();
    let config = Config {
        check_quorum: false,
        ..lease_config()
    };
    let cluster = TestCluster::start(3, config, seed("lease_no_check_quorum")).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    assert!(
        !lease_read_when_isolated(&cluster, leader).await,
        "without check-quorum a leader has no lease"
    );
    // Linearizable reads still work.
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    cluster.mailbox(leader).query(get()).await.unwrap();
    cluster.shutdown().await;
}
