//! Overload: clients offer ten times what a deliberately slow state machine can apply, open
//! loop (they do not wait for answers before sending more), for 30 s. The node answers the
//! excess "busy" at once; its queues and the process's memory stay flat; what it accepts it
//! applies; the replicas agree afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft_core::testing::cluster::test_config;
use raft_core::{
    async_trait, Config, Error, LocalNetwork, Mailbox, NotApplied, QueueDepths, Raft,
    ReadConsistency, Store, StoreResult,
};
use support::init_tracing;

/// Applies at most about a thousand commands a second (one timer tick, 1-2 ms, each).
#[derive(Default)]
struct Slow {
    applied: u64,
    sum: u64,
}

#[async_trait]
impl Store for Slow {
    async fn apply(&mut self, message: &[u8]) -> StoreResult<Vec<u8>> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.applied += 1;
        self.sum = self.sum.wrapping_add(message.len() as u64);
        Ok(Vec::new())
    }
    async fn query(&self, _: &[u8]) -> StoreResult<Vec<u8>> {
        Ok([self.applied.to_le_bytes(), self.sum.to_le_bytes()].concat())
    }
    async fn snapshot(&self) -> StoreResult<Vec<u8>> {
        Ok([self.applied.to_le_bytes(), self.sum.to_le_bytes()].concat())
    }
    async fn restore(&mut self, s: &[u8]) -> StoreResult<()> {
        self.applied = u64::from_le_bytes(s[..8].try_into()?);
        self.sum = u64::from_le_bytes(s[8..16].try_into()?);
        Ok(())
    }
}

/// Resident memory of this process, from /proc (Linux); 0 elsewhere.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    busy: AtomicU64,
    other: AtomicU64,
}

