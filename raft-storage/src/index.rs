//! The in-memory view both backends keep beside their files: the log's bounds, the term of
//! every live entry (8 bytes each, so `term` never touches the disk), the hard state and the
//! latest snapshot's metadata. It also validates writes, with the same rules as
//! `raft_core::MemLogStorage`, before anything reaches the disk.

use std::collections::VecDeque;

use raft_core::backend::check_append;
use raft_core::backend::eraftpb::{ConfState, Entry, HardState, SnapshotMetadata};
use raft_core::StorageError;

fn compacted<T>() -> raft::Result<T> {
    Err(raft::Error::Store(raft::StorageError::Compacted))
}

fn unavailable<T>() -> raft::Result<T> {
    Err(raft::Error::Store(raft::StorageError::Unavailable))
}

/// What a validated append changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AppendPlan {
    /// The last index before the append.
    pub(crate) old_last: u64,
    /// The last index after it.
    pub(crate) new_last: u64,
    /// True when the append replaces existing entries (a conflicting suffix).
    pub(crate) overwrites: bool,
}

/// The log's shape and small state, mirrored in memory.
#[derive(Debug, Default, Clone)]
pub(crate) struct LogIndex {
    /// Index and term of the entry just before the first live one.
    pub(crate) truncated_index: u64,
    pub(crate) truncated_term: u64,
    /// Terms of the live entries `truncated_index + 1 ..= last_index`.
    terms: VecDeque<u64>,
    pub(crate) hard_state: HardState,
    /// The latest snapshot's metadata (index 0: none).
    pub(crate) snapshot: SnapshotMetadata,
}

impl LogIndex {
    pub(crate) fn new(
        truncated_index: u64,
        truncated_term: u64,
        hard_state: HardState,
        snapshot: SnapshotMetadata,
    ) -> Self {
        Self {
            truncated_index,
            truncated_term,
            terms: VecDeque::new(),
            hard_state,
            snapshot,
        }
    }

    /// Adds the term of the next entry while loading the log from disk.
    pub(crate) fn push_loaded(&mut self, index: u64, term: u64) -> Result<(), StorageError> {
        if index != self.last_index() + 1 {
            return Err(StorageError::Corrupt(format!(
                "the stored log has a hole: entry {index} follows {}",
                self.last_index()
            )));
        }
        self.terms.push_back(term);
        Ok(())
    }

    pub(crate) fn first_index(&self) -> u64 {
        self.truncated_index + 1
    }

    pub(crate) fn last_index(&self) -> u64 {
        self.truncated_index + self.terms.len() as u64
    }

    pub(crate) fn snapshot_index(&self) -> u64 {
        self.snapshot.index
    }

    pub(crate) fn conf_state(&self) -> ConfState {
        self.snapshot.conf_state.clone().unwrap_or_default()
    }

    pub(crate) fn term(&self, index: u64) -> raft::Result<u64> {
        if index == self.truncated_index {
            return Ok(self.truncated_term);
        }
        if index < self.truncated_index {
            return compacted();
        }
        if index > self.last_index() {
            return unavailable();
        }
        Ok(self.terms[(index - self.first_index()) as usize])
    }

    /// Checks that `[low, high)` can be read: `Ok(false)` when it is empty.
    pub(crate) fn check_range(&self, low: u64, high: u64) -> raft::Result<bool> {
        if low < self.first_index() {
            return compacted();
        }
        if high > self.last_index() + 1 || low > high {
            return unavailable();
        }
        Ok(low < high)
    }

