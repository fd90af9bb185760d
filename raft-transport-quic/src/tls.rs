//! Mutual TLS against a cluster CA: PEM loading and the rustls / quinn crypto configurations.
//!
//! QUIC always encrypts (TLS 1.3). Here both sides also authenticate: a server accepts only
//! clients whose certificate chains to the cluster CA, and a client accepts only servers whose
//! certificate chains to it and names the address dialled (or the configured server name).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use raft_core::TransportError;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The ALPN protocol every raftkit QUIC connection negotiates; a client offering anything else
/// is refused during the handshake.
pub const ALPN: &[u8] = b"raftkit-quic/1";

/// A node's TLS identity and the CA it trusts, as PEM files. QUIC is always encrypted and this
/// transport always uses mutual TLS: every node presents `cert` both as server and as client.
///
/// The files [`dev_certs::generate`](crate::dev_certs::generate) writes fit directly:
///
/// ```
/// use raft_transport_quic::TlsConfig;
/// let tls = TlsConfig::mutual("certs/ca.pem", "certs/node-1.pem", "certs/node-1.key")
///     .with_server_name("localhost");
/// assert_eq!(tls.server_name.as_deref(), Some("localhost"));
/// ```
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// The cluster CA certificate(s), PEM. Peers' certificates must chain to one of them.
    pub ca: PathBuf,
    /// This node's certificate chain, PEM (leaf first). It must name the address peers dial
    /// (an IP or DNS subject alternative name, e.g. `127.0.0.1` or `node1.example`) and allow
    /// both server and client authentication.
    pub cert: PathBuf,
    /// This node's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The name to verify in peers' certificates instead of the host part of the address
    /// they are dialled at (for certificates that all carry one cluster-wide DNS name).
    pub server_name: Option<String>,
}

impl TlsConfig {
    /// Mutual TLS: this node presents `cert` (issued by `ca`) as server and as client, and
    /// accepts only peers whose certificates chain to `ca`. The same call exists on the gRPC
    /// transport's `TlsConfig`, so one line switches transports.
    pub fn mutual(
        ca: impl Into<PathBuf>,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        TlsConfig {
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
            server_name: None,
        }
    }

    /// Verifies peers' certificates against `name` rather than the host they are dialled at.
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    pub(crate) fn read(&self) -> Result<TlsPem, TransportError> {
        Ok(TlsPem {
            ca: read("CA certificate", &self.ca)?,
            cert: read("certificate", &self.cert)?,
            key: raft_core::transport::read_private_key(&self.key)?,
            server_name: self.server_name.clone(),
            origin: Some(self.clone()),
        })
    }
}

/// TLS material in memory (PEM bytes), from files or given directly.
#[derive(Clone)]
pub(crate) struct TlsPem {
    pub(crate) ca: Vec<u8>,
    pub(crate) cert: Vec<u8>,
    pub(crate) key: Vec<u8>,
    pub(crate) server_name: Option<String>,
    /// The files it came from, for error messages.
    pub(crate) origin: Option<TlsConfig>,
}

impl std::fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("TlsPem")
            .field("origin", &self.origin)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// The loaded, checked TLS material of one transport.
#[derive(Clone)]
pub(crate) struct LoadedTls {
    pub(crate) server: Arc<QuicServerConfig>,
    pub(crate) client: Arc<QuicClientConfig>,
    /// Verify servers against this name instead of the dialled host.
    pub(crate) server_name: Option<String>,
    /// Secret material from which a server derives its stateless-reset key.
    pub(crate) reset_seed: Vec<u8>,
}

fn setup(what: &str, source: &str, e: impl std::fmt::Display) -> TransportError {
    TransportError::Setup(format!("{what} {source}: {e}"))
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path).map_err(|e| {
        setup(
            &format!("cannot read the {what}"),
            &path.display().to_string(),
            e,
        )
    })
}

fn certs(
    what: &str,
    source: &str,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| setup(&format!("bad PEM in the {what}"), source, e))?;
    if certs.is_empty() {
        return Err(setup(
            &format!("no certificate in the {what}"),
            source,
            "no CERTIFICATE block",
        ));
    }
    Ok(certs)
}

