//! Ordered broadcast (`raft_core::broadcast`): three nodes send concurrently, one crashes and
//! restarts mid-stream, and every receiver must have seen the same sequence, with no gap and
//! no duplicate, across the restart and through snapshots.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft_core::broadcast::{self, BroadcastError, BroadcastReceiver, BroadcastSender, Limits};
use raft_core::testing::cluster::test_config;
use raft_core::{Config, InitialCluster, LocalNetwork, LogStorage, MemLogStorage};
use support::init_tracing;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// What one node's application received, over all its incarnations.
#[derive(Default)]
struct Received {
    messages: Vec<(u64, Vec<u8>)>,
    missed: Vec<(u64, u64)>,
}

struct Running {
    sender: BroadcastSender,
    node: JoinHandle<Result<(), BroadcastError>>,
    receiving: JoinHandle<()>,
}

struct Cluster {
    members: InitialCluster,
    network: LocalNetwork,
    config: Config,
    limits: Limits,
    storage: BTreeMap<u64, MemLogStorage>,
    /// Nodes that keep their position in a file; the others resume after the last message
    /// their application recorded (`resume_after`).
    position_files: BTreeMap<u64, PathBuf>,
    received: BTreeMap<u64, Arc<Mutex<Received>>>,
    running: BTreeMap<u64, Running>,
    /// Receivers that wait for a signal before they receive anything.
    gates: BTreeMap<u64, oneshot::Sender<()>>,
}

/// Receives into `into` until the node stops; with a `gate`, only once it opens (nothing at
/// all when it is dropped unopened).
async fn receive(
    mut rx: BroadcastReceiver,
    into: Arc<Mutex<Received>>,
    gate: Option<oneshot::Receiver<()>>,
) {
    if let Some(gate) = gate {
        if gate.await.is_err() {
            return;
        }
    }
    loop {
        match rx.recv().await {
            Ok(m) => into.lock().unwrap().messages.push((m.seq, m.data)),
            Err(BroadcastError::Missed { first, last }) => {
                into.lock().unwrap().missed.push((first, last))
            }
            Err(BroadcastError::Stopped(_)) => return,
            Err(e) => panic!("receiving failed: {e}"),
        }
    }
}

impl Cluster {
    fn new(config: Config, limits: Limits, position_files: BTreeMap<u64, PathBuf>) -> Cluster {
        let members: InitialCluster = "1=node-1,2=node-2,3=node-3".parse().unwrap();
        let ids: Vec<u64> = members.members().keys().copied().collect();
        Cluster {
            members,
            network: LocalNetwork::new(),
            config,
            limits,
            storage: ids.iter().map(|&id| (id, MemLogStorage::new())).collect(),
            position_files,
            received: ids.iter().map(|&id| (id, Arc::default())).collect(),
            running: BTreeMap::new(),
            gates: BTreeMap::new(),
        }
    }

    fn start(&mut self, id: u64) {
        self.start_receiving(id, true);
    }

    /// Starts node `id`; its application receives only once `open_gate(id)` is called unless
    /// `receiving`.
    fn start_receiving(&mut self, id: u64, receiving: bool) {
        let gate = (!receiving).then(|| {
            let (open, gate) = oneshot::channel();
            self.gates.insert(id, open);
            gate
        });
        let mut builder = broadcast::builder(id, self.members.clone())
            .log_storage(self.storage[&id].clone())
            .transport(self.network.transport())
            .config(self.config.clone())
            .limits(self.limits);
        let received = self.received[&id].clone();
        builder = match self.position_files.get(&id) {
            Some(path) => builder.position_file(path),
            None => {
                let last = received.lock().unwrap().messages.last().map(|m| m.0);
                builder.resume_after(last.unwrap_or(0))
            }
        };
        let (sender, receiver, node) = builder.build().unwrap();
        self.running.insert(
            id,
            Running {
                sender,
                node: tokio::spawn(node.run()),
                receiving: tokio::spawn(receive(receiver, received, gate)),
            },
        );
    }

    /// Kills node `id` as `kill -9` would (its storage stays), and waits for its receiver to
    /// have yielded what the node applied.
    async fn crash(&mut self, id: u64) {
        let running = self.running.remove(&id).unwrap();
        running.node.abort();
        // Gone only once its task ended: until then it still holds its address.
        let ended = tokio::time::timeout(Duration::from_secs(10), running.node)
            .await
            .expect("an aborted node's task ends");
        if let Ok(Err(e)) = ended {
            panic!("node {id} had failed before the crash: {e}");
        }
        self.gates.remove(&id);
        tokio::time::timeout(Duration::from_secs(10), running.receiving)
            .await
            .expect("the receiver of a crashed node ends")
            .unwrap();
    }

