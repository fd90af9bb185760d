//! Development certificates: a cluster CA and node certificates, generated with rcgen (cargo
//! feature `dev-certs`, on by default). For production, issue certificates from your own CA
//! with the same shape.
//!
//! # File layout
//!
//! [`generate`] writes into one directory:
//!
//! | file           | what                                                             |
//! |----------------|------------------------------------------------------------------|
//! | `ca.pem`       | the cluster CA certificate: every node trusts it                 |
//! | `ca.key`       | the CA's private key, kept to issue certificates for new nodes   |
//! | `node-{id}.pem`| node `id`'s certificate, issued by the CA                        |
//! | `node-{id}.key`| node `id`'s private key (PKCS#8 PEM)                             |
//!
//! A node certificate serves both as server and as client certificate (extended key usages
//! `serverAuth` and `clientAuth`) and names `localhost`, `127.0.0.1` and `::1`, plus any
//! extra names given to [`generate_with_names`] (DNS names or IP addresses). Private keys are
//! written with mode 0600 on Unix. Running [`generate`] again on the same directory keeps the
//! CA (so existing certificates stay valid) and writes certificates for the nodes asked for,
//! replacing theirs.
//!
//! The same files work with the gRPC transport's mutual TLS.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let certs = raft_transport_quic::dev_certs::generate(dir.path(), &[1, 2, 3])?;
//! assert!(certs.ca.ends_with("ca.pem"));
//! let tls = certs.tls(1).ok_or("node 1 has certificates")?;
//! assert!(tls.cert.ends_with("node-1.pem"));
//! let _transport = raft_transport_quic::QuicTransport::new(tls)?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use raft_core::TransportError;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::tls::TlsConfig;

/// Names every development node certificate carries.
pub const DEFAULT_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// What [`generate`] wrote.
#[derive(Debug, Clone)]
pub struct DevCerts {
    /// The directory holding all files.
    pub dir: PathBuf,
    /// The CA certificate (`ca.pem`).
    pub ca: PathBuf,
    /// Each requested node's certificate and key paths, ready to use.
    pub nodes: BTreeMap<u64, TlsConfig>,
}

impl DevCerts {
    /// Node `id`'s TLS configuration, if it was generated.
    pub fn tls(&self, id: u64) -> Option<TlsConfig> {
        self.nodes.get(&id).cloned()
    }
}

/// The CA certificate's path in `dir`.
pub fn ca_path(dir: &Path) -> PathBuf {
    dir.join("ca.pem")
}

/// The CA private key's path in `dir`.
pub fn ca_key_path(dir: &Path) -> PathBuf {
    dir.join("ca.key")
}

/// Node `id`'s certificate path in `dir`.
pub fn cert_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("node-{id}.pem"))
}

/// Node `id`'s private key path in `dir`.
pub fn key_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("node-{id}.key"))
}

/// Node `id`'s [`TlsConfig`] for the files in `dir` (whether or not they exist yet).
pub fn tls_config(dir: &Path, id: u64) -> TlsConfig {
    TlsConfig::mutual(ca_path(dir), cert_path(dir, id), key_path(dir, id))
}

/// Writes a CA (unless `out_dir` already has one) and a certificate + key for each of
/// `nodes` into `out_dir` (created if missing). See the [module docs](self) for the layout.
pub fn generate(out_dir: &Path, nodes: &[u64]) -> Result<DevCerts, TransportError> {
    generate_with_names(out_dir, nodes, &[])
}

/// Like [`generate`], with extra subject alternative names (DNS names or IP addresses) in
/// every node certificate, for clusters reached by other names than loopback.
pub fn generate_with_names(
    out_dir: &Path,
    nodes: &[u64],
    extra_names: &[String],
) -> Result<DevCerts, TransportError> {
    std::fs::create_dir_all(out_dir).map_err(|e| io_error("cannot create", out_dir, e))?;
    let ca_key = load_or_create_ca(out_dir)?;
    let issuer = Issuer::new(ca_params(), &ca_key);
    let mut names: Vec<String> = DEFAULT_NAMES.iter().map(|s| s.to_string()).collect();
    for name in extra_names {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let mut out = BTreeMap::new();
    for &id in nodes {
        let key = KeyPair::generate().map_err(rcgen_error)?;
        let mut params = CertificateParams::new(names.clone()).map_err(rcgen_error)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "raftkit development");
        dn.push(DnType::CommonName, format!("raftkit node {id}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &issuer).map_err(rcgen_error)?;
        write_file(&cert_path(out_dir, id), cert.pem().as_bytes(), false)?;
        write_file(&key_path(out_dir, id), key.serialize_pem().as_bytes(), true)?;
        out.insert(id, tls_config(out_dir, id));
    }
    Ok(DevCerts {
        dir: out_dir.to_path_buf(),
        ca: ca_path(out_dir),
        nodes: out,
    })
}

/// The CA's parameters. Rebuilt identically when the CA is reused: node certificates name
/// their issuer by this distinguished name and the CA key's identifier.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "raftkit development");
    dn.push(DnType::CommonName, "raftkit development CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn load_or_create_ca(dir: &Path) -> Result<KeyPair, TransportError> {
    let (cert, key) = (ca_path(dir), ca_key_path(dir));
    if cert.exists() && key.exists() {
        let pem = std::fs::read_to_string(&key).map_err(|e| io_error("cannot read", &key, e))?;
        return KeyPair::from_pem(&pem)
            .map_err(|e| TransportError::Setup(format!("unusable CA key {}: {e}", key.display())));
    }
    let ca_key = KeyPair::generate().map_err(rcgen_error)?;
    let ca_cert = ca_params().self_signed(&ca_key).map_err(rcgen_error)?;
    write_file(&key, ca_key.serialize_pem().as_bytes(), true)?;
    write_file(&cert, ca_cert.pem().as_bytes(), false)?;
    Ok(ca_key)
}

fn rcgen_error(e: rcgen::Error) -> TransportError {
    TransportError::Setup(format!("generating certificates failed: {e}"))
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> TransportError {
    TransportError::Setup(format!("{what} {}: {e}", path.display()))
}

fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), TransportError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options
        .open(path)
        .map_err(|e| io_error("cannot write", path, e))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error("cannot write", path, e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn writes_the_documented_layout_and_keeps_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let first = generate(dir.path(), &[1, 2]).unwrap();
        for f in ["ca.pem", "ca.key", "node-1.pem", "node-1.key", "node-2.pem"] {
            assert!(dir.path().join(f).exists(), "{f} missing");
        }
        let ca_before = std::fs::read(&first.ca).unwrap();
        let second = generate_with_names(dir.path(), &[3], &["node3.example".into()]).unwrap();
        assert_eq!(std::fs::read(&second.ca).unwrap(), ca_before);
        assert_eq!(second.nodes.keys().copied().collect::<Vec<_>>(), vec![3]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(key_path(dir.path(), 3))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Every certificate, old and new, loads against the CA.
        for id in [1, 2, 3] {
            tls_config(dir.path(), id).read().unwrap().load().unwrap();
        }
    }
}
