//! Mutual TLS against a cluster CA: raft-core's shared TLS settings turned into quinn's crypto
//! configurations.
//!
//! QUIC always encrypts (TLS 1.3). Here both sides also authenticate: a server accepts only
//! clients whose certificate chains to the cluster CA, and a client accepts only servers whose
//! certificate chains to it and names the address dialled (or the configured server name).

use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use raft_core::transport::tls::{ClientAuth, TlsPem};
use raft_core::TransportError;

/// The ALPN protocol every raftkit QUIC connection negotiates; a client offering anything else
/// is refused during the handshake.
pub const ALPN: &[u8] = b"raftkit-quic/1";

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

/// Builds both sides' configurations (TLS 1.3, ALPN [`ALPN`], no 0-RTT), so a bad file fails
/// at build time rather than at the first connection.
pub(crate) fn load(pem: &TlsPem) -> Result<LoadedTls, TransportError> {
    if pem.client_auth != ClientAuth::Required {
        return Err(TransportError::Setup(
            "the QUIC transport always uses mutual TLS: use TlsConfig::mutual".into(),
        ));
    }
    let versions = &[&rustls::version::TLS13];
    let mut server = pem.server_config(versions, ALPN)?;
    // No 0-RTT: raft messages and calls must not be replayable.
    server.max_early_data_size = 0;
    let server = QuicServerConfig::try_from(Arc::new(server))
        .map_err(|e| TransportError::Setup(format!("QUIC server TLS: {e}")))?;
    let mut client = pem.client_config(versions, ALPN)?;
    client.enable_early_data = false;
    let client = QuicClientConfig::try_from(Arc::new(client))
        .map_err(|e| TransportError::Setup(format!("QUIC client TLS: {e}")))?;
    Ok(LoadedTls {
        server: Arc::new(server),
        client: Arc::new(client),
        server_name: pem.server_name.clone(),
        reset_seed: pem.private_key()?.secret_der().to_vec(),
    })
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
    fn server_authenticated_tls_is_refused() {
        let mut pem = TlsPem::mutual("ca", "cert", "key");
        pem.client_auth = ClientAuth::None;
        assert!(matches!(load(&pem), Err(TransportError::Setup(_))));
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
