//! In-process transport over shared handler tables: tests and benches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{InboundHandler, ServerGuard, Transport};
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

    /// A transport attached to this network.
    pub fn transport(&self) -> LocalTransport {
        LocalTransport {
            network: self.clone(),
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
        self.network.lookup(addr)?.raft_batch(batch).await
    }

    async fn call(&self, addr: &str, request: Request) -> Result<Response, TransportError> {
        let handler = self.network.lookup(addr)?;
        Ok(handler.call(request).await)
    }
}
