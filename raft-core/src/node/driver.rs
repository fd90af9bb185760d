//! The driver task: the only owner of the `RawNode` and the only writer of raft state.
//!
//! Each turn handles the messages that arrived (ticks, peers' raft messages, proposals,
//! reads, membership requests), then at most one `Ready`, in the order raft-rs documents:
//! leader messages, snapshot install, committed entries to the apply task, one durable write
//! of entries + hard state, persisted messages (votes, append responses), advance, light
//! ready. Proposals that arrive while a write is in flight wait in the channel and all go into
//! the next `Ready`: N concurrent clients cost one fsync.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use raft::prelude::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, Entry,
    EntryType, HardState, Message, Snapshot,
};
use raft::{RawNode, ReadState, StateRole};
use raft_proto::ConfChangeI;
use tokio::sync::{mpsc, oneshot};

use super::membership::{entry_context, open_envelope, Members};
use super::messages::{ApplyMsg, CommittedEntry, ConfOutcome, DriverMsg, Responder};
use super::peers::Peers;
use super::Counters;
use crate::config::Config;
use crate::error::{Error, Result, StorageError};
use crate::log_storage::{snapshot_index, LogStorage, RaftStorage};
use crate::metrics::NodeMetrics;
use crate::status::{ReadConsistency, Role, Status};
use crate::wire::{self, EntryContext, Member, MembershipAction};

/// Most driver messages handled in one turn before the next `Ready`.
const MAX_MESSAGES_PER_TURN: usize = 4096;

struct PendingRead {
    query: Vec<u8>,
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
    pub(crate) apply_tx: mpsc::UnboundedSender<ApplyMsg>,
    pub(crate) peers: Peers,
    pub(crate) members: Members,
    pub(crate) counters: Arc<Counters>,
    pub(crate) snapshot_wanted_for: Arc<AtomicU64>,
}

pub(crate) struct Driver {
    id: u64,
    config: Config,
    raw: RawNode<RaftStorage>,
    storage: Arc<dyn LogStorage>,
    rx: mpsc::Receiver<DriverMsg>,
    apply_tx: mpsc::UnboundedSender<ApplyMsg>,
    peers: Peers,
    members: Members,
    /// Addresses of nodes that are not (yet) members, learned from their messages.
    learned_addrs: HashMap<u64, String>,
    counters: Arc<Counters>,
    seq: u64,
    read_nonce: u64,
    read_seq: u64,
    pending_reads: HashMap<Vec<u8>, ReadBatch>,
    /// Linearizable reads that arrived this turn; they share one ReadIndex.
    new_reads: Vec<PendingRead>,
    /// Proposals that arrived this turn; they go to raft as one message.
    new_proposals: Vec<QueuedProposal>,
    lease_until: Option<Instant>,
    was_leader: bool,
    last_leader: Option<u64>,
    persisted_hs: HardState,
    removed: bool,
    stop: bool,
    /// A snapshot the apply task took, saved at the end of the turn.
    snapshot_to_save: Option<Snapshot>,
    snapshot_wanted_for: Arc<AtomicU64>,
    /// Peer and time of the last snapshot requested from the apply task.
    snapshot_requested: Option<(u64, Instant)>,
}

impl Driver {
    pub(crate) fn new(parts: DriverParts) -> Self {
        let persisted_hs = parts.raw.raft.hard_state();
        Driver {
            id: parts.id,
            config: parts.config,
            raw: parts.raw,
            storage: parts.storage,
            rx: parts.rx,
            apply_tx: parts.apply_tx,
            peers: parts.peers,
            members: parts.members,
            learned_addrs: HashMap::new(),
            counters: parts.counters,
            seq: 0,
            read_nonce: rand::random(),
            read_seq: 0,
            pending_reads: HashMap::new(),
            new_reads: Vec::new(),
            new_proposals: Vec::new(),
            lease_until: None,
            was_leader: false,
            last_leader: None,
            persisted_hs,
            removed: false,
            stop: false,
            snapshot_to_save: None,
            snapshot_wanted_for: parts.snapshot_wanted_for,
            snapshot_requested: None,
        }
    }

    /// Adds an address for a node that is not a member yet (the leader a joiner contacts).
    pub(crate) fn learn_addr(&mut self, id: u64, addr: String) {
        self.learned_addrs.insert(id, addr);
    }

