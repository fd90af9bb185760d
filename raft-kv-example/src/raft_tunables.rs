//! The raft tunables of `raft-kv serve`: one flag per useful field of [`raft_core::Config`],
//! with raft-core's own defaults (so `--help` shows them and they cannot drift).

use std::time::Duration;

use anyhow::{bail, Result};
use raft_core::Config;

/// raft-core's defaults, for the flags' `default_value_t`.
fn defaults() -> Config {
    Config::default()
}

/// Whole milliseconds of a default duration, for a `*-ms` flag's default.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Longest duration flag, in milliseconds (one day): raft-core adds these to `Instant`s, and
/// anything longer is a typo, not a setting.
const MAX_MS: u64 = 86_400_000;
/// Longest tick (one minute) and most ticks per timeout: raft-core multiplies the two, so
/// together they must stay far from `Duration`'s range.
const MAX_TICK_MS: u64 = 60_000;
const MAX_TICKS: u64 = 1_000_000;

/// Flags that tune the raft node (see `raft_core::Config`).
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Raft tunables")]
pub struct RaftTunables {
    /// One raft tick, in milliseconds: elections and heartbeats are counted in ticks.
    #[arg(long, value_name = "MS", default_value_t = millis(defaults().tick_interval),
          value_parser = clap::value_parser!(u64).range(1..=MAX_TICK_MS))]
    pub tick_interval_ms: u64,
    /// Ticks without a leader's heartbeat before a follower starts an election (randomized in
    /// [N, 2N)). Must be more than --heartbeat-ticks.
    #[arg(long, value_name = "TICKS", default_value_t = defaults().election_tick as u64,
          value_parser = clap::value_parser!(u64).range(1..=MAX_TICKS))]
    pub election_ticks: u64,
    /// Ticks between a leader's heartbeats.
    #[arg(long, value_name = "TICKS", default_value_t = defaults().heartbeat_tick as u64,
          value_parser = clap::value_parser!(u64).range(1..=MAX_TICKS))]
    pub heartbeat_ticks: u64,
    /// Pre-vote: a node cut off from the cluster cannot disrupt it when it comes back
    /// (`--pre-vote=false` turns it off).
    #[arg(long, value_name = "BOOL", default_value_t = defaults().pre_vote,
          num_args = 0..=1, require_equals = true, default_missing_value = "true",
          action = clap::ArgAction::Set)]
    pub pre_vote: bool,
    /// A leader that cannot reach a quorum steps down; lease reads need it
    /// (`--check-quorum=false` turns it off).
    #[arg(long, value_name = "BOOL", default_value_t = defaults().check_quorum,
          num_args = 0..=1, require_equals = true, default_missing_value = "true",
          action = clap::ArgAction::Set)]
    pub check_quorum: bool,
    /// Take a snapshot after this many entries were applied since the last one.
    #[arg(long, value_name = "ENTRIES", default_value_t = defaults().snapshot_threshold,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_threshold: u64,
    /// Entries kept in the log behind a snapshot, so a slow follower can catch up without one.
    #[arg(long, value_name = "ENTRIES", default_value_t = defaults().snapshot_log_tail)]
    pub snapshot_log_tail: u64,
    /// Bytes per snapshot chunk sent to a follower.
    #[arg(long, value_name = "BYTES", default_value_t = defaults().snapshot_chunk_size as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_chunk_size: u64,
    /// Largest snapshot this node accepts from a leader, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = defaults().max_snapshot_size,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_snapshot_size: u64,
    /// A snapshot transfer from the leader that sends nothing for this long is dropped.
    #[arg(long, value_name = "MS", default_value_t = millis(defaults().snapshot_transfer_timeout),
          value_parser = clap::value_parser!(u64).range(1..=MAX_MS))]
    pub snapshot_transfer_timeout_ms: u64,
    /// Deadline of a write, read or membership change inside the cluster, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = millis(defaults().request_timeout),
          value_parser = clap::value_parser!(u64).range(1..=MAX_MS))]
    pub request_timeout_ms: u64,
    /// A linearizable read still unanswered after this long is asked again (raft may drop
    /// reads, e.g. while a new leader has not committed in its term).
    #[arg(long, value_name = "MS", default_value_t = millis(defaults().read_retry_interval),
          value_parser = clap::value_parser!(u64).range(1..=MAX_MS))]
    pub read_retry_interval_ms: u64,
    /// Bytes of committed entries waiting to be applied beyond which the leader answers new
    /// writes "busy".
    #[arg(long, value_name = "BYTES", default_value_t = defaults().max_apply_backlog_bytes,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_apply_backlog_bytes: u64,
    /// Bytes of proposed, uncommitted entries a leader holds before it answers new writes
    /// "busy". At least --max-size-per-msg.
    #[arg(long, value_name = "BYTES", default_value_t = defaults().max_uncommitted_bytes,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_uncommitted_bytes: u64,
    /// Largest batch of entries in one append message, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = defaults().max_size_per_msg,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_size_per_msg: u64,
    /// Append messages in flight to one follower at most.
    #[arg(long, value_name = "N", default_value_t = defaults().max_inflight_msgs as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_inflight_msgs: u64,
    /// Bytes of committed entries handed to the state machine per round at most.
    #[arg(long, value_name = "BYTES", default_value_t = defaults().max_committed_size_per_ready,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_committed_size_per_ready: u64,
    /// Largest write accepted, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = defaults().max_proposal_bytes as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_proposal_bytes: u64,
    /// Reads waiting inside raft at most before new ones are answered "busy".
    #[arg(long, value_name = "N", default_value_t = defaults().max_pending_reads as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_pending_reads: u64,
    /// Requests a follower queues for forwarding to the leader at most before new ones are
    /// answered "busy".
    #[arg(long, value_name = "N", default_value_t = defaults().max_forward_queue as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_forward_queue: u64,
    /// A learner that joined is promoted to voter once it is at most this many entries behind.
    #[arg(long, value_name = "ENTRIES", default_value_t = defaults().promote_lag)]
    pub promote_lag: u64,
}

