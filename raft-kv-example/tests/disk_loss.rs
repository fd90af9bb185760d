//! Replacing a failed disk, against real `raft-kv` processes (gRPC, RocksDB): a voter is
//! SIGKILLed under load, its data dir deleted, and it is started again with the same id and
//! addresses and `--join` to the others, as an operator does after swapping the disk. It
//! must come back as a voter that has caught up, no node may panic, and no acknowledged write
//! may be lost — also when the leader dies right after the wiped node restarted, or in the
//! middle of its re-admission (then comes back from its intact data dir).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft_core::testing::cluster::seed;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::Value;
use support::{KvCluster, Transport};

const WRITERS: u64 = 4;
const KEYS_PER_WRITER: u64 = 2;

/// Every write to one key, in the order its only writer issued them: (value, acknowledged).
type KeyWrites = Vec<(u64, bool)>;

/// Writers under load: each owns its keys and writes them one request at a time, so the
/// order of a key's writes is the order they were issued.
struct Load {
    stop: Arc<AtomicBool>,
    writers: Vec<tokio::task::JoinHandle<BTreeMap<String, KeyWrites>>>,
}

impl Load {
    /// Starts the writers; each sends its requests to the nodes in turn (the wiped node
    /// included: while it is down its requests fail fast, once back it forwards them).
    fn start(c: &KvCluster) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let urls: Vec<String> = c.nodes.iter().map(|n| c.url(n.id, "/kv/")).collect();
        let writers = (0..WRITERS)
            .map(|w| {
                let (http, urls, stop) = (c.http.clone(), urls.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut writes: BTreeMap<String, KeyWrites> = BTreeMap::new();
                    let mut value = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        value += 1;
                        let key = format!("w{w}-k{}", value % KEYS_PER_WRITER);
                        let url = &urls[(value + w) as usize % urls.len()];
                        let sent = http
                            .put(format!("{url}{key}"))
                            .body(value.to_string())
                            .send()
                            .await;
                        let acked = matches!(&sent, Ok(r) if r.status() == StatusCode::OK);
                        writes.entry(key).or_default().push((value, acked));
                        if !acked {
                            // Failures come fast (a dead node refuses at once): do not spin.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                    writes
                })
            })
            .collect();
        Load { stop, writers }
    }

    /// Stops the writers once every request they sent has an answer or timed out.
    async fn stop(self) -> BTreeMap<String, KeyWrites> {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = BTreeMap::new();
        for w in self.writers {
            all.extend(w.await.unwrap());
        }
        all
    }
}

/// The values a linearizable read of a key may return now that the load has stopped: the
/// last acknowledged value, or the value of any write whose outcome is unknown. An
/// unanswered write never completed, so it may take effect after later acknowledged ones; a
/// write refused outright is counted as unknown too, which only makes the check weaker.
/// `None` (no such key) is allowed only when no write to it was acknowledged.
fn allowed(writes: &KeyWrites) -> (Option<u64>, Vec<u64>) {
    let last_acked = writes.iter().rev().find(|(_, acked)| *acked).map(|w| w.0);
    let unknown = writes
        .iter()
        .filter(|(_, acked)| !acked)
        .map(|w| w.0)
        .collect();
    (last_acked, unknown)
}

