//! Bad states give clear errors, never a panic: a missing directory, a path that is not a
//! directory, a directory locked by another process, damaged files, a read-only directory,
//! and a failed write.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use raft_core::backend::eraftpb::{ConfState, Entry, Snapshot, SnapshotMetadata};
use raft_core::{LogStorage, StorageError};
use raft_storage::OpenOptions;

use support::{child_job, child_lines, spawn_child, wait_for_line, Backend};

fn entries(range: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    range
        .map(|index| Entry {
            index,
            term: 1,
            data: vec![7; 100].into(),
            ..Default::default()
        })
        .collect()
}

/// A store with some entries and a snapshot (whose data lives in a file).
fn populated(backend: Backend, dir: &Path) {
    let log = backend.open(dir).unwrap();
    log.append(&entries(1..=20), None).unwrap();
    log.save_snapshot(&Snapshot {
        data: vec![42; 10_000].into(),
        metadata: Some(SnapshotMetadata {
            conf_state: Some(ConfState::from((vec![1], vec![]))).into(),
            index: 10,
            term: 1,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    })
    .unwrap();
}

fn snapshot_file(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = fs::read_dir(dir.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "one snapshot file: {files:?}");
    files[0].clone()
}

fn open_err(backend: Backend, dir: &Path) -> StorageError {
    match backend.open(dir) {
        Ok(_) => panic!("{}: opening {} should fail", backend.name(), dir.display()),
        Err(e) => {
            eprintln!("{}: {e}", backend.name());
            e
        }
    }
}

#[test]
fn missing_directory_or_not_a_directory() {
    for backend in Backend::all() {
        let root = tempfile::tempdir().unwrap();
        let missing = root.path().join("nope");
        let strict = OpenOptions::new().create_if_missing(false);
        let err = backend
            .open_with(&missing, &strict)
            .err()
            .expect("missing dir refused");
        assert!(matches!(err, StorageError::Io(_)), "{err}");
        assert!(err.to_string().contains("does not exist"), "{err}");
        assert!(!missing.exists(), "nothing was created");

        // An empty directory holds no log: refused too when creating is off.
        fs::create_dir(&missing).unwrap();
        let err = backend
            .open_with(&missing, &strict)
            .err()
            .expect("empty dir refused");
        eprintln!("{}: {err}", backend.name());

        let file = root.path().join("a-file");
        fs::write(&file, b"not a directory").unwrap();
        let err = open_err(backend, &file);
        assert!(err.to_string().contains("not a directory"), "{err}");

        // The backend's own directory replaced by a file.
        let dir = root.path().join("broken");
        fs::create_dir(&dir).unwrap();
        let inner = match backend {
            #[cfg(feature = "rocksdb")]
            Backend::Rocks => "db",
            #[cfg(feature = "raft-engine")]
            Backend::RaftEngine => "engine",
        };
        fs::write(dir.join(inner), b"garbage").unwrap();
        let err = open_err(backend, &dir);
        assert!(err.to_string().contains(inner), "{err}");
    }
}

#[test]
fn lock_holder_child() {
    let Some(job) = child_job() else { return };
    let [kind, backend, dir] = job.as_slice() else {
        panic!("bad job {job:?}")
    };
    assert_eq!(kind, "hold");
    let _log = Backend::from_name(backend).open(Path::new(dir)).unwrap();
    println!("OPEN");
    std::io::stdout().flush().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(60));
}

#[test]
fn second_opener_is_locked_out() {
    if child_job().is_some() {
        return;
    }
    for backend in Backend::all() {
        let dir = tempfile::tempdir().unwrap();
        populated(backend, dir.path());
        // Another process holds the directory.
        let job = [
            "hold".to_string(),
            backend.name().to_string(),
            dir.path().display().to_string(),
        ];
        let mut child = spawn_child("lock_holder_child", &job);
        let mut lines = child_lines(&mut child);
        wait_for_line(&mut lines, "OPEN").expect("child opened the store");
        let err = open_err(backend, dir.path());
        assert!(matches!(err, StorageError::Locked(_)), "{err}");
        assert!(
            err.to_string().contains(&dir.path().display().to_string()),
            "{err}"
        );
        // kill -9 leaves no stale lock.
        child.kill().unwrap();
        child.wait().unwrap();
        let log = backend.open(dir.path()).unwrap();
        assert_eq!(log.last_index().unwrap(), 20);
        // A second open in this process is refused the same way.
        let err = open_err(backend, dir.path());
        assert!(matches!(err, StorageError::Locked(_)), "{err}");
        drop(log);
        backend.open(dir.path()).unwrap();
    }
}

#[test]
fn damaged_snapshot_file_is_reported() {
    for backend in Backend::all() {
        // Flipped byte.
        let dir = tempfile::tempdir().unwrap();
        populated(backend, dir.path());
        let file = snapshot_file(dir.path());
        let mut bytes = fs::read(&file).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        fs::write(&file, &bytes).unwrap();
        let err = open_err(backend, dir.path());
        assert!(matches!(err, StorageError::Corrupt(_)), "{err}");
        assert!(err.to_string().contains("checksum"), "{err}");

        // Truncated.
        let dir = tempfile::tempdir().unwrap();
        populated(backend, dir.path());
        let file = snapshot_file(dir.path());
        let len = fs::metadata(&file).unwrap().len();
        fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        let err = open_err(backend, dir.path());
        assert!(matches!(err, StorageError::Corrupt(_)), "{err}");
        assert!(err.to_string().contains("truncated"), "{err}");

        // Missing.
        let dir = tempfile::tempdir().unwrap();
        populated(backend, dir.path());
        fs::remove_file(snapshot_file(dir.path())).unwrap();
        let err = open_err(backend, dir.path());
        assert!(err.to_string().contains("missing"), "{err}");
    }
}

/// Overwrites the middle of every file whose name starts with `prefix` under `dir`.
fn scribble(dir: &Path, prefix: &str) -> usize {
    let mut n = 0;
    for item in fs::read_dir(dir).unwrap() {
        let path = item.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with(prefix) {
            let mut bytes = fs::read(&path).unwrap();
            if bytes.is_empty() {
                continue;
            }
            let at = bytes.len() / 3;
            let end = (at + 64).min(bytes.len());
            bytes[at..end].iter_mut().for_each(|b| *b ^= 0xa5);
            fs::write(&path, &bytes).unwrap();
            n += 1;
        }
    }
    n
}

#[test]
fn damaged_database_files_are_reported() {
    // RocksDB: its MANIFEST (the list of live files) damaged, then CURRENT pointing nowhere.
    #[cfg(feature = "rocksdb")]
    {
        let dir = tempfile::tempdir().unwrap();
        populated(Backend::Rocks, dir.path());
        assert!(scribble(&dir.path().join("db"), "MANIFEST") > 0);
        let err = open_err(Backend::Rocks, dir.path());
        assert!(
            matches!(err, StorageError::Corrupt(_) | StorageError::Io(_)),
            "{err}"
        );
        assert!(err.to_string().contains("db"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        populated(Backend::Rocks, dir.path());
        fs::write(dir.path().join("db/CURRENT"), b"MANIFEST-999999\n").unwrap();
        let err = open_err(Backend::Rocks, dir.path());
        assert!(
            matches!(err, StorageError::Corrupt(_) | StorageError::Io(_)),
            "{err}"
        );
    }

    #[cfg(feature = "raft-engine")]
    {
        // raft-engine: its log file damaged in the middle.
        let dir = tempfile::tempdir().unwrap();
        populated(Backend::RaftEngine, dir.path());
        assert!(scribble(&dir.path().join("engine"), "0000") > 0);
        match Backend::RaftEngine.open(dir.path()) {
            Err(err) => {
                eprintln!("raft-engine: {err}");
                assert!(
                    matches!(err, StorageError::Corrupt(_) | StorageError::Io(_)),
                    "{err}"
                );
            }
            Ok(log) => {
                // raft-engine's default recovery mode cuts a damaged tail of the last file;
                // what is left must still be a consistent log.
                let first = log.first_index().unwrap();
                let last = log.last_index().unwrap();
                eprintln!("raft-engine: recovered a consistent prefix {first}..={last}");
                if last >= first {
                    log.entries(first, last + 1, None).unwrap();
                }
            }
        }
    }
}

#[test]
fn read_only_child() {
    let Some(job) = child_job() else { return };
    let [kind, backend, dir] = job.as_slice() else {
        panic!("bad job {job:?}")
    };
    assert_eq!(kind, "read-only");
    match Backend::from_name(backend).open(Path::new(dir)) {
        Ok(_) => println!("RESULT opened"),
        Err(e) => println!("RESULT error {e:?}"),
    }
}

/// True when this process can write into a directory with no write permission (root).
fn permissions_ignored(dir: &Path) -> bool {
    let probe = dir.join("probe");
    fs::create_dir(&probe).unwrap();
    let mut perms = fs::metadata(&probe).unwrap().permissions();
    perms.set_readonly(true);
    fs::set_permissions(&probe, perms.clone()).unwrap();
    let ignored = fs::write(probe.join("x"), b"x").is_ok();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    fs::set_permissions(&probe, perms).unwrap();
    ignored
}

#[test]
fn read_only_directory_is_an_error() {
    if child_job().is_some() {
        return;
    }
    for backend in Backend::all() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        populated(backend, &dir);
        let result = if !permissions_ignored(root.path()) {
            // An ordinary user: take the write permission away.
            for path in walk_all(&dir) {
                let mut perms = fs::metadata(&path).unwrap().permissions();
                perms.set_readonly(true);
                fs::set_permissions(&path, perms).unwrap();
            }
            let r = match backend.open(&dir) {
                Ok(_) => "RESULT opened".to_string(),
                Err(e) => format!("RESULT error {e:?}"),
            };
            for path in walk_all(&dir).into_iter().rev() {
                let mut perms = fs::metadata(&path).unwrap().permissions();
                #[allow(clippy::permissions_set_readonly_false)]
                perms.set_readonly(false);
                fs::set_permissions(&path, perms).unwrap();
            }
            r
        } else {
            // root ignores permissions: mount the directory read-only in a private mount
            // namespace and open it from a child process there.
            let exe = std::env::current_exe().unwrap();
            let d = dir.display().to_string();
            let script = format!(
                "mount --bind '{d}' '{d}' && mount -o remount,bind,ro '{d}' '{d}' && \
                 exec '{}' --exact read_only_child --nocapture --test-threads 1",
                exe.display()
            );
            let out = Command::new("unshare")
                .args(["-m", "sh", "-c", &script])
                .env(
                    support::CHILD_ENV,
                    format!("read-only|{}|{d}", backend.name()),
                )
                .output();
            match out {
                Ok(out) if out.status.success() => {
                    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                    stdout
                        .find("RESULT")
                        .map(|at| stdout[at..].lines().next().unwrap_or("").to_string())
                        .unwrap_or_else(|| format!("RESULT none in {stdout:?}"))
                }
                other => panic!(
                    "{}: running as root, the read-only check needs a read-only bind mount in a \
                     private mount namespace (unshare -m), which failed: {other:?}",
                    backend.name()
                ),
            }
        };
        eprintln!("{}: read-only directory: {result}", backend.name());
        assert!(result.starts_with("RESULT error Io("), "{result}");
        assert!(
            result.contains("Read-only file system") || result.contains("ermission denied"),
            "{result}"
        );
        // Writable again: the data is intact.
        let log = backend.open(&dir).unwrap();
        assert_eq!(log.last_index().unwrap(), 20);
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for item in fs::read_dir(dir).unwrap() {
        let path = item.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

fn walk_all(dir: &Path) -> Vec<PathBuf> {
    let mut out = walk(dir);
    out.push(dir.to_path_buf());
    out
}