    /// Validates an append and says what it changes; `None` for an empty batch.
    pub(crate) fn plan_append(
        &self,
        entries: &[Entry],
    ) -> Result<Option<AppendPlan>, StorageError> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(None);
        };
        check_append(entries, self.first_index(), self.last_index())?;
        Ok(Some(AppendPlan {
            old_last: self.last_index(),
            new_last: last.index,
            overwrites: first.index <= self.last_index(),
        }))
    }

    /// Applies an append validated by [`LogIndex::plan_append`].
    pub(crate) fn append(&mut self, entries: &[Entry], hard_state: Option<&HardState>) {
        if let Some(first) = entries.first() {
            let keep = (first.index - self.first_index()) as usize;
            self.terms.truncate(keep);
            self.terms.extend(entries.iter().map(|e| e.term));
        }
        if let Some(hs) = hard_state {
            self.hard_state = hs.clone();
        }
    }

    /// Validates a compaction to `index`: `Ok(None)` when it changes nothing, else the term of
    /// the new boundary entry.
    pub(crate) fn plan_compact(&self, index: u64) -> Result<Option<u64>, StorageError> {
        if index <= self.truncated_index {
            return Ok(None);
        }
        let snap = self.snapshot_index();
        if index > snap {
            return Err(StorageError::Invalid(format!(
                "compacting to {index} would pass the latest snapshot at {snap}"
            )));
        }
        if index > self.last_index() {
            return Err(StorageError::Invalid(format!(
                "compacting to {index} is past the last index {}",
                self.last_index()
            )));
        }
        Ok(Some(self.terms[(index - self.first_index()) as usize]))
    }

    /// Applies a compaction validated by [`LogIndex::plan_compact`].
    pub(crate) fn compact(&mut self, index: u64, term: u64) {
        let drop = (index - self.truncated_index) as usize;
        self.terms.drain(..drop);
        self.truncated_index = index;
        self.truncated_term = term;
    }

    /// The hard state after storing a snapshot at `meta`: commit (and for an installed
    /// snapshot, term) raised to the snapshot's.
    pub(crate) fn hard_state_after_snapshot(
        &self,
        meta: &SnapshotMetadata,
        install: bool,
    ) -> HardState {
        let mut hs = self.hard_state.clone();
        hs.commit = hs.commit.max(meta.index);
        if install {
            hs.term = hs.term.max(meta.term);
        }
        hs
    }

    /// Validates a local snapshot: `Ok(false)` when it is older than the stored one.
    pub(crate) fn plan_save_snapshot(&self, meta: &SnapshotMetadata) -> Result<bool, StorageError> {
        if meta.index <= self.snapshot_index() {
            return Ok(false);
        }
        if meta.index > self.last_index() {
            return Err(StorageError::Invalid(format!(
                "snapshot at index {} is past the last log index {}",
                meta.index,
                self.last_index()
            )));
        }
        Ok(true)
    }

    /// Records a saved or installed snapshot (and, when installed, replaces the log by it).
    pub(crate) fn set_snapshot(
        &mut self,
        meta: SnapshotMetadata,
        hard_state: HardState,
        install: bool,
    ) {
        if install {
            self.terms.clear();
            self.truncated_index = meta.index;
            self.truncated_term = meta.term;
        }
        self.hard_state = hard_state;
        self.snapshot = meta;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    #[test]
    fn plans_and_applies_like_the_memory_log() {
        let mut ix = LogIndex::default();
        assert_eq!(ix.first_index(), 1);
        assert_eq!(ix.last_index(), 0);
        let batch: Vec<Entry> = (1..=5).map(|i| entry(i, 1)).collect();
        let plan = ix.plan_append(&batch).unwrap().unwrap();
        assert_eq!(
            plan,
            AppendPlan {
                old_last: 0,
                new_last: 5,
                overwrites: false
            }
        );
        ix.append(&batch, None);
        let over = vec![entry(3, 2)];
        assert!(ix.plan_append(&over).unwrap().unwrap().overwrites);
        ix.append(&over, None);
        assert_eq!(ix.last_index(), 3);
        assert_eq!(ix.term(3).unwrap(), 2);
        assert!(ix.plan_append(&[entry(5, 2)]).is_err(), "gap");
        assert!(ix.plan_compact(2).is_err(), "no snapshot yet");
        ix.snapshot.index = 2;
        assert_eq!(ix.plan_compact(2).unwrap(), Some(1));
        ix.compact(2, 1);
        assert_eq!(ix.first_index(), 3);
        assert_eq!(ix.term(2).unwrap(), 1);
        assert!(ix.term(1).is_err());
        assert!(ix.plan_append(&[entry(2, 3)]).is_err(), "before first");
        assert!(ix.push_loaded(9, 1).is_err(), "hole while loading");
    }
}
