//! raft-core's durable records (generated from `proto/records.proto`): the context of every
//! entry it proposes and the envelope of every snapshot. Crate-private: they are a storage
//! format, not an API.

#![allow(
    missing_docs,
    clippy::all,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

include!(concat!(env!("OUT_DIR"), "/raftkit.records.v1.rs"));
