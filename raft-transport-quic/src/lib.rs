//! # raft-transport-quic: raftkit's transport over QUIC
//!
//! [`QuicTransport`] implements [`raft_core::Transport`] over QUIC (quinn), always encrypted
//! (TLS 1.3, rustls with ring) and always mutually authenticated against a cluster CA. It
//! mirrors the gRPC transport (`raft-transport-grpc`): the same `TlsConfig::mutual(ca, cert,
//! key)`, the same builder knobs, the same error semantics, so switching is one line.
//!
//! - **One connection per peer.** Raft messages travel in order on one long-lived
//!   unidirectional stream, fed by a bounded queue; queued batches are written together. When
//!   the stream or connection breaks it is re-opened with exponential backoff (capped, 1 s by
//!   default); meanwhile `send` fails at once with [`TransportError::Unreachable`], which
//!   raft-core reports to raft as an unreachable peer.
//! - **Calls** (forwarded proposals and reads, join / leave / leader info, status, snapshot
//!   chunks) each get their own bidirectional stream on the same connection, so a snapshot
//!   chunk never holds up heartbeats (no head-of-line blocking between QUIC streams). A call
//!   that certainly did not reach the peer fails with `Unreachable`; one that may have, with
//!   `Failed`.
//! - **Security**: mutual TLS with certificates from PEM files ([`TlsConfig`]) or memory
//!   ([`QuicTransport::from_pem`]); a peer whose certificate comes from another CA is refused
//!   during the handshake, both ways. [`dev_certs`] makes a development CA and node
//!   certificates.
//! - **Frames and bad input**: every message is a frame of a 4-byte big-endian length and a
//!   protobuf payload ([`raft_core::wire`]). A length above the maximum message size, a
//!   truncated frame or a payload that does not decode closes that stream with a logged
//!   error; the length is checked before anything is allocated, and buffers grow only with
//!   bytes that actually arrive. UDP datagrams that are not QUIC are dropped by quinn.
//! - **Restarts**: a server's stateless-reset key is derived from its private key and
//!   address, so when a crashed node comes back at the same address, peers' stale
//!   connections are reset by its first answer and they reconnect at once.
//!
//! ```no_run
//! use raft_core::{Raft, Store};
//! use raft_transport_quic::{QuicTransport, TlsConfig};
//!
//! # fn demo<S: Store>(store: S) -> Result<(), Box<dyn std::error::Error>> {
//! let transport = QuicTransport::builder()
//!     .tls(TlsConfig::mutual("certs/ca.pem", "certs/node-1.pem", "certs/node-1.key"))
//!     .build()?;
//! let raft = Raft::builder(1, store)
//!     .raft_addr("10.0.0.1:5001")
//!     .transport(transport)
//!     .build()?;
//! # let _ = raft; Ok(()) }
//! ```
//!
//! Addresses are `host:port` strings; the server listens on UDP. Peers' certificates must
//! name the host they are dialled at (or set [`TlsConfig::with_server_name`]).

mod client;
#[cfg(feature = "dev-certs")]
pub mod dev_certs;
mod endpoint;
mod frame;
mod server;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use raft_core::transport::builder::{NetworkSettings, NetworkTransport, TransportBuilder};
use raft_core::transport::{InboundHandler, ServerGuard};
use raft_core::wire::{RaftBatch, Request, Response};
use raft_core::{Transport, TransportError};

pub use crate::tls::ALPN;
pub use raft_core::transport::tls::TlsConfig;

pub use raft_core::transport::builder::DEFAULT_MAX_MESSAGE_SIZE;

/// Builds a [`QuicTransport`]. TLS is required: QUIC is always encrypted, and this transport
/// always authenticates both ends. The keepalive defaults to 2 s here: a connection silent
/// for three keepalives is dead.
pub type QuicTransportBuilder = TransportBuilder<QuicTransport>;

/// A [`Transport`] over QUIC with mutual TLS. Cheap to clone; clones share connections.
///
/// Build it with [`QuicTransport::new`] / [`QuicTransport::with_tls`] (defaults),
/// [`QuicTransport::from_pem`], or [`QuicTransport::builder`] for limits and timeouts.
/// Nothing runs until it is used, so it can be built outside a tokio runtime; it must be used
/// inside one.
#[derive(Clone)]
pub struct QuicTransport {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Arc<endpoint::Settings>,
    clients: client::Clients,
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("max_message_size", &self.inner.settings.max_message_size)
            .field("server_name", &self.inner.settings.tls.server_name)
            .finish_non_exhaustive()
    }
}

impl QuicTransport {
    /// A transport with `tls` and default settings; fails when the files cannot be read or do
    /// not form a usable identity.
    pub fn new(tls: TlsConfig) -> Result<Self, TransportError> {
        Self::builder().tls(tls).build()
    }

    /// Same as [`QuicTransport::new`]; named like the gRPC transport's constructor.
    pub fn with_tls(tls: TlsConfig) -> Result<Self, TransportError> {
        Self::new(tls)
    }

    /// A transport from PEM bytes held in memory: the CA certificate(s), this node's
    /// certificate chain, and its private key.
    pub fn from_pem(
        ca_pem: impl Into<Vec<u8>>,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Result<Self, TransportError> {
        Self::builder().tls_pem(ca_pem, cert_pem, key_pem).build()
    }

    /// Settings: TLS (required), message size limit, timeouts, queue sizes.
    pub fn builder() -> QuicTransportBuilder {
        QuicTransportBuilder::default()
    }
}

impl NetworkTransport for QuicTransport {
    fn defaults() -> NetworkSettings {
        NetworkSettings {
            keepalive: Duration::from_secs(2),
            ..NetworkSettings::default()
        }
    }

    /// Loads and checks the TLS material and builds the transport. Needs no runtime.
    fn from_settings(settings: NetworkSettings) -> Result<Self, TransportError> {
        let Some(pem) = settings.read_tls()? else {
            return Err(TransportError::Setup(
                "QUIC is always encrypted: give the transport a TlsConfig (.tls(...))".into(),
            ));
        };
        let links = settings.links();
        let settings = Arc::new(endpoint::Settings {
            tls: tls::load(&pem)?,
            max_message_size: settings.max_message_size,
            connect_timeout: settings.connect_timeout,
            keepalive: settings.keepalive,
            handshake_timeout: settings.handshake_timeout,
            max_backoff: settings.max_backoff,
        });
        Ok(QuicTransport {
            inner: Arc::new(Inner {
                clients: client::Clients::new(settings.clone(), links),
                settings,
            }),
        })
    }
}

#[async_trait]
impl Transport for QuicTransport {
    async fn serve(
        &self,
        addr: &str,
        handler: Arc<dyn InboundHandler>,
    ) -> Result<ServerGuard, TransportError> {
        server::serve(addr, handler, self.inner.settings.clone()).await
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
