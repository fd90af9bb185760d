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
    writer: LogWriter,
    /// The writer's results, in the order the writes were handed to it.
    written: mpsc::UnboundedReceiver<Result<(), StorageError>>,
}

impl Driver {
    pub(crate) fn new(parts: DriverParts) -> Result<Self> {
        let (writer, written) = LogWriter::start(
            parts.core.id(),
            parts.storage.clone(),
            parts.counters.clone(),
        )?;
        Ok(Driver {
            parts,
            apply_lost: false,
            writer,
            written,
        })
    }

    /// Runs until shutdown, removal from the cluster, or a fatal error; then waits for the
    /// log writer to finish the write it is doing, so no thread outlives the node with its
    /// log storage open.
    pub(crate) async fn run(mut self) -> Result<()> {
        let result = self.drive().await;
        self.writer.stop().await;
        result
    }

    async fn drive(&mut self) -> Result<()> {
        let mut ticker = tokio::time::interval(self.parts.tick_interval);
        // Ticks must never come faster than the interval: leases rely on it.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut inbox = Vec::with_capacity(256);
        loop {
            let held = self.parts.core.holding_ready();
            if !held {
                let applied = *self.parts.applied_rx.borrow_and_update();
                self.parts.core.applied(applied);
                self.parts.core.turn(Instant::now())?;
            }
            self.carry_out()?;
            if self.apply_lost || self.parts.apply_tx.is_closed() {
                return Err(apply_task_gone());
            }
            if self.parts.core.stopped() {
                return Ok(());
            }
            // A held Ready takes no input until its write is durable.
            let held = self.parts.core.holding_ready();
            let p = &mut self.parts;
            tokio::select! {
                result = self.written.recv() => {
                    let result = result.unwrap_or_else(|| Err(writer_gone()));
                    p.core.write_done(result, Instant::now())?;
                }
                _ = ticker.tick(), if !held => {
                    let now = Instant::now();
                    p.core.tick(now);
                    p.assembler.expire(now);
                    NodeMetrics::set(&p.counters.metrics.peer_queue, p.peers.queued());
                }
                n = p.rx.recv_many(&mut inbox, MAX_MESSAGES_PER_TURN), if !held => {
                    if n == 0 {
                        return Ok(());
                    }
                    for msg in inbox.drain(..) {
                        // The time of each message, not of the batch: a lease read is checked
                        // against it.
                        p.core.handle(msg, Instant::now())?;
                    }
                }
                changed = p.applied_rx.changed(), if !held => {
                    if changed.is_err() {
                        return Err(apply_task_gone());
                    }
                }
            }
        }
    }

    /// Carries out everything the core asked for. Durable writes go to the log writer, in
    /// order; a log kept in memory is written in place.
    fn carry_out(&mut self) -> Result<()> {
        while let Some(output) = self.parts.core.poll_output() {
            match output {
                Output::Send { msg, addr } => {
                    let to = msg.to;
                    let snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
                    if !self.parts.peers.send(msg, &addr) {
                        self.parts.core.send_failed(to, snapshot);
                    }
                }
                Output::Write(write) => {
                    if self.parts.storage.writes_in_place() {
                        let started = Instant::now();
                        let result = write.run(self.parts.storage.as_ref());
                        observe_write(&self.parts.counters, started);
                        self.parts.core.write_done(result, Instant::now())?;
                    } else if !self.writer.write(write) {
                        self.parts
                            .core
                            .write_done(Err(writer_gone()), Instant::now())?;
                    }
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

/// However the driver ends (returned, or its task aborted), `Mailbox::watch_status`
/// subscribers learn the node stopped.
impl Drop for Driver {
    fn drop(&mut self) {
        self.parts
            .counters
            .live
            .send_modify(|live| live.stopped = true);
    }
}

fn writer_gone() -> StorageError {
    StorageError::Io("the log writer thread stopped".to_string())
}

fn observe_write(counters: &Counters, started: Instant) {
    let metrics = &counters.metrics;
    metrics.log_write_seconds.observe(started.elapsed());
    NodeMetrics::inc(&metrics.log_writes);
}

/// One thread per node that carries out its durable writes in order, so an fsync never
/// blocks a runtime worker and the driver goes on while it runs. The queue is bounded by the
/// core, which has at most a few writes in flight.
struct LogWriter {
    tx: Option<std::sync::mpsc::Sender<LogWrite>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LogWriter {
    fn start(
        node: u64,
        storage: Arc<dyn LogStorage>,
        counters: Arc<Counters>,
    ) -> Result<(Self, mpsc::UnboundedReceiver<Result<(), StorageError>>)> {
        // Both channels are unbounded as channels and bounded by the core: it hands out a write
        // only while fewer than `MAX_WRITES_IN_FLIGHT` (8) are in flight, and each write gives
        // one result, so neither ever holds more than eight items.
        let (tx, rx) = std::sync::mpsc::channel::<LogWrite>();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name(format!("raftkit-log-writer-{node}"))
            .spawn(move || {
                // Ends when the driver drops its sender, or stops listening.
                while let Ok(first) = rx.recv() {
                    // Writes that queued up while the last one synced share the next sync.
                    let mut merged = first;
                    let mut count = 1;
                    let mut unmerged = None;
                    while let Ok(next) = rx.try_recv() {
                        count += 1;
                        if let Err(next) = merged.absorb(next) {
                            unmerged = Some(next);
                            break;
                        }
                    }
                    let mut results = Vec::with_capacity(count);
                    let started = Instant::now();
                    let result = merged.run(storage.as_ref());
                    observe_write(&counters, started);
                    results.resize(count - usize::from(unmerged.is_some()), result);
                    if let Some(next) = unmerged {
                        let started = Instant::now();
                        results.push(next.run(storage.as_ref()));
                        observe_write(&counters, started);
                    }
                    for result in results {
                        if done_tx.send(result).is_err() {
                            return;
                        }
                    }
                }
            })
            .map_err(|e| Error::from(StorageError::Io(format!("starting the log writer: {e}"))))?;
        let writer = LogWriter {
            tx: Some(tx),
            thread: Some(thread),
        };
        Ok((writer, done_rx))
    }

    /// Hands a write to the thread; false if it is gone.
    fn write(&self, write: LogWrite) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.send(write).is_ok())
    }

    /// Lets the thread finish what it was given and waits for it to end.
    async fn stop(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
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