/// A linearizable read of `key` through node `id`, retried while the cluster settles.
async fn read(c: &KvCluster, id: u64, key: &str) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match c.get(id, key, "linearizable").await {
            Ok(v) => return v,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "node {id} could not read {key}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Every key through every node: the last acknowledged value or an unknown-outcome one.
async fn check_writes(c: &KvCluster, writes: &BTreeMap<String, KeyWrites>) {
    let acked: usize = writes
        .values()
        .map(|w| w.iter().filter(|(_, a)| *a).count())
        .sum();
    let sent: usize = writes.values().map(Vec::len).sum();
    eprintln!("{acked} of {sent} writes acknowledged");
    assert!(acked > 50, "the load got through: {acked} acknowledged");
    for (key, key_writes) in writes {
        let (last_acked, unknown) = allowed(key_writes);
        for node in &c.nodes {
            let got = read(c, node.id, key).await;
            let got_value = got.as_deref().map(|v| v.parse::<u64>().unwrap());
            let ok = match got_value {
                None => last_acked.is_none(),
                Some(v) => Some(v) == last_acked || unknown.contains(&v),
            };
            assert!(
                ok,
                "node {}: {key} = {got:?}, but the last acknowledged write was {last_acked:?} \
                 (writes in order, value/acked: {key_writes:?})",
                node.id
            );
        }
    }
}

/// Any running voter other than `except` that leads.
async fn leader_except(c: &KvCluster, except: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for node in c.nodes.iter().filter(|n| n.id != except) {
            if node.child.is_none() {
                continue;
            }
            if let Some(s) = c.status(node.id).await {
                if s["role"] == "leader" {
                    return node.id;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader besides node {except}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How far behind the leader's commit index a re-admitted voter may be while the load runs.
const NEAR: u64 = 1000;

/// Waits until node `id` itself, not only the leader, lists the full cluster as voters and
/// no learners (until re-admitted, a node that lost its disk has no configuration while the
/// leader still lists its old incarnation), and checks that its applied index is near the
/// leader's commit index. Fails at once if any node exits.
async fn wait_readmitted(c: &mut KvCluster, id: u64, timeout: Duration) {
    let all: Vec<u64> = c.nodes.iter().map(|n| n.id).collect();
    let started = Instant::now();
    let full = |s: &Value| {
        let voters: Vec<u64> = serde_json::from_value(s["voters"].clone()).unwrap_or_default();
        let learners = s["learners"].as_array().map_or(usize::MAX, Vec::len);
        voters == all && learners == 0
    };
    loop {
        for node in &all {
            c.assert_running(*node);
        }
        if let Some(own) = c.status(id).await {
            if full(&own) {
                let leader = leader_except(c, 0).await;
                if let Some(theirs) = c.status(leader).await.filter(|s| full(s)) {
                    let applied = own["applied_index"].as_u64().unwrap();
                    let commit = theirs["commit_index"].as_u64().unwrap();
                    eprintln!(
                        "node {id} is a voter again after {:.1} s: applied {applied}, leader \
                         {leader} commit {commit}",
                        started.elapsed().as_secs_f64()
                    );
                    assert!(
                        applied + NEAR >= commit,
                        "node {id} applied {applied}, far behind commit {commit}"
                    );
                    return;
                }
            }
        }
        assert!(
            started.elapsed() < timeout,
            "node {id} was not re-admitted within {timeout:?}: its status {:?}",
            c.status(id).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Once the load stopped: every node has applied everything the leader committed.
async fn wait_caught_up(c: &KvCluster, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let leader = leader_except(c, 0).await;
        let commit = c.status(leader).await.map(|s| s["commit_index"].clone());
        let mut applied = Vec::new();
        for node in &c.nodes {
            applied.push(c.status(node.id).await.map(|s| s["applied_index"].clone()));
        }
        if commit.is_some() && applied.iter().all(|a| *a == commit) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the nodes did not catch up: leader {leader} commit {commit:?}, applied {applied:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// When the leader dies, relative to the wiped node's re-admission.
#[derive(Clone, Copy, Debug)]
enum LeaderDies {
    /// Right after the wiped node was started: before the leader handled its join.
    AtRestart,
    /// As soon as the leader's configuration no longer lists the old incarnation as a voter.
    OnceOldIncarnationRemoved,
    /// As soon as the leader lists the new incarnation as a learner.
    OnceReaddedAsLearner,
}

/// Waits until `leader`'s configuration reaches the point `when` names for `victim`; returns
/// what it saw. The learner phase can be shorter than a status request: if the node is a
/// voter again after its old incarnation was seen removed, that counts as past it.
async fn wait_for_phase(c: &KvCluster, leader: u64, victim: u64, when: LeaderDies) -> String {
    let listed = |s: &Value, field: &str| {
        let ids: Vec<u64> = serde_json::from_value(s[field].clone()).unwrap_or_default();
        ids.contains(&victim)
    };
    let mut seen_removed = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let LeaderDies::AtRestart = when {
            return "at restart".into();
        }
        if let Some(s) = c.status(leader).await {
            let (voter, learner) = (listed(&s, "voters"), listed(&s, "learners"));
            seen_removed |= !voter;
            match when {
                LeaderDies::OnceOldIncarnationRemoved if !voter => {
                    return format!("old incarnation removed (learner: {learner})");
                }
                LeaderDies::OnceReaddedAsLearner if learner => return "re-added as learner".into(),
                LeaderDies::OnceReaddedAsLearner if seen_removed && voter => {
                    return "already promoted again".into();
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("leader {leader} never reached {when:?} for node {victim}");
}

/// Kills a follower under load, wipes it and restarts it with `--join` to the others; with
/// `leader_dies`, SIGKILLs the leader at that point and brings it back from its intact data
/// dir a second later. Then checks the outcome.
async fn lose_a_disk(c: &mut KvCluster, leader_dies: Option<LeaderDies>) {
    let load = Load::start(c);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = leader_except(c, 0).await;
    let victim = c
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|&id| id != leader)
        .unwrap();
    eprintln!("leader {leader}; SIGKILL node {victim} and wipe its data dir");
    c.kill9(victim);
    c.wipe(victim);
    // The others keep committing without it, so it has a real gap to catch up on.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let others: Vec<u64> = c
        .nodes
        .iter()
        .map(|n| n.id)
        .filter(|&id| id != victim)
        .collect();
    c.spawn_joining(victim, &others);
    if let Some(when) = leader_dies {
        let leader = leader_except(c, victim).await;
        let restarted = Instant::now();
        let seen = wait_for_phase(c, leader, victim, when).await;
        eprintln!(
            "{when:?} ({seen}), {:?} after the wiped node restarted: SIGKILL leader {leader}",
            restarted.elapsed()
        );
        c.kill9(leader);
        tokio::time::sleep(Duration::from_secs(1)).await;
        c.spawn(leader, None);
    }
    wait_readmitted(c, victim, Duration::from_secs(40)).await;
    // Writes keep flowing through the re-admitted node for a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = load.stop().await;
    for node in c.nodes.iter().map(|n| n.id).collect::<Vec<_>>() {
        c.assert_running(node);
    }
    wait_caught_up(c, Duration::from_secs(20)).await;
    check_writes(c, &writes).await;
    c.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_lost_its_disk_rejoins_as_a_voter() {
    let mut c = KvCluster::start(3, Transport::Grpc).await;
    lose_a_disk(&mut c, None).await;
}

/// The leader dies right after the wiped node started, before it handled its join: its
/// successor still lists the old incarnation as a voter when the wiped node comes up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_dies_right_after_a_wiped_follower_restarts() {
    let mut c = KvCluster::start(3, Transport::Grpc).await;
    lose_a_disk(&mut c, Some(LeaderDies::AtRestart)).await;
}

/// The leader dies in the middle of the re-admission: once it removed the old incarnation,
/// or once it added the new one as a learner (which one is drawn from the seed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_dies_while_a_wiped_follower_is_readmitted() {
    let seed = seed("the_leader_dies_while_a_wiped_follower_is_readmitted");
    let when = if StdRng::seed_from_u64(seed).gen_bool(0.5) {
        LeaderDies::OnceOldIncarnationRemoved
    } else {
        LeaderDies::OnceReaddedAsLearner
    };
    let mut c = KvCluster::start(3, Transport::Grpc).await;
    lose_a_disk(&mut c, Some(when)).await;
}
