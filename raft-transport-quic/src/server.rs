//! The server side: a quinn endpoint that accepts mutually authenticated connections, reads
//! raft batches from unidirectional streams and answers calls on bidirectional streams.
//!
//! Bad input never stops the server: UDP datagrams that are not QUIC are dropped by quinn, a
//! failed handshake (wrong CA, wrong ALPN) closes that connection (logged), and a frame that
//! is too large, truncated or undecodable closes that one stream (logged; a peer's raft link
//! opens a new one). A batch the node refuses (unknown node id, undecodable raft message) is
//! logged and the stream stays up.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, Endpoint, Incoming, RecvStream, SendStream};
use raft_core::transport::Serving;
use raft_core::transport::{InboundHandler, PeerIdentity, ServerGuard};
use raft_core::wire::{self, RaftBatch};
use raft_core::TransportError;
use rustls::pki_types::CertificateDer;

use crate::endpoint::{self, Settings};
use crate::frame::{self, code};

/// How long `serve` keeps retrying an address still held by a server that just stopped: its
/// connections drain for a few round trips (about 50 ms on loopback) before the socket is
/// released. An address held by anything else is a setup error after this.
const REBIND_GRACE: Duration = Duration::from_secs(1);

/// State shared by the accept task, the connection and stream tasks, and the guard.
struct Shared {
    addr: String,
    settings: Arc<Settings>,
    serving: Serving,
}

/// Resolves `addr` to the one socket address to listen on.
async fn listen_addr(addr: &str) -> Result<SocketAddr, TransportError> {
    if let Ok(sock) = addr.parse::<SocketAddr>() {
        return Ok(sock);
    }
    tokio::net::lookup_host(addr)
        .await
        .map_err(|e| TransportError::Setup(format!("cannot resolve {addr:?}: {e}")))?
        .next()
        .ok_or_else(|| TransportError::Setup(format!("{addr:?} resolves to no address")))
}

/// Binds the UDP socket; an address in use is retried for [`REBIND_GRACE`], since a server
/// stopped a moment ago releases its socket only once its connections have drained.
async fn bind(addr: &str, sock: SocketAddr) -> Result<UdpSocket, TransportError> {
    let deadline = tokio::time::Instant::now() + REBIND_GRACE;
    loop {
        match UdpSocket::bind(sock) {
            Ok(socket) => return Ok(socket),
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(e) => {
                return Err(TransportError::Setup(format!(
                    "cannot listen on {addr} (UDP {sock}): {e}"
                )))
            }
        }
    }
}

/// Starts serving `addr`. Binding happens before this returns; the guard stops the server,
/// closes every inbound connection and releases the port when dropped.
pub(crate) async fn serve(
    addr: &str,
    handler: Arc<dyn InboundHandler>,
    settings: Arc<Settings>,
) -> Result<ServerGuard, TransportError> {
    let sock = listen_addr(addr).await?;
    let socket = bind(addr, sock).await?;
    let endpoint = endpoint::server(&settings, socket, addr)
        .map_err(|e| TransportError::Setup(format!("cannot listen on {addr}: {e}")))?;
    let local = endpoint.local_addr().ok();
    let shared = Arc::new(Shared {
        addr: addr.to_string(),
        settings,
        serving: Serving::new(handler),
    });
    tokio::spawn(accept_loop(endpoint.clone(), shared.clone()));
    tracing::debug!(addr, ?local, "QUIC raft server listening");

    Ok(ServerGuard::new(move || {
        shared.serving.stop();
        endpoint.close(code::SERVER_STOPPED, b"raft server stopped");
        tracing::debug!(addr = %shared.addr, "QUIC raft server stopped");
    }))
}

async fn accept_loop(endpoint: Endpoint, shared: Arc<Shared>) {
    let stopped = shared.serving.stopped();
    tokio::pin!(stopped);
    loop {
        let incoming = tokio::select! {
            _ = &mut stopped => return,
            incoming = endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else {
            return;
        };
        tokio::spawn(handshake(incoming, shared.clone()));
    }
}

/// Completes one handshake (mutual TLS) on its own task, so a slow or hostile client never
/// holds up the others, then serves the connection.
async fn handshake(incoming: Incoming, shared: Arc<Shared>) {
    let peer = incoming.remote_address();
    let timeout = shared.settings.handshake_timeout;
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(e) => {
            tracing::warn!(addr = %shared.addr, %peer, "rejected a connection: {e}");
            return;
        }
    };
    let conn = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::warn!(addr = %shared.addr, %peer, "rejected a connection: handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::warn!(addr = %shared.addr, %peer, "rejected a connection: no handshake within {timeout:?}");
            return;
        }
    };
    let identity = identity_of(&conn);
    tracing::debug!(addr = %shared.addr, %peer, %identity, "accepted a QUIC connection");
    serve_connection(conn, shared, peer, identity).await;
}

/// The identity the peer's verified certificate names (mutual TLS always asks for one).
fn identity_of(conn: &Connection) -> PeerIdentity {
    let certs = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok());
    match certs.as_deref().map(Vec::as_slice) {
        Some([leaf, ..]) => raft_core::transport::identity_of_certificate(leaf),
        _ => PeerIdentity::WithoutNodeId,
    }
}

