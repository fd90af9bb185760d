//! `LocalTransport` meets the contract the transport conformance suite checks for every
//! transport, and the suite catches transports that break it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use raft_core::testing::transport_conformance::{
    batches_arrive_in_order, call_timeouts_are_honoured, run_all, TransportFactory,
};
use raft_core::testing::{Faults, FaultyTransport};
use raft_core::transport::{InboundHandler, LocalTransport, ServerGuard};
use raft_core::wire::{RaftBatch, Request, Response};
use raft_core::{async_trait, LocalNetwork, Transport, TransportError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_transport_conforms() {
    run_all(&TransportFactory::local(&LocalNetwork::new())).await;
}

/// Waits for every answer as long as it takes.
struct IgnoresTimeouts(LocalTransport);

#[async_trait]
impl Transport for IgnoresTimeouts {
    async fn serve(
        &self,
        addr: &str,
        handler: Arc<dyn InboundHandler>,
    ) -> Result<ServerGuard, TransportError> {
        self.0.serve(addr, handler).await
    }

    async fn send(&self, addr: &str, batch: RaftBatch) -> Result<(), TransportError> {
        self.0.send(addr, batch).await
    }

    async fn call(
        &self,
        addr: &str,
        request: Request,
        _: Duration,
    ) -> Result<Response, TransportError> {
        self.0.call(addr, request, Duration::from_secs(3600)).await
    }
}

async fn fails(check: impl Future<Output = ()> + Send + 'static) -> bool {
    tokio::spawn(check).await.is_err_and(|e| e.is_panic())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_rejects_broken_transports() {
    let network = LocalNetwork::new();
    let patient = TransportFactory::new(
        move |id| Arc::new(IgnoresTimeouts(network.transport_as(id))),
        |id| format!("node-{id}"),
    );
    assert!(fails(async move { call_timeouts_are_honoured(&patient).await }).await);

    let network = LocalNetwork::new();
    let faults = Faults::new(1);
    faults.set_reorder_rate(0.1);
    let reordering = TransportFactory::new(
        move |id| {
            Arc::new(FaultyTransport::new(
                network.transport_as(id),
                faults.clone(),
                "",
            ))
        },
        |id| format!("node-{id}"),
    );
    assert!(fails(async move { batches_arrive_in_order(&reordering).await }).await);
}
