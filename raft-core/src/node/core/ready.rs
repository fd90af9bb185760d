//! One `Ready`, in the order raft-rs documents: messages, committed entries to the apply
//! task, the durable write (a snapshot from the leader first), persisted messages, advance;
//! plus snapshot saving and the apply backlog.

use super::super::membership::open_payload_ref;
use super::*;
use crate::log_storage::snapshot_term;
use crate::snapshot_payload::SnapshotPayload;
use crate::unsynced_entries::WrittenRange;

/// Committed entries handed to the apply task and not yet applied, for back-pressure.
#[derive(Default)]
pub(super) struct ApplyBacklog {
    /// `(last index, bytes)` of each batch handed over, oldest first.
    pub(super) batches: VecDeque<(u64, u64)>,
    pub(super) bytes: u64,
    /// The last index handed over.
    pub(super) handed: u64,
}

impl ApplyBacklog {
    pub(super) fn push(&mut self, last: u64, bytes: u64) {
        self.batches.push_back((last, bytes));
        self.bytes += bytes;
        self.handed = self.handed.max(last);
    }

    /// Forgets what the apply task has applied.
    pub(super) fn applied(&mut self, applied: u64) {
        while let Some(&(last, bytes)) = self.batches.front() {
            if last > applied {
                break;
            }
            self.batches.pop_front();
            self.bytes -= bytes;
        }
        self.handed = self.handed.max(applied);
    }

    pub(super) fn entries(&self, applied: u64) -> u64 {
        self.handed.saturating_sub(applied)
    }
}

/// One durable write: a snapshot from the leader to install first, if any, then entries and
/// the hard state, in one `LogStorage` call each.
pub(crate) struct LogWrite {
    pub(crate) snapshot: Option<Arc<Snapshot>>,
    /// The snapshot's payload, when it came apart from the snapshot's data.
    pub(crate) payload: Option<SnapshotPayload>,
    pub(crate) entries: Vec<Entry>,
    pub(crate) hard_state: Option<HardState>,
}

impl LogWrite {
    /// Carries the write out; on a storage thread in production, in place in simulation.
    pub(crate) fn run(self, storage: &dyn LogStorage) -> Result<(), StorageError> {
        if let Some(snapshot) = &self.snapshot {
            match self.payload {
                Some(payload) => storage.install_snapshot_with(snapshot, payload)?,
                None => storage.install_snapshot(snapshot)?,
            }
        }
        if !self.entries.is_empty() || self.hard_state.is_some() {
            storage.append_owned(self.entries, self.hard_state.as_ref())?;
        }
        Ok(())
    }

    /// Takes `next` into this write, so one storage call (one sync) carries both: its entries
    /// replace this write's from their first index on, as a second append would, and its
    /// hard state is the newer one. A write with a snapshot is never merged (false).
    pub(crate) fn absorb(&mut self, next: LogWrite) -> Result<(), LogWrite> {
        if self.snapshot.is_some() || next.snapshot.is_some() {
            return Err(next);
        }
        if let (Some(front), Some(first)) = (
            self.entries.first().map(|e| e.index),
            next.entries.first().map(|e| e.index),
        ) {
            let keep = usize::try_from(first.saturating_sub(front)).unwrap_or(usize::MAX);
            self.entries.truncate(keep);
        }
        self.entries.extend(next.entries);
        if next.hard_state.is_some() {
            self.hard_state = next.hard_state;
        }
        Ok(())
    }
}

/// Saving a snapshot the apply task took, then compacting the log behind it.
pub(crate) struct SnapshotSave {
    pub(crate) snapshot: Snapshot,
    /// The user's state, stored with the snapshot.
    pub(crate) payload: SnapshotPayload,
    /// Compact the log up to here (0: not at all).
    pub(crate) compact_to: u64,
}

impl SnapshotSave {
    /// Carries the save out; returns the snapshot's index. On a storage thread in production,
    /// in place in simulation.
    pub(crate) fn run(self, storage: &dyn LogStorage) -> Result<u64, StorageError> {
        storage.save_snapshot_with(&self.snapshot, self.payload)?;
        if self.compact_to > 0 {
            storage.compact(self.compact_to)?;
        }
        Ok(snapshot_index(&self.snapshot))
    }
}

