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

/// `raft-kv certs`: a development CA and a certificate per node, valid for loopback and for
/// the extra `names` (DNS names or IP addresses).
pub fn write_dev_certs(out: &Path, nodes: u64, names: &[String]) -> Result<()> {
    #[cfg(feature = "quic")]
    {
        let ids: Vec<u64> = (1..=nodes).collect();
        raft_transport_quic::dev_certs::generate_with_names(out, &ids, names)
            .with_context(|| format!("writing certificates to {}", out.display()))?;
        println!(
            "wrote {}/ca.pem and node-{{1..{nodes}}}.pem/.key (development use only)",
            out.display()
        );
        Ok(())
    }
    #[cfg(not(feature = "quic"))]
    {
        let _ = (out, nodes, names);
        bail!("this raft-kv was built without certificate generation (feature `quic`)")
    }
}

#[cfg(all(test, feature = "quic"))]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    /// Decodes standard base64, skipping whitespace (enough for a PEM body).
    fn base64(text: &str) -> Vec<u8> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u32, 0);
        for c in text
            .bytes()
            .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        {
            let v = ALPHABET.iter().position(|&a| a == c).expect("base64") as u32;
            acc = (acc << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        out
    }

    /// Regression (found by raft-kv-jepsen): `raft-kv certs` only named loopback, so a QUIC
    /// cluster dialled at any other address failed the TLS handshake. `--name` adds
    /// addresses: the certificate must carry the IP as a subject alternative name.
    #[test]
    fn dev_certs_name_the_extra_addresses() {
        let dir = tempfile::tempdir().unwrap();
        super::write_dev_certs(dir.path(), 2, &["10.77.3.2".to_string()]).unwrap();
        let pem = std::fs::read_to_string(dir.path().join("node-2.pem")).unwrap();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64(&body);
        // An iPAddress SAN: context tag [7], length 4, the address.
        assert!(
            der.windows(6).any(|w| w == [0x87, 4, 10, 77, 3, 2]),
            "node-2.pem does not name 10.77.3.2"
        );
    }
}
