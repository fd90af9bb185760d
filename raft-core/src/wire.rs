//! The wire schema (generated from `proto/raftkit.proto`) and raft message codecs.
//!
//! Transports carry [`RaftBatch`], [`Request`] and [`Response`] without looking inside.

#![allow(
    missing_docs,
    clippy::all,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

include!(concat!(env!("OUT_DIR"), "/raftkit.v1.rs"));

use crate::error::TransportError;
use crate::raft_codec::RaftCodec;

/// Encodes a raft-rs message to bytes.
pub(crate) fn encode_raft_message(msg: &raft::prelude::Message) -> Vec<u8> {
    msg.encode_to_vec()
}

/// Decodes a raft-rs message; malformed bytes are an error, never a panic. From [`bytes::Bytes`]
/// the entries' payloads share its buffer.
pub(crate) fn decode_raft_message(
    bytes: impl bytes::Buf,
) -> Result<raft::prelude::Message, TransportError> {
    raft::prelude::Message::decode_from(bytes).map_err(|e| TransportError::Malformed(e.to_string()))
}

/// Decodes any raft-rs protobuf value.
pub(crate) fn decode_raft<M: RaftCodec>(bytes: &[u8]) -> Result<M, String> {
    M::decode_from(bytes).map_err(|e| e.to_string())
}
