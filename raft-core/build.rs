//! Generates the wire schema from `proto/raftkit.proto` and raft-core's durable records from
//! `proto/records.proto` (needs `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/raftkit.proto");
    println!("cargo:rerun-if-changed=proto/records.proto");
    prost_build::Config::new()
        // Raft messages arrive as `Bytes`, so decoding one shares its entries' payloads with
        // the received buffer until they are copied into raft-rs's own types, once.
        .bytes([".raftkit.v1.RaftBatch.messages"])
        .compile_protos(&["proto/raftkit.proto", "proto/records.proto"], &["proto"])?;
    Ok(())
}
