//! The client side: per peer address, one long-lived raft stream fed by a bounded queue (kept
//! open, re-opened with exponential backoff) and a separate connection for calls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message as _;
use raft_core::wire::{self, RaftBatch};
use raft_core::TransportError;
use tokio::sync::{mpsc, watch, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use crate::proto::raftkit_client::RaftkitClient;
use crate::server::NOT_PROCESSED;

/// The first pause after a failed or broken stream; doubles up to `max_backoff`.
const INITIAL_BACKOFF: Duration = Duration::from_millis(20);
/// A stream that stayed up this long resets the backoff.
const STABLE: Duration = Duration::from_secs(2);
/// A peer nobody sent to for this long is not redialled until someone does.
const IDLE: Duration = Duration::from_secs(30);
/// Bytes a batch frame adds around each message (tag + length), at most.
const PER_MESSAGE_OVERHEAD: usize = 11;

/// What the client needs from the transport's settings.
#[derive(Clone)]
pub(crate) struct ClientOptions {
    pub(crate) tls: Option<ClientTlsConfig>,
    pub(crate) max_message_size: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) keepalive: Duration,
    pub(crate) queue: usize,
    pub(crate) max_backoff: Duration,
    pub(crate) stream_window: u32,
    pub(crate) connection_window: u32,
}

/// The state of the raft stream to one peer.
#[derive(Clone)]
enum Link {
    /// Opening the stream; `send` waits (up to the connect timeout) for the outcome.
    Connecting,
    /// Open: batches go into this queue, which feeds the stream in order.
    Up(mpsc::Sender<RaftBatch>),
    /// Broken or refused, and backing off: `send` fails at once with this reason.
    Down(String),
}

struct Peer {
    addr: String,
    calls: RaftkitClient<Channel>,
    /// The raft stream's connection; its task starts with the first `send`.
    stream: RaftkitClient<Channel>,
    stream_started: AtomicBool,
    link: watch::Sender<Link>,
    /// Woken by `send` so a parked (idle) link dials again.
    demand: Notify,
    /// When `send` last ran, in ms since `epoch`.
    last_demand_ms: AtomicU64,
    epoch: Instant,
}

impl Peer {
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

/// Outbound connections of one transport, by peer address.
pub(crate) struct Clients {
    options: ClientOptions,
    peers: Mutex<HashMap<String, Arc<Peer>>>,
    /// Dropped with the transport: stream tasks see it and stop.
    closed: watch::Sender<()>,
}

fn unreachable(addr: &str, reason: impl Into<String>) -> TransportError {
    TransportError::Unreachable {
        addr: addr.to_string(),
        reason: reason.into(),
    }
}

impl Clients {
    pub(crate) fn new(options: ClientOptions) -> Self {
        Clients {
            options,
            peers: Mutex::new(HashMap::new()),
            closed: watch::channel(()).0,
        }
    }

    fn endpoint(&self, addr: &str) -> Result<Endpoint, TransportError> {
        let o = &self.options;
        let scheme = if o.tls.is_some() { "https" } else { "http" };
        let endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| unreachable(addr, format!("not a host:port address: {e}")))?
            .connect_timeout(o.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(o.keepalive)
            .keep_alive_timeout(o.keepalive)
            .keep_alive_while_idle(true)
            .initial_stream_window_size(o.stream_window)
            .initial_connection_window_size(o.connection_window);
        match &o.tls {
            None => Ok(endpoint),
            Some(tls) => endpoint
                .tls_config(tls.clone())
                .map_err(|e| TransportError::Setup(format!("TLS towards {addr}: {e}"))),
        }
    }

    fn client(&self, channel: Channel) -> RaftkitClient<Channel> {
        RaftkitClient::new(channel)
            .max_decoding_message_size(self.options.max_message_size)
            .max_encoding_message_size(self.options.max_message_size)
    }

