//! The driver task: the tokio shell around [`NodeCore`].
//!
//! The core decides; this task only carries out. It feeds the core the inbox's messages, a
//! tick per tick interval and the apply task's progress, and turns the core's outputs into
//! I/O: raft messages to the per-peer senders, durable writes on a blocking thread (never an
//! fsync on a runtime worker), snapshot saves on another, work to the apply task's channel.

use std::sync::Arc;
use std::time::Instant;

use raft::prelude::MessageType;
use tokio::sync::{mpsc, oneshot, watch};

use super::core::{LogWrite, NodeCore, Output, SnapshotSave};
use super::messages::{ApplyMsg, DriverMsg};
use super::peers::Peers;
use super::snapshot_transfer::SnapshotAssembler;
use super::Counters;
use crate::error::{Error, Fatal, Result, StorageError};
use crate::log_storage::LogStorage;
use crate::metrics::NodeMetrics;

/// Most driver messages handled in one turn before the next `Ready`.
const MAX_MESSAGES_PER_TURN: usize = 4096;

/// Everything the driver task needs besides its core.
pub(crate) struct DriverParts {
    pub(crate) core: NodeCore,
    pub(crate) rx: mpsc::Receiver<DriverMsg>,
    /// Where a finished snapshot save reports back.
    pub(crate) driver_tx: mpsc::Sender<DriverMsg>,
    /// Unbounded as a channel, bounded by what the core lets into it; see the comment where
    /// `Raft::run` creates it.
    pub(crate) apply_tx: mpsc::UnboundedSender<ApplyMsg>,
    pub(crate) applied_rx: watch::Receiver<u64>,
    pub(crate) peers: Peers,
    pub(crate) storage: Arc<dyn LogStorage>,
    pub(crate) assembler: Arc<SnapshotAssembler>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) tick_interval: std::time::Duration,
}

/// The tokio task that drives one [`NodeCore`].
pub(crate) struct Driver {
    parts: DriverParts,
    /// Set when a message to the apply task could not be delivered: it died.
    apply_lost: bool,
}

impl Driver {
    pub(crate) fn new(parts: DriverParts) -> Self {
        Driver {
            parts,
            apply_lost: false,
        }
    }

    /// Runs until shutdown, removal from the cluster, or a fatal error.
    pub(crate) async fn run(mut self) -> Result<()> {
        let mut ticker = tokio::time::interval(self.parts.tick_interval);
        // Ticks must never come faster than the interval: leases rely on it.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut inbox = Vec::with_capacity(256);
        loop {
            let applied = *self.parts.applied_rx.borrow_and_update();
            self.parts.core.applied(applied);
            self.parts.core.turn(Instant::now())?;
            self.carry_out().await?;
            if self.apply_lost || self.parts.apply_tx.is_closed() {
                return Err(apply_task_gone());
            }
            if self.parts.core.stopped() {
                return Ok(());
            }
            let p = &mut self.parts;
            tokio::select! {
                _ = ticker.tick() => {
                    let now = Instant::now();
                    p.core.tick(now);
                    p.assembler.expire(now);
                    NodeMetrics::set(&p.counters.metrics.peer_queue, p.peers.queued());
                }
                n = p.rx.recv_many(&mut inbox, MAX_MESSAGES_PER_TURN) => {
                    if n == 0 {
                        return Ok(());
                    }
                    for msg in inbox.drain(..) {
                        // The time of each message, not of the batch: a lease read is checked
                        // against it.
                        p.core.handle(msg, Instant::now())?;
                    }
                }
                changed = p.applied_rx.changed() => {
                    if changed.is_err() {
                        return Err(apply_task_gone());
                    }
                }
            }
        }
    }

    /// Carries out everything the core asked for; a durable write is awaited here, so the
    /// core sees no input while it holds a `Ready`.
    async fn carry_out(&mut self) -> Result<()> {
        while let Some(output) = self.parts.core.poll_output() {
            match output {
                Output::Send { msg, addr } => {
                    let to = msg.to;
                    let snapshot = msg.msg_type() == MessageType::MsgSnapshot;
                    if !self.parts.peers.send(msg, &addr) {
                        self.parts.core.send_failed(to, snapshot);
                    }
                }
                Output::Write(write) => {
                    let result = self.write(write).await;
                    self.parts.core.write_done(result, Instant::now())?;
                }
                Output::SaveSnapshot(save) => self.save_snapshot(*save),
                Output::Apply(msg) => {
                    if self.parts.apply_tx.send(msg).is_err() {
                        // The apply task died (a panicking `Store`): the loop stops the node.
                        self.apply_lost = true;
                    }
                }
                Output::RemovePeer(id) => self.parts.peers.remove(id),
                Output::RetainPeers(keep) => self.parts.peers.retain(|id| keep.contains(&id)),
            }
        }
        Ok(())
    }

    /// Runs a durable write on a blocking thread, or in place for a log kept in memory.
    async fn write(&self, write: LogWrite) -> Result<(), StorageError> {
        let storage = self.parts.storage.clone();
        let started = Instant::now();
        let result = if storage.writes_in_place() {
            write.run(storage.as_ref())
        } else {
            tokio::task::spawn_blocking(move || write.run(storage.as_ref()))
                .await
                .map_err(|e| StorageError::Io(format!("storage thread failed: {e}")))
                .and_then(|r| r)
        };
        let metrics = &self.parts.counters.metrics;
        metrics.log_write_seconds.observe(started.elapsed());
        NodeMetrics::inc(&metrics.log_writes);
        result
    }

    /// Saves a snapshot and compacts the log on a blocking thread while the driver goes on:
    /// a large snapshot never delays heartbeats.
    fn save_snapshot(&self, save: SnapshotSave) {
        let storage = self.parts.storage.clone();
        let tx = self.parts.driver_tx.clone();
        let node = self.parts.core.id();
        tokio::spawn(async move {
            let result = tokio::task::spawn_blocking(move || save.run(storage.as_ref()))
                .await
                .map_err(|e| StorageError::Io(format!("storage thread failed: {e}")))
                .and_then(|r| r)
                .map_err(|e| {
                    tracing::error!(node, "saving a snapshot failed, stopping the node: {e}");
                    Error::from(e)
                });
            let _ = tx.send(DriverMsg::SnapshotSaved(result)).await;
        });
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
