//! The durable raft log: the reads raft-rs needs plus atomic, durable writes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use raft::prelude::{Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState};

use crate::error::StorageError;
use crate::snapshot_payload::{
    inline_payload, InlinePayloadWriter, PayloadReader, SnapshotPayload, SnapshotPayloadWriter,
};
use crate::unsynced_entries::UnsyncedEntries;

/// The raft log, hard state and latest snapshot of one node.
///
/// Reads follow raft-rs's [`raft::Storage`] contract (including its `Compacted` and
/// `Unavailable` errors). Every write is durable when it returns: a node acknowledges nothing
/// that a write has not made durable. Writes are called from a blocking thread (in a running
/// node, its log-writer thread, one at a time and in order), never from an async runtime
/// worker, so implementations may fsync freely. Reads go on from other threads while a write
/// runs; raft-core never reads the entries a write in flight is storing (it serves those from
/// memory until the write returns).
///
/// The stored conf state is the one in the latest snapshot's metadata: raft-core rebuilds the
/// current membership by replaying the committed log after it, the way it rebuilds the user's
/// state machine.
///
/// Third-party backends check themselves with `raft_core::testing::conformance` (feature
/// `testing`).
pub trait LogStorage: Send + Sync + 'static {
    /// The persisted hard state, and the conf state of the latest snapshot.
    fn initial_state(&self) -> raft::Result<RaftState>;
    /// Entries in `[low, high)`, at least one if any exist, at most `max_size` bytes beyond the
    /// first. `Compacted` if `low` was compacted, `Unavailable` if `high > last_index + 1`.
    fn entries(&self, low: u64, high: u64, max_size: Option<u64>) -> raft::Result<Vec<Entry>>;
    /// The term of the entry at `index`; also answers for `first_index() - 1`.
    fn term(&self, index: u64) -> raft::Result<u64>;
    /// The index of the first entry still in the log (the last compacted index + 1).
    fn first_index(&self) -> raft::Result<u64>;
    /// The index of the last entry (`first_index() - 1` when the log is empty).
    fn last_index(&self) -> raft::Result<u64>;
    /// The latest snapshot, with its data; an empty snapshot (index 0) if there is none.
    fn snapshot(&self) -> raft::Result<Snapshot>;
    /// The latest snapshot's metadata alone (index 0 if there is none). raft-core asks for it
    /// on its hot paths (status, "does the snapshot cover this peer"), so backends that keep
    /// snapshot data in files should answer without reading them; the default reads the
    /// whole snapshot.
    fn snapshot_metadata(&self) -> raft::Result<SnapshotMetadata> {
        Ok(self.snapshot()?.metadata.unwrap_or_default())
    }

    /// Appends `entries`, replacing any existing entries from `entries[0].index` on, and stores
    /// `hard_state` if given, atomically and durably (one batch, one sync).
    fn append(&self, entries: &[Entry], hard_state: Option<&HardState>)
        -> Result<(), StorageError>;
    /// [`LogStorage::append`] for entries the caller gives up; raft-core writes every `Ready`
    /// this way. A backend that keeps entries in memory overrides it to keep them without a
    /// copy; the default appends them by reference.
    fn append_owned(
        &self,
        entries: Vec<Entry>,
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageError> {
        self.append(&entries, hard_state)
    }
    /// Installs a snapshot received from the leader: the whole log is replaced by it and the
    /// hard state's commit index is raised to the snapshot's index.
    fn install_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError>;
    /// Stores a snapshot this node took of its own state; the log is kept. Raises the stored
    /// commit index to the snapshot's index. An older snapshot than the stored one is ignored.
    fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError>;
    /// Drops every entry up to and including `index`, which must not pass the latest
    /// snapshot's index. Compacting an already compacted index does nothing.
    fn compact(&self, index: u64) -> Result<(), StorageError>;
    /// A writer for the payload (the user's state) of a snapshot this node takes or receives,
    /// which [`LogStorage::save_snapshot_with`] or [`LogStorage::install_snapshot_with`] then
    /// stores with its snapshot. Called on a blocking thread, like the writes.
    ///
    /// The default keeps the payload in memory and stores it inside the snapshot data (with
    /// [`LogStorage::save_snapshot`] and [`LogStorage::install_snapshot`]), as a log in
    /// memory does anyway. A backend that keeps snapshot data in files overrides the five
    /// payload methods together, so that a large state is streamed to and from its file;
    /// a wrapper around another log storage forwards all five, or the defaults silently
    /// hold every snapshot of the wrapped backend in memory.
    fn snapshot_payload_writer(&self) -> Result<Box<dyn SnapshotPayloadWriter>, StorageError> {
        Ok(Box::new(InlinePayloadWriter::default()))
    }
    /// [`LogStorage::save_snapshot`] for a snapshot whose data refers to a separate payload.
    fn save_snapshot_with(
        &self,
        snapshot: &Snapshot,
        payload: SnapshotPayload,
    ) -> Result<(), StorageError> {
        self.save_snapshot(&payload.inline_into(snapshot)?)
    }
    /// [`LogStorage::install_snapshot`] for a snapshot whose data refers to a separate
    /// payload.
    fn install_snapshot_with(
        &self,
        snapshot: &Snapshot,
        payload: SnapshotPayload,
    ) -> Result<(), StorageError> {
        self.install_snapshot(&payload.inline_into(snapshot)?)
    }
    /// Opens the payload of the stored snapshot `meta` names (the latest one). Called on a
    /// blocking thread unless [`LogStorage::snapshot_payloads_in_place`]; the reader may
    /// outlive a later snapshot replacing this one. The default reads the payload out of the
    /// stored snapshot's data.
    fn snapshot_payload(&self, meta: &SnapshotMetadata) -> Result<PayloadReader, StorageError> {
        let stored = self
            .snapshot()
            .map_err(|e| StorageError::Io(e.to_string()))?;
        let stored_meta = stored.metadata.clone().unwrap_or_default();
        if (stored_meta.index, stored_meta.term) != (meta.index, meta.term) {
            return Err(StorageError::Invalid(format!(
                "the snapshot at {} (term {}) is no longer the stored one",
                meta.index, meta.term
            )));
        }
        Ok(Box::new(std::io::Cursor::new(inline_payload(&stored)?)))
    }
    /// True when the payload methods never wait for I/O (the defaults, which keep payloads
    /// in memory): raft-core then calls them on its own task rather than on a blocking
    /// thread. Backends that override the payload methods to use files say `false`.
    fn snapshot_payloads_in_place(&self) -> bool {
        true
    }

    /// True when [`LogStorage::append`] and [`LogStorage::install_snapshot`] never wait for
    /// I/O (a log kept in memory): raft-core then calls them on its own task rather than
    /// handing each write to a blocking thread. Backends that write to disk keep the default,
    /// `false`.
    fn writes_in_place(&self) -> bool {
        false
    }
}

