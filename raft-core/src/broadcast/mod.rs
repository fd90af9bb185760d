//! Ordered broadcast: raft-lite's API on raftkit. Send `Vec<u8>` messages from any node; every
//! node's receiver yields every message, each once, in the same total order, numbered.
//!
//! ```no_run
//! use raft_core::{broadcast, InitialCluster, LocalNetwork, MemLogStorage};
//!
//! # async fn demo() -> Result<(), raft_core::broadcast::BroadcastError> {
//! let members: InitialCluster = "1=node-1,2=node-2,3=node-3".parse()?;
//! let network = LocalNetwork::new();
//! let mut receivers = Vec::new();
//! let mut senders = Vec::new();
//! for id in [1, 2, 3] {
//!     let (tx, rx) = broadcast::builder(id, members.clone())
//!         .log_storage(MemLogStorage::new())
//!         .transport(network.transport())
//!         .start()?;
//!     senders.push(tx);
//!     receivers.push(rx);
//! }
//! let seq = senders[1].send(b"hello".to_vec()).await?;
//! for rx in &mut receivers {
//!     let message = rx.recv().await?;
//!     assert_eq!((message.seq, message.data.as_slice()), (seq, &b"hello"[..]));
//! }
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! A broadcast node is a [`crate::Raft`] node started with [`crate::Raft::start_cluster`]
//! from the static member list, whose [`crate::Store`] is this module's. A send is a proposal
//! (forwarded to the leader by the node's [`crate::Mailbox`]); applying its entry gives the
//! message the next sequence number, starting at 1, and hands it to the node's receiver.
//! The replicated state is only that counter, so every node numbers every message alike.
//!
//! **Backpressure.** Messages applied but not yet received wait in a queue bounded by
//! [`Limits::queue_messages`] and [`Limits::queue_bytes`]. When it is full, apply waits for
//! the application to receive. raft-core then bounds what queues up before apply: the leader
//! answers new proposals "busy" past `Config::max_apply_backlog_bytes` of committed, unapplied
//! entries (the sender retries them until its deadline), a follower stops taking committed
//! entries past twice that. Nothing grows without bound behind a slow receiver; the raft log
//! on disk holds the rest. A sender is answered once the *leader* applied its message, so a
//! slow receiver on the leader slows every sender (and sends time out if it never reads),
//! while a slow receiver on a follower holds back only that follower. As with any pair of
//! bounded channels, receive on another task than the one that sends.
//!
//! **Durability and resuming.** The application's position is the sequence number of the
//! last message it received. It comes from one of:
//! - [`BroadcastBuilder::position_file`]: the receiver records each message in a small file
//!   (synced) before [`BroadcastReceiver::recv`] returns it. After a restart no message is
//!   delivered twice; a message the application was handling when it crashed is not delivered
//!   again either (it was received). One `fdatasync` per message.
//! - [`BroadcastBuilder::resume_after`]: the application keeps its position itself, ideally in
//!   the same transaction as the effects of the messages: the only way to get exactly-once
//!   effects across a crash.
//! - neither: the position starts at 0 at every start (right for a [`crate::MemLogStorage`],
//!   which starts empty each time too).
//!
//! On restart raft-core restores the last snapshot and applies the log after it again. Applying
//! again renumbers the same messages the same way, and those at or below the position are not
//! queued for the application. A message that was compacted into a snapshot but not yet
//! received is not lost: a snapshot holds every message the local application has not
//! received, plus the last [`Limits::history_messages`] (and at most
//! [`Limits::history_bytes`]) it has. Memory holds the same: the unreceived queue (bounded
//! above) and that history. Disk holds the raft log (compacted behind snapshots, per
//! `Config::snapshot_threshold` and `Config::snapshot_log_tail`) and the latest snapshot,
//! which is as large as what memory holds.
//!
//! The history serves nodes that catch up from another node's snapshot. A node that was down
//! (or whose application was behind) by more than the leader's log tail *and* its history when
//! it comes back cannot get the messages in between: nobody keeps them. Its receiver then says
//! so once, [`BroadcastError::Missed`] naming the range, and carries on after it; raise
//! `snapshot_log_tail` or the history to make that rarer. With `resume_after`, an application
//! that records its position lazily must not lag what it received by more than the history
//! either.
//!
//! **Sending.** [`BroadcastSender::send`] returns the message's sequence number once it is
//! applied on the leader. Its errors are raft-core's: [`crate::Error::NotApplied`] means the
//! message is certainly not in the order (busy refusals and dropped proposals are retried
//! until the deadline, `Config::request_timeout`), [`crate::Error::MaybeApplied`] that it may
//! be. A message goes in a client session of the node's [`Mailbox`] ([`crate::SessionTag`]):
//! when its leader dies or a call times out on the way, it is sent again and still ordered
//! once, so `MaybeApplied` comes only from the deadline passing. Resending after that may
//! order the message twice, with two sequence numbers. A stopped node answers
//! [`BroadcastError::Stopped`].
//!
//! Membership is static: the nodes given to [`builder`]. A node whose storage is lost comes
//! back as a new incarnation through raft-core's disk-loss path and resumes from its position
//! (or reports what it missed); a node started with a position file but a fresh cluster (all
//! storage lost) would skip the messages up to that position, so keep the file beside the log.

