//! The simulated world: one event queue on simulated time, the nodes, the network between
//! them, the clients, and the checks.

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

use super::node::{NodeInput, SimNode};
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
use crate::testing::cluster::test_config;
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

struct Pending {
    id: OpId,
    op: KvOp,
    reply: oneshot::Receiver<crate::error::Result<Vec<u8>>>,
    deadline: Time,
}

struct Client {
    pending: Option<Pending>,
    /// The leader the last answer named.
    hint: Option<u64>,
    written: u64,
    /// Keys not yet read successfully in the final phase.
    to_read: Vec<String>,
}

/// A re-admission in progress: an empty node asks the leader to take it back.
struct JoinRequest {
    node: u64,
    reply: Option<oneshot::Receiver<crate::error::Result<Vec<u8>>>>,
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
            .map(|id| SimNode::new(id, Arc::new(MemLogStorage::new())))
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

    fn fail(&mut self, what: String) {
        if self.failure.is_some() {
            return;
        }
        let mut nodes = String::new();
        for node in &self.nodes {
            match node.running.as_ref() {
                Some(r) => {
                    let s = r.core.status();
                    nodes.push_str(&format!(
                        "\n  node {}: {:?} term {} leader {:?} commit {} applied {} log {}..={} \
                         snapshot {} voters {:?} learners {:?}",
                        node.id,
                        s.role,
                        s.term,
                        s.leader_id,
                        s.commit_index,
                        r.applied(),
                        s.first_log_index,
                        s.last_log_index,
                        s.snapshot_index,
                        s.voters,
                        s.learners
                    ));
                }
                None => nodes.push_str(&format!("\n  node {}: down", node.id)),
            }
        }
        self.failure = Some(format!("at {:?}: {what}{nodes}", self.now));
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
                report: self.report,
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
        let election = test_config().election_tick;
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
                let tick = test_config().tick_interval;
                self.at(tick, Event::Tick { node, life });
                self.push_input(node, NodeInput::Tick);
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
        if !running.core.writing() {
            self.at(Duration::ZERO, Event::Wake { node: id, life });
        }
    }

