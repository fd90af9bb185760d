//! Message drop, duplication, reordering and delay, alone and together with crashes and
//! partitions on a seeded schedule. Every history is checked.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use raft_core::testing::cluster::{seed, test_config, TestCluster};
use raft_core::testing::linearizability::{assert_linearizable, History};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::init_tracing;

const KEYS: usize = 4;

async fn under_faults(name: &str, set: impl FnOnce(&raft_core::testing::Faults)) {
    init_tracing();
    let seed = seed(name);
    let cluster = TestCluster::start(3, test_config(), seed).await;
    set(cluster.faults());
    let history = History::new();
    let stats = cluster
        .run_workload(&history, 6, KEYS, Duration::from_secs(3), seed)
        .await;
    eprintln!("{name}: {stats:?}");
    assert!(stats.ok > 10, "progress under faults: {stats:?}");
    cluster.faults().clear();
    cluster.wait_for_leader(Duration::from_secs(5)).await;
    cluster.wait_converged(Duration::from_secs(10)).await;
    cluster.final_reads(&history, KEYS).await;
    assert_linearizable(&history);
    cluster.assert_replicas_agree(KEYS).await;
    cluster.assert_no_pending(Duration::from_secs(5)).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_drop() {
    under_faults("message_drop", |f| f.set_drop_rate(0.15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_duplication() {
    under_faults("message_duplication", |f| f.set_duplicate_rate(0.3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_reorder() {
    under_faults("message_reorder", |f| f.set_reorder_rate(0.2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_delay() {
    under_faults("message_delay", |f| {
        f.set_delay(Duration::from_millis(1), Duration::from_millis(15))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_message_faults_together() {
    under_faults("all_message_faults_together", |f| {
        f.set_drop_rate(0.05);
        f.set_duplicate_rate(0.1);
        f.set_reorder_rate(0.1);
        f.set_delay(Duration::ZERO, Duration::from_millis(5));
    })
    .await;
}

/// A seeded nemesis: crashes, restarts, isolations and splits while clients run, with lossy
/// links throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_nemesis() {
    init_tracing();
    let seed = seed("randomized_nemesis");
    let mut rng = StdRng::seed_from_u64(seed);
    let cluster = TestCluster::start(5, test_config(), seed).await;
    cluster.faults().set_drop_rate(0.02);
    cluster.faults().set_duplicate_rate(0.02);
    let history = History::new();
    let load = {
        let (cluster, history) = (cluster.clone(), history.clone());
        tokio::spawn(async move {
            cluster
                .run_workload(&history, 8, KEYS, Duration::from_secs(8), seed)
                .await
        })
    };
    let mut crashed: Vec<u64> = Vec::new();
    for step in 0..10 {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(200..700))).await;
        match rng.gen_range(0..4) {
            0 if crashed.len() < 2 => {
                let running = cluster.running();
                let victim = running[rng.gen_range(0..running.len())];
                eprintln!("nemesis step {step}: crash {victim}");
                cluster.crash(victim).await;
                crashed.push(victim);
            }
            1 if !crashed.is_empty() => {
                let id = crashed.remove(rng.gen_range(0..crashed.len()));
                eprintln!("nemesis step {step}: restart {id}");
                cluster.restart(id).await;
            }
            2 => {
                let victim = rng.gen_range(1..=5);
                eprintln!("nemesis step {step}: isolate {victim}");
                cluster.faults().isolate(victim);
            }
            3 => {
                let cut = rng.gen_range(1..=2);
                let mut ids: Vec<u64> = (1..=5).collect();
                for i in (1..ids.len()).rev() {
                    ids.swap(i, rng.gen_range(0..=i));
                }
                let (minority, majority) = ids.split_at(cut);
                eprintln!("nemesis step {step}: split {minority:?} / {majority:?}");
                cluster.faults().partition(&[minority, majority]);
            }
            _ => {
                eprintln!("nemesis step {step}: heal");
                cluster.faults().heal();
            }
        }
    }
    cluster.faults().clear();
    for id in crashed {
        cluster.restart(id).await;
    }
    let stats = load.await.expect("workload");
    eprintln!(
        "randomized_nemesis: {stats:?}, {} operations",
        history.len()
    );
    assert!(stats.ok > 20, "{stats:?}");
    cluster.wait_for_leader(Duration::from_secs(10)).await;
    cluster.wait_converged(Duration::from_secs(15)).await;
    cluster.final_reads(&history, KEYS).await;
    assert_linearizable(&history);
    cluster.assert_replicas_agree(KEYS).await;
    cluster.assert_no_pending(Duration::from_secs(5)).await;
    cluster.shutdown().await;
}