async fn serve_connection(
    conn: Connection,
    shared: Arc<Shared>,
    peer: SocketAddr,
    identity: PeerIdentity,
) {
    let stopped = shared.serving.stopped();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            uni = conn.accept_uni() => match uni {
                Ok(recv) => {
                    tokio::spawn(raft_stream(recv, shared.clone(), peer, identity));
                }
                Err(e) => {
                    tracing::debug!(addr = %shared.addr, %peer, "connection closed: {e}");
                    return;
                }
            },
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    tokio::spawn(call_stream(send, recv, shared.clone(), peer, identity));
                }
                Err(e) => {
                    tracing::debug!(addr = %shared.addr, %peer, "connection closed: {e}");
                    return;
                }
            },
        }
    }
}

/// Delivers one raft stream's batches to the node, in order, until the stream ends, a frame
/// is bad, or the server stops.
async fn raft_stream(
    mut recv: RecvStream,
    shared: Arc<Shared>,
    peer: SocketAddr,
    identity: PeerIdentity,
) {
    let max = shared.settings.max_message_size;
    let stopped = shared.serving.stopped();
    tokio::pin!(stopped);
    let mut received = 0u64;
    let mut rejected = 0u64;
    tracing::debug!(addr = %shared.addr, %peer, "raft stream opened");
    loop {
        let next = tokio::select! {
            biased;
            _ = &mut stopped => return,
            next = frame::read::<RaftBatch>(&mut recv, max) => next,
        };
        let batch = match next {
            Ok(Some(batch)) => batch,
            Ok(None) => {
                tracing::debug!(addr = %shared.addr, %peer, received, "raft stream closed by the peer");
                return;
            }
            Err(e) if e.is_bad_input() => {
                tracing::error!(addr = %shared.addr, %peer, "closing a raft stream: {e}");
                let _ = recv.stop(code::BAD_FRAME);
                return;
            }
            Err(e) => {
                tracing::debug!(addr = %shared.addr, %peer, "raft stream ended: {e}");
                return;
            }
        };
        received += 1;
        let Some(handler) = shared.serving.handler() else {
            return;
        };
        let (from, to) = (batch.from, batch.to);
        if let Err(e) = handler.raft_batch(identity, batch).await {
            rejected += 1;
            if rejected == 1 || rejected % 100 == 0 {
                tracing::warn!(addr = %shared.addr, %peer, from, to, rejected, "refused a raft batch: {e}");
            }
        }
    }
}

/// Answers the one call on a bidirectional stream.
async fn call_stream(
    mut send: SendStream,
    mut recv: RecvStream,
    shared: Arc<Shared>,
    peer: SocketAddr,
    identity: PeerIdentity,
) {
    let max = shared.settings.max_message_size;
    let timeout = shared.settings.handshake_timeout;
    let request = match tokio::time::timeout(timeout, frame::read::<wire::Request>(&mut recv, max))
        .await
    {
        Ok(Ok(Some(request))) => request,
        Ok(Ok(None)) => {
            tracing::error!(addr = %shared.addr, %peer, "closing a call stream: no request on it");
            let _ = send.reset(code::BAD_FRAME);
            return;
        }
        Ok(Err(e)) if e.is_bad_input() => {
            tracing::error!(addr = %shared.addr, %peer, "closing a call stream: {e}");
            let _ = recv.stop(code::BAD_FRAME);
            let _ = send.reset(code::BAD_FRAME);
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(addr = %shared.addr, %peer, "call stream ended: {e}");
            return;
        }
        Err(_) => {
            tracing::error!(addr = %shared.addr, %peer, "closing a call stream: no complete request within {timeout:?}");
            let _ = recv.stop(code::BAD_FRAME);
            let _ = send.reset(code::BAD_FRAME);
            return;
        }
    };
    let Some(handler) = shared.serving.handler() else {
        let _ = send.reset(code::NOT_PROCESSED);
        return;
    };
    let response = handler.call(identity, request).await;
    let answer = frame::encode(&response, max).or_else(|e| {
        tracing::error!(addr = %shared.addr, %peer, "answer too large: {e}");
        frame::encode(&too_large(e), max)
    });
    match answer {
        Ok(bytes) => {
            if let Err(e) = send.write_all(&bytes).await {
                tracing::debug!(addr = %shared.addr, %peer, "answering a call failed: {e}");
                return;
            }
            let _ = send.finish();
        }
        Err(e) => {
            tracing::error!(addr = %shared.addr, %peer, "cannot answer a call: {e}");
            let _ = send.reset(code::BAD_FRAME);
        }
    }
}

fn too_large(e: TransportError) -> wire::Response {
    wire::Response {
        kind: Some(wire::response::Kind::Error(wire::ErrorReply {
            code: wire::ErrorCode::Internal as i32,
            message: format!("the answer does not fit in one message: {e}"),
            leader_id: 0,
            leader_addr: String::new(),
        })),
    }
}