/// Most `Ready` writes in flight at once: enough to keep the log writer busy while the node
/// goes on taking messages, few enough that the unsynced entries stay small.
const MAX_WRITES_IN_FLIGHT: usize = 8;

/// A `Ready` whose write is in flight, and what happens once the write is durable.
pub(super) enum WriteInHand {
    /// The `Ready` is held until its write is durable and only then advanced; the core takes
    /// no input meanwhile. For a snapshot from the leader (it replaces the log raft-rs reads)
    /// and for logs written in place.
    Held {
        ready: Box<Ready>,
        /// A snapshot from the leader and the members it names: the apply task restores it,
        /// then takes the committed entries, once it is in the log storage. Shared with the
        /// write, so a large snapshot is held once.
        snapshot: Option<(Arc<Snapshot>, Vec<Member>)>,
        hard_state: Option<HardState>,
    },
    /// The `Ready` was advanced when its write was handed out; its entries are read from the
    /// unsynced entries until the write is durable, and the core goes on meanwhile.
    Advanced {
        number: u64,
        /// Votes and append responses: they may leave only once the write is durable.
        persisted_messages: Vec<Message>,
        read_states: Vec<ReadState>,
        written: WrittenRange,
        hard_state: Option<HardState>,
        /// False when the Ready had nothing to write: it completes with the write before it.
        io: bool,
    },
}

impl WriteInHand {
    fn stores_commit_below(&self, index: u64) -> bool {
        let (WriteInHand::Held { hard_state, .. } | WriteInHand::Advanced { hard_state, .. }) =
            self;
        hard_state.as_ref().is_some_and(|hs| hs.commit < index)
    }
}

/// True when a held `Ready` installs a snapshot from the leader.
fn snapshot_pending(held: &WriteInHand) -> bool {
    matches!(
        held,
        WriteInHand::Held {
            snapshot: Some(_),
            ..
        }
    )
}

impl NodeCore {
    /// Starts saving the newest snapshot the apply task took, unless one is being saved
    /// already. The core keeps running meanwhile: a large snapshot never delays heartbeats.
    /// The result comes back as [`DriverMsg::SnapshotSaved`].
    pub(super) fn start_snapshot_save(&mut self) {
        if self.saving_snapshot {
            return;
        }
        let Some(index) = self
            .snapshot_to_save
            .as_ref()
            .map(|(s, _)| snapshot_index(s))
        else {
            return;
        };
        // A save raises the stored commit index to the snapshot's; a write in flight that
        // stores an older hard state would lower it again behind the snapshot (the snapshot
        // came from entries a later Ready committed). The save waits for such writes.
        if self.in_hand.iter().any(|w| w.stores_commit_below(index)) {
            return;
        }
        let Some((snapshot, payload)) = self.snapshot_to_save.take() else {
            return;
        };
        self.saving_snapshot = true;
        // Never compact past what raft-rs knows is applied: it reads that range to decide
        // whether it may campaign.
        let compact_to = snapshot_index(&snapshot)
            .saturating_sub(self.config.snapshot_log_tail)
            .min(self.raft_applied);
        self.outputs
            .push_back(Output::SaveSnapshot(Box::new(SnapshotSave {
                snapshot,
                payload,
                compact_to,
            })));
    }

    pub(super) fn send_messages(&mut self, messages: Vec<Message>) {
        for mut msg in messages {
            if msg.from != self.id {
                // A follower passes a peer's read-index request on to its leader unchanged;
                // when the peer it came from is that leader now, the request would come home
                // as "from the leader to the leader", which its checks refuse, and a
                // transport refuses a sender speaking for another. The peer asks again
                // after `read_retry_interval`. Found by the simulator (seed 41).
                tracing::debug!(
                    node = self.id,
                    from = msg.from,
                    to = msg.to,
                    "not relaying a peer's message"
                );
                continue;
            }
            if !self.mend_batched_append(&mut msg) {
                continue;
            }
            let to = msg.to;
            match self.shared_addr_of(to) {
                Some(addr) => self.outputs.push_back(Output::Send { msg, addr }),
                None => {
                    tracing::debug!(
                        node = self.id,
                        peer = to,
                        "no address for peer; message dropped"
                    );
                    if msg.get_msg_type() == MessageType::MsgSnapshot {
                        self.snapshot_failed.push(to);
                    }
                }
            }
        }
    }

