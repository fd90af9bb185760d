//! `Raft`: builds a node and runs it as the leader of a new cluster, a joiner, or itself again
//! after a restart.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::Config;
use crate::error::{Error, Fatal, MaybeApplied, NotApplied, Result, StorageError};
use crate::forwarder::Forwarder;
use crate::initial_cluster::InitialCluster;
use crate::log_storage::{snapshot_index, LogStorage};
use crate::mailbox::Mailbox;
use crate::mem_log_storage::MemLogStorage;
use crate::node::cluster_id::{self, StampingTransport};
use crate::node::driver::{Driver, DriverParts};
use crate::node::handle::NodeHandle;
use crate::node::membership::open_membership;
use crate::node::messages::{DriverMsg, MembershipChange};
use crate::node::op::Op;
use crate::node::open::{first_snapshot, open, OpenParts, OpenedNode};
use crate::node::peers::Peers;
use crate::node::server::NodeServer;
use crate::node::snapshot_transfer::{ReceivedPayloads, SnapshotAssembler};
use crate::node::Counters;
use crate::records::Member;
use crate::store::Store;
use crate::transport::Transport;
use crate::wire::{
    request, response, LeaderInfoRequest, MembershipAction, Request, Response, StatusRequest,
};

/// How long asking one address who leads may take.
const LEADER_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a founder waits for each other founder's status before bootstrapping.
const FOUNDER_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Capacity of the driver's inbox; a full inbox pushes back on clients and peers.
const DRIVER_INBOX: usize = 16 * 1024;

/// A raft node: the user's [`Store`] replicated through a [`LogStorage`] and a [`Transport`].
///
/// Build it with [`Raft::builder`], take a [`Mailbox`], then run it with
/// [`Raft::start_cluster`] (all founding members start together from one member list),
/// [`Raft::lead`] (a new one-node cluster others join) or [`Raft::join`] (an existing
/// cluster). A node whose log storage already holds state ignores the choice and comes back
/// as itself.
///
/// ```no_run
/// # use raft_core::*;
/// # async fn demo<S: Store>(store: S, peers: Vec<String>) -> Result<()> {
/// let network = LocalNetwork::new();
/// let raft = Raft::builder(1, store)
///     .raft_addr("node-1")
///     .transport(network.transport())
///     .build()?;
/// let mailbox = raft.mailbox();
/// let node = match raft.find_leader_info(peers).await? {
///     Some((leader_id, leader_addr)) => tokio::spawn(raft.join(leader_id, leader_addr)),
///     None => tokio::spawn(raft.lead()),
/// };
/// let answer = mailbox.send_proposal(b"hello".to_vec()).await?;
/// # let _ = (answer, node);
/// # Ok(()) }
/// ```
pub struct Raft {
    node: Arc<NodeHandle>,
    store: Box<dyn Store>,
    storage: Arc<dyn LogStorage>,
    inbox: mpsc::Receiver<DriverMsg>,
}

impl std::fmt::Debug for Raft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Raft")
            .field("id", &self.node.id)
            .field("addr", &self.node.addr)
            .finish()
    }
}

/// Builds a [`Raft`]; see [`Raft::builder`].
pub struct RaftBuilder {
    id: u64,
    store: Box<dyn Store>,
    addr: Option<String>,
    listen: Option<String>,
    transport: Option<Arc<dyn Transport>>,
    storage: Option<Arc<dyn LogStorage>>,
    config: Config,
}

impl RaftBuilder {
    /// The address peers use to reach this node (it is stored in the membership). The
    /// transport also listens on it unless [`RaftBuilder::listen_addr`] says otherwise.
    pub fn raft_addr(mut self, addr: impl Into<String>) -> Self {
        self.addr = Some(addr.into());
        self
    }

    /// Where the transport listens when that differs from the address peers dial (a
    /// container or NAT: listen on `0.0.0.0:7001`, be reached at `10.0.0.5:7001`).
    /// Default: the [`RaftBuilder::raft_addr`].
    pub fn listen_addr(mut self, addr: impl Into<String>) -> Self {
        self.listen = Some(addr.into()).filter(|a| !a.is_empty());
        self
    }

