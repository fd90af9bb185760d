//! A raft cluster of [`KvStore`]s with fault injection, crash/restart from storage,
//! membership changes and a history-recording workload: in-process over a
//! [`LocalNetwork`], or over any transport through a [`TransportFactory`].

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;

use super::kv::{decode_value, encode_op, KvClient, KvStore};
use super::linearizability::{History, KvOp, KvOutput};
use super::transport_conformance::TransportFactory;
use crate::config::Config;
use crate::error::Result;
use crate::log_storage::LogStorage;
use crate::mailbox::Mailbox;
use crate::mem_log_storage::MemLogStorage;
use crate::raft::Raft;
use crate::status::{ReadConsistency, Role, Status};
use crate::transport::faulty::{Faults, FaultyTransport};
use crate::transport::LocalNetwork;

/// Makes the log storage of node `id` (called once per node, reused across restarts).
pub type StorageFactory = Arc<dyn Fn(u64) -> Arc<dyn LogStorage> + Send + Sync>;

fn mem_storage() -> StorageFactory {
    Arc::new(|_| Arc::new(MemLogStorage::new()))
}

/// A fast configuration for in-process tests: 20 ms ticks, 200-400 ms elections.
pub fn test_config() -> Config {
    Config {
        tick_interval: Duration::from_millis(20),
        election_tick: 10,
        heartbeat_tick: 2,
        request_timeout: Duration::from_secs(3),
        read_retry_interval: Duration::from_millis(100),
        snapshot_threshold: 2_000,
        snapshot_log_tail: 200,
        ..Config::default()
    }
}

/// The seed for a randomized test: `RAFTKIT_SEED` if set, else random. Printed, so a failing
/// run can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("RAFTKIT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("{test}: seed {seed} (replay with RAFTKIT_SEED={seed})");
    seed
}

struct RunningNode {
    mailbox: Mailbox,
    task: JoinHandle<Result<()>>,
}

struct Slot {
    storage: Arc<dyn LogStorage>,
    running: Option<RunningNode>,
}

/// A raft cluster of [`KvStore`]s. Every node's transport is wrapped in a [`FaultyTransport`]
/// driven by the cluster's [`Faults`].
pub struct TestCluster {
    /// Set when the nodes talk in-process.
    network: Option<LocalNetwork>,
    transports: TransportFactory,
    /// Chosen once per node id, so a restarted node serves where its peers expect it.
    addrs: Mutex<BTreeMap<u64, String>>,
    faults: Faults,
    config: Config,
    storage_factory: StorageFactory,
    slots: Mutex<BTreeMap<u64, Slot>>,
}

/// How a node starts.
enum Start {
    Lead,
    Join(u64),
}

impl TestCluster {
    /// Starts `n` nodes on in-memory storage over an in-process network, node `id` at
    /// `node-{id}`: node 1 bootstraps, the others join, and this returns once all `n` are
    /// voters.
    pub async fn start(n: usize, config: Config, seed: u64) -> Arc<TestCluster> {
        Self::start_with_storage(n, config, seed, mem_storage()).await
    }

    /// Like [`TestCluster::start`], with the log storage each node gets.
    pub async fn start_with_storage(
        n: usize,
        config: Config,
        seed: u64,
        storage_factory: StorageFactory,
    ) -> Arc<TestCluster> {
        let network = LocalNetwork::new();
        let transports = TransportFactory::local(&network);
        Self::launch(n, config, seed, storage_factory, transports, Some(network)).await
    }

    /// Like [`TestCluster::start`], over the transports of `transports`: each (re)start of a
    /// node gets a new transport, as a new process would, at the address first picked for it.
    pub async fn start_over(
        n: usize,
        config: Config,
        seed: u64,
        transports: TransportFactory,
    ) -> Arc<TestCluster> {
        Self::launch(n, config, seed, mem_storage(), transports, None).await
    }

    async fn launch(
        n: usize,
        config: Config,
        seed: u64,
        storage_factory: StorageFactory,
        transports: TransportFactory,
        network: Option<LocalNetwork>,
    ) -> Arc<TestCluster> {
        let cluster = Arc::new(TestCluster {
            network,
            transports,
            addrs: Mutex::new(BTreeMap::new()),
            faults: Faults::new(seed),
            config,
            storage_factory,
            slots: Mutex::new(BTreeMap::new()),
        });
        cluster.spawn(1, Start::Lead).await;
        cluster.wait_for_leader(Duration::from_secs(10)).await;
        for id in 2..=n as u64 {
            cluster.spawn(id, Start::Join(1)).await;
        }
        let all: Vec<u64> = (1..=n as u64).collect();
        cluster.wait_for_voters(&all, Duration::from_secs(30)).await;
        cluster
    }

