//! The deterministic simulator in `cargo test`: a few hundred seeds of a three-node cluster
//! under crashes, lost disks, failed fsyncs, partitions, lost, duplicated and reordered
//! messages, each checked for linearizability, no lost acknowledged write, replica agreement
//! and no pending waiter. A failure names its seed; replay it with
//! `cargo run --release -p raft-core --features testing --example simulate -- --seed N`.
//! `RAFTKIT_SIM_FROM` moves the window of seeds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use raft_core::testing::simulation::{run, Report, SimConfig};

/// Seeds per test; two tests run side by side.
const SEEDS: u64 = 150;

fn first_seed() -> u64 {
    std::env::var("RAFTKIT_SIM_FROM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn run_seeds(from: u64, count: u64, config: &SimConfig) -> Vec<Report> {
    let mut reports = Vec::new();
    for seed in from..from + count {
        match run(seed, config) {
            Ok(report) => reports.push(report),
            Err(failure) => panic!("{failure}\nreplay: --seed {seed}"),
        }
    }
    reports
}

fn summary(reports: &[Report]) -> String {
    let sum = |f: fn(&Report) -> u64| reports.iter().map(f).sum::<u64>();
    format!(
        "{} seeds: {} operations, {} acknowledged, {} unknown; {} crashes, {} lost disks, \
         {} failed fsyncs, {} partitions, {} snapshots sent, {} overlapped log writes",
        reports.len(),
        sum(|r| r.operations as u64),
        sum(|r| r.acknowledged as u64),
        sum(|r| r.unknown as u64),
        sum(|r| r.crashes),
        sum(|r| r.disk_losses),
        sum(|r| r.fsync_failures),
        sum(|r| r.partitions),
        sum(|r| r.snapshots_delivered),
        sum(|r| r.overlapped_writes),
    )
}

#[test]
fn faulty_three_node_clusters_keep_every_property_first_half() {
    let from = first_seed();
    let reports = run_seeds(from, SEEDS, &SimConfig::default());
    println!("{}", summary(&reports));
    let faults = reports
        .iter()
        .map(|r| r.crashes + r.partitions + r.fsync_failures + r.disk_losses)
        .sum::<u64>();
    assert!(faults > SEEDS, "the runs injected faults ({faults})");
    assert!(
        reports.iter().any(|r| r.disk_losses > 0),
        "some run lost a disk and re-admitted the node"
    );
    assert!(
        reports.iter().filter(|r| r.snapshots_delivered > 0).count() as u64 > SEEDS / 4,
        "lagging nodes caught up from snapshots in many runs"
    );
    assert!(
        reports.iter().all(|r| r.overlapped_writes > 0),
        "every run overlapped log writes"
    );
    assert!(
        reports.iter().all(|r| r.acknowledged > 100),
        "every run made progress"
    );
}

#[test]
fn faulty_three_node_clusters_keep_every_property_second_half() {
    let reports = run_seeds(first_seed() + SEEDS, SEEDS, &SimConfig::default());
    println!("{}", summary(&reports));
}

#[test]
fn five_node_clusters_keep_every_property() {
    let config = SimConfig {
        nodes: 5,
        ..SimConfig::default()
    };
    let reports = run_seeds(first_seed() + 10_000, 20, &config);
    println!("{}", summary(&reports));
}

/// The same seed gives the same interleaving, event for event; another seed another.
#[test]
fn a_seed_replays_bit_for_bit() {
    let config = SimConfig::default();
    let first = run(4242, &config).expect("seed 4242 passes");
    let again = run(4242, &config).expect("seed 4242 passes");
    assert_eq!(first, again);
    let other = run(4243, &config).expect("seed 4243 passes");
    assert_ne!(first.trace, other.trace);
    assert!(first.events > 10_000, "{first:?}");
}

/// The checks are not vacuous: on disks that lose a node's vote and its last entries when it
/// crashes, a committed entry can vanish or two leaders can commit different entries at one
/// index, and the simulator must see it.
#[test]
fn the_checks_catch_disks_that_forget() {
    let config = SimConfig {
        amnesiac_disks: true,
        ..SimConfig::default()
    };
    let failures: Vec<String> = (0..60)
        .filter_map(|seed| run(seed, &config).err())
        .map(|failure| failure.what)
        .collect();
    let unsafe_runs = failures
        .iter()
        .filter(|what| {
            what.contains("another node applied")
                || what.contains("not linearizable")
                || what.contains("replicas disagree")
        })
        .count();
    assert!(
        unsafe_runs > 0,
        "no seed on forgetful disks broke safety visibly: the checks see nothing ({failures:?})"
    );
    println!(
        "{} of 60 seeds failed, {unsafe_runs} of them on safety; the first: {}",
        failures.len(),
        failures[0]
    );
}
