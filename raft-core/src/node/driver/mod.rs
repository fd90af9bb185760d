//! The driver task: the only owner of the `RawNode` and the only writer of raft state.
//!
//! Each turn handles the messages that arrived (ticks, peers' raft messages, proposals,
//! reads, membership requests), then at most one `Ready`, in the order raft-rs documents:
//! leader messages, snapshot install, committed entries to the apply task, one durable write
//! of entries + hard state, persisted messages (votes, append responses), advance, light
//! ready. Proposals that arrive while a write is in flight wait in the channel and all go into
//! the next `Ready`: N concurrent clients cost one fsync.
//!
//! Every raft message from a peer is checked against this node's state before it is stepped
//! ([`super::inbound`]). The apply task reports its progress back; raft-rs learns the real
//! applied index, the leader refuses new proposals while the state machine lags too far, and
//! a follower whose state machine lags stops taking new committed entries until it catches up.
//!
//! The driver's work is split by concern: proposals.rs (batching, entry contexts, overload),
//! reads.rs (ReadIndex batches, the lease), conf_changes.rs (membership and leadership
//! transfer), ready.rs (one `Ready`, the durable write, snapshot saving, the apply backlog).
//! This file holds the state, the loop, inbound messages, ticks and status.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use raft::prelude::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, Entry,
    EntryType, HardState, Message, MessageType, Snapshot,
};
use raft::{RawNode, ReadState, SnapshotStatus, StateRole};
use raft_proto::ConfChangeI;
use tokio::sync::{mpsc, oneshot, watch};

use super::inbound::{check_local, LocalView, MAX_ADDR};
use super::membership::{entry_context, open_members, Members};
use super::messages::{
    ApplyMsg, CommittedEntry, ConfOutcome, DriverMsg, MembershipChange, ReadOp, Responder,
};
use super::op::Op;
use super::peers::Peers;
use super::progress::{member_progress, LastContact};
use super::snapshot_transfer::SnapshotAssembler;
use super::Counters;
use crate::config::Config;
use crate::error::{Error, Fatal, Result, StorageError};
use crate::log_storage::{snapshot_index, LogStorage, RaftStorage};
use crate::metrics::NodeMetrics;
use crate::records::{EntryContext, Member};
use crate::status::{ReadConsistency, Role, Status};
use crate::wire::{self, MembershipAction};

mod conf_changes;
mod proposals;
mod reads;
mod ready;

use conf_changes::sorted;
use proposals::QueuedProposal;
use reads::{PendingRead, ReadBatch};
use ready::ApplyBacklog;

/// Most driver messages handled in one turn before the next `Ready`.
const MAX_MESSAGES_PER_TURN: usize = 4096;
/// Most addresses a node without configuration keeps for nodes it heard from.
const MAX_LEARNED_ADDRS: usize = 16;
/// Senders to peers that are no longer members are reaped every this many ticks.
const REAP_EVERY_TICKS: u64 = 50;

/// Everything the driver needs to start.
pub(crate) struct DriverParts {
    pub(crate) id: u64,
    pub(crate) config: Config,
    pub(crate) raw: RawNode<RaftStorage>,
    pub(crate) storage: Arc<dyn LogStorage>,
    pub(crate) rx: mpsc::Receiver<DriverMsg>,
    pub(crate) driver_tx: mpsc::Sender<DriverMsg>,
    pub(crate) apply_tx: mpsc::UnboundedSender<ApplyMsg>,
    pub(crate) applied_rx: watch::Receiver<u64>,
    pub(crate) peers: Peers,
    pub(crate) members: Members,
    pub(crate) counters: Arc<Counters>,
    pub(crate) snapshot_wanted_for: Arc<AtomicU64>,
    pub(crate) assembler: Arc<SnapshotAssembler>,
}

