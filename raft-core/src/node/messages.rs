//! Messages between the node's tasks.

use std::time::Instant;

use raft::prelude::{ConfState, Entry, Message, Snapshot};
use raft::SnapshotStatus;
use tokio::sync::oneshot;

use super::op::Op;
use crate::error::{Error, Result};
use crate::records::Member;
use crate::snapshot_payload::SnapshotPayload;
use crate::status::Status;
use crate::wire::MembershipAction;

/// Answers one waiting client, exactly once.
pub(crate) type Responder = oneshot::Sender<Result<Vec<u8>>>;

/// A membership request.
#[derive(Debug, Clone)]
pub(crate) struct MembershipChange {
    pub(crate) action: MembershipAction,
    pub(crate) node_id: u64,
    pub(crate) addr: String,
    /// Sent by the joining node itself, whose storage is empty.
    pub(crate) empty_storage: bool,
}

impl MembershipChange {
    /// A change requested by an operator (not by the joining node itself).
    pub(crate) fn new(action: MembershipAction, node_id: u64, addr: String) -> Self {
        MembershipChange {
            action,
            node_id,
            addr,
            empty_storage: false,
        }
    }
}

/// Everything the driver task reacts to, besides its tick.
pub(crate) enum DriverMsg {
    /// A raft message from a peer that passed the wire checks, and where the peer says it
    /// listens (shared by every message of its batch).
    Raft(Box<Message>, Option<std::sync::Arc<str>>),
    /// A client's operation, answered on `reply` by `deadline` at the latest.
    Op {
        op: Op,
        deadline: Instant,
        reply: Responder,
    },
    /// The operations of one batch another node forwarded, in one message: each answered on
    /// its own responder, as if it had come alone.
    Ops(Vec<(Op, Instant, Responder)>),
    /// A backup at a linearizable point: a ReadIndex barrier like a linearizable read, then
    /// the apply task sends its state on `backup` (see [`crate::backup`]).
    Backup {
        deadline: Instant,
        reply: Responder,
        backup: oneshot::Sender<crate::Backup>,
    },
    Status(oneshot::Sender<Status>),
    /// The apply task took a snapshot of the state machine.
    SnapshotTaken(Box<(Snapshot, SnapshotPayload)>),
    /// A snapshot the driver handed to a storage thread was saved (or not), and the log
    /// compacted behind it.
    SnapshotSaved(Result<u64>),
    Unreachable(u64),
    SnapshotStatus(u64, SnapshotStatus),
    /// The apply task failed (e.g. `Store::restore` errored): stop the node.
    Fatal(Error),
    Shutdown,
}

/// A committed entry on its way to the apply task; conf changes carry their outcome.
pub(crate) struct CommittedEntry {
    pub(crate) entry: Entry,
    pub(crate) conf: Option<ConfOutcome>,
}

/// The result of applying a conf change to raft, and the membership right after it.
pub(crate) struct ConfOutcome {
    pub(crate) result: std::result::Result<ConfState, String>,
    pub(crate) members: Vec<Member>,
}

/// What a read runs once the store has applied far enough.
pub(crate) enum ReadOp {
    /// The user's query ([`crate::Store::query`]).
    Query(Vec<u8>),
    /// A [`crate::Backup`] of the whole state, sent on its own channel (the read's reply
    /// then carries nothing).
    Backup(oneshot::Sender<crate::Backup>),
}

/// What the apply task works through, in order.
pub(crate) enum ApplyMsg {
    /// A client waits for the membership change the driver just proposed at `index`; it is
    /// matched to the entry by the entry's context (raft-rs turns a refused change into an
    /// empty entry at the same index and term).
    Register {
        index: u64,
        term: u64,
        seq: u64,
        deadline: Instant,
        reply: Responder,
    },
    /// Clients wait for the proposals the driver just appended at `first_index` onwards, one
    /// waiter per entry, all in `term`. Only this leader writes entries of its term, and it
    /// never rewrites them, so the entry applied at such an index with that term is the
    /// proposal: no per-entry context is needed.
    RegisterProposals {
        first_index: u64,
        term: u64,
        waiters: Vec<(Instant, Responder)>,
    },
    Entries(Vec<CommittedEntry>),
    /// A snapshot from the leader was installed in the log storage; restore the store from it.
    Restore(std::sync::Arc<Snapshot>),
    /// Run `query` once the applied index reaches `index`.
    Read {
        index: u64,
        query: ReadOp,
        deadline: Instant,
        reply: Responder,
    },
    /// Take a snapshot as soon as it includes this peer in its conf state.
    SnapshotFor(u64),
    /// Leadership was lost: fail every proposal waiter (their outcome is unknown).
    FailProposals,
}
