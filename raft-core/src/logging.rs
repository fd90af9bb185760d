//! Bridges raft-rs's slog output into `tracing`.

use std::fmt::Write as _;

use slog::{Drain, Key, OwnedKVList, Record, Serializer, KV};

/// An slog drain that re-emits every record as a `tracing` event (target `raft_rs`).
struct TracingDrain;

struct KvText(String);

impl Serializer for KvText {
    fn emit_arguments(&mut self, key: Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        // raft-rs attaches whole messages (entries, snapshot data) to its debug records:
        // format them only when someone listens.
        if !self.is_enabled(record.level()) {
            return Ok(());
        }
        let mut kv = KvText(String::new());
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        let msg = record.msg();
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft_rs", "{msg}{}", kv.0)
            }
            slog::Level::Warning => tracing::warn!(target: "raft_rs", "{msg}{}", kv.0),
            slog::Level::Info => tracing::info!(target: "raft_rs", "{msg}{}", kv.0),
            slog::Level::Debug => tracing::debug!(target: "raft_rs", "{msg}{}", kv.0),
            slog::Level::Trace => tracing::trace!(target: "raft_rs", "{msg}{}", kv.0),
        }
        Ok(())
    }

    fn is_enabled(&self, level: slog::Level) -> bool {
        match level {
            slog::Level::Critical | slog::Level::Error => {
                tracing::enabled!(target: "raft_rs", tracing::Level::ERROR)
            }
            slog::Level::Warning => tracing::enabled!(target: "raft_rs", tracing::Level::WARN),
            slog::Level::Info => tracing::enabled!(target: "raft_rs", tracing::Level::INFO),
            slog::Level::Debug => tracing::enabled!(target: "raft_rs", tracing::Level::DEBUG),
            slog::Level::Trace => tracing::enabled!(target: "raft_rs", tracing::Level::TRACE),
        }
    }
}

/// A slog logger for raft-rs that writes through `tracing`.
pub(crate) fn raft_logger(node_id: u64) -> slog::Logger {
    slog::Logger::root(TracingDrain.fuse(), slog::o!("raft_id" => node_id))
}