pub(crate) struct Driver {
    id: u64,
    config: Config,
    raw: RawNode<RaftStorage>,
    storage: Arc<dyn LogStorage>,
    rx: mpsc::Receiver<DriverMsg>,
    driver_tx: mpsc::Sender<DriverMsg>,
    apply_tx: mpsc::UnboundedSender<ApplyMsg>,
    /// Set when a message to the apply task could not be delivered: it died.
    apply_lost: AtomicBool,
    applied_rx: watch::Receiver<u64>,
    /// The applied index raft-rs has been told.
    raft_applied: u64,
    backlog: ApplyBacklog,
    peers: Peers,
    members: Members,
    /// Addresses of nodes that are not members, while this node has no configuration yet
    /// (the leader it joins through). Bounded by [`MAX_LEARNED_ADDRS`].
    learned_addrs: HashMap<u64, String>,
    counters: Arc<Counters>,
    assembler: Arc<SnapshotAssembler>,
    seq: u64,
    read_nonce: u64,
    read_seq: u64,
    pending_reads: HashMap<Vec<u8>, ReadBatch>,
    /// Linearizable reads that arrived this turn; they share one ReadIndex.
    new_reads: Vec<PendingRead>,
    /// Proposals that arrived this turn; they go to raft as one message.
    new_proposals: Vec<QueuedProposal>,
    lease_until: Option<Instant>,
    /// The term in which this node last started a leadership transfer: the transferee may
    /// lead before this node hears of it, so no lease read is served for the rest of it.
    transfer_term: Option<u64>,
    was_leader: bool,
    last_leader: Option<u64>,
    persisted_hs: HardState,
    removed: bool,
    stop: bool,
    /// Reports for raft-rs collected while a `Ready` was in hand; stepped after `advance`.
    unreachable: Vec<u64>,
    snapshot_failed: Vec<u64>,
    /// A snapshot the apply task took, waiting for the storage thread.
    snapshot_to_save: Option<Snapshot>,
    /// A snapshot is being written by a storage thread.
    saving_snapshot: bool,
    snapshot_wanted_for: Arc<AtomicU64>,
    /// Peer and time of the last snapshot requested from the apply task.
    snapshot_requested: Option<(u64, Instant)>,
    ticks: u64,
    /// The configuration changed this turn: the server side's member list needs updating.
    conf_changed: bool,
    /// The store lags so far that Readies are rationed (see [`Driver::apply_stalled`]).
    stalled: bool,
    /// A rationed Ready may be handled (set once per tick).
    ready_this_tick: bool,
    /// When each member last sent this node a raft message, for [`Status::progress`].
    last_contact: LastContact,
}

impl Driver {
    pub(crate) fn new(parts: DriverParts) -> Self {
        let persisted_hs = parts.raw.raft.hard_state();
        let raft_applied = parts.raw.raft.raft_log.applied;
        Driver {
            id: parts.id,
            config: parts.config,
            raw: parts.raw,
            storage: parts.storage,
            rx: parts.rx,
            driver_tx: parts.driver_tx,
            apply_tx: parts.apply_tx,
            apply_lost: AtomicBool::new(false),
            applied_rx: parts.applied_rx,
            raft_applied,
            backlog: ApplyBacklog {
                handed: raft_applied,
                ..ApplyBacklog::default()
            },
            peers: parts.peers,
            members: parts.members,
            learned_addrs: HashMap::new(),
            counters: parts.counters,
            assembler: parts.assembler,
            seq: 0,
            read_nonce: rand::random(),
            read_seq: 0,
            pending_reads: HashMap::new(),
            new_reads: Vec::new(),
            new_proposals: Vec::new(),
            lease_until: None,
            transfer_term: None,
            was_leader: false,
            last_leader: None,
            persisted_hs,
            removed: false,
            stop: false,
            unreachable: Vec::new(),
            snapshot_failed: Vec::new(),
            snapshot_to_save: None,
            saving_snapshot: false,
            snapshot_wanted_for: parts.snapshot_wanted_for,
            snapshot_requested: None,
            ticks: 0,
            conf_changed: true,
            stalled: false,
            ready_this_tick: false,
            last_contact: LastContact::default(),
        }
    }

