//! The client side of a node: proposals, reads and membership changes from any node, with
//! automatic forwarding to the leader and retries until a deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::error::{Error, MaybeApplied, NotApplied, Result};
use crate::forwarder::Forwarded;
use crate::metrics::Metrics;
use crate::metrics::NodeMetrics;
use crate::node::handle::NodeHandle;
use crate::node::messages::{DriverMsg, MembershipChange};
use crate::node::op::{answer_from_wire, Op};
use crate::session::{SessionPool, SessionTag};
use crate::status::{LiveStatus, ReadConsistency, Role, Status};
use crate::transport::Transport;
use crate::wire::{request, response, MembershipAction, Request, StatusRequest};

/// A handle to propose, read and manage membership through one node. Cheap to clone.
///
/// Every call works from any node: a follower forwards to the leader by itself, and while no
/// leader is known it retries until the deadline ([`crate::Config::request_timeout`] by default, see
/// [`Mailbox::with_timeout`]).
///
/// ```no_run
/// # async fn demo(mailbox: raft_core::Mailbox) -> raft_core::Result<()> {
/// let result = mailbox.send_proposal(b"set x 1".to_vec()).await?;
/// let value = mailbox.query(b"get x".to_vec()).await?;
/// # let _ = (result, value);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Mailbox {
    node: Arc<NodeHandle>,
    timeout: Duration,
    /// The client sessions its proposals go in; `None`: proposals without a session.
    sessions: Option<Arc<SessionPool>>,
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox")
            .field("node", &self.node.id)
            .field("timeout", &self.timeout)
            .field("sessions", &self.sessions.is_some())
            .finish()
    }
}

impl Mailbox {
    pub(crate) fn new(node: Arc<NodeHandle>) -> Self {
        let timeout = node.config.request_timeout;
        Mailbox {
            node,
            timeout,
            sessions: Some(Arc::default()),
        }
    }

    /// The id of the node this mailbox talks to.
    pub fn id(&self) -> u64 {
        self.node.id
    }

    /// A mailbox whose calls give up after `timeout` instead of the configured default.
    pub fn with_timeout(&self, timeout: Duration) -> Mailbox {
        Mailbox {
            node: self.node.clone(),
            timeout,
            sessions: self.sessions.clone(),
        }
    }

    /// A mailbox whose proposals go without a client session: a write whose outcome became
    /// unknown (its leader failed, or its call timed out) is not retried, and the error says
    /// so ([`Error::MaybeApplied`]). The replicated state keeps no answers for it.
    pub fn without_sessions(&self) -> Mailbox {
        Mailbox {
            node: self.node.clone(),
            timeout: self.timeout,
            sessions: None,
        }
    }

    /// Replicates `data` and returns what [`crate::Store::apply`] returned for it, once.
    ///
    /// The command goes in one of this mailbox's client sessions ([`crate::SessionTag`]):
    /// when its outcome becomes unknown on the way (the leader failed, a call timed out), it
    /// is sent again until the deadline, and the cluster answers a retry of an applied
    /// command with its first answer instead of applying it twice.
    ///
    /// The error says what became of the command: [`Error::NotApplied`] certainly was not
    /// applied, [`Error::MaybeApplied`] may have been (the deadline passed first).
    pub async fn send_proposal(&self, data: Vec<u8>) -> Result<Vec<u8>> {
        self.propose(data, None).await
    }

    /// Replicates `data` as command `session.seq` of the caller's own client session, and
    /// returns what [`crate::Store::apply`] returned for it: the first answer if the command
    /// was applied before (this is a retry). Commands of one session go one at a time; a
    /// command numbered below the session's last one is refused
    /// ([`NotApplied::SupersededInSession`]),
    /// and a session the cluster no longer remembers is refused when `session.established`
    /// ([`NotApplied::SessionExpired`]).
    pub async fn send_proposal_in(&self, session: SessionTag, data: Vec<u8>) -> Result<Vec<u8>> {
        if !session.is_valid() {
            return Err(Error::Invalid(
                "a session id and a command number are never 0".into(),
            ));
        }
        self.propose(data, Some(session)).await
    }

