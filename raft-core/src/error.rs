//! Errors returned by raft-core. Each says what happened and what the caller can do.

use std::time::Duration;

/// The result type of raft-core's public API.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error from a [`crate::Raft`] node or its [`crate::Mailbox`], typed by what it means for
/// the request: match on the variant to decide whether to retry.
///
/// - [`Error::NotApplied`]: it certainly did not take effect; retrying is safe.
/// - [`Error::MaybeApplied`]: a write may or may not have taken effect; only reading the state
///   tells.
/// - [`Error::NotLeader`]: this node does not lead (low-level calls only: the mailbox forwards).
/// - [`Error::Store`]: the state machine answered with an error, the same on every replica.
/// - [`Error::Invalid`]: the request cannot succeed as asked; retrying fails the same way.
/// - [`Error::Fatal`]: this node cannot serve (stopped, its disk failed, misconfigured).
///
/// ```
/// use raft_core::{Error, NotApplied};
/// fn should_retry(e: &Error) -> bool {
///     matches!(e, Error::NotApplied(_) | Error::NotLeader { .. })
/// }
/// assert!(should_retry(&Error::NotApplied(NotApplied::Dropped)));
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request did not take effect; it can be retried safely.
    #[error(transparent)]
    NotApplied(#[from] NotApplied),
    /// A write may or may not have taken effect.
    #[error(transparent)]
    MaybeApplied(#[from] MaybeApplied),
    /// This node is not the leader. The [`crate::Mailbox`] forwards to the leader by itself;
    /// this error reaches users only from low-level calls.
    #[error("not the leader (leader: {leader_id:?} at {leader_addr:?})")]
    NotLeader {
        /// The leader, when known.
        leader_id: Option<u64>,
        /// The leader's address, when known.
        leader_addr: Option<String>,
    },
    /// The user's [`crate::Store`] returned an error while applying or querying. A write that
    /// failed so counts as applied (with this answer) on every replica.
    #[error("state machine error: {0}")]
    Store(StoreError),
    /// The request is malformed or not allowed (for example removing the last voter).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// This node cannot serve.
    #[error(transparent)]
    Fatal(#[from] Fatal),
}

/// Why a request did not take effect. Retrying is safe.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum NotApplied {
    /// No leader answered before the deadline: the cluster may be electing one, or a quorum
    /// of voters is down or unreachable. Retry later.
    #[error("no leader available within {0:?}: the cluster is electing a leader or has lost its quorum; retry later")]
    NoLeader(Duration),
    /// The proposal's log entry was replaced by another leader's entry, or raft refused it.
    #[error("proposal dropped before it committed (the leader changed); it did not take effect and can be retried")]
    Dropped,
    /// Another membership change is in progress; retry once it completes.
    #[error("another membership change is in progress; retry when it completes")]
    MembershipBusy,
    /// The node is overloaded (a bounded queue is full, or the state machine lags behind the
    /// log). Retry after a short pause.
    #[error("busy: {0}; the request did not take effect, retry shortly")]
    Busy(String),
    /// The request never reached the node it was for.
    #[error(transparent)]
    Unreachable(TransportError),
    /// The cluster no longer remembers the client session the command was sent in (it was
    /// idle too long, or the session table was full): the command was not applied now. A
    /// [`crate::Mailbox`] starts a new session and sends it again; if an earlier attempt of
    /// the same command may have applied, it reports that outcome as unknown instead.
    #[error("the client session expired; the command was not applied now")]
    SessionExpired,
    /// A later command of the same client session was applied already: this one was not,
    /// and never will be (a late duplicate, or a session used by two callers at once).
    #[error("a later command of the client session was applied; this one was not")]
    SupersededInSession,
    /// The node reached belongs to another cluster and refused the request (this node's idea
    /// of who is at that address is out of date, or the node there was started with another
    /// cluster's data). The message names both clusters.
    #[error("{0}; the request did not take effect")]
    OtherCluster(String),
}

/// Why a write's outcome is unknown: it may have been applied.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum MaybeApplied {
    /// The request did not finish before its deadline.
    #[error("request timed out after {0:?}; a write may or may not have taken effect")]
    Timeout(Duration),
    /// The leader that accepted the proposal lost its leadership before the entry committed.
    /// It may still commit under the new leader.
    #[error("leadership lost while the proposal was pending; it may or may not take effect")]
    LeadershipLost,
    /// The node stopped while the request was pending.
    #[error("the node stopped while the request was pending; it may or may not take effect")]
    NodeStopped,
    /// The call to another node failed after the request may have been delivered.
    #[error(transparent)]
    Transport(TransportError),
    /// Another node answered with an error this version does not know.
    #[error("remote node failed: {0}")]
    Remote(String),
    /// A retry of the command found its client session forgotten by the cluster (idle too
    /// long, or the session table full), after an earlier attempt may have applied.
    #[error("the client session expired while the command was retried; it may or may not have taken effect")]
    SessionExpired,
    /// The command was applied earlier in its session, but its answer was too large to keep
    /// for retries.
    #[error("the command was applied, but its answer was too large to keep for a retry")]
    AnswerNotKept,
}