mod position;
mod queue;
mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::error::{Error, Fatal, NotApplied};
use crate::initial_cluster::InitialCluster;
use crate::log_storage::LogStorage;
use crate::mailbox::Mailbox;
use crate::raft::{Raft, RaftBuilder};
use crate::transport::Transport;

use position::PositionFile;
use queue::{Next, Queue};
use store::BroadcastStore;

/// What a broadcast call can fail with.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BroadcastError {
    /// The node stopped; the receiver says so after the last message the node applied.
    #[error("the broadcast node stopped: {0}")]
    Stopped(String),
    /// Messages `first..=last` were compacted on every node that had them before this node
    /// received them. The receiver reports it once and continues with message `last + 1`.
    #[error(
        "messages {first} to {last} were compacted before this node received them (it fell \
         further behind than the leader's log tail and snapshot history reach)"
    )]
    Missed {
        /// The first message missed.
        first: u64,
        /// The last message missed.
        last: u64,
    },
    /// The raft node refused or failed the request: see [`crate::Error`] for what each kind
    /// means for the message.
    #[error(transparent)]
    Raft(#[from] Error),
    /// The position file could not be read or written.
    #[error("position file {path}: {reason}")]
    Position {
        /// The file.
        path: String,
        /// What failed.
        reason: String,
    },
}

/// Bounds on the messages a node holds in memory (and in its snapshots).
///
/// ```
/// let limits = raft_core::broadcast::Limits {
///     queue_messages: 100,
///     ..Default::default()
/// };
/// # let _ = limits;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Messages applied but not yet received by the application, beyond which apply waits.
    /// Default 1 024.
    pub queue_messages: u64,
    /// Bytes of such messages beyond which apply waits (one message is always let through).
    /// Default 64 MiB.
    pub queue_bytes: u64,
    /// Messages the application received that are kept for snapshots, so that a node
    /// catching up from this node's snapshot misses nothing it lags by less. Default 1 024.
    pub history_messages: u64,
    /// Bytes of that history at most. Default 64 MiB.
    pub history_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            queue_messages: 1024,
            queue_bytes: 64 * 1024 * 1024,
            history_messages: 1024,
            history_bytes: 64 * 1024 * 1024,
        }
    }
}

/// One message, as every node's receiver yields it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its place in the total order: 1 for the first message, then one more for each.
    pub seq: u64,
    /// What was sent.
    pub data: Vec<u8>,
}

/// Where the application's position comes from.
#[derive(Debug, Clone)]
enum Position {
    Start,
    After(u64),
    File(PathBuf),
}

/// Starts building broadcast node `id` of the static cluster `members`. See the
/// [module documentation](self).
pub fn builder(id: u64, members: InitialCluster) -> BroadcastBuilder {
    let queue = Arc::new(Queue::new(0, Limits::default()));
    let raft = Raft::builder(
        id,
        BroadcastStore {
            queue: queue.clone(),
        },
    );
    BroadcastBuilder {
        id,
        members,
        raft,
        queue,
        config: Config::default(),
        limits: Limits::default(),
        position: Position::Start,
    }
}

/// Builds a broadcast node; see [`builder`].
pub struct BroadcastBuilder {
    id: u64,
    members: InitialCluster,
    raft: RaftBuilder,
    queue: Arc<Queue>,
    config: Config,
    limits: Limits,
    position: Position,
}

impl std::fmt::Debug for BroadcastBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BroadcastBuilder")
            .field("id", &self.id)
            .field("members", &self.members)
            .field("limits", &self.limits)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

impl BroadcastBuilder {
    /// Where the raft log lives (required for durability; default [`crate::MemLogStorage`]).
    pub fn log_storage(mut self, storage: impl LogStorage) -> Self {
        self.raft = self.raft.log_storage(storage);
        self
    }

    /// How nodes talk to each other (required).
    pub fn transport(mut self, transport: impl Transport) -> Self {
        self.raft = self.raft.transport(transport);
        self
    }