    /// Replicates `data` in the caller's `session`, else in one of this mailbox's own (when
    /// it has them), and records the time it took.
    async fn propose(&self, data: Vec<u8>, session: Option<SessionTag>) -> Result<Vec<u8>> {
        let limit = self.node.config.max_proposal_bytes;
        if data.len() > limit {
            return Err(Error::Invalid(format!(
                "a proposal of {} bytes (at most {limit}, see Config::max_proposal_bytes)",
                data.len()
            )));
        }
        let started = Instant::now();
        let result = match (session, &self.sessions) {
            (None, Some(pool)) => self.propose_in_pool(pool, started, data).await,
            (session, _) => self.route_from(started, Op::Propose(data, session)).await,
        };
        self.node
            .counters
            .metrics
            .proposal_seconds
            .observe(started.elapsed());
        result
    }

    /// Proposes `data` in a session of `pool`: a new session if the cluster forgot the one
    /// taken (the command was not applied, so it is safe to send in another).
    async fn propose_in_pool(
        &self,
        pool: &SessionPool,
        started: Instant,
        data: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let mut session = pool.take();
        let mut op = Op::Propose(data, Some(session.tag()));
        let mut renewed = false;
        loop {
            let result = self
                .route_by(&op, None, started, started + self.timeout)
                .await;
            if let (Err(Error::NotApplied(NotApplied::SessionExpired)), false) = (&result, renewed)
            {
                renewed = true;
                session = crate::session::IdleSession::new();
                if let Op::Propose(_, tag) = &mut op {
                    *tag = Some(session.tag());
                }
                continue;
            }
            session.next_seq += 1;
            // An answer, even the store's refusal, means the cluster knows the session.
            if matches!(result, Ok(_) | Err(Error::Store(_))) {
                session.established = true;
            }
            pool.give_back(session);
            return result;
        }
    }

    /// A linearizable read: reflects every write acknowledged before the call.
    pub async fn query(&self, query: Vec<u8>) -> Result<Vec<u8>> {
        self.query_with(query, ReadConsistency::Linearizable).await
    }

    /// A read with the chosen consistency.
    pub async fn query_with(
        &self,
        query: Vec<u8>,
        consistency: ReadConsistency,
    ) -> Result<Vec<u8>> {
        let started = Instant::now();
        let result = self.route_from(started, Op::Read(query, consistency)).await;
        self.node
            .counters
            .metrics
            .read_seconds
            .observe(started.elapsed());
        result
    }

    /// What this node has done since it started: counters and latency histograms.
    pub fn metrics(&self) -> Metrics {
        let metrics = &self.node.counters.metrics;
        let tx = &self.node.driver_tx;
        NodeMetrics::set(
            &metrics.driver_inbox,
            (tx.max_capacity() - tx.capacity()) as u64,
        );
        metrics.snapshot()
    }

    /// A consistent [`crate::Backup`] of the replicated state, taken on this node: it
    /// includes every write acknowledged (on any node) before the call began, like a
    /// linearizable read. The node waits for a ReadIndex barrier through the leader, then the
    /// apply task snapshots the store at its applied index.
    ///
    /// ```no_run
    /// # async fn demo(mailbox: raft_core::Mailbox) -> Result<(), Box<dyn std::error::Error>> {
    /// let backup = mailbox.backup().await?;
    /// let mut file = std::fs::File::create("cluster.backup")?;
    /// backup.write_to(&mut file)?;
    /// file.sync_all()?;
    /// # Ok(()) }
    /// ```
    pub async fn backup(&self) -> Result<crate::Backup> {
        let (backup, taken) = tokio::sync::oneshot::channel();
        self.node
            .submit(Instant::now() + self.timeout, |deadline, reply| {
                DriverMsg::Backup {
                    deadline,
                    reply,
                    backup,
                }
            })
            .await?;
        // The apply task sends the backup before it answers the read.
        taken
            .await
            .map_err(|_| Error::store("the apply task dropped the backup"))
    }

    /// This node's view of the cluster.
    pub async fn status(&self) -> Result<Status> {
        self.node.status().await
    }

