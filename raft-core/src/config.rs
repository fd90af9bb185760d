//! Node configuration with documented defaults.

use std::time::Duration;

use crate::error::Error;

/// Tunables of a raft node. `Config::default()` suits a LAN cluster; tests shorten the tick.
///
/// ```
/// use std::time::Duration;
/// let config = raft_core::Config {
///     tick_interval: Duration::from_millis(50),
///     ..Default::default()
/// };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    /// One raft tick. Default 100 ms.
    pub tick_interval: Duration,
    /// Ticks without a leader's heartbeat before a follower starts an election; the actual
    /// timeout is randomized in `[election_tick, 2 * election_tick)`. Default 10 (1 s).
    pub election_tick: usize,
    /// Ticks between a leader's heartbeats. Default 1.
    pub heartbeat_tick: usize,
    /// Pre-vote: a partitioned node cannot disrupt the cluster when it returns. Default on.
    pub pre_vote: bool,
    /// A leader that cannot reach a quorum steps down. Default on (lease reads need it).
    pub check_quorum: bool,
    /// Maximum bytes of entries in one append message. Default 1 MiB (raft-rs's 0 would mean
    /// one entry per message).
    pub max_size_per_msg: u64,
    /// Maximum append messages in flight to one follower. Default 256.
    pub max_inflight_msgs: usize,
    /// Maximum bytes of committed entries handed to the state machine per round. Default 16 MiB.
    pub max_committed_size_per_ready: u64,
    /// Take a snapshot after this many entries were applied since the last one. Default 10 000.
    pub snapshot_threshold: u64,
    /// Entries kept in the log behind a snapshot so slow followers can catch up without a
    /// snapshot. Default 1 000.
    pub snapshot_log_tail: u64,
    /// Bytes per snapshot chunk on the wire. Default 1 MiB.
    pub snapshot_chunk_size: usize,
    /// Largest snapshot a node accepts from a leader. Default 4 GiB.
    pub max_snapshot_size: u64,
    /// Deadline of proposals, reads and membership changes through the [`crate::Mailbox`].
    /// Default 5 s.
    pub request_timeout: Duration,
    /// A pending linearizable read is re-issued when unanswered this long (raft-rs drops reads
    /// silently, e.g. while a new leader has not committed in its term). Default 300 ms.
    pub read_retry_interval: Duration,
    /// A learner that joined is promoted once it is at most this many entries behind.
    /// Default 100.
    pub promote_lag: u64,
    /// Bytes of committed entries waiting for [`crate::Store::apply`] beyond which the leader
    /// answers new proposals [`crate::NotApplied::Busy`], and beyond twice which a node stops
    /// taking new committed entries from raft until its store catches up. Default 64 MiB.
    pub max_apply_backlog_bytes: u64,
    /// Bytes of proposed but uncommitted entries a leader holds before it answers new
    /// proposals [`crate::NotApplied::Busy`] (raft-rs's `max_uncommitted_size`). Default 64 MiB;
    /// at least `max_size_per_msg`.
    pub max_uncommitted_bytes: u64,
    /// Largest proposal accepted, in bytes. Default 8 MiB.
    pub max_proposal_bytes: usize,
    /// Reads a node keeps waiting (for a read index or for the state machine to catch up)
    /// before it answers new ones [`crate::NotApplied::Busy`]. Default 65 536.
    pub max_pending_reads: usize,
    /// Requests a follower queues for forwarding to one leader before it answers new ones
    /// [`crate::NotApplied::Busy`]. Default 4 096.
    pub max_forward_queue: usize,
    /// A snapshot transfer from the leader that sends no chunk for this long is dropped.
    /// Default 60 s.
    pub snapshot_transfer_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tick_interval: Duration::from_millis(100),
            election_tick: 10,
            heartbeat_tick: 1,
            pre_vote: true,
            check_quorum: true,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            max_committed_size_per_ready: 16 * 1024 * 1024,
            snapshot_threshold: 10_000,
            snapshot_log_tail: 1_000,
            snapshot_chunk_size: 1024 * 1024,
            max_snapshot_size: 4 * 1024 * 1024 * 1024,
            request_timeout: Duration::from_secs(5),
            read_retry_interval: Duration::from_millis(300),
            promote_lag: 100,
            max_apply_backlog_bytes: 64 * 1024 * 1024,
            max_uncommitted_bytes: 64 * 1024 * 1024,
            max_proposal_bytes: 8 * 1024 * 1024,
            max_pending_reads: 65_536,
            max_forward_queue: 4_096,
            snapshot_transfer_timeout: Duration::from_secs(60),
        }
    }
}

