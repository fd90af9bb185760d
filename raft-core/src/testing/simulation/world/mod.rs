//! The simulated world: one event queue on simulated time, and the nodes it drives, with
//! their disks. The network (network.rs), the clients (clients.rs) and the checks
//! (checks.rs) are the world's other parts.

mod checks;
mod clients;
mod network;

use clients::{Client, JoinRequest};

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use raft::prelude::{Message, MessageType};
use raft::SnapshotStatus;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::oneshot;

use super::node::{sim_config, NodeInput, SimNode};
use super::{Report, SimConfig, SimFailure};
use crate::error::{Error, StorageError};
use crate::log_storage::LogStorage;
use crate::mem_log_storage::MemLogStorage;
use crate::node::core::Output;
use crate::node::inbound::{check_wire, Route};
use crate::node::messages::{ApplyMsg, DriverMsg, MembershipChange};
use crate::node::op::Op;
use crate::node::open::first_snapshot;
use crate::records::Member;
use crate::status::ReadConsistency;
use crate::testing::kv::{decode_answer, encode_op, KvStore};
use crate::testing::linearizability::{check, History, KvOp, OpId, Verdict};
use crate::wire::MembershipAction;
use crate::Store;

/// Simulated time since the run started.
type Time = Duration;

const MS: Duration = Duration::from_millis(1);

enum Event {
    Tick {
        node: u64,
        life: u64,
    },
    /// The node's core takes a turn (inputs arrived, or its store applied more).
    Wake {
        node: u64,
        life: u64,
    },
    Deliver {
        from: u64,
        to: u64,
        msg: Box<Message>,
    },
    WriteDone {
        node: u64,
        life: u64,
    },
    SnapshotSaved {
        node: u64,
        life: u64,
    },
    ClientStep(usize),
    Fault,
    Restart {
        node: u64,
    },
    Heal,
    EndFaults,
    EndCalm,
    Join(u64),
    Check,
}

impl Event {
    /// What the trace records of the event.
    fn key(&self) -> (u8, u64) {
        match self {
            Event::Tick { node, .. } => (0, *node),
            Event::Wake { node, .. } => (1, *node),
            Event::Deliver { from, to, .. } => (2, from * 100 + to),
            Event::WriteDone { node, .. } => (3, *node),
            Event::SnapshotSaved { node, .. } => (4, *node),
            Event::ClientStep(c) => (5, *c as u64),
            Event::Fault => (6, 0),
            Event::Restart { node, .. } => (7, *node),
            Event::Heal => (8, 0),
            Event::EndFaults => (9, 0),
            Event::EndCalm => (10, 0),
            Event::Join(node) => (11, *node),
            Event::Check => (12, 0),
        }
    }
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum Phase {
    Faults,
    Calm,
    /// Clients read every key until each read succeeds once.
    FinalReads,
    Done,
}

pub(super) struct World {
    seed: u64,
    config: SimConfig,
    rng: StdRng,
    base: Instant,
    now: Time,
    queue: BTreeMap<(Time, u64), Event>,
    seq: u64,
    nodes: Vec<SimNode>,
    /// Pairs of nodes that cannot reach each other.
    cut: BTreeSet<(u64, u64)>,
    clients: Vec<Client>,
    history: History,
    /// Term and data hash of the entry applied at each index, by whichever node applied it
    /// first.
    applied_entries: BTreeMap<u64, (u64, u64)>,
    joins: Vec<JoinRequest>,
    phase: Phase,
    report: Report,
    trace: DefaultHasher,
    failure: Option<String>,
}

fn addr(id: u64) -> String {
    format!("node-{id}")
}

fn hash_of(data: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    data.hash(&mut h);
    h.finish()
}

impl World {
    pub(super) fn new(seed: u64, config: SimConfig) -> Self {
        let nodes = (1..=config.nodes)
            .map(|id| SimNode::new(id, Arc::new(MemLogStorage::with_deferred_writes())))
            .collect();
        let clients = (0..config.clients)
            .map(|_| Client {
                pending: None,
                hint: None,
                written: 0,
                to_read: Vec::new(),
            })
            .collect();
        World {
            seed,
            rng: StdRng::seed_from_u64(seed),
            config,
            base: Instant::now(),
            now: Duration::ZERO,
            queue: BTreeMap::new(),
            seq: 0,
            nodes,
            cut: BTreeSet::new(),
            clients,
            history: History::new(),
            applied_entries: BTreeMap::new(),
            joins: Vec::new(),
            phase: Phase::Faults,
            report: Report {
                seed,
                ..Report::default()
            },
            trace: DefaultHasher::new(),
            failure: None,
        }
    }

