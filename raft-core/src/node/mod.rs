//! The node internals: the I/O-free [`core::NodeCore`] owns the `RawNode`, driven by one
//! driver task ([`driver`]); an apply task owns the user's
//! `Store`; per-peer sender tasks own the outbound queues; the server side turns inbound
//! traffic into driver messages.

pub(crate) mod apply;
pub(crate) mod cluster_id;
pub(crate) mod core;
pub(crate) mod driver;
pub(crate) mod error_codec;
pub(crate) mod handle;
pub(crate) mod inbound;
pub(crate) mod membership;
pub(crate) mod messages;
pub(crate) mod op;
pub(crate) mod open;
pub(crate) mod peers;
pub(crate) mod progress;
pub(crate) mod server;
pub(crate) mod sessions;
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
    /// The ids in this node's configuration (empty while it has none), so the server side
    /// refuses outsiders' raft messages before they take room in the driver's inbox.
    pub(crate) members: std::sync::RwLock<std::collections::HashSet<u64>>,
    /// The cluster this node belongs to (0 until a node that joins installs its first
    /// snapshot); see [`cluster_id`].
    pub(crate) cluster_id: AtomicU64,
    /// False while a node with empty storage waits for the cluster to accept its join.
    pub(crate) join_pending: std::sync::atomic::AtomicBool,
    /// The leader and its address when known, so the mailbox sends straight to it rather
    /// than asking the driver first.
    pub(crate) leader_route: std::sync::RwLock<Option<(u64, String)>>,
    /// Role, leader, term, membership and applied index, for `Mailbox::watch_status`: the
    /// driver and the apply task update it only when something changed.
    pub(crate) live: tokio::sync::watch::Sender<crate::status::LiveStatus>,
}

impl Counters {
    /// True when raft messages from `id` may be queued for the driver.
    pub(crate) fn admits(&self, id: u64) -> bool {
        let members = self.members.read().unwrap_or_else(|e| e.into_inner());
        members.is_empty() || members.contains(&id)
    }

    pub(crate) fn set_members(&self, ids: impl Iterator<Item = u64>) {
        let mut members = self.members.write().unwrap_or_else(|e| e.into_inner());
        members.clear();
        members.extend(ids);
    }

    /// The leader's id and address when another node than `me` leads; on the leader itself
    /// this neither locks nor allocates.
    pub(crate) fn remote_leader(&self, me: u64) -> Option<(u64, String)> {
        if Self::get(&self.leader) == me {
            return None;
        }
        self.leader_route
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .filter(|(leader, _)| *leader != me)
    }

    pub(crate) fn get(v: &AtomicU64) -> u64 {
        v.load(Ordering::Relaxed)
    }

    pub(crate) fn set(v: &AtomicU64, x: u64) {
        v.store(x, Ordering::Relaxed)
    }
}