    fn open_gate(&mut self, id: u64) {
        let _ = self.gates.remove(&id).unwrap().send(());
    }

    fn sender(&self, id: u64) -> BroadcastSender {
        self.running[&id].sender.clone()
    }

    fn count(&self, id: u64) -> usize {
        self.received[&id].lock().unwrap().messages.len()
    }

    /// Waits until every running node's application received `n` messages.
    async fn wait_received(&self, n: usize, timeout: Duration) {
        let running: Vec<u64> = self.running.keys().copied().collect();
        self.wait_received_among(&running, n, timeout).await;
    }

    /// Waits until the applications of nodes `ids` received `n` messages.
    async fn wait_received_among(&self, ids: &[u64], n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let counts: Vec<usize> = ids.iter().map(|&id| self.count(id)).collect();
            if counts.iter().all(|&c| c >= n) {
                return;
            }
            if Instant::now() >= deadline {
                for &id in ids {
                    let r = self.received[&id].lock().unwrap();
                    let seqs: Vec<u64> = r.messages.iter().map(|m| m.0).collect();
                    let missing: Vec<u64> = (1..=n as u64).filter(|s| !seqs.contains(s)).collect();
                    eprintln!("node {id}: missing {missing:?}, missed {:?}", r.missed);
                }
                for &id in ids {
                    let status = self.running[&id].sender.mailbox().status().await;
                    eprintln!("node {id}: {status:?}");
                }
                panic!("receivers stuck at {counts:?}, expected {n}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every node's application saw messages 1..=n, the same ones in the same order, each
    /// once; every acknowledged send is where its sequence number says.
    fn check(&self, n: u64, acked: &[(Vec<u8>, u64)]) {
        let reference: Vec<Vec<u8>> = {
            let r = self.received[&1].lock().unwrap();
            r.messages.iter().map(|m| m.1.clone()).collect()
        };
        for (id, received) in &self.received {
            let r = received.lock().unwrap();
            assert!(r.missed.is_empty(), "node {id} missed {:?}", r.missed);
            let seqs: Vec<u64> = r.messages.iter().map(|m| m.0).collect();
            assert_eq!(
                seqs,
                (1..=n).collect::<Vec<_>>(),
                "node {id}: gaps or duplicates"
            );
            let data: Vec<Vec<u8>> = r.messages.iter().map(|m| m.1.clone()).collect();
            assert_eq!(data, reference, "node {id} saw another order");
        }
        let unique: HashSet<&Vec<u8>> = reference.iter().collect();
        assert_eq!(unique.len(), reference.len(), "a message was ordered twice");
        for (data, seq) in acked {
            assert_eq!(
                &reference[(*seq - 1) as usize],
                data,
                "acknowledged as {seq}"
            );
        }
    }

    async fn shutdown(&mut self) {
        for (id, running) in std::mem::take(&mut self.running) {
            running.sender.shutdown().await;
            let ended = tokio::time::timeout(Duration::from_secs(10), running.node).await;
            assert!(
                matches!(ended, Ok(Ok(Ok(())))),
                "node {id} ran until shut down: {ended:?}"
            );
            let _ = tokio::time::timeout(Duration::from_secs(10), running.receiving).await;
        }
    }
}

/// Sends `count` messages from node `id` one after another; returns those acknowledged, with
/// their sequence numbers. A failed send is not repeated (it may have been ordered).
fn send_all(
    sender: BroadcastSender,
    id: u64,
    range: std::ops::Range<u32>,
) -> JoinHandle<Vec<(Vec<u8>, u64)>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        for k in range {
            let data = format!("node {id} message {k}").into_bytes();
            match sender.send(data.clone()).await {
                Ok(seq) => acked.push((data, seq)),
                Err(e @ BroadcastError::Stopped(_)) => {
                    eprintln!("send from {id} stopped: {e}");
                    break;
                }
                Err(e) => eprintln!("send from {id} failed: {e}"),
            }
        }
        acked
    })
}

fn small_snapshots() -> Config {
    Config {
        snapshot_threshold: 25,
        snapshot_log_tail: 5,
        ..test_config()
    }
}