/// raft-core's field names in its validation messages, and the flags that set them: an
/// operator must be told which flag (or config file key) to fix.
const FIELD_FLAGS: &[(&str, &str)] = &[
    ("tick_interval", "--tick-interval-ms"),
    ("election_tick", "--election-ticks"),
    ("heartbeat_tick", "--heartbeat-ticks"),
    ("snapshot_threshold", "--snapshot-threshold"),
    ("snapshot_chunk_size", "--snapshot-chunk-size"),
    (
        "snapshot_transfer_timeout",
        "--snapshot-transfer-timeout-ms",
    ),
    ("request_timeout", "--request-timeout-ms"),
    ("max_uncommitted_bytes", "--max-uncommitted-bytes"),
    ("max_size_per_msg", "--max-size-per-msg"),
    ("max_apply_backlog_bytes", "--max-apply-backlog-bytes"),
    ("max_proposal_bytes", "--max-proposal-bytes"),
    ("max_pending_reads", "--max-pending-reads"),
    ("max_forward_queue", "--max-forward-queue"),
];

/// Rewrites raft-core's field names in `message` as flag names. Longest names first, so a
/// name that is a prefix of another (`max_size_per_msg` in none today, but cheap to guard)
/// does not half-replace it.
fn name_flags(message: &str) -> String {
    let mut pairs = FIELD_FLAGS.to_vec();
    pairs.sort_by_key(|(field, _)| std::cmp::Reverse(field.len()));
    // Placeholders first: a flag name must not be rewritten by a later, shorter field.
    let mut text = message.to_string();
    for (i, (field, _)) in pairs.iter().enumerate() {
        text = text.replace(field, &format!("\u{0}{i}\u{0}"));
    }
    for (i, (_, flag)) in pairs.iter().enumerate() {
        text = text.replace(&format!("\u{0}{i}\u{0}"), flag);
    }
    text
}

/// `value` as a `usize`, or an error naming `flag` (only on targets narrower than 64 bits).
fn to_usize(value: u64, flag: &str) -> Result<usize> {
    match usize::try_from(value) {
        Ok(v) => Ok(v),
        Err(_) => bail!("{flag} {value} is too large for this machine"),
    }
}

/// The most payload one proposal, append message or snapshot chunk may carry: both
/// transports refuse messages over 16 MiB (raft-kv keeps their default), less room for the
/// framing and the entry's own fields.
const MAX_PAYLOAD_BYTES: u64 = 16 * 1024 * 1024 - 64 * 1024;

