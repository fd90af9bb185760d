//! Shared test helpers: free loopback ports, a throwaway PKI, a recording inbound handler, and
//! a small raft cluster harness over real gRPC.

#![allow(
    dead_code,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft_core::testing::kv::{KvClient, KvStore};
use raft_core::testing::linearizability::{History, KvOp, KvOutput};
use raft_core::wire::{self, request, response, RaftBatch};
use raft_core::{
    async_trait, Config, InboundHandler, Mailbox, MemLogStorage, Raft, Role, Status, Transport,
    TransportError,
};
use raft_transport_grpc::TlsConfig;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Logs to the test output; `RUST_LOG` picks the level (default: warnings).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A loopback address nobody listens on right now.
pub fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("127.0.0.1:{}", listener.local_addr().unwrap().port())
}

/// A certificate authority in a temporary directory, issuing node certificates for
/// `127.0.0.1` and `localhost`.
pub struct Pki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
        Pki {
            dir,
            issuer: Issuer::new(params, key),
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Writes `name.pem` and `name.key`, a certificate for 127.0.0.1 / localhost usable as
    /// server and client, naming no node id.
    pub fn node(&self, name: &str) -> (PathBuf, PathBuf) {
        self.identity(name, None)
    }

    /// Like [`Pki::node`], naming node `id` (`raftkit://node/<id>`) when given.
    pub fn identity(&self, name: &str, id: Option<u64>) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        if let Some(id) = id {
            params.subject_alt_names.push(SanType::URI(
                raft_core::transport::node_uri(id).try_into().unwrap(),
            ));
        }
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let cert_path = self.dir.path().join(format!("{name}.pem"));
        let key_path = self.dir.path().join(format!("{name}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        (cert_path, key_path)
    }

    pub fn mutual(&self, name: &str) -> TlsConfig {
        let (cert, key) = self.node(name);
        TlsConfig::mutual(self.ca(), cert, key)
    }

    /// Mutual TLS with a certificate naming node `id`.
    pub fn mutual_as(&self, name: &str, id: u64) -> TlsConfig {
        let (cert, key) = self.identity(name, Some(id));
        TlsConfig::mutual(self.ca(), cert, key)
    }

    pub fn server_auth(&self, name: &str) -> TlsConfig {
        let (cert, key) = self.node(name);
        TlsConfig::server_auth(self.ca(), cert, key)
    }
}

/// An inbound handler that records raft batches (refusing those not addressed to `id`, as a
/// node does) and answers `Status` with its id and `Propose` with the proposed bytes.
pub struct Recorder {
    pub id: u64,
    batches: Mutex<Vec<RaftBatch>>,
    arrived: Notify,
}

impl Recorder {
    pub fn new(id: u64) -> Arc<Recorder> {
        Arc::new(Recorder {
            id,
            batches: Mutex::new(Vec::new()),
            arrived: Notify::new(),
        })
    }

    pub fn batches(&self) -> Vec<RaftBatch> {
        self.batches.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.batches.lock().unwrap().len()
    }

    /// Waits until at least `n` batches arrived; returns them all.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<RaftBatch> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            if self.count() >= n {
                return self.batches();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "only {} of {n} batches arrived within {timeout:?}",
                    self.count()
                );
            }
            let _ = tokio::time::timeout(left, notified).await;
        }
    }
}

#[async_trait]
impl InboundHandler for Recorder {
    async fn raft_batch(
        &self,
        _peer: raft_core::PeerIdentity,
        batch: RaftBatch,
    ) -> Result<(), TransportError> {
        if batch.to != self.id {
            return Err(TransportError::Malformed(format!(
                "raft batch for node {} delivered to node {}",
                batch.to, self.id
            )));
        }
        self.batches.lock().unwrap().push(batch);
        self.arrived.notify_waiters();
        Ok(())
    }

