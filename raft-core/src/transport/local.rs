//! In-process transport over shared handler tables: tests and benches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::{InboundHandler, PeerIdentity, ServerGuard, Transport};
use crate::error::TransportError;
use crate::wire::{RaftBatch, Request, Response};

type Handlers = HashMap<String, Arc<dyn InboundHandler>>;

/// The in-process "network" that [`LocalTransport`]s share: addresses are plain names.
#[derive(Clone, Default)]
pub struct LocalNetwork {
    handlers: Arc<Mutex<Handlers>>,
}

impl LocalNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// A transport attached to this network. Receivers cannot tell who sends through it
    /// ([`PeerIdentity::Unauthenticated`]), like a plaintext network transport.
    pub fn transport(&self) -> LocalTransport {
        LocalTransport {
            network: self.clone(),
            identity: PeerIdentity::Unauthenticated,
        }
    }

    /// A transport whose traffic receivers know comes from node `id`
    /// ([`PeerIdentity::Node`]), like a network transport with node certificates.
    pub fn transport_as(&self, id: u64) -> LocalTransport {
        LocalTransport {
            network: self.clone(),
            identity: PeerIdentity::Node(id),
        }
    }

    fn lookup(&self, addr: &str) -> Result<Arc<dyn InboundHandler>, TransportError> {
        let handlers = self.handlers.lock().unwrap_or_else(|e| e.into_inner());
        handlers
            .get(addr)
            .cloned()
            .ok_or_else(|| TransportError::Unreachable {
                addr: addr.to_string(),
                reason: "nobody listens there".into(),
            })
    }
}

/// A [`Transport`] that delivers within the process through a [`LocalNetwork`].
///
/// ```
/// let network = raft_core::LocalNetwork::new();
/// let _t1 = network.transport();
/// let _t2 = network.transport();
/// ```
#[derive(Clone)]
pub struct LocalTransport {
    network: LocalNetwork,
    identity: PeerIdentity,
}

#[async_trait]
impl Transport for LocalTransport {
    async fn serve(
        &self,
        addr: &str,
        handler: Arc<dyn InboundHandler>,
    ) -> Result<ServerGuard, TransportError> {
        let mut handlers = self
            .network
            .handlers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if handlers.contains_key(addr) {
            return Err(TransportError::Setup(format!("{addr} is already in use")));
        }
        handlers.insert(addr.to_string(), handler);
        let network = self.network.clone();
        let addr = addr.to_string();
        Ok(ServerGuard::new(move || {
            network
                .handlers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&addr);
        }))
    }

    async fn send(&self, addr: &str, batch: RaftBatch) -> Result<(), TransportError> {
        self.network
            .lookup(addr)?
            .raft_batch(self.identity, batch)
            .await
    }

    async fn call(
        &self,
        addr: &str,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        let handler = self.network.lookup(addr)?;
        tokio::time::timeout(timeout, handler.call(self.identity, request))
            .await
            .map_err(|_| TransportError::Failed {
                addr: addr.to_string(),
                reason: format!("no answer within {timeout:?}"),
            })
    }
}
