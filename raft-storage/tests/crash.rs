//! kill -9 at random moments: a child process appends batches (entries + hard state), now and
//! then snapshots and compacts, and prints `ACK <index>` after each write returns. The parent
//! SIGKILLs it after a random delay, reopens the store, and checks that every acknowledged
//! entry is there, intact, and that the hard state went to disk with its batch. Several
//! rounds per backend on the same directory; seeds are printed (replay: RAFTKIT_SEED=<seed>).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft_core::backend::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft_core::testing::cluster::seed;
use raft_core::LogStorage;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use support::{child_job, child_lines, spawn_child, wait_for_line, Backend};

const ROUNDS: usize = 5;

/// The payload of entry `index`: 100 B or 4 KiB, derived from the index.
fn payload(index: u64) -> Vec<u8> {
    let len = if index % 4 == 0 { 4096 } else { 100 };
    let mut data = format!("entry {index}:").into_bytes();
    data.resize(len, (index % 251) as u8);
    data
}

fn snapshot_data(index: u64) -> Vec<u8> {
    let mut data = format!("snapshot at {index}:").into_bytes();
    data.resize(64 * 1024, (index % 13) as u8);
    data
}

/// The child: appends until killed.
#[test]
fn crash_child() {
    let Some(job) = child_job() else {
        return; // run as a normal test: nothing to do
    };
    let [kind, backend, dir, child_seed] = job.as_slice() else {
        panic!("bad child job {job:?}");
    };
    assert_eq!(kind, "crash");
    let log = Backend::from_name(backend).open(Path::new(dir)).unwrap();
    let mut rng = StdRng::seed_from_u64(child_seed.parse().unwrap());
    // Each incarnation writes in a new term, as a restarted raft node would.
    let term = log.initial_state().unwrap().hard_state.term + 1;
    let mut next = log.last_index().unwrap() + 1;
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY {}", next - 1).unwrap();
    out.flush().unwrap();
    loop {
        let n = *[1u64, 1, 4, 16, 64].get(rng.gen_range(0..5)).unwrap();
        let batch: Vec<Entry> = (next..next + n)
            .map(|index| Entry {
                index,
                term,
                data: payload(index).into(),
                ..Default::default()
            })
            .collect();
        let last = next + n - 1;
        let hs = HardState {
            term,
            vote: 1,
            commit: last,
            ..Default::default()
        };
        log.append(&batch, Some(&hs)).unwrap();
        writeln!(out, "ACK {last}").unwrap();
        out.flush().unwrap();
        next = last + 1;
        if rng.gen_range(0..20) == 0 && last > 50 {
            let at = last - 20;
            let snap = Snapshot {
                data: snapshot_data(at).into(),
                metadata: Some(SnapshotMetadata {
                    conf_state: Some(ConfState::from((vec![1, 2, 3], vec![]))).into(),
                    index: at,
                    term: log.term(at).unwrap(),
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            };
            log.save_snapshot(&snap).unwrap();
            log.compact(at - 10).unwrap();
            writeln!(out, "SNAP {at}").unwrap();
            out.flush().unwrap();
        }
    }
}

/// Checks a reopened store against what the child acknowledged.
fn verify(log: &dyn LogStorage, acked: u64, round: usize) {
    let first = log.first_index().unwrap();
    let last = log.last_index().unwrap();
    assert!(
        last >= acked,
        "round {round}: acknowledged up to {acked} but the log ends at {last}"
    );
    let hs = log.initial_state().unwrap().hard_state;
    assert!(
        hs.commit >= acked && hs.commit <= last,
        "round {round}: hard state {hs:?} not written with its batch (acked {acked}, last {last})"
    );
    let snap = log.snapshot().unwrap();
    let snap_index = snap.metadata.as_ref().map_or(0, |m| m.index);
    if snap_index > 0 {
        assert_eq!(
            snap.data,
            snapshot_data(snap_index),
            "round {round}: snapshot data"
        );
        assert!(
            first <= snap_index + 1,
            "round {round}: compacted past the snapshot"
        );
    } else {
        assert_eq!(first, 1, "round {round}: compacted without a snapshot");
    }
    let mut term = 0;
    let mut index = first;
    while index <= last {
        let chunk = log.entries(index, last + 1, Some(1 << 20)).unwrap();
        assert!(!chunk.is_empty());
        for e in chunk {
            assert_eq!(e.index, index, "round {round}: entries out of order");
            assert_eq!(
                e.data,
                payload(index),
                "round {round}: entry {index} damaged"
            );
            assert!(
                e.term >= term && e.term <= hs.term,
                "round {round}: term of {index}"
            );
            assert_eq!(log.term(index).unwrap(), e.term);
            term = e.term;
            index += 1;
        }
    }
}

fn crash_rounds(backend: Backend) {
    let seed = seed(&format!("crash_rounds({})", backend.name()));
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut total_acked = 0;
    for round in 0..ROUNDS {
        let child_seed: u64 = rng.gen();
        let delay = Duration::from_millis(rng.gen_range(20..250));
        let job = [
            "crash".to_string(),
            backend.name().to_string(),
            dir.path().display().to_string(),
            child_seed.to_string(),
        ];
        let mut child = spawn_child("crash_child", &job);
        let mut lines = child_lines(&mut child);
        let ready = wait_for_line(&mut lines, "READY").expect("child opened the store");
        let acked = Arc::new(AtomicU64::new(0));
        let snaps = Arc::new(AtomicU64::new(0));
        let reader = {
            let (acked, snaps) = (acked.clone(), snaps.clone());
            std::thread::spawn(move || {
                for line in lines {
                    if let Some(n) = line.strip_prefix("ACK ") {
                        acked.fetch_max(n.parse().unwrap(), Ordering::SeqCst);
                    } else if line.starts_with("SNAP ") {
                        snaps.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        };
        std::thread::sleep(delay);
        child.kill().expect("SIGKILL the child");
        let status = child.wait().unwrap();
        reader.join().unwrap();
        let acked = acked.load(Ordering::SeqCst);
        let started = Instant::now();
        let log = backend.open(dir.path()).unwrap();
        let reopen = started.elapsed();
        verify(log.as_ref(), acked, round);
        eprintln!(
            "{} round {round}: {ready}, killed after {delay:?} ({status}), acknowledged up to \
             {acked}, log {}..={}, {} snapshots, reopened in {reopen:?}",
            backend.name(),
            log.first_index().unwrap(),
            log.last_index().unwrap(),
            snaps.load(Ordering::SeqCst),
        );
        total_acked = acked;
    }
    assert!(total_acked > 0, "the child acknowledged writes");
}

#[cfg(feature = "rocksdb")]
#[test]
fn rocksdb_survives_sigkill() {
    if child_job().is_some() {
        return;
    }
    crash_rounds(Backend::Rocks);
}

#[cfg(feature = "raft-engine")]
#[test]
fn raft_engine_survives_sigkill() {
    if child_job().is_some() {
        return;
    }
    crash_rounds(Backend::RaftEngine);
}