    /// The connections to `addr`, created (lazily connecting) on first use.
    fn peer(&self, addr: &str) -> Result<Arc<Peer>, TransportError> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(peer) = peers.get(addr) {
            return Ok(peer.clone());
        }
        let endpoint = self.endpoint(addr)?;
        // Two connections: snapshot chunks and forwarded requests never queue behind, or in
        // front of, raft messages.
        let peer = Arc::new(Peer {
            addr: addr.to_string(),
            calls: self.client(endpoint.connect_lazy()),
            stream: self.client(endpoint.connect_lazy()),
            stream_started: AtomicBool::new(false),
            link: watch::channel(Link::Connecting).0,
            demand: Notify::new(),
            last_demand_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        peers.insert(addr.to_string(), peer.clone());
        Ok(peer)
    }

    /// Queues `batch` on the stream to `addr`. Fails at once when the stream is down (the
    /// caller reports the peer unreachable to raft), and after the connect timeout when it
    /// cannot be opened or the queue stays full.
    pub(crate) async fn send(&self, addr: &str, batch: RaftBatch) -> Result<(), TransportError> {
        let peer = self.peer(addr)?;
        peer.touch();
        if !peer.stream_started.swap(true, Ordering::AcqRel) {
            tokio::spawn(run_link(
                peer.clone(),
                self.options.clone(),
                self.closed.subscribe(),
            ));
        }
        let queue = self.link(&peer).await?;
        let max = self.options.max_message_size;
        if batch.encoded_len() <= max {
            return self.enqueue(&peer, &queue, batch).await;
        }
        for frame in split(batch, max)? {
            self.enqueue(&peer, &queue, frame).await?;
        }
        Ok(())
    }

    async fn link(&self, peer: &Peer) -> Result<mpsc::Sender<RaftBatch>, TransportError> {
        if let Link::Up(queue) = &*peer.link.borrow() {
            return Ok(queue.clone());
        }
        let mut rx = peer.link.subscribe();
        let waited = tokio::time::timeout(
            self.options.connect_timeout,
            rx.wait_for(|l| !matches!(l, Link::Connecting)),
        )
        .await;
        match waited {
            Err(_) => Err(unreachable(&peer.addr, "opening the raft stream timed out")),
            Ok(Err(_)) => Err(unreachable(&peer.addr, "the transport is shutting down")),
            Ok(Ok(link)) => match &*link {
                Link::Up(queue) => Ok(queue.clone()),
                Link::Down(reason) => Err(unreachable(&peer.addr, reason.clone())),
                Link::Connecting => Err(unreachable(&peer.addr, "still connecting")),
            },
        }
    }

    async fn enqueue(
        &self,
        peer: &Peer,
        queue: &mpsc::Sender<RaftBatch>,
        frame: RaftBatch,
    ) -> Result<(), TransportError> {
        let permit = match queue.try_reserve() {
            Ok(permit) => permit,
            Err(mpsc::error::TrySendError::Closed(())) => {
                return Err(unreachable(&peer.addr, "the raft stream closed"))
            }
            Err(mpsc::error::TrySendError::Full(())) => {
                match tokio::time::timeout(self.options.connect_timeout, queue.reserve()).await {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_)) => return Err(unreachable(&peer.addr, "the raft stream closed")),
                    Err(_) => {
                        return Err(unreachable(
                            &peer.addr,
                            "the peer does not keep up: its stream queue stayed full",
                        ))
                    }
                }
            }
        };
        permit.send(frame);
        Ok(())
    }

    /// One request/response call.
    pub(crate) async fn call(
        &self,
        addr: &str,
        request: wire::Request,
        timeout: Duration,
    ) -> Result<wire::Response, TransportError> {
        let len = request.encoded_len();
        let max = self.options.max_message_size;
        if len > max {
            return Err(TransportError::Malformed(format!(
                "request of {len} bytes exceeds the maximum message size of {max} bytes"
            )));
        }
        let peer = self.peer(addr)?;
        let mut client = peer.calls.clone();
        let mut request = tonic::Request::new(request);
        request.set_timeout(timeout);
        match tokio::time::timeout(timeout, client.call(request)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(classify(addr, status)),
            Err(_) => Err(TransportError::Failed {
                addr: addr.to_string(),
                reason: format!("no answer within {timeout:?}"),
            }),
        }
    }
}

/// Splits a batch that is too large for one frame into frames that fit, in order.
fn split(batch: RaftBatch, max: usize) -> Result<Vec<RaftBatch>, TransportError> {
    let empty = RaftBatch {
        messages: Vec::new(),
        ..batch.clone()
    };
    let base = empty.encoded_len();
    let mut frames = Vec::new();
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
            frames.push(std::mem::replace(&mut current, empty.clone()));
            size = base;
        }
        size += cost;
        current.messages.push(message);
    }
    if !current.messages.is_empty() {
        frames.push(current);
    }
    Ok(frames)
}

