//! The client side: per peer address, one QUIC connection (dialled lazily, redialled with
//! exponential backoff) carrying one long-lived unidirectional raft stream (run by raft-core's
//! [`PeerLinks`]) and one bidirectional stream per call.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use quinn::{Connection, ConnectionError, Endpoint, ReadError, SendStream, WriteError};
use raft_core::transport::link::{LinkSettings, OpenStream, PeerLinks, RaftStreams};
use raft_core::wire::{self, RaftBatch};
use raft_core::TransportError;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::endpoint::Settings;
use crate::frame::{self, code, FrameError};

/// The first pause after a failed dial; doubles up to `max_backoff`.
const INITIAL_BACKOFF: Duration = Duration::from_millis(20);
/// Most frames written to the raft stream in one go.
const WRITE_BATCH: usize = 64;

/// Dial state of one peer, shared by its raft stream and its calls.
struct Dial {
    /// No new attempt before this instant (backoff after a failure).
    not_before: Instant,
    backoff: Duration,
    last_error: String,
}

struct Peer {
    addr: String,
    settings: Arc<Settings>,
    dialer: Arc<Dialer>,
    /// The live connection, if any.
    conn: Mutex<Option<Connection>>,
    /// Held while dialling, so concurrent users share one attempt.
    dial: tokio::sync::Mutex<Dial>,
}

impl Peer {
    fn live(&self) -> Option<Connection> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        conn.as_ref()
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    /// The live connection, or a new one. With `wait`, sleeps out a running backoff first
    /// (the raft link); without, fails at once while backing off (calls).
    async fn connection(&self, wait: bool) -> Result<Connection, TransportError> {
        loop {
            if let Some(conn) = self.live() {
                return Ok(conn);
            }
            let mut dial = self.dial.lock().await;
            if let Some(conn) = self.live() {
                return Ok(conn);
            }
            let now = Instant::now();
            if now < dial.not_before {
                if !wait {
                    return Err(TransportError::unreachable(
                        &self.addr,
                        format!("reconnecting; last attempt: {}", dial.last_error),
                    ));
                }
                let until = dial.not_before;
                drop(dial);
                tokio::time::sleep_until(until).await;
                continue;
            }
            let attempt = tokio::time::timeout(
                self.settings.connect_timeout,
                self.dialer.connect(&self.addr),
            )
            .await;
            let error = match attempt {
                Ok(Ok(conn)) => {
                    dial.backoff = INITIAL_BACKOFF;
                    dial.not_before = Instant::now();
                    *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
                    tracing::debug!(peer = %self.addr, "QUIC connection established");
                    return Ok(conn);
                }
                Ok(Err(e)) => e,
                Err(_) => format!(
                    "no QUIC handshake within {:?}",
                    self.settings.connect_timeout
                ),
            };
            tracing::debug!(peer = %self.addr, backoff = ?dial.backoff, "dialling failed: {error}");
            dial.not_before = Instant::now() + dial.backoff;
            dial.backoff = (dial.backoff * 2).min(self.settings.max_backoff);
            dial.last_error = error.clone();
            return Err(TransportError::unreachable(&self.addr, error));
        }
    }
}

/// Makes outbound connections: one client endpoint (UDP socket) per address family, created
/// on first use so that building a transport needs no runtime.
pub(crate) struct Dialer {
    settings: Arc<Settings>,
    v4: Mutex<Option<Endpoint>>,
    v6: Mutex<Option<Endpoint>>,
}

impl Dialer {
    pub(crate) fn new(settings: Arc<Settings>) -> Self {
        Dialer {
            settings,
            v4: Mutex::new(None),
            v6: Mutex::new(None),
        }
    }

    fn endpoint(&self, ipv6: bool) -> Result<Endpoint, String> {
        let slot = if ipv6 { &self.v6 } else { &self.v4 };
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(endpoint) = slot.as_ref() {
            return Ok(endpoint.clone());
        }
        let endpoint = crate::endpoint::client(ipv6)?;
        *slot = Some(endpoint.clone());
        Ok(endpoint)
    }

    async fn connect(&self, addr: &str) -> Result<Connection, String> {
        let (target, host) = resolve(addr).await?;
        let endpoint = self.endpoint(target.is_ipv6())?;
        let name = self.settings.tls.server_name.as_deref().unwrap_or(&host);
        let connecting = endpoint
            .connect_with(self.settings.client_config(), target, name)
            .map_err(|e| format!("cannot dial {target} as {name:?}: {e}"))?;
        connecting
            .await
            .map_err(|e| format!("QUIC handshake with {target} failed: {e}"))
    }

