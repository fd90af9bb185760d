//! TLS: server-authenticated and mutual, certificates from PEM files, and who gets refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use raft_core::{Transport, TransportError};
use raft_transport_grpc::{GrpcTransport, TlsConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use raft_core::testing::transport_conformance::{batch, free_tcp_addr, status_id, Recorder};
use support::{init_tracing, Pki};

/// Sends until the stream is up (or fails for good) and returns the last result.
async fn try_send(t: &GrpcTransport, addr: &str) -> Result<(), TransportError> {
    let mut last = Ok(());
    for seq in 0..5 {
        last = t.send(addr, batch(1, 2, seq)).await;
        if last.is_ok() {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_authenticated_tls() {
    init_tracing();
    let pki = Pki::new("cluster");
    let addr = free_tcp_addr();
    let recorder = Recorder::new(2);
    let server = GrpcTransport::with_tls(pki.server_auth("server")).unwrap();
    let _guard = server.serve(&addr, recorder.clone()).await.unwrap();

    let client = GrpcTransport::with_tls(pki.server_auth("client")).unwrap();
    assert_eq!(status_id(&client, &addr).await.unwrap(), 2);
    try_send(&client, &addr).await.unwrap();
    recorder.wait_for(1, Duration::from_secs(5)).await;

    // A plaintext client cannot talk to a TLS server.
    let plain = GrpcTransport::default();
    assert!(status_id(&plain, &addr).await.is_err());
    assert!(try_send(&plain, &addr).await.is_err());

    // A client that trusts another CA refuses the server's certificate.
    let other = Pki::new("other");
    let stranger = GrpcTransport::with_tls(other.server_auth("stranger")).unwrap();
    let err = status_id(&stranger, &addr).await.unwrap_err();
    assert!(matches!(err, TransportError::Unreachable { .. }), "{err}");
    assert!(try_send(&stranger, &addr).await.is_err());

    // The server name to verify can be set: "localhost" is in the certificate, "elsewhere"
    // is not.
    let (cert, key) = pki.node("named");
    let named = GrpcTransport::with_tls(
        TlsConfig::server_auth(pki.ca(), &cert, &key).with_server_name("localhost"),
    )
    .unwrap();
    assert_eq!(status_id(&named, &addr).await.unwrap(), 2);
    let misnamed = GrpcTransport::with_tls(
        TlsConfig::server_auth(pki.ca(), &cert, &key).with_server_name("elsewhere"),
    )
    .unwrap();
    assert!(status_id(&misnamed, &addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_the_cluster_ca() {
    init_tracing();
    let pki = Pki::new("cluster");
    let addr = free_tcp_addr();
    let recorder = Recorder::new(2);
    let server = GrpcTransport::with_tls(pki.mutual("server")).unwrap();
    let _guard = server.serve(&addr, recorder.clone()).await.unwrap();

    let member = GrpcTransport::with_tls(pki.mutual("member")).unwrap();
    assert_eq!(status_id(&member, &addr).await.unwrap(), 2);
    try_send(&member, &addr).await.unwrap();
    recorder.wait_for(1, Duration::from_secs(5)).await;

    // No client certificate.
    let anonymous = GrpcTransport::with_tls(pki.server_auth("anonymous")).unwrap();
    assert!(status_id(&anonymous, &addr).await.is_err());
    assert!(try_send(&anonymous, &addr).await.is_err());

    // A certificate from another CA, even while trusting the cluster CA.
    let other = Pki::new("rogue");
    let (cert, key) = other.node("rogue");
    let rogue = GrpcTransport::with_tls(TlsConfig::mutual(pki.ca(), cert, key)).unwrap();
    assert!(status_id(&rogue, &addr).await.is_err());
    assert!(try_send(&rogue, &addr).await.is_err());
    assert_eq!(
        recorder.count(),
        1,
        "a refused client delivered raft messages"
    );

    // Garbage on the TLS port, then the server still serves members.
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let _ = conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut sink)).await;
    assert_eq!(status_id(&member, &addr).await.unwrap(), 2);
    assert_eq!(
        status_id(&GrpcTransport::with_tls(pki.mutual("late")).unwrap(), &addr)
            .await
            .unwrap(),
        2
    );
}

#[tokio::test]
async fn bad_certificate_files_are_setup_errors() {
    let pki = Pki::new("cluster");
    let (cert, key) = pki.node("n");
    let missing = TlsConfig::mutual(pki.ca(), &cert, "/nonexistent/key.pem");
    assert!(matches!(
        GrpcTransport::with_tls(missing),
        Err(TransportError::Setup(_))
    ));
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    for config in [
        TlsConfig::mutual(&junk, &cert, &key),
        TlsConfig::mutual(pki.ca(), &junk, &key),
        TlsConfig::mutual(pki.ca(), &cert, &junk),
        // A key that does not belong to the certificate.
        TlsConfig::mutual(pki.ca(), &cert, pki.node("other").1),
    ] {
        let err = GrpcTransport::with_tls(config).unwrap_err();
        assert!(matches!(err, TransportError::Setup(_)), "{err}");
    }
}