    /// Mends an append raft-rs 0.7 built wrong, or drops it (false): with `batch_append`,
    /// entries sent after a rejection are merged into an empty append still queued for the
    /// same follower (`try_batching` takes "no entries yet" as continuous), so the message
    /// says "after index N" but carries entries from some M <= N. The follower would refuse
    /// it ([`super::super::inbound`]). What the leader meant is the entries' own append: after
    /// the entry before the first, with that entry's term. Found by the simulator (seed 1).
    fn mend_batched_append(&self, msg: &mut Message) -> bool {
        if msg.get_msg_type() != MessageType::MsgAppend {
            return true;
        }
        let Some(first) = msg.entries.first().map(|e| e.index) else {
            return true;
        };
        if first == msg.index + 1 {
            return true;
        }
        // Mend only what this leader sent in its own term: its log has only grown since
        // raft-rs built the message. A stale message from an earlier term could be stamped
        // with a term from a log that was since overwritten.
        if !self.is_leader() || msg.term != self.raw.raft.term {
            return false;
        }
        let prev = first.saturating_sub(1);
        match self.raw.raft.raft_log.term(prev) {
            // raft-rs answers 0 for an index below its first entry (compacted meanwhile).
            Ok(term) if prev > 0 && term > 0 => {
                tracing::debug!(
                    node = self.id,
                    peer = msg.to,
                    said = msg.index,
                    prev,
                    "mended a batched append"
                );
                msg.index = prev;
                msg.log_term = term;
                true
            }
            // The entry before them is compacted: raft-rs sends a snapshot on the next probe.
            _ => false,
        }
    }

