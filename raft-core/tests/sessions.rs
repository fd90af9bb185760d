//! Client sessions: a command applies once however often it is delivered or retried, across
//! leader changes, leader kills, snapshots and restarts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft_core::testing::cluster::{seed, test_config, TestCluster};
use raft_core::testing::kv::{decode_value, encode_append, encode_op, padding};
use raft_core::testing::linearizability::KvOp;
use raft_core::{Config, Error, Mailbox, MaybeApplied, NotApplied, SessionTag};
use support::init_tracing;

/// The value of `key`, read linearizably through node `id`.
async fn value_of(cluster: &TestCluster, id: u64, key: &str) -> String {
    let query = encode_op(&KvOp::Get { key: key.into() });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cluster.mailbox(id).query(query.clone()).await {
            Ok(bytes) => return decode_value(&bytes).unwrap().unwrap_or_default(),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("read through {id} failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("read through {id} kept failing: {e}"),
        }
    }
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap()
}

/// A follower of the current leader.
async fn follower(cluster: &TestCluster) -> (u64, u64) {
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let other = *cluster.running().iter().find(|&&n| n != leader).unwrap();
    (leader, other)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_delivered_twice_applies_once() {
    init_tracing();
    let cluster = TestCluster::start(3, test_config(), seed("delivered_twice")).await;
    let (leader, other) = follower(&cluster).await;
    let first = SessionTag::new(0xfeed, 1);
    let answer = cluster
        .mailbox(leader)
        .send_proposal_in(first, encode_append("k", "a"))
        .await
        .unwrap();
    assert_eq!(text(answer), "a ");
    // The same command again, through another node (forwarded to the leader): the answer
    // the first delivery got, and no second append.
    let again = cluster
        .mailbox(other)
        .send_proposal_in(first, encode_append("k", "a"))
        .await
        .unwrap();
    assert_eq!(text(again), "a ");
    assert_eq!(value_of(&cluster, other, "k").await, "a ");
    let second = SessionTag {
        seq: 2,
        established: true,
        ..first
    };
    let answer = cluster
        .mailbox(other)
        .send_proposal_in(second, encode_append("k", "b"))
        .await
        .unwrap();
    assert_eq!(text(answer), "a b ");
    // A late duplicate of the first command, after the client moved on: refused, not applied.
    let stale = cluster
        .mailbox(leader)
        .send_proposal_in(first, encode_append("k", "a"))
        .await;
    assert!(
        matches!(
            stale,
            Err(Error::NotApplied(NotApplied::SupersededInSession))
        ),
        "{stale:?}"
    );
    assert_eq!(value_of(&cluster, leader, "k").await, "a b ");
    // A session the cluster never saw, said to be established, is refused outright.
    let forgotten = cluster
        .mailbox(leader)
        .send_proposal_in(
            SessionTag {
                id: 0xdead,
                seq: 7,
                established: true,
            },
            encode_append("k", "z"),
        )
        .await;
    assert!(
        matches!(
            forgotten,
            Err(Error::NotApplied(NotApplied::SessionExpired))
        ),
        "{forgotten:?}"
    );
    assert_eq!(value_of(&cluster, leader, "k").await, "a b ");
    let metrics = cluster.mailbox(leader).metrics();
    assert!(metrics.session_retries_answered >= 1, "{metrics:?}");
    assert!(metrics.queues.client_sessions >= 1, "{metrics:?}");
    cluster.shutdown().await;
}

/// The answer is part of the replicated state: a retry reaching a new leader, after a
/// transfer and after the old leader was killed once the command committed (its reply
/// lost with it), gets the first answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_leader_change_or_kill_gets_the_first_answer() {
    init_tracing();
    let cluster = TestCluster::start(3, test_config(), seed("retry_after_leader_change")).await;
    let (leader, other) = follower(&cluster).await;
    let tag = SessionTag::new(0xabc, 1);
    let answer = cluster
        .mailbox(leader)
        .send_proposal_in(tag, encode_append("k", "x"))
        .await
        .unwrap();
    assert_eq!(text(answer), "x ");
    cluster
        .mailbox(leader)
        .transfer_leader(other)
        .await
        .unwrap();
    let retried = cluster
        .mailbox(leader)
        .send_proposal_in(tag, encode_append("k", "x"))
        .await
        .unwrap();
    assert_eq!(text(retried), "x ");
    // The command committed and applied; its leader dies before the client hears.
    cluster.crash(other).await;
    let rest = cluster.running();
    let new = cluster
        .wait_for_leader_among(&rest, Duration::from_secs(10))
        .await;
    let retried = cluster
        .mailbox(new)
        .send_proposal_in(tag, encode_append("k", "x"))
        .await
        .unwrap();
    assert_eq!(text(retried), "x ");
    assert_eq!(value_of(&cluster, new, "k").await, "x ");
    cluster.shutdown().await;
}