    /// The leader's view of the cluster, asked of the leader wherever it is: unlike
    /// [`Mailbox::status`] on a follower, it includes each member's replication progress
    /// ([`Status::progress`]). Retries while no leader is known, until the deadline.
    pub async fn leader_status(&self) -> Result<Status> {
        let deadline = Instant::now() + self.timeout;
        let mut backoff = Duration::from_millis(5);
        loop {
            let local = self.node.status().await?;
            if local.role == Role::Leader {
                return Ok(local);
            }
            let leader = local
                .leader_id
                .filter(|&l| l != self.node.id)
                .and_then(|l| local.members.get(&l).map(|addr| (l, addr.clone())));
            if let Some((leader, addr)) = leader {
                let remaining = deadline.saturating_duration_since(Instant::now());
                let request = Request {
                    kind: Some(request::Kind::Status(StatusRequest {})),
                    ..Default::default()
                };
                let call = self.node.transport.call(&addr, request, remaining);
                // The node answers with its own status: the leader's only while it still
                // leads. Otherwise this node learns the new leader soon; ask again then.
                match call.await {
                    Ok(crate::wire::Response {
                        kind: Some(response::Kind::Status(remote)),
                    }) if remote.role == crate::wire::Role::Leader as i32 => {
                        return Ok(Status::from(remote));
                    }
                    Ok(_) => tracing::debug!(leader, "node {leader} no longer leads"),
                    Err(e) => tracing::debug!(leader, "status call failed: {e}"),
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::no_leader(self.timeout));
            }
            tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())))
                .await;
            backoff = (backoff * 2).min(Duration::from_millis(100));
        }
    }

    /// Removes this node from the cluster (a leader first hands over leadership), then stops
    /// it.
    pub async fn leave(&self) -> Result<()> {
        let op = Op::Membership(MembershipChange::new(
            MembershipAction::Remove,
            self.node.id,
            String::new(),
        ));
        self.route(op, None).await?;
        let _ = self.node.driver_tx.send(DriverMsg::Shutdown).await;
        Ok(())
    }

    /// Adds a node as a voter: it joins as a learner and is promoted once caught up.
    pub async fn add_node(&self, id: u64, addr: impl Into<String>) -> Result<()> {
        let op = Op::Membership(MembershipChange::new(
            MembershipAction::Join,
            id,
            addr.into(),
        ));
        self.route(op, None).await.map(drop)
    }

    /// Adds a learner: it receives the log but does not vote, until promoted.
    pub async fn add_learner(&self, id: u64, addr: impl Into<String>) -> Result<()> {
        let op = Op::Membership(MembershipChange::new(
            MembershipAction::AddLearner,
            id,
            addr.into(),
        ));
        self.route(op, None).await.map(drop)
    }

    /// Promotes a learner to voter.
    pub async fn promote(&self, id: u64) -> Result<()> {
        let op = Op::Membership(MembershipChange::new(
            MembershipAction::Promote,
            id,
            String::new(),
        ));
        self.route(op, None).await.map(drop)
    }

    /// Removes a node from the cluster (the leader too: it hands over leadership first).
    pub async fn remove_node(&self, id: u64) -> Result<()> {
        let op = Op::Membership(MembershipChange::new(
            MembershipAction::Remove,
            id,
            String::new(),
        ));
        self.route(op, None).await.map(drop)
    }

    /// Subscribes to this node's events: role and leader changes, new terms, membership
    /// changes and the applied index, as a [`LiveStatus`] the node updates as they happen.
    ///
    /// The receiver holds the latest value; `changed().await` (or `wait_for`) wakes when the
    /// node publishes a new one. Updates are coalesced: a slow subscriber sees the newest
    /// state, never a queue of old ones, so a subscription costs the node nothing it must
    /// buffer. Once the node stops, [`LiveStatus::stopped`] is set and nothing changes any
    /// more. Do not hold a `borrow()` across an `.await`: the node waits for it to publish.
    ///
    /// ```no_run
    /// # async fn demo(mailbox: raft_core::Mailbox) {
    /// let mut events = mailbox.watch_status();
    /// while events.changed().await.is_ok() {
    ///     let now = events.borrow_and_update().clone();
    ///     println!("{} in term {}, leader {:?}", now.role, now.term, now.leader_id);
    ///     if now.stopped {
    ///         break;
    ///     }
    /// }
    /// # }
    /// ```
    pub fn watch_status(&self) -> watch::Receiver<LiveStatus> {
        self.node.counters.live.subscribe()
    }

    /// Moves leadership to `target` and waits until it has it.
    pub async fn transfer_leader(&self, target: u64) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        // Subscribed before the request: the change cannot happen unseen in between.
        let mut events = self.watch_status();
        loop {
            self.route_by(&Op::Transfer(target), None, Instant::now(), deadline)
                .await?;
            let wait_until =
                (Instant::now() + self.node.config.min_election_timeout()).min(deadline);
            let done = events.wait_for(|s| s.leader_id == Some(target) || s.stopped);
            match tokio::time::timeout_at(wait_until.into(), done).await {
                Ok(Ok(live)) if !live.stopped => return Ok(()),
                Ok(_) => return Err(Error::node_stopped()),
                // The transfer did not happen in an election timeout (the target lagged, or
                // the leader changed meanwhile): ask again.
                Err(_elapsed) => {}
            }
            if Instant::now() >= deadline {
                return Err(Error::timeout(self.timeout));
            }
        }
    }

    /// Stops the node (no membership change: it can restart from its storage).
    pub async fn shutdown(&self) {
        let _ = self.node.driver_tx.send(DriverMsg::Shutdown).await;
    }

    /// Runs `op` on the leader, wherever it is. `hint` is a node to ask first instead of
    /// this one (a joining node knows no leader yet).
    pub(crate) async fn route(&self, op: Op, hint: Option<(u64, String)>) -> Result<Vec<u8>> {
        let now = Instant::now();
        self.route_by(&op, hint, now, now + self.timeout).await
    }

    /// [`Mailbox::route`] without a hint, for a caller that read the clock at `started`.
    async fn route_from(&self, started: Instant, op: Op) -> Result<Vec<u8>> {
        self.route_by(&op, None, started, started + self.timeout)
            .await
    }

    /// [`Mailbox::route`] with the caller's deadline: the one every attempt, every forwarded
    /// request and every waiter on the way answers by. `started` is when the caller read the
    /// clock last; the first attempt needs no other reading.
    async fn route_by(
        &self,
        op: &Op,
        hint: Option<(u64, String)>,
        started: Instant,
        deadline: Instant,
    ) -> Result<Vec<u8>> {
        let mut maybe_applied = false;
        let result = self
            .route_attempts(op, hint, started, deadline, &mut maybe_applied)
            .await;
        match result {
            // A write retried after an attempt that may have applied it: whatever stopped
            // the later attempts, its outcome is unknown.
            Err(e) if maybe_applied && !matches!(e, Error::MaybeApplied(_) | Error::Store(_)) => {
                tracing::debug!("a retried write ends unknown after: {e}");
                Err(if Instant::now() >= deadline {
                    Error::timeout(self.timeout)
                } else {
                    Error::leadership_lost()
                })
            }
            other => other,
        }
    }

    /// The attempts of [`Mailbox::route_by`]; sets `maybe_applied` once an attempt of a write
    /// may have applied it.
    async fn route_attempts(
        &self,
        op: &Op,
        hint: Option<(u64, String)>,
        started: Instant,
        deadline: Instant,
        maybe_applied: &mut bool,
    ) -> Result<Vec<u8>> {
        // What only the leader serves goes straight to the leader this node knows of: asking
        // the local driver first would cost a round trip only to learn who leads.
        let mut target = hint.clone().or_else(|| {
            op.needs_leader()
                .then(|| self.node.counters.remote_leader(self.node.id))
                .flatten()
        });
        let mut backoff = Duration::from_millis(5);
        // When some node was found leading, or an attempt ran out of time, the deadline
        // passing is a timeout rather than a missing leader.
        let mut leader_seen = false;
        let mut attempt_timed_out = false;
        // A target that just failed to answer: being pointed back at it waits for the backoff.
        let mut failed_recently: Option<(u64, String)> = None;
        // A refusal for coming from another cluster is retried (during an election a node
        // may still point at a replaced leader's address), but when it is still the answer at
        // the deadline it is a misconfiguration the caller must see, not a timeout.
        let mut refused_by_other_cluster: Option<Error> = None;
        let mut first_attempt_at = Some(started);
        loop {
            let now = first_attempt_at.take().unwrap_or_else(Instant::now);
            if now >= deadline {
                if let Some(refusal) = refused_by_other_cluster.filter(|_| !*maybe_applied) {
                    return Err(refusal);
                }
                return Err(if leader_seen || attempt_timed_out {
                    Error::timeout(self.timeout)
                } else {
                    Error::no_leader(self.timeout)
                });
            }
            let result = match &target {
                None => self.node.run_at(now, op.clone(), deadline).await,
                Some((_, addr)) => self.run_remote(addr, op, deadline).await,
            };
            let error = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            // Where the failed attempt went: redirecting there again waits for the backoff.
            let failed = target.clone();
            refused_by_other_cluster = None;
            match error {
                Error::NotLeader {
                    leader_id: Some(leader),
                    leader_addr,
                } => {
                    leader_seen = true;
                    let next = if leader == self.node.id {
                        None
                    } else {
                        leader_addr.map(|a| (leader, a))
                    };
                    let fresh = next.is_some() && next != failed && next != failed_recently;
                    target = next.or_else(|| hint.clone());
                    if fresh {
                        continue;
                    }
                }
                Error::MaybeApplied(MaybeApplied::Timeout(_)) if !op.retry_safe() => {
                    return Err(Error::timeout(self.timeout))
                }
                e @ Error::NotApplied(NotApplied::SessionExpired) => {
                    return Err(if *maybe_applied {
                        Error::MaybeApplied(MaybeApplied::SessionExpired)
                    } else {
                        e
                    });
                }
                e @ (Error::MaybeApplied(MaybeApplied::AnswerNotKept)
                | Error::NotApplied(NotApplied::SupersededInSession)) => return Err(e),
                // Overload goes back to the caller at once: retrying here would only add load.
                e @ Error::NotApplied(NotApplied::Busy(_)) => return Err(e),
                // Did not take effect, or is harmless to repeat (a read): try again.
                e if matches!(e, Error::NotApplied(_) | Error::NotLeader { .. })
                    || (op.retry_safe() && matches!(e, Error::MaybeApplied(_))) =>
                {
                    if let Error::NotApplied(NotApplied::OtherCluster(_)) = &e {
                        refused_by_other_cluster = Some(e.clone());
                    }
                    *maybe_applied |= !op.idempotent() && matches!(e, Error::MaybeApplied(_));
                    attempt_timed_out |= matches!(e, Error::MaybeApplied(MaybeApplied::Timeout(_)));
                    if failed.is_some() {
                        failed_recently = failed;
                    }
                    target = hint.clone();
                }
                e => return Err(e),
            }
            tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())))
                .await;
            backoff = (backoff * 2).min(Duration::from_millis(100));
        }
    }

    /// Runs `op` on the node at `addr`, by `deadline`.
    async fn run_remote(&self, addr: &str, op: &Op, deadline: Instant) -> Result<Vec<u8>> {
        if let Op::Propose(..) | Op::Read(..) = op {
            let forwarded = self.node.forwarder.call(addr, op.clone(), deadline).await;
            return match forwarded {
                // Timed out, or the call was lost after it may have been sent.
                Forwarded::TimedOut => Err(Error::timeout(self.timeout)),
                Forwarded::Failed(e) => Err(Error::from(e)),
                Forwarded::Answer(response) => answer_from_wire(response),
                Forwarded::Busy => {
                    NodeMetrics::inc(&self.node.counters.metrics.busy);
                    Err(Error::busy("too many requests queued for the leader"))
                }
            };
        }
        let timeout = deadline.saturating_duration_since(Instant::now());
        let call = self
            .node
            .transport
            .call(addr, op.to_request(deadline), timeout);
        // The transport gives up after `timeout`: a call it could not finish may have been
        // delivered, which `Error::from` keeps (`MaybeApplied`).
        match call.await {
            Err(e) => Err(Error::from(e)),
            Ok(response) => answer_from_wire(response),
        }
    }
}
