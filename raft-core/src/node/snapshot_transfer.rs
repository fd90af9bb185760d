//! Snapshots travel as ordered chunk calls, so no transport needs special code for them: the
//! user's state (the snapshot's payload) in chunks, streamed from the sender's log storage
//! and into the receiver's, and on the last chunk the raft message, whose snapshot data is
//! the small envelope naming the payload's length and CRC-32. Neither side holds the state
//! whole.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message as _;
use raft::prelude::{Message, Snapshot};

use super::inbound::{check_wire, Refusal, Route};
use super::membership::open_payload_ref;
use super::Counters;
use crate::error::TransportError;
use crate::log_storage::{snapshot_index, snapshot_term, LogStorage};
use crate::metrics::NodeMetrics;
use crate::records::{PayloadRef, SnapshotEnvelope};
use crate::snapshot_payload::SnapshotPayload;
use crate::snapshot_stream::{SnapshotSink, SnapshotSource};
use crate::transport::Transport;
use crate::wire::{self, request, response, Request, SnapshotChunk};

/// How long one snapshot chunk may take to reach the peer and be stored there.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);

/// Splits a snapshot into the envelope that names its payload and a stream of the payload:
/// read from the log storage when it keeps the payload apart, taken out of the data when
/// the data holds it inline (a log in memory).
fn split_payload(
    snapshot: &Snapshot,
    storage: &Arc<dyn LogStorage>,
) -> Result<(Vec<u8>, SnapshotSource), String> {
    if let Some(payload) = open_payload_ref(&snapshot.data)? {
        let meta = snapshot.metadata.clone().unwrap_or_default();
        let source = SnapshotSource::for_storage(storage, meta, payload.len, payload.crc32)
            .map_err(|e| format!("reading the snapshot: {e}"))?;
        return Ok((snapshot.data.to_vec(), source));
    }
    let mut envelope = SnapshotEnvelope::decode(&snapshot.data[..])
        .map_err(|e| format!("snapshot envelope: {e}"))?;
    let user_data = std::mem::take(&mut envelope.user_data);
    envelope.payload = Some(PayloadRef {
        len: user_data.len() as u64,
        crc32: crc32fast::hash(&user_data),
    });
    Ok((
        envelope.encode_to_vec(),
        SnapshotSource::from_bytes(user_data),
    ))
}

