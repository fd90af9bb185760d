//! Errors returned by raft-core. Each says what happened and what the caller can do.

use std::time::Duration;

/// The result type of raft-core's public API.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error from a [`crate::Raft`] node or its [`crate::Mailbox`].
///
/// Errors about proposals say whether the proposal took effect:
/// [`Error::outcome_unknown`] is true when it may or may not have been applied.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No leader answered before the deadline: the cluster may be electing one, or a quorum
    /// of voters is down or unreachable. Retry later.
    #[error("no leader available within {0:?}: the cluster is electing a leader or has lost its quorum; retry later")]
    NoLeader(Duration),
    /// This node is not the leader. The [`crate::Mailbox`] forwards to the leader by itself;
    /// this error reaches users only from low-level calls.
    #[error("not the leader (leader: {leader_id:?} at {leader_addr:?})")]
    NotLeader {
        /// The leader, when known.
        leader_id: Option<u64>,
        /// The leader's address, when known.
        leader_addr: Option<String>,
    },
    /// The request did not finish before its deadline. A write may or may not have taken effect.
    #[error("request timed out after {0:?}; a write may or may not have taken effect")]
    Timeout(Duration),
    /// The proposal's log entry was replaced by another leader's entry: it did not take effect
    /// and can be retried safely.
    #[error("proposal dropped before it committed (the leader changed); it did not take effect and can be retried")]
    ProposalDropped,
    /// The leader that accepted the proposal lost its leadership before the entry committed.
    /// It may still commit under the new leader.
    #[error("leadership lost while the proposal was pending; it may or may not take effect")]
    LeadershipLost,
    /// The user's [`crate::Store`] returned an error while applying or querying.
    #[error("state machine error: {0}")]
    Store(String),
    /// The durable log failed. The node stops: nothing is acknowledged after a failed write.
    #[error("log storage failed: {0}")]
    Storage(#[from] StorageError),
    /// The transport failed to reach a peer.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The request is malformed or not allowed (for example removing the last voter).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Another membership change is in progress; retry once it completes.
    #[error("another membership change is in progress; retry when it completes")]
    MembershipBusy,
    /// The node is overloaded (a bounded queue is full, or the state machine lags behind
    /// the log). The request did not take effect; retry after a short pause.
    #[error("busy: {0}; the request did not take effect, retry shortly")]
    Busy(String),
    /// The node has stopped (shut down, removed from the cluster, or failed).
    #[error("the raft node is not running (stopped, removed, or failed)")]
    Shutdown,
    /// The node was configured inconsistently, or its storage holds an impossible state.
    #[error("configuration error: {0}")]
    Config(String),
    /// raft-rs rejected an operation.
    #[error("raft: {0}")]
    Raft(String),
    /// A peer answered with an error this version does not know.
    #[error("remote node failed: {0}")]
    Remote(String),
}

impl Error {
    /// True when a write that failed with this error may nevertheless have been applied.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            Error::Timeout(_)
                | Error::LeadershipLost
                | Error::Transport(TransportError::Failed { .. })
                | Error::Remote(_)
                | Error::Shutdown
                | Error::Storage(_)
        )
    }

    /// True when the request certainly did not take effect and retrying it is safe.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::NoLeader(_)
                | Error::NotLeader { .. }
                | Error::ProposalDropped
                | Error::MembershipBusy
                | Error::Busy(_)
                | Error::Transport(TransportError::Unreachable { .. })
        )
    }
}

impl From<raft::Error> for Error {
    fn from(e: raft::Error) -> Self {
        match e {
            raft::Error::ProposalDropped => Error::ProposalDropped,
            raft::Error::Store(s) => Error::Storage(StorageError::from(raft::Error::Store(s))),
            other => Error::Raft(other.to_string()),
        }
    }
}

/// A failure of a [`crate::LogStorage`] backend.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// Reading or writing the disk failed.
    #[error("storage I/O failed: {0}")]
    Io(String),
    /// The stored data is damaged or inconsistent.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The caller asked for something the storage cannot do (for example a write that would
    /// leave a gap in the log).
    #[error("invalid storage operation: {0}")]
    Invalid(String),
    /// The storage is already open elsewhere.
    #[error("storage is locked by another process: {0}")]
    Locked(String),
    /// The requested entries were compacted away.
    #[error("requested entries are compacted")]
    Compacted,
    /// The requested entries do not exist yet.
    #[error("requested entries are unavailable")]
    Unavailable,
}

impl From<raft::Error> for StorageError {
    fn from(e: raft::Error) -> Self {
        match e {
            raft::Error::Store(raft::StorageError::Compacted) => StorageError::Compacted,
            raft::Error::Store(raft::StorageError::Unavailable) => StorageError::Unavailable,
            other => StorageError::Io(other.to_string()),
        }
    }
}

impl From<StorageError> for raft::Error {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Compacted => raft::Error::Store(raft::StorageError::Compacted),
            StorageError::Unavailable => raft::Error::Store(raft::StorageError::Unavailable),
            other => raft::Error::Store(raft::StorageError::Other(Box::new(other))),
        }
    }
}

/// A failure of a [`crate::Transport`].
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The request was not delivered (connection refused, unknown address, partition).
    #[error("peer {addr} is unreachable: {reason}")]
    Unreachable {
        /// The peer's address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The call failed after the request may have been delivered.
    #[error("call to {addr} failed after sending; the request may have been delivered: {reason}")]
    Failed {
        /// The peer's address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// A message could not be decoded or is larger than allowed.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Setting up the transport failed (bind, certificates, ...).
    #[error("transport setup failed: {0}")]
    Setup(String),
}

impl TransportError {
    /// [`TransportError::Unreachable`]: `addr` certainly did not get the message.
    pub fn unreachable(addr: &str, reason: impl Into<String>) -> Self {
        TransportError::Unreachable {
            addr: addr.to_string(),
            reason: reason.into(),
        }
    }

    /// [`TransportError::Failed`]: `addr` may have processed the request.
    pub fn failed(addr: &str, reason: impl Into<String>) -> Self {
        TransportError::Failed {
            addr: addr.to_string(),
            reason: reason.into(),
        }
    }
}
