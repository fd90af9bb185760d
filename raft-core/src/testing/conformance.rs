//! The [`LogStorage`] conformance suite. Every backend must pass it unchanged:
//!
//! ```
//! use raft_core::testing::conformance::{run_all, StorageFactory};
//! use raft_core::MemLogStorage;
//!
//! struct Mem;
//! impl StorageFactory for Mem {
//!     type Storage = MemLogStorage;
//!     fn create(&mut self) -> MemLogStorage {
//!         MemLogStorage::new()
//!     }
//!     fn reopen(&mut self, _storage: MemLogStorage) -> Option<MemLogStorage> {
//!         None // nothing survives a restart in memory
//!     }
//! }
//! run_all(&mut Mem);
//! ```

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};

use prost::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};

use crate::log_storage::LogStorage;
use crate::records::{PayloadRef, SnapshotEnvelope};

/// Creates fresh storages for the suite, and reopens them where the backend is durable.
pub trait StorageFactory {
    /// The backend under test.
    type Storage: LogStorage;
    /// A new, empty storage.
    fn create(&mut self) -> Self::Storage;
    /// Closes `storage` and opens it again from where it keeps its data, as after a restart;
    /// `None` for a backend that keeps nothing (then the durability checks are skipped).
    fn reopen(&mut self, storage: Self::Storage) -> Option<Self::Storage>;
}

/// Runs every check; panics with a description at the first failure.
pub fn run_all<F: StorageFactory>(factory: &mut F) {
    empty_storage(factory);
    append_and_read(factory);
    entries_respect_max_size(factory);
    entries_out_of_range(factory);
    append_overwrites_conflicting_suffix(factory);
    append_rejects_gaps_and_disorder(factory);
    append_owned_matches_append(factory);
    hard_state_round_trip(factory);
    save_snapshot_keeps_log(factory);
    compact_drops_prefix(factory);
    install_snapshot_replaces_log(factory);
    large_snapshot_round_trip(factory);
    durable_across_reopen(factory);
    snapshot_payloads_round_trip(factory);
}

/// A normal entry with a payload derived from its index and term.
pub fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: format!("entry-{index}-{term}").into_bytes().into(),
        context: index.to_be_bytes().to_vec().into(),
        ..Default::default()
    }
}

fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    range.map(|i| entry(i, term)).collect()
}

