//! The transport on its own: ordering, calls, limits, unreachable peers, restarts, crashes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_addr, init_tracing, is_unreachable, Certs};
use raft_core::wire::{self, request, response, RaftBatch};
use raft_core::{async_trait, InboundHandler, Transport, TransportError};
use raft_transport_quic::{QuicTransport, TlsConfig};
use tokio::sync::mpsc;

/// Records raft batches (refusing those addressed to node 99, as a node refuses a batch for
/// another node); answers a propose call with its own data, a query with that many bytes.
struct Echo {
    batches: mpsc::UnboundedSender<RaftBatch>,
}

#[async_trait]
impl InboundHandler for Echo {
    async fn raft_batch(
        &self,
        _peer: raft_core::PeerIdentity,
        batch: RaftBatch,
    ) -> Result<(), TransportError> {
        if batch.to == 99 {
            return Err(TransportError::Malformed("not for this node".into()));
        }
        let _ = self.batches.send(batch);
        Ok(())
    }

    async fn call(&self, _peer: raft_core::PeerIdentity, request: wire::Request) -> wire::Response {
        let kind = match request.kind {
            Some(request::Kind::Propose(p)) => response::Kind::Propose(p.data),
            Some(request::Kind::Query(q)) => response::Kind::Query(vec![7; q.query.len() * 1000]),
            _ => response::Kind::SnapshotChunk(true),
        };
        wire::Response { kind: Some(kind) }
    }
}

fn echo() -> (Arc<Echo>, mpsc::UnboundedReceiver<RaftBatch>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Arc::new(Echo { batches: tx }), rx)
}

fn batch(seq: u64, messages: Vec<Vec<u8>>) -> RaftBatch {
    RaftBatch {
        cluster_id: 0,
        from: seq,
        to: 1,
        messages,
        from_addr: "127.0.0.1:1".into(),
    }
}