    /// One turn of the node's core: its inputs, then at most one `Ready`, then its outputs.
    fn pump(&mut self, id: u64) {
        let now = self.instant();
        let Some(running) = self.node(id).running.as_mut() else {
            return;
        };
        if running.core.writing() {
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
                    running.write = Some(write);
                    let latency = self.disk_latency();
                    self.at(latency, Event::WriteDone { node: id, life });
                }
                Output::SaveSnapshot {
                    snapshot,
                    compact_to,
                } => {
                    running.save = Some((snapshot, compact_to));
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

    fn record_applied(&mut self, node: u64, index: u64, term: u64, data: u64) {
        match self.applied_entries.get(&index) {
            Some(&seen) if seen != (term, data) => self.fail(format!(
                "node {node} applied (term {term}, data {data:x}) at index {index}, \
                 another node applied (term {}, data {:x})",
                seen.0, seen.1
            )),
            Some(_) => {}
            None => {
                self.applied_entries.insert(index, (term, data));
            }
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
        let Some(write) = running.write.take() else {
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
                self.node(id).crash(false, forget);
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
        let Some((snapshot, compact_to)) = running.save.take() else {
            return;
        };
        let index = crate::log_storage::snapshot_index(&snapshot);
        let result = disk
            .save_snapshot(&snapshot)
            .and_then(|()| {
                if compact_to > 0 {
                    disk.compact(compact_to)
                } else {
                    Ok(())
                }
            })
            .map(|()| index)
            .map_err(Error::from);
        self.push_input(id, NodeInput::Msg(DriverMsg::SnapshotSaved(result)));
    }

    fn reachable(&self, from: u64, to: u64) -> bool {
        !self.cut.contains(&(from, to))
    }

    /// Puts a message on the simulated network: delayed, maybe lost or duplicated.
    fn send(&mut self, from: u64, msg: Message) {
        let to = msg.to;
        (from, to, msg.msg_type() as i32, msg.term, msg.index).hash(&mut self.trace);
        let snapshot = msg.msg_type() == MessageType::MsgSnapshot;
        let lossy = self.config.faults && self.phase == Phase::Faults;
        let lost = !self.reachable(from, to)
            || to == 0
            || to > self.config.nodes
            || (lossy && self.rng.gen_bool(0.02));
        if lost {
            if snapshot {
                self.push_input(
                    from,
                    NodeInput::Msg(DriverMsg::SnapshotStatus(to, SnapshotStatus::Failure)),
                );
            }
            return;
        }
        let copies = if lossy && !snapshot && self.rng.gen_bool(0.01) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = if lossy && self.rng.gen_bool(0.03) {
                self.between(10, 60)
            } else {
                self.between(0, 2)
            };
            self.at(
                delay,
                Event::Deliver {
                    from,
                    to,
                    msg: Box::new(msg.clone()),
                },
            );
        }
    }

    fn deliver(&mut self, from: u64, to: u64, msg: Message) {
        let snapshot = msg.msg_type() == MessageType::MsgSnapshot;
        if !self.running(to) || !self.reachable(from, to) {
            if snapshot {
                self.push_input(
                    from,
                    NodeInput::Msg(DriverMsg::SnapshotStatus(to, SnapshotStatus::Failure)),
                );
            }
            return;
        }
        let route = if snapshot {
            Route::Chunks
        } else {
            Route::Batch
        };
        if let Err(refusal) = check_wire(&msg, to, route) {
            self.fail(format!(
                "node {to} refused an honest {:?} from node {from} ({} to {}): {refusal} (term {}, \
                 index {}, log term {}, entries (index, term) {:?})",
                msg.msg_type(),
                msg.from,
                msg.to,
                msg.term,
                msg.index,
                msg.log_term,
                msg.entries
                    .iter()
                    .map(|e| (e.index, e.term))
                    .collect::<Vec<_>>()
            ));
            return;
        }
        self.push_input(
            to,
            NodeInput::Msg(DriverMsg::Raft(Box::new(msg), Some(addr(from)))),
        );
        if snapshot {
            self.push_input(
                from,
                NodeInput::Msg(DriverMsg::SnapshotStatus(to, SnapshotStatus::Finish)),
            );
        }
    }

    fn fault(&mut self) {
        if self.phase != Phase::Faults {
            return;
        }
        let n = self.config.nodes;
        let roll = self.rng.gen_range(0..100);
        if roll < 35 {
            let id = self.rng.gen_range(1..=n);
            if self.running(id) {
                let keep = self.rng.gen_bool(0.5);
                self.report.crashes += 1;
                let forget = self.config.amnesiac_disks;
                self.node(id).crash(keep, forget);
                let after = self.between(100, 1500);
                self.at(after, Event::Restart { node: id });
            }
        } else if roll < 65 {
            self.cut.clear();
            let side: Vec<u64> = (1..=n).filter(|_| self.rng.gen_bool(0.5)).collect();
            for a in 1..=n {
                for b in 1..=n {
                    if side.contains(&a) != side.contains(&b) {
                        self.cut.insert((a, b));
                    }
                }
            }
            self.report.partitions += 1;
            let after = self.between(200, 2000);
            self.at(after, Event::Heal);
        } else if roll < 75 && self.report.disk_losses == 0 && (1..=n).all(|id| self.running(id)) {
            // A disk is lost once per run, while every other node runs: re-admission needs a
            // quorum of the other voters.
            let id = self.rng.gen_range(1..=n);
            self.report.disk_losses += 1;
            self.node(id).crash(false, false);
            self.node(id).disk = Arc::new(MemLogStorage::new());
            let after = self.between(200, 1000);
            self.at(after, Event::Restart { node: id });
        }
        let after = self.between(200, 800);
        self.at(after, Event::Fault);
    }

    /// An empty node asks the leader to re-admit it, until the leader accepts.
    fn join_step(&mut self, id: u64) {
        let Some(at) = self.joins.iter().position(|j| j.node == id) else {
            return;
        };
        if !self.running(id) {
            self.joins.remove(at);
            return;
        }
        let Some(leader) = self.leader().filter(|&l| l != id) else {
            self.at(100 * MS, Event::Join(id));
            return;
        };
        let (reply, rx) = oneshot::channel();
        let op = Op::Membership(MembershipChange {
            action: MembershipAction::Join,
            node_id: id,
            addr: addr(id),
            empty_storage: true,
        });
        let deadline = self.instant() + test_config().request_timeout;
        self.joins[at].reply = Some(rx);
        self.push_input(
            leader,
            NodeInput::Msg(DriverMsg::Op {
                op,
                deadline,
                reply,
            }),
        );
    }

    fn poll_joins(&mut self) {
        let mut retry = Vec::new();
        let mut done = Vec::new();
        for (i, join) in self.joins.iter_mut().enumerate() {
            let Some(rx) = join.reply.as_mut() else {
                continue;
            };
            match rx.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => {}
                Ok(Ok(_)) => done.push(i),
                Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed) => {
                    join.reply = None;
                    retry.push(join.node);
                }
            }
        }
        for i in done.into_iter().rev() {
            let node = self.joins.remove(i).node;
            if let Some(r) = self.node(node).running.as_ref() {
                r.counters
                    .join_pending
                    .store(false, std::sync::atomic::Ordering::Relaxed);
            }
        }
        for node in retry {
            self.at(200 * MS, Event::Join(node));
        }
    }

    fn client_step(&mut self, c: usize) {
        if self.clients[c].pending.is_some() || self.phase == Phase::Done {
            return;
        }
        let op = if self.phase == Phase::FinalReads {
            match self.clients[c].to_read.first() {
                Some(key) => KvOp::Get { key: key.clone() },
                None => return,
            }
        } else {
            self.random_op(c)
        };
        let running: Vec<u64> = (1..=self.config.nodes)
            .filter(|&id| self.running(id))
            .collect();
        if running.is_empty() {
            let after = self.between(10, 50);
            self.at(after, Event::ClientStep(c));
            return;
        }
        let target = match self.clients[c].hint.filter(|h| running.contains(h)) {
            Some(leader) => leader,
            None => running[self.rng.gen_range(0..running.len())],
        };
        let (reply, rx) = oneshot::channel();
        let bytes = encode_op(&op);
        let op_for_node = match &op {
            KvOp::Get { .. } => {
                let consistency = if self.rng.gen_bool(0.3) {
                    ReadConsistency::Lease
                } else {
                    ReadConsistency::Linearizable
                };
                Op::Read(bytes, consistency)
            }
            _ => Op::Propose(bytes),
        };
        let timeout = test_config().request_timeout;
        let id = self.history.invoke(c as u64, op.clone());
        self.clients[c].pending = Some(Pending {
            id,
            op,
            reply: rx,
            deadline: self.now + timeout,
        });
        let deadline = self.instant() + timeout;
        self.push_input(
            target,
            NodeInput::Msg(DriverMsg::Op {
                op: op_for_node,
                deadline,
                reply,
            }),
        );
    }

    fn random_op(&mut self, c: usize) -> KvOp {
        let key = format!("k{}", self.rng.gen_range(0..self.config.keys));
        let roll = self.rng.gen_range(0..100);
        let client = &mut self.clients[c];
        client.written += 1;
        let value = format!("c{c}.{}", client.written);
        match roll {
            0..=29 => KvOp::Put { key, value },
            30..=69 => KvOp::Get { key },
            70..=89 => {
                let expect = (self.rng.gen_bool(0.7)).then(|| {
                    let earlier = self.rng.gen_range(1..=client.written);
                    format!("c{c}.{earlier}")
                });
                KvOp::Cas { key, expect, value }
            }
            _ => KvOp::Delete { key },
        }
    }

    /// Collects the answers that arrived; an operation past its deadline and the sweeps
    /// that follow it, with no answer, is a waiter left pending.
    fn poll_clients(&mut self) {
        self.poll_joins();
        for c in 0..self.clients.len() {
            let Some(pending) = self.clients[c].pending.as_mut() else {
                continue;
            };
            let result = match pending.reply.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => {
                    if self.now > pending.deadline + Duration::from_secs(1) {
                        let what = format!(
                            "client {c}'s {} is unanswered 1 s past its deadline",
                            pending.op
                        );
                        self.fail(what);
                    }
                    continue;
                }
                Ok(result) => result,
                Err(oneshot::error::TryRecvError::Closed) => Err(Error::node_stopped()),
            };
            let Some(pending) = self.clients[c].pending.take() else {
                continue;
            };
            let hint = match &result {
                Err(Error::NotLeader { leader_id, .. }) => *leader_id,
                Err(_) => None,
                Ok(_) => self.clients[c].hint,
            };
            let (output, outcome) = decode_answer(&pending.op, result);
            (c, format!("{outcome}")).hash(&mut self.trace);
            self.history.complete(pending.id, outcome);
            let client = &mut self.clients[c];
            client.hint = hint;
            if output.is_ok() && self.phase == Phase::FinalReads {
                client.to_read.retain(|k| k != pending.op.key());
                if self.clients.iter().all(|c| c.to_read.is_empty()) {
                    self.phase = Phase::Done;
                    return;
                }
            }
            let after = if output.is_err() {
                self.between(5, 50)
            } else {
                self.between(0, 10)
            };
            self.at(after, Event::ClientStep(c));
        }
    }

