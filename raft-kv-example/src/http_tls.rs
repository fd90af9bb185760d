//! rustls configurations for the HTTP API, server and CLI, from raft-core's shared TLS
//! loading (ring provider only). Both speak HTTP/1.1 (ALPN `http/1.1`).

use std::path::Path;

use anyhow::Result;
use raft_core::transport::tls::{ClientAuth, TlsConfig};
use rustls::{ClientConfig, ServerConfig};

/// ALPN protocol both sides offer.
const HTTP1: &[u8] = b"http/1.1";

/// The HTTPS server's configuration: `cert` (chain, PEM) and `key`; with `client_ca`, clients
/// must present a certificate chaining to it.
pub fn server_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<ServerConfig> {
    let tls = TlsConfig {
        ca: client_ca.unwrap_or(Path::new("")).into(),
        cert: cert.into(),
        key: key.into(),
        client_auth: match client_ca {
            Some(_) => ClientAuth::Required,
            None => ClientAuth::None,
        },
        server_name: None,
    };
    Ok(tls.read()?.server_config(rustls::DEFAULT_VERSIONS, HTTP1)?)
}

/// The CLI's configuration: trust the CA in `ca` (PEM); present `identity` (certificate,
/// key) when given.
pub fn client_config(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientConfig> {
    let (cert, key) = identity.unwrap_or((Path::new(""), Path::new("")));
    let tls = TlsConfig {
        ca: ca.into(),
        cert: cert.into(),
        key: key.into(),
        client_auth: match identity {
            Some(_) => ClientAuth::Required,
            None => ClientAuth::None,
        },
        server_name: None,
    };
    Ok(tls.read()?.client_config(rustls::DEFAULT_VERSIONS, HTTP1)?)
}