/// The crypto provider: always ring (no aws-lc), whatever other crates enabled.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsPem {
    fn source(&self, which: fn(&TlsConfig) -> &PathBuf) -> String {
        match &self.origin {
            Some(files) => which(files).display().to_string(),
            None => "(PEM given in memory)".to_string(),
        }
    }

    /// Parses the PEM and builds both sides' configurations, so a bad file fails at build
    /// time rather than at the first connection.
    pub(crate) fn load(&self) -> Result<LoadedTls, TransportError> {
        let ca_src = self.source(|f| &f.ca);
        let cert_src = self.source(|f| &f.cert);
        let key_src = self.source(|f| &f.key);
        let ca = certs("CA certificate", &ca_src, &self.ca)?;
        let chain = certs("certificate", &cert_src, &self.cert)?;
        let key = PrivateKeyDer::from_pem_slice(&self.key)
            .map_err(|e| setup("no usable private key in", &key_src, e))?;
        let reset_seed = key.secret_der().to_vec();

        let mut roots = RootCertStore::empty();
        for c in &ca {
            roots
                .add(c.clone())
                .map_err(|e| setup("unusable CA certificate in", &ca_src, e))?;
        }
        let roots = Arc::new(roots);
        let provider = provider();

        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| setup("cannot verify clients with", &ca_src, e))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TransportError::Setup(format!("TLS versions: {e}")))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| setup("certificate and key do not fit", &cert_src, e))?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        // No 0-RTT: raft messages and calls must not be replayable.
        server.max_early_data_size = 0;
        let server = QuicServerConfig::try_from(Arc::new(server))
            .map_err(|e| TransportError::Setup(format!("QUIC server TLS: {e}")))?;

        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TransportError::Setup(format!("TLS versions: {e}")))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| setup("certificate and key do not fit", &cert_src, e))?;
        client.alpn_protocols = vec![ALPN.to_vec()];
        client.enable_early_data = false;
        let client = QuicClientConfig::try_from(Arc::new(client))
            .map_err(|e| TransportError::Setup(format!("QUIC client TLS: {e}")))?;

        Ok(LoadedTls {
            server: Arc::new(server),
            client: Arc::new(client),
            server_name: self.server_name.clone(),
            reset_seed,
        })
    }
}

/// The stateless-reset key and connection-ID key of a server endpoint, derived from the
/// node's private key and its listening address. A node restarted at the same address (after
/// a crash that sent no CONNECTION_CLOSE) thus recognizes the connection IDs of its previous
/// incarnation as its own and answers their packets with a valid stateless reset: peers drop
/// the stale connection and reconnect at once instead of waiting for the idle timeout.
pub(crate) fn restart_keys(seed: &[u8], addr: &str) -> (ring::hmac::Key, u64) {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(b"raftkit-quic restart keys v1\0");
    context.update(seed);
    context.update(b"\0");
    context.update(addr.as_bytes());
    let secret = context.finish();
    let reset = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_ref());
    let tag = ring::hmac::sign(&reset, b"connection id key");
    let mut cid = [0u8; 8];
    cid.copy_from_slice(&tag.as_ref()[..8]);
    (reset, u64::from_le_bytes(cid))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn missing_files_are_setup_errors_naming_the_file() {
        let tls = TlsConfig::mutual("/nonexistent/ca.pem", "/nonexistent/c.pem", "/x/k.pem");
        match tls.read() {
            Err(TransportError::Setup(m)) => assert!(m.contains("/nonexistent/ca.pem"), "{m}"),
            other => panic!("expected a setup error, got {other:?}"),
        }
    }

    #[test]
    fn garbage_pem_is_a_setup_error() {
        let pem = TlsPem {
            ca: b"not pem".to_vec(),
            cert: b"not pem".to_vec(),
            key: b"not pem".to_vec(),
            server_name: None,
            origin: None,
        };
        assert!(matches!(pem.load(), Err(TransportError::Setup(_))));
    }

    #[test]
    fn restart_keys_are_stable_per_key_and_address() {
        use ring::hmac;
        let (ka, ca) = restart_keys(b"k", "127.0.0.1:1");
        let (kb, cb) = restart_keys(b"k", "127.0.0.1:1");
        let (kc, cc) = restart_keys(b"k", "127.0.0.1:2");
        let (kd, cd) = restart_keys(b"other key", "127.0.0.1:1");
        let sign = |k: &hmac::Key| hmac::sign(k, b"cid").as_ref().to_vec();
        assert_eq!(sign(&ka), sign(&kb));
        assert_eq!(ca, cb);
        assert_ne!(sign(&ka), sign(&kc));
        assert_ne!(sign(&ka), sign(&kd));
        assert!(ca != cc && ca != cd);
    }
}
