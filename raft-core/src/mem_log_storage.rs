//! The in-memory log store: the embedded default, and the reference for the conformance suite.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use raft::prelude::{Entry, HardState, Snapshot, SnapshotMetadata};
use raft::RaftState;

use crate::error::StorageError;
use crate::log_storage::{limit_size, snapshot_index, snapshot_term, LogStorage};

/// A [`LogStorage`] kept in memory. Nothing survives the process; cheap clones share the log,
/// so a test can drop a node and restart it from the same clone.
///
/// ```
/// use raft_core::{LogStorage, MemLogStorage};
/// let storage = MemLogStorage::new();
/// assert_eq!(storage.last_index().unwrap(), 0);
/// ```
#[derive(Clone, Default)]
pub struct MemLogStorage {
    inner: Arc<RwLock<MemLog>>,
    /// Asks to be written as a disk is (see [`MemLogStorage::with_deferred_writes`]).
    deferred_writes: bool,
}

#[derive(Default)]
struct MemLog {
    hard_state: HardState,
    snapshot: Snapshot,
    /// Index and term of the entry just before `entries[0]`.
    truncated_index: u64,
    truncated_term: u64,
    entries: Vec<Entry>,
}

impl MemLog {
    fn first_index(&self) -> u64 {
        self.truncated_index + 1
    }

    fn last_index(&self) -> u64 {
        self.truncated_index + self.entries.len() as u64
    }

    /// Checks that `entries` may be appended and drops the entries they replace.
    fn make_room_for(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        check_append(entries, self.first_index(), self.last_index())?;
        let keep = (first.index - self.first_index()) as usize;
        self.entries.truncate(keep);
        Ok(())
    }

    fn keep_hard_state(&mut self, hard_state: Option<&HardState>) {
        if let Some(hs) = hard_state {
            self.hard_state = hs.clone();
        }
    }
}

impl MemLogStorage {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// A memory log that asks to be written as a disk is: on the log writer, with each
    /// `Ready` advanced before its write lands. The simulator uses it, so it takes the path
    /// disks take.
    #[cfg(feature = "testing")]
    pub(crate) fn with_deferred_writes() -> Self {
        MemLogStorage {
            deferred_writes: true,
            ..Self::default()
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, MemLog> {
        // A panic while holding the lock cannot leave the log half-written: every write
        // validates before it mutates.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, MemLog> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl LogStorage for MemLogStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let log = self.read();
        let conf_state = log
            .snapshot
            .metadata
            .as_ref()
            .and_then(|m| m.conf_state.clone().into_option())
            .unwrap_or_default();
        Ok(RaftState::new(log.hard_state.clone(), conf_state))
    }

    fn entries(&self, low: u64, high: u64, max_size: Option<u64>) -> raft::Result<Vec<Entry>> {
        let log = self.read();
        if low < log.first_index() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > log.last_index() + 1 || low > high {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let offset = log.first_index();
        let mut out = log.entries[(low - offset) as usize..(high - offset) as usize].to_vec();
        limit_size(&mut out, max_size);
        Ok(out)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        let log = self.read();
        if index == log.truncated_index {
            return Ok(log.truncated_term);
        }
        if index < log.truncated_index {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if index > log.last_index() {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        Ok(log.entries[(index - log.first_index()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.read().first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.read().last_index())
    }

    fn snapshot(&self) -> raft::Result<Snapshot> {
        Ok(self.read().snapshot.clone())
    }

    fn snapshot_metadata(&self) -> raft::Result<SnapshotMetadata> {
        Ok(self.read().snapshot.metadata.clone().unwrap_or_default())
    }

    fn append(
        &self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageError> {
        let mut log = self.write();
        log.make_room_for(entries)?;
        log.entries.extend_from_slice(entries);
        log.keep_hard_state(hard_state);
        Ok(())
    }

    fn append_owned(
        &self,
        entries: Vec<Entry>,
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageError> {
        let mut log = self.write();
        log.make_room_for(&entries)?;
        log.entries.extend(entries);
        log.keep_hard_state(hard_state);
        Ok(())
    }

    fn install_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let mut log = self.write();
        let index = snapshot_index(snapshot);
        if index == 0 {
            return Err(StorageError::Invalid(
                "cannot install an empty snapshot".into(),
            ));
        }
        log.entries.clear();
        log.truncated_index = index;
        log.truncated_term = snapshot_term(snapshot);
        log.hard_state.commit = log.hard_state.commit.max(index);
        log.hard_state.term = log.hard_state.term.max(snapshot_term(snapshot));
        log.snapshot = snapshot.clone();
        Ok(())
    }

    fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let mut log = self.write();
        let index = snapshot_index(snapshot);
        if index <= snapshot_index(&log.snapshot) {
            return Ok(());
        }
        if index > log.last_index() {
            return Err(StorageError::Invalid(format!(
                "snapshot at index {index} is past the last log index {}",
                log.last_index()
            )));
        }
        log.hard_state.commit = log.hard_state.commit.max(index);
        log.snapshot = snapshot.clone();
        Ok(())
    }

    fn compact(&self, index: u64) -> Result<(), StorageError> {
        let mut log = self.write();
        if index <= log.truncated_index {
            return Ok(());
        }
        let snap = snapshot_index(&log.snapshot);
        if index > snap {
            return Err(StorageError::Invalid(format!(
                "compacting to {index} would pass the latest snapshot at {snap}"
            )));
        }
        if index > log.last_index() {
            return Err(StorageError::Invalid(format!(
                "compacting to {index} is past the last index {}",
                log.last_index()
            )));
        }
        let drop = (index - log.truncated_index) as usize;
        log.truncated_term = log.entries[drop - 1].term;
        log.truncated_index = index;
        log.entries.drain(..drop);
        Ok(())
    }
    fn writes_in_place(&self) -> bool {
        !self.deferred_writes
    }
}

/// Checks that `entries` may be appended to a log holding `first_index..=last_index`:
/// consecutive indexes, starting neither before the log's first entry nor past its end.
pub fn check_append(
    entries: &[Entry],
    first_index: u64,
    last_index: u64,
) -> Result<(), StorageError> {
    let Some(first) = entries.first() else {
        return Ok(());
    };
    check_contiguous(entries)?;
    if first.index < first_index {
        return Err(StorageError::Invalid(format!(
            "append at index {} is before the first index {first_index}",
            first.index
        )));
    }
    if first.index > last_index + 1 {
        return Err(StorageError::Invalid(format!(
            "append at index {} leaves a gap after the last index {last_index}",
            first.index
        )));
    }
    Ok(())
}

/// Checks that a batch of entries has consecutive indexes; backends call it before writing.
pub fn check_contiguous(entries: &[Entry]) -> Result<(), StorageError> {
    for pair in entries.windows(2) {
        if pair[1].index != pair[0].index + 1 {
            return Err(StorageError::Invalid(format!(
                "entries are not contiguous: {} then {}",
                pair[0].index, pair[1].index
            )));
        }
    }
    Ok(())
}
