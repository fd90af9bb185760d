//! Snapshots travel as ordered chunk calls, so no transport needs special code for them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft::prelude::Message;

use super::inbound::{check_wire, Refusal, Route};
use super::Counters;
use crate::error::TransportError;
use crate::metrics::NodeMetrics;
use crate::transport::Transport;
use crate::wire::{self, request, response, Request, SnapshotChunk};

/// How long one snapshot chunk may take to reach the peer and be stored there.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends one MsgSnapshot to `addr` in chunks of `chunk_size` bytes.
pub(crate) async fn send_snapshot(
    transport: &Arc<dyn Transport>,
    addr: &str,
    mut msg: Message,
    chunk_size: usize,
    transfer_id: u64,
) -> Result<(), TransportError> {
    let data = msg
        .snapshot
        .as_mut()
        .map(|s| std::mem::take(&mut s.data))
        .unwrap_or_default();
    let header = wire::encode_raft_message(&msg);
    let total = data.len();
    let mut offset = 0usize;
    loop {
        let end = (offset + chunk_size).min(total);
        let last = end == total;
        let chunk = SnapshotChunk {
            from: msg.from,
            to: msg.to,
            transfer_id,
            offset: offset as u64,
            total_len: total as u64,
            data: data[offset..end].to_vec(),
            last,
            message: if last { header.clone() } else { Vec::new() },
        };
        let request = Request {
            kind: Some(request::Kind::SnapshotChunk(chunk)),
            cluster_id: 0,
        };
        match transport.call(addr, request, CHUNK_TIMEOUT).await?.kind {
            Some(response::Kind::SnapshotChunk(true)) => {}
            Some(response::Kind::Error(e)) => {
                return Err(TransportError::Failed {
                    addr: addr.to_string(),
                    reason: format!("snapshot chunk rejected: {}", e.message),
                })
            }
            _ => {
                return Err(TransportError::Malformed(
                    "unexpected answer to a snapshot chunk".into(),
                ))
            }
        }
        if last {
            return Ok(());
        }
        offset = end;
    }
}

struct Assembly {
    from: u64,
    transfer_id: u64,
    total_len: u64,
    data: Vec<u8>,
    last_chunk: Instant,
}

/// Reassembles the snapshot the leader sends, chunk by chunk.
///
/// Only the current leader's chunks are taken, one transfer at a time (a new one replaces an
/// unfinished one), at most `max_size` bytes, and a transfer that sends nothing for `timeout`
/// is dropped: memory held here is bounded by one snapshot.
pub(crate) struct SnapshotAssembler {
    local_id: u64,
    max_size: u64,
    timeout: Duration,
    counters: Arc<Counters>,
    inflight: Mutex<Option<Assembly>>,
}

/// Why a chunk was refused, and what to tell its sender.
pub(crate) type ChunkRefusal = (Refusal, String);