    /// Raft tunables; default [`Config::default`].
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Memory bounds; default [`Limits::default`].
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Keep the application's position in the file at `path` (created if missing): each
    /// message is recorded there before the receiver returns it, and a restart resumes after
    /// it. Keep it beside the log storage.
    pub fn position_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.position = Position::File(path.into());
        self
    }

    /// The application has received every message up to `seq` (it keeps its position
    /// itself): the receiver starts with message `seq + 1`.
    pub fn resume_after(mut self, seq: u64) -> Self {
        self.position = Position::After(seq);
        self
    }

    /// Builds the node without running it: run [`BroadcastNode::run`] yourself (for example to
    /// stop it by aborting its task).
    pub fn build(
        self,
    ) -> Result<(BroadcastSender, BroadcastReceiver, BroadcastNode), BroadcastError> {
        let addr = self
            .members
            .members()
            .get(&self.id)
            .cloned()
            .ok_or_else(|| {
                Error::config(format!(
                    "node {} is not in the member list {:?}",
                    self.id,
                    self.members.members()
                ))
            })?;
        if self.limits.queue_messages == 0 || self.limits.queue_bytes == 0 {
            return Err(Error::config("broadcast limits: the queue needs room").into());
        }
        let (position_file, delivered) = match &self.position {
            Position::Start => (None, 0),
            Position::After(seq) => (None, *seq),
            Position::File(path) => {
                let (file, at) = PositionFile::open(path)?;
                (Some(file), at)
            }
        };
        self.queue.configure(delivered, self.limits);
        let request_timeout = self.config.request_timeout;
        let raft = self.raft.raft_addr(addr).config(self.config).build()?;
        if delivered > 0 && !raft.has_state()? {
            // A lost disk that kept the position file (the cluster re-admits the node and
            // it resumes), or a new cluster with an old file (its first messages would be
            // skipped): only the operator can tell.
            tracing::warn!(
                node = self.id,
                position = delivered,
                "the log storage is empty but the application's position is not: messages up \
                 to it will not be delivered; remove the position file if this is a new cluster"
            );
        }
        let sender = BroadcastSender {
            mailbox: raft.mailbox(),
            queue: self.queue.clone(),
            request_timeout,
        };
        let receiver = BroadcastReceiver {
            queue: self.queue.clone(),
            position: position_file,
            delivered,
            in_hand: None,
        };
        let node = BroadcastNode {
            raft,
            members: self.members,
            queue: self.queue,
        };
        Ok((sender, receiver, node))
    }

    /// Builds the node and runs it on a new tokio task (call it inside a tokio runtime). It
    /// runs until [`BroadcastSender::shutdown`], or until it fails; either way the receiver
    /// then says [`BroadcastError::Stopped`].
    pub fn start(self) -> Result<(BroadcastSender, BroadcastReceiver), BroadcastError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| Error::config(format!("broadcast start() needs a tokio runtime: {e}")))?;
        let (sender, receiver, node) = self.build()?;
        let id = node.id();
        runtime.spawn(async move {
            if let Err(e) = node.run().await {
                tracing::error!(node = id, "broadcast node stopped: {e}");
            }
        });
        Ok((sender, receiver))
    }
}

/// A broadcast node that is built but not running; see [`BroadcastBuilder::build`].
pub struct BroadcastNode {
    raft: Raft,
    members: InitialCluster,
    queue: Arc<Queue>,
}

impl std::fmt::Debug for BroadcastNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BroadcastNode")
            .field("raft", &self.raft)
            .finish_non_exhaustive()
    }
}

/// Tells the receiver and the apply task the node stopped, however its future ends
/// (returning, or dropped when its task is aborted).
struct StopOnDrop(Arc<Queue>, Option<String>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let reason = self.1.take();
        self.0
            .stop(reason.unwrap_or_else(|| "the node's task was cancelled".into()));
    }
}

impl BroadcastNode {
    /// This node's id.
    pub fn id(&self) -> u64 {
        self.raft.id()
    }

    /// Runs the node until it stops: it founds the cluster with the other members on first
    /// start, and comes back as itself from its log storage afterwards. Dropping the future
    /// (aborting its task) stops the node as a crash would.
    pub async fn run(self) -> Result<(), BroadcastError> {
        let mut guard = StopOnDrop(self.queue, None);
        let result = self.raft.start_cluster(self.members).await;
        guard.1 = Some(match &result {
            Ok(()) => "the node shut down".to_string(),
            Err(e) => format!("the node failed: {e}"),
        });
        Ok(result?)
    }
}

/// Sends messages into the total order, from this node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct BroadcastSender {
    mailbox: Mailbox,
    queue: Arc<Queue>,
    request_timeout: Duration,
}

