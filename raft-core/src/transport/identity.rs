//! Node identities in certificates, and private key files that only their owner can read.
//!
//! A node's certificate names its node id as a URI subject alternative name,
//! `raftkit://node/<id>` (see [`node_uri`]). A TLS transport reads it from the peer's verified
//! certificate ([`identity_of_certificate`]) and hands it to the node as a [`PeerIdentity`],
//! which refuses every raft message, snapshot chunk and membership call that claims another id.

use std::path::Path;

use super::PeerIdentity;
use crate::error::TransportError;

/// The prefix of the URI subject alternative name that carries a node id.
pub const NODE_URI_PREFIX: &str = "raftkit://node/";

/// The URI subject alternative name a certificate for node `id` carries.
///
/// ```
/// assert_eq!(raft_core::transport::node_uri(7), "raftkit://node/7");
/// ```
pub fn node_uri(id: u64) -> String {
    format!("{NODE_URI_PREFIX}{id}")
}

/// The node id in one URI, if it is a well-formed `raftkit://node/<id>` with `id` ≥ 1.
fn node_id_of_uri(uri: &str) -> Option<u64> {
    let digits = uri.strip_prefix(NODE_URI_PREFIX)?;
    // Only plain decimal: no sign, no leading zeros, nothing after the number.
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&id| id != 0)
}

/// Who an already verified peer certificate (DER) says its holder is.
///
/// Exactly one `raftkit://node/<id>` URI gives [`PeerIdentity::Node`]; none, several, a
/// malformed one, or a certificate that does not parse gives [`PeerIdentity::WithoutNodeId`]
/// (the holder is inside the CA's trust domain but is no node). This does not verify the
/// certificate: the TLS handshake did.
pub fn identity_of_certificate(der: &[u8]) -> PeerIdentity {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return PeerIdentity::WithoutNodeId;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return PeerIdentity::WithoutNodeId;
    };
    let mut found = None;
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(uri) = name {
            if !uri.starts_with(NODE_URI_PREFIX) {
                continue;
            }
            match (found, node_id_of_uri(uri)) {
                (None, Some(id)) => found = Some(id),
                // Two node names, or one that does not parse: trust neither.
                _ => return PeerIdentity::WithoutNodeId,
            }
        }
    }
    found.map_or(PeerIdentity::WithoutNodeId, PeerIdentity::Node)
}

/// Reads a private key file (PEM), refusing one that its group or others may read or write:
/// such a key may already be in other hands, and running with it would hide that.
///
/// ```no_run
/// let pem = raft_core::transport::read_private_key(std::path::Path::new("certs/node-1/node.key"))?;
/// # Ok::<(), raft_core::TransportError>(())
/// ```
pub fn read_private_key(path: &Path) -> Result<Vec<u8>, TransportError> {
    let setup = |what: &str| TransportError::Setup(format!("{what} {}", path.display()));
    let file = std::fs::File::open(path)
        .map_err(|e| setup(&format!("cannot read the private key ({e}):")))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file
            .metadata()
            .map_err(|e| setup(&format!("cannot read the private key ({e}):")))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(setup(&format!(
                "the private key may be read by others (mode {:o}; run `chmod 600` on it):",
                mode & 0o777
            )));
        }
    }
    use std::io::Read;
    let mut pem = Vec::new();
    (&file)
        .take(1 << 20)
        .read_to_end(&mut pem)
        .map_err(|e| setup(&format!("cannot read the private key ({e}):")))?;
    Ok(pem)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn node_uris_parse_strictly() {
        assert_eq!(node_id_of_uri("raftkit://node/1"), Some(1));
        assert_eq!(node_id_of_uri(&node_uri(u64::MAX)), Some(u64::MAX));
        for bad in [
            "raftkit://node/",
            "raftkit://node/0",
            "raftkit://node/01",
            "raftkit://node/+1",
            "raftkit://node/1/",
            "raftkit://node/1x",
            "raftkit://node/18446744073709551616",
            "raftkit://nodes/1",
            "https://node/1",
        ] {
            assert_eq!(node_id_of_uri(bad), None, "{bad}");
        }
    }

    #[test]
    fn garbage_is_no_node() {
        assert_eq!(identity_of_certificate(b""), PeerIdentity::WithoutNodeId);
        assert_eq!(
            identity_of_certificate(&[0x30, 0x82, 0xff, 0xff]),
            PeerIdentity::WithoutNodeId
        );
    }

    #[cfg(unix)]
    #[test]
    fn keys_readable_by_others_are_refused_naming_the_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        std::fs::write(&path, b"key").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        match read_private_key(&path) {
            Err(TransportError::Setup(m)) => {
                assert!(m.contains("node.key") && m.contains("644"), "{m}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_private_key(&path).unwrap(), b"key");
        match read_private_key(&dir.path().join("missing.key")) {
            Err(TransportError::Setup(m)) => assert!(m.contains("missing.key"), "{m}"),
            other => panic!("expected an error, got {other:?}"),
        }
    }
}
