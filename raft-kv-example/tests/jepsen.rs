//! The short profile of the Jepsen-style fault suite (`raft-kv-jepsen`), once per transport:
//! real `raft-kv` processes in network namespaces, faults on a seeded schedule, and a
//! linearizability / durability / convergence check of the recorded history.
//!
//! Needs root (network namespaces) and `ip` (iproute2). Without them each test prints
//! `skipped: the fault suite needs root and network namespaces ...` and passes, so `cargo
//! test` works for any user; with `RAFTKIT_REQUIRE_FAULT_SUITE=1` (CI sets it) it fails
//! instead. `RAFTKIT_SEED` replays a schedule. Reports land in `target/tmp/jepsen-reports/`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write as _;
use std::process::Command;
use std::sync::Mutex;

/// Set to 1 where the fault suite must run (CI): then a machine that cannot run it fails.
const REQUIRE_VAR: &str = "RAFTKIT_REQUIRE_FAULT_SUITE";

/// The line a test prints when it skips the suite.
const SKIPPED: &str =
    "skipped: the fault suite needs root and network namespaces (run as root, or see README)";

/// What a test does on this machine.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    Run,
    /// Skip, printing this.
    Skip(String),
    /// Fail with this.
    Fail(String),
}

/// `unusable`: why the suite cannot run here, if it cannot; `required`: whether it must.
fn plan(unusable: Option<String>, required: bool) -> Plan {
    match (unusable, required) {
        (None, _) => Plan::Run,
        (Some(why), false) => Plan::Skip(format!("{SKIPPED}: {why}")),
        (Some(why), true) => Plan::Fail(format!(
            "{REQUIRE_VAR}=1 but the fault suite cannot run here: {why} (it needs root and \
             network namespaces)"
        )),
    }
}

/// Why the suite cannot run on this machine, if it cannot, as the tool itself judges it
/// (`raft-kv-jepsen --check-environment`: root, `ip`, network namespaces).
fn unusable() -> Option<String> {
    let out = match Command::new(env!("CARGO_BIN_EXE_raft-kv-jepsen"))
        .arg("--check-environment")
        .output()
    {
        Ok(out) => out,
        Err(e) => return Some(format!("raft-kv-jepsen cannot run: {e}")),
    };
    if out.status.success() {
        None
    } else {
        Some(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Whether this test should go on; prints the skip line (past the test harness's capture,
/// so a passing run shows it) or panics, as `plan` says.
fn should_run() -> bool {
    let required = std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1");
    match plan(unusable(), required) {
        Plan::Run => true,
        Plan::Skip(line) => {
            let _ = writeln!(std::io::stderr(), "{line}");
            false
        }
        Plan::Fail(why) => panic!("{why}"),
    }
}

/// The runs share two cores: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn run_suite(transport: &str, faults: &str) {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    if !should_run() {
        return;
    }
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

#[test]
fn skips_without_root_or_namespaces_unless_required() {
    assert_eq!(plan(None, false), Plan::Run);
    assert_eq!(plan(None, true), Plan::Run);
    let why = || Some("this test runs as a user other than root".to_string());
    match plan(why(), false) {
        Plan::Skip(line) => assert!(
            line.starts_with(SKIPPED) && line.ends_with("other than root"),
            "{line}"
        ),
        other => panic!("{other:?}"),
    }
    match plan(why(), true) {
        Plan::Fail(why) => assert!(
            why.contains("RAFTKIT_REQUIRE_FAULT_SUITE=1") && why.contains("other than root"),
            "{why}"
        ),
        other => panic!("{other:?}"),
    }
}
