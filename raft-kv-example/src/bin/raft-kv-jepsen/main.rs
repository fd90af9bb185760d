//! `raft-kv-jepsen`: a Jepsen-style fault suite for `raft-kv` — real processes, real faults,
//! checked histories.
//!
//! It starts an N-node `raft-kv` cluster, one process per Linux network namespace (see
//! [`net`]), runs concurrent clients doing put / get / cas / delete on a small key set
//! against random nodes, and meanwhile injects faults on a seeded schedule (SIGKILL of a
//! node or of the leader, SIGSTOP pauses, full-cluster SIGKILL, partitions, membership
//! churn, a lost disk). Then it checks:
//!
//! * **appends**: clients also append unique tokens to a few keys, in their own client
//!   sessions, retrying an unknown outcome with the same session number; from the final
//!   values, every acknowledged append appears exactly once (where its answer says), no
//!   token twice, no refused one at all ([`appends`]);
//! * **linearizability** of the whole history (every operation with its outcome: ok, failed
//!   or unknown) with `raft_core::testing`'s checker, key by key. Linearizable reads of every
//!   key after each full-cluster restart and at the end are part of the history, so a lost
//!   acknowledged write fails this check;
//! * **convergence**: after healing, every node applies up to the leader's commit index and
//!   a stale read of every key on every node equals a linearizable read;
//! * **no unexpected exits**: a node process may only exit when the nemesis killed it (or
//!   removed it from the cluster); **no panics** in any node's log;
//! * **recovery**: after every fault is healed, a leader with every node as a voter appears.
//!
//! Every run prints its seed (`RAFTKIT_SEED=...`; `--seed` or that variable replays the
//! schedule) and writes a report directory: `report.txt` (operations by outcome, faults with
//! timestamps, verdicts, log tails), `history.txt` (every operation) and the node logs. The
//! exit code is 0 only when every verdict passed. Needs root (network namespaces) and `ip`.
//!
//! The nodes run secured as in production: mutual TLS on either raft transport, with
//! certificates (`raft-kv certs`) naming each node's id and cluster address, and random
//! bearer tokens on the HTTP API (token files 0600 in the run directory's `secrets/`).

mod appends;
mod nemesis;
mod net;
mod nodes;
mod workload;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use raft_core::testing::linearizability::{
    check_with_budget, describe_key, KvOp, KvOutput, Operation, Outcome, Verdict,
};
use rand::rngs::StdRng;
use rand::SeedableRng;

use nemesis::{Fault, Nemesis, Timing};
use nodes::Nodes;
use workload::{run_op, stale_read, ClientSettings, Recorder, Workload};

/// How nodes talk to each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// gRPC over HTTP/2 (mutual TLS with generated development certificates).
    Grpc,
    /// QUIC (mutual TLS with generated development certificates).
    Quic,
}

/// Canned settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Profile {
    /// About a minute, faults every few seconds: for CI.
    Short,
    /// As long as `--duration` (default 1 h), fresh keys every `--epoch`.
    Long,
}

