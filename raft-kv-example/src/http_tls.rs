//! rustls configurations for the HTTP API, server and CLI, on the ring provider only (never
//! aws-lc; see DESIGN "Dependency notes"). Both speak HTTP/1.1 (ALPN `http/1.1`).

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// ALPN protocol both sides offer.
const HTTP1: &[u8] = b"http/1.1";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM file (at least one).
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("reading the certificate file {}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        bail!("{}: no certificate in the file", path.display());
    }
    Ok(certs)
}

/// The private key of a PEM file (refused when group or others may read it).
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = raft_core::transport::read_private_key(path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| anyhow!("{}: no PEM private key in the file: {e}", path.display()))
}

/// A trust store holding the CA certificates of a PEM file.
fn read_roots(path: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .with_context(|| format!("{}: not a usable CA certificate", path.display()))?;
    }
    Ok(roots)
}

/// The HTTPS server's configuration: `cert` (chain, PEM) and `key`; with `client_ca`, clients
/// must present a certificate chaining to it.
pub fn server_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<ServerConfig> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(read_roots(ca)?), provider)
                    .build()
                    .with_context(|| format!("client CA {}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(read_certs(cert)?, read_key(key)?)
        .with_context(|| {
            format!(
                "the HTTPS certificate {} and key {} do not make a pair",
                cert.display(),
                key.display()
            )
        })?;
    config.alpn_protocols = vec![HTTP1.to_vec()];
    Ok(config)
}

/// The CLI's configuration: trust the CA in `ca` (PEM); present `identity` (certificate,
/// key) when given.
pub fn client_config(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(read_roots(ca)?);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
            .with_context(|| {
                format!(
                    "the client certificate {} and key {} do not make a pair",
                    cert.display(),
                    key.display()
                )
            })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![HTTP1.to_vec()];
    Ok(config)
}