    /// Adds an address for a node that is not a member yet (the leader a joiner contacts).
    pub(crate) fn learn_addr(&mut self, id: u64, addr: String) {
        if self.learned_addrs.len() < MAX_LEARNED_ADDRS && addr.len() <= MAX_ADDR {
            self.learned_addrs.insert(id, addr);
        }
    }

    /// Runs until shutdown, removal from the cluster, or a fatal error.
    pub(crate) async fn run(mut self) -> Result<()> {
        let mut ticker = tokio::time::interval(self.config.tick_interval);
        // Ticks must never come faster than the interval: leases rely on it.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut inbox = Vec::with_capacity(256);
        loop {
            self.start_snapshot_save();
            self.sync_applied();
            if self.apply_lost.load(Ordering::Relaxed) || self.apply_tx.is_closed() {
                return Err(apply_task_gone());
            }
            let stalled = self.apply_stalled();
            if stalled != self.stalled {
                // While the store is far behind, each Ready hands over at most one committed
                // entry (raft-rs always gives one), and Readies come once per tick: the node
                // still acknowledges and answers heartbeats, but takes new work slowly.
                self.stalled = stalled;
                let limit = if stalled {
                    0
                } else {
                    self.config.max_committed_size_per_ready
                };
                self.raw.raft.set_max_committed_size_per_ready(limit);
                tracing::info!(
                    node = self.id,
                    backlog = self.backlog.bytes,
                    "{} taking committed entries at full speed",
                    if stalled { "stopped" } else { "resumed" }
                );
            }
            if self.raw.has_ready() && (!stalled || std::mem::take(&mut self.ready_this_tick)) {
                self.on_ready().await?;
            }
            self.after_turn();
            if self.stop {
                return Ok(());
            }
            tokio::select! {
                _ = ticker.tick() => {
                    self.raw.tick();
                    self.on_tick();
                }
                n = self.rx.recv_many(&mut inbox, MAX_MESSAGES_PER_TURN) => {
                    if n == 0 {
                        return Ok(());
                    }
                    for msg in inbox.drain(..) {
                        self.handle(msg)?;
                    }
                    self.flush_proposals();
                    self.flush_reads();
                }
                changed = self.applied_rx.changed() => {
                    if changed.is_err() {
                        return Err(apply_task_gone());
                    }
                }
            }
        }
    }

    fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    fn leader_id(&self) -> Option<u64> {
        let l = self.raw.raft.leader_id;
        (l != raft::INVALID_ID).then_some(l)
    }

    fn addr_of(&self, id: u64) -> Option<&str> {
        self.members
            .addr(id)
            .or_else(|| self.learned_addrs.get(&id).map(String::as_str))
    }

    fn not_leader(&self) -> Error {
        NodeMetrics::inc(&self.counters.metrics.not_leader_answers);
        let leader_id = self.leader_id().filter(|&l| l != self.id);
        Error::NotLeader {
            leader_id,
            leader_addr: leader_id.and_then(|l| self.addr_of(l).map(str::to_string)),
        }
    }

    fn busy(&self, why: String) -> Error {
        NodeMetrics::inc(&self.counters.metrics.busy);
        Error::busy(why)
    }

    fn to_apply(&self, msg: ApplyMsg) {
        if self.apply_tx.send(msg).is_err() {
            // The apply task died (a panicking `Store`): the loop stops the node.
            self.apply_lost.store(true, Ordering::Relaxed);
        }
    }

    /// True when this node has no configuration: it has not joined a cluster yet, or it lost
    /// its disk and waits to be re-admitted.
    fn conf_empty(&self) -> bool {
        let conf = self.raw.raft.prs().conf();
        conf.voters().ids().is_empty() && conf.learners().is_empty()
    }

