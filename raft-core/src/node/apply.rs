//! The apply task: owns the user's `Store`, applies committed entries in order, answers
//! proposal waiters and reads, and takes snapshots at exactly the applied index.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::prelude::{ConfState, Entry, EntryType, Snapshot, SnapshotMetadata};
use tokio::sync::{mpsc, watch};

use super::membership::{entry_context, open_envelope, seal_envelope_ref, Members};
use super::messages::{ApplyMsg, CommittedEntry, DriverMsg, ReadOp, Responder};
use super::sessions::{Admission, SessionTable, StoreAnswer};
use super::Counters;
use crate::error::{Error, Result};
use crate::log_storage::{snapshot_index, snapshot_term, LogStorage};
use crate::metrics::NodeMetrics;
use crate::session::SessionTag;
use crate::snapshot_payload::SnapshotPayload;
use crate::snapshot_stream::{SnapshotSink, SnapshotSource};
use crate::store::Store;

struct Waiter {
    term: u64,
    /// The membership change's sequence number in its entry's context; `None` for a
    /// proposal, which the index and term alone identify.
    conf_seq: Option<u64>,
    deadline: Instant,
    reply: Responder,
}

struct PendingRead {
    query: ReadOp,
    deadline: Instant,
    reply: Responder,
}

/// State of the apply task.
pub(crate) struct Applier {
    pub(crate) node_id: u64,
    pub(crate) store: Box<dyn Store>,
    /// Where snapshot payloads are written to and read from.
    storage: Arc<dyn LogStorage>,
    pub(crate) applied: u64,
    pub(crate) applied_term: u64,
    pub(crate) conf_state: ConfState,
    pub(crate) members: Members,
    pub(crate) last_snapshot: u64,
    pub(crate) snapshot_threshold: u64,
    pub(crate) driver_tx: mpsc::Sender<DriverMsg>,
    pub(crate) counters: Arc<Counters>,
    /// Tells the driver how far the store has applied.
    applied_tx: watch::Sender<u64>,
    waiters: BTreeMap<u64, Waiter>,
    reads: BTreeMap<u64, Vec<PendingRead>>,
    /// A peer waiting for a snapshot that includes it.
    snapshot_wanted_for: Option<u64>,
    /// The client sessions: part of the replicated state, kept in every snapshot.
    sessions: SessionTable,
}

