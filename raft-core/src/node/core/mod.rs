//! The node core: the only owner of the `RawNode`, as a synchronous state machine with no
//! I/O and no clock of its own.
//!
//! [`NodeCore`] is to the node what `quinn_proto::Connection` is to a QUIC connection. It
//! never blocks, never spawns, never reads the time: every call takes `now`, and everything
//! it wants done comes out of [`NodeCore::poll_output`] as an [`Output`] (a raft message to
//! send, a durable write, a snapshot to save, work for the apply task). Whoever drives it
//! decides how outputs are carried out: the tokio task in [`super::driver`] uses
//! channels, timers and blocking threads; the simulator in `raft_core::testing::simulation`
//! uses simulated time, network and disk, so one seed replays one interleaving exactly.
//!
//! The driving loop, in order:
//! 1. feed inputs with [`NodeCore::handle`] (peers' raft messages, client operations, status
//!    requests, reports) and [`NodeCore::tick`] once per tick interval;
//! 2. call [`NodeCore::turn`]: the turn's proposals become one raft message, its
//!    linearizable reads one ReadIndex, and at most one `Ready` is handled, in the order
//!    raft-rs documents (leader messages, committed entries to the apply task, the durable
//!    write, persisted messages, advance, light ready);
//! 3. carry out the outputs. When the turn needs a durable write ([`Output::Write`]), the
//!    `Ready` stays in hand ([`NodeCore::writing`]): no input may be fed until the write's
//!    result comes back through [`NodeCore::write_done`], which finishes the `Ready` and the
//!    turn. Proposals that arrive meanwhile wait with the driver, and all go into the next
//!    `Ready`: N concurrent clients cost one fsync.
//!
//! A send the driver could not queue is reported back with [`NodeCore::send_failed`]; the
//! apply task's progress with [`NodeCore::applied`]. Raft-rs learns the real applied index,
//! the leader refuses new proposals while the state machine lags too far, and a follower
//! whose state machine lags stops taking new committed entries until it catches up.
//!
//! Every raft message from a peer is checked against this node's state before it is stepped
//! ([`super::inbound`]). The core's work is split by concern: proposals.rs (batching, entry
//! contexts, overload), reads.rs (ReadIndex batches, the lease), conf_changes.rs (membership
//! and leadership transfer), ready.rs (one `Ready`, snapshot saving, the apply backlog). This
//! file holds the state, inputs and outputs, inbound messages, ticks and status.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use raft::prelude::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, Entry,
    EntryType, HardState, Message, MessageType, Snapshot,
};
use raft::{RawNode, ReadState, Ready, SnapshotStatus, StateRole};
use raft_proto::ConfChangeI;

use super::inbound::{check_local, LocalView, MAX_ADDR};
use super::membership::{entry_context, open_members, Members};
use super::messages::{
    ApplyMsg, CommittedEntry, ConfOutcome, DriverMsg, MembershipChange, ReadOp, Responder,
};
use super::op::Op;
use super::progress::{member_progress, LastContact};
use super::snapshot_transfer::ReceivedPayloads;
use super::Counters;
use crate::config::Config;
use crate::error::{Error, Result, StorageError};
use crate::log_storage::{snapshot_index, LogStorage, RaftStorage};
use crate::metrics::NodeMetrics;
use crate::records::{EntryContext, Member};
use crate::snapshot_payload::SnapshotPayload;
use crate::status::{ReadConsistency, Role, Status};
use crate::wire::{self, MembershipAction};

mod conf_changes;
mod proposals;
mod reads;
mod ready;

use conf_changes::sorted;
use proposals::QueuedProposal;
use reads::{PendingRead, ReadBatch};
use ready::{ApplyBacklog, WriteInHand};
pub(crate) use ready::{LogWrite, SnapshotSave};

/// Most addresses a node without configuration keeps for nodes it heard from.
const MAX_LEARNED_ADDRS: usize = 16;
/// Senders to peers that are no longer members are reaped every this many ticks.
const REAP_EVERY_TICKS: u64 = 50;

