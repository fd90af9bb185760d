//! The server side: accepts connections (plaintext or TLS), serves the gRPC service, and hands
//! raft batches and calls to the node's [`InboundHandler`].
//!
//! Bad input never stops the server: bytes that are not HTTP/2 close that connection (logged),
//! a failed TLS handshake closes that connection (logged), a frame that does not decode ends
//! that one stream (logged; the peer reconnects), and a batch the node refuses (wrong node id,
//! undecodable raft message) is logged and reported back on the stream, which stays up.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use raft_core::transport::Serving;
use raft_core::transport::{InboundHandler, PeerIdentity, ServerGuard};
use raft_core::wire::{self, RaftBatch};
use raft_core::TransportError;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Sleep;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::proto::raftkit_server::{Raftkit, RaftkitServer};
use crate::proto::StreamAck;

/// Metadata key a stopped server sets on its answers: the request was not processed.
pub(crate) const NOT_PROCESSED: &str = "raftkit-not-processed";

/// What the server needs from the transport's settings.
#[derive(Clone)]
pub(crate) struct ServerOptions {
    pub(crate) max_message_size: usize,
    pub(crate) tls: Option<Arc<ServerConfig>>,
    pub(crate) handshake_timeout: Duration,
    pub(crate) keepalive: Duration,
    pub(crate) stream_window: u32,
    pub(crate) connection_window: u32,
}

/// The answer of a server that has stopped: the request was certainly not processed.
fn stopped() -> Status {
    let mut status = Status::unavailable("the raft server at this address has stopped");
    status.metadata_mut().insert(
        NOT_PROCESSED,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    status
}

/// State shared by the service, the accept task and the [`ServerGuard`].
struct Shared {
    addr: String,
    serving: Serving,
    /// Whether connections are TLS (then a peer proves who it is, or is no node).
    tls: bool,
}

impl Shared {
    fn handler(&self) -> Result<Arc<dyn InboundHandler>, Status> {
        self.serving.handler().ok_or_else(stopped)
    }
}

/// Starts serving `addr`. Binding happens before this returns, so "address in use" is an
/// error here; the returned guard stops the server (and frees the port) when dropped.
pub(crate) async fn serve(
    addr: &str,
    handler: Arc<dyn InboundHandler>,
    options: &ServerOptions,
) -> Result<ServerGuard, TransportError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| TransportError::Setup(format!("cannot listen on {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| TransportError::Setup(format!("cannot listen on {addr}: {e}")))?;
    let shared = Arc::new(Shared {
        addr: addr.to_string(),
        serving: Serving::new(handler),
        tls: options.tls.is_some(),
    });
    let slot = Arc::new(Mutex::new(Some(listener)));
    let (conn_tx, conn_rx) = mpsc::channel::<io::Result<Conn>>(64);
    tokio::spawn(accept_loop(
        slot.clone(),
        conn_tx,
        options.clone(),
        shared.clone(),
    ));

    let service = RaftkitServer::new(RaftkitService {
        shared: shared.clone(),
    })
    .max_decoding_message_size(options.max_message_size)
    .max_encoding_message_size(options.max_message_size);
    let stopped = shared.serving.stopped();
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(options.keepalive))
        .http2_keepalive_timeout(Some(options.keepalive))
        .initial_stream_window_size(options.stream_window)
        .initial_connection_window_size(options.connection_window)
        .layer(tower::layer::layer_fn(|inner| LogRejected { inner }))
        .add_service(service);
    let name = shared.addr.clone();
    tokio::spawn(async move {
        let incoming = ReceiverStream::new(conn_rx);
        if let Err(e) = router.serve_with_incoming_shutdown(incoming, stopped).await {
            tracing::error!(addr = %name, "gRPC server failed: {e}");
        }
        tracing::debug!(addr = %name, "gRPC server stopped");
    });
    tracing::debug!(addr, %local, tls = options.tls.is_some(), "gRPC raft server listening");

    Ok(ServerGuard::new(move || {
        // Close the listening socket now (not when a task next runs), so the address can be
        // bound again at once; then cut the node off and end every stream.
        drop(slot.lock().unwrap_or_else(|e| e.into_inner()).take());
        shared.serving.stop();
    }))
}

/// Accepts TCP connections until the listener is taken out of `slot`; TLS handshakes run on
/// their own tasks so a slow or hostile client never holds up the others.
async fn accept_loop(
    slot: Arc<Mutex<Option<TcpListener>>>,
    conns: mpsc::Sender<io::Result<Conn>>,
    options: ServerOptions,
    shared: Arc<Shared>,
) {
    let acceptor = options.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    loop {
        let accepted = std::future::poll_fn(|cx| {
            let guard = slot.lock().unwrap_or_else(|e| e.into_inner());
            match guard.as_ref() {
                None => Poll::Ready(None),
                Some(listener) => listener.poll_accept(cx).map(Some),
            }
        })
        .await;
        let (tcp, peer) = match accepted {
            None => return,
            Some(Ok(conn)) => conn,
            Some(Err(e)) => {
                // Out of file descriptors and the like: wait a little instead of spinning.
                tracing::warn!(addr = %shared.addr, "accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        match &acceptor {
            None => {
                let conn = Conn {
                    peer,
                    identity: PeerIdentity::Unauthenticated,
                    io: Io::Plain(Sniffed::new(tcp, peer, options.handshake_timeout)),
                };
                if conns.send(Ok(conn)).await.is_err() {
                    return;
                }
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let conns = conns.clone();
                let timeout = options.handshake_timeout;
                let addr = shared.addr.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let conn = Conn {
                                peer,
                                identity: identity_of(&tls),
                                io: Io::Tls(Box::new(tls)),
                            };
                            let _ = conns.send(Ok(conn)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(addr = %addr, %peer, "rejected a connection: TLS handshake failed: {e}");
                        }
                        Err(_) => {
                            tracing::warn!(addr = %addr, %peer, "rejected a connection: no TLS handshake within {timeout:?}");
                        }
                    }
                });
            }
        }
    }
}

