//! `GrpcTransport` against the transport conformance suite, plaintext and with mutual TLS,
//! plus what only gRPC has: HTTP/2 garbage on its port.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use raft_core::testing::transport_conformance::{
    self as conformance, batch, free_tcp_addr, status_id, Recorder, TransportFactory,
};
use raft_core::wire;
use raft_core::Transport;
use raft_transport_grpc::GrpcTransport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{init_tracing, mutual_tls, plain, Pki};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_meets_the_transport_contract() {
    init_tracing();
    conformance::run_all(&plain()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_meets_the_transport_contract() {
    init_tracing();
    conformance::run_all(&mutual_tls(Arc::new(Pki::new("cluster")))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_maximum_message_size_is_enforced_both_ways() {
    init_tracing();
    const MAX: usize = 64 * 1024;
    let limited = TransportFactory::new(
        |_| {
            Arc::new(
                GrpcTransport::builder()
                    .max_message_size(MAX)
                    .build()
                    .unwrap(),
            )
        },
        |_| free_tcp_addr(),
    );
    conformance::oversized_messages_are_split_or_refused(&limited, MAX).await;
    conformance::oversized_inbound_is_refused(&limited, &plain(), MAX).await;
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
    let addr = free_tcp_addr();
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