impl Applier {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        node_id: u64,
        store: Box<dyn Store>,
        storage: Arc<dyn LogStorage>,
        snapshot: &Snapshot,
        members: Members,
        snapshot_threshold: u64,
        driver_tx: mpsc::Sender<DriverMsg>,
        counters: Arc<Counters>,
        applied_tx: watch::Sender<u64>,
    ) -> Self {
        let conf_state = snapshot
            .metadata
            .as_ref()
            .and_then(|m| m.conf_state.clone().into_option())
            .unwrap_or_default();
        Applier {
            node_id,
            store,
            storage,
            applied: snapshot_index(snapshot),
            applied_term: snapshot_term(snapshot),
            conf_state,
            members,
            last_snapshot: snapshot_index(snapshot),
            snapshot_threshold,
            driver_tx,
            counters,
            applied_tx,
            waiters: BTreeMap::new(),
            reads: BTreeMap::new(),
            snapshot_wanted_for: None,
            sessions: SessionTable::default(),
        }
    }

    /// Restores the user's store from a snapshot's envelope.
    pub(crate) async fn restore_store(&mut self, snapshot: &Snapshot) -> Result<()> {
        let mut envelope = open_envelope(&snapshot.data).map_err(Error::config)?;
        let mut source = match envelope.payload {
            None => SnapshotSource::from_bytes(std::mem::take(&mut envelope.user_data)),
            Some(payload) => {
                let meta = snapshot.metadata.clone().unwrap_or_default();
                SnapshotSource::for_storage(&self.storage, meta, payload.len, payload.crc32)?
            }
        };
        let started = Instant::now();
        self.store
            .restore_from_at(snapshot_index(snapshot), &mut source)
            .await
            .map_err(|e| Error::store(format!("restore failed: {e:#}")))?;
        tracing::info!(
            node = self.node_id,
            index = snapshot_index(snapshot),
            bytes = source.len(),
            ms = started.elapsed().as_millis() as u64,
            "restored the state from a snapshot"
        );
        // A node that joined learns its cluster from its first snapshot. Until then it knows
        // no cluster id and cannot refuse by it: what keeps another cluster's snapshot out is
        // that a joining node takes one only after its join was accepted, from the leader.
        if envelope.cluster_id != 0 {
            Counters::set(&self.counters.cluster_id, envelope.cluster_id);
        }
        self.members = Members::from_list(envelope.members);
        self.sessions = SessionTable::from_records(envelope.sessions);
        self.applied = snapshot_index(snapshot);
        self.applied_term = snapshot_term(snapshot);
        self.last_snapshot = self.applied;
        self.conf_state = snapshot
            .metadata
            .as_ref()
            .and_then(|m| m.conf_state.clone().into_option())
            .unwrap_or_default();
        Ok(())
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<ApplyMsg>) {
        let mut sweep = tokio::time::interval(Duration::from_millis(100));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = rx.recv() => {
                    let Some(msg) = msg else { break };
                    if let Err(e) = self.handle(msg, Instant::now()).await {
                        tracing::error!(node = self.node_id, "apply task failed: {e}");
                        let _ = self.driver_tx.send(DriverMsg::Fatal(e)).await;
                        break;
                    }
                }
                _ = sweep.tick() => self.expire(Instant::now()),
            }
            self.publish();
        }
        // Dropping the responders tells every remaining client the node stopped.
    }

    /// Tells the driver and the counters how far the store has applied.
    pub(crate) fn publish(&self) {
        Counters::set(&self.counters.applied, self.applied);
        self.applied_tx.send_if_modified(|a| {
            let changed = *a != self.applied;
            *a = self.applied;
            changed
        });
        self.counters.live.send_if_modified(|live| {
            let changed = live.applied_index != self.applied;
            live.applied_index = self.applied;
            changed
        });
        Counters::set(&self.counters.pending_proposals, self.waiters.len() as u64);
        let metrics = &self.counters.metrics;
        NodeMetrics::set(&metrics.client_sessions, self.sessions.len() as u64);
        NodeMetrics::set(
            &metrics.client_session_bytes,
            self.sessions.answer_bytes() as u64,
        );
        NodeMetrics::set(&metrics.sessions_evicted, self.sessions.evicted);
        let reads: usize = self.reads.values().map(Vec::len).sum();
        Counters::set(&self.counters.pending_apply_reads, reads as u64);
    }

    /// Works through one message; `now` decides which reads are past their deadline.
    pub(crate) async fn handle(&mut self, msg: ApplyMsg, now: Instant) -> Result<()> {
        match msg {
            ApplyMsg::Register {
                index,
                term,
                seq,
                deadline,
                reply,
            } => self.wait_for(
                index,
                Waiter {
                    term,
                    conf_seq: Some(seq),
                    deadline,
                    reply,
                },
            ),
            ApplyMsg::RegisterProposals {
                first_index,
                term,
                waiters,
            } => {
                for (index, (deadline, reply)) in (first_index..).zip(waiters) {
                    let waiter = Waiter {
                        term,
                        conf_seq: None,
                        deadline,
                        reply,
                    };
                    self.wait_for(index, waiter);
                }
            }
            ApplyMsg::Entries(entries) => {
                for entry in entries {
                    self.apply_entry(entry).await;
                }
                self.serve_reads(now).await;
                self.maybe_snapshot().await;
            }
            ApplyMsg::Restore(snapshot) => {
                if snapshot_index(&snapshot) > self.applied {
                    if let Err(e) = self.restore_store(&snapshot).await {
                        // A newer snapshot from the leader may have replaced this one (and
                        // its payload) before it was read: its own restore follows.
                        let newer = self.storage.snapshot_metadata().map(|m| m.index);
                        if newer.is_ok_and(|newer| newer > snapshot_index(&snapshot)) {
                            tracing::debug!(
                                node = self.node_id,
                                index = snapshot_index(&snapshot),
                                "a newer snapshot replaced this one before it was restored: {e}"
                            );
                            return Ok(());
                        }
                        return Err(e);
                    }
                    NodeMetrics::inc(&self.counters.metrics.snapshots_installed);
                    // Proposals at or below the snapshot may or may not be in it.
                    let later = self.waiters.split_off(&(self.applied + 1));
                    for (_, w) in std::mem::replace(&mut self.waiters, later) {
                        let _ = w.reply.send(Err(Error::leadership_lost()));
                    }
                    self.serve_reads(now).await;
                }
            }
            ApplyMsg::Read {
                index,
                query,
                deadline,
                reply,
            } => {
                let read = PendingRead {
                    query,
                    deadline,
                    reply,
                };
                if index <= self.applied {
                    self.run_query(read, now).await;
                } else {
                    self.reads.entry(index).or_default().push(read);
                }
            }
            ApplyMsg::SnapshotFor(peer) => {
                self.snapshot_wanted_for = Some(peer);
                self.maybe_snapshot().await;
            }
            ApplyMsg::FailProposals => {
                for (_, w) in std::mem::take(&mut self.waiters) {
                    let _ = w.reply.send(Err(Error::leadership_lost()));
                }
            }
        }
        Ok(())
    }

    async fn apply_entry(&mut self, committed: CommittedEntry) {
        let entry = committed.entry;
        if entry.index <= self.applied {
            return;
        }
        let result: Result<Vec<u8>> = match (entry.get_entry_type(), committed.conf) {
            (EntryType::EntryNormal, _) => match session_of(&entry.context) {
                None => self
                    .apply_command(entry.index, &entry.data)
                    .await
                    .map_err(Error::store),
                Some(tag) => self.apply_in_session(&tag, &entry).await,
            },
            (_, Some(outcome)) => {
                self.members = Members::from_list(outcome.members);
                match outcome.result {
                    Ok(cs) => {
                        self.conf_state = cs;
                        Ok(Vec::new())
                    }
                    Err(e) => Err(Error::Invalid(format!("membership change rejected: {e}"))),
                }
            }
            (_, None) => Ok(Vec::new()),
        };
        self.applied = entry.index;
        self.applied_term = entry.term;
        NodeMetrics::inc(&self.counters.metrics.applied_entries);
        self.answer_waiters(&entry, result);
    }

    /// The store's answer to one command; an empty one (a new leader's first entry) is no
    /// command at all.
    async fn apply_command(&mut self, index: u64, data: &[u8]) -> StoreAnswer {
        if data.is_empty() {
            return Ok(Vec::new());
        }
        self.store
            .apply_at(index, data)
            .await
            .map_err(|e| format!("{e:#}"))
    }

    /// Applies a command of a client session once: a retry gets the saved answer.
    async fn apply_in_session(&mut self, tag: &SessionTag, entry: &Entry) -> Result<Vec<u8>> {
        match self.sessions.admit(tag, entry.index) {
            Admission::Answered(answer) => {
                NodeMetrics::inc(&self.counters.metrics.session_retries_answered);
                answer
            }
            Admission::Apply => {
                let answer = self.apply_command(entry.index, &entry.data).await;
                self.sessions.record(tag, entry.index, &answer);
                answer.map_err(Error::store)
            }
        }
    }

    fn wait_for(&mut self, index: u64, waiter: Waiter) {
        if index <= self.applied {
            // Cannot happen in order; never leave the client hanging if it does.
            let _ = waiter.reply.send(Err(Error::leadership_lost()));
        } else if let Some(old) = self.waiters.insert(index, waiter) {
            let _ = old.reply.send(Err(Error::dropped()));
        }
    }

    fn answer_waiters(&mut self, entry: &Entry, result: Result<Vec<u8>>) {
        let index = entry.index;
        let mut result = Some(result);
        while let Some(first) = self.waiters.first_entry() {
            if *first.key() > index {
                break;
            }
            let at = *first.key();
            let waiter = first.remove();
            let ours = at == index
                && entry.term == waiter.term
                && match waiter.conf_seq {
                    None => true,
                    Some(seq) => entry_context(&entry.context)
                        .is_some_and(|c| c.origin == self.node_id && c.seq == seq),
                };
            let answer = if ours {
                result.take().unwrap_or(Err(Error::dropped()))
            } else {
                // Another leader's entry took this index: ours never committed.
                Err(Error::dropped())
            };
            let _ = waiter.reply.send(answer);
        }
    }

    async fn serve_reads(&mut self, now: Instant) {
        let later = self.reads.split_off(&(self.applied + 1));
        let ready = std::mem::replace(&mut self.reads, later);
        for read in ready.into_values().flatten() {
            self.run_query(read, now).await;
        }
    }

    async fn run_query(&mut self, read: PendingRead, now: Instant) {
        if read.reply.is_closed() {
            return;
        }
        if now > read.deadline {
            let _ = read.reply.send(Err(Error::timeout(Duration::ZERO)));
            return;
        }
        let answer = match read.query {
            ReadOp::Query(query) => self
                .store
                .query(&query)
                .await
                .map_err(|e| Error::store(format!("{e:#}"))),
            ReadOp::Backup(backup) => crate::backup::take(self).await.map(|taken| {
                let _ = backup.send(taken);
                Vec::new()
            }),
        };
        let _ = read.reply.send(answer);
    }

    fn conf_includes(&self, id: u64) -> bool {
        let cs = &self.conf_state;
        cs.voters
            .iter()
            .chain(&cs.learners)
            .chain(&cs.voters_outgoing)
            .any(|&v| v == id)
    }

    async fn maybe_snapshot(&mut self) {
        let wanted = self
            .snapshot_wanted_for
            .is_some_and(|peer| self.conf_includes(peer) && self.applied > self.last_snapshot);
        if !wanted && self.applied < self.last_snapshot + self.snapshot_threshold {
            return;
        }
        if wanted {
            self.snapshot_wanted_for = None;
        }
        let payload = match self.take_payload().await {
            Ok(payload) => payload,
            Err(e) => {
                tracing::warn!(
                    node = self.node_id,
                    "state machine snapshot failed, will retry later: {e:#}"
                );
                self.last_snapshot = self.applied;
                return;
            }
        };
        let snapshot = Snapshot {
            data: seal_envelope_ref(
                Counters::get(&self.counters.cluster_id),
                self.members.to_list(),
                payload.reference(),
                self.sessions.to_records(),
            )
            .into(),
            metadata: Some(SnapshotMetadata {
                conf_state: Some(self.conf_state.clone()).into(),
                index: self.applied,
                term: self.applied_term,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        self.last_snapshot = self.applied;
        NodeMetrics::inc(&self.counters.metrics.snapshots_taken);
        let _ = self
            .driver_tx
            .send(DriverMsg::SnapshotTaken(Box::new((snapshot, payload))))
            .await;
    }

    /// Streams the store's state into a new payload of the log storage.
    async fn take_payload(&mut self) -> Result<SnapshotPayload> {
        let mut sink = SnapshotSink::for_storage(&self.storage)?;
        self.store
            .snapshot_to(&mut sink)
            .await
            .map_err(|e| Error::store(format!("{e:#}")))?;
        Ok(sink.finish().await?)
    }

    /// Answers every waiter and read whose deadline passed.
    pub(crate) fn expire(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .waiters
            .iter()
            .filter(|(_, w)| w.deadline <= now || w.reply.is_closed())
            .map(|(&i, _)| i)
            .collect();
        for index in expired {
            if let Some(w) = self.waiters.remove(&index) {
                let _ = w.reply.send(Err(Error::timeout(Duration::ZERO)));
            }
        }
        for reads in self.reads.values_mut() {
            let (keep, gone): (Vec<_>, Vec<_>) = reads
                .drain(..)
                .partition(|r| r.deadline > now && !r.reply.is_closed());
            *reads = keep;
            for r in gone {
                let _ = r.reply.send(Err(Error::timeout(Duration::ZERO)));
            }
        }
        self.reads.retain(|_, v| !v.is_empty());
    }
}

/// The client session a normal entry's context names, if any.
fn session_of(context: &[u8]) -> Option<SessionTag> {
    if context.is_empty() {
        return None;
    }
    SessionTag::from_context(context)
}