const PAYLOAD: usize = 1024;
/// Offered load: ten times what `Slow` applies at best (it manages ~500/s on a 2-core box).
const OFFERED_PER_SEC: u64 = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_times_the_apply_rate_keeps_queues_and_memory_flat() {
    init_tracing();
    let config = Config {
        max_apply_backlog_bytes: 1 << 20,
        max_uncommitted_bytes: 2 << 20,
        max_forward_queue: 1024,
        request_timeout: Duration::from_secs(2),
        ..test_config()
    };
    let network = LocalNetwork::new();
    let mut mailboxes: Vec<Mailbox> = Vec::new();
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let raft = Raft::builder(id, Slow::default())
            .raft_addr(format!("node-{id}"))
            .transport(network.transport_as(id))
            .config(config.clone())
            .build()
            .unwrap();
        mailboxes.push(raft.mailbox());
        nodes.push(if id == 1 {
            tokio::spawn(raft.lead())
        } else {
            tokio::spawn(raft.join(1, "node-1"))
        });
        if id == 1 {
            mailboxes[0].send_proposal(b"first".to_vec()).await.unwrap();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while mailboxes[0].status().await.unwrap().voters.len() < 3 {
        assert!(Instant::now() < deadline, "the cluster did not form");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Open loop: every millisecond, ten proposals leave whether earlier ones were answered
    // or not, through all three nodes (followers forward to the leader).
    let tally = Arc::new(Tally::default());
    let run_for = Duration::from_secs(30);
    let started = Instant::now();
    let load = {
        let (mailboxes, tally) = (mailboxes.clone(), tally.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut sent = 0u64;
            while started.elapsed() < run_for {
                tick.tick().await;
                let due = started.elapsed().as_millis() as u64 * OFFERED_PER_SEC / 1000;
                while sent < due {
                    let mailbox = mailboxes[(sent % 3) as usize].clone();
                    let tally = tally.clone();
                    tokio::spawn(async move {
                        match mailbox.send_proposal(vec![1; PAYLOAD]).await {
                            Ok(_) => tally.ok.fetch_add(1, Ordering::Relaxed),
                            Err(Error::NotApplied(NotApplied::Busy(_))) => {
                                tally.busy.fetch_add(1, Ordering::Relaxed)
                            }
                            Err(_) => tally.other.fetch_add(1, Ordering::Relaxed),
                        };
                    });
                    sent += 1;
                }
            }
            sent
        })
    };

    // Sample once a second: queue depths on every node, and the process's memory.
    let mut samples: Vec<(u64, Vec<QueueDepths>, u64)> = Vec::new();
    while started.elapsed() < run_for {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let queues = mailboxes.iter().map(|m| m.metrics().queues).collect();
        samples.push((started.elapsed().as_secs(), queues, rss_bytes()));
    }
    let offered = load.await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (ok, busy, other) = (
        tally.ok.load(Ordering::Relaxed),
        tally.busy.load(Ordering::Relaxed),
        tally.other.load(Ordering::Relaxed),
    );
    eprintln!("overload: offered {offered}, applied-and-answered {ok}, busy {busy}, other {other}");
    eprintln!(
        "overload: second, per-node apply backlog bytes / inbox / forward / peer queue, RSS MiB"
    );
    for (t, queues, rss) in &samples {
        let cells: Vec<String> = queues
            .iter()
            .map(|q| {
                format!(
                    "{}/{}/{}/{}",
                    q.apply_backlog_bytes, q.driver_inbox, q.forward, q.peer_send
                )
            })
            .collect();
        eprintln!(
            "overload: {t:>3} s  {}  {} MiB",
            cells.join("  "),
            rss >> 20
        );
    }

    assert!(
        busy > offered / 2,
        "most of the excess was refused: {busy} of {offered}"
    );
    // Accepted commands are applied, also those whose answer came too late for the client.
    // The state machine may still be working through its backlog: wait as long as it takes.
    let state = mailboxes[0]
        .with_timeout(Duration::from_secs(30))
        .query_with(Vec::new(), ReadConsistency::Stale)
        .await
        .unwrap();
    let applied = u64::from_le_bytes(state[..8].try_into().unwrap());
    eprintln!("overload: the leader's store applied {applied} commands");
    assert!(
        applied > 1_000,
        "the cluster kept working: {applied} applied"
    );
    // The apply backlog stays within twice its bound (a follower stops taking entries past
    // that), plus one Ready of entries.
    let bound = 2 * config.max_apply_backlog_bytes + 2 * (1 << 20);
    for (t, queues, _) in &samples {
        for (i, q) in queues.iter().enumerate() {
            assert!(
                q.apply_backlog_bytes <= bound,
                "node {} at {t} s: apply backlog {} > {bound}",
                i + 1,
                q.apply_backlog_bytes
            );
            assert!(
                q.forward <= 1024,
                "node {} forward queue {}",
                i + 1,
                q.forward
            );
        }
    }
    // Memory is flat after the first seconds: no more than 64 MiB of growth from second 5 to
    // the end (an unbounded queue of 1 KiB proposals would grow by ~9 MiB a second here).
    let rss_at = |s: u64| {
        samples
            .iter()
            .find(|(t, _, _)| *t >= s)
            .map_or(0, |(_, _, r)| *r)
    };
    let (early, late) = (rss_at(5), samples.last().map_or(0, |s| s.2));
    if early > 0 {
        assert!(
            late <= early + (64 << 20),
            "memory grew from {} MiB to {} MiB",
            early >> 20,
            late >> 20
        );
    }
    // Afterwards every replica applies the same commands.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut views = Vec::new();
        for m in &mailboxes {
            views.push(
                m.query_with(Vec::new(), ReadConsistency::Stale)
                    .await
                    .unwrap(),
            );
        }
        let status = mailboxes[0].status().await.unwrap();
        let applied_everywhere = {
            let mut all = true;
            for m in &mailboxes {
                all &= m.status().await.unwrap().applied_index >= status.commit_index;
            }
            all
        };
        if applied_everywhere && views.windows(2).all(|w| w[0] == w[1]) {
            break;
        }
        assert!(Instant::now() < deadline, "replicas did not converge");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for m in &mailboxes {
        m.shutdown().await;
    }
}
