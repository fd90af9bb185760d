//! A hostile peer's repertoire: random bytes, bit-flipped and field-mutated copies of real
//! traffic, and the specific messages that reach raft-rs's `fatal!`s. Tests and fuzz targets
//! send these at live nodes, which must refuse them without stopping.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::RaftCodec as _;
use raft::prelude::{ConfState, Entry, Message, MessageType, Snapshot, SnapshotMetadata};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::node::membership::seal_envelope;
use crate::records::Member;
use crate::wire::{RaftBatch, SnapshotChunk};

/// Generates hostile traffic from a seed.
pub struct HostilePeer {
    rng: StdRng,
}

impl HostilePeer {
    /// A hostile peer whose choices all come from `seed`.
    pub fn new(seed: u64) -> Self {
        HostilePeer {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The random source, for a caller's own choices.
    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    /// A number near `x` or far from it: the values that break index arithmetic.
    fn number_near(&mut self, x: u64) -> u64 {
        match self.rng.gen_range(0..10) {
            0 => 0,
            1 => u64::MAX,
            2 => u64::MAX - self.rng.gen_range(0..4),
            3 => 1 << self.rng.gen_range(0..64),
            4 => self.rng.gen(),
            _ => x
                .saturating_add(self.rng.gen_range(0..4))
                .saturating_sub(self.rng.gen_range(0..4)),
        }
    }

    fn random_bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.rng.gen_range(0..=max);
        (0..len).map(|_| self.rng.gen()).collect()
    }

    fn conf_state(&mut self) -> ConfState {
        let ids = |rng: &mut StdRng| -> Vec<u64> {
            let n = rng.gen_range(0..4);
            (0..n).map(|_| rng.gen_range(0..6)).collect()
        };
        ConfState {
            voters: ids(&mut self.rng),
            learners: ids(&mut self.rng),
            voters_outgoing: ids(&mut self.rng),
            learners_next: ids(&mut self.rng),
            auto_leave: self.rng.gen(),
            ..Default::default()
        }
    }

    fn snapshot(&mut self, term: u64) -> Snapshot {
        let data = if self.rng.gen_bool(0.5) {
            let members = (1..=self.rng.gen_range(0..4))
                .map(|id| Member {
                    id,
                    addr: format!("node-{id}"),
                    promote: false,
                })
                .collect();
            seal_envelope(0, members, self.random_bytes(64))
        } else {
            self.random_bytes(64)
        };
        Snapshot {
            data: data.into(),
            metadata: Some(SnapshotMetadata {
                conf_state: Some(self.conf_state()).into(),
                index: self.number_near(1000),
                term: self.number_near(term),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        }
    }

    /// Changes some fields of `msg` (type, terms, indexes, entries, snapshot, context).
    pub fn mutate(&mut self, msg: &mut Message) {
        for _ in 0..self.rng.gen_range(1..4) {
            match self.rng.gen_range(0..12) {
                // Type numbers raft-rs does not know cannot be held in its types: they are
                // refused at decoding (`raft_codec`'s tests).
                0 => msg.msg_type = known_or_default(self.rng.gen_range(0..19)),
                1 => msg.term = self.number_near(msg.term),
                2 => msg.log_term = self.number_near(msg.log_term),
                3 => msg.index = self.number_near(msg.index),
                4 => msg.commit = self.number_near(msg.commit),
                5 => msg.commit_term = self.number_near(msg.commit_term),
                6 => msg.reject = !msg.reject,
                7 => msg.reject_hint = self.number_near(msg.reject_hint),
                8 => match self.rng.gen_range(0..4) {
                    0 => msg.entries.clear(),
                    1 => {
                        let extra = Entry {
                            index: self.number_near(msg.index.saturating_add(1)),
                            term: self.number_near(msg.term),
                            entry_type: known_or_default(self.rng.gen_range(0..3)),
                            data: self.random_bytes(32).into(),
                            ..Default::default()
                        };
                        msg.entries.push(extra);
                    }
                    2 => {
                        if let Some(e) = msg.entries.first_mut() {
                            e.index = self.rng.gen();
                            e.term = self.rng.gen();
                        }
                    }
                    _ => msg.entries.reverse(),
                },
                9 => msg.snapshot = Some(self.snapshot(msg.term)).into(),
                10 => msg.context = self.random_bytes(40).into(),
                _ => msg.request_snapshot = self.rng.gen_range(0..3),
            }
        }
    }

    /// One message's bytes: random, a bit-flipped real message, or a mutated real one
    /// (mostly re-addressed `from` -> `to`, as a sender that speaks for itself would).
    pub fn message_bytes(&mut self, real: &[Vec<u8>], from: u64, to: u64) -> Vec<u8> {
        let pick = (!real.is_empty()).then(|| real[self.rng.gen_range(0..real.len())].clone());
        match (self.rng.gen_range(0..10), pick) {
            (0, _) | (_, None) => self.random_bytes(128),
            (1, Some(mut bytes)) => {
                for _ in 0..self.rng.gen_range(1..4) {
                    if bytes.is_empty() {
                        break;
                    }
                    let i = self.rng.gen_range(0..bytes.len());
                    bytes[i] ^= 1 << self.rng.gen_range(0..8);
                }
                if self.rng.gen_bool(0.3) {
                    let keep = self.rng.gen_range(0..=bytes.len());
                    bytes.truncate(keep);
                }
                bytes
            }
            (_, Some(bytes)) => match Message::decode_from(bytes.as_slice()) {
                Ok(mut msg) => {
                    if self.rng.gen_bool(0.9) {
                        msg.from = from;
                        msg.to = to;
                    }
                    self.mutate(&mut msg);
                    msg.encode_to_vec()
                }
                Err(_) => bytes,
            },
        }
    }

    /// A batch of mutated traffic addressed from `from` to `to`, built from `captured`.
    pub fn batch(&mut self, captured: &[RaftBatch], from: u64, to: u64) -> RaftBatch {
        let real: Vec<Vec<u8>> = captured
            .iter()
            .flat_map(|b| b.messages.iter().map(|m| m.to_vec()))
            .collect();
        let n = self.rng.gen_range(1..=32);
        let messages = (0..n)
            .map(|_| self.message_bytes(&real, from, to).into())
            .collect();
        let mut from_addr = format!("node-{from}");
        if self.rng.gen_bool(0.05) {
            from_addr = "x".repeat(self.rng.gen_range(0..4096));
        }
        RaftBatch {
            cluster_id: 0,
            from,
            to,
            messages,
            from_addr,
        }
    }

    /// The messages that each stopped a node before raftkit checked its input, as if `from`
    /// sent them to `to` at `term`, where `to`'s log ends at `last_index`:
    /// an empty `MsgPropose` with term 0; a heartbeat from a higher term whose commit is past
    /// the log; a `MsgReadIndex` and a `MsgReadIndexResp` without their entry; an append that
    /// overflows its index; local-only types.
    pub fn fatal_messages(
        &mut self,
        from: u64,
        to: u64,
        term: u64,
        last_index: u64,
    ) -> Vec<Message> {
        let mut out = Vec::new();
        let mut make = |t: MessageType, f: &mut dyn FnMut(&mut Message)| {
            let mut m = Message {
                from,
                to,
                ..Default::default()
            };
            m.set_msg_type(t);
            f(&mut m);
            out.push(m);
        };
        make(MessageType::MsgPropose, &mut |_| {});
        make(MessageType::MsgHeartbeat, &mut |m| {
            m.term = term.saturating_add(1);
            m.commit = last_index.saturating_add(1_000_000);
        });
        make(MessageType::MsgReadIndex, &mut |_| {});
        make(MessageType::MsgReadIndexResp, &mut |m| {
            m.term = term;
            m.index = last_index.saturating_add(1_000_000);
        });
        make(MessageType::MsgAppend, &mut |m| {
            m.term = term;
            m.index = u64::MAX;
            m.log_term = term;
            m.entries = vec![Entry {
                index: 0,
                term,
                ..Default::default()
            }]
            .into();
        });
        for local in [
            MessageType::MsgHup,
            MessageType::MsgBeat,
            MessageType::MsgCheckQuorum,
            MessageType::MsgUnreachable,
            MessageType::MsgSnapStatus,
            MessageType::MsgTransferLeader,
        ] {
            make(local, &mut |m| m.term = term);
        }
        out
    }

    /// A snapshot from `from` whose conf state raft-rs cannot restore (a node that is a
    /// voter and a learner at once), cut into chunks, as the leader's transport would send it.
    pub fn inconsistent_snapshot_chunks(
        &mut self,
        from: u64,
        to: u64,
        term: u64,
    ) -> Vec<SnapshotChunk> {
        let mut msg = Message {
            from,
            to,
            term,
            ..Default::default()
        };
        msg.set_msg_type(MessageType::MsgSnapshot);
        let data = seal_envelope(0, Vec::new(), self.random_bytes(300));
        let header = Message {
            snapshot: Some(Snapshot {
                data: Vec::new().into(),
                metadata: Some(SnapshotMetadata {
                    conf_state: Some(ConfState::from((vec![from, to], vec![to]))).into(),
                    index: 1_000,
                    term,
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })
            .into(),
            ..msg
        };
        let transfer_id = self.rng.gen();
        let encoded = header.encode_to_vec();
        let chunks: Vec<&[u8]> = data.chunks(100).collect();
        let total = data.len() as u64;
        let mut offset = 0u64;
        chunks
            .iter()
            .enumerate()
            .map(|(i, part)| {
                let last = i + 1 == chunks.len();
                let chunk = SnapshotChunk {
                    from,
                    to,
                    transfer_id,
                    offset,
                    total_len: total,
                    data: part.to_vec(),
                    last,
                    message: if last { encoded.clone() } else { Vec::new() },
                };
                offset += part.len() as u64;
                chunk
            })
            .collect()
    }

    /// A random snapshot chunk claiming to come from `from`.
    pub fn random_chunk(&mut self, from: u64, to: u64) -> SnapshotChunk {
        SnapshotChunk {
            from,
            to,
            transfer_id: self.rng.gen_range(0..3),
            offset: self.number_near(0),
            total_len: self.number_near(100),
            data: self.random_bytes(200),
            last: self.rng.gen(),
            message: self.random_bytes(100),
        }
    }
}

/// The enum value numbered `n` (the default when there is none).
fn known_or_default<E: protobuf::ProtobufEnum + Default>(n: i32) -> E {
    E::from_i32(n).unwrap_or_default()
}
