//! Framework overhead: a 3-node in-process cluster (memory log, `LocalTransport`, empty
//! payloads) driven by N concurrent proposers. Prints writes/s per client count.
//!
//! `cargo run --release -p raft-core --features testing --example cluster_throughput -- [SECONDS
//! [CLIENTS...]]` (3 s per client count; 1, 16, 64 and 256 clients by default). `PAYLOAD=N`
//! proposes puts of an N-byte value (to one key) instead of empty commands.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft_core::testing::cluster::{test_config, TestCluster};
use raft_core::testing::kv::encode_op;
use raft_core::testing::linearizability::KvOp;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(3);
    let mut client_counts: Vec<usize> = args.filter_map(|s| s.parse().ok()).collect();
    if client_counts.is_empty() {
        client_counts = vec![1, 16, 64, 256];
    }
    let cluster = TestCluster::start(3, test_config(), 1).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await;
    // NO_SESSIONS=1 proposes outside client sessions, to measure what sessions cost.
    let mailbox = if std::env::var_os("NO_SESSIONS").is_some() {
        cluster.mailbox(leader).without_sessions()
    } else {
        cluster.mailbox(leader)
    };
    let payload_len: usize = std::env::var("PAYLOAD")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let command = if payload_len == 0 {
        Vec::new()
    } else {
        encode_op(&KvOp::Put {
            key: "bench".into(),
            value: "v".repeat(payload_len),
        })
    };
    println!("clients  writes/s");
    for clients in client_counts {
        // A flag rather than a clock read per proposal, and a count per proposer rather than
        // one shared counter: the harness's own costs stay out of the figure.
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (mailbox, stop, command) = (mailbox.clone(), stop.clone(), command.clone());
            tasks.push(tokio::spawn(async move {
                let mut done = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if mailbox.send_proposal(command.clone()).await.is_ok() {
                        done += 1;
                    }
                }
                done
            }));
        }
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let mut done = 0;
        for t in tasks {
            done += t.await.unwrap_or(0);
        }
        let rate = done as f64 / started.elapsed().as_secs_f64();
        println!("{clients:>7}  {rate:>9.0}");
    }
    cluster.shutdown().await;
}