    async fn call(&self, _peer: raft_core::PeerIdentity, request: wire::Request) -> wire::Response {
        let kind = match request.kind {
            Some(request::Kind::Status(_)) => response::Kind::Status(wire::NodeStatus {
                id: self.id,
                ..Default::default()
            }),
            Some(request::Kind::Propose(p)) => response::Kind::Propose(p.data),
            _ => response::Kind::Error(wire::ErrorReply {
                code: wire::ErrorCode::Invalid as i32,
                message: "unsupported".into(),
                ..Default::default()
            }),
        };
        wire::Response { kind: Some(kind) }
    }
}

pub fn batch(from: u64, to: u64, seq: u64) -> RaftBatch {
    RaftBatch {
        cluster_id: 0,
        from,
        to,
        messages: vec![seq.to_be_bytes().to_vec()],
        from_addr: String::new(),
    }
}

pub fn seq_of(batch: &RaftBatch) -> u64 {
    let bytes: [u8; 8] = batch.messages[0][..8].try_into().unwrap();
    u64::from_be_bytes(bytes)
}

pub fn status_request() -> wire::Request {
    wire::Request {
        cluster_id: 0,
        kind: Some(request::Kind::Status(wire::StatusRequest {})),
    }
}

/// Asks `addr` for its status over `transport`; returns the node id it reports.
/// How long the tests' own calls may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn status_id(transport: &dyn Transport, addr: &str) -> Result<u64, TransportError> {
    let response = transport.call(addr, status_request(), CALL_TIMEOUT).await?;
    match response.kind {
        Some(response::Kind::Status(s)) => Ok(s.id),
        other => panic!("unexpected answer {other:?}"),
    }
}

/// Makes the transport of node `id` listening on `addr` (called again on each restart).
pub type TransportFactory = Arc<dyn Fn(u64, &str) -> Arc<dyn Transport> + Send + Sync>;

struct Slot {
    addr: String,
    storage: MemLogStorage,
    running: Option<(Mailbox, JoinHandle<raft_core::Result<()>>)>,
}

/// A raft cluster of [`KvStore`]s whose nodes talk over real gRPC on loopback.
pub struct GrpcCluster {
    config: Config,
    factory: TransportFactory,
    slots: Mutex<BTreeMap<u64, Slot>>,
}

impl GrpcCluster {
    /// Starts `n` nodes: node 1 bootstraps, the others join through it; returns once all are
    /// voters.
    pub async fn start(n: u64, config: Config, factory: TransportFactory) -> Arc<GrpcCluster> {
        let cluster = Arc::new(GrpcCluster {
            config,
            factory,
            slots: Mutex::new(BTreeMap::new()),
        });
        for id in 1..=n {
            cluster.slots.lock().unwrap().insert(
                id,
                Slot {
                    addr: free_addr(),
                    storage: MemLogStorage::new(),
                    running: None,
                },
            );
        }
        cluster.spawn(1, None);
        cluster.wait_for_leader(Duration::from_secs(10)).await;
        let addr1 = cluster.addr(1);
        for id in 2..=n {
            cluster.spawn(id, Some((1, addr1.clone())));
        }
        let all: Vec<u64> = (1..=n).collect();
        cluster.wait_for_voters(&all, Duration::from_secs(30)).await;
        cluster
    }

    pub fn addr(&self, id: u64) -> String {
        self.slots.lock().unwrap()[&id].addr.clone()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn spawn(&self, id: u64, join: Option<(u64, String)>) {
        let mut slots = self.slots.lock().unwrap();
        let slot = slots.get_mut(&id).expect("known node");
        assert!(slot.running.is_none(), "node {id} already runs");
        let transport = (self.factory)(id, &slot.addr);
        let raft = Raft::builder(id, KvStore::new())
            .raft_addr(slot.addr.clone())
            .transport(transport)
            .log_storage(slot.storage.clone())
            .config(self.config.clone())
            .build()
            .expect("valid node");
        let mailbox = raft.mailbox();
        let task = match join {
            None => tokio::spawn(raft.lead()),
            Some((via, addr)) => tokio::spawn(raft.join(via, addr)),
        };
        slot.running = Some((mailbox, task));
    }

    /// Stops node `id` at once (task aborted, server closed); its storage stays.
    pub async fn stop(&self, id: u64) {
        let running = self
            .slots
            .lock()
            .unwrap()
            .get_mut(&id)
            .and_then(|s| s.running.take());
        if let Some((mailbox, task)) = running {
            task.abort();
            let _ = task.await;
            drop(mailbox);
        }
    }

    /// Restarts a stopped node from its storage, on the same address.
    pub fn restart(&self, id: u64) {
        self.spawn(id, None);
    }

    pub fn running(&self) -> Vec<u64> {
        self.slots
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| s.running.as_ref().is_some_and(|r| !r.1.is_finished()))
            .map(|(&id, _)| id)
            .collect()
    }