/// A Jepsen-style fault suite for raft-kv (needs root for network namespaces).
#[derive(Parser, Debug)]
#[command(name = "raft-kv-jepsen", about)]
struct Args {
    /// short (CI, about a minute) or long (as long as --duration).
    #[arg(long, value_enum, default_value = "short")]
    profile: Profile,
    /// How long the faults and load last, e.g. 90s, 20m, 2h (default: 60s short, 1h long).
    #[arg(long)]
    duration: Option<String>,
    /// Seed of the fault schedule and client choices (default: $RAFTKIT_SEED, else random).
    #[arg(long)]
    seed: Option<u64>,
    /// grpc or quic.
    #[arg(long, value_enum, default_value = "grpc")]
    transport: Transport,
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Comma-separated faults: kill, kill-leader, pause, restart-all, partition-one,
    /// partition-split, churn, disk-loss; "all" or "none".
    #[arg(long, default_value = "all")]
    faults: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    clients: u64,
    /// Keys per epoch.
    #[arg(long, default_value_t = 4)]
    keys: usize,
    /// Clients move to fresh keys every epoch, e.g. 2m (default: never in short, 2m in
    /// long), which keeps each key's history small enough to check.
    #[arg(long)]
    epoch: Option<String>,
    /// Consistency of the clients' reads: linearizable, lease, or stale (stale reads are not
    /// linearizable: a run with them should fail, which checks the checker).
    #[arg(long, default_value = "linearizable", value_parser = ["linearizable", "lease", "stale"])]
    reads: String,
    /// A client gives up on an operation after this long (outcome unknown for writes); with
    /// sessions, a write whose outcome is unknown is retried until then.
    #[arg(long, default_value = "8s")]
    op_timeout: String,
    /// Keys clients append unique tokens to (a fifth of their operations); 0: no appends.
    #[arg(long, default_value_t = 2)]
    append_keys: usize,
    /// Clients write without client sessions (no Raft-Session headers, no retries of unknown
    /// outcomes) and the nodes run with --no-client-sessions: the suite as it was before
    /// sessions, to measure what they buy.
    #[arg(long)]
    no_sessions: bool,
    /// Where run directories are created (default: $TMPDIR/raft-kv-jepsen-reports).
    #[arg(long)]
    report_dir: Option<PathBuf>,
    /// The raft-kv binary (default: beside this one).
    #[arg(long)]
    raft_kv: Option<PathBuf>,
    /// Linearizability search budget per key (steps).
    #[arg(long, default_value_t = 20_000_000)]
    check_budget: u64,
    /// Keep the nodes' data dirs even when every verdict passed.
    #[arg(long)]
    keep_data: bool,
    /// Remove namespaces and links left by crashed runs, then exit.
    #[arg(long)]
    cleanup: bool,
    /// Check that this machine can run the suite (root, `ip`, network namespaces), then exit:
    /// 0 if it can, 3 with the reason on stderr if it cannot.
    #[arg(long)]
    check_environment: bool,
}

/// Parses `90`, `90s`, `20m`, `2h`, `500ms`.
fn parse_duration(text: &str) -> Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .with_context(|| format!("bad duration {text:?}"))?;
    let seconds = match unit {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => bail!("bad duration unit in {text:?} (use ms, s, m or h)"),
    };
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_faults(text: &str) -> Result<Vec<Fault>> {
    match text.trim() {
        "all" => Ok(Fault::ALL.to_vec()),
        "none" | "" => Ok(Vec::new()),
        list => list
            .split(',')
            .map(|f| f.trim().parse::<Fault>().map_err(anyhow::Error::msg))
            .collect(),
    }
}

