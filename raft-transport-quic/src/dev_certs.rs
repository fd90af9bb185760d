//! Development certificates: a cluster CA and one identity per node, generated with rcgen
//! (cargo feature `dev-certs`, on by default). For production, issue certificates from your
//! own CA with the same shape.
//!
//! # Identity
//!
//! Each node certificate names its node id as a URI subject alternative name,
//! `raftkit://node/<id>` ([`raft_core::transport::node_uri`]). A node refuses every raft
//! message, snapshot chunk and membership call whose claimed sender id differs from the id in
//! the caller's certificate, and refuses raft traffic from a certificate that names no node
//! (such as the client certificates [`generate_client`] writes).
//!
//! # File layout
//!
//! [`generate`] writes into one directory, split by who may hold what:
//!
//! | path                      | what                                       | give it to   |
//! |---------------------------|--------------------------------------------|--------------|
//! | `ca/ca.pem`               | the cluster CA certificate                 | anyone       |
//! | `ca/ca.key`               | the CA's private key: issues new identities| nobody       |
//! | `node-{id}/ca.pem`        | a copy of the CA certificate               | node `id`    |
//! | `node-{id}/node.pem`      | node `id`'s certificate, issued by the CA  | node `id`    |
//! | `node-{id}/node.key`      | node `id`'s private key (PKCS#8 PEM)       | node `id`    |
//! | `client-{name}/...`       | a client identity ([`generate_client`])    | that client  |
//!
//! Copy `node-{id}/` to node `id` and nothing else: the CA key stays where certificates are
//! issued. A node certificate serves both as server and as client certificate (extended key
//! usages `serverAuth` and `clientAuth`) and names `localhost`, `127.0.0.1` and `::1`, plus any
//! extra names given to [`generate_with_names`] (DNS names or IP addresses). Directories are
//! created 0700 and private keys 0600 on Unix. Running [`generate`] again on the same
//! directory keeps the CA (so existing certificates stay valid) and writes identities for the
//! nodes asked for, replacing theirs.
//!
//! The same files work with the gRPC transport's mutual TLS.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let certs = raft_transport_quic::dev_certs::generate(dir.path(), &[1, 2, 3])?;
//! assert!(certs.ca.ends_with("ca/ca.pem"));
//! let tls = certs.tls(1).ok_or("node 1 has certificates")?;
//! assert!(tls.cert.ends_with("node-1/node.pem"));
//! let _transport = raft_transport_quic::QuicTransport::new(tls)?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use raft_core::TransportError;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use raft_core::transport::tls::TlsConfig;

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
    dir.join("ca").join("ca.pem")
}

/// The CA private key's path in `dir`.
pub fn ca_key_path(dir: &Path) -> PathBuf {
    dir.join("ca").join("ca.key")
}

/// The directory holding everything node `id` needs (and nothing more).
pub fn node_dir(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("node-{id}"))
}

/// Node `id`'s certificate path in `dir`.
pub fn cert_path(dir: &Path, id: u64) -> PathBuf {
    node_dir(dir, id).join("node.pem")
}

/// Node `id`'s private key path in `dir`.
pub fn key_path(dir: &Path, id: u64) -> PathBuf {
    node_dir(dir, id).join("node.key")
}

/// Node `id`'s [`TlsConfig`] for the files in `dir` (whether or not they exist yet).
pub fn tls_config(dir: &Path, id: u64) -> TlsConfig {
    let node = node_dir(dir, id);
    TlsConfig::mutual(
        node.join("ca.pem"),
        node.join("node.pem"),
        node.join("node.key"),
    )
}

/// The directory of the client identity `name`.
pub fn client_dir(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("client-{name}"))
}

/// A client identity [`generate_client`] wrote.
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// The CA certificate to verify servers with.
    pub ca: PathBuf,
    /// The client's certificate: issued by the CA, names no node.
    pub cert: PathBuf,
    /// The client's private key.
    pub key: PathBuf,
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
    let ca_key = load_or_create_ca(out_dir)?;
    let ca_pem = std::fs::read(ca_path(out_dir))
        .map_err(|e| io_error("cannot read", &ca_path(out_dir), e))?;
    let issuer = Issuer::new(ca_params(), &ca_key);
    let mut names: Vec<String> = DEFAULT_NAMES.iter().map(|s| s.to_string()).collect();
    for name in extra_names {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let mut out = BTreeMap::new();
    for &id in nodes {
        if id == 0 {
            return Err(TransportError::Setup("node ids start at 1".into()));
        }
        let dir = node_dir(out_dir, id);
        let subject = Subject {
            common_name: format!("raftkit node {id}"),
            names: names.clone(),
            node: Some(id),
        };
        issue(&issuer, &ca_pem, &subject, &dir, "node")?;
        out.insert(id, tls_config(out_dir, id));
    }
    Ok(DevCerts {
        dir: out_dir.to_path_buf(),
        ca: ca_path(out_dir),
        nodes: out,
    })
}

