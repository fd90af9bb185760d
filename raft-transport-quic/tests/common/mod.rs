//! A small cluster harness over real QUIC on loopback: each node has its own transport (as
//! its own process would), its own free UDP port, and a `MemLogStorage` the harness keeps, so
//! a stopped node restarts from the same state.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft_core::testing::kv::KvStore;
use raft_core::{
    Config, Faults, FaultyTransport, Mailbox, MemLogStorage, Raft, Role, Status, TransportError,
};
use raft_transport_quic::dev_certs::{self, DevCerts};
use raft_transport_quic::{QuicTransport, TlsConfig};
use tokio::task::JoinHandle;

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A loopback address with a UDP port that was free a moment ago.
pub fn free_addr() -> String {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    format!("127.0.0.1:{}", socket.local_addr().unwrap().port())
}

/// A development CA with certificates for `nodes`, in a temporary directory.
pub struct Certs {
    pub dir: tempfile::TempDir,
    pub certs: DevCerts,
}

impl Certs {
    pub fn new(nodes: &[u64]) -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let certs = dev_certs::generate(dir.path(), nodes).unwrap();
        Certs { dir, certs }
    }

    pub fn tls(&self, id: u64) -> TlsConfig {
        self.certs.tls(id).expect("certificates for this node")
    }

    /// A transport with node `id`'s identity, tuned for tests (quick reconnects).
    pub fn transport(&self, id: u64) -> QuicTransport {
        QuicTransport::builder()
            .tls(self.tls(id))
            .connect_timeout(Duration::from_secs(1))
            .max_backoff(Duration::from_millis(500))
            .build()
            .unwrap()
    }
}

struct Running {
    mailbox: Mailbox,
    task: JoinHandle<raft_core::Result<()>>,
}

struct Slot {
    addr: String,
    storage: MemLogStorage,
    running: Option<Running>,
}

/// A raft cluster of [`KvStore`]s over QUIC.
pub struct QuicCluster {
    pub certs: Certs,
    pub config: Config,
    pub faults: Option<Faults>,
    slots: Mutex<BTreeMap<u64, Slot>>,
}

impl QuicCluster {
    /// Starts nodes `1..=n`: node 1 bootstraps, the others join it; returns once all are
    /// voters. With `faults`, every node's transport is wrapped in a `FaultyTransport`.
    pub async fn start(n: u64, config: Config, faults: Option<Faults>) -> Arc<QuicCluster> {
        let ids: Vec<u64> = (1..=n).collect();
        let cluster = Arc::new(QuicCluster {
            certs: Certs::new(&ids),
            config,
            faults,
            slots: Mutex::new(BTreeMap::new()),
        });
        for &id in &ids {
            let addr = free_addr();
            if let Some(f) = &cluster.faults {
                f.register(id, &addr);
            }
            cluster.slots.lock().unwrap().insert(
                id,
                Slot {
                    addr,
                    storage: MemLogStorage::new(),
                    running: None,
                },
            );
        }
        cluster.spawn(1, None);
        cluster.wait_for_leader(&[1], Duration::from_secs(10)).await;
        for &id in &ids[1..] {
            cluster.spawn(id, Some(1));
        }
        cluster.wait_for_voters(&ids, Duration::from_secs(20)).await;
        cluster
    }

    pub fn addr(&self, id: u64) -> String {
        self.slots.lock().unwrap()[&id].addr.clone()
    }

    /// Starts node `id` with a fresh transport (as a new process would): `join` through a
    /// member, or (None) `lead`, which restarts a node that has state as itself.
    fn spawn(&self, id: u64, join: Option<u64>) {
        let (addr, storage) = {
            let slots = self.slots.lock().unwrap();
            let slot = &slots[&id];
            assert!(slot.running.is_none(), "node {id} already runs");
            (slot.addr.clone(), slot.storage.clone())
        };
        let quic = self.certs.transport(id);
        let builder = Raft::builder(id, KvStore::new())
            .raft_addr(addr.clone())
            .log_storage(storage)
            .config(self.config.clone());
        let builder = match &self.faults {
            Some(f) => builder.transport(FaultyTransport::new(quic, f.clone(), &addr)),
            None => builder.transport(quic),
        };
        let raft = builder.build().unwrap();
        let mailbox = raft.mailbox();
        let task = match join {
            None => tokio::spawn(raft.lead()),
            Some(via) => {
                let via_addr = self.addr(via);
                tokio::spawn(raft.join(via, via_addr))
            }
        };
        self.slots.lock().unwrap().get_mut(&id).unwrap().running = Some(Running { mailbox, task });
    }

