//! `QuicTransport` against the transport conformance suite, plus what only QUIC has:
//! answers over the size limit, stateless resets after a crash, and its TLS setup.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{init_tracing, quic, Certs};
use raft_core::testing::transport_conformance::{
    self as conformance, batch, free_udp_addr, propose, Recorder, TransportFactory, CALL_TIMEOUT,
};
use raft_core::wire::{self, request, response};
use raft_core::{Transport, TransportError};
use raft_transport_quic::{QuicTransport, TlsConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meets_the_transport_contract() {
    init_tracing();
    conformance::run_all(&quic(Arc::new(Certs::new(&[1, 2, 3])))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_maximum_message_size_is_enforced_both_ways() {
    init_tracing();
    const MAX: usize = 16 * 1024;
    let certs = Arc::new(Certs::new(&[1, 2, 3]));
    let with_limit = |max: usize| {
        let certs = certs.clone();
        TransportFactory::new(
            move |id| {
                let builder = QuicTransport::builder().tls(certs.tls(id));
                let builder = builder
                    .max_message_size(max)
                    .max_backoff(Duration::from_millis(100));
                Arc::new(builder.build().unwrap())
            },
            |_| free_udp_addr(),
        )
    };
    let (limited, loose) = (with_limit(MAX), with_limit(1024 * 1024));
    conformance::oversized_messages_are_split_or_refused(&limited, MAX).await;
    let e = conformance::oversized_inbound_is_refused(&limited, &loose, MAX).await;
    assert!(matches!(e, TransportError::Malformed(_)), "{e}");

    // An answer over the server's limit becomes an error answer, and the connection still
    // serves normal calls.
    let addr = free_udp_addr();
    let _guard = limited
        .transport(1)
        .serve(&addr, Recorder::new(1))
        .await
        .unwrap();
    let client = loose.transport(2);
    let query = wire::Request {
        cluster_id: 0,
        kind: Some(request::Kind::Query(wire::QueryRequest {
            query: vec![0; 100],
            consistency: 0,
            timeout_ms: 0,
        })),
    };
    let answer = client.call(&addr, query, CALL_TIMEOUT).await.unwrap();
    assert!(
        matches!(answer.kind, Some(response::Kind::Error(_))),
        "{answer:?}"
    );
    let answer = client
        .call(&addr, propose(vec![5]), CALL_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(answer.kind, Some(response::Kind::Propose(vec![5])));
}

/// A server "process" on its own runtime, so it can die without a word.
fn crashable_server(
    tls: TlsConfig,
    addr: String,
) -> (
    tokio::runtime::Runtime,
    raft_core::transport::ServerGuard,
    Arc<Recorder>,
) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let recorder = Recorder::new(1);
    let handler = recorder.clone();
    let guard = runtime
        .block_on(async move { QuicTransport::new(tls).unwrap().serve(&addr, handler).await })
        .unwrap();
    (runtime, guard, recorder)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_server_restarted_at_its_address_resets_stale_connections_at_once() {
    init_tracing();
    let certs = Certs::new(&[1, 2]);
    let addr = free_udp_addr();
    // A long keepalive: without stateless resets the stale connection would live ~30 s.
    let client = QuicTransport::builder()
        .tls(certs.tls(2))
        .keepalive(Duration::from_secs(10))
        .max_backoff(Duration::from_millis(200))
        .build()
        .unwrap();

    let (tls, a) = (certs.tls(1), addr.clone());
    let (runtime, guard, first) = tokio::task::spawn_blocking(move || crashable_server(tls, a))
        .await
        .unwrap();
    client.send(&addr, batch(2, 1, 0)).await.unwrap();
    first.wait_for(1, Duration::from_secs(5)).await;

    // Crash: the runtime dies first, so nothing (no CONNECTION_CLOSE) reaches the client.
    tokio::task::spawn_blocking(move || {
        runtime.shutdown_timeout(Duration::from_secs(5));
        drop(guard);
    })
    .await
    .unwrap();

    let second = Recorder::new(1);
    let started = Instant::now();
    let _guard = certs
        .transport(1)
        .serve(&addr, second.clone())
        .await
        .unwrap();
    while second.count() == 0 {
        let _ = client.send(&addr, batch(2, 1, 1)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the stale connection was not reset"
        );
    }
    eprintln!("delivered {:?} after the restart", started.elapsed());
}

#[tokio::test]
async fn building_needs_tls_and_usable_files() {
    let e = QuicTransport::builder().build().unwrap_err();
    assert!(matches!(e, TransportError::Setup(_)), "{e}");
    let e = QuicTransport::new(TlsConfig::mutual(
        "/nope/ca.pem",
        "/nope/n.pem",
        "/nope/n.key",
    ))
    .unwrap_err();
    assert!(matches!(e, TransportError::Setup(_)), "{e}");
    let certs = Certs::new(&[1, 2]);
    // A key that does not belong to the certificate.
    let mismatched = TlsConfig::mutual(certs.tls(1).ca, certs.tls(1).cert, certs.tls(2).key);
    let e = QuicTransport::new(mismatched).unwrap_err();
    assert!(matches!(e, TransportError::Setup(_)), "{e}");
    // From memory works as from files.
    let tls = certs.tls(1);
    QuicTransport::from_pem(
        std::fs::read(&tls.ca).unwrap(),
        std::fs::read(&tls.cert).unwrap(),
        std::fs::read(&tls.key).unwrap(),
    )
    .unwrap();
    // Serving an address that is not one is a setup error.
    let e = certs
        .transport(1)
        .serve("no such host:1", Recorder::new(1))
        .await
        .unwrap_err();
    assert!(matches!(e, TransportError::Setup(_)), "{e}");
}
