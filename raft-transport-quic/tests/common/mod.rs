//! What the QUIC tests share: logging, a development CA, and the factory that makes a
//! transport per node for the conformance suite and `TestCluster`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use raft_core::testing::transport_conformance::{free_udp_addr, TransportFactory};
use raft_transport_quic::dev_certs::{self, DevCerts};
use raft_transport_quic::{QuicTransport, TlsConfig};

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A development CA with certificates for `nodes`, in a temporary directory.
pub struct Certs {
    pub dir: tempfile::TempDir,
    pub certs: DevCerts,
}

impl Certs {
    pub fn new(nodes: &[u64]) -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let certs = dev_certs::generate(dir.path(), nodes).unwrap();
        Certs { dir, certs }
    }

    pub fn tls(&self, id: u64) -> TlsConfig {
        self.certs.tls(id).expect("certificates for this node")
    }

    /// A transport with node `id`'s identity, tuned for tests (quick reconnects).
    pub fn transport(&self, id: u64) -> QuicTransport {
        QuicTransport::builder()
            .tls(self.tls(id))
            .connect_timeout(Duration::from_secs(1))
            .max_backoff(Duration::from_millis(500))
            .build()
            .unwrap()
    }
}

/// [`Certs::transport`]s on free loopback ports. A first attempt to reach a dead peer waits
/// out the one-second connection timeout.
pub fn quic(certs: Arc<Certs>) -> TransportFactory {
    TransportFactory::new(move |id| Arc::new(certs.transport(id)), |_| free_udp_addr())
        .unreachable_within(Duration::from_secs(3))
}
