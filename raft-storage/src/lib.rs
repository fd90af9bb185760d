//! # raft-storage: durable raft logs for raftkit
//!
//! With the cargo feature `rocksdb` (on by default), `RocksLogStorage` keeps a node's raft
//! log, hard state and latest snapshot in RocksDB; with the cargo feature `raft-engine`,
//! `RaftEngineLogStorage` keeps them in TiKV's
//! [raft-engine](https://crates.io/crates/raft-engine), a log-structured store made for raft
//! logs. Both implement [`raft_core::LogStorage`] and pass its conformance suite, and both
//! survive `kill -9` at any moment without losing a write they acknowledged: every write is
//! synced to disk (fdatasync) before it returns.
//!
//! ```no_run
//! # #[cfg(feature = "rocksdb")]
//! # fn main() -> Result<(), raft_core::StorageError> {
//! use raft_core::LogStorage;
//! use raft_storage::RocksLogStorage;
//!
//! let log = RocksLogStorage::open("data/node-1")?;
//! assert_eq!(log.first_index().unwrap(), 1);
//! # Ok(()) }
//! # #[cfg(not(feature = "rocksdb"))]
//! # fn main() {}
//! ```
//!
//! ## What is stored, and where
//!
//! A data directory holds the backend's own files and a `snapshots/` directory:
//!
//! - the entries, and the hard state, written together in one atomic batch with one sync;
//! - the index and term of the last compacted entry;
//! - the latest snapshot's metadata (index, term, conf state) in the database, and its data in
//!   a file `snapshots/snap-<seq>.bin`, written to a temporary file, synced and renamed before
//!   the database points at it, with a CRC-32 checked on every read.
//!
//! ## Permissions
//!
//! The log and the snapshots hold every replicated value, so on Unix everything this crate
//! creates is private to the user it runs as: directories (the data directory and any missing
//! parents, `snapshots/`, and the backend's `db/` or `engine/`, created before the backend
//! opens it) get mode 0700 and the snapshot files 0600. RocksDB and raft-engine create their
//! own files (WAL, SST, MANIFEST, LOG, LOCK, raft-engine's log files) with the process umask,
//! typically 0644; the 0700 directories they live in keep other users out. A directory that
//! already exists keeps its mode: the crate does not tighten it (raft-kv tightens its data
//! dir at start-up).
//!
//! Peers' addresses need no keys of their own: raft-core keeps them inside the snapshot data
//! (its snapshot envelope) and in the context of conf-change entries, so storing the snapshot
//! and the entries durably stores the addresses too. Likewise the conf state is the latest
//! snapshot's, and raft-core rebuilds the current membership by replaying the log after it.
//!
//! ## Errors, never panics
//!
//! Opening a directory that is missing (with [`OpenOptions::create_if_missing`] off), not a
//! directory, unreadable, read-only, locked by another process
//! ([`StorageError::Locked`](raft_core::StorageError::Locked)) or damaged
//! ([`StorageError::Corrupt`](raft_core::StorageError::Corrupt)) returns an error naming the
//! path. A write that fails returns [`StorageError::Io`](raft_core::StorageError::Io), and
//! every later write fails too, so a node that carried on by mistake still acknowledges
//! nothing; reopen the directory to recover.

// The pieces both backends share; with neither feature the crate offers only `OpenOptions`.
#[cfg(any(feature = "rocksdb", feature = "raft-engine"))]
mod codec;
#[cfg(feature = "raft-engine")]
mod engine;
#[cfg(any(feature = "rocksdb", feature = "raft-engine"))]
mod index;
#[cfg(feature = "rocksdb")]
mod rocks;
#[cfg(any(feature = "rocksdb", feature = "raft-engine"))]
mod snapshot_file;

#[cfg(feature = "raft-engine")]
pub use crate::engine::RaftEngineLogStorage;
#[cfg(feature = "rocksdb")]
pub use crate::rocks::RocksLogStorage;

/// How a storage directory is opened.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OpenOptions {
    /// Create the directory (and an empty log) when it does not exist. On by default; turn it
    /// off for a node that must restart from existing data, so a lost or mistyped directory is
    /// an error rather than a silently empty log.
    pub create_if_missing: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            create_if_missing: true,
        }
    }
}

impl OpenOptions {
    /// The default options: create the directory if it is missing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`OpenOptions::create_if_missing`].
    pub fn create_if_missing(mut self, create: bool) -> Self {
        self.create_if_missing = create;
        self
    }
}