/// Why this node cannot serve.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Fatal {
    /// The node is not running (shut down, removed from the cluster, or failed). A request
    /// refused so did not take effect.
    #[error("the raft node is not running (stopped, removed, or failed)")]
    Shutdown,
    /// The durable log failed. The node stops: nothing is acknowledged after a failed write.
    #[error("log storage failed: {0}")]
    Storage(#[from] StorageError),
    /// The node was configured inconsistently, or its storage holds an impossible state.
    #[error("configuration error: {0}")]
    Config(String),
    /// The node failed and stopped (its state machine panicked, for example). Requests that
    /// were pending on it may or may not have taken effect.
    #[error("the node failed: {0}")]
    Failed(String),
}

impl Error {
    /// [`Fatal::Config`].
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error::Fatal(Fatal::Config(message.into()))
    }

    /// [`NotApplied::Busy`].
    pub(crate) fn busy(message: impl Into<String>) -> Self {
        Error::NotApplied(NotApplied::Busy(message.into()))
    }

    /// [`Fatal::Shutdown`]: the node refused the request, so it did not take effect.
    pub(crate) fn shutdown() -> Self {
        Error::Fatal(Fatal::Shutdown)
    }

    /// [`MaybeApplied::Timeout`].
    pub(crate) fn timeout(after: Duration) -> Self {
        Error::MaybeApplied(MaybeApplied::Timeout(after))
    }

    /// [`NotApplied::NoLeader`].
    pub(crate) fn no_leader(waited: Duration) -> Self {
        Error::NotApplied(NotApplied::NoLeader(waited))
    }

    /// [`NotApplied::Dropped`].
    pub(crate) fn dropped() -> Self {
        Error::NotApplied(NotApplied::Dropped)
    }

    /// [`MaybeApplied::AnswerNotKept`].
    pub(crate) fn applied_answer_not_kept() -> Self {
        Error::MaybeApplied(MaybeApplied::AnswerNotKept)
    }

    /// [`NotApplied::MembershipBusy`].
    pub(crate) fn membership_busy() -> Self {
        Error::NotApplied(NotApplied::MembershipBusy)
    }

    /// [`MaybeApplied::LeadershipLost`].
    pub(crate) fn leadership_lost() -> Self {
        Error::MaybeApplied(MaybeApplied::LeadershipLost)
    }

    /// [`MaybeApplied::NodeStopped`]: the node stopped while the request was pending.
    pub(crate) fn node_stopped() -> Self {
        Error::MaybeApplied(MaybeApplied::NodeStopped)
    }

    /// [`MaybeApplied::Remote`].
    pub(crate) fn remote(message: impl Into<String>) -> Self {
        Error::MaybeApplied(MaybeApplied::Remote(message.into()))
    }

    /// [`Error::Store`] with this message.
    pub(crate) fn store(message: impl std::fmt::Display) -> Self {
        Error::Store(StoreError::msg(message))
    }
}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        Error::Fatal(Fatal::Storage(e))
    }
}

impl From<TransportError> for Error {
    /// By what the transport knows: not delivered, too large to send, or maybe delivered.
    fn from(e: TransportError) -> Self {
        match e {
            TransportError::Unreachable { .. } => Error::NotApplied(NotApplied::Unreachable(e)),
            TransportError::Malformed(m) => Error::Invalid(m),
            TransportError::Setup(m) => Error::config(m),
            TransportError::Failed { .. } => Error::MaybeApplied(MaybeApplied::Transport(e)),
        }
    }
}

impl From<raft::Error> for Error {
    fn from(e: raft::Error) -> Self {
        match e {
            raft::Error::ProposalDropped => Error::NotApplied(NotApplied::Dropped),
            raft::Error::Store(s) => StorageError::from(raft::Error::Store(s)).into(),
            other => Error::Invalid(format!("raft refused: {other}")),
        }
    }
}

/// An error from the user's [`crate::Store`]. Any error converts into it with `?`; it travels
/// to the caller, possibly on another node, as its message.
///
/// ```
/// use raft_core::StoreError;
/// fn parse(bytes: &[u8]) -> Result<u64, StoreError> {
///     let text = std::str::from_utf8(bytes)?;
///     let n = text.parse::<u64>()?;
///     if n == 0 {
///         return Err(StoreError::msg("zero is not allowed"));
///     }
///     Ok(n)
/// }
/// assert_eq!(parse(b"0").unwrap_err().to_string(), "zero is not allowed");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(String);

impl StoreError {
    /// An error with this message.
    pub fn msg(message: impl std::fmt::Display) -> Self {
        StoreError(message.to_string())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for StoreError {
    fn from(e: E) -> Self {
        StoreError(e.to_string())
    }
}

impl From<StoreError> for Box<dyn std::error::Error + Send + Sync> {
    fn from(e: StoreError) -> Self {
        e.0.into()
    }
}

impl From<StoreError> for anyhow::Error {
    fn from(e: StoreError) -> Self {
        anyhow::Error::msg(e.0)
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