/// Everything the core needs to start.
pub(crate) struct CoreParts {
    pub(crate) id: u64,
    pub(crate) config: Config,
    pub(crate) raw: RawNode<RaftStorage>,
    /// Read only, for status (snapshot index, first log index); every write is an output.
    pub(crate) storage: Arc<dyn LogStorage>,
    pub(crate) members: Members,
    pub(crate) counters: Arc<Counters>,
    pub(crate) snapshot_wanted_for: Arc<AtomicU64>,
    /// Makes this node's ReadIndex contexts unique across its restarts.
    pub(crate) read_nonce: u64,
    /// Payloads of snapshots received from the leader, taken when raft-rs hands the snapshot
    /// back to install.
    pub(crate) received_payloads: Arc<ReceivedPayloads>,
}

/// What the core wants done; see [`NodeCore::poll_output`].
// Outputs are drained right after the call that made them; boxing the message would cost an
// allocation per raft message instead.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Output {
    /// Queue a raft message for a peer. If it cannot be queued, report it with
    /// [`NodeCore::send_failed`].
    Send { msg: Message, addr: Arc<str> },
    /// Write durably, then report with [`NodeCore::write_done`]. At most one is in flight.
    Write(LogWrite),
    /// Save a snapshot the apply task took and compact the log behind it, then report with
    /// [`DriverMsg::SnapshotSaved`]. At most one is in flight.
    SaveSnapshot(Box<SnapshotSave>),
    /// Work for the apply task, in order.
    Apply(ApplyMsg),
    /// Stop sending to this peer: it left the cluster.
    RemovePeer(u64),
    /// Stop sending to every peer not in this list.
    RetainPeers(Vec<u64>),
}

pub(crate) struct NodeCore {
    id: u64,
    config: Config,
    raw: RawNode<RaftStorage>,
    storage: Arc<dyn LogStorage>,
    /// Drained by the driver after every batch of inputs and every turn, so it holds what
    /// one inbox batch (at most 4096 messages) and one `Ready` produce.
    outputs: VecDeque<Output>,
    /// The time of the call in progress.
    now: Instant,
    /// The applied index the apply task last reported.
    applied: u64,
    /// The applied index raft-rs has been told.
    raft_applied: u64,
    backlog: ApplyBacklog,
    members: Members,
    /// Addresses of nodes that are not members, while this node has no configuration yet
    /// (the leader it joins through). Bounded by [`MAX_LEARNED_ADDRS`].
    learned_addrs: HashMap<u64, Arc<str>>,
    counters: Arc<Counters>,
    seq: u64,
    read_nonce: u64,
    read_seq: u64,
    /// Ordered, so ticks reissue reads in the same order on every run.
    pending_reads: BTreeMap<Vec<u8>, ReadBatch>,
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
    /// The hard state of the newest write handed out.
    written_hs: HardState,
    /// The `Ready`s whose durable writes are in flight, oldest first.
    in_hand: VecDeque<WriteInHand>,
    /// The log storage writes in place (see [`LogStorage::writes_in_place`]): each `Ready` is
    /// held, there is no write to overlap with.
    writes_in_place: bool,
    removed: bool,
    stop: bool,
    /// Reports for raft-rs collected while a `Ready` was in hand; stepped after `advance`.
    unreachable: Vec<u64>,
    snapshot_failed: Vec<u64>,
    /// A snapshot the apply task took, waiting for the storage thread.
    snapshot_to_save: Option<(Snapshot, SnapshotPayload)>,
    /// A snapshot is being written by a storage thread.
    saving_snapshot: bool,
    snapshot_wanted_for: Arc<AtomicU64>,
    /// Peer and time of the last snapshot requested from the apply task.
    snapshot_requested: Option<(u64, Instant)>,
    ticks: u64,
    /// The configuration changed this turn: the server side's member list needs updating.
    conf_changed: bool,
    /// The store lags so far that Readies are rationed (see [`NodeCore::apply_stalled`]).
    stalled: bool,
    /// A rationed Ready may be handled (set once per tick).
    ready_this_tick: bool,
    /// When each member last sent this node a raft message, for [`Status::progress`].
    last_contact: LastContact,
    received_payloads: Arc<ReceivedPayloads>,
}