/// Writes a client identity `name` into `out_dir/client-{name}/` (`ca.pem`, `client.pem`,
/// `client.key`), issued by the CA in `out_dir` (created if missing). Its certificate names no
/// node: it can authenticate to an HTTP API that asks for client certificates, and a raft
/// transport refuses its raft traffic.
pub fn generate_client(out_dir: &Path, name: &str) -> Result<ClientCert, TransportError> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(TransportError::Setup(format!(
            "client name {name:?}: use letters, digits and '-'"
        )));
    }
    let ca_key = load_or_create_ca(out_dir)?;
    let ca_pem = std::fs::read(ca_path(out_dir))
        .map_err(|e| io_error("cannot read", &ca_path(out_dir), e))?;
    let issuer = Issuer::new(ca_params(), &ca_key);
    let dir = client_dir(out_dir, name);
    let subject = Subject {
        common_name: format!("raftkit client {name}"),
        names: Vec::new(),
        node: None,
    };
    issue(&issuer, &ca_pem, &subject, &dir, "client")?;
    Ok(ClientCert {
        ca: dir.join("ca.pem"),
        cert: dir.join("client.pem"),
        key: dir.join("client.key"),
    })
}

/// Who a certificate is for.
struct Subject {
    common_name: String,
    /// DNS names and IP addresses.
    names: Vec<String>,
    /// The node id it carries as `raftkit://node/<id>`.
    node: Option<u64>,
}

/// Writes `dir/ca.pem` (a copy of `ca_pem`), `dir/{stem}.pem` and `dir/{stem}.key` for
/// `subject`.
fn issue(
    issuer: &Issuer<'_, &KeyPair>,
    ca_pem: &[u8],
    subject: &Subject,
    dir: &Path,
    stem: &str,
) -> Result<(), TransportError> {
    create_private_dir(dir)?;
    let key = KeyPair::generate().map_err(rcgen_error)?;
    let mut params = CertificateParams::new(subject.names.clone()).map_err(rcgen_error)?;
    if let Some(id) = subject.node {
        let uri = rcgen::string::Ia5String::try_from(raft_core::transport::node_uri(id))
            .map_err(rcgen_error)?;
        params.subject_alt_names.push(SanType::URI(uri));
    }
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "raftkit development");
    dn.push(DnType::CommonName, subject.common_name.clone());
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
    let cert = params.signed_by(&key, issuer).map_err(rcgen_error)?;
    write_file(&dir.join("ca.pem"), ca_pem, false)?;
    write_file(
        &dir.join(format!("{stem}.pem")),
        cert.pem().as_bytes(),
        false,
    )?;
    write_file(
        &dir.join(format!("{stem}.key")),
        key.serialize_pem().as_bytes(),
        true,
    )
}

fn create_private_dir(dir: &Path) -> Result<(), TransportError> {
    raft_core::private_files::create_dir_all(dir).map_err(|e| io_error("cannot create", dir, e))
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
    create_private_dir(&dir.join("ca"))?;
    if cert.exists() && key.exists() {
        let pem = raft_core::transport::read_private_key(&key)?;
        let pem = String::from_utf8(pem).map_err(|e| {
            TransportError::Setup(format!("unusable CA key {}: {e}", key.display()))
        })?;
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
        for f in [
            "ca/ca.pem",
            "ca/ca.key",
            "node-1/ca.pem",
            "node-1/node.pem",
            "node-1/node.key",
            "node-2/node.pem",
        ] {
            assert!(dir.path().join(f).exists(), "{f} missing");
        }
        // Nothing a node is given holds the CA key.
        for entry in std::fs::read_dir(node_dir(dir.path(), 1)).unwrap() {
            let text = std::fs::read(entry.unwrap().path()).unwrap();
            assert_ne!(text, std::fs::read(ca_key_path(dir.path())).unwrap());
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
            crate::tls::load(&tls_config(dir.path(), id).read().unwrap()).unwrap();
        }
    }

    fn identity_in(pem_path: &Path) -> raft_core::transport::PeerIdentity {
        use rustls::pki_types::pem::PemObject;
        let pem = std::fs::read(pem_path).unwrap();
        let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
        raft_core::transport::identity_of_certificate(&der)
    }

    #[test]
    fn node_certificates_name_their_node_and_client_certificates_none() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), &[1, 42]).unwrap();
        assert_eq!(
            identity_in(&cert_path(dir.path(), 42)),
            raft_core::transport::PeerIdentity::Node(42)
        );
        assert_eq!(
            identity_in(&cert_path(dir.path(), 1)),
            raft_core::transport::PeerIdentity::Node(1)
        );
        let client = generate_client(dir.path(), "ops").unwrap();
        assert_eq!(
            identity_in(&client.cert),
            raft_core::transport::PeerIdentity::WithoutNodeId
        );
        assert!(generate_client(dir.path(), "../x").is_err());
        assert!(generate(dir.path(), &[0]).is_err());
    }
}