    /// How nodes talk to each other (required).
    pub fn transport(mut self, transport: impl Transport) -> Self {
        self.transport = Some(Arc::new(transport));
        self
    }

    /// Where the raft log lives. Default: [`MemLogStorage`] (nothing survives a restart).
    pub fn log_storage(mut self, storage: impl LogStorage) -> Self {
        self.storage = Some(Arc::new(storage));
        self
    }

    /// Tunables; default [`Config::default`].
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Checks the settings and builds the node (nothing runs yet).
    pub fn build(self) -> Result<Raft> {
        if self.id == 0 {
            return Err(Error::config("node id 0 is reserved; use 1 or more"));
        }
        self.config.validate()?;
        let addr = self
            .addr
            .filter(|a| !a.is_empty())
            .ok_or_else(|| Error::config("no raft address: call .raft_addr(...)"))?;
        let transport = self
            .transport
            .ok_or_else(|| Error::config("no transport: call .transport(...)"))?;
        let storage = self
            .storage
            .unwrap_or_else(|| Arc::new(MemLogStorage::new()));
        let (driver_tx, inbox) = mpsc::channel(DRIVER_INBOX);
        let counters = Arc::new(Counters::default());
        let transport: Arc<dyn Transport> = Arc::new(StampingTransport {
            inner: transport,
            counters: counters.clone(),
        });
        let node = Arc::new(NodeHandle {
            id: self.id,
            listen_addr: self.listen.unwrap_or_else(|| addr.clone()),
            addr,
            forwarder: Forwarder::new(
                transport.clone(),
                self.config.max_forward_queue,
                counters.clone(),
            ),
            config: self.config,
            driver_tx,
            transport,
            counters,
        });
        Ok(Raft {
            node,
            store: self.store,
            storage,
            inbox,
        })
    }
}

impl Raft {
    /// Starts building node `id` around the user's state machine.
    pub fn builder(id: u64, store: impl Store) -> RaftBuilder {
        RaftBuilder {
            id,
            store: Box::new(store),
            addr: None,
            listen: None,
            transport: None,
            storage: None,
            config: Config::default(),
        }
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.node.id
    }

    /// A handle for proposals, reads and membership changes; usable before the node runs.
    pub fn mailbox(&self) -> Mailbox {
        Mailbox::new(self.node.clone())
    }

    /// True when the log storage holds a previous incarnation's state: the node will restart
    /// as itself whatever [`Raft::lead`] or [`Raft::join`] asks.
    pub fn has_state(&self) -> Result<bool> {
        has_state(self.storage.as_ref())
    }

    /// Asks each address in `peers` who leads; returns the first leader found.
    pub async fn find_leader_info(&self, peers: Vec<String>) -> Result<Option<(u64, String)>> {
        let request = Request {
            kind: Some(request::Kind::LeaderInfo(LeaderInfoRequest {})),
            cluster_id: 0,
        };
        for peer in peers {
            // The transport gives up after the timeout it is given.
            let call = self
                .node
                .transport
                .call(&peer, request.clone(), LEADER_LOOKUP_TIMEOUT);
            match call.await {
                Ok(response) => {
                    if let Some(response::Kind::LeaderInfo(info)) = response.kind {
                        if info.leader_id != 0 {
                            let addr = if info.leader_addr.is_empty() {
                                peer.clone()
                            } else {
                                info.leader_addr
                            };
                            return Ok(Some((info.leader_id, addr)));
                        }
                    }
                }
                Err(e) => tracing::debug!(peer, "leader lookup failed: {e}"),
            }
        }
        Ok(None)
    }

