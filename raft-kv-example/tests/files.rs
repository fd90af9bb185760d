//! File permissions of a running node: `raft-kv serve` creates its data dir 0700, so the raft
//! log, snapshots and the storage's own files (created with the umask) are private.

#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::os::unix::fs::PermissionsExt;

use support::{KvCluster, Transport};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_creates_its_data_dir_0700() {
    let mut c = KvCluster::start(1, Transport::Grpc).await;
    let dir = c.data_dir(1).to_path_buf();
    c.put(1, "k", "v").await.expect("put");
    assert_eq!(mode(&dir), 0o700, "mode of {}", dir.display());
    // The storage's own directories under it are private too.
    let raft = dir.join("raft");
    for d in [raft.clone(), raft.join("db"), raft.join("snapshots")] {
        assert_eq!(mode(&d), 0o700, "mode of {}", d.display());
    }
    let status = tokio::task::block_in_place(|| c.terminate(1));
    assert!(status.success(), "node 1 exited with {status}");
    c.assert_no_panics();
}