fn snapshot(index: u64, term: u64, voters: Vec<u64>, data: Vec<u8>) -> Snapshot {
    Snapshot {
        data: data.into(),
        metadata: Some(SnapshotMetadata {
            conf_state: Some(ConfState::from((voters, vec![]))).into(),
            index,
            term,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

fn is_compacted<T: std::fmt::Debug>(r: raft::Result<T>) -> bool {
    matches!(r, Err(raft::Error::Store(raft::StorageError::Compacted)))
}

fn is_unavailable<T: std::fmt::Debug>(r: raft::Result<T>) -> bool {
    matches!(r, Err(raft::Error::Store(raft::StorageError::Unavailable)))
}

/// A new storage is empty.
pub fn empty_storage<F: StorageFactory>(f: &mut F) {
    let s = f.create();
    assert_eq!(s.first_index().unwrap(), 1, "empty: first_index");
    assert_eq!(s.last_index().unwrap(), 0, "empty: last_index");
    assert_eq!(s.term(0).unwrap(), 0, "empty: term(0)");
    let state = s.initial_state().unwrap();
    assert_eq!(state.hard_state, HardState::default(), "empty: hard state");
    assert_eq!(state.conf_state, ConfState::default(), "empty: conf state");
    let snap = s.snapshot().unwrap();
    assert_eq!(
        snap.metadata.as_ref().map_or(0, |m| m.index),
        0,
        "empty: snapshot index"
    );
    assert!(
        s.entries(1, 1, None).unwrap().is_empty(),
        "empty: entries(1, 1)"
    );
    assert!(
        is_unavailable(s.entries(1, 2, None)),
        "empty: entries(1, 2)"
    );
}

/// Appended entries read back exactly.
pub fn append_and_read<F: StorageFactory>(f: &mut F) {
    let s = f.create();
    s.append(&entries(1..=10, 1), None).unwrap();
    s.append(&entries(11..=20, 2), None).unwrap();
    assert_eq!(s.first_index().unwrap(), 1);
    assert_eq!(s.last_index().unwrap(), 20);
    assert_eq!(s.entries(1, 21, None).unwrap(), {
        let mut all = entries(1..=10, 1);
        all.extend(entries(11..=20, 2));
        all
    });
    assert_eq!(s.entries(5, 8, None).unwrap(), entries(5..=7, 1));
    assert_eq!(s.term(10).unwrap(), 1);
    assert_eq!(s.term(11).unwrap(), 2);
    assert!(
        is_unavailable(s.term(21)),
        "term past the end is Unavailable"
    );
    s.append(&[], None).unwrap();
    assert_eq!(
        s.last_index().unwrap(),
        20,
        "an empty append changes nothing"
    );
}

/// `max_size` limits the bytes returned, but never below one entry.
pub fn entries_respect_max_size<F: StorageFactory>(f: &mut F) {
    let s = f.create();
    s.append(&entries(1..=10, 1), None).unwrap();
    assert_eq!(
        s.entries(1, 11, Some(0)).unwrap().len(),
        1,
        "at least one entry"
    );
    let one = crate::RaftCodec::encoded_len(&entry(1, 1)) as u64;
    let got = s.entries(1, 11, Some(one * 3)).unwrap();
    assert!(
        !got.is_empty() && got.len() <= 3,
        "max_size bounds the result: {}",
        got.len()
    );
    assert_eq!(got[0], entry(1, 1));
    assert_eq!(s.entries(1, 11, Some(u64::MAX)).unwrap().len(), 10);
}

/// Reads outside the log fail with raft's errors, not panics.
pub fn entries_out_of_range<F: StorageFactory>(f: &mut F) {
    let s = f.create();
    s.append(&entries(1..=5, 1), None).unwrap();
    assert!(is_unavailable(s.entries(4, 7, None)), "high past the end");
    assert!(is_unavailable(s.entries(7, 8, None)), "low past the end");
    s.save_snapshot(&snapshot(3, 1, vec![1], b"s".to_vec()))
        .unwrap();
    s.compact(3).unwrap();
    assert!(
        is_compacted(s.entries(2, 5, None)),
        "low before the first index"
    );
    assert!(is_compacted(s.term(2)), "term before the first index");
}

/// Appending at an index that exists replaces that entry and everything after it.
pub fn append_overwrites_conflicting_suffix<F: StorageFactory>(f: &mut F) {
    let s = f.create();
    s.append(&entries(1..=10, 1), None).unwrap();
    s.append(&entries(6..=7, 2), None).unwrap();
    assert_eq!(s.last_index().unwrap(), 7, "the old suffix is gone");
    assert_eq!(s.term(5).unwrap(), 1);
    assert_eq!(s.term(6).unwrap(), 2);
    assert!(is_unavailable(s.entries(8, 9, None)));
    s.append(&entries(8..=12, 3), None).unwrap();
    assert_eq!(s.last_index().unwrap(), 12);
    assert_eq!(s.entries(6, 13, None).unwrap(), {
        let mut v = entries(6..=7, 2);
        v.extend(entries(8..=12, 3));
        v
    });
}

/// Gaps, disorder and writes before the first index are refused and change nothing.
pub fn append_rejects_gaps_and_disorder<F: StorageFactory>(f: &mut F) {
    let s = f.create();
    s.append(&entries(1..=5, 1), None).unwrap();
    assert!(
        s.append(&entries(7..=8, 1), None).is_err(),
        "a gap is refused"
    );
    let disordered = vec![entry(6, 1), entry(8, 1)];
    assert!(
        s.append(&disordered, None).is_err(),
        "non-contiguous batch refused"
    );
    assert_eq!(s.last_index().unwrap(), 5, "refused writes change nothing");
    s.save_snapshot(&snapshot(4, 1, vec![1], Vec::new()))
        .unwrap();
    s.compact(4).unwrap();
    assert!(
        s.append(&entries(3..=6, 2), None).is_err(),
        "before the first index"
    );
    assert_eq!(s.term(5).unwrap(), 1);
}

/// `append_owned`, the call raft-core makes for every write, keeps what `append` keeps:
/// overwrites a conflicting suffix, refuses gaps and disorder unchanged, stores the hard
/// state.
pub fn append_owned_matches_append<F: StorageFactory>(f: &mut F) {
    let s = f.create();
    s.append_owned(entries(1..=10, 1), None).unwrap();
    s.append_owned(entries(6..=7, 2), None).unwrap();
    assert_eq!(s.last_index().unwrap(), 7, "the old suffix is gone");
    assert_eq!(s.entries(5, 8, None).unwrap(), {
        let mut v = entries(5..=5, 1);
        v.extend(entries(6..=7, 2));
        v
    });
    assert!(
        s.append_owned(entries(9..=10, 2), None).is_err(),
        "a gap is refused"
    );
    assert!(
        s.append_owned(vec![entry(8, 2), entry(10, 2)], None)
            .is_err(),
        "non-contiguous batch refused"
    );
    assert_eq!(s.last_index().unwrap(), 7, "refused writes change nothing");
    let hs = HardState {
        term: 2,
        vote: 1,
        commit: 7,
        ..Default::default()
    };
    s.append_owned(Vec::new(), Some(&hs)).unwrap();
    assert_eq!(s.initial_state().unwrap().hard_state, hs);
}

/// The hard state is stored with (or without) entries and returned by `initial_state`.
pub fn hard_state_round_trip<F: StorageFactory>(f: &mut F) {
    let s = f.create();
    let hs = HardState {
        term: 3,
        vote: 2,
        commit: 4,
        ..Default::default()
    };
    s.append(&entries(1..=5, 3), Some(&hs)).unwrap();
    assert_eq!(s.initial_state().unwrap().hard_state, hs);
    let hs2 = HardState {
        term: 4,
        vote: 1,
        commit: 5,
        ..Default::default()
    };
    s.append(&[], Some(&hs2)).unwrap();
    assert_eq!(s.initial_state().unwrap().hard_state, hs2);
    assert_eq!(s.last_index().unwrap(), 5);
}

/// A local snapshot is stored with its data, keeps the log, and raises the commit index.
pub fn save_snapshot_keeps_log<F: StorageFactory>(f: &mut F) {
    let s = f.create();
    s.append(
        &entries(1..=10, 2),
        Some(&HardState {
            term: 2,
            vote: 1,
            commit: 3,
            ..Default::default()
        }),
    )
    .unwrap();
    let snap = snapshot(6, 2, vec![1, 2, 3], b"state at 6".to_vec());
    s.save_snapshot(&snap).unwrap();
    assert_eq!(s.snapshot().unwrap(), snap);
    assert_eq!(s.last_index().unwrap(), 10, "log kept");
    assert_eq!(s.first_index().unwrap(), 1, "log kept");
    let state = s.initial_state().unwrap();
    assert_eq!(state.conf_state, ConfState::from((vec![1, 2, 3], vec![])));
    assert!(
        state.hard_state.commit >= 6,
        "commit raised to the snapshot"
    );
    let older = snapshot(4, 2, vec![1], b"older".to_vec());
    s.save_snapshot(&older).unwrap();
    assert_eq!(s.snapshot().unwrap(), snap, "an older snapshot is ignored");
    assert!(
        s.save_snapshot(&snapshot(11, 2, vec![1], Vec::new()))
            .is_err(),
        "a snapshot past the log is refused"
    );
}

/// Snapshot data that refers to a payload kept apart (length and CRC-32 in the envelope).
fn payload_snapshot(index: u64, term: u64, payload: &[u8]) -> Snapshot {
    let envelope = SnapshotEnvelope {
        cluster_id: 7,
        payload: Some(PayloadRef {
            len: payload.len() as u64,
            crc32: crc32fast::hash(payload),
        }),
        ..Default::default()
    };
    snapshot(index, term, vec![1, 2, 3], envelope.encode_to_vec())
}

fn written_payload<S: LogStorage>(s: &S, bytes: &[u8]) -> crate::SnapshotPayload {
    let mut writer = s.snapshot_payload_writer().unwrap();
    for piece in bytes.chunks(7_777) {
        writer.write_all(piece).unwrap();
    }
    writer.finish().unwrap()
}

fn read_payload<S: LogStorage>(s: &S, index: u64, term: u64) -> Vec<u8> {
    let meta = SnapshotMetadata {
        index,
        term,
        ..Default::default()
    };
    let mut bytes = Vec::new();
    s.snapshot_payload(&meta)
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    bytes
}

/// A payload written through the storage's writer is saved, or installed, with its snapshot
/// and read back whole by the snapshot's index and term, also after a reopen; a payload
/// that was replaced cannot be read, and an abandoned writer leaves the storage as it was.
pub fn snapshot_payloads_round_trip<F: StorageFactory>(f: &mut F) {
    let s = f.create();
    let hs = HardState {
        term: 2,
        vote: 1,
        commit: 8,
        ..Default::default()
    };
    s.append(&entries(1..=10, 2), Some(&hs)).unwrap();
    let state: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let saved = payload_snapshot(6, 2, &state);
    s.save_snapshot_with(&saved, written_payload(&s, &state))
        .unwrap();
    assert_eq!(read_payload(&s, 6, 2), state, "saved payload read back");
    assert_eq!(s.snapshot_metadata().unwrap().index, 6);
    assert_eq!(s.last_index().unwrap(), 10, "a save keeps the log");
    {
        let mut abandoned = s.snapshot_payload_writer().unwrap();
        abandoned.write_all(b"never finished").unwrap();
    }
    assert_eq!(
        read_payload(&s, 6, 2),
        state,
        "an abandoned payload changes nothing"
    );

    let installed = payload_snapshot(20, 3, b"installed state");
    s.install_snapshot_with(&installed, written_payload(&s, b"installed state"))
        .unwrap();
    assert_eq!(read_payload(&s, 20, 3), b"installed state");
    assert_eq!(s.first_index().unwrap(), 21, "an install replaces the log");
    let replaced = SnapshotMetadata {
        index: 6,
        term: 2,
        ..Default::default()
    };
    assert!(
        s.snapshot_payload(&replaced).is_err(),
        "the replaced snapshot's payload is gone"
    );
    if let Some(s) = f.reopen(s) {
        assert_eq!(read_payload(&s, 20, 3), b"installed state", "durable");
        assert_eq!(s.snapshot_metadata().unwrap().index, 20);
    }
}

/// Compaction drops the prefix, remembers the term at the boundary, and never passes the
/// snapshot.
pub fn compact_drops_prefix<F: StorageFactory>(f: &mut F) {
    let s = f.create();
    s.append(&entries(1..=5, 1), None).unwrap();
    s.append(&entries(6..=10, 2), None).unwrap();
    assert!(
        s.compact(3).is_err(),
        "compaction past the snapshot (none) is refused"
    );
    s.save_snapshot(&snapshot(7, 2, vec![1], b"s7".to_vec()))
        .unwrap();
    assert!(
        s.compact(8).is_err(),
        "compaction past the snapshot is refused"
    );
    s.compact(5).unwrap();
    assert_eq!(s.first_index().unwrap(), 6);
    assert_eq!(s.term(5).unwrap(), 1, "term of the last compacted entry");
    assert_eq!(s.term(6).unwrap(), 2);
    assert!(is_compacted(s.term(4)));
    assert_eq!(s.entries(6, 11, None).unwrap(), entries(6..=10, 2));
    s.compact(4).unwrap();
    assert_eq!(s.first_index().unwrap(), 6, "compacting again is a no-op");
    s.compact(7).unwrap();
    assert_eq!(s.first_index().unwrap(), 8);
    assert_eq!(s.term(7).unwrap(), 2);
    s.append(&entries(11..=12, 3), None).unwrap();
    assert_eq!(s.last_index().unwrap(), 12);
}

/// Installing a leader's snapshot replaces the log.
pub fn install_snapshot_replaces_log<F: StorageFactory>(f: &mut F) {
    let s = f.create();
    s.append(
        &entries(1..=5, 1),
        Some(&HardState {
            term: 1,
            vote: 1,
            commit: 2,
            ..Default::default()
        }),
    )
    .unwrap();
    let snap = snapshot(20, 4, vec![1, 2], b"leader state".to_vec());
    s.install_snapshot(&snap).unwrap();
    assert_eq!(s.first_index().unwrap(), 21);
    assert_eq!(s.last_index().unwrap(), 20);
    assert_eq!(s.term(20).unwrap(), 4);
    assert!(is_compacted(s.term(5)));
    assert_eq!(s.snapshot().unwrap(), snap);
    let state = s.initial_state().unwrap();
    assert_eq!(state.hard_state.commit, 20);
    assert_eq!(state.conf_state, ConfState::from((vec![1, 2], vec![])));
    s.append(&entries(21..=22, 4), None).unwrap();
    assert_eq!(s.entries(21, 23, None).unwrap(), entries(21..=22, 4));
    // A fresh node installs the bootstrap snapshot at index 1.
    let fresh = f.create();
    fresh
        .install_snapshot(&snapshot(1, 1, vec![7], Vec::new()))
        .unwrap();
    assert_eq!(fresh.first_index().unwrap(), 2);
    assert_eq!(fresh.last_index().unwrap(), 1);
    assert_eq!(fresh.term(1).unwrap(), 1);
}

/// Snapshot data of several MiB survives intact.
pub fn large_snapshot_round_trip<F: StorageFactory>(f: &mut F) {
    let s = f.create();
    let data: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let snap = snapshot(9, 3, vec![1, 2, 3], data);
    s.install_snapshot(&snap).unwrap();
    assert_eq!(s.snapshot().unwrap(), snap);
}

/// Everything written is there after a reopen (skipped for backends that keep nothing).
pub fn durable_across_reopen<F: StorageFactory>(f: &mut F) {
    let s = f.create();
    let hs = HardState {
        term: 5,
        vote: 3,
        commit: 12,
        ..Default::default()
    };
    s.append(&entries(1..=10, 4), None).unwrap();
    s.append(&entries(11..=15, 5), Some(&hs)).unwrap();
    let snap = snapshot(8, 4, vec![1, 2, 3], b"durable".to_vec());
    s.save_snapshot(&snap).unwrap();
    s.compact(6).unwrap();
    s.append(&entries(14..=16, 6), None).unwrap();
    let Some(s) = f.reopen(s) else {
        return;
    };
    assert_eq!(
        s.initial_state().unwrap().hard_state,
        hs,
        "hard state survives"
    );
    assert_eq!(s.snapshot().unwrap(), snap, "snapshot survives");
    assert_eq!(s.first_index().unwrap(), 7, "compaction survives");
    assert_eq!(s.term(6).unwrap(), 4, "boundary term survives");
    assert_eq!(s.last_index().unwrap(), 16, "overwrite survives");
    let mut want = entries(7..=10, 4);
    want.extend(entries(11..=13, 5));
    want.extend(entries(14..=16, 6));
    assert_eq!(s.entries(7, 17, None).unwrap(), want, "entries survive");
    let installed = snapshot(30, 7, vec![1], b"installed".to_vec());
    s.install_snapshot(&installed).unwrap();
    let Some(s) = f.reopen(s) else {
        return;
    };
    assert_eq!(s.first_index().unwrap(), 31, "installed snapshot survives");
    assert_eq!(s.term(30).unwrap(), 7);
    assert_eq!(s.snapshot().unwrap(), installed);
}
