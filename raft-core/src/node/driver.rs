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

/// Most driver messages handled in one turn before the next `Ready`.
const MAX_MESSAGES_PER_TURN: usize = 4096;
/// Most addresses a node without configuration keeps for nodes it heard from.
const MAX_LEARNED_ADDRS: usize = 16;
/// Senders to peers that are no longer members are reaped every this many ticks.
const REAP_EVERY_TICKS: u64 = 50;

struct PendingRead {
    query: ReadOp,
    deadline: Instant,
    reply: Responder,
}

/// Reads that share one ReadIndex request.
struct ReadBatch {
    reads: Vec<PendingRead>,
    first_issued: Instant,
    last_issued: Instant,
}

/// A proposal waiting for the end of the turn, when all of them go to raft in one message.
struct QueuedProposal {
    data: Vec<u8>,
    deadline: Instant,
    reply: Responder,
}

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

/// Committed entries handed to the apply task and not yet applied, for back-pressure.
#[derive(Default)]
struct ApplyBacklog {
    /// `(last index, bytes)` of each batch handed over, oldest first.
    batches: VecDeque<(u64, u64)>,
    bytes: u64,
    /// The last index handed over.
    handed: u64,
}

impl ApplyBacklog {
    fn push(&mut self, last: u64, bytes: u64) {
        self.batches.push_back((last, bytes));
        self.bytes += bytes;
        self.handed = self.handed.max(last);
    }

    /// Forgets what the apply task has applied.
    fn applied(&mut self, applied: u64) {
        while let Some(&(last, bytes)) = self.batches.front() {
            if last > applied {
                break;
            }
            self.batches.pop_front();
            self.bytes -= bytes;
        }
        self.handed = self.handed.max(applied);
    }

    fn entries(&self, applied: u64) -> u64 {
        self.handed.saturating_sub(applied)
    }
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

