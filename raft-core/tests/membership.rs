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
    // The joiners learned the cluster id the first node chose, from their first snapshot.
    let ids: Vec<u64> = cluster
        .statuses()
        .await
        .values()
        .map(|s| s.cluster_id)
        .collect();
    assert!(ids[0] != 0 && ids.iter().all(|&id| id == ids[0]), "{ids:?}");
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
        .add_learner(4, cluster.addr(4))
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

/// Founding members given one list and started at the same instant form one cluster: every
/// node sees the same voters, leader and cluster id, and writes reach all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn founding_members_started_together_form_one_cluster() {
    use raft_core::testing::kv::KvStore;
    use raft_core::{InitialCluster, LocalNetwork, Raft};
    init_tracing();
    for round in 0..5 {
        let network = LocalNetwork::new();
        let ids = [1u64, 2, 3, 4, 5];
        let cluster = InitialCluster::new(ids.iter().map(|&id| (id, format!("n{id}"))))
            .unwrap()
            .with_token(format!("round-{round}"));
        let mut mailboxes = Vec::new();
        let mut nodes = Vec::new();
        for &id in &ids {
            let raft = Raft::builder(id, KvStore::new())
                .raft_addr(format!("n{id}"))
                .transport(network.transport())
                .config(test_config())
                .build()
                .unwrap();
            mailboxes.push(raft.mailbox());
            nodes.push(raft);
        }
        let running: Vec<_> = nodes
            .into_iter()
            .map(|raft| tokio::spawn(raft.start_cluster(cluster.clone())))
            .collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let mut seen = Vec::new();
            for m in &mailboxes {
                seen.push(m.status().await.unwrap());
            }
            let leader = seen[0].leader_id;
            let agreed = leader.is_some()
                && seen.iter().all(|s| {
                    s.leader_id == leader && s.voters == ids && s.cluster_id == cluster.cluster_id()
                });
            if agreed {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: no single cluster: {seen:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        mailboxes[4]
            .send_proposal(raft_core::testing::kv::encode_op(
                &raft_core::testing::linearizability::KvOp::Put {
                    key: "k".into(),
                    value: "v".into(),
                },
            ))
            .await
            .unwrap();
        for m in &mailboxes {
            m.shutdown().await;
        }
        for node in running {
            node.await.unwrap().unwrap();
        }
    }
}

/// A node whose state belongs to another cluster is refused, with both cluster ids named, and
/// does not disturb the cluster it was pointed at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_from_another_cluster_is_refused_naming_both_ids() {
    use raft_core::testing::kv::KvStore;
    use raft_core::transport::Transport as _;
    use raft_core::wire::{request, ProposeRequest, Request};
    use raft_core::{InitialCluster, LocalNetwork, Raft};
    init_tracing();
    let network = LocalNetwork::new();
    let ours = InitialCluster::new([(1, "a1".to_string())])
        .unwrap()
        .with_token("a");
    let raft = Raft::builder(1, KvStore::new())
        .raft_addr("a1")
        .transport(network.transport())
        .config(test_config())
        .build()
        .unwrap();
    let mailbox = raft.mailbox();
    let node = tokio::spawn(raft.start_cluster(ours.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while mailbox.status().await.unwrap().role != Role::Leader {
        assert!(tokio::time::Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let theirs = ours.clone().with_token("b").cluster_id();
    let request = Request {
        kind: Some(request::Kind::Propose(ProposeRequest {
            data: Vec::new(),
            timeout_ms: 1000,
            ..Default::default()
        })),
        cluster_id: theirs,
    };
    let answer = network
        .transport()
        .call("a1", request, Duration::from_secs(5))
        .await
        .unwrap();
    let text = format!("{answer:?}");
    // Retryable for the caller: it most likely has a stale idea of who is at this address.
    match &answer.kind {
        Some(raft_core::wire::response::Kind::Error(e)) => assert_eq!(
            e.code,
            raft_core::wire::ErrorCode::OtherCluster as i32,
            "{text}"
        ),
        other => panic!("not refused: {other:?}"),
    }
    let hex = |id: u64| format!("{id:016x}");
    assert!(
        text.contains("cluster id mismatch")
            && text.contains(&hex(ours.cluster_id()))
            && text.contains(&hex(theirs)),
        "{text}"
    );
    let metrics = mailbox.metrics().render_prometheus("raftkit");
    assert!(
        metrics.contains("raftkit_refused_messages_total{reason=\"cluster\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        mailbox.status().await.unwrap().cluster_id,
        ours.cluster_id()
    );
    mailbox.shutdown().await;
    node.await.unwrap().unwrap();
}

/// A write a follower forwards to its leader's address, now served by another cluster's
/// node, is refused as coming from another cluster: not applied, retried while the deadline
/// allows (an election would find the real leader), and at the deadline the caller is told
/// why, rather than that the write timed out and may have applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_forwarded_to_another_clusters_node_is_refused_not_timed_out() {
    use raft_core::testing::kv::KvStore;
    use raft_core::{Error, InitialCluster, LocalNetwork, NotApplied, Raft};
    init_tracing();
    let network = LocalNetwork::new();
    let start = |id: u64, addr: &str, cluster: InitialCluster, election_tick: usize| {
        let raft = Raft::builder(id, KvStore::new())
            .raft_addr(addr)
            .transport(network.transport())
            .config(raft_core::Config {
                election_tick,
                ..test_config()
            })
            .build()
            .unwrap();
        let mailbox = raft.mailbox();
        (mailbox, tokio::spawn(raft.start_cluster(cluster)))
    };
    let ours = InitialCluster::new([(1, "a1".to_string()), (2, "a2".to_string())])
        .unwrap()
        .with_token("a");
    // Node 2 would wait 10-20 s before campaigning: node 1 leads, and node 2 keeps pointing
    // at its address for the whole test.
    let (leader, leader_node) = start(1, "a1", ours.clone(), 10);
    let (follower, follower_node) = start(2, "a2", ours, 500);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while follower.status().await.unwrap().leader_id != Some(1) {
        assert!(tokio::time::Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    leader.shutdown().await;
    leader_node.await.unwrap().unwrap();
    let theirs = InitialCluster::new([(7, "a1".to_string())])
        .unwrap()
        .with_token("b");
    let (impostor, impostor_node) = start(7, "a1", theirs, 10);
    while impostor.status().await.unwrap().role != Role::Leader {
        assert!(tokio::time::Instant::now() < deadline, "no impostor leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answer = follower
        .with_timeout(Duration::from_millis(500))
        .send_proposal(Vec::new())
        .await;
    match answer {
        Err(Error::NotApplied(NotApplied::OtherCluster(why))) => {
            assert!(why.contains("cluster id mismatch"), "{why}")
        }
        other => panic!("not refused as another cluster's: {other:?}"),
    }
    for (mailbox, node) in [(follower, follower_node), (impostor, impostor_node)] {
        mailbox.shutdown().await;
        node.await.unwrap().unwrap();
    }
}