/// The gRPC service: raft streams and calls, handed to the node.
struct RaftkitService {
    shared: Arc<Shared>,
}

/// How a connection describes its peer to the service.
#[derive(Debug, Clone, Copy)]
struct PeerAddr(SocketAddr, PeerIdentity);

fn peer_of<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<PeerAddr>()
        .map(|p| p.0.to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Who the connection a request came on proved to be. A request that somehow carries no
/// connection information proves nothing: on a TLS server that is [`PeerIdentity::WithoutNodeId`].
fn identity_of_request<T>(request: &Request<T>, tls: bool) -> PeerIdentity {
    match request.extensions().get::<PeerAddr>() {
        Some(p) => p.1,
        None if tls => PeerIdentity::WithoutNodeId,
        None => PeerIdentity::Unauthenticated,
    }
}

/// The identity a TLS client's verified certificate names. Without a client certificate
/// (server-authenticated TLS) the peer is unauthenticated.
fn identity_of(tls: &tokio_rustls::server::TlsStream<TcpStream>) -> PeerIdentity {
    match tls.get_ref().1.peer_certificates() {
        Some([leaf, ..]) => raft_core::transport::identity_of_certificate(leaf),
        _ => PeerIdentity::Unauthenticated,
    }
}

#[tonic::async_trait]
impl Raftkit for RaftkitService {
    type RaftStreamStream = ReceiverStream<Result<StreamAck, Status>>;

    async fn raft_stream(
        &self,
        request: Request<Streaming<RaftBatch>>,
    ) -> Result<Response<Self::RaftStreamStream>, Status> {
        let handler = self.shared.handler()?;
        let peer = peer_of(&request);
        let identity = identity_of_request(&request, self.shared.tls);
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let stop = self.shared.serving.stopped();
        let addr = self.shared.addr.clone();
        tracing::debug!(addr = %addr, %peer, "raft stream opened");
        tokio::spawn(pump(inbound, handler, tx, stop, addr, peer, identity));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn call(
        &self,
        request: Request<wire::Request>,
    ) -> Result<Response<wire::Response>, Status> {
        let handler = self.shared.handler()?;
        let identity = identity_of_request(&request, self.shared.tls);
        Ok(Response::new(
            handler.call(identity, request.into_inner()).await,
        ))
    }
}

/// Delivers one stream's batches to the node, in order, until the stream ends, a frame does
/// not decode, or the server stops.
async fn pump(
    mut inbound: Streaming<RaftBatch>,
    handler: Arc<dyn InboundHandler>,
    acks: mpsc::Sender<Result<StreamAck, Status>>,
    stop: impl std::future::Future<Output = ()>,
    addr: String,
    peer: String,
    identity: PeerIdentity,
) {
    let mut received = 0u64;
    let mut rejected = 0u64;
    tokio::pin!(stop);
    loop {
        let next = tokio::select! {
            biased;
            _ = &mut stop => None,
            next = inbound.message() => Some(next),
        };
        let Some(next) = next else {
            let _ = acks.send(Err(stopped())).await;
            return;
        };
        let batch = match next {
            Ok(Some(batch)) => batch,
            Ok(None) => {
                tracing::debug!(addr = %addr, %peer, received, "raft stream closed by the peer");
                return;
            }
            Err(status) => {
                if is_bad_input(status.code()) {
                    tracing::warn!(addr = %addr, %peer, "closing a raft stream: bad frame: {}", status.message());
                    let _ = acks
                        .send(Err(Status::invalid_argument(format!(
                            "bad raft stream frame: {}",
                            status.message()
                        ))))
                        .await;
                } else {
                    tracing::debug!(addr = %addr, %peer, "raft stream ended: {status}");
                }
                return;
            }
        };
        received += 1;
        let from = batch.from;
        let to = batch.to;
        if let Err(e) = handler.raft_batch(identity, batch).await {
            rejected += 1;
            if rejected == 1 || rejected % 100 == 0 {
                tracing::warn!(addr = %addr, %peer, from, to, rejected, "refused a raft batch: {e}");
            }
            // Tell the sender too; if it does not keep up with acks, it misses some.
            let _ = acks.try_send(Ok(StreamAck {
                received,
                rejected,
                error: e.to_string(),
            }));
        }
    }
}

/// Status codes that mean "the peer sent something we could not accept".
fn is_bad_input(code: Code) -> bool {
    matches!(
        code,
        Code::Internal | Code::InvalidArgument | Code::OutOfRange | Code::ResourceExhausted
    )
}

/// Logs requests the server refused before they reached the service: a unary message that
/// does not decode or is too large, an unknown method.
#[derive(Clone)]
struct LogRejected<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for LogRejected<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let path = request.uri().path().to_string();
        let peer = request.extensions().get::<PeerAddr>().map(|p| p.0);
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            if let Some(status) = Status::from_header_map(response.headers()) {
                if is_bad_input(status.code()) || status.code() == Code::Unimplemented {
                    tracing::warn!(
                        ?peer,
                        path,
                        "refused a request: {:?}: {}",
                        status.code(),
                        status.message()
                    );
                }
            }
            Ok(response)
        })
    }
}