/// Adapts a shared [`LogStorage`] to raft-rs's [`raft::Storage`].
pub(crate) struct RaftStorage {
    pub(crate) log: Arc<dyn LogStorage>,
    /// A peer that needs a snapshot the stored one does not cover (0: none).
    pub(crate) snapshot_wanted_for: Arc<AtomicU64>,
    /// The oldest snapshot index each peer may be sent: the index at which it was last
    /// added as a learner. A node that rejoined after losing its disk must get a snapshot of
    /// its new incarnation (where it is a learner), never an older one that lists it as a
    /// voter.
    pub(crate) snapshot_floor: HashMap<u64, u64>,
    /// Entries the log writer has not synced yet; raft-rs reads them from here meanwhile.
    pub(crate) unsynced: UnsyncedEntries,
}

/// True when `id` is a member in a snapshot's conf state.
pub(crate) fn conf_covers(conf_state: Option<&raft::prelude::ConfState>, id: u64) -> bool {
    conf_state.is_some_and(|cs| {
        cs.voters
            .iter()
            .chain(&cs.learners)
            .chain(&cs.voters_outgoing)
            .any(|&v| v == id)
    })
}

impl raft::Storage for RaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.log.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        let Some(front) = self.unsynced.first_index().filter(|&front| high > front) else {
            return self.log.entries(low, high, max_size);
        };
        let mut out = Vec::new();
        if low < front {
            out = self.log.entries(low, front, max_size)?;
            if (out.len() as u64) < front - low {
                // The size limit ended the answer before the unsynced entries.
                return Ok(out);
            }
        }
        self.unsynced.extend_into(low.max(front), high, &mut out);
        limit_size(&mut out, max_size);
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        match self.unsynced.term(idx) {
            Some(term) => Ok(term),
            None => self.log.term(idx),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.log.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        match self.unsynced.last_index() {
            Some(last) => Ok(last),
            None => self.log.last_index(),
        }
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let unavailable = || raft::Error::Store(raft::StorageError::SnapshotTemporarilyUnavailable);
        // raft-rs treats any other error here as fatal: a failed read just means "later".
        let meta = match self.log.snapshot_metadata() {
            Ok(m) => m,
            Err(e) => {
                tracing::error!("reading the snapshot's metadata failed: {e}");
                return Err(unavailable());
            }
        };
        if meta.index < request_index {
            return Err(unavailable());
        }
        let floor = self.snapshot_floor.get(&to).copied().unwrap_or(0);
        if meta.index < floor || !conf_covers(meta.conf_state.as_ref(), to) {
            // A new member needs a snapshot that includes it; ask the apply task for one.
            self.snapshot_wanted_for.store(to, Ordering::Relaxed);
            return Err(unavailable());
        }
        match self.log.snapshot() {
            Ok(s) => Ok(s),
            Err(e) => {
                tracing::error!("reading the snapshot failed: {e}");
                Err(unavailable())
            }
        }
    }
}

