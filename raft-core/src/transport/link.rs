//! Peer links: the part of every network transport that carries raft batches to one peer in
//! order.
//!
//! A transport supplies only how to open its ordered raft stream ([`RaftStreams`]); a
//! [`PeerLinks`] owns the rest, the same for every transport: one link per peer address, a
//! bounded queue feeding the stream in order, the link's state (connecting, up, down),
//! re-opening a broken stream with capped exponential backoff, parking links nobody sends to,
//! and splitting batches larger than one message may be.
//!
//! ```
//! use raft_core::transport::link::{LinkSettings, OpenStream, PeerLinks, RaftStreams};
//! use raft_core::wire::RaftBatch;
//! use raft_core::TransportError;
//! use tokio::sync::mpsc;
//!
//! /// A "stream" that accepts every batch and drops it.
//! struct Sink;
//!
//! #[raft_core::async_trait]
//! impl RaftStreams for Sink {
//!     type Frame = RaftBatch;
//!     fn frame(&self, batch: RaftBatch, _max: usize) -> Result<RaftBatch, TransportError> {
//!         Ok(batch)
//!     }
//!     async fn open(
//!         &self,
//!         _addr: &str,
//!         mut frames: mpsc::Receiver<RaftBatch>,
//!     ) -> Result<OpenStream, String> {
//!         Ok(Box::pin(async move {
//!             while frames.recv().await.is_some() {}
//!             "the queue closed".to_string()
//!         }))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), TransportError> {
//! let links = PeerLinks::new(Sink, LinkSettings::default());
//! links.send("10.0.0.2:5001", RaftBatch::default()).await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use prost::Message as _;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

use crate::error::TransportError;
use crate::wire::RaftBatch;

/// The first pause after a stream failed to open or broke; doubles up to
/// [`LinkSettings::max_backoff`].
const INITIAL_BACKOFF: Duration = Duration::from_millis(20);
/// A stream that stayed up this long resets the backoff.
const STABLE: Duration = Duration::from_secs(2);
/// A peer nobody sent to for this long is not reconnected until someone does.
const IDLE: Duration = Duration::from_secs(30);
/// Bytes a batch adds around each message (tag + length), at most.
const PER_MESSAGE_OVERHEAD: usize = 11;

/// A running raft stream: resolves, with the reason, when the stream ends. Dropping it closes
/// the stream.
pub type OpenStream = BoxFuture<'static, String>;

/// How a transport opens its ordered raft stream to a peer. Everything else about carrying
/// raft batches is [`PeerLinks`]'s.
#[async_trait]
pub trait RaftStreams: Send + Sync + 'static {
    /// What the stream's queue carries: the batch itself, or the transport's encoding of it
    /// (made by [`RaftStreams::frame`] on the sender's task, so the stream's task only
    /// writes).
    type Frame: Send + 'static;

    /// Turns one batch, at most `max` bytes encoded, into what the stream writes.
    fn frame(&self, batch: RaftBatch, max: usize) -> Result<Self::Frame, TransportError>;

    /// Opens the raft stream to `addr`, to be fed in order from `frames`. Returns once the
    /// stream is open; the returned future runs it until it breaks. An error is the reason
    /// the stream could not be opened.
    async fn open(
        &self,
        addr: &str,
        frames: mpsc::Receiver<Self::Frame>,
    ) -> Result<OpenStream, String>;
}

/// Settings of [`PeerLinks`].
#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// Largest encoded batch one frame may carry; larger batches are split.
    pub max_message_size: usize,
    /// How long opening a stream may take, and how long `send` waits for a full queue or for
    /// a link's first stream.
    pub connect_timeout: Duration,
    /// Frames queued per peer before `send` waits.
    pub queue: usize,
    /// Longest pause between attempts to re-open a broken stream.
    pub max_backoff: Duration,
}

impl Default for LinkSettings {
    fn default() -> Self {
        LinkSettings {
            max_message_size: 16 * 1024 * 1024,
            connect_timeout: Duration::from_secs(2),
            queue: 1024,
            max_backoff: Duration::from_secs(1),
        }
    }
}

