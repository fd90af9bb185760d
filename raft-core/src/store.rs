//! The user's state machine.

use async_trait::async_trait;

pub use crate::error::StoreError;
use crate::snapshot_stream::{SnapshotSink, SnapshotSource};

/// The result type of [`Store`] methods: any error type converts into its [`StoreError`] with
/// `?`.
pub type StoreResult<T> = Result<T, StoreError>;

/// The replicated state machine: the four methods a user implements.
///
/// raft-core guarantees that every committed entry is passed to [`Store::apply`] exactly once
/// per process incarnation, in log order, and that snapshots ([`Store::snapshot_to`]) are
/// taken between applies, so a snapshot covers exactly the entries applied before it.
///
/// A snapshot is written to, and restored from, a stream: the log storage keeps it in a file
/// beside the log, and a new or lagging member receives it chunk by chunk. A store with a
/// small state implements [`Store::snapshot`] and [`Store::restore`] and keeps the default
/// stream methods; a store with a large state also overrides [`Store::snapshot_to`] and
/// [`Store::restore_from`], so that its state is never serialized into one buffer.
///
/// `apply` must be deterministic: every replica applies the same entries in the same order and
/// must reach the same state. An `Err` from `apply` is returned to the proposing client; the
/// entry still counts as applied, so `apply` must leave the state unchanged when it fails (on
/// every replica alike). An `Err` from `restore` stops the node.
///
/// ```
/// use raft_core::{async_trait, Store, StoreResult};
///
/// #[derive(Default)]
/// struct Counter(u64);
///
/// #[async_trait]
/// impl Store for Counter {
///     async fn apply(&mut self, message: &[u8]) -> StoreResult<Vec<u8>> {
///         self.0 += message.len() as u64;
///         Ok(self.0.to_le_bytes().to_vec())
///     }
///     async fn query(&self, _query: &[u8]) -> StoreResult<Vec<u8>> {
///         Ok(self.0.to_le_bytes().to_vec())
///     }
///     async fn snapshot(&self) -> StoreResult<Vec<u8>> {
///         Ok(self.0.to_le_bytes().to_vec())
///     }
///     async fn restore(&mut self, snapshot: &[u8]) -> StoreResult<()> {
///         let bytes: [u8; 8] = snapshot.try_into()?;
///         self.0 = u64::from_le_bytes(bytes);
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies one committed command and returns its result to the proposer.
    async fn apply(&mut self, message: &[u8]) -> StoreResult<Vec<u8>>;
    /// Answers a read-only query against the current state.
    async fn query(&self, query: &[u8]) -> StoreResult<Vec<u8>>;
    /// Serializes the whole state.
    async fn snapshot(&self) -> StoreResult<Vec<u8>>;
    /// Replaces the whole state with a snapshot produced by [`Store::snapshot`].
    async fn restore(&mut self, snapshot: &[u8]) -> StoreResult<()>;

    /// Writes the whole state into `sink`, as a stream. raft-core takes every snapshot this
    /// way; the default writes what [`Store::snapshot`] returns. A store whose state is large
    /// overrides it (and [`Store::restore_from`]) so that no serialized copy of the state is
    /// ever held whole: raft-core hands the stream to the log storage a chunk at a time.
    async fn snapshot_to(&self, sink: &mut SnapshotSink) -> StoreResult<()> {
        let data = self.snapshot().await?;
        sink.write(&data).await
    }

    /// Replaces the whole state with the stream [`Store::snapshot_to`] wrote. raft-core
    /// restores every snapshot this way; the default reads it whole and calls
    /// [`Store::restore`].
    async fn restore_from(&mut self, source: &mut SnapshotSource) -> StoreResult<()> {
        let data = source.read_to_end().await?;
        self.restore(&data).await
    }

    /// [`Store::apply`] for a store that wants to know where in the log each command is:
    /// `index` is the command's log index, the same on every replica, increasing from one
    /// call to the next (not by one: membership changes and empty entries take indexes too).
    /// raft-core applies every command this way; the default ignores the index and calls
    /// [`Store::apply`]. A store that keeps a history of its changes (to let clients watch
    /// them and resume by index) overrides it.
    async fn apply_at(&mut self, index: u64, message: &[u8]) -> StoreResult<Vec<u8>> {
        let _ = index;
        self.apply(message).await
    }

    /// [`Store::restore_from`] for a store that wants to know which log index the snapshot
    /// covers: the state after it is the state after applying every entry up to `index`, and
    /// the next [`Store::apply_at`] comes with a higher index. raft-core restores every
    /// snapshot this way; the default ignores the index and calls [`Store::restore_from`].
    async fn restore_from_at(
        &mut self,
        index: u64,
        source: &mut SnapshotSource,
    ) -> StoreResult<()> {
        let _ = index;
        self.restore_from(source).await
    }
}
