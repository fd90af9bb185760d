//! Counters and latency histograms of one node, renderable as Prometheus text.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::node::inbound::Refusal;

/// At most one log line per refusal reason in this interval; the rest are counted.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A lock-free latency histogram with fixed buckets.
#[derive(Default)]
pub(crate) struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub(crate) fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let slot = BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BUCKETS.len());
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(BUCKETS.len());
        for (i, &le) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            buckets.push((le, cumulative));
        }
        let count = cumulative + self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            buckets,
            count,
            sum: Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed)),
        }
    }
}

/// A histogram at one moment: cumulative counts per upper bound (seconds), as Prometheus has
/// them.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, observations at or below it)`.
    pub buckets: Vec<(f64, u64)>,
    /// All observations.
    pub count: u64,
    /// Sum of all observations.
    pub sum: Duration,
}

/// The live metrics of a node (shared by its tasks).
#[derive(Default)]
pub(crate) struct NodeMetrics {
    /// Messages refused before raft saw them, by [`Refusal::slot`].
    refused: [AtomicU64; Refusal::ALL.len()],
    /// When each refusal reason was last logged, and how many went unlogged since.
    refusal_log: Mutex<[(Option<Instant>, u64); Refusal::ALL.len()]>,
    /// Requests answered "busy, retry" because a bound was reached.
    pub(crate) busy: AtomicU64,
    /// Bytes of committed entries handed to the apply task and not applied yet.
    pub(crate) apply_backlog_bytes: AtomicU64,
    /// Committed entries handed to the apply task and not applied yet.
    pub(crate) apply_backlog_entries: AtomicU64,
    /// Log writes handed to the log writer and not durable yet.
    pub(crate) log_writes_in_flight: AtomicU64,
    /// Raft messages queued for peers, over all peers.
    pub(crate) peer_queue: AtomicU64,
    /// Requests queued for forwarding to the leader, over all destinations.
    pub(crate) forward_queue: AtomicU64,
    /// Bytes of the snapshot being received.
    pub(crate) snapshot_receiving_bytes: AtomicU64,
    /// Messages waiting in the driver's inbox (set when metrics are read).
    pub(crate) driver_inbox: AtomicU64,
    pub(crate) proposals: AtomicU64,
    pub(crate) applied_entries: AtomicU64,
    pub(crate) leader_changes: AtomicU64,
    pub(crate) not_leader_answers: AtomicU64,
    pub(crate) log_writes: AtomicU64,
    pub(crate) snapshots_taken: AtomicU64,
    pub(crate) snapshots_installed: AtomicU64,
    pub(crate) session_retries_answered: AtomicU64,
    pub(crate) sessions_evicted: AtomicU64,
    pub(crate) client_sessions: AtomicU64,
    pub(crate) client_session_bytes: AtomicU64,
    pub(crate) log_write_seconds: Histogram,
    pub(crate) proposal_seconds: Histogram,
    pub(crate) read_seconds: Histogram,
}

impl NodeMetrics {
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set(gauge: &AtomicU64, value: u64) {
        gauge.store(value, Ordering::Relaxed);
    }

    /// Counts a refused message and logs it, at most once per second per reason.
    pub(crate) fn refuse(&self, node: u64, reason: Refusal, detail: &dyn std::fmt::Display) {
        self.refuse_many(node, reason, 1, detail);
    }

    /// Counts `count` messages refused together (a whole batch) and logs it, at most once
    /// per second per reason.
    pub(crate) fn refuse_many(
        &self,
        node: u64,
        reason: Refusal,
        count: u64,
        detail: &dyn std::fmt::Display,
    ) {
        let slot = reason.slot();
        self.refused[slot].fetch_add(count, Ordering::Relaxed);
        let now = Instant::now();
        let mut log = self.refusal_log.lock().unwrap_or_else(|e| e.into_inner());
        let (last, unlogged) = &mut log[slot];
        if last.is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_INTERVAL) {
            *unlogged += 1;
            return;
        }
        let skipped = std::mem::take(unlogged);
        *last = Some(now);
        drop(log);
        tracing::warn!(
            node,
            reason = reason.as_str(),
            similar_since_last_log = skipped,
            "refused a message from the network: {detail}"
        );
    }

    pub(crate) fn snapshot(&self) -> Metrics {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Metrics {
            refused_messages: Refusal::ALL
                .iter()
                .map(|r| (r.as_str(), get(&self.refused[r.slot()])))
                .collect(),
            busy_rejections: get(&self.busy),
            queues: QueueDepths {
                driver_inbox: get(&self.driver_inbox),
                apply_backlog_entries: get(&self.apply_backlog_entries),
                apply_backlog_bytes: get(&self.apply_backlog_bytes),
                log_writes_in_flight: get(&self.log_writes_in_flight),
                peer_send: get(&self.peer_queue),
                forward: get(&self.forward_queue),
                snapshot_receiving_bytes: get(&self.snapshot_receiving_bytes),
                client_sessions: get(&self.client_sessions),
                client_session_bytes: get(&self.client_session_bytes),
            },
            proposals: get(&self.proposals),
            applied_entries: get(&self.applied_entries),
            leader_changes: get(&self.leader_changes),
            not_leader_answers: get(&self.not_leader_answers),
            log_writes: get(&self.log_writes),
            snapshots_taken: get(&self.snapshots_taken),
            snapshots_installed: get(&self.snapshots_installed),
            session_retries_answered: get(&self.session_retries_answered),
            sessions_evicted: get(&self.sessions_evicted),
            log_write_seconds: self.log_write_seconds.snapshot(),
            proposal_seconds: self.proposal_seconds.snapshot(),
            read_seconds: self.read_seconds.snapshot(),
        }
    }
}

