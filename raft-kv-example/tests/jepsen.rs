//! The short profile of the Jepsen-style fault suite (`raft-kv-jepsen`), once per transport:
//! real `raft-kv` processes in network namespaces, faults on a seeded schedule, and a
//! linearizability / durability / convergence check of the recorded history.
//!
//! Needs root (network namespaces) and `ip` (iproute2); without them the suite fails with a
//! clear message rather than skipping. `RAFTKIT_SEED` replays a schedule. Reports land in
//! `target/tmp/jepsen-reports/`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::sync::Mutex;

/// The runs share two cores: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn run_suite(transport: &str, faults: &str) {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let reports = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("jepsen-reports");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_raft-kv-jepsen"));
    cmd.args(["--profile", "short", "--duration", "50s"])
        .args(["--transport", transport, "--faults", faults])
        .args(["--nodes", "3", "--clients", "4", "--keys", "4"])
        .arg("--raft-kv")
        .arg(env!("CARGO_BIN_EXE_raft-kv"))
        .arg("--report-dir")
        .arg(&reports);
    // RAFTKIT_SEED, when set, is read by the tool itself.
    let out = cmd.output().expect("running raft-kv-jepsen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    if !out.status.success() {
        // The report (with log tails and the offending key's history) says why.
        let report = stdout
            .lines()
            .find_map(|l| l.strip_prefix("report: "))
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        panic!(
            "raft-kv-jepsen ({transport}, {faults}) failed: {}\n{stderr}\n{report}",
            out.status
        );
    }
}

#[test]
fn grpc_short_profile() {
    run_suite(
        "grpc",
        "kill-leader,pause,partition-split,restart-all,churn,disk-loss",
    );
}

#[test]
fn quic_short_profile() {
    run_suite(
        "quic",
        "kill,partition-one,restart-all,churn,pause,disk-loss",
    );
}