/// The index of a snapshot (0 for an empty one).
pub(crate) fn snapshot_index(snapshot: &Snapshot) -> u64 {
    snapshot.metadata.as_ref().map_or(0, |m| m.index)
}

/// The term of a snapshot (0 for an empty one).
pub(crate) fn snapshot_term(snapshot: &Snapshot) -> u64 {
    snapshot.metadata.as_ref().map_or(0, |m| m.term)
}

/// Keeps entries from the front of `entries` while their encoded size stays within
/// `max_size`; always keeps the first one. Backends use it to honour `entries`'s limit.
pub fn limit_size(entries: &mut Vec<Entry>, max_size: Option<u64>) {
    raft::util::limit_size(entries, max_size);
}

impl<T: LogStorage + ?Sized> LogStorage for Arc<T> {
    fn initial_state(&self) -> raft::Result<RaftState> {
        (**self).initial_state()
    }
    fn entries(&self, low: u64, high: u64, max_size: Option<u64>) -> raft::Result<Vec<Entry>> {
        (**self).entries(low, high, max_size)
    }
    fn term(&self, index: u64) -> raft::Result<u64> {
        (**self).term(index)
    }
    fn first_index(&self) -> raft::Result<u64> {
        (**self).first_index()
    }
    fn last_index(&self) -> raft::Result<u64> {
        (**self).last_index()
    }
    fn snapshot(&self) -> raft::Result<Snapshot> {
        (**self).snapshot()
    }
    fn snapshot_metadata(&self) -> raft::Result<SnapshotMetadata> {
        (**self).snapshot_metadata()
    }
    fn append(
        &self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageError> {
        (**self).append(entries, hard_state)
    }
    fn append_owned(
        &self,
        entries: Vec<Entry>,
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageError> {
        (**self).append_owned(entries, hard_state)
    }
    fn install_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        (**self).install_snapshot(snapshot)
    }
    fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        (**self).save_snapshot(snapshot)
    }
    fn compact(&self, index: u64) -> Result<(), StorageError> {
        (**self).compact(index)
    }
    // Every defaulted method is forwarded too: a default here would silently replace the
    // backend's own (a file-backed payload would become one held in memory).
    fn snapshot_payload_writer(&self) -> Result<Box<dyn SnapshotPayloadWriter>, StorageError> {
        (**self).snapshot_payload_writer()
    }
    fn save_snapshot_with(
        &self,
        snapshot: &Snapshot,
        payload: SnapshotPayload,
    ) -> Result<(), StorageError> {
        (**self).save_snapshot_with(snapshot, payload)
    }
    fn install_snapshot_with(
        &self,
        snapshot: &Snapshot,
        payload: SnapshotPayload,
    ) -> Result<(), StorageError> {
        (**self).install_snapshot_with(snapshot, payload)
    }
    fn snapshot_payload(&self, meta: &SnapshotMetadata) -> Result<PayloadReader, StorageError> {
        (**self).snapshot_payload(meta)
    }
    fn snapshot_payloads_in_place(&self) -> bool {
        (**self).snapshot_payloads_in_place()
    }
    fn writes_in_place(&self) -> bool {
        (**self).writes_in_place()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::MemLogStorage;

    /// A log in memory whose payload methods all answer in their own recognizable way.
    struct PayloadProbe(MemLogStorage);

    fn probe(what: &str) -> StorageError {
        StorageError::Invalid(format!("probe {what}"))
    }

    impl LogStorage for PayloadProbe {
        fn initial_state(&self) -> raft::Result<RaftState> {
            self.0.initial_state()
        }
        fn entries(&self, low: u64, high: u64, max: Option<u64>) -> raft::Result<Vec<Entry>> {
            self.0.entries(low, high, max)
        }
        fn term(&self, index: u64) -> raft::Result<u64> {
            self.0.term(index)
        }
        fn first_index(&self) -> raft::Result<u64> {
            self.0.first_index()
        }
        fn last_index(&self) -> raft::Result<u64> {
            self.0.last_index()
        }
        fn snapshot(&self) -> raft::Result<Snapshot> {
            self.0.snapshot()
        }
        fn append(&self, entries: &[Entry], hs: Option<&HardState>) -> Result<(), StorageError> {
            self.0.append(entries, hs)
        }
        fn install_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
            self.0.install_snapshot(snapshot)
        }
        fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
            self.0.save_snapshot(snapshot)
        }
        fn compact(&self, index: u64) -> Result<(), StorageError> {
            self.0.compact(index)
        }
        fn snapshot_payload_writer(&self) -> Result<Box<dyn SnapshotPayloadWriter>, StorageError> {
            Err(probe("writer"))
        }
        fn save_snapshot_with(&self, _: &Snapshot, _: SnapshotPayload) -> Result<(), StorageError> {
            Err(probe("save"))
        }
        fn install_snapshot_with(
            &self,
            _: &Snapshot,
            _: SnapshotPayload,
        ) -> Result<(), StorageError> {
            Err(probe("install"))
        }
        fn snapshot_payload(&self, _: &SnapshotMetadata) -> Result<PayloadReader, StorageError> {
            Err(probe("read"))
        }
        fn snapshot_payloads_in_place(&self) -> bool {
            false
        }
        fn writes_in_place(&self) -> bool {
            true
        }
    }

    fn error_of<T>(result: Result<T, StorageError>) -> String {
        match result {
            Ok(_) => "no error".into(),
            Err(e) => e.to_string(),
        }
    }

    /// A backend handed over behind an `Arc` (as `Arc<dyn LogStorage>`, which raft-kv does)
    /// keeps its own payload methods: none falls back to the in-memory default.
    #[test]
    fn an_arc_forwards_every_method_the_backend_overrides() {
        let shared: Arc<dyn LogStorage> = Arc::new(PayloadProbe(MemLogStorage::new()));
        let wrapped: Arc<Arc<dyn LogStorage>> = Arc::new(shared);
        let payload = || SnapshotPayload::inline(vec![1, 2, 3]);
        assert!(error_of(wrapped.snapshot_payload_writer()).contains("probe writer"));
        assert!(
            error_of(wrapped.save_snapshot_with(&Snapshot::default(), payload()))
                .contains("probe save")
        );
        assert!(
            error_of(wrapped.install_snapshot_with(&Snapshot::default(), payload()))
                .contains("probe install")
        );
        assert!(
            error_of(wrapped.snapshot_payload(&SnapshotMetadata::default())).contains("probe read")
        );
        assert!(!wrapped.snapshot_payloads_in_place());
        assert!(wrapped.writes_in_place());
    }
}
