//! raft-core's LogStorage conformance suite, unchanged, on every durable backend, with
//! reopening from disk between checks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use raft_core::testing::conformance::{run_all, StorageFactory};
use tempfile::TempDir;

/// Opens each storage in a fresh directory under one temporary root.
struct Dirs {
    root: TempDir,
    made: usize,
}

impl Dirs {
    fn new() -> Self {
        Self {
            root: tempfile::tempdir().unwrap(),
            made: 0,
        }
    }

    fn next(&mut self) -> PathBuf {
        self.made += 1;
        self.root.path().join(format!("store-{}", self.made))
    }
}

#[cfg(feature = "rocksdb")]
mod rocks {
    use super::*;
    use raft_storage::RocksLogStorage;

    struct Rocks(Dirs);

    impl StorageFactory for Rocks {
        type Storage = RocksLogStorage;
        fn create(&mut self) -> RocksLogStorage {
            RocksLogStorage::open(self.0.next()).unwrap()
        }
        fn reopen(&mut self, storage: RocksLogStorage) -> Option<RocksLogStorage> {
            let dir = storage.path().to_path_buf();
            drop(storage);
            Some(RocksLogStorage::open(dir).unwrap())
        }
    }

    #[test]
    fn rocksdb_passes_the_conformance_suite() {
        let mut factory = Rocks(Dirs::new());
        run_all(&mut factory);
        assert!(factory.0.made >= 12, "every check ran");
    }
}

#[cfg(feature = "raft-engine")]
mod raft_engine {
    use super::*;
    use raft_storage::RaftEngineLogStorage;

    struct Engine(Dirs);

    impl StorageFactory for Engine {
        type Storage = RaftEngineLogStorage;
        fn create(&mut self) -> RaftEngineLogStorage {
            RaftEngineLogStorage::open(self.0.next()).unwrap()
        }
        fn reopen(&mut self, storage: RaftEngineLogStorage) -> Option<RaftEngineLogStorage> {
            let dir = storage.path().to_path_buf();
            drop(storage);
            Some(RaftEngineLogStorage::open(dir).unwrap())
        }
    }

    #[test]
    fn raft_engine_passes_the_conformance_suite() {
        let mut factory = Engine(Dirs::new());
        run_all(&mut factory);
        assert!(factory.0.made >= 12, "every check ran");
    }
}