    /// Closes every outbound connection (the transport is being dropped).
    fn close(&self) {
        for slot in [&self.v4, &self.v6] {
            if let Some(endpoint) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
                endpoint.close(code::CLIENT_CLOSED, b"transport dropped");
            }
        }
    }
}

/// Resolves `host:port`; returns the socket address and the host part (the TLS server name
/// to verify, unless one is configured).
async fn resolve(addr: &str) -> Result<(SocketAddr, String), String> {
    if let Ok(sock) = addr.parse::<SocketAddr>() {
        return Ok((sock, sock.ip().to_string()));
    }
    let (host, _port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("{addr:?} is not a host:port address"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let mut found = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| format!("cannot resolve {addr:?}: {e}"))?;
    let sock = found
        .next()
        .ok_or_else(|| format!("{addr:?} resolves to no address"))?;
    Ok((sock, host))
}

/// Outbound connections of one transport, by peer address; opens raft streams for the links.
pub(crate) struct Connections {
    settings: Arc<Settings>,
    dialer: Arc<Dialer>,
    peers: Mutex<HashMap<String, Arc<Peer>>>,
}

impl Connections {
    fn peer(&self, addr: &str) -> Arc<Peer> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers
            .entry(addr.to_string())
            .or_insert_with(|| {
                Arc::new(Peer {
                    addr: addr.to_string(),
                    settings: self.settings.clone(),
                    dialer: self.dialer.clone(),
                    conn: Mutex::new(None),
                    dial: tokio::sync::Mutex::new(Dial {
                        not_before: Instant::now(),
                        backoff: INITIAL_BACKOFF,
                        last_error: String::new(),
                    }),
                })
            })
            .clone()
    }
}

#[async_trait]
impl RaftStreams for Connections {
    type Frame = Bytes;

    fn frame(&self, batch: RaftBatch, max: usize) -> Result<Bytes, TransportError> {
        frame::encode(&batch, max)
    }

    /// Dials (sharing the peer's connection and its backoff with calls) and opens a
    /// unidirectional stream.
    async fn open(&self, addr: &str, frames: mpsc::Receiver<Bytes>) -> Result<OpenStream, String> {
        let peer = self.peer(addr);
        let conn = peer.connection(true).await.map_err(|e| e.to_string())?;
        let stream = conn
            .open_uni()
            .await
            .map_err(|e| format!("opening the raft stream failed: {e}"))?;
        Ok(Box::pin(pump(conn, stream, frames)))
    }
}

/// Outbound traffic of one transport: raft links and calls.
pub(crate) struct Clients {
    settings: Arc<Settings>,
    links: PeerLinks<Connections>,
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.links.streams().dialer.close();
    }
}

impl Clients {
    pub(crate) fn new(settings: Arc<Settings>, links: LinkSettings) -> Self {
        let connections = Connections {
            dialer: Arc::new(Dialer::new(settings.clone())),
            settings: settings.clone(),
            peers: Mutex::new(HashMap::new()),
        };
        let links = PeerLinks::new(connections, links);
        Clients { settings, links }
    }

    /// Queues `batch` on the raft stream to `addr`.
    pub(crate) async fn send(&self, addr: &str, batch: RaftBatch) -> Result<(), TransportError> {
        self.links.send(addr, batch).await
    }

