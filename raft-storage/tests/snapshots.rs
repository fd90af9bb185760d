//! Snapshots on every durable backend: `snapshot_metadata` answers like `snapshot`, a large
//! snapshot being saved does not hold up appends, a save racing an install or another save
//! leaves the database pointing at an intact file, and a failed snapshot file write stops
//! further writes.
//!
//! The concurrency checks use no clocks: a save runs on its own thread, the test waits until
//! its temporary file is in `snapshots/`, acts from the test thread, and then checks that the
//! save had still not returned. If the save was too quick to catch (a fast disk), the round is
//! repeated in a fresh directory with twice the data.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use raft_core::backend::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft_core::{LogStorage, StorageError};

use support::Backend;

/// Snapshot sizes tried in turn until a save is caught in flight.
const SIZES: [usize; 4] = [64 << 20, 128 << 20, 256 << 20, 512 << 20];

fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    range
        .map(|index| Entry {
            index,
            term,
            data: format!("entry {index}").into_bytes().into(),
            ..Default::default()
        })
        .collect()
}

fn meta(index: u64, term: u64) -> SnapshotMetadata {
    SnapshotMetadata {
        conf_state: Some(ConfState::from((vec![1, 2, 3], vec![]))).into(),
        index,
        term,
        ..Default::default()
    }
}

/// `len` bytes that differ from snapshot to snapshot (`tag`) and along their length.
fn snapshot(index: u64, term: u64, len: usize, tag: u8) -> Snapshot {
    let mut data = vec![tag; len];
    for (i, b) in data.iter_mut().enumerate().step_by(4096) {
        *b = (i / 4096) as u8 ^ tag;
    }
    Snapshot {
        data: data.into(),
        metadata: Some(meta(index, term)).into(),
        ..Default::default()
    }
}

/// Checks that `snapshot_metadata` agrees with `snapshot` and returns it.
fn check_metadata(log: &dyn LogStorage) -> SnapshotMetadata {
    let quick = log.snapshot_metadata().unwrap();
    let full = log.snapshot().unwrap().metadata.unwrap_or_default();
    assert_eq!(
        quick, full,
        "snapshot_metadata differs from snapshot().metadata"
    );
    quick
}

/// Names of the files in `dir/snapshots`, sorted.
fn snapshot_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A save running on its own thread.
struct InFlightSave {
    done: Arc<AtomicBool>,
    thread: JoinHandle<Result<(), StorageError>>,
}

impl InFlightSave {
    fn start(log: &Arc<dyn LogStorage>, snapshot: &Arc<Snapshot>) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let (log, snapshot, flag) = (log.clone(), snapshot.clone(), done.clone());
        let thread = std::thread::spawn(move || {
            let result = log.save_snapshot(&snapshot);
            flag.store(true, Ordering::SeqCst);
            result
        });
        Self { done, thread }
    }

    fn done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    /// Waits until the save's temporary file is in `dir/snapshots`: true if it was seen while
    /// the save was still running, false if the save returned first.
    fn caught_writing(&self, dir: &Path) -> bool {
        // Only against a hang: the check itself does not depend on how long the save takes.
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if self.done() {
                return false;
            }
            if snapshot_files(dir).iter().any(|n| n.ends_with(".tmp")) {
                return !self.done();
            }
            assert!(Instant::now() < deadline, "the save never wrote its file");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn join(self) -> Result<(), StorageError> {
        self.thread.join().expect("the save thread panicked")
    }
}

/// Runs `round` with growing snapshot sizes until it reports that it caught the save in
/// flight (returns true); panics with `what` if no size was enough.
fn until_caught(backend: Backend, what: &str, mut round: impl FnMut(&Path, usize) -> bool) {
    for size in SIZES {
        let dir = tempfile::tempdir().unwrap();
        if round(dir.path(), size) {
            return;
        }
        eprintln!(
            "{}: {what}: the save of {} MiB returned before the check; retrying larger",
            backend.name(),
            size >> 20
        );
    }
    panic!(
        "{}: {what}: the save always returned first, up to {} MiB",
        backend.name(),
        SIZES[SIZES.len() - 1] >> 20
    );
}

