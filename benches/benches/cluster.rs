//! Framework overhead without a network: a 3-node in-process cluster over `LocalTransport`,
//! proposals of empty payloads from 1, 16, 64 and 256 concurrent proposers through the
//! leader, on memory storage and on RocksDB (every log write synced). Throughput is reported
//! as elements (proposals) per second. Set `RAFTKIT_BENCH_DIR` to put the RocksDB directories
//! on another disk (default: the system temp directory).
//!
//! `cargo bench -p raftkit-benches --bench cluster`

#![allow(clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use raft_core::testing::cluster::{test_config, StorageFactory, TestCluster};
use raft_core::{LogStorage, Mailbox, MemLogStorage};
use raft_storage::RocksLogStorage;

/// Proposals per measured iteration, spread over the proposers.
const BATCH: u64 = 2048;

async fn propose_all(mailbox: &Mailbox, clients: u64, total: u64) {
    let per_client = total / clients;
    let mut tasks = Vec::with_capacity(clients as usize);
    for _ in 0..clients {
        let mailbox = mailbox.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_client {
                let _ = mailbox.send_proposal(Vec::new()).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

fn bench_storage(c: &mut Criterion, name: &str, factory: StorageFactory) {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("no tokio runtime: {e}");
            return;
        }
    };
    let (cluster, mailbox) = runtime.block_on(async {
        let cluster = TestCluster::start_with_storage(3, test_config(), 1, factory).await;
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        let mailbox = cluster.mailbox(leader);
        (cluster, mailbox)
    });
    let mut group = c.benchmark_group(format!("cluster/{name}"));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(BATCH));
    for clients in [1u64, 16, 64, 256] {
        let total = if clients == 1 { BATCH / 8 } else { BATCH };
        group.throughput(Throughput::Elements(total));
        group.bench_with_input(
            BenchmarkId::new("proposers", clients),
            &clients,
            |b, &clients| {
                b.to_async(&runtime).iter_custom(|iters| {
                    let mailbox = mailbox.clone();
                    async move {
                        let started = Instant::now();
                        for _ in 0..iters {
                            propose_all(&mailbox, clients, total).await;
                        }
                        started.elapsed()
                    }
                });
            },
        );
    }
    group.finish();
    runtime.block_on(cluster.shutdown());
}

fn cluster(c: &mut Criterion) {
    let memory: StorageFactory = Arc::new(|_| Arc::new(MemLogStorage::new()));
    bench_storage(c, "memory", memory);

    let root = std::env::var_os("RAFTKIT_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dirs = match tempfile::tempdir_in(&root) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("no directory for RocksDB under {}: {e}", root.display());
            return;
        }
    };
    let base = dirs.path().to_path_buf();
    let rocks: StorageFactory = Arc::new(move |id| {
        let dir = base.join(format!("node-{id}"));
        match RocksLogStorage::open(&dir) {
            Ok(log) => Arc::new(log) as Arc<dyn LogStorage>,
            // The factory cannot return an error; a bench without its storage is meaningless.
            Err(e) => panic!("opening {}: {e}", dir.display()),
        }
    });
    bench_storage(c, "rocksdb", rocks);
}

criterion_group!(benches, cluster);
criterion_main!(benches);
