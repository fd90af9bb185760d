//! What the gRPC tests share: logging, a throwaway PKI, and the factories that make a
//! transport per node for the conformance suite and `TestCluster`.

#![allow(
    dead_code,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::path::PathBuf;
use std::sync::Arc;

use raft_core::testing::transport_conformance::{free_tcp_addr, TransportFactory};
use raft_core::Transport;
use raft_transport_grpc::{GrpcTransport, TlsConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// Logs to the test output; `RUST_LOG` picks the level (default: warnings).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Plaintext transports on free loopback ports.
pub fn plain() -> TransportFactory {
    TransportFactory::new(|_| Arc::new(GrpcTransport::default()), |_| free_tcp_addr())
}

/// Mutual TLS transports, each presenting a certificate of `pki` that names its node.
pub fn mutual_tls(pki: Arc<Pki>) -> TransportFactory {
    // Issued up front, so a node keeps its certificate across restarts.
    let configs: Vec<TlsConfig> = (0..10)
        .map(|id| pki.mutual_as(&format!("node{id}"), id))
        .collect();
    TransportFactory::new(
        move |id| {
            let _files_live_in = &pki;
            Arc::new(GrpcTransport::with_tls(configs[id as usize].clone()).unwrap())
                as Arc<dyn Transport>
        },
        |_| free_tcp_addr(),
    )
}

/// A certificate authority in a temporary directory, issuing node certificates for
/// `127.0.0.1` and `localhost`.
pub struct Pki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
        Pki {
            dir,
            issuer: Issuer::new(params, key),
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Writes `name.pem` and `name.key`, a certificate for 127.0.0.1 / localhost usable as
    /// server and client, naming no node id.
    pub fn node(&self, name: &str) -> (PathBuf, PathBuf) {
        self.identity(name, None)
    }

    /// Like [`Pki::node`], naming node `id` (`raftkit://node/<id>`) when given.
    pub fn identity(&self, name: &str, id: Option<u64>) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        if let Some(id) = id {
            params.subject_alt_names.push(SanType::URI(
                raft_core::transport::node_uri(id).try_into().unwrap(),
            ));
        }
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let cert_path = self.dir.path().join(format!("{name}.pem"));
        let key_path = self.dir.path().join(format!("{name}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        (cert_path, key_path)
    }

    pub fn mutual(&self, name: &str) -> TlsConfig {
        let (cert, key) = self.node(name);
        TlsConfig::mutual(self.ca(), cert, key)
    }

    /// Mutual TLS with a certificate naming node `id`.
    pub fn mutual_as(&self, name: &str, id: u64) -> TlsConfig {
        let (cert, key) = self.identity(name, Some(id));
        TlsConfig::mutual(self.ca(), cert, key)
    }

    pub fn server_auth(&self, name: &str) -> TlsConfig {
        let (cert, key) = self.node(name);
        TlsConfig::server_auth(self.ca(), cert, key)
    }
}
