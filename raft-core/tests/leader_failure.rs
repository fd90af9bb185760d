//! The leader stops: a new one is elected within the election timeout and no acknowledged
//! write is lost.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use raft_core::testing::cluster::{seed, test_config, TestCluster};
use raft_core::testing::linearizability::{assert_linearizable, History};
use support::init_tracing;

const KEYS: usize = 4;

async fn leader_crash(n: usize) {
    init_tracing();
    let seed = seed(&format!("leader_crash({n})"));
    let config = test_config();
    let cluster = TestCluster::start(n, config.clone(), seed).await;
    let history = History::new();
    let load = {
        let cluster = cluster.clone();
        let history = history.clone();
        tokio::spawn(async move {
            cluster
                .run_workload(&history, 6, KEYS, Duration::from_secs(4), seed)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    let old = cluster.wait_for_leader(Duration::from_secs(5)).await;
    cluster.crash(old).await;
    let crashed_at = Instant::now();
    let rest: Vec<u64> = cluster.running();
    // Followers notice after at most 2 * election_tick ticks; allow one more election
    // round for a split vote, plus scheduling slack on a loaded machine.
    let bound = config.tick_interval * (4 * config.election_tick as u32) + Duration::from_secs(1);
    let new = cluster.wait_for_leader_among(&rest, bound).await;
    eprintln!(
        "new leader {new} after {:?} (bound {bound:?})",
        crashed_at.elapsed()
    );
    assert_ne!(new, old);
    let stats = load.await.expect("workload");
    assert!(stats.ok > 20, "progress despite the crash: {stats:?}");
    cluster.restart(old).await;
    cluster.wait_converged(Duration::from_secs(10)).await;
    cluster.final_reads(&history, KEYS).await;
    assert_linearizable(&history);
    cluster.assert_replicas_agree(KEYS).await;
    cluster.assert_no_pending(Duration::from_secs(5)).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_crash_three_nodes() {
    leader_crash(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_crash_five_nodes() {
    leader_crash(5).await;
}

/// Crashes and restarts followers and the leader from their storage, one at a time, under
/// load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_and_restart_followers_and_leader() {
    init_tracing();
    let seed = seed("crash_and_restart_followers_and_leader");
    let cluster = TestCluster::start(3, test_config(), seed).await;
    let history = History::new();
    let load = {
        let (cluster, history) = (cluster.clone(), history.clone());
        tokio::spawn(async move {
            cluster
                .run_workload(&history, 6, KEYS, Duration::from_secs(6), seed)
                .await
        })
    };
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let leader = cluster.wait_for_leader(Duration::from_secs(5)).await;
        let victim = if round == 1 {
            leader
        } else {
            *cluster
                .running()
                .iter()
                .find(|&&id| id != leader)
                .expect("a follower")
        };
        cluster.crash(victim).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        cluster.restart(victim).await;
    }
    let stats = load.await.expect("workload");
    assert!(stats.ok > 20, "{stats:?}");
    cluster.wait_converged(Duration::from_secs(10)).await;
    cluster.final_reads(&history, KEYS).await;
    assert_linearizable(&history);
    cluster.assert_replicas_agree(KEYS).await;
    cluster.assert_no_pending(Duration::from_secs(5)).await;
    cluster.shutdown().await;
}

/// Every node crashes at once and restarts from its storage: acknowledged writes survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_crash_and_restart() {
    init_tracing();
    let seed = seed("whole_cluster_crash_and_restart");
    let cluster: Arc<TestCluster> = TestCluster::start(3, test_config(), seed).await;
    let history = History::new();
    cluster
        .run_workload(&history, 4, KEYS, Duration::from_secs(1), seed)
        .await;
    for id in 1..=3 {
        cluster.crash(id).await;
    }
    for id in 1..=3 {
        cluster.restart(id).await;
    }
    cluster.wait_for_leader(Duration::from_secs(5)).await;
    cluster
        .run_workload(&history, 4, KEYS, Duration::from_secs(1), seed + 1)
        .await;
    cluster.wait_converged(Duration::from_secs(10)).await;
    cluster.final_reads(&history, KEYS).await;
    assert_linearizable(&history);
    cluster.assert_replicas_agree(KEYS).await;
    cluster.assert_no_pending(Duration::from_secs(5)).await;
    cluster.shutdown().await;
}
