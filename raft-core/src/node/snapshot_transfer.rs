//! Snapshots travel as ordered chunk calls, so no transport needs special code for them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use raft::prelude::{Message, MessageType};

use crate::error::TransportError;
use crate::transport::Transport;
use crate::wire::{self, request, response, Request, SnapshotChunk};

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
        };
        match transport.call(addr, request).await?.kind {
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
    transfer_id: u64,
    total_len: u64,
    data: Vec<u8>,
}

/// Reassembles incoming snapshot chunks, one transfer per sending peer at a time.
pub(crate) struct SnapshotAssembler {
    local_id: u64,
    max_size: u64,
    inflight: Mutex<HashMap<u64, Assembly>>,
}

impl SnapshotAssembler {
    pub(crate) fn new(local_id: u64, max_size: u64) -> Self {
        SnapshotAssembler {
            local_id,
            max_size,
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one chunk; returns the complete MsgSnapshot after the last one.
    pub(crate) fn accept(&self, chunk: SnapshotChunk) -> Result<Option<Message>, String> {
        if chunk.to != self.local_id {
            return Err(format!(
                "snapshot chunk for node {} reached node {}",
                chunk.to, self.local_id
            ));
        }
        if chunk.total_len > self.max_size {
            return Err(format!(
                "snapshot of {} bytes exceeds the limit of {} bytes",
                chunk.total_len, self.max_size
            ));
        }
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if chunk.offset == 0 {
            // A new transfer from this peer replaces any unfinished one.
            inflight.insert(
                chunk.from,
                Assembly {
                    transfer_id: chunk.transfer_id,
                    total_len: chunk.total_len,
                    data: Vec::with_capacity(chunk.total_len.min(64 << 20) as usize),
                },
            );
        }
        let assembly = match inflight.get_mut(&chunk.from) {
            Some(a) if a.transfer_id == chunk.transfer_id => a,
            _ => return Err("snapshot chunk of an unknown transfer".into()),
        };
        if chunk.offset != assembly.data.len() as u64 || chunk.total_len != assembly.total_len {
            inflight.remove(&chunk.from);
            return Err("snapshot chunk out of order".into());
        }
        if assembly.data.len() as u64 + chunk.data.len() as u64 > assembly.total_len {
            inflight.remove(&chunk.from);
            return Err("snapshot chunks exceed the announced length".into());
        }
        assembly.data.extend_from_slice(&chunk.data);
        if !chunk.last {
            return Ok(None);
        }
        let Some(assembly) = inflight.remove(&chunk.from) else {
            return Err("snapshot transfer vanished".into());
        };
        if assembly.data.len() as u64 != assembly.total_len {
            return Err("snapshot ended before its announced length".into());
        }
        let mut msg = wire::decode_raft_message(&chunk.message).map_err(|e| e.to_string())?;
        if msg.msg_type() != MessageType::MsgSnapshot || msg.snapshot.is_none() {
            return Err("the last snapshot chunk does not carry a snapshot message".into());
        }
        if msg.to != self.local_id || msg.from != chunk.from {
            return Err("snapshot message addressed inconsistently".into());
        }
        if let Some(s) = msg.snapshot.as_mut() {
            s.data = assembly.data;
        }
        Ok(Some(msg))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use raft::prelude::{Snapshot, SnapshotMetadata};

    use super::*;

    fn snapshot_message(data: Vec<u8>) -> Message {
        let mut msg = Message {
            from: 1,
            to: 2,
            snapshot: Some(Snapshot {
                data,
                metadata: Some(SnapshotMetadata {
                    index: 9,
                    term: 2,
                    ..Default::default()
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

    #[test]
    fn reassembles_many_chunks() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let msg = snapshot_message(data.clone());
        let assembler = SnapshotAssembler::new(2, 1 << 20);
        let parts = chunks(&msg, 333, 7);
        assert!(parts.len() > 20);
        let mut done = None;
        for part in parts {
            done = assembler.accept(part).unwrap();
        }
        let got = done.expect("complete message");
        assert_eq!(got, msg);
    }

    #[test]
    fn rejects_out_of_order_oversized_and_misaddressed_chunks() {
        let msg = snapshot_message(vec![7; 1000]);
        let assembler = SnapshotAssembler::new(2, 1 << 20);
        let parts = chunks(&msg, 100, 1);
        assembler.accept(parts[0].clone()).unwrap();
        assert!(assembler.accept(parts[2].clone()).is_err(), "gap refused");
        assert!(
            assembler.accept(parts[1].clone()).is_err(),
            "transfer dropped after a gap"
        );

        let small = SnapshotAssembler::new(2, 500);
        assert!(
            small.accept(parts[0].clone()).is_err(),
            "over the size limit"
        );

        let other = SnapshotAssembler::new(3, 1 << 20);
        assert!(
            other.accept(parts[0].clone()).is_err(),
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
    fn a_new_transfer_replaces_an_unfinished_one() {
        let msg = snapshot_message(vec![1; 500]);
        let assembler = SnapshotAssembler::new(2, 1 << 20);
        let first = chunks(&msg, 100, 1);
        assembler.accept(first[0].clone()).unwrap();
        let mut done = None;
        for part in chunks(&msg, 100, 2) {
            done = assembler.accept(part).unwrap();
        }
        assert_eq!(done.expect("second transfer completes"), msg);
    }
}
