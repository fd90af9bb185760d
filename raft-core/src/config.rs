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
        }
    }
}

impl Config {
    /// Checks the values make sense together.
    pub fn validate(&self) -> Result<(), Error> {
        let fail = |m: &str| Err(Error::Config(m.to_string()));
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
        Ok(())
    }

    /// The shortest possible election timeout, the basis of leader leases.
    pub(crate) fn min_election_timeout(&self) -> Duration {
        self.tick_interval * self.election_tick as u32
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