#[test]
fn snapshot_metadata_matches_the_stored_snapshot() {
    for backend in Backend::all() {
        let dir = tempfile::tempdir().unwrap();
        let log = backend.open(dir.path()).unwrap();
        assert_eq!(check_metadata(log.as_ref()), SnapshotMetadata::default());

        log.append(&entries(1..=20, 1), None).unwrap();
        log.save_snapshot(&snapshot(10, 1, 1000, 1)).unwrap();
        assert_eq!(check_metadata(log.as_ref()), meta(10, 1));
        // An older snapshot is ignored, and the metadata says so.
        log.save_snapshot(&snapshot(5, 1, 1000, 2)).unwrap();
        assert_eq!(check_metadata(log.as_ref()), meta(10, 1));
        log.save_snapshot(&snapshot(15, 1, 1000, 3)).unwrap();
        assert_eq!(check_metadata(log.as_ref()), meta(15, 1));

        // The metadata comes from memory: it is there even when the data file is not.
        let snaps = dir.path().join("snapshots");
        let moved = dir.path().join("snapshots.moved");
        fs::rename(&snaps, &moved).unwrap();
        assert!(log.snapshot().is_err());
        assert_eq!(log.snapshot_metadata().unwrap(), meta(15, 1));
        fs::rename(&moved, &snaps).unwrap();

        drop(log);
        let log = backend.open(dir.path()).unwrap();
        assert_eq!(check_metadata(log.as_ref()), meta(15, 1));

        log.install_snapshot(&snapshot(40, 2, 1000, 4)).unwrap();
        assert_eq!(check_metadata(log.as_ref()), meta(40, 2));
        drop(log);
        let log = backend.open(dir.path()).unwrap();
        assert_eq!(check_metadata(log.as_ref()), meta(40, 2));
        assert_eq!(log.snapshot().unwrap().data, snapshot(40, 2, 1000, 4).data);
        assert_eq!(snapshot_files(dir.path()).len(), 1);
    }
}

#[test]
fn appends_go_on_while_a_large_snapshot_is_saved() {
    for backend in Backend::all() {
        until_caught(backend, "appends during a save", |dir, size| {
            let log = backend.open(dir).unwrap();
            log.append(&entries(1..=100, 1), None).unwrap();
            let snap = Arc::new(snapshot(100, 1, size, 7));
            let save = InFlightSave::start(&log, &snap);
            if !save.caught_writing(dir) {
                save.join().unwrap();
                return false;
            }
            // Each append is one durable batch; none may wait for the snapshot file.
            for i in 0..16u64 {
                let first = 101 + i * 4;
                let hs = HardState {
                    term: 1,
                    vote: 1,
                    commit: first + 3,
                    ..Default::default()
                };
                log.append(&entries(first..=first + 3, 1), Some(&hs))
                    .unwrap();
            }
            let caught = !save.done();
            save.join().unwrap();
            if !caught {
                return false;
            }

            let check = |log: &dyn LogStorage| {
                assert_eq!(check_metadata(log), meta(100, 1));
                assert_eq!(log.snapshot().unwrap().data, snap.data);
                assert_eq!(log.last_index().unwrap(), 164);
                let read = log.entries(1, 165, None).unwrap();
                assert_eq!(read, entries(1..=164, 1));
                let hs = log.initial_state().unwrap().hard_state;
                assert_eq!((hs.term, hs.vote, hs.commit), (1, 1, 164));
            };
            check(log.as_ref());
            assert_eq!(snapshot_files(dir).len(), 1, "{:?}", snapshot_files(dir));
            drop(log);
            let log = backend.open(dir).unwrap();
            check(log.as_ref());
            true
        });
    }
}

