//! The nemesis: faults on a seeded schedule, one at a time, each healed before the next.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use raft_core::testing::linearizability::{KvOp, Outcome};

use crate::net::Network;
use crate::nodes::{status, Nodes, Status};
use crate::workload::{authorized, run_op, Workload};

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL a random node, restart it after a while.
    Kill,
    /// SIGKILL the leader, restart it after a while.
    KillLeader,
    /// SIGSTOP a node (the leader half of the time), SIGCONT it after a while.
    Pause,
    /// SIGKILL every node, restart them all, then read every key.
    RestartAll,
    /// Cut one node (the leader half of the time) off the others.
    PartitionOne,
    /// Split the nodes into a minority and a majority.
    PartitionSplit,
    /// Remove a node from the cluster under load, wipe it, add it back under the same id.
    Churn,
    /// SIGKILL a voter (the leader half of the time), delete its data dir, and start it
    /// again with the same id and `--join` to the others: a replaced disk. The cluster must
    /// re-admit it as a voter.
    DiskLoss,
}

impl Fault {
    /// Every fault, in `--faults` spelling order.
    pub const ALL: [Fault; 8] = [
        Fault::Kill,
        Fault::KillLeader,
        Fault::Pause,
        Fault::RestartAll,
        Fault::PartitionOne,
        Fault::PartitionSplit,
        Fault::Churn,
        Fault::DiskLoss,
    ];

    /// The `--faults` spelling.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::KillLeader => "kill-leader",
            Fault::Pause => "pause",
            Fault::RestartAll => "restart-all",
            Fault::PartitionOne => "partition-one",
            Fault::PartitionSplit => "partition-split",
            Fault::Churn => "churn",
            Fault::DiskLoss => "disk-loss",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Fault::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
                format!("unknown fault {s:?}; known: {}", names.join(","))
            })
    }
}

/// One fault as it happened.
#[derive(Debug, Clone)]
pub struct Event {
    /// Seconds since the start, when it began.
    pub start: f64,
    /// Seconds since the start, when it was healed.
    pub end: f64,
    /// Which fault.
    pub fault: Fault,
    /// What exactly was done.
    pub detail: String,
}

/// Timing of the schedule.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Quiet time between faults, min and max.
    pub gap: (Duration, Duration),
    /// How long a fault lasts, min and max.
    pub hold: (Duration, Duration),
}

/// Everything the nemesis acts on.
pub struct Nemesis {
    /// The node processes (shared with the exit monitor).
    pub nodes: Arc<Mutex<Nodes>>,
    /// The network namespaces.
    pub net: Network,
    /// Status and admin requests (sends the clients' bearer token; admin requests replace it
    /// with `admin_token`).
    pub http: reqwest::Client,
    /// The admin bearer token, for `/cluster/*`.
    admin_token: String,
    /// The clients' shared state (keys, history).
    pub workload: Arc<Workload>,
    /// What happened.
    pub events: Vec<Event>,
    /// Liveness problems: the cluster did not recover in time.
    pub stuck: Vec<String>,
    /// The start of the run.
    pub started: Instant,
    rng: StdRng,
    timing: Timing,
}

/// The client id of the nemesis' own recorded reads.
const NEMESIS_CLIENT: u64 = 1000;

impl Nemesis {
    /// A nemesis drawing from `rng`.
    pub fn new(
        nodes: Arc<Mutex<Nodes>>,
        net: Network,
        workload: Arc<Workload>,
        started: Instant,
        rng: StdRng,
        timing: Timing,
    ) -> Result<Nemesis> {
        let tokens = nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .tokens
            .clone();
        Ok(Nemesis {
            nodes,
            net,
            http: authorized(&tokens.client)?
                .timeout(Duration::from_secs(10))
                .build()?,
            admin_token: tokens.admin,
            workload,
            events: Vec::new(),
            stuck: Vec::new(),
            started,
            rng,
            timing,
        })
    }

