//! TLS settings: server-authenticated TLS or mutual TLS against a cluster CA, from PEM files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use raft_core::TransportError;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// Who proves what during the TLS handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Servers prove their identity; clients present no certificate.
    None,
    /// Both sides present a certificate issued by the cluster CA (mutual TLS): a node whose
    /// certificate comes from another CA can neither connect nor be connected to.
    Required,
}

/// A node's TLS identity and the CA it trusts, as PEM files.
///
/// ```
/// use raft_transport_grpc::TlsConfig;
/// let mtls = TlsConfig::mutual("certs/ca.pem", "certs/node1.pem", "certs/node1.key");
/// let tls = TlsConfig::server_auth("certs/ca.pem", "certs/node1.pem", "certs/node1.key");
/// assert_ne!(mtls.client_auth, tls.client_auth);
/// ```
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// The cluster CA certificate(s), PEM. Peers' certificates must chain to one of them.
    pub ca: PathBuf,
    /// This node's certificate chain, PEM (leaf first). It must name the address peers dial
    /// (an IP or DNS subject alternative name, e.g. `127.0.0.1` or `node1.example`) and allow
    /// server authentication, plus client authentication for mutual TLS.
    pub cert: PathBuf,
    /// This node's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Whether clients must present a certificate too.
    pub client_auth: ClientAuth,
    /// The name to verify in peers' certificates instead of the host part of the address
    /// they are dialled at (for certificates that all carry one cluster-wide DNS name).
    pub server_name: Option<String>,
}

impl TlsConfig {
    /// Mutual TLS: every node presents `cert` (issued by `ca`) both as server and as client,
    /// and accepts only peers whose certificates chain to `ca`.
    pub fn mutual(
        ca: impl Into<PathBuf>,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        TlsConfig {
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
            client_auth: ClientAuth::Required,
            server_name: None,
        }
    }

    /// Server-authenticated TLS: servers present `cert`, clients check it against `ca` and
    /// present nothing.
    pub fn server_auth(
        ca: impl Into<PathBuf>,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        TlsConfig {
            client_auth: ClientAuth::None,
            ..Self::mutual(ca, cert, key)
        }
    }

    /// Verifies peers' certificates against `name` rather than the host they are dialled at.
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }
}

/// The loaded, checked TLS material.
#[derive(Clone)]
pub(crate) struct LoadedTls {
    pub(crate) server: Arc<ServerConfig>,
    pub(crate) client: ClientTlsConfig,
}

fn setup(what: &str, path: &Path, e: impl std::fmt::Display) -> TransportError {
    TransportError::Setup(format!("{what} {}: {e}", path.display()))
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path).map_err(|e| setup(&format!("cannot read the {what}"), path, e))
}

fn certs(
    what: &str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| setup(&format!("bad PEM in the {what}"), path, e))?;
    if certs.is_empty() {
        return Err(setup(
            &format!("no certificate in the {what}"),
            path,
            "empty",
        ));
    }
    Ok(certs)
}

/// The crypto provider: always ring (no aws-lc), whatever other crates enabled.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsConfig {
    /// Reads the PEM files and builds the server and client configurations, so that a bad
    /// file fails here rather than at the first connection.
    pub(crate) fn load(&self) -> Result<LoadedTls, TransportError> {
        let ca_pem = read("CA certificate", &self.ca)?;
        let cert_pem = read("certificate", &self.cert)?;
        let key_pem = raft_core::transport::read_private_key(&self.key)?;
        let ca = certs("CA certificate", &self.ca, &ca_pem)?;
        let chain = certs("certificate", &self.cert, &cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| setup("no usable private key in", &self.key, e))?;

        let mut roots = RootCertStore::empty();
        for c in &ca {
            roots
                .add(c.clone())
                .map_err(|e| setup("unusable CA certificate in", &self.ca, e))?;
        }
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TransportError::Setup(format!("TLS versions: {e}")))?;
        let builder = match self.client_auth {
            ClientAuth::None => builder.with_no_client_auth(),
            ClientAuth::Required => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| setup("cannot verify clients with", &self.ca, e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut server = builder
            .with_single_cert(chain, key)
            .map_err(|e| setup("certificate and key do not fit", &self.cert, e))?;
        server.alpn_protocols = vec![b"h2".to_vec()];

        let mut client = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem));
        if self.client_auth == ClientAuth::Required {
            client = client.identity(Identity::from_pem(&cert_pem, &key_pem));
        }
        if let Some(name) = &self.server_name {
            client = client.domain_name(name.clone());
        }
        // Parse the client side now too: tonic checks it when an endpoint takes it.
        tonic::transport::Endpoint::from_static("https://127.0.0.1:1")
            .tls_config(client.clone())
            .map_err(|e| TransportError::Setup(format!("client TLS configuration: {e}")))?;
        Ok(LoadedTls {
            server: Arc::new(server),
            client,
        })
    }
}
