//! Generates the wire schema from `proto/raftkit.proto`, raft-core's durable records from
//! `proto/records.proto` and the decoders of raft-rs's messages from
//! `proto/eraftpb_mirror.proto` (needs `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/raftkit.proto");
    println!("cargo:rerun-if-changed=proto/records.proto");
    println!("cargo:rerun-if-changed=proto/eraftpb_mirror.proto");
    prost_build::Config::new()
        // Raft messages arrive as `Bytes` and decode into `Bytes` fields: an entry's payload
        // shares the received buffer, and moves into raft-rs's entry without a copy.
        .bytes([".raftkit.v1.RaftBatch.messages", ".raftkit.eraftpb.v1"])
        .compile_protos(
            &[
                "proto/raftkit.proto",
                "proto/records.proto",
                "proto/eraftpb_mirror.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
