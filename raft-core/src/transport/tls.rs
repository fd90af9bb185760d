//! TLS settings shared by every raftkit transport: a node's identity and the cluster CA it
//! trusts, as PEM files or bytes, turned into rustls configurations on the ring provider
//! (never aws-lc; see DESIGN "Dependency notes").
//!
//! A transport adds only what is its own (ALPN, protocol versions, how its library takes the
//! configuration).
//!
//! ```
//! use raft_core::transport::tls::{ClientAuth, TlsConfig};
//! let mtls = TlsConfig::mutual("certs/ca.pem", "certs/node1.pem", "certs/node1.key");
//! let tls = TlsConfig::server_auth("certs/ca.pem", "certs/node1.pem", "certs/node1.key");
//! assert_eq!(mtls.client_auth, ClientAuth::Required);
//! assert_eq!(tls.client_auth, ClientAuth::None);
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};

use super::identity::read_private_key;
use crate::error::TransportError;

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
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// The cluster CA certificate(s), PEM. Peers' certificates must chain to one of them.
    pub ca: PathBuf,
    /// This node's certificate chain, PEM (leaf first). It must name the address peers dial
    /// (an IP or DNS subject alternative name, e.g. `127.0.0.1` or `node1.example`) and allow
    /// server authentication, plus client authentication for mutual TLS.
    pub cert: PathBuf,
    /// This node's private key, PEM (PKCS#8, PKCS#1 or SEC1). Refused when group or others
    /// may read the file.
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

    /// Reads the three files. An empty path reads as no PEM: a server with
    /// [`ClientAuth::None`] needs no CA, and a client with [`ClientAuth::None`] no certificate
    /// or key.
    pub fn read(&self) -> Result<TlsPem, TransportError> {
        let read = |what: &str, path: &std::path::Path| {
            if path.as_os_str().is_empty() {
                return Ok(Vec::new());
            }
            std::fs::read(path).map_err(|e| {
                TransportError::Setup(format!("cannot read the {what} {}: {e}", path.display()))
            })
        };
        let ca = read("CA certificate", &self.ca)?;
        let cert = read("certificate", &self.cert)?;
        let key = if self.key.as_os_str().is_empty() {
            Vec::new()
        } else {
            read_private_key(&self.key)?
        };
        Ok(TlsPem {
            ca,
            cert,
            key,
            client_auth: self.client_auth,
            server_name: self.server_name.clone(),
            origin: Some(self.clone()),
        })
    }
}

/// TLS material in memory (PEM bytes), read from a [`TlsConfig`] or given directly.
#[derive(Clone)]
pub struct TlsPem {
    /// The cluster CA certificate(s).
    pub ca: Vec<u8>,
    /// This node's certificate chain.
    pub cert: Vec<u8>,
    key: Vec<u8>,
    /// Whether clients must present a certificate too.
    pub client_auth: ClientAuth,
    /// The name to verify in peers' certificates instead of the dialled host.
    pub server_name: Option<String>,
    /// The files it came from, for error messages.
    origin: Option<TlsConfig>,
}

impl std::fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("TlsPem")
            .field("origin", &self.origin)
            .field("client_auth", &self.client_auth)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// The crypto provider: always ring, whatever other crates enabled.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsPem {
    /// Mutual TLS from PEM bytes: the CA certificate(s), this node's certificate chain and its
    /// private key.
    pub fn mutual(
        ca: impl Into<Vec<u8>>,
        cert: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Self {
        TlsPem {
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
            client_auth: ClientAuth::Required,
            server_name: None,
            origin: None,
        }
    }

    /// This node's private key, PEM.
    pub fn key_pem(&self) -> &[u8] {
        &self.key
    }

    fn source(&self, which: fn(&TlsConfig) -> &PathBuf) -> String {
        match &self.origin {
            Some(files) => which(files).display().to_string(),
            None => "(PEM given in memory)".to_string(),
        }
    }

    fn setup(
        &self,
        what: &str,
        which: fn(&TlsConfig) -> &PathBuf,
        e: impl std::fmt::Display,
    ) -> TransportError {
        TransportError::Setup(format!("{what} {}: {e}", self.source(which)))
    }

    fn certs(
        &self,
        what: &str,
        which: fn(&TlsConfig) -> &PathBuf,
        pem: &[u8],
    ) -> Result<Vec<CertificateDer<'static>>, TransportError> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.setup(&format!("bad PEM in the {what}"), which, e))?;
        if certs.is_empty() {
            return Err(self.setup(
                &format!("no certificate in the {what}"),
                which,
                "no CERTIFICATE block",
            ));
        }
        Ok(certs)
    }

    /// This node's private key, parsed.
    pub fn private_key(&self) -> Result<PrivateKeyDer<'static>, TransportError> {
        PrivateKeyDer::from_pem_slice(&self.key)
            .map_err(|e| self.setup("no usable private key in", |f| &f.key, e))
    }

    fn chain(&self) -> Result<Vec<CertificateDer<'static>>, TransportError> {
        self.certs("certificate", |f| &f.cert, &self.cert)
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TransportError> {
        let mut roots = RootCertStore::empty();
        for c in self.certs("CA certificate", |f| &f.ca, &self.ca)? {
            roots
                .add(c)
                .map_err(|e| self.setup("unusable CA certificate in", |f| &f.ca, e))?;
        }
        Ok(Arc::new(roots))
    }

    /// The server side: presents this node's certificate; with [`ClientAuth::Required`],
    /// accepts only clients whose certificate chains to the CA. Offers `alpn`.
    pub fn server_config(
        &self,
        versions: &[&'static SupportedProtocolVersion],
        alpn: &[u8],
    ) -> Result<ServerConfig, TransportError> {
        let provider = crypto_provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| TransportError::Setup(format!("TLS versions: {e}")))?;
        let builder = match self.client_auth {
            ClientAuth::None => builder.with_no_client_auth(),
            ClientAuth::Required => {
                let verifier = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider)
                    .build()
                    .map_err(|e| self.setup("cannot verify clients with", |f| &f.ca, e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(self.chain()?, self.private_key()?)
            .map_err(|e| self.setup("certificate and key do not fit", |f| &f.cert, e))?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(config)
    }

    /// The client side: trusts servers whose certificate chains to the CA; with
    /// [`ClientAuth::Required`], presents this node's certificate. Offers `alpn`.
    pub fn client_config(
        &self,
        versions: &[&'static SupportedProtocolVersion],
        alpn: &[u8],
    ) -> Result<ClientConfig, TransportError> {
        let builder = ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(versions)
            .map_err(|e| TransportError::Setup(format!("TLS versions: {e}")))?
            .with_root_certificates(self.roots()?);
        let mut config = match self.client_auth {
            ClientAuth::None => builder.with_no_client_auth(),
            ClientAuth::Required => builder
                .with_client_auth_cert(self.chain()?, self.private_key()?)
                .map_err(|e| self.setup("certificate and key do not fit", |f| &f.cert, e))?,
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::panic)]
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
        let pem = TlsPem::mutual("not pem", "not pem", "not pem");
        let versions = rustls::DEFAULT_VERSIONS;
        assert!(matches!(
            pem.server_config(versions, b"x"),
            Err(TransportError::Setup(_))
        ));
        assert!(matches!(
            pem.client_config(versions, b"x"),
            Err(TransportError::Setup(_))
        ));
    }
}