/// Three nodes send at once; node 3 crashes mid-stream and restarts from its storage and its
/// position file. Snapshots every 25 entries: the restart restores one and replays the log
/// after it, skipping what the application had received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_receivers_see_one_sequence_across_a_crash_and_restart() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let resume = BTreeMap::from([(3, dir.path().join("position-3"))]);
    let mut cluster = Cluster::new(small_snapshots(), Limits::default(), resume);
    for id in [1, 2, 3] {
        cluster.start(id);
    }
    let senders: Vec<_> = [1, 2, 3]
        .into_iter()
        .map(|id| send_all(cluster.sender(id), id, 0..80))
        .collect();
    cluster.wait_received(60, Duration::from_secs(30)).await;
    cluster.crash(3).await;
    let before_crash = cluster.count(3);
    let snapshot = cluster.storage[&3].snapshot_metadata().unwrap().index;
    assert!(
        snapshot > 1,
        "node 3 restarts from a snapshot it took (at {snapshot})"
    );
    let mut acked = Vec::new();
    for sending in senders {
        acked.extend(sending.await.unwrap());
    }
    cluster.start(3);
    let more: Vec<_> = [1, 2, 3]
        .into_iter()
        .map(|id| send_all(cluster.sender(id), id, 100..120))
        .collect();
    for sending in more {
        let sent = sending.await.unwrap();
        assert_eq!(
            sent.len(),
            20,
            "every send succeeds once the cluster is whole"
        );
        acked.extend(sent);
    }
    let n = cluster.sender(1).last_seq().await.unwrap();
    assert!(n >= 60 + 60, "only {n} messages ordered");
    cluster
        .wait_received(n as usize, Duration::from_secs(30))
        .await;
    let status = cluster.sender(3).mailbox().status().await.unwrap();
    assert!(status.snapshot_index > 0, "node 3 has a snapshot");
    cluster.shutdown().await;
    assert!(
        before_crash > 0 && (before_crash as u64) < n,
        "node 3 received {before_crash} before its crash, {n} in all"
    );
    cluster.check(n, &acked);
}

/// Node 3 is down while the others order hundreds of messages and compact far past its log:
/// it comes back through the leader's snapshot, whose history holds what it had not received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_missed_compacted_messages_catches_up_from_the_snapshot_history() {
    init_tracing();
    let mut cluster = Cluster::new(small_snapshots(), Limits::default(), BTreeMap::new());
    for id in [1, 2, 3] {
        cluster.start(id);
    }
    let first = send_all(cluster.sender(1), 1, 0..20).await.unwrap();
    cluster.wait_received(20, Duration::from_secs(30)).await;
    cluster.crash(3).await;
    let mut acked = first;
    // Sends fail while the others elect a leader (node 3 may have led): keep sending new
    // messages until 300 are ordered without node 3.
    let mut next = 20;
    while cluster.sender(1).last_seq().await.unwrap_or(0) < 320 {
        let senders: Vec<_> = [1, 2]
            .into_iter()
            .map(|id| send_all(cluster.sender(id), id, next..next + 50))
            .collect();
        for sending in senders {
            acked.extend(sending.await.unwrap());
        }
        next += 50;
    }
    cluster.start(3);
    acked.extend(send_all(cluster.sender(3), 3, 100..110).await.unwrap());
    let n = cluster.sender(1).last_seq().await.unwrap();
    cluster
        .wait_received(n as usize, Duration::from_secs(30))
        .await;
    let installed = cluster.sender(3).mailbox().metrics().snapshots_installed;
    let status = cluster.sender(3).mailbox().status().await.unwrap();
    assert!(
        installed >= 1,
        "node 3 caught up from the leader's snapshot: {status:?}"
    );
    cluster.shutdown().await;
    cluster.check(n, &acked);
}

/// With no history kept, a node away longer than the log tail cannot get the messages in
/// between: its receiver says which, once, and carries on in the same order as the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_nobody_can_fill_is_reported_not_hidden() {
    init_tracing();
    let limits = Limits {
        history_messages: 0,
        ..Limits::default()
    };
    let mut cluster = Cluster::new(small_snapshots(), limits, BTreeMap::new());
    for id in [1, 2, 3] {
        cluster.start(id);
    }
    send_all(cluster.sender(1), 1, 0..10).await.unwrap();
    cluster.wait_received(10, Duration::from_secs(30)).await;
    cluster.crash(3).await;
    let mut next = 10;
    let mut ordered = 0;
    while ordered < 200 {
        send_all(cluster.sender(1), 1, next..next + 50)
            .await
            .unwrap();
        next += 50;
        ordered = cluster.sender(1).last_seq().await.unwrap_or(0);
    }
    // The others' applications received everything: their snapshots hold no message.
    cluster
        .wait_received(ordered as usize, Duration::from_secs(30))
        .await;
    cluster.start(3);
    send_all(cluster.sender(2), 2, 0..5).await.unwrap();
    let n = cluster.sender(1).last_seq().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = cluster.received[&3]
            .lock()
            .unwrap()
            .messages
            .last()
            .map(|m| m.0);
        if last == Some(n) {
            break;
        }
        assert!(Instant::now() < deadline, "node 3 never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = cluster.received[&3].lock().unwrap();
    let reference = cluster.received[&1].lock().unwrap();
    assert_eq!(r.missed.len(), 1, "one gap, reported once: {:?}", r.missed);
    let (first, last) = r.missed[0];
    assert!(first > 10 && last < n, "gap {first}..={last} of {n}");
    // Everything else node 3 saw is in the common order, in place.
    let expected: Vec<_> = reference
        .messages
        .iter()
        .filter(|m| m.0 < first || m.0 > last)
        .cloned()
        .collect();
    assert_eq!(r.messages, expected);
}