    /// Starts this node as a founding member of `cluster`, then runs until the node stops.
    ///
    /// Every founding node is given the same [`InitialCluster`]; they may start in any order
    /// and at the same instant: each one bootstraps alone from the list, so there is never a
    /// second cluster, and the first election among them picks the leader. With existing
    /// state the list is ignored (a warning says so when the stored membership differs) and
    /// the node restarts as itself. Nodes added later [`Raft::join`].
    ///
    /// ```no_run
    /// # use raft_core::*;
    /// # async fn demo<S: Store>(store: S, transport: impl Transport) -> Result<()> {
    /// let cluster: InitialCluster = "1=10.0.0.1:7001,2=10.0.0.2:7001,3=10.0.0.3:7001".parse()?;
    /// let raft = Raft::builder(1, store)
    ///     .raft_addr("10.0.0.1:7001")
    ///     .transport(transport)
    ///     .build()?;
    /// let mailbox = raft.mailbox();
    /// let node = tokio::spawn(raft.start_cluster(cluster.with_token("prod-eu")));
    /// mailbox.send_proposal(b"hello".to_vec()).await?;
    /// # let _ = node;
    /// # Ok(()) }
    /// ```
    pub async fn start_cluster(mut self, cluster: InitialCluster) -> Result<()> {
        if self.has_state()? {
            self.warn_if_membership_differs(&cluster)?;
            tracing::info!(
                node = self.node.id,
                "log storage holds state: restarting as the same node (the initial cluster \
                 only bootstraps empty nodes)"
            );
            return self.run(None).await;
        }
        match cluster.members().get(&self.node.id) {
            None => {
                return Err(Error::config(format!(
                    "node {} is not in the initial cluster ({}); a node added later joins \
                     through a member instead",
                    self.node.id,
                    describe(cluster.members())
                )))
            }
            Some(addr) if *addr != self.node.addr => {
                return Err(Error::config(format!(
                    "the initial cluster gives node {} the address {addr}, but it advertises \
                     {}: peers would dial the wrong address",
                    self.node.id, self.node.addr
                )))
            }
            Some(_) => {}
        }
        // Empty storage does not prove a first start: a founder whose disk was replaced must
        // not come back as a voter that forgot its votes and its log (it could elect a leader
        // without committed entries). If the cluster has already run, join it instead: the
        // leader then replaces the old incarnation, as for any lost disk.
        if let Some(via) = self.formed_without_us(&cluster).await {
            tracing::warn!(
                node = self.node.id,
                via = %via.1,
                "the initial cluster already runs and this node has no state (a lost disk, or a \
                 start long after the others): joining it instead of bootstrapping"
            );
            return self.run(Some(via)).await;
        }
        let members = cluster
            .members()
            .iter()
            .map(|(&id, addr)| Member {
                id,
                addr: addr.clone(),
                promote: false,
            })
            .collect();
        self.bootstrap(members, cluster.cluster_id()).await?;
        self.run(None).await
    }

    fn warn_if_membership_differs(&self, cluster: &InitialCluster) -> Result<()> {
        let snapshot = self.storage.snapshot()?;
        if snapshot_index(&snapshot) == 0 {
            return Ok(());
        }
        let stored = open_membership(&snapshot.data).map_err(Error::config)?;
        let members: std::collections::BTreeMap<u64, String> =
            stored.members.into_iter().map(|m| (m.id, m.addr)).collect();
        if &members != cluster.members() {
            tracing::warn!(
                node = self.node.id,
                stored = %describe(&members),
                initial = %describe(cluster.members()),
                "the stored membership differs from the initial cluster given; the stored one \
                 is used (the list only bootstraps empty nodes; change members with membership \
                 calls)"
            );
        }
        if stored.cluster_id != 0 && stored.cluster_id != cluster.cluster_id() {
            tracing::warn!(
                node = self.node.id,
                stored = %cluster_id::display(stored.cluster_id),
                initial = %cluster_id::display(cluster.cluster_id()),
                "this node's state belongs to another cluster than the initial cluster given"
            );
        }
        Ok(())
    }

    /// A member of `cluster` through which to join when the cluster has run past its
    /// bootstrap (a term or commit past the initial snapshot's); `None` when no reachable
    /// member says so (a first start: founders that have not started yet cannot answer).
    async fn formed_without_us(&self, cluster: &InitialCluster) -> Option<(u64, String)> {
        let request = Request {
            kind: Some(request::Kind::Status(StatusRequest {})),
            cluster_id: 0,
        };
        let calls = cluster
            .members()
            .iter()
            .filter(|(&id, _)| id != self.node.id)
            .map(|(&id, addr)| {
                let call = self
                    .node
                    .transport
                    .call(addr, request.clone(), FOUNDER_PROBE_TIMEOUT);
                async move { (id, addr.clone(), call.await) }
            });
        for (id, addr, answer) in futures::future::join_all(calls).await {
            let Ok(Response {
                kind: Some(response::Kind::Status(status)),
            }) = answer
            else {
                continue;
            };
            if status.cluster_id == cluster.cluster_id()
                && (status.term > 1 || status.commit_index > 1)
            {
                let leader = status.leader_id;
                let via = match cluster.members().get(&leader) {
                    Some(leader_addr) if leader != self.node.id => (leader, leader_addr.clone()),
                    _ => (0, addr),
                };
                tracing::debug!(peer = id, term = status.term, "the initial cluster has run");
                return Some(via);
            }
        }
        None
    }

