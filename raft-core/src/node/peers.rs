//! One sender task per peer: batches outbound raft messages and keeps their order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use raft::prelude::{Message, MessageType};
use raft::SnapshotStatus;
use tokio::sync::mpsc;

use super::messages::DriverMsg;
use super::snapshot_transfer::send_snapshot;
use crate::log_storage::LogStorage;
use crate::transport::Transport;
use crate::wire::{self, RaftBatch};

/// Most messages in one batch.
const MAX_BATCH: usize = 512;
/// Messages queued for one peer before new ones are dropped (raft resends what matters).
const QUEUE: usize = 4096;

struct PeerSender {
    addr: String,
    tx: mpsc::Sender<Message>,
}

/// The outbound side of a node.
pub(crate) struct Peers {
    local_id: u64,
    local_addr: String,
    transport: Arc<dyn Transport>,
    driver_tx: mpsc::Sender<DriverMsg>,
    chunk_size: usize,
    /// Where snapshot payloads are read from, as they are sent.
    storage: Arc<dyn LogStorage>,
    senders: HashMap<u64, PeerSender>,
}

impl Peers {
    pub(crate) fn new(
        local_id: u64,
        local_addr: String,
        transport: Arc<dyn Transport>,
        driver_tx: mpsc::Sender<DriverMsg>,
        chunk_size: usize,
        storage: Arc<dyn LogStorage>,
    ) -> Self {
        Peers {
            local_id,
            local_addr,
            transport,
            driver_tx,
            chunk_size,
            storage,
            senders: HashMap::new(),
        }
    }

    /// Queues `msg` for its peer at `addr`. Returns false when it had to be dropped.
    pub(crate) fn send(&mut self, msg: Message, addr: &str) -> bool {
        let to = msg.to;
        let stale = self.senders.get(&to).is_some_and(|s| s.addr != addr);
        if stale {
            self.senders.remove(&to);
        }
        let sender = self.senders.entry(to).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            let task = SenderTask {
                to,
                from: self.local_id,
                from_addr: self.local_addr.clone(),
                addr: addr.to_string(),
                transport: self.transport.clone(),
                driver_tx: self.driver_tx.clone(),
                chunk_size: self.chunk_size,
                storage: self.storage.clone(),
            };
            tokio::spawn(task.run(rx));
            PeerSender {
                addr: addr.to_string(),
                tx,
            }
        });
        sender.tx.try_send(msg).is_ok()
    }

    /// Stops the sender of a peer that left.
    pub(crate) fn remove(&mut self, id: u64) {
        self.senders.remove(&id);
    }

    /// Keeps only the senders of peers for which `keep` holds (their tasks end when their
    /// queue's sender is dropped).
    pub(crate) fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        self.senders.retain(|&id, _| keep(id));
    }

    /// Messages queued over all peers.
    pub(crate) fn queued(&self) -> u64 {
        self.senders
            .values()
            .map(|s| (s.tx.max_capacity() - s.tx.capacity()) as u64)
            .sum()
    }
}

struct SenderTask {
    to: u64,
    from: u64,
    from_addr: String,
    addr: String,
    transport: Arc<dyn Transport>,
    driver_tx: mpsc::Sender<DriverMsg>,
    chunk_size: usize,
    storage: Arc<dyn LogStorage>,
}

impl SenderTask {
    async fn run(self, mut rx: mpsc::Receiver<Message>) {
        let mut failures: u32 = 0;
        let mut pending = Vec::with_capacity(MAX_BATCH);
        while rx.recv_many(&mut pending, MAX_BATCH).await > 0 {
            let mut encoded = Vec::with_capacity(pending.len());
            for msg in pending.drain(..) {
                if msg.get_msg_type() == MessageType::MsgSnapshot {
                    self.spawn_snapshot(msg);
                } else {
                    encoded.push(wire::encode_raft_message(&msg).into());
                }
            }
            if encoded.is_empty() {
                continue;
            }
            let batch = RaftBatch {
                from: self.from,
                to: self.to,
                messages: encoded,
                from_addr: self.from_addr.clone(),
                cluster_id: 0,
            };
            match self.transport.send(&self.addr, batch).await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures % 100 == 0 {
                        tracing::warn!(peer = self.to, addr = %self.addr, failures, "sending raft messages failed: {e}");
                    }
                    let _ = self.driver_tx.try_send(DriverMsg::Unreachable(self.to));
                    // Back off so a dead peer costs little; raft resends what it still needs.
                    let backoff = Duration::from_millis(10u64 << failures.min(5));
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }

    fn spawn_snapshot(&self, msg: Message) {
        let transport = self.transport.clone();
        let addr = self.addr.clone();
        let driver_tx = self.driver_tx.clone();
        let chunk_size = self.chunk_size;
        let storage = self.storage.clone();
        let to = self.to;
        let transfer_id = rand::random();
        tokio::spawn(async move {
            let sent =
                send_snapshot(&transport, &addr, msg, chunk_size, transfer_id, &storage).await;
            let status = match sent {
                Ok(()) => {
                    tracing::info!(peer = to, "snapshot sent");
                    SnapshotStatus::Finish
                }
                Err(e) => {
                    tracing::warn!(peer = to, "sending snapshot failed: {e}");
                    SnapshotStatus::Failure
                }
            };
            let _ = driver_tx.send(DriverMsg::SnapshotStatus(to, status)).await;
        });
    }
}
