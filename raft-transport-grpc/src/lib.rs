//! # raft-transport-grpc: raftkit's transport over gRPC
//!
//! [`GrpcTransport`] implements [`raft_core::Transport`] over tonic (HTTP/2), as a typed gRPC
//! service (`raftkit.grpc.v1.Raftkit`, see `proto/raftkit_grpc.proto`) whose messages are
//! raft-core's own wire schema ([`raft_core::wire`]):
//!
//! - **Raft messages** travel over one long-lived client stream per peer (`RaftStream`), fed
//!   by a bounded queue, so batches arrive in order. When the stream breaks it is re-opened
//!   with exponential backoff (capped, 1 s by default); meanwhile `send` fails at once with
//!   [`TransportError::Unreachable`], which raft-core reports to raft as an unreachable peer.
//! - **Calls** (forwarded proposals and reads, join / leave / leader info, status, snapshot
//!   chunks) are unary `Call`s on a second connection per peer, so a snapshot never holds up
//!   heartbeats. A call that certainly did not reach the peer fails with `Unreachable`; one
//!   that may have, with `Failed`.
//! - **Security**: plaintext, server-authenticated TLS, or mutual TLS against a cluster CA
//!   (rustls with ring), with certificates from PEM files: [`TlsConfig`].
//! - **Limits and bad input**: a maximum message size (bigger raft batches are split; a
//!   bigger request is refused before it is sent); bytes on the port that are not HTTP/2, a
//!   failed TLS handshake, a frame that does not decode, or a batch the node refuses (unknown
//!   node id, undecodable raft message) are logged and rejected, and the node keeps running.
//!
//! ```no_run
//! use raft_core::{Raft, Store};
//! use raft_transport_grpc::{GrpcTransport, TlsConfig};
//!
//! # fn demo<S: Store>(store: S) -> Result<(), Box<dyn std::error::Error>> {
//! let transport = GrpcTransport::builder()
//!     .tls(TlsConfig::mutual("certs/ca.pem", "certs/node1.pem", "certs/node1.key"))
//!     .build()?;
//! let raft = Raft::builder(1, store)
//!     .raft_addr("10.0.0.1:5001")
//!     .transport(transport)
//!     .build()?;
//! # let _ = raft; Ok(()) }
//! ```

mod client;
mod server;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use raft_core::transport::link::{LinkSettings, PeerLinks};
use raft_core::wire::{RaftBatch, Request, Response};
use raft_core::{InboundHandler, ServerGuard, Transport, TransportError};

pub use raft_core::transport::tls::{ClientAuth, TlsConfig};

/// The generated gRPC service (`raftkit.grpc.v1.Raftkit`): client, server trait and the
/// stream ack. Its requests and responses are [`raft_core::wire`] types. Most users need only
/// [`GrpcTransport`].
#[allow(
    missing_docs,
    clippy::all,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
pub mod proto {
    tonic::include_proto!("raftkit.grpc.v1");
}

/// Default [`GrpcTransportBuilder::max_message_size`]: 16 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// A [`Transport`] over gRPC. Cheap to clone; clones share connections.
///
/// `GrpcTransport::default()` is plaintext with default limits; use
/// [`GrpcTransport::builder`] for TLS and limits. Addresses are `host:port` strings.
#[derive(Clone)]
pub struct GrpcTransport {
    inner: Arc<Inner>,
}

struct Inner {
    server: server::ServerOptions,
    clients: client::Clients,
}

impl std::fmt::Debug for GrpcTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcTransport")
            .field("tls", &self.inner.server.tls.is_some())
            .field("max_message_size", &self.inner.server.max_message_size)
            .finish()
    }
}

impl Default for GrpcTransport {
    fn default() -> Self {
        GrpcTransportBuilder::default().assemble(None)
    }
}

impl GrpcTransport {
    /// A plaintext transport with default settings (same as `default()`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Settings: TLS, message size limit, timeouts, queue sizes.
    pub fn builder() -> GrpcTransportBuilder {
        GrpcTransportBuilder::default()
    }

    /// A transport using `tls`, otherwise with default settings.
    pub fn with_tls(tls: TlsConfig) -> Result<Self, TransportError> {
        Self::builder().tls(tls).build()
    }
}