/// One verdict of the report.
struct Check {
    name: &'static str,
    passed: bool,
    detail: String,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    if args.check_environment {
        return match net::check_environment() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e:#}");
                ExitCode::from(3)
            }
        };
    }
    if args.cleanup {
        return match net::cleanup_all() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("raft-kv-jepsen: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("raft-kv-jepsen: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the suite; `Ok(false)` when a verdict failed.
async fn run(args: Args) -> Result<bool> {
    let seed = match args.seed {
        Some(seed) => seed,
        None => match std::env::var("RAFTKIT_SEED") {
            Ok(s) => s.parse().context("RAFTKIT_SEED must be a number")?,
            Err(_) => SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64,
        },
    };
    let duration = match (&args.duration, args.profile) {
        (Some(d), _) => parse_duration(d)?,
        (None, Profile::Short) => Duration::from_secs(60),
        (None, Profile::Long) => Duration::from_secs(3600),
    };
    let epoch = match (&args.epoch, args.profile) {
        (Some(e), _) => parse_duration(e)?,
        (None, Profile::Short) => duration + Duration::from_secs(3600),
        (None, Profile::Long) => Duration::from_secs(120),
    };
    let timing = match args.profile {
        Profile::Short => Timing {
            gap: (Duration::from_millis(1000), Duration::from_millis(3000)),
            hold: (Duration::from_millis(2000), Duration::from_millis(5000)),
        },
        Profile::Long => Timing {
            gap: (Duration::from_millis(2000), Duration::from_millis(10000)),
            hold: (Duration::from_millis(1000), Duration::from_millis(10000)),
        },
    };
    let op_timeout = parse_duration(&args.op_timeout)?;
    let faults = parse_faults(&args.faults)?;
    if args.nodes == 0 || args.nodes > 15 {
        bail!("--nodes must be 1..=15");
    }
    if args.keys == 0 || args.clients == 0 {
        bail!("--keys and --clients must be at least 1");
    }
    let fault_names: Vec<&str> = faults.iter().map(|f| f.name()).collect();
    println!("RAFTKIT_SEED={seed}");
    let replay =
        format!(
        "raft-kv-jepsen --seed {seed} --profile {:?} --duration {}s --transport {:?} --nodes {} \
         --faults {} --clients {} --keys {} --reads {} --append-keys {}{}",
        args.profile,
        duration.as_secs_f64(),
        args.transport,
        args.nodes,
        if faults.is_empty() {
            "none".to_string()
        } else {
            fault_names.join(",")
        },
        args.clients,
        args.keys,
        args.reads,
        args.append_keys,
        if args.no_sessions { " --no-sessions" } else { "" }
    )
        .to_lowercase();
    println!("replay: {replay}");

    let exe = match &args.raft_kv {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("locating this binary's directory")?
            .join("raft-kv"),
    };
    if !exe.exists() {
        bail!(
            "no raft-kv binary at {} (build it, or pass --raft-kv)",
            exe.display()
        );
    }
    let exe = exe.canonicalize()?;
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let report_dir = args
        .report_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("raft-kv-jepsen-reports"));
    let dir = report_dir.join(format!(
        "{stamp}-{}-{seed}",
        format!("{:?}", args.transport).to_lowercase()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    println!("report dir: {}", dir.display());

    let ids: Vec<u64> = (1..=args.nodes).collect();
    // Every run builds its namespaces, partition faults or not: the nodes need their own
    // addresses. Without root this fails loudly here.
    let net = net::Network::create(&ids)?;
    println!("network: run {} (namespaces rkj{}n*)", net.run, net.run);
    let started = Instant::now();
    let mut nodes = Nodes::new(exe, args.transport, &net, &ids, &dir, started)?;
    if args.no_sessions {
        nodes.serve_flags.push("--no-client-sessions".into());
    }
    let nodes = Arc::new(Mutex::new(nodes));
    let recorder = Recorder::new(started);
    let targets: Vec<(u64, String)> = {
        let n = lock(&nodes);
        n.nodes.iter().map(|n| (n.id, n.url.clone())).collect()
    };
    let client_token = lock(&nodes).tokens.client.clone();
    let workload = Workload::new(
        recorder.clone(),
        targets,
        ClientSettings {
            keys: args.keys,
            epoch,
            reads: args.reads.clone(),
            token: client_token,
            append_keys: args.append_keys,
            sessions: !args.no_sessions,
        },
        started,
    );
    let mut nemesis = Nemesis::new(
        nodes.clone(),
        net,
        workload.clone(),
        started,
        StdRng::seed_from_u64(seed),
        timing,
    )?;

    // Form the cluster: node 1 bootstraps, the others join through it one by one.
    let first_raft = lock(&nodes).node(1)?.raft.clone();
    lock(&nodes).start(1, &[])?;
    if nemesis.leader(Duration::from_secs(30)).await.is_none() {
        bail!(
            "node 1 did not become leader; its log:\n{}",
            nodes::tail(&lock(&nodes).log_path(1)?, 30)
        );
    }
    for &id in &ids[1..] {
        lock(&nodes).start(id, std::slice::from_ref(&first_raft))?;
        let want: Vec<u64> = (1..=id).collect();
        nemesis.wait_voters(&want, Duration::from_secs(60)).await?;
    }
    println!(
        "[{:7.2}s] cluster of {} formed ({:?}); load and faults for {:?}: {}",
        started.elapsed().as_secs_f64(),
        args.nodes,
        args.transport,
        duration,
        fault_names.join(",")
    );
    let first_url = lock(&nodes).node(1)?.url.clone();
    check_tokens_enforced(&first_url).await?;

    // The exit monitor: notices nodes that die without the nemesis.
    let monitor = {
        let nodes = nodes.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let mut n = lock(&nodes);
                let before = n.crashes.len();
                n.reap();
                for crash in &n.crashes[before..] {
                    println!(
                        "[{:7.2}s] node {} exited unexpectedly ({})",
                        crash.at, crash.id, crash.status
                    );
                }
            }
        })
    };
    let clients: Vec<_> = (0..args.clients)
        .map(|c| {
            let w = workload.clone();
            tokio::spawn(w.client(c + 1, seed.wrapping_add(c + 1), op_timeout))
        })
        .collect();

    let until = started.elapsed().as_secs_f64() + duration.as_secs_f64();
    let nemesis_result = nemesis.run(&faults, until).await;
    let mut checks = Vec::new();
    if let Err(e) = &nemesis_result {
        checks.push(Check {
            name: "nemesis",
            passed: false,
            detail: format!("the nemesis failed: {e:#}"),
        });
    }
    nemesis.recover("at the end").await?;
    // Some load on the healed cluster, then stop the clients.
    tokio::time::sleep(Duration::from_secs(2)).await;
    workload.stop.store(true, Ordering::SeqCst);
    for c in clients {
        let _ = c.await;
    }
    println!(
        "[{:7.2}s] clients stopped; checking convergence",
        started.elapsed().as_secs_f64()
    );
    checks.push(converge(&mut nemesis).await);
    let appends = workload.appends();
    if args.append_keys > 0 {
        checks.push(check_appends(&nemesis, &appends).await);
    }
    monitor.abort();
    let crashes = {
        let mut n = lock(&nodes);
        n.reap();
        let crashes = n.crashes.clone();
        n.stop_all();
        crashes
    };
    checks.push(Check {
        name: "no unexpected exits",
        passed: crashes.is_empty(),
        detail: crashes
            .iter()
            .map(|c| {
                format!(
                    "node {} exited at {:.2}s ({}); log tail:\n{}",
                    c.id, c.at, c.status, c.log_tail
                )
            })
            .collect::<Vec<_>>()
            .join("\n\n"),
    });
    checks.push(scan_logs(&lock(&nodes), &ids)?);
    checks.push(Check {
        name: "recovery",
        passed: nemesis.stuck.is_empty(),
        detail: nemesis.stuck.join("\n"),
    });
    println!(
        "[{:7.2}s] checking linearizability",
        started.elapsed().as_secs_f64()
    );
    let records = recorder.records();
    let budget = args.check_budget;
    let ops: Vec<Operation> = records.iter().map(|r| r.op.clone()).collect();
    let lin = tokio::task::spawn_blocking(move || check_linearizability(&ops, budget)).await?;
    checks.push(lin);

    let passed = checks.iter().all(|c| c.passed);
    let unknowns = unknown_outcomes(&records, &appends);
    let report = render_report(&ReportInput {
        seed,
        replay: &replay,
        args: &args,
        duration,
        elapsed: started.elapsed(),
        records: &records,
        appends: &appends,
        unknowns: &unknowns,
        events: &nemesis.events,
        checks: &checks,
    });
    std::fs::write(dir.join("report.txt"), &report)?;
    write_history(&dir.join("history.txt"), &records, &appends)?;
    println!("{}", security(args.transport));
    print!("{unknowns}");
    print!("{}", summary(&checks));
    println!("report: {}", dir.join("report.txt").display());
    println!("RAFTKIT_SEED={seed}");
    drop(nemesis); // deletes the namespaces
    if passed && !args.keep_data {
        for id in &ids {
            let _ = std::fs::remove_dir_all(dir.join(format!("node-{id}")));
        }
    }
    Ok(passed)
}