    fn instant(&self) -> Instant {
        self.base + self.now
    }

    fn at(&mut self, after: Duration, event: Event) {
        self.seq += 1;
        self.queue.insert((self.now + after, self.seq), event);
    }

    fn between(&mut self, low_ms: u64, high_ms: u64) -> Duration {
        Duration::from_micros(self.rng.gen_range(low_ms * 1000..=high_ms * 1000))
    }

    fn node(&mut self, id: u64) -> &mut SimNode {
        &mut self.nodes[(id - 1) as usize]
    }

    fn life(&self, id: u64) -> u64 {
        self.nodes[(id - 1) as usize].incarnation
    }

    fn running(&self, id: u64) -> bool {
        self.nodes[(id - 1) as usize].running.is_some()
    }

    pub(super) fn run(mut self) -> Result<Report, SimFailure> {
        self.bootstrap();
        while let Some(((time, _), event)) = self.queue.pop_first() {
            self.now = time;
            self.report.events += 1;
            (time, event.key()).hash(&mut self.trace);
            self.handle(event);
            self.poll_clients();
            if self.failure.is_some() || self.phase == Phase::Done {
                break;
            }
        }
        self.report.trace = self.trace.finish();
        if self.failure.is_none() && self.phase != Phase::Done {
            self.fail("the event queue ran dry before the run ended".into());
        }
        if self.failure.is_none() {
            self.final_checks();
        }
        let ops = self.history.operations();
        self.report.operations = ops.len();
        self.report.acknowledged = ops
            .iter()
            .filter(|o| matches!(o.outcome, crate::testing::linearizability::Outcome::Ok(_)))
            .count();
        self.report.unknown = ops
            .iter()
            .filter(|o| o.outcome == crate::testing::linearizability::Outcome::Unknown)
            .count();
        match self.failure {
            None => Ok(self.report),
            Some(what) => Err(SimFailure {
                seed: self.seed,
                what,
                report: Box::new(self.report),
            }),
        }
    }

    /// Every node writes the same first snapshot, as founding members do, and starts.
    fn bootstrap(&mut self) {
        let members: Vec<Member> = (1..=self.config.nodes)
            .map(|id| Member {
                id,
                addr: addr(id),
                promote: false,
            })
            .collect();
        let user_data = KvStore::new()
            .snapshot()
            .now_or_never()
            .and_then(Result::ok)
            .unwrap_or_default();
        let cluster_id = self.rng.gen::<u64>() | 1;
        let snapshot = first_snapshot(cluster_id, members, user_data);
        for id in 1..=self.config.nodes {
            if let Err(e) = self.node(id).disk.install_snapshot(&snapshot) {
                self.fail(format!("bootstrapping node {id}: {e}"));
            }
            self.start(id, None);
        }
        for c in 0..self.clients.len() {
            let after = self.between(0, 50);
            self.at(after, Event::ClientStep(c));
        }
        if self.config.faults {
            let after = self.between(200, 800);
            self.at(after, Event::Fault);
        }
        let fault_time = self.config.fault_time;
        self.at(fault_time, Event::EndFaults);
    }