    fn handle(&mut self, msg: DriverMsg) -> Result<()> {
        match msg {
            DriverMsg::Raft(m, from_addr) => self.step_remote(*m, from_addr),
            DriverMsg::Op {
                op,
                deadline,
                reply,
            } => self.handle_op(op, deadline, reply),
            DriverMsg::Ops(ops) => {
                for (op, deadline, reply) in ops {
                    self.handle_op(op, deadline, reply);
                }
            }
            DriverMsg::Backup {
                deadline,
                reply,
                backup,
            } => self.read(
                ReadOp::Backup(backup),
                ReadConsistency::Linearizable,
                deadline,
                reply,
            ),
            DriverMsg::Status(reply) => {
                let _ = reply.send(self.status());
            }
            DriverMsg::SnapshotTaken(snapshot) => {
                // Only the newest matters: an older one still waiting is superseded.
                self.snapshot_to_save = Some(*snapshot);
            }
            DriverMsg::SnapshotSaved(result) => {
                self.saving_snapshot = false;
                let index = result?;
                tracing::debug!(node = self.id, index, "snapshot saved, log compacted");
            }
            DriverMsg::Unreachable(id) => self.raw.report_unreachable(id),
            DriverMsg::SnapshotStatus(id, status) => self.raw.report_snapshot(id, status),
            DriverMsg::Fatal(e) => return Err(e),
            DriverMsg::Shutdown => self.stop = true,
        }
        Ok(())
    }

    fn handle_op(&mut self, op: Op, deadline: Instant, reply: Responder) {
        match op {
            Op::Propose(data) => self.propose(data, deadline, reply),
            Op::Read(query, consistency) => {
                self.read(ReadOp::Query(query), consistency, deadline, reply)
            }
            Op::Membership(change) => self.change_membership(change, deadline, reply),
            Op::Transfer(target) => {
                let _ = reply.send(self.transfer_leader(target).map(|()| Vec::new()));
            }
        }
    }

    /// Steps a peer's message if it is consistent with this node's state.
    fn step_remote(&mut self, msg: Message, from_addr: Option<String>) {
        let raft = &self.raw.raft;
        let conf = raft.prs().conf();
        let is_member = |id: u64| conf.voters().contains(id) || conf.learners().contains(&id);
        let empty = conf.voters().ids().is_empty() && conf.learners().is_empty();
        let view = LocalView {
            term: raft.term,
            leader_id: raft.leader_id,
            last_index: raft.raft_log.last_index(),
            empty,
            voter: conf.voters().contains(self.id),
            admitted: !self.counters.join_pending.load(Ordering::Relaxed),
            is_member: &is_member,
            local: self.id,
        };
        if let Err(reason) = check_local(&msg, &view) {
            self.counters.metrics.refuse(
                self.id,
                reason,
                &format_args!(
                    "{:?} from node {} (term {}, index {}, commit {})",
                    msg.msg_type(),
                    msg.from,
                    msg.term,
                    msg.index,
                    msg.commit
                ),
            );
            return;
        }
        if empty {
            // Before it has a configuration, a node answers whoever runs the cluster.
            if let Some(addr) = from_addr {
                if !self.learned_addrs.contains_key(&msg.from) {
                    self.learn_addr(msg.from, addr);
                }
            }
        }
        if self.raw.raft.prs().get(msg.from).is_some() {
            self.last_contact.record(msg.from, Instant::now());
        }
        // A snapshot may replace the configuration.
        self.conf_changed |= msg.msg_type() == MessageType::MsgSnapshot;
        if let Err(e) = self.raw.step(msg) {
            tracing::debug!(node = self.id, "ignored raft message: {e}");
        }
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        self.ready_this_tick = true;
        let now = Instant::now();
        let retry = self.config.read_retry_interval;
        let mut reissue = Vec::new();
        for (ctx, batch) in self.pending_reads.iter_mut() {
            let (live, expired): (Vec<_>, Vec<_>) = batch
                .reads
                .drain(..)
                .partition(|r| r.deadline > now && !r.reply.is_closed());
            for read in expired {
                let _ = read.reply.send(Err(Error::timeout(Duration::ZERO)));
            }
            batch.reads = live;
            if !batch.reads.is_empty() && now.duration_since(batch.last_issued) >= retry {
                // raft-rs drops reads silently (no leader yet, leader without a commit in
                // its term, lost messages): ask again.
                batch.last_issued = now;
                reissue.push(ctx.clone());
            }
        }
        self.pending_reads.retain(|_, b| !b.reads.is_empty());
        for ctx in reissue {
            self.raw.read_index(ctx);
        }
        self.assembler.expire(now);
        if self.ticks % REAP_EVERY_TICKS == 0 {
            self.reap_senders();
        }
        NodeMetrics::set(&self.counters.metrics.peer_queue, self.peers.queued());
        if self.is_leader() {
            self.maybe_leave_joint();
            self.maybe_promote_learners();
        }
    }