    fn slots(&self) -> MutexGuard<'_, BTreeMap<u64, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The address of node `id` (picked now if the node has none yet).
    pub fn addr(&self, id: u64) -> String {
        let mut addrs = self.addrs.lock().unwrap_or_else(|e| e.into_inner());
        addrs
            .entry(id)
            .or_insert_with(|| self.transports.addr(id))
            .clone()
    }

    /// The shared fault plan (drop, delay, duplicate, reorder, partition).
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// The nodes' configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    async fn spawn(&self, id: u64, start: Start) {
        let addr = self.addr(id);
        self.faults.register(id, &addr);
        let storage = {
            let mut slots = self.slots();
            let slot = slots.entry(id).or_insert_with(|| Slot {
                storage: (self.storage_factory)(id),
                running: None,
            });
            assert!(slot.running.is_none(), "node {id} is already running");
            slot.storage.clone()
        };
        let transport =
            FaultyTransport::new(self.transports.transport(id), self.faults.clone(), &addr);
        let raft = Raft::builder(id, KvStore::new())
            .raft_addr(addr)
            .transport(transport)
            .log_storage(storage)
            .config(self.config.clone())
            .build()
            .expect("valid test node");
        let mailbox = raft.mailbox();
        let task = match start {
            Start::Lead => tokio::spawn(raft.lead()),
            Start::Join(via) => tokio::spawn(raft.join(via, self.addr(via))),
        };
        self.slots().get_mut(&id).expect("slot exists").running =
            Some(RunningNode { mailbox, task });
    }

    /// Starts a new node that joins through a running member; returns once it runs (not yet
    /// once it is a voter: see [`TestCluster::wait_for_voters`]).
    pub async fn add_node(&self, id: u64) {
        let via = *self
            .running()
            .first()
            .expect("a running node to join through");
        self.spawn(id, Start::Join(via)).await;
    }

    /// The ids of the nodes that run now.
    pub fn running(&self) -> Vec<u64> {
        self.slots()
            .iter()
            .filter(|(_, s)| s.running.as_ref().is_some_and(|r| !r.task.is_finished()))
            .map(|(&id, _)| id)
            .collect()
    }

    /// The mailbox of a running node.
    pub fn mailbox(&self, id: u64) -> Mailbox {
        self.try_mailbox(id)
            .unwrap_or_else(|| panic!("node {id} is not running"))
    }

    /// The mailbox of node `id` if it runs.
    pub fn try_mailbox(&self, id: u64) -> Option<Mailbox> {
        self.slots()
            .get(&id)
            .and_then(|s| s.running.as_ref())
            .map(|r| r.mailbox.clone())
    }

    /// Kills node `id` at once (its task is aborted; its storage stays, as after `kill -9`).
    pub async fn crash(&self, id: u64) {
        let running = self.slots().get_mut(&id).and_then(|s| s.running.take());
        if let Some(node) = running {
            node.task.abort();
            let _ = node.task.await;
        }
    }

    /// Waits up to `timeout` for node `id` to stop by itself (after leaving or failing) and
    /// returns how its run ended; `None` if it is still running then.
    pub async fn reap(&self, id: u64, timeout: Duration) -> Option<Result<()>> {
        let deadline = Instant::now() + timeout;
        loop {
            let finished = self
                .slots()
                .get(&id)
                .and_then(|s| s.running.as_ref())
                .is_none_or(|r| r.task.is_finished());
            if finished {
                let node = self.slots().get_mut(&id).and_then(|s| s.running.take())?;
                return Some(
                    node.task
                        .await
                        .unwrap_or_else(|e| panic!("node {id} panicked: {e}")),
                );
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Restarts a crashed node from its storage.
    pub async fn restart(&self, id: u64) {
        self.spawn(id, Start::Lead).await;
    }

    /// Starts a stopped node whose storage was wiped ([`TestCluster::wipe`]) the way an
    /// operator does after replacing a failed disk: it joins through a running member.
    pub async fn rejoin(&self, id: u64) {
        let via = *self
            .running()
            .iter()
            .find(|&&n| n != id)
            .expect("a running node to join through");
        self.spawn(id, Start::Join(via)).await;
    }

    /// The in-process network the nodes talk over (a test can attach its own transports).
    /// Panics for a cluster started over another transport ([`TestCluster::start_over`]).
    pub fn network(&self) -> &LocalNetwork {
        self.network
            .as_ref()
            .expect("the cluster runs over another transport than a LocalNetwork")
    }

    /// Replaces node `id`'s storage with an empty one (it must not run).
    pub fn wipe(&self, id: u64) {
        let mut slots = self.slots();
        if let Some(slot) = slots.get_mut(&id) {
            assert!(slot.running.is_none(), "wipe a stopped node only");
            slot.storage = (self.storage_factory)(id);
        }
    }

    /// The status of every running node (nodes that do not answer are left out).
    pub async fn statuses(&self) -> BTreeMap<u64, Status> {
        let mut out = BTreeMap::new();
        for id in self.running() {
            if let Some(mailbox) = self.try_mailbox(id) {
                if let Ok(Ok(s)) =
                    tokio::time::timeout(Duration::from_secs(1), mailbox.status()).await
                {
                    out.insert(id, s);
                }
            }
        }
        out
    }

    /// Waits until one running node leads and every other running node among `among` follows
    /// it; returns the leader. Panics after `timeout`.
    pub async fn wait_for_leader_among(&self, among: &[u64], timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses = self.statuses().await;
            let leaders: Vec<&Status> = statuses
                .values()
                .filter(|s| among.contains(&s.id) && s.role == Role::Leader)
                .collect();
            if let [leader] = leaders.as_slice() {
                let agreed = statuses
                    .values()
                    .filter(|s| among.contains(&s.id))
                    .all(|s| s.leader_id == Some(leader.id) && s.term == leader.term);
                if agreed {
                    return leader.id;
                }
            }
            if Instant::now() > deadline {
                panic!("no agreed leader among {among:?} within {timeout:?}: {statuses:#?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for a leader all running nodes agree on.
    pub async fn wait_for_leader(&self, timeout: Duration) -> u64 {
        let running = self.running();
        self.wait_for_leader_among(&running, timeout).await
    }

    /// Waits until the leader reports exactly `voters` as voters and no learners.
    pub async fn wait_for_voters(&self, voters: &[u64], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut want = voters.to_vec();
        want.sort_unstable();
        loop {
            let statuses = self.statuses().await;
            let done = statuses
                .values()
                .any(|s| s.role == Role::Leader && s.voters == want && s.learners.is_empty());
            if done {
                return;
            }
            if Instant::now() > deadline {
                panic!("voters never became {want:?} within {timeout:?}: {statuses:#?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every running node answers and has applied the leader's commit index.
    pub async fn wait_converged(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses = self.statuses().await;
            let commit = statuses.values().map(|s| s.commit_index).max().unwrap_or(0);
            if !statuses.is_empty()
                && statuses.len() == self.running().len()
                && statuses.values().all(|s| s.applied_index == commit)
            {
                return;
            }
            if Instant::now() > deadline {
                panic!("nodes did not converge within {timeout:?}: {statuses:#?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Panics unless every running node is alive and, within `timeout`, has no proposal or
    /// read waiter left.
    pub async fn assert_no_pending(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_alive();
            let statuses = self.statuses().await;
            let pending: Vec<_> = statuses
                .values()
                .filter(|s| s.pending_proposals + s.pending_reads > 0)
                .map(|s| (s.id, s.pending_proposals, s.pending_reads))
                .collect();
            if pending.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!("waiters left pending (node, proposals, reads): {pending:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Panics if a node that should run has stopped on its own.
    pub fn assert_alive(&self) {
        let slots = self.slots();
        for (id, slot) in slots.iter() {
            if let Some(r) = &slot.running {
                assert!(!r.task.is_finished(), "node {id} stopped on its own");
            }
        }
    }

    /// Reads every key `k0..k{keys}` linearizably through some running node and records the
    /// reads in `history`, so the checker sees the final state: an acknowledged write that was
    /// lost makes the history non-linearizable.
    pub async fn final_reads(&self, history: &History, keys: usize) {
        let client = KvClient::new(u64::MAX, history.clone());
        for k in 0..keys {
            let key = format!("k{k}");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let node = *self.running().first().expect("a running node");
                let mailbox = self.mailbox(node);
                if client
                    .run(&mailbox, KvOp::Get { key: key.clone() })
                    .await
                    .is_ok()
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "final read of {key} kept failing"
                );
            }
        }
    }

    /// Panics unless every running node's state machine holds the same values for keys
    /// `k0..k{keys}` (stale reads, so each node answers from its own state).
    pub async fn assert_replicas_agree(&self, keys: usize) {
        let mut views: BTreeMap<u64, Vec<Option<String>>> = BTreeMap::new();
        for id in self.running() {
            let mut view = Vec::new();
            for k in 0..keys {
                view.push(self.stale_read(id, &format!("k{k}")).await);
            }
            views.insert(id, view);
        }
        let first = views.values().next().cloned();
        for (id, view) in &views {
            assert_eq!(
                Some(view),
                first.as_ref(),
                "node {id} disagrees: {views:#?}"
            );
        }
    }

    /// The value of `key` in node `id`'s own state machine (a stale read); panics if the
    /// read fails.
    pub async fn stale_read(&self, id: u64, key: &str) -> Option<String> {
        let query = encode_op(&KvOp::Get { key: key.into() });
        let bytes = self
            .mailbox(id)
            .query_with(query, ReadConsistency::Stale)
            .await
            .unwrap_or_else(|e| panic!("stale read on node {id}: {e}"));
        decode_value(&bytes).expect("a value")
    }

    /// Runs `op` through node `id` for `client`, retrying failures every 50 ms; panics with
    /// the last error after `timeout`.
    pub async fn run_until_ok(
        &self,
        client: &KvClient,
        id: u64,
        op: KvOp,
        timeout: Duration,
    ) -> KvOutput {
        let deadline = Instant::now() + timeout;
        loop {
            match client.run(&self.mailbox(id), op.clone()).await {
                Ok(out) => return out,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("{op} through node {id} failed, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("{op} through node {id} kept failing: {e}"),
            }
        }
    }

    /// Stops every node.
    pub async fn shutdown(&self) {
        let ids: Vec<u64> = self.slots().keys().copied().collect();
        for id in ids {
            self.crash(id).await;
        }
    }

    /// Runs `clients` concurrent clients for `duration` against random running nodes, doing
    /// puts, gets, compare-and-swaps and deletes on `keys` keys, recording into `history`.
    pub async fn run_workload(
        self: &Arc<Self>,
        history: &History,
        clients: usize,
        keys: usize,
        duration: Duration,
        seed: u64,
    ) -> WorkloadStats {
        let stop = Instant::now() + duration;
        let mut tasks = Vec::new();
        for c in 0..clients {
            let cluster = self.clone();
            let client = KvClient::new(c as u64, history.clone());
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(c as u64 * 7919));
            tasks.push(tokio::spawn(async move {
                let mut stats = WorkloadStats::default();
                let mut n = 0u64;
                let mut last_value: BTreeMap<String, Option<String>> = BTreeMap::new();
                while Instant::now() < stop {
                    let running = cluster.running();
                    if running.is_empty() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    let node = running[rng.gen_range(0..running.len())];
                    let Some(mailbox) = cluster.try_mailbox(node) else {
                        continue;
                    };
                    let mailbox = mailbox.with_timeout(Duration::from_secs(2));
                    let key = format!("k{}", rng.gen_range(0..keys.max(1)));
                    n += 1;
                    let value = format!("c{c}-{n}");
                    let op = match rng.gen_range(0..100) {
                        0..=39 => KvOp::Get { key: key.clone() },
                        40..=69 => KvOp::Put {
                            key: key.clone(),
                            value: value.clone(),
                        },
                        70..=89 => KvOp::Cas {
                            key: key.clone(),
                            expect: last_value.get(&key).cloned().flatten(),
                            value: value.clone(),
                        },
                        _ => KvOp::Delete { key: key.clone() },
                    };
                    match client.run(&mailbox, op.clone()).await {
                        Ok(out) => {
                            stats.ok += 1;
                            match (op, out) {
                                (KvOp::Get { .. }, KvOutput::Value(v)) => {
                                    last_value.insert(key, v);
                                }
                                (KvOp::Put { .. }, _)
                                | (KvOp::Cas { .. }, KvOutput::Swapped(true)) => {
                                    last_value.insert(key, Some(value));
                                }
                                (KvOp::Delete { .. }, _) => {
                                    last_value.insert(key, None);
                                }
                                _ => {}
                            }
                        }
                        Err(e) if super::kv::may_have_applied(&e) => stats.unknown += 1,
                        Err(_) => stats.failed += 1,
                    }
                }
                stats
            }));
        }
        let mut total = WorkloadStats::default();
        for t in tasks {
            let s = t.await.expect("client task");
            total.ok += s.ok;
            total.failed += s.failed;
            total.unknown += s.unknown;
        }
        total
    }
}

/// Counts of a workload's operations by outcome.
#[derive(Debug, Default, Clone, Copy)]
pub struct WorkloadStats {
    /// Succeeded.
    pub ok: u64,
    /// Certainly had no effect.
    pub failed: u64,
    /// May or may not have taken effect.
    pub unknown: u64,
}
