//! raft-core nodes on RocksDB: a failed write stops the node and acknowledges nothing, and a
//! whole 3-node cluster restarts from its directories with every acknowledged write.

#![cfg(feature = "rocksdb")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use raft_core::backend::eraftpb::{Entry, HardState, RaftState, Snapshot, SnapshotMetadata};
use raft_core::testing::breakable::BreakableLog;
use raft_core::testing::cluster::{seed, test_config, StorageFactory, TestCluster};
use raft_core::testing::kv::{encode_op, KvClient, KvStore};
use raft_core::testing::linearizability::{assert_linearizable, History, KvOp, KvOutput};
use raft_core::{
    Error, Fatal, LocalNetwork, LogStorage, PayloadReader, Raft, SnapshotPayload,
    SnapshotPayloadWriter, StorageError,
};
use raft_storage::RocksLogStorage;

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Opens `dir`, waiting while a storage that is being dropped still holds its lock.
fn open_when_free(dir: &Path) -> RocksLogStorage {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match RocksLogStorage::open(dir) {
            Ok(s) => return s,
            Err(StorageError::Locked(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("reopening {}: {e}", dir.display()),
        }
    }
}

fn put(key: &str, value: &str) -> Vec<u8> {
    encode_op(&KvOp::Put {
        key: key.into(),
        value: value.into(),
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Handed to a node as `Arc<dyn LogStorage>` (as raft-kv does), the backend still keeps a
/// snapshot's state in its own payload file: the snapshot data it stores names the payload and
/// holds none of the state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_payload_goes_to_the_backends_file_not_into_the_snapshot_data() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let rocks = Arc::new(RocksLogStorage::open(dir.path()).unwrap());
    let shared: Arc<dyn LogStorage> = rocks.clone();
    let config = raft_core::Config {
        snapshot_threshold: 20,
        snapshot_log_tail: 5,
        ..test_config()
    };
    let raft = Raft::builder(1, KvStore::new())
        .raft_addr("node-1")
        .transport(LocalNetwork::new().transport())
        .log_storage(shared)
        .config(config)
        .build()
        .unwrap();
    let mailbox = raft.mailbox().with_timeout(Duration::from_secs(5));
    let node = tokio::spawn(raft.lead());
    let marker = "this-value-lives-in-the-payload-file";
    for i in 0..40 {
        mailbox
            .send_proposal(put(&format!("k{i}"), marker))
            .await
            .expect("put");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let snapshot = loop {
        let snapshot = rocks.snapshot().unwrap();
        if snapshot.metadata.as_ref().is_some_and(|m| m.index > 0) {
            break snapshot;
        }
        assert!(Instant::now() < deadline, "no snapshot was taken");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        !contains(&snapshot.data, marker.as_bytes()),
        "the state went into the snapshot data ({} bytes) instead of a payload file",
        snapshot.data.len()
    );
    let meta = snapshot.metadata.clone().unwrap();
    let mut payload = Vec::new();
    std::io::Read::read_to_end(&mut rocks.snapshot_payload(&meta).unwrap(), &mut payload).unwrap();
    assert!(contains(&payload, marker.as_bytes()));
    drop(mailbox);
    node.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_write_stops_the_node_and_acknowledges_nothing() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let rocks = Arc::new(RocksLogStorage::open(dir.path()).unwrap());
    let log = BreakableLog::new(
        rocks.clone(),
        "simulated: fdatasync failed: Input/output error",
    );
    let raft = Raft::builder(1, KvStore::new())
        .raft_addr("node-1")
        .transport(LocalNetwork::new().transport())
        .log_storage(log.clone())
        .config(test_config())
        .build()
        .unwrap();
    let mailbox = raft.mailbox().with_timeout(Duration::from_secs(2));
    let node = tokio::spawn(raft.lead());
    for i in 0..5 {
        mailbox
            .send_proposal(put("k", &format!("durable-{i}")))
            .await
            .expect("healthy write");
    }
    let last_durable = rocks.last_index().unwrap();

    // The next append fails.
    log.break_writes();
    let result = mailbox.send_proposal(put("k", "never-durable")).await;
    assert!(
        result.is_err(),
        "a write that could not be persisted was acknowledged: {result:?}"
    );
    eprintln!("the failing proposal got: {result:?}");
    let exit = tokio::time::timeout(Duration::from_secs(5), node)
        .await
        .expect("the node stops")
        .expect("no panic");
    match &exit {
        Err(Error::Fatal(Fatal::Storage(e))) => assert!(e.to_string().contains("simulated"), "{e}"),
        other => panic!("the node must stop with the storage error, got {other:?}"),
    }
    let after = mailbox.send_proposal(put("k", "later")).await;
    assert!(
        matches!(after, Err(Error::Fatal(Fatal::Shutdown))),
        "{after:?}"
    );
    assert_eq!(
        rocks.last_index().unwrap(),
        last_durable,
        "nothing new was written"
    );

    // On disk: every acknowledged write, and not the failed one.
    drop(mailbox);
    drop(log);
    drop(rocks);
    let reopened = open_when_free(dir.path());
    assert_eq!(reopened.last_index().unwrap(), last_durable);
    let first = reopened.first_index().unwrap();
    let all = reopened.entries(first, last_durable + 1, None).unwrap();
    for i in 0..5 {
        let value = format!("durable-{i}");
        assert!(
            all.iter().any(|e| contains(&e.data, value.as_bytes())),
            "{value} is on disk"
        );
    }
    assert!(
        !all.iter().any(|e| contains(&e.data, b"never-durable")),
        "the failed write is not on disk"
    );
}

/// A node's storage that the test can close (dropping the RocksDB instance, as a process
/// exit would) and reopen from its directory, while the cluster harness keeps its handle.
struct Reopenable {
    dir: PathBuf,
    inner: RwLock<Option<Arc<RocksLogStorage>>>,
}

impl Reopenable {
    fn open(dir: PathBuf) -> Self {
        let inner = RwLock::new(Some(Arc::new(open_when_free(&dir))));
        Self { dir, inner }
    }

    fn get(&self) -> Result<Arc<RocksLogStorage>, StorageError> {
        self.inner
            .read()
            .unwrap()
            .clone()
            .ok_or_else(|| StorageError::Io(format!("{} is closed", self.dir.display())))
    }

    /// Drops the database; waits for calls in flight (a write of an aborted node) to end.
    fn close(&self) {
        let mut slot = self.inner.write().unwrap();
        let storage = slot.take().expect("open");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&storage) > 1 {
            assert!(Instant::now() < deadline, "a call still holds the storage");
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(storage);
    }

    fn reopen(&self) {
        let fresh = Arc::new(open_when_free(&self.dir));
        *self.inner.write().unwrap() = Some(fresh);
    }
}

impl LogStorage for Reopenable {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.get()?.initial_state()
    }
    fn entries(&self, low: u64, high: u64, max: Option<u64>) -> raft::Result<Vec<Entry>> {
        self.get()?.entries(low, high, max)
    }
    fn term(&self, index: u64) -> raft::Result<u64> {
        self.get()?.term(index)
    }
    fn first_index(&self) -> raft::Result<u64> {
        self.get()?.first_index()
    }
    fn last_index(&self) -> raft::Result<u64> {
        self.get()?.last_index()
    }
    fn snapshot(&self) -> raft::Result<Snapshot> {
        self.get()?.snapshot()
    }
    fn snapshot_metadata(&self) -> raft::Result<SnapshotMetadata> {
        self.get()?.snapshot_metadata()
    }
    fn append(&self, entries: &[Entry], hs: Option<&HardState>) -> Result<(), StorageError> {
        self.get()?.append(entries, hs)
    }
    fn install_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.get()?.install_snapshot(snapshot)
    }
    fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.get()?.save_snapshot(snapshot)
    }
    fn compact(&self, index: u64) -> Result<(), StorageError> {
        self.get()?.compact(index)
    }
    fn snapshot_payload_writer(&self) -> Result<Box<dyn SnapshotPayloadWriter>, StorageError> {
        self.get()?.snapshot_payload_writer()
    }
    fn save_snapshot_with(
        &self,
        snapshot: &Snapshot,
        payload: SnapshotPayload,
    ) -> Result<(), StorageError> {
        self.get()?.save_snapshot_with(snapshot, payload)
    }
    fn install_snapshot_with(
        &self,
        snapshot: &Snapshot,
        payload: SnapshotPayload,
    ) -> Result<(), StorageError> {
        self.get()?.install_snapshot_with(snapshot, payload)
    }
    fn snapshot_payload(&self, meta: &SnapshotMetadata) -> Result<PayloadReader, StorageError> {
        self.get()?.snapshot_payload(meta)
    }
    fn snapshot_payloads_in_place(&self) -> bool {
        false
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_restarts_from_its_directories() {
    init_tracing();
    let seed = seed("whole_cluster_restarts_from_its_directories");
    let root = tempfile::tempdir().unwrap();
    let stores: Arc<Mutex<BTreeMap<u64, Arc<Reopenable>>>> = Arc::default();
    let factory: StorageFactory = {
        let (stores, root) = (stores.clone(), root.path().to_path_buf());
        Arc::new(move |id| {
            let store = Arc::new(Reopenable::open(root.join(format!("node-{id}"))));
            stores.lock().unwrap().insert(id, store.clone());
            store as Arc<dyn LogStorage>
        })
    };
    // Frequent snapshots, so the restart goes through snapshot + compacted log too.
    let config = raft_core::Config {
        snapshot_threshold: 300,
        snapshot_log_tail: 50,
        ..test_config()
    };
    let cluster = TestCluster::start_with_storage(3, config, seed, factory).await;
    let history = History::new();
    let keys = 6;
    let before = cluster
        .run_workload(&history, 6, keys, Duration::from_secs(3), seed)
        .await;
    eprintln!("before the restart: {before:?}");
    assert!(before.ok > 50, "{before:?}");
    // One more acknowledged write we check by hand.
    let marker = KvClient::new(500, history.clone())
        .run(
            &cluster.mailbox(cluster.wait_for_leader(Duration::from_secs(5)).await),
            KvOp::Put {
                key: "k0".into(),
                value: "written-before-the-restart".into(),
            },
        )
        .await
        .expect("marker put");
    assert_eq!(marker, KvOutput::Done);
    let commit_before = cluster
        .statuses()
        .await
        .values()
        .map(|s| s.commit_index)
        .max()
        .unwrap();

    // Every node dies at once, and every database is closed.
    for id in 1..=3 {
        cluster.crash(id).await;
    }
    let stores: Vec<Arc<Reopenable>> = stores.lock().unwrap().values().cloned().collect();
    assert_eq!(stores.len(), 3);
    for store in &stores {
        store.close();
    }
    // All reopen from their directories.
    for store in &stores {
        store.reopen();
        let log = store.get().unwrap();
        eprintln!(
            "{}: log {}..={}, snapshot at {}, {:?}",
            store.dir.display(),
            log.first_index().unwrap(),
            log.last_index().unwrap(),
            log.snapshot()
                .unwrap()
                .metadata
                .into_option()
                .map_or(0, |m| m.index),
            log.initial_state().unwrap().hard_state,
        );
    }
    for id in 1..=3 {
        cluster.restart(id).await;
    }
    let leader = cluster.wait_for_leader(Duration::from_secs(15)).await;
    eprintln!("after the restart node {leader} leads");

    // Every acknowledged write is there (the final reads make a lost write a
    // linearizability violation), and the cluster serves again.
    let got = KvClient::new(501, history.clone())
        .run(&cluster.mailbox(leader), KvOp::Get { key: "k0".into() })
        .await
        .expect("read after restart");
    assert_eq!(
        got,
        KvOutput::Value(Some("written-before-the-restart".into()))
    );
    cluster.final_reads(&history, keys).await;
    let after = cluster
        .run_workload(
            &history,
            6,
            keys,
            Duration::from_secs(2),
            seed.wrapping_add(1),
        )
        .await;
    eprintln!("after the restart: {after:?}");
    assert!(after.ok > 50, "{after:?}");
    cluster.wait_converged(Duration::from_secs(10)).await;
    let statuses = cluster.statuses().await;
    assert!(
        statuses.values().all(|s| s.applied_index >= commit_before),
        "every node re-applied the log: {statuses:#?}"
    );
    cluster.assert_no_pending(Duration::from_secs(5)).await;
    cluster.assert_replicas_agree(keys).await;
    assert_linearizable(&history);
    cluster.shutdown().await;
}