    /// One request/response call on its own bidirectional stream.
    pub(crate) async fn call(
        &self,
        addr: &str,
        request: wire::Request,
        timeout: Duration,
    ) -> Result<wire::Response, TransportError> {
        let max = self.settings.max_message_size;
        let request_frame = frame::encode(&request, max)?;
        let peer = self.links.streams().peer(addr);
        let deadline = Instant::now() + timeout;

        // Until the whole request is handed to QUIC, a failure means it was not delivered.
        let conn = match tokio::time::timeout_at(deadline, peer.connection(false)).await {
            Ok(conn) => conn?,
            Err(_) => return Err(TransportError::unreachable(addr, "connecting timed out")),
        };
        let (mut send, mut recv) = match tokio::time::timeout_at(deadline, conn.open_bi()).await {
            Ok(Ok(streams)) => streams,
            Ok(Err(e)) => {
                return Err(TransportError::unreachable(
                    addr,
                    format!("cannot open a stream: {e}"),
                ))
            }
            Err(_) => {
                return Err(TransportError::unreachable(
                    addr,
                    "no stream available before the deadline",
                ))
            }
        };
        match tokio::time::timeout_at(deadline, send.write_all(&request_frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(write_failed(addr, e)),
            Err(_) => {
                let _ = send.reset(code::CANCELLED);
                return Err(TransportError::unreachable(
                    addr,
                    "the request could not be sent in time",
                ));
            }
        }
        let _ = send.finish();

        // From here on the peer may have processed the request.
        match tokio::time::timeout_at(deadline, frame::read::<wire::Response>(&mut recv, max)).await
        {
            Ok(Ok(Some(response))) => Ok(response),
            Ok(Ok(None)) => Err(TransportError::failed(
                addr,
                "the peer closed the stream without answering",
            )),
            Ok(Err(e)) => Err(read_failed(addr, e)),
            Err(_) => {
                let _ = recv.stop(code::CANCELLED);
                Err(TransportError::failed(
                    addr,
                    format!("no answer within {timeout:?}"),
                ))
            }
        }
    }
}

/// True when the connection was refused during the handshake (TLS alert): the peer never
/// accepted a stream, so nothing was processed.
fn refused_in_handshake(e: &ConnectionError) -> bool {
    match e {
        ConnectionError::ConnectionClosed(close) => {
            let code = u64::from(close.error_code);
            (0x100..0x200).contains(&code)
        }
        ConnectionError::TransportError(_) | ConnectionError::VersionMismatch => true,
        _ => false,
    }
}

/// Writing the request failed before all of it was handed to QUIC: not delivered.
fn write_failed(addr: &str, e: WriteError) -> TransportError {
    TransportError::unreachable(addr, format!("sending the request failed: {e}"))
}

/// Reading the answer failed: delivered or not?
fn read_failed(addr: &str, e: FrameError) -> TransportError {
    match e {
        FrameError::Stream(ReadError::Reset(c)) if c == code::NOT_PROCESSED => {
            TransportError::unreachable(addr, frame::describe_code(c))
        }
        FrameError::Stream(ReadError::Reset(c)) if c == code::BAD_FRAME => {
            TransportError::Malformed(format!("{addr} refused the request as a bad frame"))
        }
        FrameError::Stream(ReadError::ConnectionLost(e)) if refused_in_handshake(&e) => {
            TransportError::unreachable(addr, format!("the peer refused the connection: {e}"))
        }
        FrameError::Stream(ReadError::Reset(c)) => TransportError::failed(
            addr,
            format!(
                "the peer reset the stream ({}: {c})",
                frame::describe_code(c)
            ),
        ),
        other => TransportError::failed(addr, format!("reading the answer failed: {other}")),
    }
}

/// Writes queued frames to the stream in order until the stream or its connection breaks;
/// returns why. Dropping it finishes the stream.
async fn pump(conn: Connection, mut stream: SendStream, mut rx: mpsc::Receiver<Bytes>) -> String {
    let mut frames = Vec::with_capacity(WRITE_BATCH);
    // Created once: both only watch for the end of the connection or the stream.
    let lost = conn.closed();
    let stopped = stream.stopped();
    tokio::pin!(lost, stopped);
    loop {
        tokio::select! {
            biased;
            e = &mut lost => return format!("connection lost: {e}"),
            e = &mut stopped => {
                return match e {
                    Ok(Some(c)) => format!("the peer stopped the stream: {}", frame::describe_code(c)),
                    Ok(None) => "the stream finished".to_string(),
                    Err(e) => format!("the stream failed: {e}"),
                };
            }
            n = rx.recv_many(&mut frames, WRITE_BATCH) => {
                if n == 0 {
                    return "the queue closed".to_string();
                }
                if let Err(e) = stream.write_all_chunks(&mut frames).await {
                    return match e {
                        WriteError::Stopped(c) => {
                            format!("the peer stopped the stream: {}", frame::describe_code(c))
                        }
                        other => format!("writing failed: {other}"),
                    };
                }
                frames.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn not_processed_and_handshake_refusals_mean_not_delivered() {
        assert!(matches!(
            read_failed(
                "a",
                FrameError::Stream(ReadError::Reset(code::NOT_PROCESSED))
            ),
            TransportError::Unreachable { .. }
        ));
        assert!(matches!(
            read_failed("a", FrameError::Stream(ReadError::Reset(code::BAD_FRAME))),
            TransportError::Malformed(_)
        ));
        assert!(matches!(
            read_failed(
                "a",
                FrameError::Stream(ReadError::ConnectionLost(ConnectionError::TimedOut))
            ),
            TransportError::Failed { .. }
        ));
        assert!(matches!(
            read_failed("a", FrameError::Truncated { got: 1, want: 2 }),
            TransportError::Failed { .. }
        ));
    }

    #[tokio::test]
    async fn addresses_resolve_with_their_host_as_server_name() {
        let (sock, host) = resolve("127.0.0.1:5001").await.unwrap();
        assert_eq!(sock.port(), 5001);
        assert_eq!(host, "127.0.0.1");
        let (sock, host) = resolve("localhost:5002").await.unwrap();
        assert!(sock.ip().is_loopback());
        assert_eq!(host, "localhost");
        assert!(resolve("no-port").await.is_err());
    }
}