    /// Stops the sender tasks of nodes that are neither members nor a join in progress.
    fn reap_senders(&mut self) {
        let members = &self.members;
        let learned = &self.learned_addrs;
        self.peers
            .retain(|id| members.get(id).is_some() || learned.contains_key(&id));
        let prs = self.raw.raft.prs();
        self.last_contact.retain(|id| prs.get(id).is_some());
    }

    fn status(&self) -> Status {
        let raft = &self.raw.raft;
        let cs = raft.prs().conf().to_conf_state();
        let role = match raft.state {
            StateRole::Leader => Role::Leader,
            StateRole::Candidate => Role::Candidate,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Follower if cs.learners.contains(&self.id) => Role::Learner,
            StateRole::Follower => Role::Follower,
        };
        let storage = &self.storage;
        Status {
            id: self.id,
            role,
            leader_id: self.leader_id(),
            term: raft.term,
            commit_index: raft.raft_log.committed,
            applied_index: Counters::get(&self.counters.applied),
            voters: sorted(cs.voters),
            learners: sorted(cs.learners),
            members: self.members.addresses(),
            snapshot_index: storage.snapshot_metadata().map(|m| m.index).unwrap_or(0),
            first_log_index: storage.first_index().unwrap_or(0),
            last_log_index: raft.raft_log.last_index(),
            cluster_id: Counters::get(&self.counters.cluster_id),
            pending_proposals: Counters::get(&self.counters.pending_proposals),
            pending_reads: self
                .pending_reads
                .values()
                .map(|b| b.reads.len() as u64)
                .sum::<u64>()
                + Counters::get(&self.counters.pending_apply_reads),
            progress: member_progress(raft, &self.last_contact, Instant::now()),
        }
    }
}

fn apply_task_gone() -> Error {
    Error::Fatal(Fatal::Failed(
        "the apply task stopped (the state machine panicked?); stopping the node".to_string(),
    ))
}

