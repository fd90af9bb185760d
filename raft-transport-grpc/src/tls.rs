//! TLS for gRPC: raft-core's shared TLS material turned into a rustls server configuration
//! (ALPN `h2`) and tonic's client configuration.

use std::sync::Arc;

use raft_core::transport::tls::{ClientAuth, TlsPem};
use raft_core::TransportError;
use rustls::ServerConfig;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// The loaded, checked TLS material.
#[derive(Clone)]
pub(crate) struct LoadedTls {
    pub(crate) server: Arc<ServerConfig>,
    pub(crate) client: ClientTlsConfig,
}

/// Builds the server and client configurations, so that bad PEM fails here rather than at
/// the first connection.
pub(crate) fn load(pem: &TlsPem) -> Result<LoadedTls, TransportError> {
    let server = pem.server_config(rustls::DEFAULT_VERSIONS, b"h2")?;
    let mut client = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pem.ca));
    if pem.client_auth == ClientAuth::Required {
        client = client.identity(Identity::from_pem(&pem.cert, pem.key_pem()));
    }
    if let Some(name) = &pem.server_name {
        client = client.domain_name(name.clone());
    }
    // Parse the client side now too: tonic checks it only when an endpoint takes it.
    tonic::transport::Endpoint::from_static("https://127.0.0.1:1")
        .tls_config(client.clone())
        .map_err(|e| TransportError::Setup(format!("client TLS configuration: {e}")))?;
    Ok(LoadedTls {
        server: Arc::new(server),
        client,
    })
}