impl RaftTunables {
    /// The raft-core configuration these flags describe, checked as a whole: a value that
    /// makes no sense with another (--election-ticks not above --heartbeat-ticks) is refused
    /// with the flags named.
    pub fn to_config(&self) -> Result<Config> {
        let config = Config {
            tick_interval: Duration::from_millis(self.tick_interval_ms),
            election_tick: to_usize(self.election_ticks, "--election-ticks")?,
            heartbeat_tick: to_usize(self.heartbeat_ticks, "--heartbeat-ticks")?,
            pre_vote: self.pre_vote,
            check_quorum: self.check_quorum,
            max_size_per_msg: self.max_size_per_msg,
            max_inflight_msgs: to_usize(self.max_inflight_msgs, "--max-inflight-msgs")?,
            max_committed_size_per_ready: self.max_committed_size_per_ready,
            snapshot_threshold: self.snapshot_threshold,
            snapshot_log_tail: self.snapshot_log_tail,
            snapshot_chunk_size: to_usize(self.snapshot_chunk_size, "--snapshot-chunk-size")?,
            max_snapshot_size: self.max_snapshot_size,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            read_retry_interval: Duration::from_millis(self.read_retry_interval_ms),
            promote_lag: self.promote_lag,
            max_apply_backlog_bytes: self.max_apply_backlog_bytes,
            max_uncommitted_bytes: self.max_uncommitted_bytes,
            max_proposal_bytes: to_usize(self.max_proposal_bytes, "--max-proposal-bytes")?,
            max_pending_reads: to_usize(self.max_pending_reads, "--max-pending-reads")?,
            max_forward_queue: to_usize(self.max_forward_queue, "--max-forward-queue")?,
            snapshot_transfer_timeout: Duration::from_millis(self.snapshot_transfer_timeout_ms),
        };
        if let Err(e) = config.validate() {
            bail!("{}", name_flags(&e.to_string()));
        }
        for (flag, bytes) in [
            ("--max-proposal-bytes", self.max_proposal_bytes),
            ("--max-size-per-msg", self.max_size_per_msg),
            ("--snapshot-chunk-size", self.snapshot_chunk_size),
        ] {
            if bytes > MAX_PAYLOAD_BYTES {
                bail!(
                    "{flag} = {bytes} is more than the {MAX_PAYLOAD_BYTES} bytes one transport \
                     message can carry beside its framing: such a message would be refused \
                     every time, and replication would stop behind it"
                );
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        tunables: RaftTunables,
    }

    fn parse(args: &[&str]) -> Result<RaftTunables, clap::Error> {
        Cli::try_parse_from(std::iter::once("t").chain(args.iter().copied())).map(|c| c.tunables)
    }

    #[test]
    fn sizes_one_transport_message_cannot_carry_are_refused() {
        for flag in [
            "--max-proposal-bytes",
            "--max-size-per-msg",
            "--snapshot-chunk-size",
        ] {
            let t = parse(&[flag, "33554432"]).unwrap();
            let e = t.to_config().err().unwrap().to_string();
            assert!(e.contains(flag) && e.contains("transport message"), "{e}");
        }
    }

    #[test]
    fn defaults_are_raft_cores() {
        let config = parse(&[]).unwrap().to_config().unwrap();
        let core = Config::default();
        assert_eq!(config.tick_interval, core.tick_interval);
        assert_eq!(config.election_tick, core.election_tick);
        assert_eq!(config.heartbeat_tick, core.heartbeat_tick);
        assert_eq!(config.pre_vote, core.pre_vote);
        assert_eq!(config.snapshot_threshold, core.snapshot_threshold);
        assert_eq!(config.max_uncommitted_bytes, core.max_uncommitted_bytes);
        assert_eq!(config.request_timeout, core.request_timeout);
        assert_eq!(config.promote_lag, core.promote_lag);
    }

    #[test]
    fn flags_set_fields_and_bad_combinations_name_the_flags() {
        let t = parse(&[
            "--tick-interval-ms",
            "20",
            "--pre-vote=false",
            "--check-quorum",
        ])
        .unwrap();
        let config = t.to_config().unwrap();
        assert_eq!(config.tick_interval, Duration::from_millis(20));
        assert!(!config.pre_vote);
        assert!(config.check_quorum);

        let t = parse(&["--election-ticks", "2", "--heartbeat-ticks", "2"]).unwrap();
        let e = t.to_config().unwrap_err().to_string();
        assert!(
            e.contains("--election-ticks") && e.contains("--heartbeat-ticks"),
            "{e}"
        );
        let t = parse(&["--max-uncommitted-bytes", "10"]).unwrap();
        let e = t.to_config().unwrap_err().to_string();
        assert!(
            e.contains("--max-uncommitted-bytes") && e.contains("--max-size-per-msg"),
            "{e}"
        );
        assert!(parse(&["--election-ticks", "0"]).is_err());
        assert!(parse(&["--tick-interval-ms", "x"]).is_err());
    }
}