impl SnapshotAssembler {
    pub(crate) fn new(
        local_id: u64,
        max_size: u64,
        timeout: Duration,
        counters: Arc<Counters>,
    ) -> Self {
        SnapshotAssembler {
            local_id,
            max_size,
            timeout,
            counters,
            inflight: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Assembly>> {
        self.inflight.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, inflight: &Option<Assembly>) {
        let bytes = inflight.as_ref().map_or(0, |a| a.data.len() as u64);
        NodeMetrics::set(&self.counters.metrics.snapshot_receiving_bytes, bytes);
    }

    /// Drops a transfer that has been silent for longer than the timeout.
    pub(crate) fn expire(&self, now: Instant) {
        let mut inflight = self.lock();
        if inflight
            .as_ref()
            .is_some_and(|a| now.duration_since(a.last_chunk) > self.timeout)
        {
            if let Some(a) = inflight.take() {
                tracing::warn!(
                    node = self.local_id,
                    from = a.from,
                    received = a.data.len(),
                    total = a.total_len,
                    "dropped a snapshot transfer that stalled"
                );
            }
            self.publish(&inflight);
        }
    }

    /// Takes one chunk; returns the complete, checked MsgSnapshot after the last one.
    pub(crate) fn accept(&self, chunk: SnapshotChunk) -> Result<Option<Message>, ChunkRefusal> {
        let refuse = |why: String| Err((Refusal::Chunk, why));
        if chunk.to != self.local_id || chunk.from == 0 || chunk.from == self.local_id {
            return Err((
                Refusal::Addressing,
                format!(
                    "snapshot chunk {}->{} reached node {}",
                    chunk.from, chunk.to, self.local_id
                ),
            ));
        }
        let leader = Counters::get(&self.counters.leader);
        if chunk.from != leader {
            return refuse(format!(
                "snapshot chunk from node {}, but the leader is {}",
                chunk.from,
                if leader == 0 {
                    "unknown".to_string()
                } else {
                    format!("node {leader}")
                }
            ));
        }
        if chunk.total_len > self.max_size {
            return refuse(format!(
                "snapshot of {} bytes exceeds the limit of {} bytes",
                chunk.total_len, self.max_size
            ));
        }
        let now = Instant::now();
        let mut inflight = self.lock();
        let result = self.accept_locked(&mut inflight, chunk, now);
        self.publish(&inflight);
        result
    }

    fn accept_locked(
        &self,
        inflight: &mut Option<Assembly>,
        chunk: SnapshotChunk,
        now: Instant,
    ) -> Result<Option<Message>, ChunkRefusal> {
        let refuse = |why: &str| Err((Refusal::Chunk, why.to_string()));
        if chunk.offset == 0 {
            // A new transfer replaces any unfinished one: one snapshot in memory at a time.
            *inflight = Some(Assembly {
                from: chunk.from,
                transfer_id: chunk.transfer_id,
                total_len: chunk.total_len,
                data: Vec::with_capacity(chunk.total_len.min(16 << 20) as usize),
                last_chunk: now,
            });
        }
        let assembly = match inflight.as_mut() {
            Some(a) if a.transfer_id == chunk.transfer_id && a.from == chunk.from => a,
            _ => return refuse("snapshot chunk of an unknown transfer"),
        };
        if chunk.offset != assembly.data.len() as u64 || chunk.total_len != assembly.total_len {
            *inflight = None;
            return refuse("snapshot chunk out of order");
        }
        if assembly.data.len() as u64 + chunk.data.len() as u64 > assembly.total_len {
            *inflight = None;
            return refuse("snapshot chunks exceed the announced length");
        }
        assembly.data.extend_from_slice(&chunk.data);
        assembly.last_chunk = now;
        if !chunk.last {
            return Ok(None);
        }
        let Some(assembly) = inflight.take() else {
            return refuse("snapshot transfer vanished");
        };
        if assembly.data.len() as u64 != assembly.total_len {
            return refuse("snapshot ended before its announced length");
        }
        let mut msg = wire::decode_raft_message(&chunk.message)
            .map_err(|e| (Refusal::Undecodable, e.to_string()))?;
        if msg.from != chunk.from {
            return Err((
                Refusal::Addressing,
                "snapshot message addressed inconsistently".into(),
            ));
        }
        if let Some(s) = msg.snapshot.as_mut() {
            s.data = assembly.data;
        }
        check_wire(&msg, self.local_id, Route::Chunks)
            .map_err(|r| (r, "the assembled snapshot message is invalid".to_string()))?;
        Ok(Some(msg))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use raft::prelude::{ConfState, MessageType, Snapshot, SnapshotMetadata};

    use super::*;
    use crate::node::membership::seal_envelope;

    /// A valid MsgSnapshot from node 1 to node 2 whose user state is `data`.
    fn snapshot_message(data: Vec<u8>) -> Message {
        let mut msg = Message {
            from: 1,
            to: 2,
            term: 2,
            snapshot: Some(Snapshot {
                data: seal_envelope(0, Vec::new(), data),
                metadata: Some(SnapshotMetadata {
                    index: 9,
                    term: 2,
                    conf_state: Some(ConfState::from((vec![1], vec![2]))),
                }),
            }),
            ..Default::default()
        };
        msg.set_msg_type(MessageType::MsgSnapshot);
        msg
    }

    fn chunks(msg: &Message, size: usize, transfer_id: u64) -> Vec<SnapshotChunk> {
        let mut header = msg.clone();
        let data = std::mem::take(&mut header.snapshot.as_mut().unwrap().data);
        let encoded = wire::encode_raft_message(&header);
        let total = data.len();
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let end = (offset + size).min(total);
            let last = end == total;
            out.push(SnapshotChunk {
                from: 1,
                to: 2,
                transfer_id,
                offset: offset as u64,
                total_len: total as u64,
                data: data[offset..end].to_vec(),
                last,
                message: if last { encoded.clone() } else { Vec::new() },
            });
            if last {
                return out;
            }
            offset = end;
        }
    }

    /// An assembler on node 2 whose leader is node 1.
    fn new_assembler(max_size: u64) -> (SnapshotAssembler, Arc<Counters>) {
        let counters = Arc::new(Counters::default());
        Counters::set(&counters.leader, 1);
        let a = SnapshotAssembler::new(2, max_size, Duration::from_secs(60), counters.clone());
        (a, counters)
    }

    #[test]
    fn reassembles_many_chunks() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let msg = snapshot_message(data);
        let (assembler, counters) = new_assembler(1 << 20);
        let parts = chunks(&msg, 333, 7);
        assert!(parts.len() > 20);
        let mut done = None;
        for (i, part) in parts.into_iter().enumerate() {
            done = assembler.accept(part).unwrap();
            if done.is_none() {
                let held = counters
                    .metrics
                    .snapshot_receiving_bytes
                    .load(std::sync::atomic::Ordering::Relaxed);
                assert_eq!(
                    held,
                    333 * (i as u64 + 1),
                    "the metric follows the transfer"
                );
            }
        }
        let got = done.expect("complete message");
        assert_eq!(got, msg);
        let held = counters
            .metrics
            .snapshot_receiving_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(held, 0, "nothing held once assembled");
    }

    #[test]
    fn rejects_out_of_order_oversized_and_misaddressed_chunks() {
        let msg = snapshot_message(vec![7; 1000]);
        let (assembler, _) = new_assembler(1 << 20);
        let parts = chunks(&msg, 100, 1);
        assembler.accept(parts[0].clone()).unwrap();
        assert!(assembler.accept(parts[2].clone()).is_err(), "gap refused");
        assert!(
            assembler.accept(parts[1].clone()).is_err(),
            "transfer dropped after a gap"
        );

        let (small, _) = new_assembler(500);
        assert!(
            small.accept(parts[0].clone()).is_err(),
            "over the size limit"
        );

        let counters = Arc::new(Counters::default());
        Counters::set(&counters.leader, 1);
        let other = SnapshotAssembler::new(3, 1 << 20, Duration::from_secs(60), counters);
        assert_eq!(
            other.accept(parts[0].clone()).unwrap_err().0,
            Refusal::Addressing,
            "addressed to another node"
        );

        let mut lying = parts[0].clone();
        lying.data = vec![0; 2000];
        assert!(assembler.accept(lying).is_err(), "more data than announced");

        let mut garbage = chunks(&msg, 2000, 9).remove(0);
        garbage.message = vec![0xff; 16];
        assert!(assembler.accept(garbage).is_err(), "undecodable message");
    }

    #[test]
    fn only_the_leaders_chunks_are_taken() {
        let msg = snapshot_message(vec![1; 300]);
        let (assembler, counters) = new_assembler(1 << 20);
        Counters::set(&counters.leader, 3);
        let err = assembler
            .accept(chunks(&msg, 100, 1).remove(0))
            .unwrap_err();
        assert_eq!(err.0, Refusal::Chunk);
        assert!(err.1.contains("leader is node 3"), "{}", err.1);
        Counters::set(&counters.leader, 0);
        assert!(assembler.accept(chunks(&msg, 100, 1).remove(0)).is_err());
    }

    #[test]
    fn a_snapshot_that_fails_its_checks_is_refused_after_assembly() {
        let mut msg = snapshot_message(vec![1; 300]);
        // A conf state raft-rs cannot restore: a voter that is also a learner.
        msg.snapshot
            .as_mut()
            .unwrap()
            .metadata
            .as_mut()
            .unwrap()
            .conf_state = Some(ConfState::from((vec![1, 2], vec![2])));
        let (assembler, _) = new_assembler(1 << 20);
        let mut last = Ok(None);
        for part in chunks(&msg, 100, 1) {
            last = assembler.accept(part);
        }
        assert_eq!(last.unwrap_err().0, Refusal::Snapshot);
    }

    #[test]
    fn a_new_transfer_replaces_an_unfinished_one_and_silence_expires_it() {
        let msg = snapshot_message(vec![1; 500]);
        let (assembler, counters) = new_assembler(1 << 20);
        let first = chunks(&msg, 100, 1);
        assembler.accept(first[0].clone()).unwrap();
        let mut done = None;
        for part in chunks(&msg, 100, 2) {
            done = assembler.accept(part).unwrap();
        }
        assert_eq!(done.expect("second transfer completes"), msg);

        assembler.accept(first[0].clone()).unwrap();
        assembler.expire(Instant::now());
        assert!(
            assembler.accept(first[1].clone()).is_ok(),
            "not expired yet"
        );
        assembler.expire(Instant::now() + Duration::from_secs(61));
        assert!(assembler.accept(first[2].clone()).is_err(), "expired");
        let held = counters
            .metrics
            .snapshot_receiving_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(held, 0);
    }
}
