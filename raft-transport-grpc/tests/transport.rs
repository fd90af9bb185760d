//! `GrpcTransport` on its own, against a recording handler: order, calls, unreachable
//! peers, reconnection, limits, refused batches, garbage on the port.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use raft_core::wire::{self, request, response};
use raft_core::{Transport, TransportError};
use raft_transport_grpc::GrpcTransport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{batch, free_addr, init_tracing, seq_of, status_id, Recorder};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_arrive_in_order_and_calls_round_trip() {
    init_tracing();
    let addr = free_addr();
    let server = GrpcTransport::default();
    let recorder = Recorder::new(2);
    let _guard = server.serve(&addr, recorder.clone()).await.unwrap();

    let client = GrpcTransport::default();
    const N: u64 = 5_000;
    for seq in 0..N {
        client.send(&addr, batch(1, 2, seq)).await.unwrap();
    }
    let got = recorder.wait_for(N as usize, Duration::from_secs(20)).await;
    let seqs: Vec<u64> = got.iter().map(seq_of).collect();
    assert_eq!(seqs, (0..N).collect::<Vec<_>>(), "batches out of order");

    assert_eq!(status_id(&client, &addr).await.unwrap(), 2);
    let propose = wire::Request {
        cluster_id: 0,
        kind: Some(request::Kind::Propose(wire::ProposeRequest {
            data: b"hello".to_vec(),
            timeout_ms: 1000,
        })),
    };
    match client
        .call(&addr, propose, support::CALL_TIMEOUT)
        .await
        .unwrap()
        .kind
    {
        Some(response::Kind::Propose(data)) => assert_eq!(data, b"hello"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_to_one_peer_each_keep_their_order() {
    init_tracing();
    let addr = free_addr();
    let server = GrpcTransport::default();
    let recorder = Recorder::new(9);
    let _guard = server.serve(&addr, recorder.clone()).await.unwrap();
    let client = GrpcTransport::default();
    let mut tasks = Vec::new();
    for from in 1..=4u64 {
        let client = client.clone();
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            for seq in 0..500 {
                client.send(&addr, batch(from, 9, seq)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let got = recorder.wait_for(2_000, Duration::from_secs(20)).await;
    for from in 1..=4u64 {
        let seqs: Vec<u64> = got.iter().filter(|b| b.from == from).map(seq_of).collect();
        assert_eq!(
            seqs,
            (0..500).collect::<Vec<_>>(),
            "sender {from} reordered"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_peer_fails_fast_with_unreachable() {
    init_tracing();
    let addr = free_addr();
    let client = GrpcTransport::default();
    for _ in 0..3 {
        let started = Instant::now();
        let err = client.send(&addr, batch(1, 2, 0)).await.unwrap_err();
        assert!(
            matches!(err, TransportError::Unreachable { .. }),
            "send: {err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "send took too long"
        );
        let started = Instant::now();
        let err = client
            .call(&addr, support::status_request(), support::CALL_TIMEOUT)
            .await
            .unwrap_err();
        assert!(
            matches!(err, TransportError::Unreachable { .. }),
            "call: {err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "call took too long"
        );
    }
    // Not an address at all.
    let err = client
        .send("not an address", batch(1, 2, 0))
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Unreachable { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_comes_back_after_the_server_restarts() {
    init_tracing();
    let addr = free_addr();
    let client = GrpcTransport::default();
    let first = Recorder::new(2);
    let guard = GrpcTransport::default()
        .serve(&addr, first.clone())
        .await
        .unwrap();
    client.send(&addr, batch(1, 2, 0)).await.unwrap();
    first.wait_for(1, Duration::from_secs(5)).await;

    // The server goes away: sends start failing (raft is told the peer is unreachable),
    // calls fail as not delivered.
    drop(guard);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seq = 1;
    loop {
        let result = client.send(&addr, batch(1, 2, seq)).await;
        seq += 1;
        if let Err(e) = result {
            assert!(matches!(e, TransportError::Unreachable { .. }), "{e}");
            break;
        }
        assert!(Instant::now() < deadline, "sends kept succeeding");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let err = client
        .call(&addr, support::status_request(), support::CALL_TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Unreachable { .. }), "{err}");

    // The same address is served again at once (the guard freed the port).
    let second = Recorder::new(2);
    let _guard = GrpcTransport::default()
        .serve(&addr, second.clone())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let resumed_at = loop {
        if client.send(&addr, batch(1, 2, seq)).await.is_ok() {
            break seq;
        }
        seq += 1;
        assert!(Instant::now() < deadline, "the stream never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for s in resumed_at + 1..resumed_at + 100 {
        client.send(&addr, batch(1, 2, s)).await.unwrap();
    }
    let got = second.wait_for(100, Duration::from_secs(5)).await;
    let seqs: Vec<u64> = got.iter().map(seq_of).collect();
    assert_eq!(seqs, (resumed_at..resumed_at + 100).collect::<Vec<_>>());
    assert_eq!(status_id(&client, &addr).await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_a_busy_address_is_a_setup_error() {
    init_tracing();
    let addr = free_addr();
    let t = GrpcTransport::default();
    let _guard = t.serve(&addr, Recorder::new(1)).await.unwrap();
    let err = t.serve(&addr, Recorder::new(1)).await.unwrap_err();
    assert!(matches!(err, TransportError::Setup(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_batches_are_logged_and_the_stream_stays_up() {
    init_tracing();
    let addr = free_addr();
    let recorder = Recorder::new(2);
    let _guard = GrpcTransport::default()
        .serve(&addr, recorder.clone())
        .await
        .unwrap();
    let client = GrpcTransport::default();
    // Interleave batches for an unknown node id with good ones: the bad ones are refused,
    // the good ones all arrive, in order.
    for seq in 0..200 {
        client.send(&addr, batch(1, 2, seq)).await.unwrap();
        client.send(&addr, batch(1, 77, seq)).await.unwrap();
    }
    let got = recorder.wait_for(200, Duration::from_secs(10)).await;
    assert!(got.iter().all(|b| b.to == 2));
    let seqs: Vec<u64> = got.iter().map(seq_of).collect();
    assert_eq!(seqs, (0..200).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_maximum_message_size_is_enforced_both_ways() {
    init_tracing();
    const MAX: usize = 64 * 1024;
    let addr = free_addr();
    let recorder = Recorder::new(2);
    let server = GrpcTransport::builder()
        .max_message_size(MAX)
        .build()
        .unwrap();
    let _guard = server.serve(&addr, recorder.clone()).await.unwrap();
    let client = GrpcTransport::builder()
        .max_message_size(MAX)
        .build()
        .unwrap();

    // A batch over the limit is split into frames that fit, in order.
    let big = raft_core::wire::RaftBatch {
        cluster_id: 0,
        from: 1,
        to: 2,
        messages: (0..10u8).map(|i| vec![i; 20 * 1024]).collect(),
        from_addr: String::new(),
    };
    client.send(&addr, big.clone()).await.unwrap();
    client.send(&addr, batch(1, 2, 7)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let frames = loop {
        let got = recorder.batches();
        if got
            .last()
            .is_some_and(|b| b.messages.len() == 1 && seq_of(b) == 7)
        {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "batches did not arrive: {}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(frames.len() > 2, "the big batch was not split");
    let joined: Vec<Vec<u8>> = frames[..frames.len() - 1]
        .iter()
        .flat_map(|b| b.messages.clone())
        .collect();
    assert_eq!(joined, big.messages);

    // A single message over the limit, or a call over the limit, is refused before sending.
    let huge = raft_core::wire::RaftBatch {
        cluster_id: 0,
        from: 1,
        to: 2,
        messages: vec![vec![0; MAX + 1]],
        from_addr: String::new(),
    };
    let err = client.send(&addr, huge).await.unwrap_err();
    assert!(matches!(err, TransportError::Malformed(_)), "{err}");
    let big_call = wire::Request {
        cluster_id: 0,
        kind: Some(request::Kind::Propose(wire::ProposeRequest {
            data: vec![1; MAX + 1],
            timeout_ms: 0,
        })),
    };
    let err = client
        .call(&addr, big_call.clone(), support::CALL_TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Malformed(_)), "{err}");

    // A client with a larger limit gets its oversized call and stream frame refused by the
    // server, which keeps serving.
    let loose = GrpcTransport::default();
    let err = loose
        .call(&addr, big_call, support::CALL_TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        !matches!(err, TransportError::Unreachable { .. }),
        "refused after delivery: {err}"
    );
    let before = recorder.count();
    let oversized = raft_core::wire::RaftBatch {
        cluster_id: 0,
        from: 1,
        to: 2,
        messages: vec![vec![0; MAX * 2]],
        from_addr: String::new(),
    };
    let _ = loose.send(&addr, oversized).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(recorder.count(), before, "an oversized frame was delivered");
    assert_eq!(status_id(&client, &addr).await.unwrap(), 2);
    // The loose client's stream was cut; it reconnects and delivers again.
    let deadline = Instant::now() + Duration::from_secs(5);
    while loose.send(&addr, batch(1, 2, 99)).await.is_err() {
        assert!(Instant::now() < deadline, "never reconnected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    recorder.wait_for(before + 1, Duration::from_secs(5)).await;
}

/// Writes `bytes` on a raw TCP connection and waits for the server to close it (or a
/// timeout); returns what came back.
async fn poke(addr: &str, bytes: &[u8]) -> Vec<u8> {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let _ = conn.write_all(bytes).await;
    let mut back = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut back)).await;
    back
}

/// A gRPC request whose body does not decode as a `raftkit.v1.Request`.
async fn undecodable_call(addr: &str) -> tonic::Status {
    #[derive(Clone, PartialEq, prost::Message)]
    struct Bogus {
        // Field 1 of Request is a message; a varint there cannot decode.
        #[prost(uint64, tag = "1")]
        x: u64,
    }
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec: tonic_prost::ProstCodec<Bogus, wire::Response> = tonic_prost::ProstCodec::default();
    let path = http::uri::PathAndQuery::from_static("/raftkit.grpc.v1.Raftkit/Call");
    grpc.unary(tonic::Request::new(Bogus { x: 7 }), path, codec)
        .await
        .unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_port_is_rejected_and_the_node_keeps_serving() {
    init_tracing();
    let addr = free_addr();
    let recorder = Recorder::new(2);
    let server = GrpcTransport::builder()
        .handshake_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let _guard = server.serve(&addr, recorder.clone()).await.unwrap();
    let client = GrpcTransport::default();
    client.send(&addr, batch(1, 2, 0)).await.unwrap();

    // A connection that says nothing does not hold anything up, and is closed.
    let silent = TcpStream::connect(&addr).await.unwrap();
    // Random junk, an HTTP/1 request, a TLS hello on a plaintext port, a valid preface
    // followed by junk frames.
    let junk: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    poke(&addr, &junk).await;
    poke(&addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    poke(
        &addr,
        &[0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1],
    )
    .await;
    let mut preface_then_junk = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface_then_junk.extend_from_slice(&junk);
    poke(&addr, &preface_then_junk).await;
    // A well-formed gRPC call whose message does not decode.
    let status = undecodable_call(&addr).await;
    assert_ne!(status.code(), tonic::Code::Ok);

    // Still serving: the old stream, new calls, new clients.
    for seq in 1..=10 {
        client.send(&addr, batch(1, 2, seq)).await.unwrap();
    }
    recorder.wait_for(11, Duration::from_secs(5)).await;
    assert_eq!(status_id(&client, &addr).await.unwrap(), 2);
    assert_eq!(
        status_id(&GrpcTransport::default(), &addr).await.unwrap(),
        2
    );
    // The silent connection was closed after the handshake timeout.
    // (The server speaks first in HTTP/2: its settings frame arrives, then the close.)
    let mut silent = silent;
    let mut sink = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut sink)).await;
    assert!(
        matches!(read, Ok(Ok(_)) | Ok(Err(_))),
        "the silent connection was not closed"
    );
}