/// The state of the raft stream to one peer.
enum LinkState<F> {
    /// Opening the stream for the first time (or after being idle): `send` waits, up to the
    /// connect timeout, for the outcome.
    Connecting,
    /// Open: frames go into this queue, which feeds the stream in order.
    Up(mpsc::Sender<F>),
    /// Broken or refused, and backing off: `send` fails at once with this reason, so that
    /// raft hears at once that the peer is unreachable.
    Down(String),
}

struct Link<F> {
    addr: String,
    state: watch::Sender<LinkState<F>>,
    started: AtomicBool,
    /// Woken by `send`, so that a parked (idle) link opens again.
    demand: Notify,
    /// When `send` last ran, in ms since `epoch`.
    last_demand_ms: AtomicU64,
    epoch: Instant,
}

impl<F> Link<F> {
    fn touch(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last_demand_ms.store(now, Ordering::Relaxed);
        self.demand.notify_one();
    }

    fn idle_for(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_demand_ms.load(Ordering::Relaxed)))
    }
}

/// The raft links of one transport, by peer address. Dropping it stops every link.
pub struct PeerLinks<S: RaftStreams> {
    streams: Arc<S>,
    settings: LinkSettings,
    links: Mutex<HashMap<String, Arc<Link<S::Frame>>>>,
    /// Dropped with the links: link tasks see it and stop.
    closed: watch::Sender<()>,
}

impl<S: RaftStreams> std::fmt::Debug for PeerLinks<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerLinks")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<S: RaftStreams> PeerLinks<S> {
    /// Links that open their streams with `streams`.
    pub fn new(streams: S, settings: LinkSettings) -> Self {
        PeerLinks {
            streams: Arc::new(streams),
            settings: LinkSettings {
                queue: settings.queue.max(1),
                ..settings
            },
            links: Mutex::new(HashMap::new()),
            closed: watch::channel(()).0,
        }
    }

    /// The transport's stream opener.
    pub fn streams(&self) -> &S {
        &self.streams
    }

    /// Queues `batch` on the raft stream to `addr`, split into frames of at most the maximum
    /// message size. Fails at once while the stream is down (the node then reports the peer
    /// unreachable to raft), and after the connect timeout when the first stream cannot be
    /// opened or the queue stays full. A single raft message larger than the maximum is
    /// refused with [`TransportError::Malformed`].
    pub async fn send(&self, addr: &str, batch: RaftBatch) -> Result<(), TransportError> {
        let max = self.settings.max_message_size;
        let frames = split_batch(batch, max)?
            .into_iter()
            .map(|b| self.streams.frame(b, max))
            .collect::<Result<Vec<_>, _>>()?;
        let link = self.link(addr);
        link.touch();
        if !link.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(run_link(
                link.clone(),
                self.streams.clone(),
                self.settings.clone(),
                self.closed.subscribe(),
            ));
        }
        let queue = self.queue(&link).await?;
        for frame in frames {
            self.enqueue(&link, &queue, frame).await?;
        }
        Ok(())
    }

    fn link(&self, addr: &str) -> Arc<Link<S::Frame>> {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links
            .entry(addr.to_string())
            .or_insert_with(|| {
                Arc::new(Link {
                    addr: addr.to_string(),
                    state: watch::channel(LinkState::Connecting).0,
                    started: AtomicBool::new(false),
                    demand: Notify::new(),
                    last_demand_ms: AtomicU64::new(0),
                    epoch: Instant::now(),
                })
            })
            .clone()
    }

    async fn queue(&self, link: &Link<S::Frame>) -> Result<mpsc::Sender<S::Frame>, TransportError> {
        let mut rx = link.state.subscribe();
        let waited = tokio::time::timeout(
            self.settings.connect_timeout,
            rx.wait_for(|s| !matches!(s, LinkState::Connecting)),
        )
        .await;
        match waited {
            Err(_) => Err(TransportError::unreachable(
                &link.addr,
                "opening the raft stream timed out",
            )),
            Ok(Err(_)) => Err(TransportError::unreachable(
                &link.addr,
                "the transport is shutting down",
            )),
            Ok(Ok(state)) => match &*state {
                LinkState::Up(queue) => Ok(queue.clone()),
                LinkState::Down(reason) => {
                    Err(TransportError::unreachable(&link.addr, reason.clone()))
                }
                LinkState::Connecting => {
                    Err(TransportError::unreachable(&link.addr, "still connecting"))
                }
            },
        }
    }

    async fn enqueue(
        &self,
        link: &Link<S::Frame>,
        queue: &mpsc::Sender<S::Frame>,
        frame: S::Frame,
    ) -> Result<(), TransportError> {
        let closed = || TransportError::unreachable(&link.addr, "the raft stream closed");
        let permit = match queue.try_reserve() {
            Ok(permit) => permit,
            Err(mpsc::error::TrySendError::Closed(())) => return Err(closed()),
            Err(mpsc::error::TrySendError::Full(())) => {
                match tokio::time::timeout(self.settings.connect_timeout, queue.reserve()).await {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_)) => return Err(closed()),
                    Err(_) => {
                        return Err(TransportError::unreachable(
                            &link.addr,
                            "the peer does not keep up: its stream queue stayed full",
                        ))
                    }
                }
            }
        };
        permit.send(frame);
        Ok(())
    }
}

