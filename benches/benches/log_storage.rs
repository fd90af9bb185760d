//! LogStorage backends side by side: append throughput and latency (fsync on) for batches of
//! 1, 16 and 256 entries of 100 B and 4 KiB; reading a recent range; compaction. The same run
//! measures this machine's raw fdatasync rate (4 KiB append + fdatasync) for reference, and
//! ends with a table.
//!
//! `cargo bench -p raftkit-benches --bench log_storage` (set `RAFTKIT_BENCH_DIR` to put the
//! stores on another disk; by default they go in the system temp directory).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use raft_core::backend::eraftpb::{ConfState, Entry, Snapshot, SnapshotMetadata};
use raft_core::{LogStorage, MemLogStorage};
use raft_storage::{RaftEngineLogStorage, RocksLogStorage};

const BATCHES: [usize; 3] = [1, 16, 256];
const PAYLOADS: [usize; 2] = [100, 4096];

#[derive(Clone, Copy)]
enum Backend {
    Memory,
    Rocks,
    RaftEngine,
}

impl Backend {
    const ALL: [Backend; 3] = [Backend::Memory, Backend::Rocks, Backend::RaftEngine];

    fn name(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Rocks => "rocksdb",
            Backend::RaftEngine => "raft-engine",
        }
    }

    fn open(self, dir: &Path) -> Arc<dyn LogStorage> {
        match self {
            Backend::Memory => Arc::new(MemLogStorage::new()),
            Backend::Rocks => Arc::new(RocksLogStorage::open(dir).unwrap()),
            Backend::RaftEngine => Arc::new(RaftEngineLogStorage::open(dir).unwrap()),
        }
    }
}

fn bench_root() -> PathBuf {
    std::env::var_os("RAFTKIT_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// Per-operation latencies, by benchmark, for the closing table.
fn samples() -> &'static Mutex<BTreeMap<String, Vec<Duration>>> {
    static S: OnceLock<Mutex<BTreeMap<String, Vec<Duration>>>> = OnceLock::new();
    S.get_or_init(Mutex::default)
}

fn record(key: &str, d: Duration) {
    samples()
        .lock()
        .unwrap()
        .entry(key.to_string())
        .or_default()
        .push(d);
}

fn entries(first: u64, n: usize, payload: usize) -> Vec<Entry> {
    (first..first + n as u64)
        .map(|index| Entry {
            index,
            term: 1,
            data: vec![(index % 251) as u8; payload].into(),
            context: index.to_be_bytes().to_vec().into(),
            ..Default::default()
        })
        .collect()
}

fn snapshot_at(index: u64) -> Snapshot {
    Snapshot {
        data: b"bench".to_vec().into(),
        metadata: Some(SnapshotMetadata {
            conf_state: Some(ConfState::from((vec![1], vec![]))).into(),
            index,
            term: 1,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

/// Keeps the log short (memory and disk), outside the timed part.
fn trim(log: &dyn LogStorage, max_entries: u64) {
    let (first, last) = (log.first_index().unwrap(), log.last_index().unwrap());
    if last + 1 - first > max_entries {
        log.save_snapshot(&snapshot_at(last)).unwrap();
        log.compact(last).unwrap();
    }
}

/// Raw fdatasync rate: append 4 KiB and fdatasync, for `duration`.
fn fdatasync_rate(dir: &Path, duration: Duration) -> (f64, Vec<Duration>) {
    let path = dir.join("fdatasync-probe");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .unwrap();
    let block = vec![0x5a_u8; 4096];
    let mut lat = Vec::new();
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        file.write_all(&block).unwrap();
        file.sync_data().unwrap();
        lat.push(t.elapsed());
    }
    let rate = lat.len() as f64 / start.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(&path);
    (rate, lat)
}

fn bench_append(c: &mut Criterion, root: &Path) {
    for backend in Backend::ALL {
        for payload in PAYLOADS {
            let mut group = c.benchmark_group(format!("append/{}/{payload}B", backend.name()));
            for batch in BATCHES {
                let dir = tempfile::tempdir_in(root).unwrap();
                let log = backend.open(dir.path());
                let key = format!("append|{}|{payload}|{batch}", backend.name());
                group.throughput(Throughput::Elements(batch as u64));
                group.bench_function(BenchmarkId::from_parameter(batch), |b| {
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            trim(log.as_ref(), 20_000);
                            let next = log.last_index().unwrap() + 1;
                            let batch = entries(next, batch, payload);
                            let t = Instant::now();
                            log.append(&batch, None).unwrap();
                            let d = t.elapsed();
                            record(&key, d);
                            total += d;
                        }
                        total
                    })
                });
                drop(log);
            }
            group.finish();
        }
    }
}

fn bench_read(c: &mut Criterion, root: &Path) {
    const RANGE: usize = 64;
    for backend in Backend::ALL {
        for payload in PAYLOADS {
            let dir = tempfile::tempdir_in(root).unwrap();
            let log = backend.open(dir.path());
            for chunk in 0..40 {
                log.append(&entries(chunk * 256 + 1, 256, payload), None)
                    .unwrap();
            }
            let last = log.last_index().unwrap();
            let key = format!("read|{}|{payload}|{RANGE}", backend.name());
            let mut group = c.benchmark_group(format!("read_recent/{}/{payload}B", backend.name()));
            group.throughput(Throughput::Elements(RANGE as u64));
            group.bench_function(BenchmarkId::from_parameter(RANGE), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for i in 0..iters {
                        // The last RANGE entries, sliding a little, as a leader reads for a
                        // follower that is slightly behind.
                        let high = last + 1 - (i % 32);
                        let t = Instant::now();
                        let got = log.entries(high - RANGE as u64, high, None).unwrap();
                        let d = t.elapsed();
                        assert_eq!(got.len(), RANGE);
                        record(&key, d);
                        total += d;
                    }
                    total
                })
            });
            group.finish();
        }
    }
}

