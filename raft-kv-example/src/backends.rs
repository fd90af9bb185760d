//! Picks the transport and log storage a node runs on (cargo features `grpc`, `quic`,
//! `rocksdb`, `raft-engine`, all on by default).

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use raft_core::{LogStorage, MemLogStorage, Transport};

use crate::{StorageKind, TlsArgs, TransportKind};

impl TransportKind {
    /// Whether this is QUIC, which always runs mutual TLS.
    pub fn is_quic(self) -> bool {
        match self {
            #[cfg(feature = "grpc")]
            TransportKind::Grpc => false,
            #[cfg(feature = "quic")]
            TransportKind::Quic => true,
        }
    }

    /// Its `--transport` value.
    pub fn name(self) -> &'static str {
        match self {
            #[cfg(feature = "grpc")]
            TransportKind::Grpc => "grpc",
            #[cfg(feature = "quic")]
            TransportKind::Quic => "quic",
        }
    }
}

impl StorageKind {
    /// Its `--storage` value.
    pub fn name(self) -> &'static str {
        match self {
            #[cfg(feature = "rocksdb")]
            StorageKind::Rocksdb => "rocksdb",
            #[cfg(feature = "raft-engine")]
            StorageKind::RaftEngine => "raft-engine",
            StorageKind::Memory => "memory",
        }
    }
}

/// The three TLS files, when all are given; an error when only some are.
fn tls_files(tls: &TlsArgs) -> Result<Option<(&Path, &Path, &Path)>> {
    match (&tls.tls_ca, &tls.tls_cert, &tls.tls_key) {
        (Some(ca), Some(cert), Some(key)) => Ok(Some((ca, cert, key))),
        (None, None, None) => Ok(None),
        _ => bail!("--tls-ca, --tls-cert and --tls-key go together"),
    }
}

/// Whether `addr` (host:port) can only be reached from this machine.
fn is_loopback(addr: &str) -> bool {
    let host = match addr.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    };
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// Refuses a plaintext raft transport that other machines can reach, unless the operator
/// accepted it with `--insecure-transport` (then it warns). Plaintext means anyone who can
/// reach the port can forge any node's messages and change the membership. `listen_addr` is
/// where the transport binds (not the address it advertises): `0.0.0.0` is reachable from
/// everywhere even when peers are told a loopback address.
pub fn check_plaintext(
    kind: TransportKind,
    tls: &TlsArgs,
    listen_addr: &str,
    insecure: bool,
) -> Result<()> {
    let plaintext = !kind.is_quic() && tls_files(tls)?.is_none();
    if !plaintext || is_loopback(listen_addr) {
        return Ok(());
    }
    if !insecure {
        bail!(
            "refusing plaintext gRPC on {listen_addr}, which other machines can reach: anyone who \
             can reach it could act as any node. Give --tls-ca, --tls-cert and --tls-key (see \
             `raft-kv certs`), or accept the risk with --insecure-transport"
        );
    }
    tracing::warn!(
        listen_addr,
        "INSECURE: plaintext raft transport on a reachable address (--insecure-transport): \
         anyone who can reach it can forge any node's messages and change the membership"
    );
    Ok(())
}

/// The raft transport: gRPC (mutual TLS when the TLS flags are given) or QUIC (always mutual
/// TLS). Only compiled-in transports can be named (`TransportKind` has no others).
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
    }
}

/// The raft log: RocksDB in `<dir>/raft`, raft-engine in `<dir>/raft-engine`, or memory.
pub fn storage(kind: StorageKind, dir: &Path) -> Result<Arc<dyn LogStorage>> {
    refuse_other_backends_state(kind, dir)?;
    match kind {
        StorageKind::Memory => {
            let _ = dir;
            Ok(Arc::new(MemLogStorage::new()))
        }
        #[cfg(feature = "rocksdb")]
        StorageKind::Rocksdb => {
            let path = dir.join("raft");
            let storage = raft_storage::RocksLogStorage::open(&path)
                .with_context(|| format!("opening the raft log in {}", path.display()))?;
            Ok(Arc::new(storage))
        }
        #[cfg(feature = "raft-engine")]
        StorageKind::RaftEngine => {
            let path = dir.join("raft-engine");
            let storage = raft_storage::RaftEngineLogStorage::open(&path)
                .with_context(|| format!("opening the raft log in {}", path.display()))?;
            Ok(Arc::new(storage))
        }
    }
}

