//! A voter loses its disk: it is killed under load, its storage is wiped, and it starts again
//! with the same id and joins, as an operator does after replacing a failed disk. It must
//! come back as a voter without a panic and without losing an acknowledged write, even when
//! the leader dies right after it rejoined; until it is re-admitted it never votes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use raft_core::testing::cluster::{seed, test_config, TestCluster, WorkloadStats};
use raft_core::testing::linearizability::{assert_linearizable, History};
use raft_core::Role;
use support::init_tracing;

const KEYS: usize = 4;

fn start_load(
    cluster: &Arc<TestCluster>,
    history: &History,
    seed: u64,
    secs: u64,
) -> tokio::task::JoinHandle<WorkloadStats> {
    let (cluster, history) = (cluster.clone(), history.clone());
    tokio::spawn(async move {
        cluster
            .run_workload(&history, 6, KEYS, Duration::from_secs(secs), seed)
            .await
    })
}

async fn check(cluster: &TestCluster, history: &History, stats: WorkloadStats) {
    eprintln!("{stats:?}");
    assert!(stats.ok > 20, "{stats:?}");
    cluster.assert_alive();
    cluster
        .wait_for_voters(&[1, 2, 3], Duration::from_secs(30))
        .await;
    cluster.wait_for_leader(Duration::from_secs(10)).await;
    cluster.wait_converged(Duration::from_secs(15)).await;
    cluster.final_reads(history, KEYS).await;
    assert_linearizable(history);
    cluster.assert_replicas_agree(KEYS).await;
    cluster.assert_no_pending(Duration::from_secs(5)).await;
}

/// Waits until `id` is a voter again in its own view, with state.
async fn wait_readmitted(cluster: &TestCluster, id: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = cluster.statuses().await.get(&id) {
            if s.voters.contains(&id) && s.applied_index > 1 && s.leader_id.is_some() {
                return;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node {id} was not re-admitted: {:#?}",
            cluster.statuses().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A follower that is a voter.
async fn some_follower(cluster: &TestCluster) -> u64 {
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    (1..=3).find(|&id| id != leader).expect("a follower")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_that_lost_its_disk_comes_back_as_a_voter() {
    init_tracing();
    let seed = seed("disk_loss");
    let cluster = TestCluster::start(3, test_config(), seed).await;
    let history = History::new();
    let load = start_load(&cluster, &history, seed, 8);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let victim = some_follower(&cluster).await;
    eprintln!("disk_loss: killing and wiping node {victim}");
    cluster.crash(victim).await;
    cluster.wipe(victim);
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.rejoin(victim).await;

    // Until it is re-admitted and caught up, the node never votes and never counts: it is a
    // learner first, then a voter again, with the cluster's state.
    wait_readmitted(&cluster, victim).await;
    let stats = load.await.unwrap();
    check(&cluster, &history, stats).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_dies_right_after_a_wiped_voter_rejoins() {
    init_tracing();
    let seed = seed("disk_loss_then_leader_loss");
    let cluster = TestCluster::start(3, test_config(), seed).await;
    let history = History::new();
    let load = start_load(&cluster, &history, seed, 10);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let victim = some_follower(&cluster).await;
    eprintln!("disk_loss: killing and wiping node {victim}");
    cluster.crash(victim).await;
    cluster.wipe(victim);
    cluster.rejoin(victim).await;
    // Right after: the leader goes. The remaining voter and the wiped node must not elect
    // anyone (the wiped node does not vote), so no acknowledged write can be lost.
    let leader = cluster
        .wait_for_leader_among(&[1, 2, 3], Duration::from_secs(10))
        .await;
    let leader = if leader == victim {
        // Cannot happen (a wiped node never leads); fail loudly if it does.
        panic!("the wiped node {victim} leads");
    } else {
        leader
    };
    eprintln!("disk_loss: killing the leader {leader}");
    cluster.crash(leader).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let survivor = (1..=3).find(|&id| id != leader && id != victim).unwrap();
    let statuses = cluster.statuses().await;
    for s in statuses.values() {
        assert_ne!(
            s.role,
            Role::Leader,
            "no leader without a quorum of intact voters: {statuses:#?}"
        );
    }
    let wiped = &statuses[&victim];
    assert!(
        !wiped.voters.contains(&victim) || wiped.applied_index > 1,
        "the wiped node does not think it is a voter before it has state: {wiped:?}"
    );
    eprintln!("disk_loss: restarting the old leader {leader} (survivor {survivor})");
    cluster.restart(leader).await;
    wait_readmitted(&cluster, victim).await;
    let stats = load.await.unwrap();
    check(&cluster, &history, stats).await;
    cluster.shutdown().await;
}

/// Re-admitting a wiped voter removes its old incarnation first, which needs a quorum of the
/// other voters: with them down, the node's join fails with an error that says what to do,
/// nothing changes, and the node never votes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_admission_without_a_quorum_fails_with_advice() {
    init_tracing();
    let seed = seed("disk_loss_no_quorum");
    let cluster = TestCluster::start(3, test_config(), seed).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let others: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    let (victim, down) = (others[0], others[1]);
    // An operator's add_node of an existing member at its address changes nothing.
    cluster
        .mailbox(leader)
        .add_node(victim, cluster.addr(victim))
        .await
        .unwrap();
    cluster.crash(victim).await;
    cluster.crash(down).await;
    cluster.wipe(victim);
    cluster.rejoin(victim).await;
    let outcome = cluster.reap(victim, Duration::from_secs(90)).await;
    let error = match outcome {
        Some(Err(e)) => e.to_string(),
        other => panic!("the join should fail, got {other:?}"),
    };
    eprintln!("disk_loss: {error}");
    assert!(error.contains("quorum"), "{error}");
    assert!(error.contains("lost its disk"), "{error}");
    // The survivor still lists all three voters: nothing was removed.
    let status = cluster.mailbox(leader).status().await.unwrap();
    assert_eq!(status.voters, vec![1, 2, 3], "membership unchanged");
    cluster.shutdown().await;
}