    /// Stops node `id` at once (its task is aborted; its storage stays).
    pub async fn stop(&self, id: u64) {
        let running = self
            .slots
            .lock()
            .unwrap()
            .get_mut(&id)
            .and_then(|s| s.running.take());
        if let Some(r) = running {
            r.task.abort();
            let _ = r.task.await;
        }
    }

    /// Restarts a stopped node from its storage.
    pub fn restart(&self, id: u64) {
        self.spawn(id, None);
    }

    pub async fn shutdown(&self) {
        let ids: Vec<u64> = self.slots.lock().unwrap().keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }

    pub fn running(&self) -> Vec<u64> {
        self.slots
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| s.running.as_ref().is_some_and(|r| !r.task.is_finished()))
            .map(|(&id, _)| id)
            .collect()
    }

    pub fn mailbox(&self, id: u64) -> Mailbox {
        self.try_mailbox(id)
            .unwrap_or_else(|| panic!("node {id} is not running"))
    }

    pub fn try_mailbox(&self, id: u64) -> Option<Mailbox> {
        self.slots
            .lock()
            .unwrap()
            .get(&id)
            .and_then(|s| s.running.as_ref())
            .map(|r| r.mailbox.clone())
    }

    pub async fn status(&self, id: u64) -> Option<Status> {
        let mailbox = self.try_mailbox(id)?;
        match tokio::time::timeout(Duration::from_secs(1), mailbox.status()).await {
            Ok(Ok(s)) => Some(s),
            _ => None,
        }
    }

    pub async fn statuses(&self) -> BTreeMap<u64, Status> {
        let mut out = BTreeMap::new();
        for id in self.running() {
            if let Some(s) = self.status(id).await {
                out.insert(id, s);
            }
        }
        out
    }

    /// Waits until exactly one node among `among` leads and all of them follow it.
    pub async fn wait_for_leader(&self, among: &[u64], timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses = self.statuses().await;
            let leaders: Vec<&Status> = statuses
                .values()
                .filter(|s| among.contains(&s.id) && s.role == Role::Leader)
                .collect();
            if let [leader] = leaders.as_slice() {
                let agreed = among.iter().all(|id| {
                    statuses
                        .get(id)
                        .is_some_and(|s| s.leader_id == Some(leader.id) && s.term == leader.term)
                });
                if agreed {
                    return leader.id;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader among {among:?} within {timeout:?}: {statuses:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the leader reports exactly `voters` as voters and no learners.
    pub async fn wait_for_voters(&self, voters: &[u64], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut want = voters.to_vec();
        want.sort_unstable();
        loop {
            let statuses = self.statuses().await;
            if statuses
                .values()
                .any(|s| s.role == Role::Leader && s.voters == want && s.learners.is_empty())
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "voters never became {want:?} within {timeout:?}: {statuses:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every running node has applied the highest commit index any reports.
    pub async fn wait_converged(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses = self.statuses().await;
            let commit = statuses.values().map(|s| s.commit_index).max().unwrap_or(0);
            if statuses.len() == self.running().len()
                && statuses.values().all(|s| s.applied_index == commit)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nodes did not converge within {timeout:?}: {statuses:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Retries `f` until it succeeds or `timeout` passes.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "{what}: still failing after {timeout:?}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// True for the transport errors that mean "certainly not delivered".
pub fn is_unreachable(e: &TransportError) -> bool {
    matches!(e, TransportError::Unreachable { .. })
}

/// How long the tests' own calls may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