fn lock(nodes: &Mutex<Nodes>) -> std::sync::MutexGuard<'_, Nodes> {
    nodes.lock().unwrap_or_else(|p| p.into_inner())
}

/// After healing: every node applies up to the leader's commit index, and a stale read of
/// every key on every node equals a linearizable read (recorded in the history).
async fn converge(nemesis: &mut Nemesis) -> Check {
    let name = "convergence";
    let fail = |detail: String| Check {
        name,
        passed: false,
        detail,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let ids = nemesis.nodes().ids();
    let leader_url = loop {
        let statuses = nemesis.statuses().await;
        let leader = statuses
            .iter()
            .filter(|s| s.role == "leader")
            .max_by_key(|s| s.term);
        if let Some(leader) = leader {
            let caught_up = statuses.len() == ids.len()
                && statuses.iter().all(|s| {
                    s.commit_index == leader.commit_index && s.applied_index == leader.commit_index
                });
            if caught_up {
                match nemesis.nodes().node(leader.id) {
                    Ok(n) => break n.url.clone(),
                    Err(e) => return fail(format!("{e:#}")),
                }
            }
        }
        if Instant::now() > deadline {
            return fail(format!(
                "the nodes did not catch up with the leader within 60 s: {statuses:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let urls: Vec<(u64, String)> = nemesis
        .nodes()
        .nodes
        .iter()
        .map(|n| (n.id, n.url.clone()))
        .collect();
    let mut problems = Vec::new();
    let keys = nemesis.workload.all_keys();
    for key in &keys {
        let mut last = String::new();
        let mut agreed = false;
        for _attempt in 0..5 {
            let lin = linearizable_read(nemesis, &leader_url, key).await;
            let mut stale = Vec::new();
            for (id, url) in &urls {
                stale.push((*id, stale_read(&nemesis.http, url, key).await));
            }
            let lin_again = linearizable_read(nemesis, &leader_url, key).await;
            match (&lin, &lin_again) {
                (Some(a), Some(b)) if a == b => {
                    if stale.iter().all(|(_, s)| s.as_ref().ok() == Some(a)) {
                        agreed = true;
                        break;
                    }
                    last = format!("key {key}: linearizable read {a:?}, stale reads {stale:?}");
                }
                _ => last = format!("key {key}: linearizable reads {lin:?} then {lin_again:?}"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if !agreed {
            problems.push(last);
        }
    }
    Check {
        name,
        passed: problems.is_empty(),
        detail: if problems.is_empty() {
            format!("{} keys equal on all {} nodes", keys.len(), urls.len())
        } else {
            problems.join("\n")
        },
    }
}

/// The append check: reads every append key's final value linearizably (through any node
/// that answers; not part of the register history) and checks the appends against them.
async fn check_appends(nemesis: &Nemesis, appends: &[appends::AppendRecord]) -> Check {
    let name = "appends exactly once";
    let urls: Vec<String> = nemesis
        .nodes()
        .nodes
        .iter()
        .map(|n| n.url.clone())
        .collect();
    let mut finals = BTreeMap::new();
    let mut unread = Vec::new();
    for key in workload::append_keys(nemesis.workload.append_keys) {
        let mut value = None;
        'tries: for _ in 0..10 {
            for url in &urls {
                match workload::read(&nemesis.http, url, &key, "linearizable").await {
                    Ok(v) => {
                        value = Some(v);
                        break 'tries;
                    }
                    Err(e) => unread.push(format!("{key} through {url}: {e}")),
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if let Some(v) = value {
            finals.insert(key, v);
        }
    }
    match appends::check(appends, &finals) {
        Ok(summary) => Check {
            name,
            passed: true,
            detail: summary,
        },
        Err(problems) => Check {
            name,
            passed: false,
            detail: format!(
                "{}
(failed reads: {})
final values: {finals:?}",
                problems.join(
                    "
"
                ),
                unread.join("; ")
            ),
        },
    }
}

/// Unknown outcomes among all operations, the writes and the appends, as counts and per
/// 10 000 operations.
struct Unknowns {
    /// (label, unknown, total)
    rows: Vec<(&'static str, usize, usize)>,
}

fn unknown_outcomes(records: &[workload::Record], appends: &[appends::AppendRecord]) -> Unknowns {
    let unknown_append = appends
        .iter()
        .filter(|a| a.outcome == appends::AppendOutcome::Unknown)
        .count();
    let is_unknown = |r: &workload::Record| matches!(r.op.outcome, Outcome::Unknown);
    let writes: Vec<&workload::Record> = records
        .iter()
        .filter(|r| !matches!(r.op.op, KvOp::Get { .. }))
        .collect();
    let unknown_kv = records.iter().filter(|r| is_unknown(r)).count();
    Unknowns {
        rows: vec![
            (
                "all operations",
                unknown_kv + unknown_append,
                records.len() + appends.len(),
            ),
            (
                "writes",
                writes.iter().filter(|r| is_unknown(r)).count() + unknown_append,
                writes.len() + appends.len(),
            ),
            ("appends", unknown_append, appends.len()),
        ],
    }
}

impl std::fmt::Display for Unknowns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "unknown outcomes:")?;
        for (label, unknown, total) in &self.rows {
            let rate = if *total == 0 {
                0.0
            } else {
                *unknown as f64 * 10_000.0 / *total as f64
            };
            writeln!(
                f,
                "  {label:<15} {unknown:>6} of {total:>7} ({rate:.1} per 10 000)"
            )?;
        }
        Ok(())
    }
}

/// A linearizable read through `url`, recorded in the history.
async fn linearizable_read(nemesis: &Nemesis, url: &str, key: &str) -> Option<Option<String>> {
    let node = nemesis
        .nodes()
        .nodes
        .iter()
        .find(|n| n.url == url)
        .map_or(0, |n| n.id);
    match run_op(
        &nemesis.workload.recorder,
        &nemesis.http,
        2000,
        node,
        url,
        KvOp::Get {
            key: key.to_string(),
        },
    )
    .await
    {
        Outcome::Ok(KvOutput::Value(v)) => Some(v),
        _ => None,
    }
}

/// A panic anywhere in a node (even in a task that did not take the process down) fails.
fn scan_logs(nodes: &Nodes, ids: &[u64]) -> Result<Check> {
    let mut found = Vec::new();
    for &id in ids {
        let path = nodes.log_path(id)?;
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        if let Some(i) = lines.iter().position(|l| l.contains("panicked at")) {
            let from = i.saturating_sub(10);
            let to = (i + 20).min(lines.len());
            found.push(format!(
                "node {id} ({}):\n{}",
                path.display(),
                lines[from..to].join("\n")
            ));
        }
    }
    Ok(Check {
        name: "no panics in node logs",
        passed: found.is_empty(),
        detail: found.join("\n\n"),
    })
}

/// Checks every key on its own (the register model is P-compositional), in parallel.
fn check_linearizability(ops: &[Operation], budget: u64) -> Check {
    let mut by_key: BTreeMap<String, Vec<Operation>> = BTreeMap::new();
    for op in ops {
        by_key
            .entry(op.op.key().to_string())
            .or_default()
            .push(op.clone());
    }
    let started = Instant::now();
    let keys: Vec<(String, Vec<Operation>)> = by_key.into_iter().collect();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut verdicts: Vec<(String, Verdict)> = Vec::new();
    for chunk in keys.chunks(workers) {
        let results: Vec<(String, Verdict)> = std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|(key, key_ops)| {
                    s.spawn(move || (key.clone(), check_with_budget(key_ops, budget)))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        (
                            "?".into(),
                            Verdict::Inconclusive {
                                key: "?".into(),
                                reason: "the checker panicked".into(),
                            },
                        )
                    })
                })
                .collect()
        });
        verdicts.extend(results);
    }
    let bad: Vec<&(String, Verdict)> = verdicts
        .iter()
        .filter(|(_, v)| !v.is_linearizable())
        .collect();
    let mut detail = format!(
        "{} operations on {} keys checked in {:.1} s",
        ops.len(),
        verdicts.len(),
        started.elapsed().as_secs_f64()
    );
    for (key, verdict) in &bad {
        let _ = write!(
            detail,
            "\n{verdict}\noperations on key {key:?} in invoke order:\n{}",
            describe_key(ops, key)
        );
    }
    Check {
        name: "linearizability",
        passed: bad.is_empty(),
        detail,
    }
}

struct ReportInput<'a> {
    seed: u64,
    replay: &'a str,
    args: &'a Args,
    duration: Duration,
    elapsed: Duration,
    records: &'a [workload::Record],
    appends: &'a [appends::AppendRecord],
    unknowns: &'a Unknowns,
    events: &'a [nemesis::Event],
    checks: &'a [Check],
}

fn op_kind(op: &KvOp) -> &'static str {
    match op {
        KvOp::Put { .. } => "put",
        KvOp::Get { .. } => "get",
        KvOp::Cas { .. } => "cas",
        KvOp::Delete { .. } => "delete",
    }
}

fn render_report(r: &ReportInput<'_>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "raft-kv-jepsen report");
    let _ = writeln!(out, "seed: {}", r.seed);
    let _ = writeln!(out, "replay: {}", r.replay);
    let _ = writeln!(
        out,
        "transport {:?}, {} nodes, {} clients, {} keys per epoch, load {:?}, run took {:.1} s",
        r.args.transport,
        r.args.nodes,
        r.args.clients,
        r.args.keys,
        r.duration,
        r.elapsed.as_secs_f64()
    );
    let _ = writeln!(out, "{}", security(r.args.transport));
    let mut counts: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for rec in r.records {
        let outcome = match rec.op.outcome {
            Outcome::Ok(_) => "ok",
            Outcome::Failed => "failed",
            Outcome::Unknown => "unknown",
        };
        *counts.entry((op_kind(&rec.op.op), outcome)).or_default() += 1;
        *counts.entry(("all", outcome)).or_default() += 1;
    }
    for a in r.appends {
        let outcome = match a.outcome {
            appends::AppendOutcome::Ok(_) => "ok",
            appends::AppendOutcome::Failed => "failed",
            appends::AppendOutcome::Unknown => "unknown",
        };
        *counts.entry(("append", outcome)).or_default() += 1;
        *counts.entry(("all", outcome)).or_default() += 1;
    }
    let _ = writeln!(
        out,
        "\noperations: {} ({})",
        r.records.len() + r.appends.len(),
        if r.args.no_sessions {
            "without client sessions"
        } else {
            "writes in client sessions, unknown outcomes retried until --op-timeout"
        }
    );
    for kind in ["all", "get", "put", "cas", "delete", "append"] {
        let get = |o: &str| counts.get(&(kind, o)).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "  {kind:<7} ok {:>6}  failed {:>6}  unknown {:>6}",
            get("ok"),
            get("failed"),
            get("unknown")
        );
    }
    let _ = write!(out, "\n{}", r.unknowns);
    let _ = writeln!(out, "\nfaults: {}", r.events.len());
    for e in r.events {
        let _ = writeln!(
            out,
            "  [{:8.2}s - {:8.2}s] {:<15} {}",
            e.start, e.end, e.fault, e.detail
        );
    }
    let _ = writeln!(out, "\nverdicts:");
    out.push_str(&summary(r.checks));
    for c in r.checks {
        if !c.detail.is_empty() {
            let _ = writeln!(out, "\n--- {} ---\n{}", c.name, c.detail);
        }
    }
    out
}

