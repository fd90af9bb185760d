//! A fixed amount of work for profilers: a 3-node in-process cluster (memory log,
//! `LocalTransport`) takes `TOTAL` empty proposals from `CLIENTS` concurrent proposers through
//! the leader, then stops. Run it under `valgrind --tool=callgrind` (instruction counts are
//! repeatable on a noisy machine) or `perf record`, and divide by `TOTAL` for a per-proposal
//! cost.
//!
//! `cargo run --release -p raft-core --features testing --example proposal_profile -- 20000 64`

use std::time::{Duration, Instant};

use raft_core::testing::cluster::{test_config, TestCluster};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let total: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let clients: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(64);
    let cluster = TestCluster::start(3, test_config(), 1).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    let mailbox = cluster.mailbox(leader);
    let started = Instant::now();
    let per_client = total / clients.max(1);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mailbox = mailbox.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0u64;
            for _ in 0..per_client {
                if mailbox.send_proposal(Vec::new()).await.is_ok() {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap_or(0);
    }
    let elapsed = started.elapsed();
    println!(
        "{ok} of {} proposals from {clients} proposers in {elapsed:?} ({:.0}/s)",
        per_client * clients,
        ok as f64 / elapsed.as_secs_f64()
    );
    cluster.shutdown().await;
}