    /// Runs until shutdown, removal from the cluster, or a fatal error.
    pub(crate) async fn run(mut self) -> Result<()> {
        let mut ticker = tokio::time::interval(self.config.tick_interval);
        // Ticks must never come faster than the interval: leases rely on it.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut inbox = Vec::with_capacity(256);
        loop {
            if let Some(snapshot) = self.snapshot_to_save.take() {
                self.save_snapshot(snapshot).await?;
            }
            if self.raw.has_ready() {
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
        let leader_id = self.leader_id().filter(|&l| l != self.id);
        Error::NotLeader {
            leader_id,
            leader_addr: leader_id.and_then(|l| self.addr_of(l).map(str::to_string)),
        }
    }

    fn to_apply(&self, msg: ApplyMsg) {
        // The apply task only stops after the driver, or after reporting a fatal error.
        let _ = self.apply_tx.send(msg);
    }

    fn handle(&mut self, msg: DriverMsg) -> Result<()> {
        match msg {
            DriverMsg::Raft(m, from) => {
                if let Some((id, addr)) = from {
                    if self.members.get(id).is_none() && !addr.is_empty() {
                        self.learned_addrs.insert(id, addr);
                    }
                }
                if let Err(e) = self.raw.step(*m) {
                    tracing::debug!(node = self.id, "ignored raft message: {e}");
                }
            }
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
            } => self.read(query, consistency, deadline, reply),
            DriverMsg::Membership {
                action,
                node_id,
                addr,
                deadline,
                reply,
            } => self.change_membership(action, node_id, addr, deadline, reply),
            DriverMsg::TransferLeader { target, reply } => {
                let _ = reply.send(self.transfer_leader(target));
            }
            DriverMsg::Status(reply) => {
                let _ = reply.send(self.status());
            }
            DriverMsg::SnapshotTaken(snapshot) => self.snapshot_to_save = Some(*snapshot),
            DriverMsg::Unreachable(id) => self.raw.report_unreachable(id),
            DriverMsg::SnapshotStatus(id, status) => self.raw.report_snapshot(id, status),
            DriverMsg::Fatal(e) => return Err(e),
            DriverMsg::Shutdown => self.stop = true,
        }
        Ok(())
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
        msg.set_msg_type(raft::prelude::MessageType::MsgPropose);
        let last_before = self.raw.raft.raft_log.last_index();
        match self.raw.step(msg) {
            Ok(()) if self.raw.raft.raft_log.last_index() == last_before + count => {
                let metrics = &self.counters.metrics;
                metrics
                    .proposals
                    .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
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
                    Ok(()) => Error::ProposalDropped,
                };
                for (_, reply) in waiters {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }

    fn lease_valid(&self) -> bool {
        self.is_leader()
            && self.raw.raft.lead_transferee.is_none()
            && self.lease_until.is_some_and(|t| Instant::now() < t)
    }

    fn read(
        &mut self,
        query: Vec<u8>,
        consistency: ReadConsistency,
        deadline: Instant,
        reply: Responder,
    ) {
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
        if self.is_leader() {
            // A quorum heard from us after `first_issued`: none of them votes for another
            // candidate within an election timeout of that (check-quorum leases).
            let lease = self.config.min_election_timeout().mul_f64(0.8);
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
        let now = Instant::now();
        let retry = self.config.read_retry_interval;
        let mut reissue = Vec::new();
        for (ctx, batch) in self.pending_reads.iter_mut() {
            let (live, expired): (Vec<_>, Vec<_>) = batch
                .reads
                .drain(..)
                .partition(|r| r.deadline > now && !r.reply.is_closed());
            for read in expired {
                let _ = read.reply.send(Err(Error::Timeout(Duration::ZERO)));
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
        if self.is_leader() {
            self.maybe_leave_joint();
            self.maybe_promote_learners();
        }
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

    fn maybe_promote_learners(&mut self) {
        if self.conf_pending() {
            return;
        }
        let last = self.raw.raft.raft_log.last_index();
        let cs = self.raw.raft.prs().conf().to_conf_state();
        let candidate = self.members.iter().find(|m| {
            m.promote
                && cs.learners.contains(&m.id)
                && self
                    .raw
                    .raft
                    .prs()
                    .get(m.id)
                    .is_some_and(|p| p.matched + self.config.promote_lag >= last)
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

    fn change_membership(
        &mut self,
        action: MembershipAction,
        node_id: u64,
        addr: String,
        deadline: Instant,
        reply: Responder,
    ) {
        let outcome = self.plan_membership(action, node_id, addr);
        let (change, member) = match outcome {
            Ok(Some(plan)) => plan,
            Ok(None) => {
                let _ = reply.send(Ok(Vec::new()));
                return;
            }
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        if self.conf_pending() {
            let _ = reply.send(Err(Error::MembershipBusy));
            return;
        }
        let (term, seq, context) = self.next_context(member.into_iter().collect());
        match self
            .raw
            .propose_conf_change(context, single_change(change, node_id))
        {
            Ok(()) => self.register(term, seq, deadline, reply),
            Err(raft::Error::ProposalDropped) => {
                let _ = reply.send(Err(Error::MembershipBusy));
            }
            Err(e) => {
                let _ = reply.send(Err(Error::from(e)));
            }
        }
    }

    /// What conf change a request needs: `None` when it is already in effect.
    fn plan_membership(
        &mut self,
        action: MembershipAction,
        node_id: u64,
        addr: String,
    ) -> Result<Option<(ConfChangeType, Option<Member>)>> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        if node_id == 0 {
            return Err(Error::Invalid("node id 0 is reserved".into()));
        }
        let cs = self.raw.raft.prs().conf().to_conf_state();
        let is_voter = cs.voters.contains(&node_id);
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
                    if known_addr.as_deref() == Some(addr.as_str()) {
                        return Ok(None);
                    }
                    return Err(Error::Invalid(format!(
                        "node {node_id} is already a member at {}; remove it first",
                        known_addr.unwrap_or_default()
                    )));
                }
                let promote = action == MembershipAction::Join;
                Ok(Some((
                    ConfChangeType::AddLearnerNode,
                    Some(member(promote)),
                )))
            }
            MembershipAction::Promote => {
                if is_voter {
                    return Ok(None);
                }
                if !is_learner {
                    return Err(Error::Invalid(format!("node {node_id} is not a learner")));
                }
                let m = Member {
                    id: node_id,
                    addr: known_addr.unwrap_or(addr),
                    promote: false,
                };
                Ok(Some((ConfChangeType::AddNode, Some(m))))
            }
            MembershipAction::Remove => {
                if !is_voter && !is_learner {
                    return Ok(None);
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
                        .max_by_key(|&v| self.raw.raft.prs().get(v).map_or(0, |p| p.matched));
                    if let Some(target) = target {
                        tracing::info!(
                            node = self.id,
                            target,
                            "transferring leadership before leaving"
                        );
                        self.lease_until = None;
                        self.raw.transfer_leader(target);
                    }
                    return Err(Error::NotLeader {
                        leader_id: None,
                        leader_addr: None,
                    });
                }
                Ok(Some((ConfChangeType::RemoveNode, None)))
            }
        }
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
        self.lease_until = None;
        self.raw.transfer_leader(target);
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
            snapshot_index: storage.snapshot().map(|s| snapshot_index(&s)).unwrap_or(0),
            first_log_index: storage.first_index().unwrap_or(0),
            last_log_index: raft.raft_log.last_index(),
            pending_proposals: Counters::get(&self.counters.pending_proposals),
            pending_reads: self
                .pending_reads
                .values()
                .map(|b| b.reads.len() as u64)
                .sum::<u64>()
                + Counters::get(&self.counters.pending_apply_reads),
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
            Error::Storage(e)
        })
    }

    async fn save_snapshot(&mut self, snapshot: Snapshot) -> Result<()> {
        let index = snapshot_index(&snapshot);
        let compact_to = index.saturating_sub(self.config.snapshot_log_tail);
        self.write(move |s| {
            s.save_snapshot(&snapshot)?;
            if compact_to > 0 {
                s.compact(compact_to)?;
            }
            Ok(())
        })
        .await?;
        tracing::debug!(
            node = self.id,
            index,
            compact_to,
            "snapshot saved, log compacted"
        );
        Ok(())
    }

    fn send_messages(&mut self, messages: Vec<Message>) {
        for msg in messages {
            let to = msg.to;
            let addr = self
                .members
                .addr(to)
                .or_else(|| self.learned_addrs.get(&to).map(String::as_str));
            match addr {
                Some(addr) => {
                    if !self.peers.send(msg, addr) {
                        self.raw.report_unreachable(to);
                    }
                }
                None => tracing::debug!(
                    node = self.id,
                    peer = to,
                    "no address for peer; message dropped"
                ),
            }
        }
    }

    async fn on_ready(&mut self) -> Result<()> {
        let mut ready = self.raw.ready();

        // 1. A leader may send before its own write: followers persist in parallel.
        self.send_messages(ready.take_messages());

        // 2. A snapshot from the leader replaces the log, then the state machine.
        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot().clone();
            let to_store = snapshot.clone();
            self.write(move |s| s.install_snapshot(&to_store)).await?;
            match open_envelope(&snapshot.data) {
                Ok(envelope) => self.members = Members::from_list(envelope.members),
                Err(e) => return Err(Error::Config(format!("received a bad snapshot: {e}"))),
            }
            tracing::info!(
                node = self.id,
                index = snapshot_index(&snapshot),
                "installed snapshot from leader"
            );
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

        // 6. Advance, then the light ready.
        let mut light = self.raw.advance(ready);
        self.send_messages(light.take_messages());
        self.hand_to_apply(light.take_committed_entries());
        self.raw.advance_apply();
        Ok(())
    }

    fn hand_to_apply(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
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
        if result.is_ok() {
            let context = entry_context(&entry.context);
            for change in &cc.changes {
                let id = change.node_id;
                let from_context = context
                    .as_ref()
                    .and_then(|c| c.members.iter().find(|m| m.id == id).cloned());
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
        self.last_leader = leader_id;
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
    tx.send(make(reply)).await.map_err(|_| Error::Shutdown)?;
    rx.await.map_err(|_| Error::Shutdown)
}
