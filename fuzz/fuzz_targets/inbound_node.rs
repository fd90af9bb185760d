#![no_main]
//! The inbound path of a live 3-node cluster: hostile raft batches, snapshot chunks and calls
//! from a peer that can claim any node id. No node may stop, and every node must keep
//! answering `status()`.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use raft::prelude::{ConfState, Entry, Message, Snapshot, SnapshotMetadata};
use raft_core::testing::cluster::{test_config, TestCluster};
use raft_core::testing::hostile::HostilePeer;
use raft_core::transport::LocalTransport;
use raft_core::wire::{
    request, BatchRequest, LeaderInfoRequest, ProposeRequest, QueryRequest, RaftBatch, Request,
    SnapshotChunk, StatusRequest, TransferLeaderRequest,
};
use raft_core::Transport;
use raft_core::RaftCodec as _;

struct World {
    rt: tokio::runtime::Runtime,
    cluster: Arc<TestCluster>,
    attacker: LocalTransport,
    as66: LocalTransport,
    /// Last seen (term, last_log_index) per node 1..=3, to aim numbers near real values.
    seen: Mutex<[(u64, u64); 4]>,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let cluster = rt.block_on(async {
            let c = TestCluster::start(3, test_config(), 1).await;
            c.wait_for_leader(Duration::from_secs(10)).await;
            c
        });
        let attacker = cluster.network().transport();
        let as66 = cluster.network().transport_as(66);
        World {
            rt,
            cluster,
            attacker,
            as66,
            seen: Mutex::new([(0, 0); 4]),
        }
    })
}

/// Reads the fuzz input; yields zeros once it runs out.
struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    fn empty(&self) -> bool {
        self.data.is_empty()
    }
    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }
    fn u64_full(&mut self) -> u64 {
        let mut v = 0u64;
        for _ in 0..8 {
            v = (v << 8) | self.u8() as u64;
        }
        v
    }
    /// A number near `base` or far from it.
    fn num(&mut self, base: u64) -> u64 {
        let sel = self.u8();
        let small = (sel >> 3) as u64; // 0..32
        match sel & 7 {
            0 => small,
            1 => u64::MAX - (small & 3),
            2 => self.u64_full(),
            3 => base.saturating_sub(small & 7),
            4 => 1u64 << (small * 2 % 64),
            _ => base.saturating_add(small & 7),
        }
    }
    fn slice(&mut self, max: usize) -> Vec<u8> {
        let n = (self.u8() as usize).min(max).min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a.to_vec()
    }
    fn ids(&mut self) -> Vec<u64> {
        let n = self.u8() % 5;
        (0..n).map(|_| (self.u8() % 8) as u64).collect()
    }
}

fn claimed_id(b: &mut Bytes<'_>) -> u64 {
    match b.u8() % 8 {
        6 | 7 => 66,
        x => x as u64,
    }
}

/// The enum value numbered `n`, or the default: numbers raft-rs does not know cannot be held
/// in its types (the raw-bytes operations send those).
fn known_or_default<E: protobuf::ProtobufEnum + Default>(n: i32) -> E {
    E::from_i32(n).unwrap_or_default()
}

fn build_message(b: &mut Bytes<'_>, from: u64, to: u64, term: u64, last: u64) -> Message {
    let mut m = Message {
        msg_type: known_or_default((b.u8() % 20) as i32),
        from,
        to,
        term: b.num(term),
        log_term: b.num(term),
        index: b.num(last),
        commit: b.num(last),
        commit_term: b.num(term),
        reject: b.bool(),
        reject_hint: b.num(last),
        request_snapshot: b.num(0),
        ..Default::default()
    };
    let flags = b.u8();
    if flags & 1 != 0 {
        // A sender that lies about who it is inside the message as well.
        m.from = claimed_id(b);
        m.to = (b.u8() % 5) as u64;
    }
    let n_entries = (flags >> 1) % 5;
    let mut idx = m.index;
    for _ in 0..n_entries {
        let follow = b.bool();
        idx = if follow { idx.saturating_add(1) } else { b.num(last) };
        m.entries.push(Entry {
            index: idx,
            term: b.num(term),
            entry_type: known_or_default((b.u8() % 4) as i32),
            data: b.slice(32).into(),
            context: if b.bool() { b.slice(16).into() } else { Default::default() },
            ..Default::default()
        });
    }
    if flags & 0x10 != 0 {
        m.snapshot = Some(Snapshot {
            data: b.slice(64).into(),
            metadata: Some(SnapshotMetadata {
                conf_state: Some(ConfState {
                    voters: b.ids(),
                    learners: b.ids(),
                    voters_outgoing: b.ids(),
                    learners_next: b.ids(),
                    auto_leave: b.bool(),
                    ..Default::default()
                })
                .into(),
                index: b.num(last),
                term: b.num(term),
                ..Default::default()
            }).into(),
            ..Default::default()
        })
        .into();
    }
    if flags & 0x20 != 0 {
        m.context = b.slice(32).into();
    }
    m
}

