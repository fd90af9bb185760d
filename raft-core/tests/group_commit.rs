//! Group commit: proposals that arrive while a write is in flight share the next write, so N
//! concurrent clients cost far fewer than N fsyncs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use raft::prelude::{Entry, HardState, Snapshot};
use raft::RaftState;
use raft_core::testing::cluster::test_config;
use raft_core::testing::kv::{encode_op, KvStore};
use raft_core::testing::linearizability::KvOp;
use raft_core::{LocalNetwork, LogStorage, MemLogStorage, Raft, StorageError};

/// A log whose every write takes as long as a slow fsync.
#[derive(Clone, Default)]
struct SlowLog(MemLogStorage);

impl LogStorage for SlowLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.0.initial_state()
    }
    fn entries(&self, low: u64, high: u64, max: Option<u64>) -> raft::Result<Vec<Entry>> {
        self.0.entries(low, high, max)
    }
    fn term(&self, index: u64) -> raft::Result<u64> {
        self.0.term(index)
    }
    fn first_index(&self) -> raft::Result<u64> {
        self.0.first_index()
    }
    fn last_index(&self) -> raft::Result<u64> {
        self.0.last_index()
    }
    fn snapshot(&self) -> raft::Result<Snapshot> {
        self.0.snapshot()
    }
    fn append(&self, entries: &[Entry], hs: Option<&HardState>) -> Result<(), StorageError> {
        std::thread::sleep(Duration::from_millis(10));
        self.0.append(entries, hs)
    }
    fn install_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.0.install_snapshot(snapshot)
    }
    fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.0.save_snapshot(snapshot)
    }
    fn compact(&self, index: u64) -> Result<(), StorageError> {
        self.0.compact(index)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proposals_share_log_writes() {
    support::init_tracing();
    let raft = Raft::builder(1, KvStore::new())
        .raft_addr("node-1")
        .transport(LocalNetwork::new().transport())
        .log_storage(SlowLog::default())
        .config(test_config())
        .build()
        .unwrap();
    let mailbox = raft.mailbox();
    let node = tokio::spawn(raft.lead());
    while mailbox.status().await.unwrap().leader_id.is_none() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = mailbox.metrics();
    let clients = 64;
    let rounds = 5;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mailbox = mailbox.clone();
        tasks.push(tokio::spawn(async move {
            for r in 0..rounds {
                let op = KvOp::Put {
                    key: format!("k{c}"),
                    value: format!("{r}"),
                };
                mailbox.send_proposal(encode_op(&op)).await.expect("write");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let after = mailbox.metrics();
    let proposals = after.proposals - before.proposals;
    let writes = after.log_writes - before.log_writes;
    eprintln!("{proposals} proposals took {writes} log writes");
    assert_eq!(proposals, clients * rounds);
    // Each round of 64 clients lands in a handful of writes, not 64.
    assert!(
        writes * 8 <= proposals,
        "{writes} writes for {proposals} proposals: no group commit"
    );
    mailbox.shutdown().await;
    node.await.unwrap().unwrap();
}
