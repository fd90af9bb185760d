//! Failures inside a node that must not leave it half-alive or stall it: a state machine that
//! panics, status reads that must not read the snapshot's data, and a large snapshot written
//! while the node keeps leading.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raft::prelude::{Entry, HardState, Snapshot, SnapshotMetadata};
use raft::RaftState;
use raft_core::testing::cluster::test_config;
use raft_core::{
    async_trait, Config, LocalNetwork, LogStorage, Mailbox, MemLogStorage, Raft, Role,
    StorageError, Store, StoreResult,
};
use support::init_tracing;

/// Counts its applies; `apply(b"boom")` panics.
#[derive(Default)]
struct Fragile(u64);

#[async_trait]
impl Store for Fragile {
    async fn apply(&mut self, message: &[u8]) -> StoreResult<Vec<u8>> {
        if message == b"boom" {
            panic!("the state machine panicked on purpose");
        }
        self.0 += 1;
        Ok(self.0.to_le_bytes().to_vec())
    }
    async fn query(&self, _: &[u8]) -> StoreResult<Vec<u8>> {
        Ok(self.0.to_le_bytes().to_vec())
    }
    async fn snapshot(&self) -> StoreResult<Vec<u8>> {
        Ok(self.0.to_le_bytes().to_vec())
    }
    async fn restore(&mut self, snapshot: &[u8]) -> StoreResult<()> {
        self.0 = u64::from_le_bytes(snapshot.try_into()?);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_apply_task_stops_the_node_with_an_error() {
    init_tracing();
    let raft = Raft::builder(1, Fragile::default())
        .raft_addr("node-1")
        .transport(LocalNetwork::new().transport())
        .config(test_config())
        .build()
        .unwrap();
    let mailbox = raft.mailbox();
    let node = tokio::spawn(raft.lead());
    mailbox.send_proposal(b"one".to_vec()).await.unwrap();
    let answer = mailbox.send_proposal(b"boom".to_vec()).await;
    assert!(answer.is_err(), "the panicking apply answered {answer:?}");
    let ended = tokio::time::timeout(Duration::from_secs(10), node)
        .await
        .expect("the node stops instead of leading while applying nothing")
        .expect("the node task itself does not panic");
    let error = ended.expect_err("the node reports the failure").to_string();
    assert!(error.contains("apply task"), "{error}");
    assert!(mailbox.send_proposal(b"two".to_vec()).await.is_err());
}

/// A MemLogStorage that counts full snapshot reads and can make snapshot saves slow.
#[derive(Clone, Default)]
struct Instrumented {
    inner: MemLogStorage,
    full_reads: Arc<AtomicU64>,
    save_delay: Duration,
}

impl LogStorage for Instrumented {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.inner.initial_state()
    }
    fn entries(&self, low: u64, high: u64, max_size: Option<u64>) -> raft::Result<Vec<Entry>> {
        self.inner.entries(low, high, max_size)
    }
    fn term(&self, index: u64) -> raft::Result<u64> {
        self.inner.term(index)
    }
    fn first_index(&self) -> raft::Result<u64> {
        self.inner.first_index()
    }
    fn last_index(&self) -> raft::Result<u64> {
        self.inner.last_index()
    }
    fn snapshot(&self) -> raft::Result<Snapshot> {
        self.full_reads.fetch_add(1, Ordering::SeqCst);
        self.inner.snapshot()
    }
    fn snapshot_metadata(&self) -> raft::Result<SnapshotMetadata> {
        self.inner.snapshot_metadata()
    }
    fn append(&self, entries: &[Entry], hs: Option<&HardState>) -> Result<(), StorageError> {
        self.inner.append(entries, hs)
    }
    fn install_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.inner.install_snapshot(snapshot)
    }
    fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        std::thread::sleep(self.save_delay);
        self.inner.save_snapshot(snapshot)
    }
    fn compact(&self, index: u64) -> Result<(), StorageError> {
        self.inner.compact(index)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_never_reads_the_snapshot_data() {
    init_tracing();
    let storage = Instrumented::default();
    let reads = storage.full_reads.clone();
    let raft = Raft::builder(1, Fragile::default())
        .raft_addr("node-1")
        .transport(LocalNetwork::new().transport())
        .log_storage(storage)
        .config(test_config())
        .build()
        .unwrap();
    let mailbox = raft.mailbox();
    let _node = tokio::spawn(raft.lead());
    mailbox.send_proposal(b"one".to_vec()).await.unwrap();
    let before = reads.load(Ordering::SeqCst);
    for _ in 0..200 {
        let status = mailbox.status().await.unwrap();
        assert_eq!(status.snapshot_index, 1);
    }
    assert_eq!(
        reads.load(Ordering::SeqCst),
        before,
        "status read the whole snapshot"
    );
    mailbox.shutdown().await;
}

/// A state machine with a large blob: its snapshots take a while to copy and to store.
struct Heavy {
    blob: Arc<Vec<u8>>,
    count: u64,
}

#[async_trait]
impl Store for Heavy {
    async fn apply(&mut self, _: &[u8]) -> StoreResult<Vec<u8>> {
        self.count += 1;
        Ok(Vec::new())
    }
    async fn query(&self, _: &[u8]) -> StoreResult<Vec<u8>> {
        Ok(self.count.to_le_bytes().to_vec())
    }
    async fn snapshot(&self) -> StoreResult<Vec<u8>> {
        let mut out = Vec::with_capacity(self.blob.len() + 8);
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.blob);
        Ok(out)
    }
    async fn restore(&mut self, snapshot: &[u8]) -> StoreResult<()> {
        let (count, blob) = snapshot.split_at(8);
        self.count = u64::from_le_bytes(count.try_into()?);
        self.blob = Arc::new(blob.to_vec());
        Ok(())
    }
}