fn safe_call(b: &mut Bytes<'_>, depth: u32) -> Request {
    let kind = match b.u8() % 6 {
        0 => request::Kind::Propose(ProposeRequest {
            data: b.slice(32),
            timeout_ms: (b.u8() as u64) * 4,
            // A few sessions and command numbers (0 among them: invalid), so retries,
            // stale duplicates and forgotten sessions all come up.
            session_id: (b.u8() % 4) as u64,
            session_seq: (b.u8() % 4) as u64,
            session_established: b.u8() % 2 == 1,
        }),
        1 => request::Kind::Query(QueryRequest {
            query: b.slice(32),
            consistency: (b.u8() % 4) as i32,
            timeout_ms: (b.u8() as u64) * 4,
        }),
        2 => request::Kind::TransferLeader(TransferLeaderRequest {
            target: (b.u8() % 8) as u64,
            timeout_ms: (b.u8() as u64) * 4,
        }),
        3 => request::Kind::LeaderInfo(LeaderInfoRequest {}),
        4 if depth == 0 => {
            let n = b.u8() % 4;
            request::Kind::Batch(BatchRequest {
                requests: (0..n).map(|_| safe_call(b, depth + 1)).collect(),
            })
        }
        _ => request::Kind::Status(StatusRequest {}),
    };
    Request {
        cluster_id: 0,
        kind: Some(kind),
    }
}

fn chunk_call(chunk: SnapshotChunk) -> Request {
    Request {
        cluster_id: 0,
        kind: Some(request::Kind::SnapshotChunk(chunk)),
    }
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let mut b = Bytes { data };
    let mut ops = 0;
    while !b.empty() && ops < 8 {
        ops += 1;
        let op = b.u8();
        let target = 1 + (b.u8() % 3) as u64;
        let from = claimed_id(&mut b);
        let tr = if b.u8() & 0x80 != 0 { &w.as66 } else { &w.attacker };
        let addr = w.cluster.addr(target);
        let (term, last) = w.seen.lock().unwrap()[target as usize];
        let from_addr = if b.bool() {
            w.cluster.addr(from)
        } else {
            String::from_utf8_lossy(&b.slice(16)).into_owned()
        };

        let mut batches: Vec<RaftBatch> = Vec::new();
        let mut calls: Vec<Request> = Vec::new();
        match op % 8 {
            0..=2 => {
                let n = 1 + b.u8() % 4;
                let messages = (0..n)
                    .map(|_| build_message(&mut b, from, target, term, last).encode_to_vec().into())
                    .collect();
                batches.push(RaftBatch { cluster_id: 0, from, to: target, messages, from_addr });
            }
            3 => {
                let n = 1 + b.u8() % 3;
                let messages = (0..n).map(|_| b.slice(128).into()).collect();
                batches.push(RaftBatch { cluster_id: 0, from, to: target, messages, from_addr });
            }
            4 => {
                let msg = if b.bool() {
                    let mut m = build_message(&mut b, from, target, term, last);
                    if b.bool() {
                        m.msg_type = raft::prelude::MessageType::MsgSnapshot;
                    }
                    m.encode_to_vec()
                } else {
                    b.slice(64)
                };
                let chunk = SnapshotChunk {
                    from,
                    to: if b.bool() { target } else { (b.u8() % 5) as u64 },
                    transfer_id: b.num(0),
                    offset: b.num(0),
                    total_len: b.num(64),
                    data: b.slice(128),
                    last: b.bool(),
                    message: msg,
                };
                calls.push(chunk_call(chunk));
            }
            5 => calls.push(safe_call(&mut b, 0)),
            6 => {
                // The messages that once stopped a node, possibly mutated further.
                let mut peer = HostilePeer::new(b.u64_full());
                let mut msgs = peer.fatal_messages(from, target, b.num(term), b.num(last));
                let pick = b.u8() as usize % msgs.len();
                let mut chosen = if b.bool() { vec![msgs.swap_remove(pick)] } else { msgs };
                if b.bool() {
                    for m in chosen.iter_mut() {
                        peer.mutate(m);
                    }
                }
                let messages = chosen.iter().map(|m| m.encode_to_vec().into()).collect();
                batches.push(RaftBatch { cluster_id: 0, from, to: target, messages, from_addr });
            }
            _ => {
                let mut peer = HostilePeer::new(b.u64_full());
                if b.bool() {
                    for c in peer.inconsistent_snapshot_chunks(from, target, b.num(term)) {
                        calls.push(chunk_call(c));
                    }
                } else {
                    let n = 1 + b.u8() % 4;
                    for _ in 0..n {
                        calls.push(chunk_call(peer.random_chunk(from, target)));
                    }
                }
            }
        }

        w.rt.block_on(async {
            for batch in batches {
                let _ = tokio::time::timeout(Duration::from_secs(2), tr.send(&addr, batch)).await;
            }
            for call in calls {
                let _ = tr.call(&addr, call, Duration::from_secs(2)).await;
            }
        });
    }

    // Every node must still run and answer.
    w.cluster.assert_alive();
    w.rt.block_on(async {
        for id in 1..=3u64 {
            let mb = w.cluster.mailbox(id);
            match tokio::time::timeout(Duration::from_secs(1), mb.status()).await {
                Ok(Ok(s)) => {
                    w.seen.lock().unwrap()[id as usize] = (s.term, s.last_log_index);
                }
                Ok(Err(e)) => panic!("node {id} status() failed: {e}"),
                Err(_) => panic!("node {id} status() did not answer within 1s"),
            }
        }
    });
    w.cluster.assert_alive();
});
