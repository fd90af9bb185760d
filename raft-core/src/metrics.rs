//! Counters and latency histograms of one node, renderable as Prometheus text.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
    pub(crate) proposals: AtomicU64,
    pub(crate) applied_entries: AtomicU64,
    pub(crate) leader_changes: AtomicU64,
    pub(crate) log_writes: AtomicU64,
    pub(crate) snapshots_taken: AtomicU64,
    pub(crate) snapshots_installed: AtomicU64,
    pub(crate) log_write_seconds: Histogram,
    pub(crate) proposal_seconds: Histogram,
    pub(crate) read_seconds: Histogram,
}

impl NodeMetrics {
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Metrics {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Metrics {
            proposals: get(&self.proposals),
            applied_entries: get(&self.applied_entries),
            leader_changes: get(&self.leader_changes),
            log_writes: get(&self.log_writes),
            snapshots_taken: get(&self.snapshots_taken),
            snapshots_installed: get(&self.snapshots_installed),
            log_write_seconds: self.log_write_seconds.snapshot(),
            proposal_seconds: self.proposal_seconds.snapshot(),
            read_seconds: self.read_seconds.snapshot(),
        }
    }
}

/// What a node has done since it started; see [`crate::Mailbox::metrics`].
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    /// Proposals this node appended as leader.
    pub proposals: u64,
    /// Committed entries applied to the state machine.
    pub applied_entries: u64,
    /// Times the known leader changed.
    pub leader_changes: u64,
    /// Durable log writes (each one fsync).
    pub log_writes: u64,
    /// Snapshots this node took of its state machine.
    pub snapshots_taken: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
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
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {prefix}_{name} {help}");
            let _ = writeln!(out, "# TYPE {prefix}_{name} counter");
            let _ = writeln!(out, "{prefix}_{name} {value}");
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
    }
}
