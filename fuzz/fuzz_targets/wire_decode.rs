#![no_main]
//! Every wire decoder raftkit exposes must reject malformed bytes without panicking.

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use raft_core::wire::{RaftBatch, Request, Response, SnapshotChunk};

fuzz_target!(|data: &[u8]| {
    let _ = Request::decode(data);
    let _ = Response::decode(data);
    let _ = RaftBatch::decode(data);
    if let Ok(chunk) = SnapshotChunk::decode(data) {
        // The last chunk carries an eraftpb message: decode it as the receiver would.
        let _ = <raft::prelude::Message as raft_core::RaftCodec>::decode_from(&chunk.message[..]);
    }
    let _ = <raft::prelude::Message as raft_core::RaftCodec>::decode_from(data);
    if let Ok(batch) = RaftBatch::decode(data) {
        for m in &batch.messages {
            let _ = <raft::prelude::Message as raft_core::RaftCodec>::decode_from(&m[..]);
        }
    }
});