/// The summary says the HTTP API ran with tokens: check that a request without one is
/// refused (401), so a node that silently ignored its token files fails the run.
async fn check_tokens_enforced(url: &str) -> Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let response = http
        .get(format!("{url}/status"))
        .send()
        .await
        .with_context(|| format!("asking {url}/status without a token"))?;
    if response.status() != reqwest::StatusCode::UNAUTHORIZED {
        bail!(
            "{url}/status without a bearer token answered {}, not 401: the nodes do not \
             enforce their token files",
            response.status()
        );
    }
    Ok(())
}

/// How the nodes were secured (every run: see [`nodes`]).
fn security(transport: Transport) -> String {
    format!(
        "security: nodes ran with mutual TLS on the raft transport ({}; certificates bound to \
         node ids and cluster addresses) and bearer tokens on the HTTP API (client token; \
         admin token for /cluster/*, token files 0600)",
        format!("{transport:?}").to_lowercase()
    )
}

fn summary(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let _ = writeln!(
            out,
            "  {} {}{}",
            if c.passed { "PASS" } else { "FAIL" },
            c.name,
            if c.passed && !c.detail.is_empty() && !c.detail.contains('\n') {
                format!(" ({})", c.detail)
            } else {
                String::new()
            }
        );
    }
    out
}

