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
use raft_core::transport::builder::{NetworkSettings, NetworkTransport, TransportBuilder};
use raft_core::transport::link::PeerLinks;
use raft_core::transport::{InboundHandler, ServerGuard};
use raft_core::wire::{RaftBatch, Request, Response};
use raft_core::{Transport, TransportError};

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

pub use raft_core::transport::builder::DEFAULT_MAX_MESSAGE_SIZE;

/// Builds a [`GrpcTransport`]: TLS (optional), message size limit, timeouts, queue sizes.
pub type GrpcTransportBuilder = TransportBuilder<GrpcTransport>;

/// HTTP/2 flow-control windows: how much unread data one stream, and one connection, may have.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;

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
        assemble(&NetworkSettings::default(), None)
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

impl NetworkTransport for GrpcTransport {
    fn from_settings(settings: NetworkSettings) -> Result<Self, TransportError> {
        let tls = settings.read_tls()?.as_ref().map(tls::load).transpose()?;
        Ok(assemble(&settings, tls))
    }
}

fn assemble(settings: &NetworkSettings, tls: Option<tls::LoadedTls>) -> GrpcTransport {
    let server = server::ServerOptions {
        max_message_size: settings.max_message_size,
        tls: tls.as_ref().map(|t| t.server.clone()),
        handshake_timeout: settings.handshake_timeout,
        keepalive: settings.keepalive,
        stream_window: STREAM_WINDOW,
        connection_window: CONNECTION_WINDOW,
    };
    let channels = client::Channels::new(client::ClientOptions {
        tls: tls.map(|t| t.client),
        max_message_size: settings.max_message_size,
        connect_timeout: settings.connect_timeout,
        keepalive: settings.keepalive,
        stream_window: STREAM_WINDOW,
        connection_window: CONNECTION_WINDOW,
    });
    let links = PeerLinks::new(channels, settings.links());
    GrpcTransport {
        inner: Arc::new(Inner {
            server,
            clients: client::Clients::new(links, settings.max_message_size),
        }),
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