impl NodeCore {
    pub(crate) fn new(parts: CoreParts, now: Instant) -> Self {
        parts.counters.live.send_modify(|live| live.id = parts.id);
        let persisted_hs = parts.raw.raft.hard_state();
        let writes_in_place = parts.storage.writes_in_place();
        let raft_applied = parts.raw.raft.raft_log.applied;
        NodeCore {
            id: parts.id,
            config: parts.config,
            raw: parts.raw,
            storage: parts.storage,
            outputs: VecDeque::new(),
            now,
            applied: raft_applied,
            raft_applied,
            backlog: ApplyBacklog {
                handed: raft_applied,
                ..ApplyBacklog::default()
            },
            members: parts.members,
            learned_addrs: HashMap::new(),
            counters: parts.counters,
            seq: 0,
            read_nonce: parts.read_nonce,
            read_seq: 0,
            pending_reads: BTreeMap::new(),
            new_reads: Vec::new(),
            new_proposals: Vec::new(),
            lease_until: None,
            transfer_term: None,
            was_leader: false,
            last_leader: None,
            written_hs: persisted_hs.clone(),
            persisted_hs,
            in_hand: VecDeque::new(),
            writes_in_place,
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
            received_payloads: parts.received_payloads,
        }
    }

    /// Adds an address for a node that is not a member yet (the leader a joiner contacts).
    pub(crate) fn learn_addr(&mut self, id: u64, addr: String) {
        if self.learned_addrs.len() < MAX_LEARNED_ADDRS && addr.len() <= MAX_ADDR {
            self.learned_addrs.insert(id, Arc::from(addr));
        }
    }

    /// The next thing to carry out, oldest first.
    pub(crate) fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// How many durable writes are in flight.
    #[cfg(test)]
    pub(crate) fn writes_in_flight(&self) -> usize {
        self.in_hand.len()
    }

    /// True once the node should stop: shut down, or removed from the cluster.
    pub(crate) fn stopped(&self) -> bool {
        self.stop
    }

    /// This node's id.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The apply task applied everything up to `index`.
    pub(crate) fn applied(&mut self, index: u64) {
        self.applied = self.applied.max(index);
    }

    /// One tick interval passed.
    pub(crate) fn tick(&mut self, now: Instant) {
        self.now = now;
        self.raw.tick();
        self.on_tick();
    }

    /// A message for the peer `to` could not be queued; raft-rs hears of it at the end of
    /// the turn.
    pub(crate) fn send_failed(&mut self, to: u64, snapshot: bool) {
        self.unreachable.push(to);
        if snapshot {
            // raft-rs waits in "snapshot" state until it hears how the transfer went.
            self.snapshot_failed.push(to);
        }
    }

    /// Handles the inputs gathered since the last turn, then at most one `Ready`. If the
    /// `Ready` needs a durable write, the turn ends in [`NodeCore::write_done`].
    pub(crate) fn turn(&mut self, now: Instant) -> Result<()> {
        debug_assert!(!self.holding_ready(), "a turn while a Ready is held");
        self.now = now;
        self.flush_proposals();
        self.flush_reads();
        // raft-rs hears of the applied index first: a save compacts no further than that.
        self.sync_applied();
        self.start_snapshot_save();
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
        if self.may_take_ready()
            && self.raw.has_ready()
            && (!stalled || std::mem::take(&mut self.ready_this_tick))
        {
            self.on_ready()?;
        }
        if !self.holding_ready() {
            self.after_turn();
        }
        Ok(())
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The current term.
    #[cfg(feature = "testing")]
    pub(crate) fn term(&self) -> u64 {
        self.raw.raft.term
    }

    fn leader_id(&self) -> Option<u64> {
        let l = self.raw.raft.leader_id;
        (l != raft::INVALID_ID).then_some(l)
    }

    fn addr_of(&self, id: u64) -> Option<&str> {
        self.members
            .addr(id)
            .or_else(|| self.learned_addrs.get(&id).map(|a| &**a))
    }

    /// [`NodeCore::addr_of`], shared: what each sent message carries.
    fn shared_addr_of(&self, id: u64) -> Option<Arc<str>> {
        self.members
            .shared_addr(id)
            .or_else(|| self.learned_addrs.get(&id).cloned())
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

    fn send_to_apply(&mut self, msg: ApplyMsg) {
        self.outputs.push_back(Output::Apply(msg));
    }

    /// True when this node has no configuration: it has not joined a cluster yet, or it lost
    /// its disk and waits to be re-admitted.
    fn conf_empty(&self) -> bool {
        let conf = self.raw.raft.prs().conf();
        conf.voters().ids().is_empty() && conf.learners().is_empty()
    }

    /// Handles one message; what it asks for happens at the next [`NodeCore::turn`].
    pub(crate) fn handle(&mut self, msg: DriverMsg, now: Instant) -> Result<()> {
        debug_assert!(!self.holding_ready(), "an input while a Ready is held");
        self.now = now;
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
                // The apply task took it at its applied index, which it may not have
                // published yet: without this the save would compact only to an older one.
                self.applied(snapshot_index(&snapshot.0));
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
            Op::Propose(data, session) => self.propose(data, session, deadline, reply),
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
    fn step_remote(&mut self, msg: Message, from_addr: Option<std::sync::Arc<str>>) {
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
                    msg.get_msg_type(),
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
                    self.learn_addr(msg.from, addr.to_string());
                }
            }
        }
        if self.raw.raft.prs().get(msg.from).is_some() {
            self.last_contact.record(msg.from, self.now);
        }
        // A snapshot may replace the configuration.
        self.conf_changed |= msg.get_msg_type() == MessageType::MsgSnapshot;
        if let Err(e) = self.raw.step(msg) {
            tracing::debug!(node = self.id, "ignored raft message: {e}");
        }
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        self.ready_this_tick = true;
        let now = self.now;
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
        if self.ticks % REAP_EVERY_TICKS == 0 {
            self.reap_senders();
        }
        if self.is_leader() {
            self.maybe_leave_joint();
            self.maybe_promote_learners();
        }
    }