/// Where each durable backend keeps its log inside a data dir.
const BACKEND_DIRS: [(&str, &str); 2] = [("rocksdb", "raft"), ("raft-engine", "raft-engine")];

/// A data dir holding another backend's log must not be opened with this one: it would look
/// empty, and the node would start a new cluster (or bootstrap again) beside its real state.
fn refuse_other_backends_state(kind: StorageKind, dir: &Path) -> Result<()> {
    for (name, sub) in BACKEND_DIRS {
        if name == kind.name() {
            continue;
        }
        let path = dir.join(sub);
        let holds_state = std::fs::read_dir(&path)
            .map(|mut entries| entries.next().is_some())
            .unwrap_or(false);
        if holds_state {
            bail!(
                "{} holds a {name} raft log, but this node was started with --storage {}: \
                 start it with --storage {name} (or give it another --data-dir)",
                path.display(),
                kind.name()
            );
        }
    }
    Ok(())
}

/// `raft-kv certs`: a development CA and a certificate per node, valid for loopback and for
/// the extra `names` (DNS names or IP addresses).
pub fn write_dev_certs(out: &Path, nodes: u64, names: &[String]) -> Result<()> {
    #[cfg(feature = "quic")]
    {
        let ids: Vec<u64> = (1..=nodes).collect();
        raft_transport_quic::dev_certs::generate_with_names(out, &ids, names)
            .with_context(|| format!("writing certificates to {}", out.display()))?;
        let out = out.display();
        println!("wrote development certificates (not for production) to {out}:");
        println!("  {out}/ca/ca.pem, ca.key   the CA: keep ca.key where certificates are issued");
        println!("  {out}/node-<id>/          give node <id> its own directory, nothing else");
        println!("                            (ca.pem, node.pem, node.key; ids 1..={nodes})");
        Ok(())
    }
    #[cfg(not(feature = "quic"))]
    {
        let _ = (out, nodes, names);
        bail!("this raft-kv was built without certificate generation (feature `quic`)")
    }
}

#[cfg(all(test, feature = "grpc", feature = "quic"))]
mod safety_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn plaintext_is_refused_off_loopback_unless_accepted() {
        let none = TlsArgs::default();
        for addr in [
            "127.0.0.1:7001",
            "127.3.4.5:1",
            "[::1]:7001",
            "localhost:7001",
        ] {
            assert!(
                check_plaintext(TransportKind::Grpc, &none, addr, false).is_ok(),
                "{addr}"
            );
        }
        for addr in [
            "0.0.0.0:7001",
            "10.0.0.1:7001",
            "[::]:7001",
            "node1.example:7001",
        ] {
            let e = check_plaintext(TransportKind::Grpc, &none, addr, false).unwrap_err();
            assert!(e.to_string().contains("--insecure-transport"), "{e}");
            assert!(check_plaintext(TransportKind::Grpc, &none, addr, true).is_ok());
        }
        let tls = TlsArgs {
            tls_ca: Some("ca.pem".into()),
            tls_cert: Some("node.pem".into()),
            tls_key: Some("node.key".into()),
        };
        assert!(check_plaintext(TransportKind::Grpc, &tls, "10.0.0.1:7001", false).is_ok());
        assert!(check_plaintext(TransportKind::Quic, &none, "10.0.0.1:7001", false).is_ok());
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
        let pem = std::fs::read_to_string(dir.path().join("node-2/node.pem")).unwrap();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64(&body);
        // An iPAddress SAN: context tag [7], length 4, the address.
        assert!(
            der.windows(6).any(|w| w == [0x87, 4, 10, 77, 3, 2]),
            "node-2.pem does not name 10.77.3.2"
        );
    }
}

#[cfg(all(test, feature = "rocksdb", feature = "raft-engine"))]
mod storage_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_data_dir_of_another_backend_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        drop(storage(StorageKind::Rocksdb, dir.path()).unwrap());
        for other in [StorageKind::RaftEngine, StorageKind::Memory] {
            let e = storage(other, dir.path()).err().unwrap().to_string();
            assert!(e.contains("holds a rocksdb raft log"), "{e}");
            assert!(e.contains("--storage rocksdb"), "{e}");
        }
        assert!(storage(StorageKind::Rocksdb, dir.path()).is_ok());
    }
}