fn propose(data: Vec<u8>) -> wire::Request {
    wire::Request {
        cluster_id: 0,
        kind: Some(request::Kind::Propose(wire::ProposeRequest {
            data,
            timeout_ms: 0,
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_arrive_in_order_and_calls_are_answered() {
    init_tracing();
    let certs = Certs::new(&[1, 2]);
    let addr = free_addr();
    let (handler, mut rx) = echo();
    let _guard = certs.transport(1).serve(&addr, handler).await.unwrap();
    let client = QuicTransport::builder()
        .tls(certs.tls(2))
        .max_message_size(64 * 1024)
        .build()
        .unwrap();

    for seq in 0..2000u64 {
        client
            .send(&addr, batch(seq, vec![seq.to_be_bytes().to_vec()]))
            .await
            .unwrap();
    }
    // A batch larger than the frame limit goes as several frames, still in order.
    let big: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 30 * 1024]).collect();
    client.send(&addr, batch(2000, big.clone())).await.unwrap();
    for seq in 0..2000u64 {
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.from, seq);
        assert_eq!(got.messages, vec![seq.to_be_bytes().to_vec()]);
    }
    let mut joined = Vec::new();
    while joined.len() < big.len() {
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.from, 2000);
        joined.extend(got.messages);
    }
    assert_eq!(joined, big);

    // Concurrent calls, each on its own stream, each with its own answer.
    let calls: Vec<_> = (0..200u32)
        .map(|i| {
            let client = client.clone();
            let addr = addr.clone();
            tokio::spawn(async move {
                let data = i.to_be_bytes().to_vec();
                let answer = client
                    .call(&addr, propose(data.clone()), common::CALL_TIMEOUT)
                    .await
                    .unwrap();
                assert_eq!(answer.kind, Some(response::Kind::Propose(data)));
            })
        })
        .collect();
    for c in calls {
        c.await.unwrap();
    }

    // Too large to send: refused before anything goes out.
    let e = client
        .call(&addr, propose(vec![0; 100 * 1024]), common::CALL_TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(e, TransportError::Malformed(_)), "{e}");
    let e = client
        .send(&addr, batch(1, vec![vec![0; 100 * 1024]]))
        .await
        .unwrap_err();
    assert!(matches!(e, TransportError::Malformed(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peer_is_reported_unreachable_promptly() {
    init_tracing();
    let certs = Certs::new(&[1]);
    let client = certs.transport(1);
    let nobody = free_addr();

    // The first send waits for the first connection attempt (connect timeout 1 s).
    let started = Instant::now();
    let e = client.send(&nobody, batch(0, vec![])).await.unwrap_err();
    assert!(is_unreachable(&e), "{e}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // After that, sends fail at once while the link reconnects in the background.
    for _ in 0..20 {
        let started = Instant::now();
        let e = client.send(&nobody, batch(0, vec![])).await.unwrap_err();
        assert!(is_unreachable(&e), "{e}");
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "took {:?}",
            started.elapsed()
        );
    }
    let e = client
        .call(&nobody, propose(vec![]), common::CALL_TIMEOUT)
        .await
        .unwrap_err();
    assert!(is_unreachable(&e), "{e}");
    let e = client
        .call("not an address", propose(vec![]), common::CALL_TIMEOUT)
        .await
        .unwrap_err();
    assert!(is_unreachable(&e), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_is_unreachable_and_reached_again_after_restart() {
    init_tracing();
    let certs = Certs::new(&[1, 2]);
    let addr = free_addr();
    let client = certs.transport(2);
    let (handler, mut rx) = echo();
    let guard = certs.transport(1).serve(&addr, handler).await.unwrap();
    client.send(&addr, batch(1, vec![])).await.unwrap();
    assert_eq!(rx.recv().await.unwrap().from, 1);

    drop(guard);
    // The server closed its connections: the link notices and sends fail.
    common::eventually("sends fail", Duration::from_secs(3), || {
        let client = client.clone();
        let addr = addr.clone();
        async move {
            match client.send(&addr, batch(2, vec![])).await {
                Err(e) if is_unreachable(&e) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    let e = client
        .call(&addr, propose(vec![1]), common::CALL_TIMEOUT)
        .await
        .unwrap_err();
    assert!(is_unreachable(&e), "{e}");

    // A new server (a new process) on the same address: the client comes back by itself.
    let (handler, mut rx) = echo();
    let started = Instant::now();
    let _guard = certs.transport(1).serve(&addr, handler).await.unwrap();
    common::eventually("sends are delivered again", Duration::from_secs(5), || {
        let client = client.clone();
        let addr = addr.clone();
        async move {
            client
                .send(&addr, batch(3, vec![]))
                .await
                .map_err(|e| e.to_string())
        }
    })
    .await;
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap()
            .from,
        3
    );
    let answer = common::eventually("calls work again", Duration::from_secs(5), || {
        let client = client.clone();
        let addr = addr.clone();
        async move {
            client
                .call(&addr, propose(vec![4]), common::CALL_TIMEOUT)
                .await
                .map_err(|e| e.to_string())
        }
    })
    .await;
    assert_eq!(answer.kind, Some(response::Kind::Propose(vec![4])));
    eprintln!("reconnected {:?} after the restart", started.elapsed());
}

/// A server "process" on its own runtime, so it can die without a word.
fn crashable_server(
    tls: TlsConfig,
    addr: String,
) -> (
    tokio::runtime::Runtime,
    raft_core::ServerGuard,
    mpsc::UnboundedReceiver<RaftBatch>,
) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (handler, rx) = echo();
    let guard = runtime
        .block_on(async move { QuicTransport::new(tls).unwrap().serve(&addr, handler).await })
        .unwrap();
    (runtime, guard, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_server_restarted_at_its_address_resets_stale_connections_at_once() {
    init_tracing();
    let certs = Certs::new(&[1, 2]);
    let addr = free_addr();
    // A long keepalive: without stateless resets the stale connection would live ~30 s.
    let client = QuicTransport::builder()
        .tls(certs.tls(2))
        .keepalive(Duration::from_secs(10))
        .max_backoff(Duration::from_millis(200))
        .build()
        .unwrap();

    let (tls, a) = (certs.tls(1), addr.clone());
    let (runtime, guard, mut rx) = tokio::task::spawn_blocking(move || crashable_server(tls, a))
        .await
        .unwrap();
    client.send(&addr, batch(1, vec![])).await.unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap()
            .from,
        1
    );

    // Crash: the runtime dies first, so nothing (no CONNECTION_CLOSE) reaches the client.
    tokio::task::spawn_blocking(move || {
        runtime.shutdown_timeout(Duration::from_secs(5));
        drop(guard);
    })
    .await
    .unwrap();

    let (handler, mut rx) = echo();
    let started = Instant::now();
    let _guard = certs.transport(1).serve(&addr, handler).await.unwrap();
    loop {
        let _ = client.send(&addr, batch(2, vec![])).await;
        if let Ok(Some(got)) = tokio::time::timeout(Duration::from_millis(50), rx.recv()).await {
            assert_eq!(got.from, 2);
            break;
        }
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
    let (handler, _rx) = echo();
    let e = certs
        .transport(1)
        .serve("no such host:1", handler)
        .await
        .unwrap_err();
    assert!(matches!(e, TransportError::Setup(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_each_keep_their_order_and_refused_batches_keep_the_stream() {
    init_tracing();
    let certs = Certs::new(&[1, 2]);
    let addr = free_addr();
    let (handler, mut rx) = echo();
    let _guard = certs.transport(1).serve(&addr, handler).await.unwrap();
    let client = certs.transport(2);
    let senders: Vec<_> = (0..4u64)
        .map(|s| {
            let client = client.clone();
            let addr = addr.clone();
            tokio::spawn(async move {
                for i in 0..300u64 {
                    let mut b = batch(s, vec![i.to_be_bytes().to_vec()]);
                    if i % 50 == 25 {
                        // Refused by the node: logged, and the stream stays up.
                        b.to = 99;
                    }
                    client.send(&addr, b).await.unwrap();
                }
            })
        })
        .collect();
    for s in senders {
        s.await.unwrap();
    }
    let mut next = [0u64; 4];
    let expected_per_sender = 300 - 6;
    let mut received = 0;
    while received < 4 * expected_per_sender {
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        let i = u64::from_be_bytes(got.messages[0].clone().try_into().unwrap());
        let s = got.from as usize;
        assert!(i >= next[s], "sender {s}: {i} after {}", next[s]);
        next[s] = i + 1;
        received += 1;
    }
    assert_eq!(next, [300; 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_maximum_message_size_is_enforced_both_ways() {
    init_tracing();
    let certs = Certs::new(&[1, 2]);
    let addr = free_addr();
    let (handler, mut rx) = echo();
    let server = QuicTransport::builder()
        .tls(certs.tls(1))
        .max_message_size(16 * 1024)
        .build()
        .unwrap();
    let _guard = server.serve(&addr, handler).await.unwrap();
    let client = QuicTransport::builder()
        .tls(certs.tls(2))
        .max_message_size(1024 * 1024)
        .max_backoff(Duration::from_millis(100))
        .build()
        .unwrap();

    // A raft frame over the server's limit: the server closes that stream (logged) ...
    client
        .send(&addr, batch(1, vec![vec![1; 100 * 1024]]))
        .await
        .unwrap();
    // ... and the link opens a new one, over which small batches arrive.
    let started = Instant::now();
    let got = loop {
        let _ = client.send(&addr, batch(2, vec![vec![2; 10]])).await;
        if let Ok(Some(got)) = tokio::time::timeout(Duration::from_millis(50), rx.recv()).await {
            break got;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the link never came back"
        );
    };
    assert_eq!(got.from, 2, "the oversized batch must not arrive");

    // A call over the server's limit is refused as malformed.
    let e = client
        .call(&addr, propose(vec![0; 100 * 1024]), common::CALL_TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(e, TransportError::Malformed(_)), "{e}");
    // An answer over the server's limit becomes an error answer.
    let query = wire::Request {
        cluster_id: 0,
        kind: Some(request::Kind::Query(wire::QueryRequest {
            query: vec![0; 100],
            consistency: 0,
            timeout_ms: 0,
        })),
    };
    let answer = client
        .call(&addr, query, common::CALL_TIMEOUT)
        .await
        .unwrap();
    assert!(
        matches!(answer.kind, Some(response::Kind::Error(_))),
        "{answer:?}"
    );
    // The connection still serves normal calls.
    let answer = client
        .call(&addr, propose(vec![5]), common::CALL_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(answer.kind, Some(response::Kind::Propose(vec![5])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_a_busy_address_is_a_setup_error() {
    let certs = Certs::new(&[1]);
    let addr = free_addr();
    let (handler, _rx) = echo();
    let _guard = certs.transport(1).serve(&addr, handler).await.unwrap();
    let (handler, _rx2) = echo();
    let e = certs.transport(1).serve(&addr, handler).await.unwrap_err();
    assert!(matches!(e, TransportError::Setup(_)), "{e}");
}
