//! Runs the deterministic simulator over many seeds and prints the first that fails.
//!
//! ```text
//! cargo run --release -p raft-core --features testing --example simulate -- --seeds 10000
//! cargo run --release -p raft-core --features testing --example simulate -- --seed 42
//! ```
//!
//! `--from S` starts at seed S (default 0); `--jobs J` runs J seeds at once (default 1);
//! `--no-faults` runs healthy clusters;
//! `--nodes N` sets the cluster size (default 3); `--amnesiac-disks` breaks the disks on
//! purpose (see `SimConfig::amnesiac_disks`): the run must fail.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use raft_core::testing::simulation::{run, SimConfig};

fn main() -> ExitCode {
    // `RUST_LOG=raft_core=debug simulate --seed N` shows what the nodes did.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
    }
    let mut seeds = 100u64;
    let mut from = 0u64;
    let mut jobs = 1u64;
    let mut config = SimConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> Option<u64> {
            let value = args.next().and_then(|v| v.parse().ok());
            if value.is_none() {
                eprintln!("{name} needs a number");
            }
            value
        };
        match arg.as_str() {
            "--seeds" => match number("--seeds") {
                Some(n) => seeds = n,
                None => return ExitCode::FAILURE,
            },
            "--from" => match number("--from") {
                Some(n) => from = n,
                None => return ExitCode::FAILURE,
            },
            "--seed" => match number("--seed") {
                Some(n) => {
                    from = n;
                    seeds = 1;
                }
                None => return ExitCode::FAILURE,
            },
            "--jobs" => match number("--jobs") {
                Some(n) => jobs = n.max(1),
                None => return ExitCode::FAILURE,
            },
            "--nodes" => match number("--nodes") {
                Some(n) => config.nodes = n,
                None => return ExitCode::FAILURE,
            },
            "--no-faults" => config.faults = false,
            "--amnesiac-disks" => config.amnesiac_disks = true,
            other => {
                eprintln!("unknown argument {other:?}; see the file's header for usage");
                return ExitCode::FAILURE;
            }
        }
    }
    let started = Instant::now();
    let end = from.saturating_add(seeds);
    let next = AtomicU64::new(from);
    let events = AtomicU64::new(0);
    let operations = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        return;
                    }
                    match run(seed, &config) {
                        Ok(report) => {
                            events.fetch_add(report.events, Ordering::Relaxed);
                            operations.fetch_add(report.operations as u64, Ordering::Relaxed);
                            if seeds == 1 {
                                println!("{report:#?}");
                            }
                        }
                        Err(failure) => {
                            failed.store(true, Ordering::Relaxed);
                            eprintln!("{failure}");
                            eprintln!("replay: --seed {seed}");
                        }
                    }
                }
            });
        }
    });
    if failed.load(Ordering::Relaxed) {
        return ExitCode::FAILURE;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{seeds} seeds passed in {secs:.1} s with {jobs} jobs: {:.1} seeds/s, {:.0} events/s, \
         {} operations",
        seeds as f64 / secs,
        events.load(Ordering::Relaxed) as f64 / secs,
        operations.load(Ordering::Relaxed),
    );
    ExitCode::SUCCESS
}