    /// Stops the sender tasks of nodes that are neither members nor a join in progress.
    fn reap_senders(&mut self) {
        let keep = self
            .members
            .to_list()
            .iter()
            .map(|m| m.id)
            .chain(self.learned_addrs.keys().copied())
            .collect();
        self.outputs.push_back(Output::RetainPeers(keep));
        let prs = self.raw.raft.prs();
        self.last_contact.retain(|id| prs.get(id).is_some());
    }

    /// This node's role; a follower that is a learner in the configuration is a learner.
    fn role(&self) -> Role {
        let raft = &self.raw.raft;
        match raft.state {
            StateRole::Leader => Role::Leader,
            StateRole::Candidate => Role::Candidate,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Follower if raft.prs().conf().learners().contains(&self.id) => Role::Learner,
            StateRole::Follower => Role::Follower,
        }
    }

    /// Updates what `Mailbox::watch_status` subscribers see, if anything changed: compared
    /// first, so a turn with no change notifies nobody and allocates nothing. The member
    /// lists are read only when `conf_changed`.
    fn publish_live(&self, leader_id: Option<u64>, conf_changed: bool) {
        let role = self.role();
        let term = self.raw.raft.term;
        let members = conf_changed.then(|| {
            let cs = self.raw.raft.prs().conf().to_conf_state();
            (sorted(cs.voters), sorted(cs.learners))
        });
        self.counters.live.send_if_modified(|live| {
            let mut changed = false;
            if live.role != role || live.leader_id != leader_id || live.term != term {
                live.role = role;
                live.leader_id = leader_id;
                live.term = term;
                changed = true;
            }
            if let Some((voters, learners)) = members {
                if live.voters != voters || live.learners != learners {
                    live.voters = voters;
                    live.learners = learners;
                    changed = true;
                }
            }
            changed
        });
    }