    fn start(&mut self, id: u64, join: Option<(u64, String)>) {
        let now = self.instant();
        let nonce = self.rng.gen();
        let election = sim_config().election_tick;
        let timeout = election + self.rng.gen_range(0..election);
        if let Err(e) = self.node(id).start(now, nonce, timeout, join) {
            self.fail(format!("node {id} did not start: {e}"));
            return;
        }
        let life = self.life(id);
        let phase = self.between(0, 20);
        self.at(phase, Event::Tick { node: id, life });
        self.at(Duration::ZERO, Event::Wake { node: id, life });
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Tick { node, life } => {
                if self.life(node) != life || !self.running(node) {
                    return;
                }
                let tick = sim_config().tick_interval;
                self.at(tick, Event::Tick { node, life });
                // A tick that comes due while the last one still waits (the node is writing)
                // is skipped, as the driver's ticker delays missed ticks: ticks never come
                // faster than the interval, which elections and leases rely on.
                let owed = self.nodes[(node - 1) as usize]
                    .running
                    .as_ref()
                    .is_some_and(|r| r.inbox.iter().any(|i| matches!(i, NodeInput::Tick)));
                if !owed {
                    self.push_input(node, NodeInput::Tick);
                }
            }
            Event::Wake { node, life } => {
                if self.life(node) == life {
                    self.pump(node);
                }
            }
            Event::Deliver { from, to, msg } => self.deliver(from, to, *msg),
            Event::WriteDone { node, life } => self.write_done(node, life),
            Event::SnapshotSaved { node, life } => self.snapshot_saved(node, life),
            Event::ClientStep(c) => self.client_step(c),
            Event::Fault => self.fault(),
            Event::Restart { node } => {
                if self.running(node) {
                    return;
                }
                // A node whose disk holds nothing asks to be re-admitted, as `Raft::join`
                // does on an empty log storage.
                let join = self
                    .node(node)
                    .disk
                    .snapshot()
                    .map(|s| crate::log_storage::snapshot_index(&s) == 0)
                    .unwrap_or(true);
                let through = if join { self.leader() } else { None };
                if join && through.is_none() {
                    // No leader to be re-admitted through yet: try again shortly.
                    self.at(100 * MS, Event::Restart { node });
                    return;
                }
                self.start(node, through.map(|l| (l, addr(l))));
                if join {
                    self.joins.retain(|j| j.node != node);
                    self.joins.push(JoinRequest { node, reply: None });
                    self.at(Duration::ZERO, Event::Join(node));
                }
            }
            Event::Heal => self.cut.clear(),
            Event::EndFaults => {
                self.phase = Phase::Calm;
                self.cut.clear();
                for id in 1..=self.config.nodes {
                    if !self.running(id) {
                        self.at(Duration::ZERO, Event::Restart { node: id });
                    }
                }
                let calm = self.config.calm_time;
                self.at(calm, Event::EndCalm);
            }
            Event::EndCalm => {
                self.phase = Phase::FinalReads;
                let keys: Vec<String> = (0..self.config.keys).map(|k| format!("k{k}")).collect();
                for client in &mut self.clients {
                    client.to_read = keys.clone();
                }
                // Clients with nothing pending start their final reads now.
                for c in 0..self.clients.len() {
                    if self.clients[c].pending.is_none() {
                        self.at(MS, Event::ClientStep(c));
                    }
                }
                // The cluster must recover within this: a liveness check.
                self.at(Duration::from_secs(60), Event::Check);
            }
            Event::Join(node) => self.join_step(node),
            Event::Check => {
                if self.phase == Phase::FinalReads {
                    self.fail("the cluster did not serve every final read within 60 s".into());
                } else {
                    self.phase = Phase::Done;
                }
            }
        }
    }