/// Keeps the raft stream to one peer open: opens it, runs it until it breaks, backs off, opens
/// it again. Parks while the peer is idle; stops when the links are dropped.
async fn run_link<S: RaftStreams>(
    link: Arc<Link<S::Frame>>,
    streams: Arc<S>,
    settings: LinkSettings,
    mut closed: watch::Receiver<()>,
) {
    let mut backoff = INITIAL_BACKOFF;
    let mut was_up = false;
    loop {
        if link.idle_for() > IDLE {
            tokio::select! {
                _ = link.demand.notified() => {}
                _ = closed.changed() => return,
            }
            link.state.send_replace(LinkState::Connecting);
        }
        let (queue, frames) = mpsc::channel(settings.queue);
        let open = tokio::time::timeout(settings.connect_timeout, streams.open(&link.addr, frames));
        let opened = tokio::select! {
            opened = open => opened,
            _ = closed.changed() => return,
        };
        let reason = match opened {
            Err(_) => "opening the raft stream timed out".to_string(),
            Ok(Err(reason)) => reason,
            Ok(Ok(stream)) => {
                link.state.send_replace(LinkState::Up(queue));
                if was_up {
                    tracing::info!(peer = %link.addr, "raft stream open again");
                } else {
                    tracing::debug!(peer = %link.addr, "raft stream open");
                }
                was_up = true;
                let since = Instant::now();
                let reason = tokio::select! {
                    reason = stream => reason,
                    _ = closed.changed() => return,
                };
                if since.elapsed() >= STABLE {
                    backoff = INITIAL_BACKOFF;
                }
                tracing::info!(peer = %link.addr, "raft stream broke: {reason}");
                reason
            }
        };
        tracing::debug!(peer = %link.addr, ?backoff, "raft stream down: {reason}");
        link.state.send_replace(LinkState::Down(reason));
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = closed.changed() => return,
        }
        backoff = (backoff * 2).min(settings.max_backoff);
    }
}

/// Splits a batch into batches of at most `max` encoded bytes each, keeping message order. A
/// single message that cannot fit is refused with [`TransportError::Malformed`].
pub fn split_batch(batch: RaftBatch, max: usize) -> Result<Vec<RaftBatch>, TransportError> {
    if batch.encoded_len() <= max {
        return Ok(vec![batch]);
    }
    let empty = RaftBatch {
        messages: Vec::new(),
        ..batch.clone()
    };
    let base = empty.encoded_len();
    let mut parts = Vec::new();
    let mut current = empty.clone();
    let mut size = base;
    for message in batch.messages {
        let cost = message.len() + PER_MESSAGE_OVERHEAD;
        if base + cost > max {
            return Err(TransportError::Malformed(format!(
                "a raft message of {} bytes exceeds the maximum message size of {max} bytes",
                message.len()
            )));
        }
        if size + cost > max {
            parts.push(std::mem::replace(&mut current, empty.clone()));
            size = base;
        }
        size += cost;
        current.messages.push(message);
    }
    if !current.messages.is_empty() {
        parts.push(current);
    }
    Ok(parts)
}