/// Sessions are in snapshots: a node that caught up from one, leading, still answers a
/// retry from its session table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_snapshots_and_restarts() {
    init_tracing();
    let config = Config {
        snapshot_threshold: 50,
        snapshot_log_tail: 5,
        ..test_config()
    };
    let cluster = TestCluster::start(3, config, seed("sessions_in_snapshots")).await;
    let (leader, other) = follower(&cluster).await;
    cluster.crash(other).await;
    let tag = SessionTag::new(0x5e55, 1);
    let answer = cluster
        .mailbox(leader)
        .send_proposal_in(tag, encode_append("k", "once"))
        .await
        .unwrap();
    assert_eq!(text(answer), "once ");
    // Enough entries for snapshots that compact the log past what `other` has.
    let mailbox = cluster.mailbox(leader).without_sessions();
    for _ in 0..200 {
        mailbox.send_proposal(padding(10)).await.unwrap();
    }
    assert!(cluster.mailbox(leader).metrics().snapshots_taken >= 1);
    cluster.restart(other).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster.mailbox(other).metrics().snapshots_installed == 0 {
        assert!(
            Instant::now() < deadline,
            "node {other} never got a snapshot"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let transfer_deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = cluster.mailbox(leader).transfer_leader(other).await {
        assert!(Instant::now() < transfer_deadline, "transfer failed: {e}");
    }
    let retried = cluster
        .mailbox(other)
        .send_proposal_in(tag, encode_append("k", "once"))
        .await
        .unwrap();
    assert_eq!(text(retried), "once ");
    assert_eq!(value_of(&cluster, other, "k").await, "once ");
    cluster.shutdown().await;
}

#[derive(Default, Debug)]
struct Tally {
    acked: Vec<String>,
    unknown: Vec<String>,
    unknown_not_timeout: usize,
    not_applied: usize,
    ops: usize,
}

/// Clients appending in [`appends_under_leader_kills`], each with one append at a time.
const CLIENTS: u64 = 6;
/// Leaders killed and restarted in [`appends_under_leader_kills`].
const KILLS: usize = 3;

/// Clients append unique tokens to one key through every node while leaders are killed
/// and restarted. Returns what they saw and the key's final value.
async fn appends_under_leader_kills(sessions: bool, test: &str) -> (Tally, String) {
    let seed = seed(test);
    let cluster = TestCluster::start(3, test_config(), seed).await;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop_at = Instant::now() + Duration::from_secs(6);
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let cluster = cluster.clone();
        let tally = tally.clone();
        clients.push(tokio::spawn(async move {
            let mut n = 0;
            while Instant::now() < stop_at {
                n += 1;
                let token = format!("c{client}-{n}");
                let id = 1 + (client + n) % 3;
                let Some(mailbox) = cluster.try_mailbox(id) else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let mailbox: Mailbox = if sessions {
                    mailbox
                } else {
                    mailbox.without_sessions()
                };
                let result = mailbox.send_proposal(encode_append("log", &token)).await;
                let mut t = tally.lock().unwrap();
                t.ops += 1;
                match result {
                    Ok(_) => t.acked.push(token),
                    Err(Error::MaybeApplied(why)) => {
                        if !matches!(why, MaybeApplied::Timeout(_)) {
                            t.unknown_not_timeout += 1;
                        }
                        t.unknown.push(token);
                    }
                    Err(Error::Fatal(_)) => {
                        // The node this client asked was killed under it: unknown.
                        t.unknown_not_timeout += 1;
                        t.unknown.push(token);
                    }
                    Err(_) => t.not_applied += 1,
                }
            }
        }));
    }
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        cluster.crash(leader).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.restart(leader).await;
    }
    for c in clients {
        c.await.unwrap();
    }
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let value = value_of(&cluster, leader, "log").await;
    cluster.shutdown().await;
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    (tally, value)
}

/// Every acknowledged append is in the log exactly once, every unknown one at most once,
/// and no token twice.
fn check_exactly_once(tally: &Tally, value: &str) {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for token in value.split_whitespace() {
        *seen.entry(token).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "tokens applied more than once: {twice:?}");
    for token in &tally.acked {
        assert_eq!(
            seen.get(token.as_str()),
            Some(&1),
            "acknowledged {token} missing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_under_leader_kills_apply_exactly_once() {
    init_tracing();
    let (with, value) = appends_under_leader_kills(true, "appends_with_sessions").await;
    check_exactly_once(&with, &value);
    let (without, value_without) =
        appends_under_leader_kills(false, "appends_without_sessions").await;
    check_exactly_once(&without, &value_without);
    let per_10k = |t: &Tally| t.unknown.len() as f64 * 10_000.0 / t.ops.max(1) as f64;
    println!(
        "unknown outcomes per 10 000 appends under leader kills: with sessions {:.0} \
         ({} of {} ops, {} not a deadline), without {:.0} ({} of {} ops)",
        per_10k(&with),
        with.unknown.len(),
        with.ops,
        with.unknown_not_timeout,
        per_10k(&without),
        without.unknown.len(),
        without.ops,
    );
    assert!(with.acked.len() > 50, "too little progress: {with:?}");
    // With sessions, a write is retried until its deadline, and a new leader is elected well
    // within it: only a node killed under its caller leaves the outcome unknown, so each
    // kill can leave at most one unknown append per client (each has one in flight). How many
    // a run gets is chance (which clients were on the killed node), so the two runs' counts
    // are printed above, not compared.
    assert!(
        with.unknown.len() <= CLIENTS as usize * KILLS,
        "with sessions, {} outcomes unknown after {KILLS} kills with {CLIENTS} clients ({} not \
         a deadline): {:?}",
        with.unknown.len(),
        with.unknown_not_timeout,
        with.unknown,
    );
}
