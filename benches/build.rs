//! Generates raft-bench's etcd client from `proto/etcd_kv.proto` (needs `protoc`): etcd's
//! `KV.Range` and `KV.Put`, for `raft-bench --target etcd`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/etcd_kv.proto");
    tonic_prost_build::configure()
        .build_server(false)
        // `Bytes` keys and values: each put clones the value by reference count, not by copy.
        .bytes(".")
        .compile_protos(&["proto/etcd_kv.proto"], &["proto"])?;
    Ok(())
}