    /// What the node reports about itself.
    pub(crate) fn status(&self) -> Status {
        let raft = &self.raw.raft;
        let cs = raft.prs().conf().to_conf_state();
        let role = self.role();
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
            progress: member_progress(raft, &self.last_contact, self.now),
        }
    }
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

    /// A core for node 1, the only voter of a cluster whose learner 2 has no known address.
    fn lone_leader_with_unreachable_learner() -> NodeCore {
        lone_leader_configured(Config::default())
    }

    /// [`lone_leader_with_unreachable_learner`] with `config`.
    fn lone_leader_configured(config: Config) -> NodeCore {
        let storage = MemLogStorage::new();
        let members = vec![Member {
            id: 1,
            addr: "node-1".into(),
            promote: false,
        }];
        let snapshot = Snapshot {
            data: seal_envelope(0, members.clone(), Vec::new()).into(),
            metadata: Some(SnapshotMetadata {
                conf_state: Some(ConfState::from((vec![1], vec![2]))).into(),
                index: 1,
                term: 1,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        storage.install_snapshot(&snapshot).unwrap();
        let log: Arc<dyn LogStorage> = Arc::new(storage);
        let raw = RawNode::new(
            &config.to_raft(1, 1),
            RaftStorage {
                log: log.clone(),
                snapshot_wanted_for: Arc::new(AtomicU64::new(0)),
                snapshot_floor: HashMap::new(),
                unsynced: Default::default(),
            },
            &raft_logger(1),
        )
        .unwrap();
        NodeCore::new(
            CoreParts {
                id: 1,
                config,
                raw,
                storage: log.clone(),
                members: Members::from_list(members),
                counters: Arc::new(Counters::default()),
                snapshot_wanted_for: Arc::new(AtomicU64::new(0)),
                read_nonce: 7,
                received_payloads: Default::default(),
            },
            Instant::now(),
        )
    }

    /// Runs one turn to its end, carrying out writes in place, and returns the messages sent.
    fn turn(core: &mut NodeCore) -> Vec<Message> {
        let now = Instant::now();
        core.turn(now).unwrap();
        let mut sent = Vec::new();
        while let Some(output) = core.poll_output() {
            match output {
                Output::Write(write) => {
                    let result = write.run(core.storage.as_ref());
                    core.write_done(result, now).unwrap();
                }
                Output::Send { msg, .. } => sent.push(msg),
                _ => {}
            }
        }
        sent
    }

    /// A snapshot that could not be handed to the peer's sender (here: no address) is
    /// reported as failed, so raft-rs leaves the "snapshot" state and tries again instead of
    /// waiting for a report that never comes.
    #[test]
    fn a_snapshot_that_cannot_be_sent_is_reported_failed() {
        let mut core = lone_leader_with_unreachable_learner();
        core.raw.campaign().unwrap();
        assert!(core.is_leader());
        turn(&mut core);
        // Make the learner need entries the log no longer has: raft-rs sends a snapshot.
        let learner = core.raw.raft.mut_prs().get_mut(2).unwrap();
        learner.next_idx = 1;
        learner.recent_active = true;
        learner.resume();
        core.raw.raft.send_append(2);
        assert_eq!(
            core.raw.raft.prs().get(2).unwrap().state,
            ProgressState::Snapshot
        );
        turn(&mut core);
        assert_eq!(
            core.raw.raft.prs().get(2).unwrap().state,
            ProgressState::Probe,
            "the undeliverable snapshot was reported"
        );
    }

    /// A write holds the `Ready` until it is reported; the votes and responses it persists
    /// leave only after that.
    #[test]
    fn persisted_messages_wait_for_the_write() {
        let mut core = lone_leader_with_unreachable_learner();
        core.raw.campaign().unwrap();
        let now = Instant::now();
        core.turn(now).unwrap();
        let mut write = None;
        while let Some(output) = core.poll_output() {
            if let Output::Write(w) = output {
                write = Some(w);
            }
        }
        let write = write.expect("becoming leader writes the new term");
        assert_eq!(core.writes_in_flight(), 1);
        assert!(core.poll_output().is_none());
        core.write_done(write.run(core.storage.as_ref()), now)
            .unwrap();
        assert_eq!(core.writes_in_flight(), 0);
        assert_eq!(core.storage.initial_state().unwrap().hard_state.term, 2);
    }

    /// The apply task sends a snapshot before the driver hears that it applied that far:
    /// the save still compacts the log up to the snapshot, not to an older applied index
    /// (a lagging peer then needs the snapshot, as it should).
    #[test]
    fn a_snapshot_save_compacts_to_the_snapshot_before_the_applied_index_is_heard() {
        let mut core = lone_leader_configured(Config {
            snapshot_log_tail: 0,
            ..Config::default()
        });
        core.raw.campaign().unwrap();
        turn(&mut core);
        for n in 0..5u8 {
            core.raw.propose(Vec::new(), vec![n]).unwrap();
        }
        turn(&mut core);
        let committed = core.raw.raft.raft_log.committed;
        assert!(committed >= 6, "the proposals committed: {committed}");
        let snapshot = Snapshot {
            data: Vec::new().into(),
            metadata: Some(SnapshotMetadata {
                conf_state: Some(ConfState::from((vec![1], vec![2]))).into(),
                index: committed,
                term: core.term(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let payload = SnapshotPayload::inline(Vec::new());
        core.handle(
            DriverMsg::SnapshotTaken(Box::new((snapshot, payload))),
            Instant::now(),
        )
        .unwrap();
        core.turn(Instant::now()).unwrap();
        let mut compacted_to = None;
        while let Some(output) = core.poll_output() {
            if let Output::SaveSnapshot(save) = output {
                compacted_to = Some(save.compact_to);
            }
        }
        assert_eq!(compacted_to, Some(committed));
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
