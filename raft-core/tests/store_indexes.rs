//! `Store::apply_at` and `Store::restore_from_at`: a store that overrides them learns each
//! command's log index (the same on every replica, increasing) and the index a snapshot covers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft_core::testing::cluster::test_config;
use raft_core::{
    async_trait, Config, InitialCluster, LocalNetwork, Mailbox, Raft, SnapshotSource, Store,
    StoreResult,
};
use support::init_tracing;

/// What a replica's store saw.
#[derive(Default, Debug)]
struct Seen {
    /// The index of every command applied, in order.
    applied: Vec<u64>,
    /// The index of every snapshot restored.
    restored: Vec<u64>,
}

/// Counts commands; records the indexes it is given.
struct Indexed {
    count: u64,
    seen: Arc<Mutex<Seen>>,
}

#[async_trait]
impl Store for Indexed {
    async fn apply(&mut self, _message: &[u8]) -> StoreResult<Vec<u8>> {
        self.count += 1;
        Ok(self.count.to_le_bytes().to_vec())
    }
    async fn apply_at(&mut self, index: u64, message: &[u8]) -> StoreResult<Vec<u8>> {
        self.seen.lock().unwrap().applied.push(index);
        self.apply(message).await
    }
    async fn query(&self, _query: &[u8]) -> StoreResult<Vec<u8>> {
        Ok(self.count.to_le_bytes().to_vec())
    }
    async fn snapshot(&self) -> StoreResult<Vec<u8>> {
        Ok(self.count.to_le_bytes().to_vec())
    }
    async fn restore(&mut self, snapshot: &[u8]) -> StoreResult<()> {
        let bytes: [u8; 8] = snapshot.try_into()?;
        self.count = u64::from_le_bytes(bytes);
        Ok(())
    }
    async fn restore_from_at(
        &mut self,
        index: u64,
        source: &mut SnapshotSource,
    ) -> StoreResult<()> {
        self.seen.lock().unwrap().restored.push(index);
        self.restore_from(source).await
    }
}

fn node(id: u64, network: &LocalNetwork, config: &Config) -> (Raft, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let store = Indexed {
        count: 0,
        seen: seen.clone(),
    };
    let raft = Raft::builder(id, store)
        .raft_addr(format!("node-{id}"))
        .transport(network.transport())
        .config(config.clone())
        .build()
        .unwrap();
    (raft, seen)
}

async fn count(mailbox: &Mailbox) -> u64 {
    let answer = mailbox.query(Vec::new()).await.unwrap();
    u64::from_le_bytes(answer.try_into().unwrap())
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_learns_each_commands_index_and_each_snapshots() {
    init_tracing();
    let config = Config {
        snapshot_threshold: 10,
        snapshot_log_tail: 2,
        ..test_config()
    };
    let network = LocalNetwork::new();
    let cluster = InitialCluster::new((1..=3).map(|id| (id, format!("node-{id}")))).unwrap();
    let mut mailboxes = Vec::new();
    let mut seen = Vec::new();
    for id in 1..=3 {
        let (raft, s) = node(id, &network, &config);
        mailboxes.push(raft.mailbox());
        seen.push(s);
        tokio::spawn(raft.start_cluster(cluster.clone()));
    }
    let writes = 40;
    for _ in 0..writes {
        mailboxes[0].send_proposal(b"x".to_vec()).await.unwrap();
    }
    wait_for("every replica applied every write", || {
        seen.iter()
            .all(|s| s.lock().unwrap().applied.len() == writes)
    })
    .await;
    let first = seen[0].lock().unwrap().applied.clone();
    assert!(
        first.windows(2).all(|w| w[0] < w[1]),
        "increasing: {first:?}"
    );
    for s in &seen[1..] {
        assert_eq!(
            s.lock().unwrap().applied,
            first,
            "the same on every replica"
        );
    }
    let leader_status = mailboxes[0].status().await.unwrap();
    assert!(leader_status.applied_index >= *first.last().unwrap());

    // A node that joins after the log was compacted starts from a snapshot.
    let status = mailboxes[0].leader_status().await.unwrap();
    assert!(status.first_log_index > 2, "compacted: {status:?}");
    let leader = status.id;
    let (raft, late) = node(4, &network, &config);
    let late_mailbox = raft.mailbox();
    tokio::spawn(raft.join(leader, format!("node-{leader}")));
    wait_for("node 4 restored a snapshot", || {
        !late.lock().unwrap().restored.is_empty()
    })
    .await;
    for _ in 0..5 {
        mailboxes[0].send_proposal(b"x".to_vec()).await.unwrap();
    }
    let total = writes as u64 + 5;
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(&late_mailbox).await != total {
        assert!(Instant::now() < deadline, "node 4 never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let late = late.lock().unwrap();
    assert!(
        late.restored[0] >= first[9],
        "a snapshot after ten writes: {late:?}"
    );
    assert!(
        late.applied.first().is_none_or(|&i| i > late.restored[0]),
        "only commands after the snapshot are applied: {late:?}"
    );
    // The (last) snapshot held every write up to its index: the count adds up.
    let restored = *late.restored.last().unwrap();
    let before = first.iter().filter(|&&i| i <= restored).count();
    let after = late.applied.iter().filter(|&&i| i > restored).count();
    assert_eq!((before + after) as u64, total, "{late:?}");
}