    /// Bootstraps a new single-node cluster with this node as its only voter, then runs until
    /// the node stops. With existing state, restarts as that node instead.
    pub async fn lead(mut self) -> Result<()> {
        if !self.has_state()? {
            let members = vec![Member {
                id: self.node.id,
                addr: self.node.addr.clone(),
                promote: false,
            }];
            self.bootstrap(members, cluster_id::random()).await?;
        } else {
            tracing::info!(
                node = self.node.id,
                "log storage holds state: restarting as the same node"
            );
        }
        self.run(None).await
    }

    /// Joins the cluster led by (or reachable through) `leader_addr`, then runs until the
    /// node stops. The node is added as a learner and promoted to voter once caught up. With
    /// existing state, restarts as that node instead.
    pub async fn join(self, leader_id: u64, leader_addr: impl Into<String>) -> Result<()> {
        let leader_addr = leader_addr.into();
        if self.has_state()? {
            tracing::info!(
                node = self.node.id,
                "log storage holds state: restarting as the same node, not joining"
            );
            return self.run(None).await;
        }
        self.run(Some((leader_id, leader_addr))).await
    }

    /// Installs the first snapshot of a new cluster: `members` are its voters.
    async fn bootstrap(&mut self, members: Vec<Member>, cluster_id: u64) -> Result<()> {
        let user_data =
            self.store.snapshot().await.map_err(|e| {
                Error::store(format!("snapshot of the initial state failed: {e:#}"))
            })?;
        let snapshot = first_snapshot(cluster_id, members, user_data);
        let storage = self.storage.clone();
        tokio::task::spawn_blocking(move || storage.install_snapshot(&snapshot))
            .await
            .map_err(|e| StorageError::Io(e.to_string()))??;
        tracing::info!(
            node = self.node.id,
            cluster = %cluster_id::display(cluster_id),
            "bootstrapped a new cluster"
        );
        Ok(())
    }

    async fn run(self, join: Option<(u64, String)>) -> Result<()> {
        let Raft {
            node,
            store,
            storage,
            inbox,
        } = self;
        let id = node.id;
        let config = node.config.clone();
        let counters = node.counters.clone();
        let received_payloads = Arc::new(ReceivedPayloads::default());
        let OpenedNode {
            mut core,
            applier,
            applied_rx,
        } = open(
            OpenParts {
                id,
                config: config.clone(),
                storage: storage.clone(),
                store,
                counters: counters.clone(),
                driver_tx: node.driver_tx.clone(),
                read_nonce: rand::random(),
                election_timeout_ticks: None,
                received_payloads: received_payloads.clone(),
            },
            std::time::Instant::now(),
        )
        .await?;
        // Unbounded as a channel, bounded by what may enter it: committed entries only while
        // the apply backlog is under `max_apply_backlog_bytes` (the leader answers Busy past
        // it; a follower past twice it takes one entry per tick), proposal waiters only for
        // accepted proposals (bounded by `max_uncommitted_bytes` and the driver's inbox),
        // reads only under `max_pending_reads`. A bounded channel would make the driver
        // wait on the apply task, and stop heartbeats with it.
        let (apply_tx, apply_rx) = mpsc::unbounded_channel();
        tokio::spawn(applier.run(apply_rx));
        let peers = Peers::new(
            id,
            node.addr.clone(),
            node.transport.clone(),
            node.driver_tx.clone(),
            config.snapshot_chunk_size,
            storage.clone(),
        );
        let assembler = Arc::new(SnapshotAssembler::new(
            id,
            config.max_snapshot_size,
            config.snapshot_transfer_timeout,
            counters.clone(),
            storage.clone(),
            received_payloads,
        ));
        // A node that lost its disk may be the leader its peers still remember: it never
        // joins through itself.
        let join =
            join.map(|(leader_id, addr)| (if leader_id == id { 0 } else { leader_id }, addr));
        if let Some((leader_id, leader_addr)) = &join {
            if *leader_id != 0 {
                core.learn_addr(*leader_id, leader_addr.clone());
            }
        }
        let driver = Driver::new(DriverParts {
            core,
            rx: inbox,
            driver_tx: node.driver_tx.clone(),
            apply_tx,
            applied_rx,
            peers,
            storage,
            assembler: assembler.clone(),
            counters,
            tick_interval: config.tick_interval,
        })?;

        let server = Arc::new(NodeServer {
            node: node.clone(),
            assembler,
        });
        let _server = node.transport.serve(&node.listen_addr, server).await?;
        tracing::info!(node = id, addr = %node.addr, listen = %node.listen_addr, "raft node running");

        if let Some(hint) = join {
            node.counters
                .join_pending
                .store(true, std::sync::atomic::Ordering::Relaxed);
            tokio::spawn(request_join(node.clone(), hint));
        }
        let result = driver.run().await;
        match &result {
            Ok(()) => tracing::info!(node = id, "raft node stopped"),
            Err(e) => tracing::error!(node = id, "raft node failed: {e}"),
        }
        result
    }
}