/// Sends one MsgSnapshot to `addr`: its payload in chunks of `chunk_size` bytes, read from
/// `storage` as they go.
pub(crate) async fn send_snapshot(
    transport: &Arc<dyn Transport>,
    addr: &str,
    mut msg: Message,
    chunk_size: usize,
    transfer_id: u64,
    storage: &Arc<dyn LogStorage>,
) -> Result<(), TransportError> {
    let failed = |reason: String| TransportError::Failed {
        addr: addr.to_string(),
        reason,
    };
    let Some(snapshot) = msg.snapshot.as_mut() else {
        return Err(TransportError::Malformed(
            "a snapshot message without a snapshot".into(),
        ));
    };
    let (envelope, mut source) = split_payload(snapshot, storage).map_err(&failed)?;
    snapshot.data = envelope.into();
    let mut header = wire::encode_raft_message(&msg);
    let total = source.len();
    let chunk_size = chunk_size.max(1) as u64;
    let mut offset = 0u64;
    loop {
        let take = usize::try_from((total - offset).min(chunk_size))
            .map_err(|_| failed("a snapshot chunk larger than memory".into()))?;
        let mut data = vec![0u8; take];
        source
            .read_exact(&mut data)
            .await
            .map_err(|e| failed(format!("reading the snapshot: {e}")))?;
        let end = offset + take as u64;
        let last = end == total;
        let chunk = SnapshotChunk {
            from: msg.from,
            to: msg.to,
            transfer_id,
            offset,
            total_len: total,
            data,
            last,
            message: if last {
                std::mem::take(&mut header)
            } else {
                Vec::new()
            },
        };
        let request = Request {
            kind: Some(request::Kind::SnapshotChunk(chunk)),
            cluster_id: 0,
        };
        match transport.call(addr, request, CHUNK_TIMEOUT).await?.kind {
            Some(response::Kind::SnapshotChunk(true)) => {}
            Some(response::Kind::Error(e)) => {
                return Err(failed(format!("snapshot chunk rejected: {}", e.message)))
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

/// Most received payloads kept while raft-rs has not handed their snapshots back to install.
const HELD_PAYLOADS: usize = 2;

/// Payloads of snapshots received whole, waiting for raft-rs to hand their snapshot back in a
/// `Ready` to be installed. A snapshot raft-rs refused (a stale one) leaves its payload here
/// until newer ones push it out.
#[derive(Default)]
pub(crate) struct ReceivedPayloads {
    held: Mutex<VecDeque<(u64, u64, SnapshotPayload)>>,
}

impl ReceivedPayloads {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, u64, SnapshotPayload)>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn put(&self, index: u64, term: u64, payload: SnapshotPayload) {
        let mut held = self.lock();
        held.retain(|(i, t, _)| (*i, *t) != (index, term));
        held.push_back((index, term, payload));
        while held.len() > HELD_PAYLOADS {
            held.pop_front();
        }
    }

    /// The payload of the snapshot at `index` and `term`, if it was received.
    pub(crate) fn take(&self, index: u64, term: u64) -> Option<SnapshotPayload> {
        let mut held = self.lock();
        let at = held
            .iter()
            .position(|(i, t, _)| (*i, *t) == (index, term))?;
        held.remove(at).map(|(_, _, payload)| payload)
    }
}

struct Assembly {
    from: u64,
    transfer_id: u64,
    total_len: u64,
    received: u64,
    sink: SnapshotSink,
    last_chunk: Instant,
}

/// Receives the snapshot the leader sends, chunk by chunk, into a new payload of the log
/// storage.
///
/// Only the current leader's chunks are taken, one transfer at a time (a new one replaces an
/// unfinished one), at most `max_size` bytes, and a transfer that sends nothing for `timeout`
/// is dropped. The chunks go to the log storage as they come: what is held in memory is a
/// few chunks, whatever the snapshot's size.
pub(crate) struct SnapshotAssembler {
    local_id: u64,
    max_size: u64,
    timeout: Duration,
    counters: Arc<Counters>,
    storage: Arc<dyn LogStorage>,
    received: Arc<ReceivedPayloads>,
    inflight: tokio::sync::Mutex<Option<Assembly>>,
}

/// Why a chunk was refused, and what to tell its sender.
pub(crate) type ChunkRefusal = (Refusal, String);

impl SnapshotAssembler {
    pub(crate) fn new(
        local_id: u64,
        max_size: u64,
        timeout: Duration,
        counters: Arc<Counters>,
        storage: Arc<dyn LogStorage>,
        received: Arc<ReceivedPayloads>,
    ) -> Self {
        SnapshotAssembler {
            local_id,
            max_size,
            timeout,
            counters,
            storage,
            received,
            inflight: tokio::sync::Mutex::new(None),
        }
    }

    fn publish(&self, inflight: &Option<Assembly>) {
        let bytes = inflight.as_ref().map_or(0, |a| a.received);
        NodeMetrics::set(&self.counters.metrics.snapshot_receiving_bytes, bytes);
    }

    /// Drops a transfer that has been silent for longer than the timeout. A transfer busy
    /// storing a chunk is left alone: it is not silent.
    pub(crate) fn expire(&self, now: Instant) {
        let Ok(mut inflight) = self.inflight.try_lock() else {
            return;
        };
        if inflight
            .as_ref()
            .is_some_and(|a| now.saturating_duration_since(a.last_chunk) > self.timeout)
        {
            if let Some(a) = inflight.take() {
                tracing::warn!(
                    node = self.local_id,
                    from = a.from,
                    received = a.received,
                    total = a.total_len,
                    "dropped a snapshot transfer that stalled"
                );
            }
            self.publish(&inflight);
        }
    }

    /// Takes one chunk; returns the complete, checked MsgSnapshot after the last one, its
    /// payload stored and waiting in [`ReceivedPayloads`].
    pub(crate) async fn accept(
        &self,
        chunk: SnapshotChunk,
    ) -> Result<Option<Message>, ChunkRefusal> {
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
        let mut inflight = self.inflight.lock().await;
        let result = self.accept_locked(&mut inflight, chunk).await;
        self.publish(&inflight);
        result
    }

    async fn accept_locked(
        &self,
        inflight: &mut Option<Assembly>,
        chunk: SnapshotChunk,
    ) -> Result<Option<Message>, ChunkRefusal> {
        let refuse = |why: &str| Err((Refusal::Chunk, why.to_string()));
        if chunk.offset == 0 {
            // A new transfer replaces any unfinished one (whose payload is abandoned).
            let sink = SnapshotSink::for_storage(&self.storage)
                .map_err(|e| (Refusal::Chunk, format!("cannot store a snapshot: {e}")))?;
            *inflight = Some(Assembly {
                from: chunk.from,
                transfer_id: chunk.transfer_id,
                total_len: chunk.total_len,
                received: 0,
                sink,
                last_chunk: Instant::now(),
            });
        }
        let assembly = match inflight.as_mut() {
            Some(a) if a.transfer_id == chunk.transfer_id && a.from == chunk.from => a,
            _ => return refuse("snapshot chunk of an unknown transfer"),
        };
        if chunk.offset != assembly.received || chunk.total_len != assembly.total_len {
            *inflight = None;
            return refuse("snapshot chunk out of order");
        }
        if assembly.received + chunk.data.len() as u64 > assembly.total_len {
            *inflight = None;
            return refuse("snapshot chunks exceed the announced length");
        }
        if let Err(e) = assembly.sink.write(&chunk.data).await {
            *inflight = None;
            return Err((
                Refusal::Chunk,
                format!("cannot store a snapshot chunk: {e}"),
            ));
        }
        assembly.received += chunk.data.len() as u64;
        assembly.last_chunk = Instant::now();
        if !chunk.last {
            return Ok(None);
        }
        let Some(assembly) = inflight.take() else {
            return refuse("snapshot transfer vanished");
        };
        if assembly.received != assembly.total_len {
            return refuse("snapshot ended before its announced length");
        }
        let msg = wire::decode_raft_message(&chunk.message[..])
            .map_err(|e| (Refusal::Undecodable, e.to_string()))?;
        if msg.from != chunk.from {
            return Err((
                Refusal::Addressing,
                "snapshot message addressed inconsistently".into(),
            ));
        }
        check_wire(&msg, self.local_id, Route::Chunks)
            .map_err(|r| (r, "the assembled snapshot message is invalid".to_string()))?;
        let snapshot = msg.snapshot.clone().unwrap_or_default();
        let expected = match open_payload_ref(&snapshot.data) {
            Ok(Some(expected)) => expected,
            _ => return Err((Refusal::Snapshot, "the snapshot names no payload".into())),
        };
        let payload = assembly
            .sink
            .finish()
            .await
            .map_err(|e| (Refusal::Chunk, format!("cannot store a snapshot: {e}")))?;
        if payload.len() != expected.len || payload.crc32() != expected.crc32 {
            return Err((
                Refusal::Snapshot,
                format!(
                    "the snapshot's payload ({} bytes) does not match its envelope ({} bytes, \
                     another CRC-32)",
                    payload.len(),
                    expected.len
                ),
            ));
        }
        self.received
            .put(snapshot_index(&snapshot), snapshot_term(&snapshot), payload);
        Ok(Some(msg))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use raft::prelude::{ConfState, MessageType, Snapshot, SnapshotMetadata};

    use super::*;
    use crate::node::membership::seal_envelope;
    use crate::records::PayloadRef;

    /// A valid MsgSnapshot from node 1 to node 2 whose user state is `data`.
    fn snapshot_message(data: Vec<u8>) -> Message {
        let mut msg = Message {
            from: 1,
            to: 2,
            term: 2,
            snapshot: Some(Snapshot {
                data: seal_envelope(0, Vec::new(), data).into(),
                metadata: Some(SnapshotMetadata {
                    index: 9,
                    term: 2,
                    conf_state: Some(ConfState::from((vec![1], vec![2]))).into(),
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        msg.set_msg_type(MessageType::MsgSnapshot);
        msg
    }

    /// `msg` as it arrives: its snapshot data the envelope naming the payload.
    fn header(msg: &Message) -> (Message, Vec<u8>) {
        let mut header = msg.clone();
        let snapshot = header.snapshot.as_mut().unwrap();
        let mut envelope = SnapshotEnvelope::decode(&snapshot.data[..]).unwrap();
        let data = std::mem::take(&mut envelope.user_data);
        envelope.payload = Some(PayloadRef {
            len: data.len() as u64,
            crc32: crc32fast::hash(&data),
        });
        snapshot.data = envelope.encode_to_vec().into();
        (header, data)
    }

    fn chunks(msg: &Message, size: usize, transfer_id: u64) -> Vec<SnapshotChunk> {
        let (header, data) = header(msg);
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
        (assembler_on(2, max_size, counters.clone()), counters)
    }

    fn assembler_on(id: u64, max_size: u64, counters: Arc<Counters>) -> SnapshotAssembler {
        SnapshotAssembler::new(
            id,
            max_size,
            Duration::from_secs(60),
            counters,
            Arc::new(crate::MemLogStorage::new()),
            Arc::new(ReceivedPayloads::default()),
        )
    }

    /// The user's state received for the snapshot at index 9, term 2.
    fn received(assembler: &SnapshotAssembler) -> Vec<u8> {
        assembler
            .received
            .take(9, 2)
            .expect("a payload")
            .into_inline()
            .expect("in memory")
    }

    #[tokio::test]
    async fn reassembles_many_chunks() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let msg = snapshot_message(data.clone());
        let (assembler, counters) = new_assembler(1 << 20);
        let parts = chunks(&msg, 333, 7);
        assert!(parts.len() > 20);
        let mut done = None;
        for (i, part) in parts.into_iter().enumerate() {
            done = assembler.accept(part).await.unwrap();
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
        assert_eq!(got, header(&msg).0);
        assert_eq!(received(&assembler), data);
        let held = counters
            .metrics
            .snapshot_receiving_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(held, 0, "nothing held once assembled");
    }

    #[tokio::test]
    async fn rejects_out_of_order_oversized_and_misaddressed_chunks() {
        let msg = snapshot_message(vec![7; 1000]);
        let (assembler, _) = new_assembler(1 << 20);
        let parts = chunks(&msg, 100, 1);
        assembler.accept(parts[0].clone()).await.unwrap();
        assert!(
            assembler.accept(parts[2].clone()).await.is_err(),
            "gap refused"
        );
        assert!(
            assembler.accept(parts[1].clone()).await.is_err(),
            "transfer dropped after a gap"
        );

        let (small, _) = new_assembler(500);
        assert!(
            small.accept(parts[0].clone()).await.is_err(),
            "over the size limit"
        );

        let counters = Arc::new(Counters::default());
        Counters::set(&counters.leader, 1);
        let other = assembler_on(3, 1 << 20, counters);
        assert_eq!(
            other.accept(parts[0].clone()).await.unwrap_err().0,
            Refusal::Addressing,
            "addressed to another node"
        );

        let mut lying = parts[0].clone();
        lying.data = vec![0; 2000];
        assert!(
            assembler.accept(lying).await.is_err(),
            "more data than announced"
        );

        let mut garbage = chunks(&msg, 2000, 9).remove(0);
        garbage.message = vec![0xff; 16];
        assert!(
            assembler.accept(garbage).await.is_err(),
            "undecodable message"
        );
    }

    #[tokio::test]
    async fn a_payload_that_does_not_match_its_envelope_is_refused() {
        let msg = snapshot_message(vec![5; 700]);
        let (assembler, _) = new_assembler(1 << 20);
        let mut parts = chunks(&msg, 300, 4);
        parts[1].data[7] ^= 1;
        let mut last = Ok(None);
        for part in parts {
            last = assembler.accept(part).await;
        }
        let (refusal, why) = last.unwrap_err();
        assert_eq!(refusal, Refusal::Snapshot);
        assert!(why.contains("does not match"), "{why}");
        assert!(assembler.received.take(9, 2).is_none(), "nothing kept");
    }

    #[test]
    fn at_most_two_received_payloads_wait() {
        let received = ReceivedPayloads::default();
        for index in 1..=3 {
            received.put(index, 1, SnapshotPayload::inline(vec![index as u8]));
        }
        assert!(received.take(1, 1).is_none(), "the oldest was dropped");
        assert!(received.take(2, 2).is_none(), "matched by term too");
        assert_eq!(received.take(3, 1).unwrap().into_inline().unwrap(), vec![3]);
        assert!(received.take(3, 1).is_none(), "taken once");
    }

    #[tokio::test]
    async fn only_the_leaders_chunks_are_taken() {
        let msg = snapshot_message(vec![1; 300]);
        let (assembler, counters) = new_assembler(1 << 20);
        Counters::set(&counters.leader, 3);
        let err = assembler
            .accept(chunks(&msg, 100, 1).remove(0))
            .await
            .unwrap_err();
        assert_eq!(err.0, Refusal::Chunk);
        assert!(err.1.contains("leader is node 3"), "{}", err.1);
        Counters::set(&counters.leader, 0);
        assert!(assembler
            .accept(chunks(&msg, 100, 1).remove(0))
            .await
            .is_err());
    }

    #[tokio::test]
    async fn a_snapshot_that_fails_its_checks_is_refused_after_assembly() {
        let mut msg = snapshot_message(vec![1; 300]);
        // A conf state raft-rs cannot restore: a voter that is also a learner.
        msg.snapshot
            .as_mut()
            .unwrap()
            .metadata
            .as_mut()
            .unwrap()
            .conf_state = Some(ConfState::from((vec![1, 2], vec![2]))).into();
        let (assembler, _) = new_assembler(1 << 20);
        let mut last = Ok(None);
        for part in chunks(&msg, 100, 1) {
            last = assembler.accept(part).await;
        }
        assert_eq!(last.unwrap_err().0, Refusal::Snapshot);
    }

    #[tokio::test]
    async fn a_new_transfer_replaces_an_unfinished_one_and_silence_expires_it() {
        let msg = snapshot_message(vec![1; 500]);
        let (assembler, counters) = new_assembler(1 << 20);
        let first = chunks(&msg, 100, 1);
        assembler.accept(first[0].clone()).await.unwrap();
        let mut done = None;
        for part in chunks(&msg, 100, 2) {
            done = assembler.accept(part).await.unwrap();
        }
        assert_eq!(done.expect("second transfer completes"), header(&msg).0);
        assert_eq!(received(&assembler), vec![1; 500]);

        assembler.accept(first[0].clone()).await.unwrap();
        assembler.expire(Instant::now());
        assert!(
            assembler.accept(first[1].clone()).await.is_ok(),
            "not expired yet"
        );
        assembler.expire(Instant::now() + Duration::from_secs(61));
        assert!(assembler.accept(first[2].clone()).await.is_err(), "expired");
        let held = counters
            .metrics
            .snapshot_receiving_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(held, 0);
    }
}