    /// Applies what the apply task finished: raft-rs learns the real applied index, and the
    /// backlog shrinks.
    pub(super) fn sync_applied(&mut self) {
        let applied = self.applied;
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
    pub(super) fn apply_stalled(&self) -> bool {
        !self.is_leader()
            && self.backlog.bytes > self.config.max_apply_backlog_bytes.saturating_mul(2)
    }

    /// Whether the core may take a new `Ready` now: never while one is held, and only up to
    /// [`MAX_WRITES_IN_FLIGHT`]. A snapshot from the leader waits until every earlier write is
    /// durable, so it is held alone.
    pub(super) fn may_take_ready(&self) -> bool {
        if self.holding_ready() || self.in_hand.len() >= MAX_WRITES_IN_FLIGHT {
            return false;
        }
        self.in_hand.is_empty() || self.raw.raft.raft_log.unstable.snapshot.is_none()
    }

    /// True while a `Ready` is held: the core takes no input but [`NodeCore::write_done`].
    pub(crate) fn holding_ready(&self) -> bool {
        matches!(self.in_hand.front(), Some(WriteInHand::Held { .. }))
    }

    /// The first half of a `Ready`, up to its durable write.
    pub(super) fn on_ready(&mut self) -> Result<()> {
        let mut ready = self.raw.ready();

        // 1. A leader may send before its own write: followers persist in parallel.
        self.send_messages(ready.take_messages());

        // 2. A snapshot from the leader replaces the log, then the state machine. It was
        // checked (conf state, envelope) before raft saw it.
        let mut payload_in_hand = None;
        let snapshot = if ready.snapshot().is_empty() {
            None
        } else {
            let snapshot = ready.snapshot().clone();
            let unreadable = |e| {
                Error::config(format!(
                    "a snapshot that passed its checks is unreadable: {e}"
                ))
            };
            let members = open_members(&snapshot.data).map_err(unreadable)?;
            if open_payload_ref(&snapshot.data)
                .map_err(unreadable)?
                .is_some()
            {
                let (index, term) = (snapshot_index(&snapshot), snapshot_term(&snapshot));
                let payload = self.received_payloads.take(index, term).ok_or_else(|| {
                    Error::config(format!(
                        "the payload of the snapshot at {index} (term {term}) was not received"
                    ))
                })?;
                payload_in_hand = Some(payload);
            }
            Some((Arc::new(snapshot), members))
        };

        // 3. Committed entries go to the apply task while the write is in flight, unless
        // they follow a snapshot that is not installed yet.
        if snapshot.is_none() {
            self.hand_to_apply(ready.take_committed_entries());
        }

        // 4. One durable write for the snapshot, entries and hard state.
        let entries = ready.take_entries();
        let hs = self.raw.raft.hard_state();
        let vote_changed = hs.term != self.written_hs.term || hs.vote != self.written_hs.vote;
        let hard_state = (!entries.is_empty() || vote_changed).then_some(hs);
        if let Some(hs) = &hard_state {
            self.written_hs = hs.clone();
        }
        let io = snapshot.is_some() || hard_state.is_some();
        if snapshot.is_some() || self.writes_in_place {
            let write = io.then(|| LogWrite {
                snapshot: snapshot.as_ref().map(|(s, _)| Arc::clone(s)),
                payload: payload_in_hand,
                entries,
                hard_state: hard_state.clone(),
            });
            let held = WriteInHand::Held {
                ready: Box::new(ready),
                snapshot,
                hard_state,
            };
            if self.in_hand.is_empty() && write.is_none() {
                return self.finish_ready(held);
            }
            if snapshot_pending(&held) {
                self.raw.mut_store().unsynced.clear();
            }
            self.in_hand.push_back(held);
            if let Some(write) = write {
                self.outputs.push_back(Output::Write(write));
            }
            self.publish_writes_in_flight();
            return Ok(());
        }

        // 5. Otherwise the Ready is advanced now: raft-rs reads its entries from the unsynced
        // ones until the write lands, and the node takes its next input meanwhile.
        let advanced = WriteInHand::Advanced {
            number: ready.number(),
            persisted_messages: ready.take_persisted_messages(),
            read_states: ready.take_read_states(),
            written: WrittenRange::of(&entries),
            hard_state: hard_state.clone(),
            io,
        };
        self.raw.mut_store().unsynced.push(&entries);
        self.raw.advance_append_async(ready);
        if self.in_hand.is_empty() && !io {
            return self.finish_ready(advanced);
        }
        self.in_hand.push_back(advanced);
        if io {
            self.outputs.push_back(Output::Write(LogWrite {
                snapshot: None,
                payload: None,
                entries,
                hard_state,
            }));
        }
        self.publish_writes_in_flight();
        Ok(())
    }

    fn publish_writes_in_flight(&self) {
        let metrics = &self.counters.metrics;
        NodeMetrics::set(&metrics.log_writes_in_flight, self.in_hand.len() as u64);
    }

    /// The oldest write in flight is durable (or failed: then the node stops).
    pub(crate) fn write_done(
        &mut self,
        result: Result<(), StorageError>,
        now: Instant,
    ) -> Result<()> {
        self.now = now;
        let Some(in_hand) = self.in_hand.pop_front() else {
            return Ok(());
        };
        if let Err(e) = result {
            tracing::error!(
                node = self.id,
                "log storage write failed, stopping the node: {e}"
            );
            return Err(Error::from(e));
        }
        self.finish_ready(in_hand)?;
        // Readies with nothing to write complete with the write before them.
        while let Some(WriteInHand::Advanced { io: false, .. }) = self.in_hand.front() {
            if let Some(next) = self.in_hand.pop_front() {
                self.finish_ready(next)?;
            }
        }
        self.publish_writes_in_flight();
        if !self.holding_ready() {
            self.after_turn();
        }
        Ok(())
    }

    /// The second half of a `Ready`, once what it had to write is durable.
    fn finish_ready(&mut self, in_hand: WriteInHand) -> Result<()> {
        match in_hand {
            WriteInHand::Held {
                mut ready,
                snapshot,
                hard_state,
            } => {
                if let Some((snapshot, members)) = snapshot {
                    self.members = Members::from_list(members);
                    let index = snapshot_index(&snapshot);
                    tracing::info!(node = self.id, index, "installed snapshot from leader");
                    self.backlog.applied(index);
                    self.backlog.handed = self.backlog.handed.max(index);
                    self.send_to_apply(ApplyMsg::Restore(snapshot));
                    self.hand_to_apply(ready.take_committed_entries());
                }
                if let Some(hs) = hard_state {
                    self.persisted_hs = hs;
                }

                // Only now may votes and append responses leave.
                self.send_messages(ready.take_persisted_messages());
                for state in ready.take_read_states() {
                    self.on_read_state(state);
                }

                // Advance (raft-rs hears the applied index from the apply task, not here),
                // then the light ready.
                let mut light = self.raw.advance_append(*ready);
                self.send_messages(light.take_messages());
                self.hand_to_apply(light.take_committed_entries());
            }
            WriteInHand::Advanced {
                number,
                persisted_messages,
                read_states,
                written,
                hard_state,
                io: _,
            } => {
                self.raw.mut_store().unsynced.synced(&written);
                if let Some(hs) = hard_state {
                    self.persisted_hs = hs;
                }
                self.send_messages(persisted_messages);
                for state in read_states {
                    self.on_read_state(state);
                }
                // What this makes possible (a commit, the messages it sends, committed
                // entries) comes in the next Ready.
                self.raw.on_persist_ready(number);
            }
        }
        Ok(())
    }

    pub(super) fn hand_to_apply(&mut self, entries: Vec<Entry>) {
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
        self.send_to_apply(ApplyMsg::Entries(batch));
    }

    pub(super) fn after_turn(&mut self) {
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
                peer == wanted && self.now.duration_since(at) < self.config.min_election_timeout()
            });
            if !recent {
                self.snapshot_requested = Some((wanted, self.now));
                self.send_to_apply(ApplyMsg::SnapshotFor(wanted));
            }
        }
        let conf_changed = std::mem::take(&mut self.conf_changed);
        if conf_changed {
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
            self.send_to_apply(ApplyMsg::FailProposals);
        }
        let leader_id = self.leader_id();
        if leader_id.is_some() && leader_id != self.last_leader {
            NodeMetrics::inc(&self.counters.metrics.leader_changes);
        }
        self.publish_leader_route(leader_id);
        self.publish_live(leader_id, conf_changed);
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

    /// Tells the mailbox where the leader is; compared first, so a Ready with no change
    /// costs a read lock and no allocation.
    pub(super) fn publish_leader_route(&self, leader_id: Option<u64>) {
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
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn write(range: std::ops::RangeInclusive<u64>, term: u64, commit: u64) -> LogWrite {
        LogWrite {
            snapshot: None,
            payload: None,
            entries: range
                .map(|index| Entry {
                    index,
                    term,
                    ..Default::default()
                })
                .collect(),
            hard_state: Some(HardState {
                term,
                commit,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn merged_writes_store_what_the_two_writes_would_in_turn() {
        let mut merged = write(5..=9, 2, 4);
        assert!(merged.absorb(write(8..=10, 3, 6)).is_ok());
        let stored: Vec<(u64, u64)> = merged.entries.iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(
            stored,
            vec![(5, 2), (6, 2), (7, 2), (8, 3), (9, 3), (10, 3)]
        );
        assert_eq!(merged.hard_state.as_ref().unwrap().commit, 6);
        let commit_only = LogWrite {
            snapshot: None,
            payload: None,
            entries: Vec::new(),
            hard_state: None,
        };
        assert!(merged.absorb(commit_only).is_ok());
        assert_eq!(merged.hard_state.as_ref().unwrap().commit, 6);
        assert_eq!(merged.entries.len(), 6);
        let with_snapshot = LogWrite {
            snapshot: Some(Arc::new(Snapshot::default())),
            payload: None,
            entries: Vec::new(),
            hard_state: None,
        };
        assert!(merged.absorb(with_snapshot).is_err());
    }
}
