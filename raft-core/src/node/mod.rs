//! The node internals: one driver task owns the `RawNode`; an apply task owns the user's
//! `Store`; per-peer sender tasks own the outbound queues; the server side turns inbound
//! traffic into driver messages.

pub(crate) mod apply;
pub(crate) mod driver;
pub(crate) mod inbound;
pub(crate) mod membership;
pub(crate) mod messages;
pub(crate) mod peers;
pub(crate) mod server;
pub(crate) mod snapshot_transfer;

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters shared between the node's tasks and its status reports.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) applied: AtomicU64,
    /// The leader this node follows (0: none known), for the server side's checks.
    pub(crate) leader: AtomicU64,
    pub(crate) pending_proposals: AtomicU64,
    pub(crate) pending_apply_reads: AtomicU64,
    pub(crate) metrics: crate::metrics::NodeMetrics,
}

impl Counters {
    pub(crate) fn get(v: &AtomicU64) -> u64 {
        v.load(Ordering::Relaxed)
    }

    pub(crate) fn set(v: &AtomicU64, x: u64) {
        v.store(x, Ordering::Relaxed)
    }
}