impl Config {
    /// Checks the values make sense together.
    pub fn validate(&self) -> Result<(), Error> {
        let fail = |m: &str| Err(Error::config(m.to_string()));
        if self.tick_interval.is_zero() {
            return fail("tick_interval must be positive");
        }
        if self.heartbeat_tick == 0 {
            return fail("heartbeat_tick must be at least 1");
        }
        if self.election_tick <= self.heartbeat_tick {
            return fail("election_tick must be greater than heartbeat_tick");
        }
        if self.snapshot_threshold == 0 {
            return fail("snapshot_threshold must be at least 1");
        }
        if self.snapshot_chunk_size == 0 {
            return fail("snapshot_chunk_size must be positive");
        }
        if self.request_timeout.is_zero() {
            return fail("request_timeout must be positive");
        }
        if self.max_uncommitted_bytes < self.max_size_per_msg {
            return fail("max_uncommitted_bytes must be at least max_size_per_msg");
        }
        if self.max_apply_backlog_bytes == 0 {
            return fail("max_apply_backlog_bytes must be positive");
        }
        if self.max_proposal_bytes == 0 || self.max_pending_reads == 0 {
            return fail("max_proposal_bytes and max_pending_reads must be positive");
        }
        if self.max_forward_queue == 0 {
            return fail("max_forward_queue must be positive");
        }
        if self.snapshot_transfer_timeout.is_zero() {
            return fail("snapshot_transfer_timeout must be positive");
        }
        Ok(())
    }

    /// The shortest possible election timeout.
    pub(crate) fn min_election_timeout(&self) -> Duration {
        self.tick_interval * self.election_tick as u32
    }

    /// How long a leader may serve lease reads after a quorum acknowledged it, counted from
    /// before it asked: `election_tick - 2` ticks, or zero (no lease reads) when
    /// `check_quorum` is off or the election timeout is too short to leave a margin.
    ///
    /// A follower that heard from the leader refuses to vote for `election_tick` of its own
    /// ticks; the first of them may come at once after the heartbeat, so the window is at
    /// least `election_tick - 1` tick intervals. One more tick of margin absorbs clock rate
    /// differences between the nodes.
    pub(crate) fn lease_duration(&self) -> Duration {
        if !self.check_quorum || self.election_tick < 3 {
            return Duration::ZERO;
        }
        self.tick_interval * (self.election_tick - 2) as u32
    }

    pub(crate) fn to_raft(&self, id: u64, applied: u64) -> raft::Config {
        raft::Config {
            id,
            election_tick: self.election_tick,
            heartbeat_tick: self.heartbeat_tick,
            applied,
            max_size_per_msg: self.max_size_per_msg,
            max_inflight_msgs: self.max_inflight_msgs,
            check_quorum: self.check_quorum,
            pre_vote: self.pre_vote,
            max_committed_size_per_ready: self.max_committed_size_per_ready,
            read_only_option: raft::ReadOnlyOption::Safe,
            // Merge appends queued for the same follower into one message.
            batch_append: true,
            max_uncommitted_size: self.max_uncommitted_bytes,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert!(Config::default().validate().is_ok());
        let bad = Config {
            election_tick: 1,
            heartbeat_tick: 1,
            ..Config::default()
        };
        let err = bad
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("election_tick"), "{err}");
        let zero = Config {
            tick_interval: Duration::ZERO,
            ..Config::default()
        };
        assert!(zero.validate().is_err());
    }

    /// The lease never outlasts the window in which followers refuse to vote.
    #[test]
    fn the_lease_ends_a_tick_before_followers_may_vote() {
        for election_tick in 2..40 {
            for check_quorum in [true, false] {
                let c = Config {
                    election_tick,
                    heartbeat_tick: 1,
                    check_quorum,
                    ..Config::default()
                };
                let lease = c.lease_duration();
                let no_vote_window = c.tick_interval * (election_tick as u32 - 1);
                if !check_quorum {
                    assert_eq!(lease, Duration::ZERO, "no lease without check_quorum");
                } else {
                    assert!(
                        lease + c.tick_interval <= no_vote_window || lease.is_zero(),
                        "election_tick {election_tick}: lease {lease:?}, window {no_vote_window:?}"
                    );
                }
            }
        }
        assert_eq!(
            Config::default().lease_duration(),
            Duration::from_millis(800)
        );
    }

    #[test]
    fn raft_config_raises_message_size_and_enables_safety() {
        let c = Config::default().to_raft(7, 3);
        assert_eq!(c.id, 7);
        assert_eq!(c.applied, 3);
        assert!(c.max_size_per_msg > 0);
        assert!(c.pre_vote && c.check_quorum);
        assert!(c.validate().is_ok());
    }
}