/// Keeps the raft stream to one peer open: opens it, watches it until it breaks, backs off,
/// opens it again. Parks while the peer is idle; stops when the transport is dropped.
async fn run_link(peer: Arc<Peer>, options: ClientOptions, mut closed: watch::Receiver<()>) {
    let mut client = peer.stream.clone();
    let mut backoff = INITIAL_BACKOFF;
    let mut was_up = false;
    loop {
        if peer.idle_for() > IDLE {
            tokio::select! {
                _ = peer.demand.notified() => {}
                _ = closed.changed() => return,
            }
        }
        peer.link.send_replace(Link::Connecting);
        let (queue, rx) = mpsc::channel(options.queue);
        let open = tokio::time::timeout(
            options.connect_timeout,
            client.raft_stream(ReceiverStream::new(rx)),
        );
        let opened = tokio::select! {
            opened = open => opened,
            _ = closed.changed() => return,
        };
        let reason = match opened {
            Err(_) => "opening the raft stream timed out".to_string(),
            Ok(Err(status)) => describe(&status),
            Ok(Ok(response)) => {
                peer.link.send_replace(Link::Up(queue));
                if !was_up {
                    tracing::debug!(peer = %peer.addr, "raft stream open");
                } else {
                    tracing::info!(peer = %peer.addr, "raft stream open again");
                }
                was_up = true;
                let since = Instant::now();
                let mut acks = response.into_inner();
                let reason = loop {
                    let ack = tokio::select! {
                        ack = acks.message() => ack,
                        _ = closed.changed() => return,
                    };
                    match ack {
                        Ok(Some(ack)) => tracing::warn!(
                            peer = %peer.addr,
                            rejected = ack.rejected,
                            received = ack.received,
                            "the peer refused a raft batch: {}",
                            ack.error
                        ),
                        Ok(None) => break "the peer closed the raft stream".to_string(),
                        Err(status) => break describe(&status),
                    }
                };
                if since.elapsed() >= STABLE {
                    backoff = INITIAL_BACKOFF;
                }
                tracing::info!(peer = %peer.addr, "raft stream broke: {reason}");
                reason
            }
        };
        tracing::debug!(peer = %peer.addr, ?backoff, "raft stream down: {reason}");
        peer.link.send_replace(Link::Down(reason));
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = closed.changed() => return,
        }
        backoff = (backoff * 2).min(options.max_backoff);
    }
}

fn describe(status: &Status) -> String {
    if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        format!("{:?}: {}", status.code(), status.message())
    }
}

/// True when the request certainly did not reach the peer's node: the connection could not
/// be made, or the peer's server had stopped.
fn not_delivered(status: &Status) -> bool {
    if status.metadata().get(NOT_PROCESSED).is_some() {
        return true;
    }
    if status.code() == Code::Unknown && status.message().starts_with("Service was not ready") {
        return true;
    }
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Maps a failed call to what raft-core needs to know: was it delivered?
fn classify(addr: &str, status: Status) -> TransportError {
    let reason = describe(&status);
    if not_delivered(&status) {
        unreachable(addr, reason)
    } else {
        TransportError::Failed {
            addr: addr.to_string(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_batches_split_in_order_and_fit() {
        let batch = RaftBatch {
            cluster_id: 0,
            from: 1,
            to: 2,
            messages: (0..100u8).map(|i| vec![i; 1000]).collect(),
            from_addr: "127.0.0.1:1".into(),
        };
        let max = 10_000;
        let frames = split(batch.clone(), max).unwrap_or_default();
        assert!(frames.len() > 1);
        assert!(frames.iter().all(|f| f.encoded_len() <= max));
        assert!(frames.iter().all(|f| f.from == 1 && f.to == 2));
        let joined: Vec<Vec<u8>> = frames.into_iter().flat_map(|f| f.messages).collect();
        assert_eq!(joined, batch.messages);
    }

    #[test]
    fn a_message_larger_than_the_limit_is_refused() {
        let batch = RaftBatch {
            cluster_id: 0,
            from: 1,
            to: 2,
            messages: vec![vec![0; 100], vec![0; 5000]],
            from_addr: String::new(),
        };
        assert!(matches!(
            split(batch, 1000),
            Err(TransportError::Malformed(_))
        ));
    }

    #[test]
    fn stopped_servers_and_connect_errors_mean_not_delivered() {
        let mut stopped = Status::unavailable("stopped");
        stopped.metadata_mut().insert(
            NOT_PROCESSED,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        assert!(matches!(
            classify("a", stopped),
            TransportError::Unreachable { .. }
        ));
        let connect =
            Status::from_error(Box::new(tonic::ConnectError("connection refused".into())));
        assert!(matches!(
            classify("a", connect),
            TransportError::Unreachable { .. }
        ));
        assert!(matches!(
            classify("a", Status::internal("boom")),
            TransportError::Failed { .. }
        ));
    }
}