    pub fn mailbox(&self, id: u64) -> Mailbox {
        self.slots.lock().unwrap()[&id]
            .running
            .as_ref()
            .map(|r| r.0.clone())
            .unwrap_or_else(|| panic!("node {id} is not running"))
    }

    pub async fn statuses(&self) -> BTreeMap<u64, Status> {
        let mut out = BTreeMap::new();
        for id in self.running() {
            let mailbox = self.mailbox(id);
            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(1), mailbox.status()).await
            {
                out.insert(id, s);
            }
        }
        out
    }

    pub async fn wait_for_leader(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses = self.statuses().await;
            let leaders: Vec<&Status> = statuses
                .values()
                .filter(|s| s.role == Role::Leader)
                .collect();
            if let [leader] = leaders.as_slice() {
                if statuses
                    .values()
                    .all(|s| s.leader_id == Some(leader.id) && s.term == leader.term)
                {
                    return leader.id;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {timeout:?}: {statuses:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_for_voters(&self, voters: &[u64], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses = self.statuses().await;
            if statuses
                .values()
                .any(|s| s.role == Role::Leader && s.voters == voters && s.learners.is_empty())
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "voters never became {voters:?} within {timeout:?}: {statuses:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every running node has applied everything the leader committed.
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

    pub async fn shutdown(&self) {
        let ids: Vec<u64> = self.slots.lock().unwrap().keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }

    /// Runs an operation through node `id`, retrying retryable failures until `timeout`.
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
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "{op} through node {id} kept failing: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// `clients` concurrent clients doing puts, gets, cas and deletes on `keys` keys through
    /// random running nodes for `duration`, recording into `history`. Returns (ok, failed).
    pub async fn workload(
        self: &Arc<Self>,
        history: &History,
        clients: u64,
        keys: u64,
        duration: Duration,
        seed: u64,
    ) -> (u64, u64) {
        let stop = Instant::now() + duration;
        let mut tasks = Vec::new();
        for c in 0..clients {
            let cluster = self.clone();
            let client = KvClient::new(c, history.clone());
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(c * 7919));
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut failed, mut n) = (0u64, 0u64, 0u64);
                while Instant::now() < stop {
                    let running = cluster.running();
                    if running.is_empty() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    let node = running[rng.gen_range(0..running.len())];
                    let mailbox = cluster.mailbox(node).with_timeout(Duration::from_secs(2));
                    let key = format!("k{}", rng.gen_range(0..keys));
                    n += 1;
                    let value = format!("c{c}-{n}");
                    let op = match rng.gen_range(0..100) {
                        0..=39 => KvOp::Get { key },
                        40..=74 => KvOp::Put { key, value },
                        75..=89 => KvOp::Cas {
                            key,
                            expect: None,
                            value,
                        },
                        _ => KvOp::Delete { key },
                    };
                    match client.run(&mailbox, op).await {
                        Ok(_) => ok += 1,
                        Err(_) => failed += 1,
                    }
                }
                (ok, failed)
            }));
        }
        let mut total = (0, 0);
        for t in tasks {
            let (ok, failed) = t.await.unwrap();
            total.0 += ok;
            total.1 += failed;
        }
        total
    }

    /// Reads every key through some running node so the checker sees the final state.
    pub async fn final_reads(&self, history: &History, keys: u64) {
        let client = KvClient::new(u64::MAX, history.clone());
        let node = self.running()[0];
        for k in 0..keys {
            self.run_until_ok(
                &client,
                node,
                KvOp::Get {
                    key: format!("k{k}"),
                },
                Duration::from_secs(15),
            )
            .await;
        }
    }
}