/// Refuses a call whose request encodes to more than `max` bytes, before anything is sent.
pub fn check_call_size(request: &crate::wire::Request, max: usize) -> Result<(), TransportError> {
    let len = request.encoded_len();
    if len > max {
        return Err(TransportError::Malformed(format!(
            "request of {len} bytes exceeds the maximum message size of {max} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(messages: Vec<Vec<u8>>) -> RaftBatch {
        RaftBatch {
            cluster_id: 0,
            from: 1,
            to: 2,
            messages: messages.into_iter().map(Into::into).collect(),
            from_addr: "127.0.0.1:1".into(),
        }
    }

    #[test]
    fn oversized_batches_split_in_order_and_fit() {
        let whole = batch((0..100u8).map(|i| vec![i; 1000]).collect());
        let max = 10_000;
        let parts = split_batch(whole.clone(), max).unwrap_or_default();
        assert!(parts.len() > 1);
        assert!(parts.iter().all(|f| f.encoded_len() <= max));
        assert!(parts.iter().all(|f| f.from == 1 && f.to == 2));
        let joined: Vec<bytes::Bytes> = parts.into_iter().flat_map(|f| f.messages).collect();
        assert_eq!(joined, whole.messages);
    }

    #[test]
    fn a_message_larger_than_the_limit_is_refused() {
        let too_big = batch(vec![vec![0; 100], vec![0; 5000]]);
        assert!(matches!(
            split_batch(too_big, 1000),
            Err(TransportError::Malformed(_))
        ));
    }

    /// Streams that record what they carry, and can be made to fail to open.
    #[derive(Default)]
    struct Recorded {
        refuse: AtomicBool,
        opened: AtomicU64,
        carried: Arc<Mutex<Vec<u64>>>,
    }

    #[async_trait]
    impl RaftStreams for Recorded {
        type Frame = RaftBatch;
        fn frame(&self, batch: RaftBatch, _: usize) -> Result<RaftBatch, TransportError> {
            Ok(batch)
        }
        async fn open(
            &self,
            _: &str,
            mut frames: mpsc::Receiver<RaftBatch>,
        ) -> Result<OpenStream, String> {
            if self.refuse.load(Ordering::Relaxed) {
                return Err("refused".into());
            }
            self.opened.fetch_add(1, Ordering::Relaxed);
            let carried = self.carried.clone();
            Ok(Box::pin(async move {
                while let Some(b) = frames.recv().await {
                    carried
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(b.from);
                }
                "closed".to_string()
            }))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn batches_arrive_in_order_over_one_stream() {
        let links = PeerLinks::new(Recorded::default(), LinkSettings::default());
        for i in 0..100 {
            let mut b = batch(vec![vec![1]]);
            b.from = i;
            assert!(links.send("a", b).await.is_ok());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        let carried = links.streams().carried.lock().map(|c| c.clone());
        assert_eq!(carried.unwrap_or_default(), (0..100).collect::<Vec<_>>());
        assert_eq!(links.streams().opened.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_stream_fails_sends_at_once_and_is_retried() {
        let streams = Recorded::default();
        streams.refuse.store(true, Ordering::Relaxed);
        let links = PeerLinks::new(streams, LinkSettings::default());
        let first = links.send("a", batch(vec![vec![1]])).await;
        assert!(matches!(first, Err(TransportError::Unreachable { .. })));
        links.streams().refuse.store(false, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(links.send("a", batch(vec![vec![1]])).await.is_ok());
    }
}