/// How full a node's bounded queues are at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueDepths {
    /// Messages waiting in the driver's inbox (bounded; a full inbox answers clients "busy").
    pub driver_inbox: u64,
    /// Committed entries waiting for [`crate::Store::apply`].
    pub apply_backlog_entries: u64,
    /// Bytes of committed entries waiting for [`crate::Store::apply`]
    /// (bounded by [`crate::Config::max_apply_backlog_bytes`]).
    pub apply_backlog_bytes: u64,
    /// Log writes handed to the log writer and not durable yet (at most eight; a node with a
    /// log in memory writes in place and shows 0 or 1).
    pub log_writes_in_flight: u64,
    /// Raft messages queued for peers, over all peers.
    pub peer_send: u64,
    /// Proposals and reads queued on their way to the leader.
    pub forward: u64,
    /// Bytes of a snapshot being received from the leader.
    pub snapshot_receiving_bytes: u64,
    /// Client sessions the replicated state remembers (bounded: the least recently used
    /// one is forgotten first).
    pub client_sessions: u64,
    /// Bytes of saved answers those sessions keep for retries (bounded likewise).
    pub client_session_bytes: u64,
}

/// What a node has done since it started; see [`crate::Mailbox::metrics`].
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    /// Messages from the network refused before raft saw them, by reason (every reason is
    /// listed, most with 0).
    pub refused_messages: Vec<(&'static str, u64)>,
    /// Requests answered "busy, retry later" because a bound was reached.
    pub busy_rejections: u64,
    /// Depths of the node's bounded queues.
    pub queues: QueueDepths,
    /// Proposals this node appended as leader.
    pub proposals: u64,
    /// Committed entries applied to the state machine.
    pub applied_entries: u64,
    /// Times the known leader changed.
    pub leader_changes: u64,
    /// Requests this node's driver answered "not the leader": a mailbox (here or on another
    /// node) sent them to a node it took for the leader, and had to go again.
    pub not_leader_answers: u64,
    /// Durable log writes (each one fsync).
    pub log_writes: u64,
    /// Snapshots this node took of its state machine.
    pub snapshots_taken: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// Retried commands answered with their session's saved answer instead of applying
    /// again.
    pub session_retries_answered: u64,
    /// Client sessions forgotten to keep the session table within its bounds.
    pub sessions_evicted: u64,
    /// Time per durable log write (write + fsync).
    pub log_write_seconds: HistogramSnapshot,
    /// Time from `send_proposal` to its answer, through this node's mailbox.
    pub proposal_seconds: HistogramSnapshot,
    /// Time from `query` to its answer, through this node's mailbox.
    pub read_seconds: HistogramSnapshot,
}