/// Sends a request to the local driver and waits for its answer.
pub(crate) async fn ask<T>(
    tx: &mpsc::Sender<DriverMsg>,
    make: impl FnOnce(oneshot::Sender<T>) -> DriverMsg,
) -> Result<T> {
    let (reply, rx) = oneshot::channel();
    tx.send(make(reply)).await.map_err(|_| Error::shutdown())?;
    rx.await.map_err(|_| Error::node_stopped())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use raft::prelude::{ConfState, SnapshotMetadata};
    use raft::ProgressState;

    use super::*;
    use crate::logging::raft_logger;
    use crate::mem_log_storage::MemLogStorage;
    use crate::node::membership::seal_envelope;
    use crate::transport::LocalNetwork;

    /// What must outlive a test driver: the apply task's ends of its channels.
    type ApplySide = (mpsc::UnboundedReceiver<ApplyMsg>, watch::Sender<u64>);

    /// A driver for node 1, the only voter of a cluster whose learner 2 has no known address.
    fn lone_leader_with_unreachable_learner() -> (Driver, ApplySide) {
        let storage = MemLogStorage::new();
        let members = vec![Member {
            id: 1,
            addr: "node-1".into(),
            promote: false,
        }];
        let snapshot = Snapshot {
            data: seal_envelope(0, members.clone(), Vec::new()),
            metadata: Some(SnapshotMetadata {
                conf_state: Some(ConfState::from((vec![1], vec![2]))),
                index: 1,
                term: 1,
            }),
        };
        storage.install_snapshot(&snapshot).unwrap();
        let config = Config::default();
        let log: Arc<dyn LogStorage> = Arc::new(storage);
        let raw = RawNode::new(
            &config.to_raft(1, 1),
            RaftStorage {
                log: log.clone(),
                snapshot_wanted_for: Arc::new(AtomicU64::new(0)),
                snapshot_floor: HashMap::new(),
            },
            &raft_logger(1),
        )
        .unwrap();
        let (driver_tx, rx) = mpsc::channel(16);
        let (apply_tx, apply_rx) = mpsc::unbounded_channel();
        let (applied_tx, applied_rx) = watch::channel(1);
        let counters = Arc::new(Counters::default());
        let transport = Arc::new(LocalNetwork::new().transport());
        let peers = Peers::new(1, "node-1".into(), transport, driver_tx.clone(), 1 << 20);
        let assembler = Arc::new(SnapshotAssembler::new(
            1,
            1 << 20,
            Duration::from_secs(60),
            counters.clone(),
        ));
        let driver = Driver::new(DriverParts {
            id: 1,
            config,
            raw,
            storage: log,
            rx,
            driver_tx,
            apply_tx,
            applied_rx,
            peers,
            members: Members::from_list(members),
            counters,
            snapshot_wanted_for: Arc::new(AtomicU64::new(0)),
            assembler,
        });
        (driver, (apply_rx, applied_tx))
    }

    /// A snapshot that could not be handed to the peer's sender (here: no address) is
    /// reported as failed, so raft-rs leaves the "snapshot" state and tries again instead of
    /// waiting for a report that never comes.
    #[tokio::test]
    async fn a_snapshot_that_cannot_be_sent_is_reported_failed() {
        let (mut driver, _apply_side) = lone_leader_with_unreachable_learner();
        driver.raw.campaign().unwrap();
        assert!(driver.is_leader());
        driver.on_ready().await.unwrap();
        driver.after_turn();
        // Make the learner need entries the log no longer has: raft-rs sends a snapshot.
        let learner = driver.raw.raft.mut_prs().get_mut(2).unwrap();
        learner.next_idx = 1;
        learner.recent_active = true;
        learner.resume();
        driver.raw.raft.send_append(2);
        assert_eq!(
            driver.raw.raft.prs().get(2).unwrap().state,
            ProgressState::Snapshot
        );
        driver.on_ready().await.unwrap();
        driver.after_turn();
        assert_eq!(
            driver.raw.raft.prs().get(2).unwrap().state,
            ProgressState::Probe,
            "the undeliverable snapshot was reported"
        );
    }

    #[test]
    fn the_apply_backlog_counts_what_is_not_applied() {
        let mut b = ApplyBacklog {
            handed: 10,
            ..ApplyBacklog::default()
        };
        b.push(12, 100);
        b.push(20, 50);
        assert_eq!((b.bytes, b.entries(10)), (150, 10));
        b.applied(12);
        assert_eq!((b.bytes, b.entries(12)), (50, 8));
        b.applied(25);
        assert_eq!((b.bytes, b.entries(25)), (0, 0));
        assert_eq!(b.handed, 25, "a snapshot moves the handed index too");
    }
}
