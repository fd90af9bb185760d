//! What the storage creates is private on every backend: the data directory, `snapshots/` and
//! the backend's own directory are 0700, snapshot files 0600 (the backends' own files are
//! created with the umask and protected by those directories).

#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use raft_core::backend::eraftpb::{ConfState, Entry, Snapshot, SnapshotMetadata};

use support::Backend;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn directories_0700_and_snapshot_files_0600() {
    for backend in Backend::all() {
        let root = tempfile::tempdir().unwrap();
        // Missing parents are created by the storage too.
        let parent = root.path().join("data");
        let dir = parent.join("node-1");
        let log = backend.open(&dir).unwrap();
        let entries: Vec<Entry> = (1..=10)
            .map(|index| Entry {
                index,
                term: 2,
                data: b"x".to_vec().into(),
                ..Default::default()
            })
            .collect();
        log.append(&entries, None).unwrap();
        log.save_snapshot(&Snapshot {
            data: vec![7; 4096].into(),
            metadata: Some(SnapshotMetadata {
                conf_state: Some(ConfState::from((vec![1], vec![]))).into(),
                index: 5,
                term: 2,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
        .unwrap();

        let own_dir = match backend.name() {
            "rocksdb" => dir.join("db"),
            _ => dir.join("engine"),
        };
        for d in [&parent, &dir, &dir.join("snapshots"), &own_dir] {
            assert_eq!(
                mode(d),
                0o700,
                "{}: mode of {}",
                backend.name(),
                d.display()
            );
        }
        let files: Vec<_> = std::fs::read_dir(dir.join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "{}: {files:?}", backend.name());
        assert_eq!(
            mode(&files[0]),
            0o600,
            "{}: mode of {}",
            backend.name(),
            files[0].display()
        );
        drop(log);
    }
}