impl Metrics {
    /// Prometheus text exposition, every name prefixed with `prefix` (e.g. `raftkit`).
    pub fn render_prometheus(&self, prefix: &str) -> String {
        let mut out = String::new();
        let counters = [
            (
                "proposals_total",
                "Proposals appended as leader.",
                self.proposals,
            ),
            (
                "applied_entries_total",
                "Entries applied to the state machine.",
                self.applied_entries,
            ),
            (
                "leader_changes_total",
                "Changes of the known leader.",
                self.leader_changes,
            ),
            (
                "not_leader_answers_total",
                "Requests answered \"not the leader\" by this node.",
                self.not_leader_answers,
            ),
            ("log_writes_total", "Durable log writes.", self.log_writes),
            (
                "snapshots_taken_total",
                "Snapshots taken of the state machine.",
                self.snapshots_taken,
            ),
            (
                "snapshots_installed_total",
                "Snapshots installed from a leader.",
                self.snapshots_installed,
            ),
            (
                "session_retries_answered_total",
                "Retried commands answered from their session instead of applying again.",
                self.session_retries_answered,
            ),
            (
                "sessions_evicted_total",
                "Client sessions forgotten to keep the session table bounded.",
                self.sessions_evicted,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {prefix}_{name} {help}");
            let _ = writeln!(out, "# TYPE {prefix}_{name} counter");
            let _ = writeln!(out, "{prefix}_{name} {value}");
        }
        let _ = writeln!(
            out,
            "# HELP {prefix}_busy_rejections_total Requests answered busy because a bound was reached."
        );
        let _ = writeln!(out, "# TYPE {prefix}_busy_rejections_total counter");
        let _ = writeln!(
            out,
            "{prefix}_busy_rejections_total {}",
            self.busy_rejections
        );
        let _ = writeln!(
            out,
            "# HELP {prefix}_refused_messages_total Messages from the network refused before raft saw them."
        );
        let _ = writeln!(out, "# TYPE {prefix}_refused_messages_total counter");
        for (reason, count) in &self.refused_messages {
            let _ = writeln!(
                out,
                "{prefix}_refused_messages_total{{reason=\"{reason}\"}} {count}"
            );
        }
        let q = &self.queues;
        let _ = writeln!(
            out,
            "# HELP {prefix}_queue_depth Items waiting in a bounded queue (bytes for *_bytes)."
        );
        let _ = writeln!(out, "# TYPE {prefix}_queue_depth gauge");
        for (queue, depth) in [
            ("driver_inbox", q.driver_inbox),
            ("apply_backlog_entries", q.apply_backlog_entries),
            ("apply_backlog_bytes", q.apply_backlog_bytes),
            ("log_writes_in_flight", q.log_writes_in_flight),
            ("peer_send", q.peer_send),
            ("forward", q.forward),
            ("snapshot_receiving_bytes", q.snapshot_receiving_bytes),
            ("client_sessions", q.client_sessions),
            ("client_session_bytes", q.client_session_bytes),
        ] {
            let _ = writeln!(out, "{prefix}_queue_depth{{queue=\"{queue}\"}} {depth}");
        }
        let histograms = [
            (
                "log_write_seconds",
                "Durable log write (fsync) time.",
                &self.log_write_seconds,
            ),
            (
                "proposal_seconds",
                "Proposal latency through this node.",
                &self.proposal_seconds,
            ),
            (
                "read_seconds",
                "Read latency through this node.",
                &self.read_seconds,
            ),
        ];
        for (name, help, h) in histograms {
            let _ = writeln!(out, "# HELP {prefix}_{name} {help}");
            let _ = writeln!(out, "# TYPE {prefix}_{name} histogram");
            for (le, count) in &h.buckets {
                let _ = writeln!(out, "{prefix}_{name}_bucket{{le=\"{le}\"}} {count}");
            }
            let _ = writeln!(out, "{prefix}_{name}_bucket{{le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "{prefix}_{name}_sum {}", h.sum.as_secs_f64());
            let _ = writeln!(out, "{prefix}_{name}_count {}", h.count);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_rendered() {
        let m = NodeMetrics::default();
        m.log_write_seconds.observe(Duration::from_micros(50));
        m.log_write_seconds.observe(Duration::from_millis(3));
        m.log_write_seconds.observe(Duration::from_secs(10));
        NodeMetrics::inc(&m.proposals);
        let snap = m.snapshot();
        assert_eq!(snap.log_write_seconds.count, 3);
        assert_eq!(snap.log_write_seconds.buckets[0], (0.0001, 1));
        assert_eq!(snap.log_write_seconds.buckets.last().map(|b| b.1), Some(2));
        let text = snap.render_prometheus("raftkit");
        assert!(text.contains("raftkit_proposals_total 1"));
        assert!(text.contains("raftkit_log_write_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(text.contains("raftkit_log_write_seconds_count 3"));
        m.refuse(1, Refusal::NotMember, &"test");
        m.refuse(1, Refusal::NotMember, &"test");
        let text = m.snapshot().render_prometheus("raftkit");
        assert!(text.contains("raftkit_refused_messages_total{reason=\"not_member\"} 2"));
        assert!(text.contains("raftkit_refused_messages_total{reason=\"proposal\"} 0"));
        assert!(text.contains("raftkit_queue_depth{queue=\"apply_backlog_bytes\"} 0"));
    }
}