/// An accepted connection, plaintext or TLS.
struct Conn {
    peer: SocketAddr,
    identity: PeerIdentity,
    io: Io,
}

enum Io {
    Plain(Sniffed),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Connected for Conn {
    type ConnectInfo = PeerAddr;

    fn connect_info(&self) -> PeerAddr {
        PeerAddr(self.peer, self.identity)
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(io) => Pin::new(&mut io.io).poll_write(cx, buf),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(io) => Pin::new(&mut io.io).poll_write_vectored(cx, bufs),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(io) => io.io.is_write_vectored(),
            Io::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(io) => Pin::new(&mut io.io).poll_flush(cx),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(io) => Pin::new(&mut io.io).poll_shutdown(cx),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The HTTP/2 connection preface every gRPC client starts with.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A plaintext connection that checks its first bytes: anything but the HTTP/2 preface is
/// logged (hyper then closes the connection), and a connection that does not send the
/// preface in time is closed, so silent connections cannot pile up.
struct Sniffed {
    io: TcpStream,
    peer: SocketAddr,
    /// Bytes of the preface checked so far (`PREFACE.len()` once done or refused).
    seen: usize,
    deadline: Option<Pin<Box<Sleep>>>,
    timeout: Duration,
}

impl Sniffed {
    fn new(io: TcpStream, peer: SocketAddr, timeout: Duration) -> Self {
        Sniffed {
            io,
            peer,
            seen: 0,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            timeout,
        }
    }

    fn check(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.seen >= PREFACE.len() {
                break;
            }
            if b != PREFACE[self.seen] {
                let start = &bytes[..bytes.len().min(32)];
                tracing::warn!(
                    peer = %self.peer,
                    "rejected a connection: not HTTP/2 (gRPC); first bytes {:?}",
                    String::from_utf8_lossy(start)
                );
                self.seen = PREFACE.len();
                break;
            }
            self.seen += 1;
        }
        if self.seen >= PREFACE.len() {
            self.deadline = None;
        }
    }
}

impl AsyncRead for Sniffed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.seen < PREFACE.len() {
                    let fresh = buf.filled()[before..].to_vec();
                    this.check(&fresh);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if let Some(deadline) = this.deadline.as_mut() {
                    if deadline.as_mut().poll(cx).is_ready() {
                        tracing::warn!(peer = %this.peer, "closing a connection that sent no HTTP/2 preface within {:?}", this.timeout);
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no HTTP/2 preface in time",
                        )));
                    }
                }
                Poll::Pending
            }
            other => other,
        }
    }
}
