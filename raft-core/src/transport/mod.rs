//! The transport abstraction: a dumb pipe between nodes.
//!
//! raft-core owns the wire schema ([`crate::wire`]); a transport only moves [`RaftBatch`]es
//! (one-way, in order per peer) and [`Request`]/[`Response`] calls. Snapshots travel as
//! ordinary calls in chunks, so no transport needs special code for them.

#[cfg(feature = "network")]
pub mod builder;
#[cfg(feature = "testing")]
pub(crate) mod faulty;
mod identity;
pub mod link;
mod local;
mod serving;
#[cfg(feature = "network")]
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use identity::{identity_of_certificate, node_uri, read_private_key, NODE_URI_PREFIX};
pub use local::{LocalNetwork, LocalTransport};
pub use serving::Serving;

use crate::error::TransportError;
use crate::wire::{RaftBatch, Request, Response};

/// Who is on the other end of an inbound connection, as the transport established it.
///
/// A node checks every node id a message or call claims against this: with
/// [`PeerIdentity::Node`], a raft batch, snapshot chunk or membership call that claims any
/// other id is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PeerIdentity {
    /// The transport authenticates nobody (plaintext): ids are taken at their word.
    #[default]
    Unauthenticated,
    /// The peer proved it is this node (for example by a certificate that names the id).
    Node(u64),
    /// The peer proved it belongs to the cluster's trust domain (its certificate chains to
    /// the CA) but names no node id: a client, never a raft peer.
    WithoutNodeId,
}

impl PeerIdentity {
    /// True when a sender claiming to be node `id` may be who it says.
    pub fn may_be(self, id: u64) -> bool {
        match self {
            PeerIdentity::Unauthenticated => true,
            PeerIdentity::Node(proven) => proven == id,
            PeerIdentity::WithoutNodeId => false,
        }
    }
}

impl std::fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerIdentity::Unauthenticated => f.write_str("an unauthenticated peer"),
            PeerIdentity::Node(id) => write!(f, "node {id}"),
            PeerIdentity::WithoutNodeId => f.write_str("a peer whose certificate names no node"),
        }
    }
}

/// What a node exposes to its transport's server side.
#[async_trait]
pub trait InboundHandler: Send + Sync + 'static {
    /// Raft messages from `peer`. An error (undecodable message, wrong node, an id the
    /// peer is not) is logged by the transport; it never stops the server.
    async fn raft_batch(&self, peer: PeerIdentity, batch: RaftBatch) -> Result<(), TransportError>;
    /// A request/response call from `peer` (another node or a client).
    async fn call(&self, peer: PeerIdentity, request: Request) -> Response;
}

/// Moves raftkit's wire messages between nodes.
///
/// Implementations keep connections per peer address and may batch further, but must keep
/// the order of `send` calls to one address.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Starts serving `addr`; inbound traffic goes to `handler` until the guard is dropped.
    async fn serve(
        &self,
        addr: &str,
        handler: Arc<dyn InboundHandler>,
    ) -> Result<ServerGuard, TransportError>;

    /// Delivers a batch of raft messages to the node at `addr`, one-way.
    async fn send(&self, addr: &str, batch: RaftBatch) -> Result<(), TransportError>;

    /// Sends a request to the node at `addr` and waits for its response, at most `timeout`:
    /// then the call fails with [`TransportError::Failed`] (it may have been processed), or
    /// with [`TransportError::Unreachable`] when it certainly was not delivered.
    async fn call(
        &self,
        addr: &str,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, TransportError>;
}

/// Keeps a transport's server running; dropping it stops the server.
pub struct ServerGuard {
    stop: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl ServerGuard {
    /// A guard that runs `stop` when dropped.
    pub fn new(stop: impl FnOnce() + Send + Sync + 'static) -> Self {
        ServerGuard {
            stop: Some(Box::new(stop)),
        }
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
    }
}

impl std::fmt::Debug for ServerGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerGuard")
    }
}

#[async_trait]
impl<T: Transport + ?Sized> Transport for Arc<T> {
    async fn serve(
        &self,
        addr: &str,
        handler: Arc<dyn InboundHandler>,
    ) -> Result<ServerGuard, TransportError> {
        (**self).serve(addr, handler).await
    }

    async fn send(&self, addr: &str, batch: RaftBatch) -> Result<(), TransportError> {
        (**self).send(addr, batch).await
    }

    async fn call(
        &self,
        addr: &str,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        (**self).call(addr, request, timeout).await
    }
}