#[test]
fn an_install_during_a_save_keeps_the_newer_snapshot() {
    for backend in Backend::all() {
        // The installed snapshot is newer: the save, once written, is no longer needed.
        until_caught(backend, "a newer install during a save", |dir, size| {
            let log = backend.open(dir).unwrap();
            log.append(&entries(1..=20, 1), None).unwrap();
            let saved = Arc::new(snapshot(10, 1, size, 1));
            let installed = snapshot(50, 2, 100_000, 2);
            let save = InFlightSave::start(&log, &saved);
            if !save.caught_writing(dir) {
                save.join().unwrap();
                return false;
            }
            log.install_snapshot(&installed).unwrap();
            let caught = !save.done();
            save.join().unwrap();
            if !caught {
                return false;
            }
            let check = |log: &dyn LogStorage| {
                assert_eq!(check_metadata(log), meta(50, 2));
                assert_eq!(log.snapshot().unwrap().data, installed.data);
                assert_eq!(log.first_index().unwrap(), 51);
            };
            check(log.as_ref());
            // Still writable: the abandoned save failed nothing.
            log.append(&entries(51..=55, 2), None).unwrap();
            assert_eq!(snapshot_files(dir).len(), 1, "{:?}", snapshot_files(dir));
            drop(log);
            let log = backend.open(dir).unwrap();
            check(log.as_ref());
            assert_eq!(log.last_index().unwrap(), 55);
            true
        });

        // The installed snapshot is older and the log grows past the save's index before the
        // save commits: the save wins, and the installed snapshot's file goes.
        until_caught(backend, "an older install during a save", |dir, size| {
            let log = backend.open(dir).unwrap();
            log.append(&entries(1..=20, 1), None).unwrap();
            let saved = Arc::new(snapshot(40, 2, size, 3));
            let installed = snapshot(30, 2, 100_000, 4);
            // The save is checked against the log when it starts and again when it commits.
            log.append(&entries(21..=40, 2), None).unwrap();
            let save = InFlightSave::start(&log, &saved);
            if !save.caught_writing(dir) {
                save.join().unwrap();
                return false;
            }
            log.install_snapshot(&installed).unwrap();
            log.append(&entries(31..=60, 2), None).unwrap();
            let caught = !save.done();
            let saved_result = save.join();
            // The save committed before the append, against a log that ended at 30, and
            // rightly refused: not caught, try a larger save. The refusal is the proof, as
            // the done flag is raised only after the save returns.
            let committed_first = matches!(
                &saved_result,
                Err(e) if e.to_string().contains("past the last log index")
            );
            if !caught || committed_first {
                return false;
            }
            saved_result.unwrap();
            let check = |log: &dyn LogStorage| {
                assert_eq!(check_metadata(log), meta(40, 2));
                assert_eq!(log.snapshot().unwrap().data, saved.data);
                assert_eq!(log.first_index().unwrap(), 31);
                assert_eq!(log.entries(31, 61, None).unwrap(), entries(31..=60, 2));
            };
            check(log.as_ref());
            assert_eq!(snapshot_files(dir).len(), 1, "{:?}", snapshot_files(dir));
            drop(log);
            let log = backend.open(dir).unwrap();
            check(log.as_ref());
            true
        });
    }
}

#[test]
fn a_newer_save_during_a_large_save_wins() {
    for backend in Backend::all() {
        until_caught(backend, "two saves", |dir, size| {
            let log = backend.open(dir).unwrap();
            log.append(&entries(1..=20, 1), None).unwrap();
            let slow = Arc::new(snapshot(10, 1, size, 5));
            let quick = snapshot(15, 1, 100_000, 6);
            let save = InFlightSave::start(&log, &slow);
            if !save.caught_writing(dir) {
                save.join().unwrap();
                return false;
            }
            log.save_snapshot(&quick).unwrap();
            let caught = !save.done();
            save.join().unwrap();
            if !caught {
                return false;
            }
            assert_eq!(check_metadata(log.as_ref()), meta(15, 1));
            assert_eq!(snapshot_files(dir).len(), 1, "{:?}", snapshot_files(dir));
            drop(log);
            let log = backend.open(dir).unwrap();
            assert_eq!(check_metadata(log.as_ref()), meta(15, 1));
            assert_eq!(log.snapshot().unwrap().data, quick.data);
            log.append(&entries(21..=25, 1), None).unwrap();
            true
        });
    }
}

#[test]
fn a_failed_snapshot_file_write_stops_writes() {
    for backend in Backend::all() {
        let dir = tempfile::tempdir().unwrap();
        let log = backend.open(dir.path()).unwrap();
        log.append(&entries(1..=20, 1), None).unwrap();
        log.save_snapshot(&snapshot(5, 1, 1000, 1)).unwrap();

        // A file where the snapshot directory was: the next snapshot file cannot be created
        // (this works for root too, unlike taking a permission away).
        let snaps = dir.path().join("snapshots");
        let moved = dir.path().join("snapshots.moved");
        fs::rename(&snaps, &moved).unwrap();
        fs::write(&snaps, b"in the way").unwrap();
        let err = log.save_snapshot(&snapshot(10, 1, 1000, 2)).unwrap_err();
        assert!(matches!(err, StorageError::Io(_)), "{err}");
        let err = log.append(&entries(21..=21, 1), None).unwrap_err();
        assert!(err.to_string().contains("refuses writes"), "{err}");
        assert!(log.save_snapshot(&snapshot(12, 1, 1000, 3)).is_err());
        // The snapshot file is out of reach, but its metadata is known without it.
        assert_eq!(log.snapshot_metadata().unwrap(), meta(5, 1));
        assert_eq!(log.last_index().unwrap(), 20);

        drop(log);
        fs::remove_file(&snaps).unwrap();
        fs::rename(&moved, &snaps).unwrap();
        let log = backend.open(dir.path()).unwrap();
        assert_eq!(check_metadata(log.as_ref()), meta(5, 1));
        assert_eq!(log.snapshot().unwrap().data, snapshot(5, 1, 1000, 1).data);
        assert_eq!(log.last_index().unwrap(), 20);
        log.append(&entries(21..=21, 1), None).unwrap();
    }
}