/// A receiver that does not read holds back its node's apply, not memory: the others go on,
/// and once it reads it gets every message in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_holds_back_its_apply_and_then_catches_up() {
    init_tracing();
    let limits = Limits {
        queue_messages: 8,
        ..Limits::default()
    };
    let mut cluster = Cluster::new(test_config(), limits, BTreeMap::new());
    cluster.start(1);
    cluster.start(2);
    cluster.start_receiving(3, false);
    // The slow node must not lead: a leader answers a send once it applied it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let leader = loop {
        let status = cluster.sender(1).mailbox().status().await.unwrap();
        match status.leader_id {
            Some(3) => cluster
                .sender(3)
                .mailbox()
                .transfer_leader(1)
                .await
                .unwrap(),
            Some(leader) => break leader,
            None => {}
        }
        assert!(Instant::now() < deadline, "no leader other than node 3");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let acked = send_all(cluster.sender(leader), leader, 0..100)
        .await
        .unwrap();
    assert_eq!(acked.len(), 100, "a slow follower does not slow the others");
    cluster
        .wait_received_among(&[1, 2], 100, Duration::from_secs(30))
        .await;
    let status = cluster.sender(3).mailbox().status().await.unwrap();
    assert_eq!(cluster.count(3), 0);
    assert!(
        // Besides 8 queued messages, only the leaders' empty entries (and the first snapshot).
        status.applied_index <= 16 && status.applied_index + 30 < status.commit_index,
        "node 3 applies no further than its queue holds: {status:?}"
    );
    cluster.open_gate(3);
    let n = cluster.sender(1).last_seq().await.unwrap();
    cluster
        .wait_received(n as usize, Duration::from_secs(30))
        .await;
    cluster.shutdown().await;
    cluster.check(n, &acked);
}

/// A stopped node's sender and receiver answer with an error, not a panic or a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_says_so_to_its_sender_and_receiver() {
    init_tracing();
    let members: InitialCluster = "1=node-1".parse().unwrap();
    let (tx, mut rx) = broadcast::builder(1, members)
        .transport(LocalNetwork::new().transport())
        .config(test_config())
        .start()
        .unwrap();
    assert_eq!(tx.send(b"one".to_vec()).await.unwrap(), 1);
    tx.shutdown().await;
    let received = rx.recv().await.unwrap();
    assert_eq!((received.seq, received.data), (1, b"one".to_vec()));
    let end = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
    assert!(
        matches!(end, Ok(Err(BroadcastError::Stopped(_)))),
        "{end:?}"
    );
    let sent = tx.send(b"two".to_vec()).await;
    assert!(matches!(sent, Err(BroadcastError::Stopped(_))), "{sent:?}");
    let unknown = broadcast::builder(4, "1=node-1".parse().unwrap())
        .transport(LocalNetwork::new().transport())
        .build();
    assert!(
        unknown.is_err(),
        "a node outside the member list is refused"
    );
}

/// Node 3's application receives nothing while its node applies 100 messages and compacts them
/// into snapshots, keeping no history: after a crash and a restart, every one of them is still
/// delivered, from the snapshot that kept what the application had not received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_compacted_before_the_application_received_them_survive_a_restart() {
    init_tracing();
    let limits = Limits {
        queue_messages: 1_000,
        history_messages: 0,
        ..Limits::default()
    };
    let mut cluster = Cluster::new(small_snapshots(), limits, BTreeMap::new());
    cluster.start(1);
    cluster.start(2);
    cluster.start_receiving(3, false);
    let acked = send_all(cluster.sender(1), 1, 0..100).await.unwrap();
    assert_eq!(acked.len(), 100);
    let n = cluster.sender(1).last_seq().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = cluster.sender(3).mailbox().status().await.unwrap();
        if status.applied_index >= status.commit_index && status.snapshot_index > 50 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 3 never compacted: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.crash(3).await;
    assert_eq!(
        cluster.count(3),
        0,
        "node 3's application received nothing yet"
    );
    cluster.start(3);
    cluster
        .wait_received(n as usize, Duration::from_secs(30))
        .await;
    cluster.shutdown().await;
    cluster.check(n, &acked);
}