    /// The node that is leader in the highest term, if any runs.
    fn leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .filter_map(|n| n.running.as_ref().map(|r| (n.id, r)))
            .filter(|(_, r)| r.core.is_leader())
            .max_by_key(|(_, r)| r.core.term())
            .map(|(id, _)| id)
    }

    fn push_input(&mut self, id: u64, input: NodeInput) {
        let life = self.life(id);
        let Some(running) = self.node(id).running.as_mut() else {
            return;
        };
        running.inbox.push_back(input);
        if !running.core.holding_ready() {
            self.at(Duration::ZERO, Event::Wake { node: id, life });
        }
    }

    /// One turn of the node's core: its inputs, then at most one `Ready`, then its outputs.
    fn pump(&mut self, id: u64) {
        let now = self.instant();
        let Some(running) = self.node(id).running.as_mut() else {
            return;
        };
        if running.core.holding_ready() {
            return;
        }
        let mut result = Ok(());
        for input in std::mem::take(&mut running.inbox) {
            result = match input {
                NodeInput::Tick => {
                    running.core.tick(now);
                    running.applier.expire(now);
                    Ok(())
                }
                NodeInput::Msg(msg) => running.core.handle(msg, now),
            };
            if result.is_err() {
                break;
            }
        }
        let result = result.and_then(|()| {
            let applied = running.applied();
            running.core.applied(applied);
            running.core.turn(now)
        });
        if let Err(e) = result {
            self.fail(format!("node {id} failed: {e}"));
            return;
        }
        self.carry_out(id);
    }

    /// Carries out what the node's core asked for.
    fn carry_out(&mut self, id: u64) {
        let now = self.instant();
        let life = self.life(id);
        let Some(applied_before) = self.nodes[(id - 1) as usize]
            .running
            .as_ref()
            .map(|r| r.applied())
        else {
            return;
        };
        loop {
            let Some(running) = self.node(id).running.as_mut() else {
                return;
            };
            let Some(output) = running.core.poll_output() else {
                break;
            };
            match output {
                Output::Send { msg, .. } => self.send(id, msg),
                Output::Write(write) => {
                    let overlapped = !running.writes.is_empty();
                    running.writes.push_back(write);
                    if overlapped {
                        self.report.overlapped_writes += 1;
                    }
                    let latency = self.disk_latency();
                    // One writer: a write completes no sooner than the one before it.
                    let now = self.now;
                    let running = self.node(id).running.as_mut();
                    let after = running.map_or(latency, |r| {
                        let done_at = (now + latency).max(r.writes_done_at);
                        r.writes_done_at = done_at;
                        done_at - now
                    });
                    self.at(after, Event::WriteDone { node: id, life });
                }
                Output::SaveSnapshot(save) => {
                    running.save = Some(save);
                    let latency = self.disk_latency();
                    self.at(latency, Event::SnapshotSaved { node: id, life });
                }
                Output::Apply(msg) => {
                    if let ApplyMsg::Entries(entries) = &msg {
                        for committed in entries {
                            let e = &committed.entry;
                            self.record_applied(id, e.index, e.term, hash_of(&e.data));
                        }
                    }
                    let running = self.node(id).running.as_mut();
                    if let Some(Err(e)) = running.map(|r| r.apply(msg, now)) {
                        self.fail(format!("node {id}'s apply task failed: {e}"));
                        return;
                    }
                }
                Output::RemovePeer(_) | Output::RetainPeers(_) => {}
            }
        }
        let Some(running) = self.nodes[(id - 1) as usize].running.as_ref() else {
            return;
        };
        let applied = running.applied();
        self.report.applied = self.report.applied.max(applied);
        if running.core.stopped() {
            self.fail(format!("node {id} stopped though nobody removed it"));
        } else if applied != applied_before || !running.inbox.is_empty() {
            self.at(Duration::ZERO, Event::Wake { node: id, life });
        }
    }

    fn disk_latency(&mut self) -> Duration {
        if self.rng.gen_bool(0.01) {
            self.between(5, 20)
        } else {
            self.between(0, 1)
        }
    }

    fn write_done(&mut self, id: u64, life: u64) {
        if self.life(id) != life {
            return;
        }
        let now = self.instant();
        let faulty = self.config.faults && self.phase == Phase::Faults && self.rng.gen_bool(0.002);
        let disk = self.node(id).disk.clone();
        let Some(running) = self.node(id).running.as_mut() else {
            return;
        };
        let Some(write) = running.writes.pop_front() else {
            return;
        };
        let result = if faulty {
            Err(StorageError::Io("simulated fsync failure".into()))
        } else {
            write.run(disk.as_ref())
        };
        if let Err(e) = running.core.write_done(result, now) {
            if faulty {
                // The node stops, as it must; it comes back from what its disk holds.
                self.report.fsync_failures += 1;
                let forget = self.config.amnesiac_disks;
                self.node(id).crash(0, forget);
                let after = self.between(50, 500);
                self.at(after, Event::Restart { node: id });
            } else {
                self.fail(format!("node {id} failed after a write: {e}"));
            }
            return;
        }
        self.carry_out(id);
        self.at(Duration::ZERO, Event::Wake { node: id, life });
    }

    fn snapshot_saved(&mut self, id: u64, life: u64) {
        if self.life(id) != life {
            return;
        }
        let disk = self.node(id).disk.clone();
        let Some(running) = self.node(id).running.as_mut() else {
            return;
        };
        let Some(save) = running.save.take() else {
            return;
        };
        let result = save.run(disk.as_ref()).map_err(Error::from);
        self.push_input(id, NodeInput::Msg(DriverMsg::SnapshotSaved(result)));
    }
}
