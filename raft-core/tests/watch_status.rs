//! `Mailbox::watch_status`: a subscriber learns of leader changes, membership changes and the
//! applied index as the node does, without polling `status()`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use raft_core::testing::cluster::{seed, test_config, TestCluster};
use raft_core::testing::kv::encode_op;
use raft_core::testing::linearizability::KvOp;
use raft_core::{LiveStatus, Role};
use support::init_tracing;
use tokio::sync::watch;

/// Waits up to `timeout` for the subscription to show a state `f` accepts; returns it.
async fn wait_until(
    events: &mut watch::Receiver<LiveStatus>,
    timeout: Duration,
    what: &str,
    f: impl FnMut(&LiveStatus) -> bool,
) -> LiveStatus {
    let found = match tokio::time::timeout(timeout, events.wait_for(f)).await {
        Ok(Ok(live)) => Some(live.clone()),
        Ok(Err(_)) => panic!("the subscription closed while waiting for {what}"),
        Err(_) => None,
    };
    found.unwrap_or_else(|| {
        panic!(
            "no {what} within {timeout:?}; last seen: {:?}",
            *events.borrow()
        )
    })
}

fn put(key: &str, value: &str) -> Vec<u8> {
    encode_op(&KvOp::Put {
        key: key.into(),
        value: value.into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_sees_the_leader_change_when_the_leader_is_cut_off_or_killed() {
    init_tracing();
    let cluster = TestCluster::start(3, test_config(), seed("watch_leader_change")).await;
    let old = cluster.wait_for_leader(Duration::from_secs(5)).await;
    let follower = *cluster.running().iter().find(|&&n| n != old).unwrap();
    let mut events = cluster.mailbox(follower).watch_status();
    let before = wait_until(&mut events, Duration::from_secs(5), "the leader", |s| {
        s.leader_id == Some(old)
    })
    .await;
    assert_eq!(before.id, follower);
    assert_eq!(before.role, Role::Follower);

    // Cut off: the others elect a new leader in a higher term.
    cluster.faults().isolate(old);
    let after = wait_until(&mut events, Duration::from_secs(10), "a new leader", |s| {
        s.leader_id.is_some_and(|l| l != old)
    })
    .await;
    assert!(after.term > before.term, "{before:?} then {after:?}");
    cluster.faults().heal();

    // Killed: its own subscribers learn it stopped, the others see the next leader.
    let second = after.leader_id.unwrap();
    let mut on_leader = cluster.mailbox(second).watch_status();
    let mut on_other = cluster
        .mailbox(*cluster.running().iter().find(|&&n| n != second).unwrap())
        .watch_status();
    wait_until(&mut on_leader, Duration::from_secs(5), "leadership", |s| {
        s.role == Role::Leader
    })
    .await;
    cluster.crash(second).await;
    wait_until(&mut on_leader, Duration::from_secs(5), "the stop", |s| {
        s.stopped
    })
    .await;
    wait_until(
        &mut on_other,
        Duration::from_secs(10),
        "a third leader",
        |s| s.leader_id.is_some_and(|l| l != second),
    )
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_sees_membership_changes() {
    init_tracing();
    let cluster = TestCluster::start(3, test_config(), seed("watch_membership")).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await;
    let follower = *cluster.running().iter().find(|&&n| n != leader).unwrap();
    let mut events = cluster.mailbox(follower).watch_status();
    wait_until(&mut events, Duration::from_secs(5), "three voters", |s| {
        s.voters == [1, 2, 3]
    })
    .await;

    cluster.add_node(4).await;
    let grown = wait_until(
        &mut events,
        Duration::from_secs(20),
        "node 4 as voter",
        |s| s.voters == [1, 2, 3, 4] && s.learners.is_empty(),
    )
    .await;
    assert_eq!(grown.id, follower);
    // The new node's own subscription reports its membership too.
    let mut on_new = cluster.mailbox(4).watch_status();
    wait_until(
        &mut on_new,
        Duration::from_secs(10),
        "itself as voter",
        |s| s.voters.contains(&4),
    )
    .await;

    cluster
        .mailbox(follower)
        .remove_node(4)
        .await
        .expect("remove node 4");
    wait_until(&mut events, Duration::from_secs(10), "node 4 gone", |s| {
        s.voters == [1, 2, 3]
    })
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_sees_the_applied_index_advance() {
    init_tracing();
    let cluster = TestCluster::start(3, test_config(), seed("watch_applied")).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await;
    let follower = *cluster.running().iter().find(|&&n| n != leader).unwrap();
    let mut events = cluster.mailbox(follower).watch_status();
    let start = events.borrow_and_update().applied_index;

    // Each write moves the applied index; the subscriber follows it to the end.
    let writes = 20;
    let watcher = tokio::spawn(async move {
        let mut seen = vec![start];
        let target = start + writes;
        while *seen.last().unwrap() < target {
            if tokio::time::timeout(Duration::from_secs(10), events.changed())
                .await
                .is_err()
            {
                panic!("the applied index stopped at {seen:?}");
            }
            seen.push(events.borrow_and_update().applied_index);
        }
        seen
    });
    let mailbox = cluster.mailbox(leader);
    for i in 0..writes {
        mailbox
            .send_proposal(put("k", &i.to_string()))
            .await
            .expect("write");
    }
    let seen = watcher.await.expect("watcher");
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "the applied index never goes back: {seen:?}"
    );
    let status = cluster.mailbox(follower).status().await.expect("status");
    assert!(status.applied_index >= start + writes);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_leader_returns_once_the_target_leads() {
    init_tracing();
    let cluster = TestCluster::start(3, test_config(), seed("watch_transfer")).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await;
    for target in cluster.running().into_iter().filter(|&n| n != leader) {
        let mut on_target = cluster.mailbox(target).watch_status();
        // Asked through the old leader: the driver answers at once, the wait is on events.
        let via = cluster.wait_for_leader(Duration::from_secs(5)).await;
        cluster
            .mailbox(via)
            .transfer_leader(target)
            .await
            .expect("transfer");
        let live = wait_until(&mut on_target, Duration::from_secs(5), "leadership", |s| {
            s.role == Role::Leader
        })
        .await;
        assert_eq!(live.leader_id, Some(target));
    }
    cluster.shutdown().await;
}
