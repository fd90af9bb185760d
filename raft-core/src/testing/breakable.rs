//! A [`LogStorage`] wrapper whose writes can be made to fail, like a full or dying disk.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use raft::prelude::{Entry, HardState, Snapshot, SnapshotMetadata};
use raft::RaftState;

use crate::error::StorageError;
use crate::log_storage::LogStorage;
use crate::snapshot_payload::{PayloadReader, SnapshotPayload, SnapshotPayloadWriter};

/// Delegates to another storage until [`BreakableLog::break_writes`]; from then on every
/// write (append, snapshot, compaction) fails with [`StorageError::Io`] and reads still work.
///
/// ```
/// use std::sync::Arc;
/// use raft_core::{LogStorage, MemLogStorage};
/// use raft_core::testing::breakable::BreakableLog;
///
/// let log = BreakableLog::new(Arc::new(MemLogStorage::new()), "simulated: disk full");
/// log.break_writes();
/// assert!(log.append(&[], None).is_err());
/// ```
pub struct BreakableLog {
    inner: Arc<dyn LogStorage>,
    broken: AtomicBool,
    reason: String,
}

impl BreakableLog {
    /// Wraps `inner`; failed writes report `reason`.
    pub fn new(inner: Arc<dyn LogStorage>, reason: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            broken: AtomicBool::new(false),
            reason: reason.into(),
        })
    }

    /// Makes every later write fail.
    pub fn break_writes(&self) {
        self.broken.store(true, Ordering::SeqCst);
    }

    /// The wrapped storage, to check what reached it.
    pub fn inner(&self) -> &Arc<dyn LogStorage> {
        &self.inner
    }

    fn check(&self) -> Result<(), StorageError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(StorageError::Io(self.reason.clone()));
        }
        Ok(())
    }
}

impl LogStorage for BreakableLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.inner.initial_state()
    }
    fn entries(&self, low: u64, high: u64, max: Option<u64>) -> raft::Result<Vec<Entry>> {
        self.inner.entries(low, high, max)
    }
    fn term(&self, index: u64) -> raft::Result<u64> {
        self.inner.term(index)
    }
    fn first_index(&self) -> raft::Result<u64> {
        self.inner.first_index()
    }
    fn last_index(&self) -> raft::Result<u64> {
        self.inner.last_index()
    }
    fn snapshot(&self) -> raft::Result<Snapshot> {
        self.inner.snapshot()
    }
    fn append(&self, entries: &[Entry], hs: Option<&HardState>) -> Result<(), StorageError> {
        self.check()?;
        self.inner.append(entries, hs)
    }
    fn append_owned(
        &self,
        entries: Vec<Entry>,
        hs: Option<&HardState>,
    ) -> Result<(), StorageError> {
        self.check()?;
        self.inner.append_owned(entries, hs)
    }
    fn install_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.check()?;
        self.inner.install_snapshot(snapshot)
    }
    fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.check()?;
        self.inner.save_snapshot(snapshot)
    }
    fn compact(&self, index: u64) -> Result<(), StorageError> {
        self.check()?;
        self.inner.compact(index)
    }
    fn snapshot_payload_writer(&self) -> Result<Box<dyn SnapshotPayloadWriter>, StorageError> {
        self.check()?;
        self.inner.snapshot_payload_writer()
    }
    fn save_snapshot_with(
        &self,
        snapshot: &Snapshot,
        payload: SnapshotPayload,
    ) -> Result<(), StorageError> {
        self.check()?;
        self.inner.save_snapshot_with(snapshot, payload)
    }
    fn install_snapshot_with(
        &self,
        snapshot: &Snapshot,
        payload: SnapshotPayload,
    ) -> Result<(), StorageError> {
        self.check()?;
        self.inner.install_snapshot_with(snapshot, payload)
    }
    fn snapshot_payload(&self, meta: &SnapshotMetadata) -> Result<PayloadReader, StorageError> {
        self.inner.snapshot_payload(meta)
    }
    fn snapshot_payloads_in_place(&self) -> bool {
        self.inner.snapshot_payloads_in_place()
    }
    fn writes_in_place(&self) -> bool {
        self.inner.writes_in_place()
    }
}
