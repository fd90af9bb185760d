//! Membership: join under load, leave from a follower and from the leader, transfer
//! leadership, remove and re-join under the same id.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use raft_core::testing::cluster::{seed, test_config, TestCluster};
use raft_core::testing::linearizability::{assert_linearizable, History};
use raft_core::Role;
use support::init_tracing;

const KEYS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_two_nodes_under_load() {
    init_tracing();
    let seed = seed("join_two_nodes_under_load");
    let cluster = TestCluster::start(3, test_config(), seed).await;
    let history = History::new();
    let load = {
        let (cluster, history) = (cluster.clone(), history.clone());
        tokio::spawn(async move {
            cluster
                .run_workload(&history, 6, KEYS, Duration::from_secs(4), seed)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.add_node(4).await;
    cluster.add_node(5).await;
    cluster
        .wait_for_voters(&[1, 2, 3, 4, 5], Duration::from_secs(15))
        .await;
    let stats = load.await.expect("workload");
    eprintln!("workload: {stats:?}");
    assert!(stats.ok > 20, "{stats:?}");
    cluster.wait_converged(Duration::from_secs(10)).await;
    cluster.final_reads(&history, KEYS).await;
    assert_linearizable(&history);
    cluster.assert_replicas_agree(KEYS).await;
    cluster.assert_no_pending(Duration::from_secs(5)).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_from_follower_and_from_leader() {
    init_tracing();
    let seed = seed("leave_from_follower_and_from_leader");
    let cluster = TestCluster::start(5, test_config(), seed).await;
    let history = History::new();
    let load = {
        let (cluster, history) = (cluster.clone(), history.clone());
        tokio::spawn(async move {
            cluster
                .run_workload(&history, 4, KEYS, Duration::from_secs(4), seed)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await;
    let follower = (1..=5).find(|&id| id != leader).expect("a follower");
    cluster
        .mailbox(follower)
        .leave()
        .await
        .expect("follower leaves");
    let mut voters: Vec<u64> = (1..=5).filter(|&id| id != follower).collect();
    cluster
        .wait_for_voters(&voters, Duration::from_secs(10))
        .await;

    cluster
        .mailbox(leader)
        .leave()
        .await
        .expect("leader leaves");
    voters.retain(|&id| id != leader);
    cluster
        .wait_for_voters(&voters, Duration::from_secs(10))
        .await;
    // Both left nodes stopped by themselves, cleanly.
    for id in [follower, leader] {
        let exit = cluster.reap(id, Duration::from_secs(5)).await;
        assert!(
            matches!(exit, Some(Ok(()))),
            "node {id} after leaving: {exit:?}"
        );
    }
    let stats = load.await.expect("workload");
    assert!(stats.ok > 20, "{stats:?}");
    let new_leader = cluster.wait_for_leader(Duration::from_secs(5)).await;
    assert!(voters.contains(&new_leader));
    cluster.wait_converged(Duration::from_secs(10)).await;
    cluster.final_reads(&history, KEYS).await;
    assert_linearizable(&history);
    cluster.assert_replicas_agree(KEYS).await;
    cluster.assert_no_pending(Duration::from_secs(5)).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_leader_to_each_follower() {
    init_tracing();
    let seed = seed("transfer_leader_to_each_follower");
    let cluster = TestCluster::start(3, test_config(), seed).await;
    let history = History::new();
    let load = {
        let (cluster, history) = (cluster.clone(), history.clone());
        tokio::spawn(async move {
            cluster
                .run_workload(&history, 4, KEYS, Duration::from_secs(3), seed)
                .await
        })
    };
    for target in [2, 3, 1] {
        // Asked through a node that is not the target, so the request is forwarded.
        let via = if target == 1 { 2 } else { 1 };
        cluster
            .mailbox(via)
            .transfer_leader(target)
            .await
            .expect("transfer");
        let status = cluster.mailbox(target).status().await.expect("status");
        assert_eq!(
            status.role,
            Role::Leader,
            "node {target} leads after the transfer"
        );
    }
    let stats = load.await.expect("workload");
    assert!(stats.ok > 20, "{stats:?}");
    cluster.wait_converged(Duration::from_secs(10)).await;
    cluster.final_reads(&history, KEYS).await;
    assert_linearizable(&history);
    cluster.assert_no_pending(Duration::from_secs(5)).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_node_rejoins_with_the_same_id() {
    init_tracing();
    let seed = seed("removed_node_rejoins_with_the_same_id");
    let cluster = TestCluster::start(3, test_config(), seed).await;
    let history = History::new();
    cluster
        .run_workload(&history, 4, KEYS, Duration::from_millis(500), seed)
        .await;
    cluster
        .mailbox(1)
        .remove_node(3)
        .await
        .expect("remove node 3");
    cluster
        .wait_for_voters(&[1, 2], Duration::from_secs(10))
        .await;
    cluster.crash(3).await;
    cluster.wipe(3);
    cluster.add_node(3).await;
    cluster
        .wait_for_voters(&[1, 2, 3], Duration::from_secs(15))
        .await;
    cluster
        .run_workload(&history, 4, KEYS, Duration::from_millis(500), seed + 1)
        .await;
    cluster.wait_converged(Duration::from_secs(10)).await;
    cluster.final_reads(&history, KEYS).await;
    assert_linearizable(&history);
    cluster.assert_replicas_agree(KEYS).await;
    cluster.assert_no_pending(Duration::from_secs(5)).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_add_and_promote() {
    init_tracing();
    let seed = seed("learner_add_and_promote");
    let cluster = TestCluster::start(3, test_config(), seed).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await;
    // A learner that stays a learner until promoted.
    cluster
        .mailbox(leader)
        .add_learner(4, TestCluster::addr(4))
        .await
        .expect("add learner");
    cluster.add_node(4).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = cluster.mailbox(leader).status().await.expect("status");
    assert_eq!(status.learners, vec![4]);
    assert_eq!(
        cluster.mailbox(4).status().await.expect("status").role,
        Role::Learner
    );
    cluster.mailbox(2).promote(4).await.expect("promote");
    cluster
        .wait_for_voters(&[1, 2, 3, 4], Duration::from_secs(10))
        .await;
    cluster.assert_no_pending(Duration::from_secs(5)).await;
    cluster.shutdown().await;
}