impl BroadcastSender {
    /// Broadcasts `message` and returns its sequence number once the leader applied it (every
    /// node's receiver will yield it with that number). See the module documentation for what
    /// an error means for the message.
    pub async fn send(&self, message: Vec<u8>) -> Result<u64, BroadcastError> {
        let entry = store::entry(&message);
        drop(message);
        let deadline = Instant::now() + self.request_timeout;
        let mut pause = Duration::from_millis(5);
        loop {
            if let Some(reason) = self.queue.stopped() {
                return Err(BroadcastError::Stopped(reason));
            }
            let error = match self.mailbox.send_proposal(entry.clone()).await {
                Ok(answer) => return seq_of(&answer),
                Err(e) => e,
            };
            let retry = matches!(
                error,
                Error::NotApplied(NotApplied::Busy(_) | NotApplied::Dropped)
            ) && Instant::now() + pause < deadline;
            if !retry {
                return Err(self.stopped_or(error));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// The sequence number of the last message in the order (0 before the first), read
    /// linearizably: every message whose `send` returned before the call is counted. It waits
    /// for this node to apply that far, so behind a receiver that lags it answers late (or
    /// times out).
    pub async fn last_seq(&self) -> Result<u64, BroadcastError> {
        match self.mailbox.query(Vec::new()).await {
            Ok(answer) => seq_of(&answer),
            Err(e) => Err(self.stopped_or(e)),
        }
    }

    /// The node's [`Mailbox`], for its status and metrics.
    pub fn mailbox(&self) -> &Mailbox {
        &self.mailbox
    }

    /// Stops the node (it can restart from its log storage). Its receiver yields what the node
    /// applied, then [`BroadcastError::Stopped`].
    pub async fn shutdown(&self) {
        self.mailbox.shutdown().await;
    }

    fn stopped_or(&self, error: Error) -> BroadcastError {
        match (error, self.queue.stopped()) {
            (Error::Fatal(Fatal::Shutdown), Some(reason)) => BroadcastError::Stopped(reason),
            (Error::Fatal(Fatal::Shutdown), None) => {
                BroadcastError::Stopped("the node is not running".into())
            }
            (error, _) => error.into(),
        }
    }
}

fn seq_of(answer: &[u8]) -> Result<u64, BroadcastError> {
    let bytes: [u8; 8] = answer.try_into().map_err(|_| {
        Error::remote(format!(
            "a broadcast answer of {} bytes, not a sequence number",
            answer.len()
        ))
    })?;
    Ok(u64::from_le_bytes(bytes))
}

/// Yields every message of the total order, in order, each once. Dropping it lets the node run
/// on without holding messages for the application.
#[derive(Debug)]
pub struct BroadcastReceiver {
    queue: Arc<Queue>,
    position: Option<PositionFile>,
    delivered: u64,
    /// What the last, cancelled or failed, `recv` was recording.
    in_hand: Option<Next>,
}

impl BroadcastReceiver {
    /// The next message. Cancel-safe: a `recv` dropped before it returned loses nothing (the
    /// next call returns the same message).
    ///
    /// Errors: [`BroadcastError::Missed`] once for a range this node can no longer get (the
    /// next call continues after it), [`BroadcastError::Position`] when the position file
    /// cannot be written (the next call tries the same message again), and
    /// [`BroadcastError::Stopped`] after the last message once the node stopped.
    pub async fn recv(&mut self) -> Result<Message, BroadcastError> {
        let next = match self.in_hand.take() {
            Some(next) => next,
            None => self.queue.next().await,
        };
        let upto = match &next {
            Next::Message(seq, _) => *seq,
            Next::Missed(_, last) => *last,
            Next::Stopped(reason) => return Err(BroadcastError::Stopped(reason.clone())),
            Next::Empty => return Err(BroadcastError::Stopped("nothing to receive".into())),
        };
        if let Some(file) = &self.position {
            // Kept until recorded: a failed or cancelled record is retried by the next call.
            self.in_hand = Some(next.clone());
            file.record(upto).await?;
            self.in_hand = None;
        }
        self.queue.delivered(upto);
        self.delivered = upto;
        match next {
            Next::Message(seq, data) => Ok(Message {
                seq,
                data: data.to_vec(),
            }),
            Next::Missed(first, last) => Err(BroadcastError::Missed { first, last }),
            Next::Stopped(reason) => Err(BroadcastError::Stopped(reason)),
            Next::Empty => Err(BroadcastError::Stopped("nothing to receive".into())),
        }
    }

    /// The sequence number of the last message received (or missed): where a restart resumes.
    pub fn position(&self) -> u64 {
        self.delivered
    }
}

impl Drop for BroadcastReceiver {
    fn drop(&mut self) {
        self.queue.receiver_gone();
    }
}