    /// After the run: every node holds the same state, and the history is linearizable.
    fn final_checks(&mut self) {
        // Let every node catch up with the last commits: heartbeats carry the commit index.
        let quiet = self.now + Duration::from_secs(2);
        self.queue
            .retain(|_, e| !matches!(e, Event::ClientStep(_) | Event::Check));
        while let Some(((time, _), event)) = self.queue.pop_first() {
            if time > quiet || self.failure.is_some() {
                break;
            }
            self.now = time;
            self.handle(event);
            self.poll_joins();
        }
        if self.failure.is_some() {
            return;
        }
        let mut states = Vec::new();
        for node in &self.nodes {
            let Some(running) = node.running.as_ref() else {
                continue;
            };
            let state = running
                .applier
                .store
                .snapshot()
                .now_or_never()
                .and_then(Result::ok)
                .unwrap_or_default();
            states.push((node.id, running.applied(), state));
        }
        if states.len() < self.nodes.len() {
            let up: Vec<u64> = states.iter().map(|s| s.0).collect();
            self.fail(format!("only nodes {up:?} run after recovery"));
            return;
        }
        if let Some((first, rest)) = states.split_first() {
            for other in rest {
                if other.1 != first.1 || other.2 != first.2 {
                    self.fail(format!(
                        "replicas disagree after quiescing: node {} applied {}, node {} \
                         applied {}{}",
                        first.0,
                        first.1,
                        other.0,
                        other.1,
                        if other.1 == first.1 {
                            " with different state"
                        } else {
                            ""
                        }
                    ));
                    return;
                }
            }
        }
        match check(&self.history.operations()) {
            Verdict::Linearizable => {}
            verdict => self.fail(verdict.to_string()),
        }
    }
}