/// Asks the cluster to add this node, retrying for a while; a final failure stops the node.
async fn request_join(node: Arc<NodeHandle>, hint: (u64, String)) {
    let timeout = (node.config.request_timeout * 6).max(Duration::from_secs(30));
    let deadline = std::time::Instant::now() + timeout;
    // Raft::join runs only on a node whose storage is empty: if the cluster still lists this
    // id, it lost its disk, and the leader replaces the old incarnation.
    let op = Op::Membership(MembershipChange {
        action: MembershipAction::Join,
        node_id: node.id,
        addr: node.addr.clone(),
        empty_storage: true,
    });
    let mut pause = Duration::from_millis(50);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mailbox = Mailbox::new(node.clone()).with_timeout(left.max(Duration::from_millis(1)));
        match mailbox.route(op.clone(), Some(hint.clone())).await {
            Ok(_) => {
                node.counters
                    .join_pending
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(node = node.id, "joined the cluster as a learner");
                return;
            }
            // A join from an empty node is safe to repeat, whatever happened to the last
            // attempt ("busy": the leader is overloaded, or is removing this node's old
            // incarnation after a lost disk; a lost answer; a leader change). Only an explicit
            // refusal ends it.
            Err(e)
                if !matches!(e, Error::Invalid(_) | Error::Fatal(Fatal::Config(_)))
                    && std::time::Instant::now() + pause < deadline =>
            {
                tracing::info!(node = node.id, "join not done yet: {e}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(e) => {
                let e = match e {
                    e @ (Error::NotApplied(NotApplied::NoLeader(_) | NotApplied::Busy(_))
                    | Error::MaybeApplied(MaybeApplied::Timeout(_))) => Error::config(format!(
                        "joining the cluster failed: {e}. If node {} was a member that \
                             lost its disk, the cluster re-admits it only while a quorum of its \
                             other voters runs: bring them back, then start this node again",
                        node.id
                    )),
                    e => e,
                };
                tracing::error!(node = node.id, "joining the cluster failed: {e}");
                let _ = node.driver_tx.send(DriverMsg::Fatal(e)).await;
                return;
            }
        }
    }
}

pub(crate) fn has_state(storage: &dyn LogStorage) -> Result<bool> {
    let state = storage.initial_state()?;
    Ok(state.hard_state != Default::default()
        || snapshot_index(&storage.snapshot()?) > 0
        || storage.last_index()? > 0)
}

/// `1=a:1, 2=b:2`, for messages.
fn describe(members: &std::collections::BTreeMap<u64, String>) -> String {
    members
        .iter()
        .map(|(id, addr)| format!("{id}={addr}"))
        .collect::<Vec<_>>()
        .join(",")
}
