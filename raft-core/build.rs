//! Generates the wire schema from `proto/raftkit.proto` (needs `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/raftkit.proto");
    prost_build::Config::new().compile_protos(&["proto/raftkit.proto"], &["proto"])?;
    Ok(())
}