    /// Tells the mailbox where the leader is; compared first, so a Ready with no change
    /// costs a read lock and no allocation.
    fn publish_leader_route(&self, leader_id: Option<u64>) {
        let current = leader_id.and_then(|l| self.addr_of(l).map(|a| (l, a)));
        let slot = &self.counters.leader_route;
        let known = slot.read().unwrap_or_else(|e| e.into_inner());
        if known.as_ref().map(|(id, addr)| (*id, addr.as_str())) == current {
            return;
        }
        drop(known);
        *slot.write().unwrap_or_else(|e| e.into_inner()) =
            current.map(|(id, addr)| (id, addr.to_string()));
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
            DriverMsg::Propose {
                data,
                deadline,
                reply,
            } => self.propose(data, deadline, reply),
            DriverMsg::Read {
                query,
                consistency,
                deadline,
                reply,
            } => self.read(ReadOp::Query(query), consistency, deadline, reply),
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
            DriverMsg::Membership {
                change,
                deadline,
                reply,
            } => self.change_membership(change, deadline, reply),
            DriverMsg::TransferLeader { target, reply } => {
                let _ = reply.send(self.transfer_leader(target));
            }
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

    fn next_context(&mut self, members: Vec<Member>) -> (u64, u64, Vec<u8>) {
        self.seq += 1;
        let term = self.raw.raft.term;
        let context = EntryContext {
            origin: self.id,
            term,
            seq: self.seq,
            members,
        };
        (term, self.seq, context.encode_to_vec())
    }

    fn register(&self, term: u64, seq: u64, deadline: Instant, reply: Responder) {
        let index = self.raw.raft.raft_log.last_index();
        self.to_apply(ApplyMsg::Register {
            index,
            term,
            seq,
            deadline,
            reply,
        });
    }

    fn propose(&mut self, data: Vec<u8>, deadline: Instant, reply: Responder) {
        if !self.is_leader() {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        self.new_proposals.push(QueuedProposal {
            data,
            deadline,
            reply,
        });
    }

    /// Why the leader cannot take `bytes` more of proposals now, if it cannot.
    fn overloaded(&self, bytes: u64) -> Option<String> {
        let max_backlog = self.config.max_apply_backlog_bytes;
        if self.backlog.bytes > max_backlog {
            return Some(format!(
                "the state machine is {} bytes behind the log (at most {max_backlog})",
                self.backlog.bytes
            ));
        }
        let uncommitted = self.raw.raft.uncommitted_size() as u64;
        let max_uncommitted = self.config.max_uncommitted_bytes;
        if uncommitted > 0 && uncommitted + bytes > max_uncommitted {
            return Some(format!(
                "{uncommitted} bytes of proposals wait for a quorum (at most {max_uncommitted})"
            ));
        }
        None
    }

    /// Hands this turn's proposals to raft as one MsgPropose: one append per follower for the
    /// whole batch instead of one per proposal.
    fn flush_proposals(&mut self) {
        if self.new_proposals.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.new_proposals);
        if !self.is_leader() {
            let error = self.not_leader();
            for p in batch {
                let _ = p.reply.send(Err(error.clone()));
            }
            return;
        }
        let bytes = batch.iter().map(|p| p.data.len() as u64).sum();
        if let Some(why) = self.overloaded(bytes) {
            let error = self.busy(why);
            for p in batch {
                let _ = p.reply.send(Err(error.clone()));
            }
            return;
        }
        let term = self.raw.raft.term;
        let first_seq = self.seq + 1;
        let mut entries = Vec::with_capacity(batch.len());
        let mut waiters = Vec::with_capacity(batch.len());
        for p in batch {
            self.seq += 1;
            let context = EntryContext {
                origin: self.id,
                term,
                seq: self.seq,
                members: Vec::new(),
            };
            entries.push(Entry {
                data: p.data,
                context: context.encode_to_vec(),
                ..Default::default()
            });
            waiters.push((p.deadline, p.reply));
        }
        let count = entries.len() as u64;
        let mut msg = Message {
            from: self.id,
            entries,
            ..Default::default()
        };
        msg.set_msg_type(MessageType::MsgPropose);
        let last_before = self.raw.raft.raft_log.last_index();
        match self.raw.step(msg) {
            Ok(()) if self.raw.raft.raft_log.last_index() == last_before + count => {
                let metrics = &self.counters.metrics;
                metrics.proposals.fetch_add(count, Ordering::Relaxed);
                for (i, (deadline, reply)) in waiters.into_iter().enumerate() {
                    self.to_apply(ApplyMsg::Register {
                        index: last_before + 1 + i as u64,
                        term,
                        seq: first_seq + i as u64,
                        deadline,
                        reply,
                    });
                }
            }
            result => {
                let error = match result {
                    Err(e) => Error::from(e),
                    Ok(()) => Error::dropped(),
                };
                for (_, reply) in waiters {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }

    fn lease_valid(&self) -> bool {
        let raft = &self.raw.raft;
        self.is_leader()
            && raft.lead_transferee.is_none()
            && self.transfer_term != Some(raft.term)
            && self.lease_until.is_some_and(|t| Instant::now() < t)
    }

    fn pending_read_count(&self) -> usize {
        self.new_reads.len()
            + self
                .pending_reads
                .values()
                .map(|b| b.reads.len())
                .sum::<usize>()
            + Counters::get(&self.counters.pending_apply_reads) as usize
    }

    fn read(
        &mut self,
        query: ReadOp,
        consistency: ReadConsistency,
        deadline: Instant,
        reply: Responder,
    ) {
        let max = self.config.max_pending_reads;
        if self.pending_read_count() >= max {
            let _ = reply.send(Err(self.busy(format!("{max} reads are already waiting"))));
            return;
        }
        match consistency {
            ReadConsistency::Stale => self.to_apply(ApplyMsg::Read {
                index: 0,
                query,
                deadline,
                reply,
            }),
            ReadConsistency::Lease if self.lease_valid() => self.to_apply(ApplyMsg::Read {
                index: self.raw.raft.raft_log.committed,
                query,
                deadline,
                reply,
            }),
            ReadConsistency::Lease if !self.is_leader() => {
                let _ = reply.send(Err(self.not_leader()));
            }
            _ => self.new_reads.push(PendingRead {
                query,
                deadline,
                reply,
            }),
        }
    }

    /// Issues one ReadIndex for all linearizable reads of this turn.
    fn flush_reads(&mut self) {
        if self.new_reads.is_empty() {
            return;
        }
        self.read_seq += 1;
        let mut ctx = Vec::with_capacity(24);
        ctx.extend_from_slice(&self.id.to_be_bytes());
        ctx.extend_from_slice(&self.read_nonce.to_be_bytes());
        ctx.extend_from_slice(&self.read_seq.to_be_bytes());
        self.raw.read_index(ctx.clone());
        let now = Instant::now();
        self.pending_reads.insert(
            ctx,
            ReadBatch {
                reads: std::mem::take(&mut self.new_reads),
                first_issued: now,
                last_issued: now,
            },
        );
    }

    fn on_read_state(&mut self, state: ReadState) {
        let Some(batch) = self.pending_reads.remove(&state.request_ctx) else {
            return;
        };
        let lease = self.config.lease_duration();
        if self.is_leader() && !lease.is_zero() {
            // A quorum heard from us after `first_issued`: none of them votes for another
            // candidate within an election timeout of that (check-quorum leases).
            let until = batch.first_issued + lease;
            if self.lease_until.is_none_or(|t| t < until) {
                self.lease_until = Some(until);
            }
        }
        for read in batch.reads {
            self.to_apply(ApplyMsg::Read {
                index: state.index,
                query: read.query,
                deadline: read.deadline,
                reply: read.reply,
            });
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

    fn conf_pending(&self) -> bool {
        self.raw.raft.has_pending_conf()
    }

    fn maybe_leave_joint(&mut self) {
        let cs = self.raw.raft.prs().conf().to_conf_state();
        if cs.voters_outgoing.is_empty() || self.conf_pending() {
            return;
        }
        tracing::info!(node = self.id, "leaving joint configuration");
        if let Err(e) = self
            .raw
            .propose_conf_change(Vec::new(), ConfChangeV2::default())
        {
            tracing::debug!(
                node = self.id,
                "could not leave joint configuration yet: {e}"
            );
        }
    }

    /// The log index a learner has acknowledged (0: nothing yet, or not a member).
    fn matched(&self, id: u64) -> u64 {
        self.raw.raft.prs().get(id).map_or(0, |p| p.matched)
    }

    fn maybe_promote_learners(&mut self) {
        if self.conf_pending() {
            return;
        }
        let last = self.raw.raft.raft_log.last_index();
        let cs = self.raw.raft.prs().conf().to_conf_state();
        // A learner that acknowledged nothing has no state yet (it may not even have its
        // snapshot): it stays a learner until it caught up, whatever the lag allows.
        let candidate = self.members.iter().find(|m| {
            m.promote && cs.learners.contains(&m.id) && {
                let matched = self.matched(m.id);
                matched > 0 && matched + self.config.promote_lag >= last
            }
        });
        let Some(member) = candidate.cloned() else {
            return;
        };
        tracing::info!(
            node = self.id,
            learner = member.id,
            "promoting caught-up learner to voter"
        );
        let member = Member {
            promote: false,
            ..member
        };
        let id = member.id;
        let (_, _, context) = self.next_context(vec![member]);
        let cc = single_change(ConfChangeType::AddNode, id);
        if let Err(e) = self.raw.propose_conf_change(context, cc) {
            tracing::debug!(node = self.id, "promotion not proposed: {e}");
        }
    }

    fn change_membership(&mut self, change: MembershipChange, deadline: Instant, reply: Responder) {
        let node_id = change.node_id;
        let (conf_change, member) = match self.plan_membership(change) {
            Ok(Plan::Done) => {
                let _ = reply.send(Ok(Vec::new()));
                return;
            }
            Ok(Plan::Change(change, member)) => (change, member),
            Ok(Plan::Replace) => {
                // Remove the old incarnation now; the joining node retries its join and is
                // added again as a learner once the removal applied.
                if self.conf_pending() {
                    let _ = reply.send(Err(Error::membership_busy()));
                    return;
                }
                let (_, _, context) = self.next_context(Vec::new());
                let cc = single_change(ConfChangeType::RemoveNode, node_id);
                let answer = match self.raw.propose_conf_change(context, cc) {
                    Ok(()) => {
                        tracing::warn!(
                            node = self.id,
                            replaced = node_id,
                            "node {node_id} joined with empty storage: removing its old \
                             incarnation before it is added again as a learner"
                        );
                        Err(Error::busy(format!(
                            "node {node_id} lost its state; its old incarnation is being \
                             removed, retry the join"
                        )))
                    }
                    Err(raft::Error::ProposalDropped) => Err(Error::membership_busy()),
                    Err(e) => Err(Error::from(e)),
                };
                let _ = reply.send(answer);
                return;
            }
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        if self.conf_pending() {
            let _ = reply.send(Err(Error::membership_busy()));
            return;
        }
        let (term, seq, context) = self.next_context(member.into_iter().collect());
        match self
            .raw
            .propose_conf_change(context, single_change(conf_change, node_id))
        {
            Ok(()) => self.register(term, seq, deadline, reply),
            Err(raft::Error::ProposalDropped) => {
                let _ = reply.send(Err(Error::membership_busy()));
            }
            Err(e) => {
                let _ = reply.send(Err(Error::from(e)));
            }
        }
    }

    /// What a membership request needs.
    fn plan_membership(&mut self, change: MembershipChange) -> Result<Plan> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        let MembershipChange {
            action,
            node_id,
            addr,
            empty_storage,
        } = change;
        if node_id == 0 {
            return Err(Error::Invalid("node id 0 is reserved".into()));
        }
        if addr.len() > MAX_ADDR {
            return Err(Error::Invalid(format!(
                "an address of {} bytes (at most {MAX_ADDR})",
                addr.len()
            )));
        }
        let cs = self.raw.raft.prs().conf().to_conf_state();
        let is_voter = cs.voters.contains(&node_id) || cs.voters_outgoing.contains(&node_id);
        let is_learner = cs.learners.contains(&node_id);
        let known_addr = self.members.addr(node_id).map(str::to_string);
        let member = |promote| Member {
            id: node_id,
            addr: addr.clone(),
            promote,
        };
        match action {
            MembershipAction::Join | MembershipAction::AddLearner => {
                if addr.is_empty() {
                    return Err(Error::Invalid("a joining node needs an address".into()));
                }
                if is_voter || is_learner {
                    if empty_storage {
                        // The node lost its disk: its votes and log are gone. Unless it is a
                        // learner that never acknowledged anything (its earlier join), the
                        // old incarnation must go before it may count again.
                        let fresh = is_learner && self.matched(node_id) == 0;
                        if fresh && known_addr.as_deref() == Some(addr.as_str()) {
                            return Ok(Plan::Done);
                        }
                        self.check_replaceable(node_id, &cs.voters, is_voter)?;
                        return Ok(Plan::Replace);
                    }
                    if known_addr.as_deref() == Some(addr.as_str()) {
                        return Ok(Plan::Done);
                    }
                    return Err(Error::Invalid(format!(
                        "node {node_id} is already a member at {}; remove it first",
                        known_addr.unwrap_or_default()
                    )));
                }
                let promote = action == MembershipAction::Join;
                Ok(Plan::Change(
                    ConfChangeType::AddLearnerNode,
                    Some(member(promote)),
                ))
            }
            MembershipAction::Promote => {
                if is_voter {
                    return Ok(Plan::Done);
                }
                if !is_learner {
                    return Err(Error::Invalid(format!("node {node_id} is not a learner")));
                }
                if self.matched(node_id) == 0 {
                    return Err(Error::Invalid(format!(
                        "learner {node_id} has not received any of the log yet; promote it \
                         once it caught up"
                    )));
                }
                let m = Member {
                    id: node_id,
                    addr: known_addr.unwrap_or(addr),
                    promote: false,
                };
                Ok(Plan::Change(ConfChangeType::AddNode, Some(m)))
            }
            MembershipAction::Remove => {
                if !is_voter && !is_learner {
                    return Ok(Plan::Done);
                }
                if is_voter && cs.voters.len() == 1 {
                    return Err(Error::Invalid(format!(
                        "node {node_id} is the only voter; removing it would end the cluster"
                    )));
                }
                if node_id == self.id {
                    // A leader does not remove itself: hand leadership to the most caught-up
                    // voter first; the caller retries against the new leader.
                    let target = cs
                        .voters
                        .iter()
                        .copied()
                        .filter(|&v| v != self.id)
                        .max_by_key(|&v| self.matched(v));
                    if let Some(target) = target {
                        tracing::info!(
                            node = self.id,
                            target,
                            "transferring leadership before leaving"
                        );
                        self.start_transfer(target);
                    }
                    return Err(Error::NotLeader {
                        leader_id: None,
                        leader_addr: None,
                    });
                }
                Ok(Plan::Change(ConfChangeType::RemoveNode, None))
            }
        }
    }

    /// A voter that lost its disk can be removed only if the other voters still form a
    /// quorum that this leader reaches; otherwise the removal would never commit.
    fn check_replaceable(&self, node_id: u64, voters: &[u64], is_voter: bool) -> Result<()> {
        if !is_voter {
            return Ok(());
        }
        if node_id == self.id {
            return Err(Error::Invalid(format!(
                "node {node_id} leads this cluster and cannot be re-admitted by itself"
            )));
        }
        let others: Vec<u64> = voters.iter().copied().filter(|&v| v != node_id).collect();
        let reachable: Vec<u64> = others
            .iter()
            .copied()
            .filter(|&v| {
                v == self.id || self.raw.raft.prs().get(v).is_some_and(|p| p.recent_active)
            })
            .collect();
        if reachable.len() < others.len() / 2 + 1 {
            let unreachable: Vec<u64> = others
                .iter()
                .copied()
                .filter(|v| !reachable.contains(v))
                .collect();
            return Err(Error::Invalid(format!(
                "node {node_id} lost its disk and must be re-admitted: its old incarnation is \
                 removed first, which needs a quorum of the other voters {others:?}, but \
                 {unreachable:?} are unreachable. Bring them back and retry, or restore the \
                 cluster from a backup"
            )));
        }
        Ok(())
    }

    fn start_transfer(&mut self, target: u64) {
        self.lease_until = None;
        self.transfer_term = Some(self.raw.raft.term);
        self.raw.transfer_leader(target);
    }

    fn transfer_leader(&mut self, target: u64) -> Result<()> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        if target == self.id {
            return Ok(());
        }
        let cs = self.raw.raft.prs().conf().to_conf_state();
        if !cs.voters.contains(&target) {
            return Err(Error::Invalid(format!("node {target} is not a voter")));
        }
        self.start_transfer(target);
        Ok(())
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

    /// Runs a storage write on a blocking thread: never fsync on a runtime worker.
    async fn write<F>(&self, write: F) -> Result<()>
    where
        F: FnOnce(&dyn LogStorage) -> Result<(), StorageError> + Send + 'static,
    {
        let storage = self.storage.clone();
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || write(storage.as_ref()))
            .await
            .map_err(|e| StorageError::Io(format!("storage thread failed: {e}")))?;
        let metrics = &self.counters.metrics;
        metrics.log_write_seconds.observe(started.elapsed());
        NodeMetrics::inc(&metrics.log_writes);
        result.map_err(|e| {
            tracing::error!(
                node = self.id,
                "log storage write failed, stopping the node: {e}"
            );
            Error::from(e)
        })
    }

    /// Hands the newest snapshot the apply task took to a storage thread, unless one is
    /// being written already. The driver keeps running meanwhile: a large snapshot never
    /// delays heartbeats. The result comes back as [`DriverMsg::SnapshotSaved`].
    fn start_snapshot_save(&mut self) {
        if self.saving_snapshot {
            return;
        }
        let Some(snapshot) = self.snapshot_to_save.take() else {
            return;
        };
        self.saving_snapshot = true;
        let index = snapshot_index(&snapshot);
        // Never compact past what raft-rs knows is applied: it reads that range to decide
        // whether it may campaign.
        let compact_to = index
            .saturating_sub(self.config.snapshot_log_tail)
            .min(self.raft_applied);
        let storage = self.storage.clone();
        let tx = self.driver_tx.clone();
        let node = self.id;
        tokio::spawn(async move {
            let result = tokio::task::spawn_blocking(move || {
                storage.save_snapshot(&snapshot)?;
                if compact_to > 0 {
                    storage.compact(compact_to)?;
                }
                Ok::<_, StorageError>(())
            })
            .await
            .map_err(|e| StorageError::Io(format!("storage thread failed: {e}")))
            .and_then(|r| r)
            .map(|()| index)
            .map_err(|e| {
                tracing::error!(node, "saving a snapshot failed, stopping the node: {e}");
                Error::from(e)
            });
            let _ = tx.send(DriverMsg::SnapshotSaved(result)).await;
        });
    }

    fn send_messages(&mut self, messages: Vec<Message>) {
        for msg in messages {
            let to = msg.to;
            let is_snapshot = msg.msg_type() == MessageType::MsgSnapshot;
            let addr = self
                .members
                .addr(to)
                .or_else(|| self.learned_addrs.get(&to).map(String::as_str));
            let delivered = match addr {
                Some(addr) => {
                    let queued = self.peers.send(msg, addr);
                    if !queued {
                        self.unreachable.push(to);
                    }
                    queued
                }
                None => {
                    tracing::debug!(
                        node = self.id,
                        peer = to,
                        "no address for peer; message dropped"
                    );
                    false
                }
            };
            if is_snapshot && !delivered {
                // raft-rs waits in "snapshot" state until it hears how the transfer went.
                self.snapshot_failed.push(to);
            }
        }
    }

    /// Applies what the apply task finished: raft-rs learns the real applied index, and the
    /// backlog shrinks.
    fn sync_applied(&mut self) {
        let applied = *self.applied_rx.borrow_and_update();
        let log = &self.raw.raft.raft_log;
        let to = applied.min(log.committed).min(log.persisted);
        if to > self.raft_applied {
            self.raw.advance_apply_to(to);
            self.raft_applied = to;
        }
        self.backlog.applied(applied);
        let metrics = &self.counters.metrics;
        NodeMetrics::set(&metrics.apply_backlog_bytes, self.backlog.bytes);
        NodeMetrics::set(
            &metrics.apply_backlog_entries,
            self.backlog.entries(applied),
        );
    }

    /// A follower whose state machine is more than twice the bound behind takes committed
    /// entries slowly (one per tick) until it catches up: its apply queue stays bounded, and
    /// it becomes a lagging follower rather than a node holding the log in memory. A leader
    /// bounds its backlog by refusing proposals instead.
    fn apply_stalled(&self) -> bool {
        !self.is_leader()
            && self.backlog.bytes > self.config.max_apply_backlog_bytes.saturating_mul(2)
    }

    async fn on_ready(&mut self) -> Result<()> {
        let mut ready = self.raw.ready();

        // 1. A leader may send before its own write: followers persist in parallel.
        self.send_messages(ready.take_messages());

        // 2. A snapshot from the leader replaces the log, then the state machine. It was
        // checked (conf state, envelope) before raft saw it.
        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot().clone();
            let members = open_members(&snapshot.data).map_err(|e| {
                Error::config(format!(
                    "a snapshot that passed its checks is unreadable: {e}"
                ))
            })?;
            let to_store = snapshot.clone();
            self.write(move |s| s.install_snapshot(&to_store)).await?;
            self.members = Members::from_list(members);
            let index = snapshot_index(&snapshot);
            tracing::info!(node = self.id, index, "installed snapshot from leader");
            self.backlog.applied(index);
            self.backlog.handed = self.backlog.handed.max(index);
            self.to_apply(ApplyMsg::Restore(Box::new(snapshot)));
        }

        // 3. Committed entries go to the apply task.
        self.hand_to_apply(ready.take_committed_entries());

        // 4. One durable write for entries and hard state.
        let entries = ready.take_entries();
        let hs = self.raw.raft.hard_state();
        let vote_changed = hs.term != self.persisted_hs.term || hs.vote != self.persisted_hs.vote;
        if !entries.is_empty() || vote_changed {
            let to_store = hs.clone();
            self.write(move |s| s.append(&entries, Some(&to_store)))
                .await?;
            self.persisted_hs = hs;
        }

        // 5. Only now may votes and append responses leave.
        self.send_messages(ready.take_persisted_messages());
        for state in ready.take_read_states() {
            self.on_read_state(state);
        }

        // 6. Advance (raft-rs hears the applied index from the apply task, not here), then
        // the light ready.
        let mut light = self.raw.advance_append(ready);
        self.send_messages(light.take_messages());
        self.hand_to_apply(light.take_committed_entries());
        Ok(())
    }

    fn hand_to_apply(&mut self, entries: Vec<Entry>) {
        let Some(last) = entries.last().map(|e| e.index) else {
            return;
        };
        let bytes = entries
            .iter()
            .map(|e| (e.data.len() + e.context.len()) as u64)
            .sum();
        self.backlog.push(last, bytes);
        let mut batch = Vec::with_capacity(entries.len());
        for entry in entries {
            let conf = match entry.get_entry_type() {
                EntryType::EntryNormal => None,
                EntryType::EntryConfChange => {
                    Some(wire::decode_raft::<ConfChange>(&entry.data).map(|cc| cc.into_v2()))
                }
                EntryType::EntryConfChangeV2 => {
                    Some(wire::decode_raft::<ConfChangeV2>(&entry.data))
                }
            };
            let conf = conf.map(|cc| match cc {
                Ok(cc) => self.apply_conf_change(&entry, &cc),
                Err(e) => ConfOutcome {
                    result: Err(format!("undecodable conf change: {e}")),
                    members: self.members.to_list(),
                },
            });
            batch.push(CommittedEntry { entry, conf });
        }
        self.to_apply(ApplyMsg::Entries(batch));
    }

    fn apply_conf_change(&mut self, entry: &Entry, cc: &ConfChangeV2) -> ConfOutcome {
        let result = self.raw.apply_conf_change(cc).map_err(|e| e.to_string());
        self.conf_changed = true;
        if result.is_ok() {
            let context = entry_context(&entry.context);
            for change in &cc.changes {
                let id = change.node_id;
                let from_context = context
                    .as_ref()
                    .and_then(|c| c.members.iter().find(|m| m.id == id).cloned());
                let floors = &mut self.raw.mut_store().snapshot_floor;
                match change.get_change_type() {
                    ConfChangeType::AddLearnerNode => {
                        floors.insert(id, entry.index);
                    }
                    ConfChangeType::RemoveNode => {
                        floors.remove(&id);
                    }
                    ConfChangeType::AddNode => {}
                }
                match change.get_change_type() {
                    ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                        if let Some(member) = from_context {
                            self.learned_addrs.remove(&id);
                            self.members.upsert(member);
                        } else if let Some(addr) = self.learned_addrs.remove(&id) {
                            self.members.upsert(Member {
                                id,
                                addr,
                                promote: false,
                            });
                        }
                    }
                    ConfChangeType::RemoveNode => {
                        self.members.remove(id);
                        self.peers.remove(id);
                        if id == self.id {
                            self.removed = true;
                        }
                    }
                }
            }
            tracing::info!(
                node = self.id,
                index = entry.index,
                "membership changed: {:?}",
                result.as_ref().ok()
            );
        } else if let Err(e) = &result {
            tracing::warn!(
                node = self.id,
                index = entry.index,
                "conf change rejected: {e}"
            );
        }
        ConfOutcome {
            result,
            members: self.members.to_list(),
        }
    }

    fn after_turn(&mut self) {
        // Reports raft-rs must not hear while a Ready is in hand.
        for id in std::mem::take(&mut self.unreachable) {
            self.raw.report_unreachable(id);
        }
        for id in std::mem::take(&mut self.snapshot_failed) {
            self.raw.report_snapshot(id, SnapshotStatus::Failure);
        }
        let wanted = self.snapshot_wanted_for.swap(0, Ordering::Relaxed);
        if wanted != 0 {
            let recent = self.snapshot_requested.is_some_and(|(peer, at)| {
                peer == wanted && at.elapsed() < self.config.min_election_timeout()
            });
            if !recent {
                self.snapshot_requested = Some((wanted, Instant::now()));
                self.to_apply(ApplyMsg::SnapshotFor(wanted));
            }
        }
        if std::mem::take(&mut self.conf_changed) {
            let conf = self.raw.raft.prs().conf();
            self.counters.set_members(
                conf.voters()
                    .ids()
                    .iter()
                    .chain(conf.learners().iter().copied()),
            );
        }
        if !self.learned_addrs.is_empty() && !self.conf_empty() {
            // Members' addresses come from the configuration from now on.
            self.learned_addrs.clear();
        }
        let leader = self.is_leader();
        if self.was_leader && !leader {
            tracing::info!(node = self.id, term = self.raw.raft.term, "lost leadership");
            self.lease_until = None;
            self.to_apply(ApplyMsg::FailProposals);
        }
        let leader_id = self.leader_id();
        if leader_id.is_some() && leader_id != self.last_leader {
            NodeMetrics::inc(&self.counters.metrics.leader_changes);
        }
        self.publish_leader_route(leader_id);
        self.last_leader = leader_id;
        Counters::set(&self.counters.leader, leader_id.unwrap_or(0));
        if leader && !self.was_leader {
            tracing::info!(node = self.id, term = self.raw.raft.term, "became leader");
        }
        self.was_leader = leader;
        if self.removed {
            let cs = self.raw.raft.prs().conf().to_conf_state();
            if !cs.voters.contains(&self.id) && !cs.learners.contains(&self.id) {
                tracing::info!(
                    node = self.id,
                    "this node was removed from the cluster; stopping"
                );
                self.stop = true;
            }
            self.removed = false;
        }
    }
}

/// What a membership request needs.
enum Plan {
    /// Already in effect.
    Done,
    /// One conf change, with the member's address when it adds one.
    Change(ConfChangeType, Option<Member>),
    /// The node lost its disk: remove the old incarnation; it joins again after.
    Replace,
}

fn apply_task_gone() -> Error {
    Error::Fatal(Fatal::Failed(
        "the apply task stopped (the state machine panicked?); stopping the node".to_string(),
    ))
}

fn single_change(change_type: ConfChangeType, node_id: u64) -> ConfChangeV2 {
    let mut single = ConfChangeSingle {
        node_id,
        ..Default::default()
    };
    single.set_change_type(change_type);
    let mut cc = ConfChangeV2 {
        changes: vec![single],
        ..Default::default()
    };
    cc.set_transition(ConfChangeTransition::Auto);
    cc
}

fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort_unstable();
    v
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
