//! `MemLogStorage` passes the conformance suite every backend must pass.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use raft_core::testing::conformance::{run_all, StorageFactory};
use raft_core::MemLogStorage;

struct Mem;

impl StorageFactory for Mem {
    type Storage = MemLogStorage;

    fn create(&mut self) -> MemLogStorage {
        MemLogStorage::new()
    }

    fn reopen(&mut self, _storage: MemLogStorage) -> Option<MemLogStorage> {
        None
    }
}

#[test]
fn mem_log_storage_conforms() {
    run_all(&mut Mem);
}

/// The suite also catches a broken backend: one that forgets to truncate on overwrite.
#[test]
fn conformance_suite_rejects_a_broken_backend() {
    use raft_core::backend::eraftpb::{Entry, HardState, RaftState, Snapshot};
    use raft_core::{LogStorage, StorageError};

    #[derive(Default, Clone)]
    struct NoTruncate(MemLogStorage);
    impl LogStorage for NoTruncate {
        fn initial_state(&self) -> raft::Result<RaftState> {
            self.0.initial_state()
        }
        fn entries(&self, l: u64, h: u64, m: Option<u64>) -> raft::Result<Vec<Entry>> {
            self.0.entries(l, h, m)
        }
        fn term(&self, i: u64) -> raft::Result<u64> {
            self.0.term(i)
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
        fn append(&self, e: &[Entry], hs: Option<&HardState>) -> Result<(), StorageError> {
            // Bug: overlapping appends only add what is past the end.
            let last = self.0.last_index().map_err(StorageError::from)?;
            let fresh: Vec<Entry> = e.iter().filter(|x| x.index > last).cloned().collect();
            self.0.append(&fresh, hs)
        }
        fn install_snapshot(&self, s: &Snapshot) -> Result<(), StorageError> {
            self.0.install_snapshot(s)
        }
        fn save_snapshot(&self, s: &Snapshot) -> Result<(), StorageError> {
            self.0.save_snapshot(s)
        }
        fn compact(&self, i: u64) -> Result<(), StorageError> {
            self.0.compact(i)
        }
    }
    struct Broken;
    impl StorageFactory for Broken {
        type Storage = NoTruncate;
        fn create(&mut self) -> NoTruncate {
            NoTruncate::default()
        }
        fn reopen(&mut self, _s: NoTruncate) -> Option<NoTruncate> {
            None
        }
    }
    let result = std::panic::catch_unwind(|| run_all(&mut Broken));
    assert!(
        result.is_err(),
        "the suite must fail a backend that does not truncate"
    );
}