fn write_history(
    path: &Path,
    records: &[workload::Record],
    appends: &[appends::AppendRecord],
) -> Result<()> {
    let mut out = String::from("# t_invoke t_complete node client op => outcome [error]\n");
    for r in records {
        let complete = r
            .t_complete
            .map_or_else(|| "-".to_string(), |t| format!("{t:.3}"));
        let _ = writeln!(
            out,
            "{:.3} {} n{} c{} {} => {}{}",
            r.t_invoke,
            complete,
            r.node,
            r.op.client,
            r.op.op,
            r.op.outcome,
            r.error
                .as_ref()
                .map_or_else(String::new, |e| format!(" [{}]", e.replace('\n', " ")))
        );
    }
    let _ = writeln!(
        out,
        "\n# appends: t_invoke t_complete node client key token attempts => outcome [error]"
    );
    for a in appends {
        let _ = writeln!(
            out,
            "{:.3} {:.3} n{} c{} {} {} x{} => {:?}{}",
            a.t_invoke,
            a.t_complete,
            a.node,
            a.client,
            a.key,
            a.token,
            a.attempts,
            a.outcome,
            a.error
                .as_ref()
                .map_or_else(String::new, |e| format!(" [{}]", e.replace('\n', " ")))
        );
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_fault_lists_parse() -> Result<()> {
        assert_eq!(parse_duration("90")?, Duration::from_secs(90));
        assert_eq!(parse_duration("2m")?, Duration::from_secs(120));
        assert_eq!(parse_duration("500ms")?, Duration::from_millis(500));
        assert!(parse_duration("5x").is_err());
        assert_eq!(parse_faults("all")?.len(), Fault::ALL.len());
        assert_eq!(
            parse_faults("kill,partition-one")?,
            vec![Fault::Kill, Fault::PartitionOne]
        );
        assert!(parse_faults("kill,explode").is_err());
        assert_eq!(parse_faults("disk-loss")?, vec![Fault::DiskLoss]);
        Ok(())
    }
}