/// Each node takes and stores a 200 MB snapshot whose save takes seconds, under write load:
/// the driver keeps ticking and heartbeating meanwhile, so nobody starts an election.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_slow_snapshot_save_causes_no_election() {
    init_tracing();
    const STATE: usize = 200 << 20;
    let blob = Arc::new(vec![7u8; STATE]);
    // Elections after 1-2 s: shorter than the 2 s save, so a driver that waited for the save
    // would still lose its leadership, yet longer than the CPU time the three nodes' 200 MB
    // copies take when other tests share the machine's two cores.
    let config = Config {
        snapshot_threshold: 300,
        max_snapshot_size: 1 << 30,
        election_tick: 50,
        heartbeat_tick: 5,
        ..test_config()
    };
    let network = LocalNetwork::new();
    let mut mailboxes: Vec<Mailbox> = Vec::new();
    let mut nodes = Vec::new();
    let mut saves = Vec::new();
    for id in 1..=3u64 {
        let storage = Instrumented {
            save_delay: Duration::from_secs(2),
            ..Instrumented::default()
        };
        saves.push(storage.inner.clone());
        let raft = Raft::builder(
            id,
            Heavy {
                blob: blob.clone(),
                count: 0,
            },
        )
        .raft_addr(format!("node-{id}"))
        .transport(network.transport_as(id))
        .log_storage(storage)
        .config(config.clone())
        .build()
        .unwrap();
        mailboxes.push(raft.mailbox());
        nodes.push(if id == 1 {
            tokio::spawn(raft.lead())
        } else {
            tokio::spawn(raft.join(1, "node-1"))
        });
        if id == 1 {
            // Bootstrapping copies the 200 MB state a few times: give it time.
            let m = mailboxes[0].with_timeout(Duration::from_secs(30));
            m.send_proposal(b"first".to_vec()).await.unwrap();
        }
    }
    // Wait for three voters.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = mailboxes[0].status().await.unwrap();
        if s.voters.len() == 3 && s.learners.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no 3 voters: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let term = mailboxes[0].status().await.unwrap().term;
    let changes: Vec<u64> = mailboxes
        .iter()
        .map(|m| m.metrics().leader_changes)
        .collect();

    // Enough writes for one snapshot on every node (at 300 entries), then a steady trickle
    // while they are saved, staying short of a second one (at 600).
    let mut written = 0;
    while written < 400 {
        mailboxes[0].send_proposal(b"w".to_vec()).await.unwrap();
        written += 1;
    }
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(4) && written < 580 {
        mailboxes[0].send_proposal(b"w".to_vec()).await.unwrap();
        written += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let taken: u64 = mailboxes.iter().map(|m| m.metrics().snapshots_taken).sum();
    assert!(taken >= 3, "every node took a snapshot ({taken})");
    // Saves finish; each stored a snapshot of the whole state.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let stored: Vec<u64> = saves
            .iter()
            .map(|s| s.snapshot_metadata().unwrap().index)
            .collect();
        if stored.iter().all(|&i| i > 1) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "saves: {stored:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saves[0].snapshot().unwrap().data.len() > STATE);
    let status = mailboxes[0].status().await.unwrap();
    assert_eq!(status.role, Role::Leader);
    assert_eq!(
        status.term, term,
        "no election while the snapshots were saved"
    );
    let after: Vec<u64> = mailboxes
        .iter()
        .map(|m| m.metrics().leader_changes)
        .collect();
    assert_eq!(after, changes, "no leader change anywhere");
    eprintln!("large snapshot: {written} writes while saving, term {term}");
    for m in &mailboxes {
        m.shutdown().await;
    }
}
