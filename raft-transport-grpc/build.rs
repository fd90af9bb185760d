//! Generates the gRPC service from `proto/raftkit_grpc.proto` (needs `protoc`). Its messages
//! are raft-core's own (`raft_core::wire`), imported from `../raft-core/proto/raftkit.proto`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/raftkit_grpc.proto");
    println!("cargo:rerun-if-changed=../raft-core/proto/raftkit.proto");
    tonic_prost_build::configure()
        .extern_path(".raftkit.v1", "::raft_core::wire")
        .compile_protos(
            &["proto/raftkit_grpc.proto"],
            &["proto", "../raft-core/proto"],
        )?;
    Ok(())
}