/// Builds a [`GrpcTransport`].
#[derive(Debug, Clone)]
pub struct GrpcTransportBuilder {
    tls: Option<TlsConfig>,
    max_message_size: usize,
    connect_timeout: Duration,
    keepalive: Duration,
    handshake_timeout: Duration,
    stream_queue: usize,
    max_backoff: Duration,
    stream_window: u32,
    connection_window: u32,
}

impl Default for GrpcTransportBuilder {
    fn default() -> Self {
        GrpcTransportBuilder {
            tls: None,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            connect_timeout: Duration::from_secs(2),
            keepalive: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            stream_queue: 1024,
            max_backoff: Duration::from_secs(1),
            stream_window: 2 * 1024 * 1024,
            connection_window: 8 * 1024 * 1024,
        }
    }
}

impl GrpcTransportBuilder {
    /// Serve and connect with TLS (server-authenticated or mutual). Default: plaintext.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Largest encoded message accepted or sent, in bytes. Raft batches larger than this are
    /// sent as several frames; a single raft message or call larger than this is refused
    /// with [`TransportError::Malformed`]. Keep it above `Config::snapshot_chunk_size` and
    /// `Config::max_size_per_msg`. Default [`DEFAULT_MAX_MESSAGE_SIZE`].
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes.max(1024);
        self
    }

    /// How long opening a connection or raft stream may take; also how long `send` waits
    /// for a full stream queue. Default 2 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// HTTP/2 keepalive ping interval and timeout, both ways: a dead peer is noticed within
    /// about twice this. Default 10 s.
    pub fn keepalive(mut self, interval: Duration) -> Self {
        self.keepalive = interval;
        self
    }

    /// How long an inbound connection may take to complete its TLS handshake or send the
    /// HTTP/2 preface before it is closed. Default 10 s.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Batches queued per peer stream before `send` waits. Default 1024.
    pub fn stream_queue(mut self, batches: usize) -> Self {
        self.stream_queue = batches.max(1);
        self
    }

    /// Longest pause between attempts to re-open a broken stream. Default 1 s.
    pub fn max_backoff(mut self, backoff: Duration) -> Self {
        self.max_backoff = backoff;
        self
    }

    /// Checks the settings, loads the TLS files, and builds the transport.
    pub fn build(self) -> Result<GrpcTransport, TransportError> {
        let tls = self.tls.as_ref().map(tls::load).transpose()?;
        Ok(self.assemble(tls))
    }

    fn assemble(self, tls: Option<tls::LoadedTls>) -> GrpcTransport {
        let server = server::ServerOptions {
            max_message_size: self.max_message_size,
            tls: tls.as_ref().map(|t| t.server.clone()),
            handshake_timeout: self.handshake_timeout,
            keepalive: self.keepalive,
            stream_window: self.stream_window,
            connection_window: self.connection_window,
        };
        let channels = client::Channels::new(client::ClientOptions {
            tls: tls.map(|t| t.client),
            max_message_size: self.max_message_size,
            connect_timeout: self.connect_timeout,
            keepalive: self.keepalive,
            stream_window: self.stream_window,
            connection_window: self.connection_window,
        });
        let links = PeerLinks::new(
            channels,
            LinkSettings {
                max_message_size: self.max_message_size,
                connect_timeout: self.connect_timeout,
                queue: self.stream_queue,
                max_backoff: self.max_backoff,
            },
        );
        let clients = client::Clients::new(links, self.max_message_size);
        GrpcTransport {
            inner: Arc::new(Inner { server, clients }),
        }
    }
}

#[async_trait]
impl Transport for GrpcTransport {
    async fn serve(
        &self,
        addr: &str,
        handler: Arc<dyn InboundHandler>,
    ) -> Result<ServerGuard, TransportError> {
        server::serve(addr, handler, &self.inner.server).await
    }

    async fn send(&self, addr: &str, batch: RaftBatch) -> Result<(), TransportError> {
        self.inner.clients.send(addr, batch).await
    }

    async fn call(
        &self,
        addr: &str,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        self.inner.clients.call(addr, request, timeout).await
    }
}