fn bench_compact(c: &mut Criterion, root: &Path) {
    const STEP: usize = 1000;
    for backend in Backend::ALL {
        let dir = tempfile::tempdir_in(root).unwrap();
        let log = backend.open(dir.path());
        let key = format!("compact|{}|100|{STEP}", backend.name());
        let mut group = c.benchmark_group(format!("compact/{}", backend.name()));
        group.throughput(Throughput::Elements(STEP as u64));
        group.bench_function(BenchmarkId::from_parameter(STEP), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let next = log.last_index().unwrap() + 1;
                    for chunk in 0..(STEP / 250) as u64 {
                        log.append(&entries(next + chunk * 250, 250, 100), None)
                            .unwrap();
                    }
                    let last = log.last_index().unwrap();
                    log.save_snapshot(&snapshot_at(last)).unwrap();
                    let t = Instant::now();
                    log.compact(last).unwrap();
                    let d = t.elapsed();
                    record(&key, d);
                    total += d;
                }
                total
            })
        });
        group.finish();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn us(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 100.0 {
        format!("{us:.0}")
    } else {
        format!("{us:.1}")
    }
}

fn print_table(fsync: &(f64, Vec<Duration>), dir: &Path) {
    let samples = samples().lock().unwrap();
    println!();
    println!("## LogStorage backends ({})", dir.display());
    println!();
    let mut lat = fsync.1.clone();
    lat.sort();
    println!(
        "Raw fdatasync (4 KiB append + fdatasync, same disk, same run): {:.0}/s, p50 {} us, p99 {} us",
        fsync.0,
        us(percentile(&lat, 0.5)),
        us(percentile(&lat, 0.99))
    );
    println!();
    println!(
        "| operation | backend | payload | batch | ops/s | entries/s | MB/s | p50 us | p99 us |"
    );
    println!("|---|---|---|---|---:|---:|---:|---:|---:|");
    let order = ["append", "read", "compact"];
    let backends = ["memory", "rocksdb", "raft-engine"];
    let mut rows: Vec<(&String, &Vec<Duration>)> = samples.iter().collect();
    rows.sort_by_key(|(k, _)| {
        let parts: Vec<&str> = k.split('|').collect();
        (
            order.iter().position(|o| *o == parts[0]),
            parts[2].parse::<usize>().unwrap_or(0),
            parts[3].parse::<usize>().unwrap_or(0),
            backends.iter().position(|b| *b == parts[1]),
        )
    });
    for (key, durations) in rows {
        let parts: Vec<&str> = key.split('|').collect();
        let (op, backend, payload, batch) = (
            parts[0],
            parts[1],
            parts[2].parse::<f64>().unwrap(),
            parts[3].parse::<f64>().unwrap(),
        );
        let mut sorted = durations.clone();
        sorted.sort();
        let mean = sorted.iter().sum::<Duration>().as_secs_f64() / sorted.len() as f64;
        let ops = 1.0 / mean;
        println!(
            "| {op} | {backend} | {} B | {} | {ops:.0} | {:.0} | {:.1} | {} | {} |",
            payload,
            batch,
            ops * batch,
            ops * batch * payload / 1e6,
            us(percentile(&sorted, 0.5)),
            us(percentile(&sorted, 0.99)),
        );
    }
    println!();
    println!(
        "(append: one `append` of `batch` entries, synced; read: `entries` of the last `batch` \
         entries of a 10,240-entry log; compact: `compact` dropping `batch` 100 B entries, synced)"
    );
}

fn main() {
    let root = bench_root();
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500))
        .configure_from_args();
    let fsync = fdatasync_rate(&root, Duration::from_secs(3));
    println!(
        "raw fdatasync rate in {}: {:.0}/s (4 KiB append + fdatasync)",
        root.display(),
        fsync.0
    );
    bench_append(&mut c, &root);
    bench_read(&mut c, &root);
    bench_compact(&mut c, &root);
    c.final_summary();
    let again = fdatasync_rate(&root, Duration::from_secs(2));
    println!("raw fdatasync rate at the end: {:.0}/s", again.0);
    print_table(&fsync, &root);
}