    /// The node processes.
    pub fn nodes(&self) -> MutexGuard<'_, Nodes> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn draw(&mut self, range: (Duration, Duration)) -> Duration {
        if range.1 <= range.0 {
            return range.0;
        }
        self.rng.gen_range(range.0..range.1)
    }

    /// (id, url) of nodes that run and are not paused.
    fn live(&self) -> Vec<(u64, String)> {
        self.nodes()
            .nodes
            .iter()
            .filter(|n| n.is_up() && !n.paused)
            .map(|n| (n.id, n.url.clone()))
            .collect()
    }

    /// The statuses of the live nodes.
    pub async fn statuses(&self) -> Vec<Status> {
        let mut out = Vec::new();
        for (_, url) in self.live() {
            if let Some(s) = status(&self.http, &url).await {
                out.push(s);
            }
        }
        out
    }

    /// The leader with the highest term among live nodes, waiting up to `timeout`.
    pub async fn leader(&self, timeout: Duration) -> Option<Status> {
        let deadline = Instant::now() + timeout;
        loop {
            let leader = self
                .statuses()
                .await
                .into_iter()
                .filter(|s| s.role == "leader")
                .max_by_key(|s| s.term);
            if leader.is_some() {
                return leader;
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until a leader has exactly `voters` and no learners.
    pub async fn wait_voters(&self, voters: &[u64], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            for s in self.statuses().await {
                let mut got = s.voters.clone();
                got.sort_unstable();
                if s.role == "leader" && got == voters && s.learners.is_empty() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "no leader with voters {voters:?} within {timeout:?}; statuses: {:?}",
                    self.statuses().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reads every key the clients used, linearizably and recorded in the history, so the
    /// checker verifies that acknowledged writes are still there.
    pub async fn read_all_keys(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for key in self.workload.all_keys() {
            loop {
                let live = self.live();
                let Some((node, url)) = live.choose(&mut self.rng).cloned() else {
                    bail!("no live node to read {key} from");
                };
                let outcome = run_op(
                    &self.workload.recorder,
                    &self.http,
                    NEMESIS_CLIENT,
                    node,
                    &url,
                    KvOp::Get { key: key.clone() },
                )
                .await;
                if matches!(outcome, Outcome::Ok(_)) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("could not read {key} within {timeout:?}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Runs faults drawn from `faults` until `until` (seconds since the start).
    pub async fn run(&mut self, faults: &[Fault], until: f64) -> Result<()> {
        loop {
            let gap = self.draw(self.timing.gap);
            if self.now() + gap.as_secs_f64() >= until {
                break;
            }
            tokio::time::sleep(gap).await;
            let Some(&fault) = faults.choose(&mut self.rng) else {
                // No faults selected: a plain load run.
                tokio::time::sleep(Duration::from_secs_f64((until - self.now()).max(0.0))).await;
                break;
            };
            let start = self.now();
            println!("[{start:7.2}s] nemesis: {fault}");
            let detail = self.inject(fault).await?;
            let end = self.now();
            println!("[{end:7.2}s] nemesis: {fault} healed: {detail}");
            self.events.push(Event {
                start,
                end,
                fault,
                detail,
            });
            self.recover(&format!("after {fault}")).await?;
        }
        Ok(())
    }

    /// Heals everything: network, paused and dead nodes; then waits for a leader with every
    /// node as a voter.
    pub async fn recover(&mut self, when: &str) -> Result<()> {
        self.net.heal()?;
        let down: Vec<u64> = {
            let mut nodes = self.nodes();
            for id in nodes.ids() {
                if nodes.node(id)?.paused {
                    nodes.resume(id)?;
                }
            }
            nodes
                .nodes
                .iter()
                .filter(|n| !n.is_up())
                .map(|n| n.id)
                .collect()
        };
        for id in down {
            // Only a crash leaves a node down here: it was reported; restart it so that
            // the run goes on. With `--join`, because a node that crashed after losing its
            // disk has no state, and without it would bootstrap a cluster of its own; a node
            // with state ignores it.
            let at = self.now();
            println!("[{at:7.2}s] restarting node {id}, which is down {when}");
            let join = self.join_addrs(id);
            self.nodes().start(id, &join)?;
        }
        let ids = self.nodes().ids();
        if let Err(e) = self.wait_voters(&ids, Duration::from_secs(60)).await {
            self.stuck.push(format!("{when}: {e:#}"));
        }
        Ok(())
    }

    async fn pick(&mut self, prefer_leader: bool) -> Option<u64> {
        if prefer_leader {
            if let Some(s) = self.leader(Duration::from_secs(10)).await {
                return Some(s.id);
            }
        }
        let live: Vec<u64> = self.live().into_iter().map(|(id, _)| id).collect();
        live.choose(&mut self.rng).copied()
    }

    async fn hold(&mut self) {
        let hold = self.draw(self.timing.hold);
        tokio::time::sleep(hold).await;
    }

    /// Injects one fault and heals it; returns what was done.
    async fn inject(&mut self, fault: Fault) -> Result<String> {
        match fault {
            Fault::Kill | Fault::KillLeader => {
                let Some(id) = self.pick(fault == Fault::KillLeader).await else {
                    return Ok("no live node".into());
                };
                self.nodes().kill(id)?;
                let t = self.now();
                self.hold().await;
                self.nodes().start(id, &[])?;
                Ok(format!("SIGKILL node {id} at {t:.2}s, restarted"))
            }
            Fault::Pause => {
                let leader = self.rng.gen_bool(0.5);
                let Some(id) = self.pick(leader).await else {
                    return Ok("no live node".into());
                };
                self.nodes().pause(id)?;
                self.hold().await;
                self.nodes().resume(id)?;
                Ok(format!(
                    "SIGSTOP node {id}{}, SIGCONT",
                    if leader { " (leader)" } else { "" }
                ))
            }
            Fault::RestartAll => {
                let ids = {
                    let mut nodes = self.nodes();
                    let ids = nodes.ids();
                    for &id in &ids {
                        nodes.kill(id)?;
                    }
                    ids
                };
                let down = self.rng.gen_range(0..2000);
                tokio::time::sleep(Duration::from_millis(down)).await;
                for &id in &ids {
                    self.nodes().start(id, &[])?;
                }
                let leader = self.leader(Duration::from_secs(30)).await;
                let read = match leader {
                    None => "no leader within 30 s".to_string(),
                    Some(_) => match self.read_all_keys(Duration::from_secs(30)).await {
                        Ok(()) => "every key read back".to_string(),
                        Err(e) => format!("{e:#}"),
                    },
                };
                if leader.is_none() {
                    self.stuck.push(format!("restart-all: {read}"));
                }
                Ok(format!(
                    "SIGKILL all of {ids:?}, down {down} ms, restarted; {read}"
                ))
            }
            Fault::PartitionOne | Fault::PartitionSplit => {
                let ids = self.nodes().ids();
                let leader = self.rng.gen_bool(0.5);
                let size = if fault == Fault::PartitionOne {
                    1
                } else {
                    ((ids.len() - 1) / 2).max(1)
                };
                let mut minority: Vec<u64> = Vec::new();
                if leader {
                    if let Some(s) = self.leader(Duration::from_secs(5)).await {
                        minority.push(s.id);
                    }
                }
                let mut rest: Vec<u64> = ids
                    .iter()
                    .copied()
                    .filter(|id| !minority.contains(id))
                    .collect();
                rest.shuffle(&mut self.rng);
                minority.extend(rest.into_iter().take(size - minority.len()));
                minority.sort_unstable();
                self.net.partition(&minority)?;
                self.hold().await;
                self.net.heal()?;
                let majority: Vec<u64> = ids
                    .iter()
                    .copied()
                    .filter(|id| !minority.contains(id))
                    .collect();
                Ok(format!(
                    "partition {minority:?}{} | {majority:?}, healed",
                    if leader { " (with the leader)" } else { "" }
                ))
            }
            Fault::Churn => self.churn().await,
            Fault::DiskLoss => self.disk_loss().await,
        }
    }

    /// The raft addresses of every node but `id`: what a restarted node joins through.
    fn join_addrs(&self, id: u64) -> Vec<String> {
        self.nodes()
            .nodes
            .iter()
            .filter(|n| n.id != id)
            .map(|n| n.raft.clone())
            .collect()
    }

    /// Waits until node `id` itself, not only the leader, lists every node as a voter and no
    /// learners: until the leader re-admitted it, a node that lost its disk has no
    /// configuration, while the leader may still list its old incarnation. Returns its
    /// applied index against the leader's commit index.
    async fn wait_readmitted(&self, id: u64, timeout: Duration) -> Result<String> {
        let ids = self.nodes().ids();
        let url = self.nodes().node(id)?.url.clone();
        let full = |s: &Status| {
            let mut voters = s.voters.clone();
            voters.sort_unstable();
            voters == ids && s.learners.is_empty()
        };
        let deadline = Instant::now() + timeout;
        loop {
            let own = status(&self.http, &url).await;
            let leader = self.leader(Duration::ZERO).await;
            if let (Some(own), Some(leader)) = (&own, &leader) {
                if full(own) && full(leader) {
                    return Ok(format!(
                        "applied {}, leader {} commit {}",
                        own.applied_index, leader.id, leader.commit_index
                    ));
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "node {id} is not a voter in its own and the leader's view within \
                     {timeout:?}: its status {own:?}, leader {leader:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills a voter, deletes its data dir, and starts it again with the same id and address
    /// and `--join` to the others, as an operator does after replacing a failed disk.
    async fn disk_loss(&mut self) -> Result<String> {
        let leader = self.rng.gen_bool(0.5);
        let Some(target) = self.pick(leader).await else {
            return Ok("no live node".into());
        };
        {
            let mut nodes = self.nodes();
            nodes.kill(target)?;
            nodes.wipe(target)?;
        }
        let t = self.now();
        self.hold().await;
        let join = self.join_addrs(target);
        self.nodes().start(target, &join)?;
        let started = Instant::now();
        let readmitted = match self.wait_readmitted(target, Duration::from_secs(60)).await {
            Ok(applied) => format!(
                "a voter again after {:.1} s ({applied})",
                started.elapsed().as_secs_f64()
            ),
            Err(e) => {
                self.stuck.push(format!(
                    "disk-loss: node {target} was not re-admitted: {e:#}"
                ));
                "not re-admitted".to_string()
            }
        };
        Ok(format!(
            "SIGKILL node {target}{} at {t:.2}s, wiped its data dir, restarted with --join; {readmitted}",
            if leader { " (leader)" } else { "" }
        ))
    }

    /// Removes a node, wipes it, and adds it back under the same id.
    async fn churn(&mut self) -> Result<String> {
        let ids = self.nodes().ids();
        let Some(&target) = ids.choose(&mut self.rng) else {
            return Ok("no nodes".into());
        };
        self.nodes().nodes.iter_mut().for_each(|n| {
            if n.id == target {
                n.may_exit = true;
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut removed = None;
        while removed.is_none() {
            let others: Vec<(u64, String)> = self
                .live()
                .into_iter()
                .filter(|(id, _)| *id != target)
                .collect();
            let Some((via, url)) = others.choose(&mut self.rng).cloned() else {
                break;
            };
            match self
                .http
                .post(format!("{url}/cluster/remove/{target}"))
                .bearer_auth(&self.admin_token)
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => removed = Some(via),
                Ok(r) if Instant::now() > deadline => {
                    let text = r.text().await.unwrap_or_default();
                    self.stuck
                        .push(format!("churn: removing node {target} failed: {text}"));
                    break;
                }
                Err(e) if Instant::now() > deadline => {
                    self.stuck
                        .push(format!("churn: removing node {target} failed: {e}"));
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        let Some(via) = removed else {
            self.nodes()
                .nodes
                .iter_mut()
                .for_each(|n| n.may_exit = false);
            return Ok(format!("could not remove node {target}"));
        };
        let remaining: Vec<u64> = ids.iter().copied().filter(|&id| id != target).collect();
        if let Err(e) = self.wait_voters(&remaining, Duration::from_secs(30)).await {
            self.stuck
                .push(format!("churn: after removing {target}: {e:#}"));
        }
        // A removed node stops by itself once it learns of its removal; give it a moment
        // (the monitor accepts a clean exit), then make sure it is gone.
        let deadline = Instant::now() + Duration::from_secs(3);
        let exited = loop {
            if !self.nodes().node(target)?.is_up() {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        self.hold().await;
        let join: Vec<String> = {
            let mut nodes = self.nodes();
            nodes.kill(target)?;
            nodes.wipe(target)?;
            remaining
                .iter()
                .filter_map(|&id| nodes.node(id).ok().map(|n| n.raft.clone()))
                .collect()
        };
        self.nodes().start(target, &join)?;
        if let Err(e) = self.wait_voters(&ids, Duration::from_secs(60)).await {
            self.stuck
                .push(format!("churn: node {target} did not rejoin: {e:#}"));
        }
        Ok(format!(
            "removed node {target} via node {via} ({}), wiped, rejoined",
            if exited {
                "it exited by itself"
            } else {
                "killed it"
            }
        ))
    }
}
