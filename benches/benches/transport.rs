//! Transport bench: request/response round-trip latency and batched one-way raft message
//! throughput, gRPC (loopback, plaintext and mutual TLS) and QUIC (loopback, mutual TLS: QUIC is
//! always encrypted) against the in-process `LocalTransport`.
//!
//! `cargo bench -p raftkit-benches --bench transport`

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use raft_core::transport::{InboundHandler, ServerGuard};
use raft_core::wire::{self, request, response, RaftBatch};
use raft_core::{async_trait, LocalNetwork, Transport, TransportError};
use raft_transport_grpc::GrpcTransport;
use raft_transport_quic::{dev_certs, QuicTransport};
use tokio::runtime::Runtime;
use tokio::sync::Notify;

/// Raft messages per batch, and bytes per message.
const BATCH: usize = 64;
const MESSAGE: usize = 100;

/// Counts delivered raft messages; answers every call with a small status.
#[derive(Default)]
struct Sink {
    messages: AtomicU64,
    arrived: Notify,
}

#[async_trait]
impl InboundHandler for Sink {
    async fn raft_batch(
        &self,
        _peer: raft_core::transport::PeerIdentity,
        batch: RaftBatch,
    ) -> Result<(), TransportError> {
        self.messages
            .fetch_add(batch.messages.len() as u64, Ordering::Relaxed);
        self.arrived.notify_waiters();
        Ok(())
    }

    async fn call(
        &self,
        _peer: raft_core::transport::PeerIdentity,
        _request: wire::Request,
    ) -> wire::Response {
        wire::Response {
            kind: Some(response::Kind::Status(wire::NodeStatus {
                id: 2,
                term: 7,
                commit_index: 1234,
                applied_index: 1234,
                voters: vec![1, 2, 3],
                ..Default::default()
            })),
        }
    }
}

impl Sink {
    async fn wait_for(&self, target: u64) {
        loop {
            let notified = self.arrived.notified();
            if self.messages.load(Ordering::Relaxed) >= target {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(5), notified).await;
        }
    }
}

/// One transport under test: a client side, the address it reaches, the server's sink.
struct Setup {
    name: &'static str,
    client: Arc<dyn Transport>,
    addr: String,
    sink: Arc<Sink>,
    _guard: ServerGuard,
}

fn setups(rt: &Runtime) -> Vec<Setup> {
    rt.block_on(async {
        let mut out = Vec::new();

        let network = LocalNetwork::new();
        let sink = Arc::new(Sink::default());
        let guard = network
            .transport()
            .serve("node-2", sink.clone())
            .await
            .unwrap();
        out.push(Setup {
            name: "local",
            client: Arc::new(network.transport()),
            addr: "node-2".into(),
            sink,
            _guard: guard,
        });

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let sink = Arc::new(Sink::default());
        let guard = GrpcTransport::default()
            .serve(&addr, sink.clone())
            .await
            .unwrap();
        out.push(Setup {
            name: "grpc",
            client: Arc::new(GrpcTransport::default()),
            addr,
            sink,
            _guard: guard,
        });

        // The same development certificates serve both encrypted transports.
        let certs = tempfile::tempdir().unwrap();
        let dev = dev_certs::generate(certs.path(), &[1, 2]).unwrap();
        let grpc_tls = |id| {
            let t = dev.tls(id).unwrap();
            GrpcTransport::with_tls(raft_transport_grpc::TlsConfig::mutual(t.ca, t.cert, t.key))
                .unwrap()
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let sink = Arc::new(Sink::default());
        let guard = grpc_tls(2).serve(&addr, sink.clone()).await.unwrap();
        out.push(Setup {
            name: "grpc-mtls",
            client: Arc::new(grpc_tls(1)),
            addr,
            sink,
            _guard: guard,
        });

        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let sink = Arc::new(Sink::default());
        let guard = QuicTransport::new(dev.tls(2).unwrap())
            .unwrap()
            .serve(&addr, sink.clone())
            .await
            .unwrap();
        out.push(Setup {
            name: "quic",
            client: Arc::new(QuicTransport::new(dev.tls(1).unwrap()).unwrap()),
            addr,
            sink,
            _guard: guard,
        });
        // Keep the certificate files for the whole run.
        std::mem::forget(certs);
        out
    })
}

fn status_request() -> wire::Request {
    wire::Request {
        cluster_id: 0,
        kind: Some(request::Kind::Status(wire::StatusRequest {})),
    }
}

fn batch() -> RaftBatch {
    RaftBatch {
        cluster_id: 0,
        from: 1,
        to: 2,
        messages: (0..BATCH).map(|i| vec![i as u8; MESSAGE].into()).collect(),
        from_addr: "127.0.0.1:1".into(),
    }
}

fn transport(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let setups = setups(&rt);

    let mut group = c.benchmark_group("transport/call_round_trip");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for s in &setups {
        group.bench_function(s.name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iters {
                        s.client
                            .call(&s.addr, status_request(), Duration::from_secs(30))
                            .await
                            .unwrap();
                    }
                    started.elapsed()
                })
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("transport/batched_send");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(BATCH as u64));
    let template = batch();
    for s in &setups {
        group.bench_function(format!("{}/{BATCH}x{MESSAGE}B", s.name), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let target = s.sink.messages.load(Ordering::Relaxed) + iters * BATCH as u64;
                    let started = Instant::now();
                    for _ in 0..iters {
                        // A send fails only while the stream is (re)connecting; retry.
                        while s.client.send(&s.addr, template.clone()).await.is_err() {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                    // Time until the last message is delivered, not just queued.
                    s.sink.wait_for(target).await;
                    started.elapsed()
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, transport);
criterion_main!(benches);
