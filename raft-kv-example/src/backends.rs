//! Picks the transport and log storage a node runs on (cargo features `grpc`, `quic`,
//! `rocksdb`, all on by default).

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use raft_core::{LogStorage, MemLogStorage, Transport};

use crate::{StorageKind, TlsArgs, TransportKind};

/// The three TLS files, when all are given; an error when only some are.
fn tls_files(tls: &TlsArgs) -> Result<Option<(&Path, &Path, &Path)>> {
    match (&tls.tls_ca, &tls.tls_cert, &tls.tls_key) {
        (Some(ca), Some(cert), Some(key)) => Ok(Some((ca, cert, key))),
        (None, None, None) => Ok(None),
        _ => bail!("--tls-ca, --tls-cert and --tls-key go together"),
    }
}

/// The raft transport: gRPC (mutual TLS when the TLS flags are given) or QUIC (always mutual
/// TLS).
pub fn transport(kind: TransportKind, tls: &TlsArgs) -> Result<Arc<dyn Transport>> {
    let files = tls_files(tls)?;
    match kind {
        #[cfg(feature = "grpc")]
        TransportKind::Grpc => {
            use raft_transport_grpc::{GrpcTransport, TlsConfig};
            let transport = match files {
                Some((ca, cert, key)) => GrpcTransport::with_tls(TlsConfig::mutual(ca, cert, key)),
                None => Ok(GrpcTransport::new()),
            };
            Ok(Arc::new(
                transport.context("setting up the gRPC transport")?,
            ))
        }
        #[cfg(feature = "quic")]
        TransportKind::Quic => {
            use raft_transport_quic::{QuicTransport, TlsConfig};
            let Some((ca, cert, key)) = files else {
                bail!("QUIC needs --tls-ca, --tls-cert and --tls-key (see `raft-kv certs`)");
            };
            let transport = QuicTransport::new(TlsConfig::mutual(ca, cert, key))
                .context("setting up the QUIC transport")?;
            Ok(Arc::new(transport))
        }
        #[allow(unreachable_patterns)]
        other => bail!("this raft-kv was built without the {other:?} transport"),
    }
}

/// The raft log: RocksDB in `<dir>/raft`, or memory.
pub fn storage(kind: StorageKind, dir: &Path) -> Result<Arc<dyn LogStorage>> {
    match kind {
        StorageKind::Memory => Ok(Arc::new(MemLogStorage::new())),
        #[cfg(feature = "rocksdb")]
        StorageKind::Rocksdb => {
            let path = dir.join("raft");
            let storage = raft_storage::RocksLogStorage::open(&path)
                .with_context(|| format!("opening the raft log in {}", path.display()))?;
            Ok(Arc::new(storage))
        }
        #[allow(unreachable_patterns)]
        other => {
            let _ = dir;
            bail!("this raft-kv was built without {other:?} storage")
        }
    }
}

/// `raft-kv certs`: a development CA and a certificate per node.
pub fn write_dev_certs(out: &Path, nodes: u64) -> Result<()> {
    #[cfg(feature = "quic")]
    {
        let ids: Vec<u64> = (1..=nodes).collect();
        raft_transport_quic::dev_certs::generate(out, &ids)
            .with_context(|| format!("writing certificates to {}", out.display()))?;
        println!(
            "wrote {}/ca.pem and node-{{1..{nodes}}}.pem/.key (development use only)",
            out.display()
        );
        Ok(())
    }
    #[cfg(not(feature = "quic"))]
    {
        let _ = (out, nodes);
        bail!("this raft-kv was built without certificate generation (feature `quic`)")
    }
}
