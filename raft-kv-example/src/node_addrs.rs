//! Listen versus advertised addresses of a node: where its sockets bind (`0.0.0.0:7001` in a
//! container) and the address others reach it at (`10.0.0.5:7001`), which is what goes into
//! the cluster's membership and what the node reports as its HTTP URL.

use anyhow::{bail, Result};

/// The four addresses a node runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddrs {
    /// Where the raft transport binds.
    pub raft_listen: String,
    /// The raft address peers dial; stored in the membership.
    pub raft_advertise: String,
    /// Where the HTTP API binds.
    pub http_listen: String,
    /// The HTTP address clients are told about.
    pub http_advertise: String,
}

/// The flags of one address pair (`raft` or `http`).
#[derive(Debug, Clone, Copy)]
pub struct AddrFlags<'a> {
    /// `raft` or `http`: the flags are `--<kind>-addr`, `--<kind>-listen`, `--<kind>-advertise`.
    pub kind: &'a str,
    /// `--<kind>-addr`: both at once.
    pub addr: Option<&'a str>,
    /// `--<kind>-listen`.
    pub listen: Option<&'a str>,
    /// `--<kind>-advertise`.
    pub advertise: Option<&'a str>,
}

/// Whether `addr` (host:port) binds every interface (`0.0.0.0`, `[::]`) or a port chosen by
/// the OS: fine to listen on, meaningless to dial.
pub fn is_wildcard(addr: &str) -> bool {
    match addr.parse::<std::net::SocketAddr>() {
        Ok(a) => a.ip().is_unspecified() || a.port() == 0,
        Err(_) => false,
    }
}

/// (listen, advertise) from the flags: each defaults to `--<kind>-addr`, then to the other
/// one (listen where you are reached; be reached where you listen, unless that is a
/// wildcard address, which nobody can dial).
pub fn resolve_pair(flags: AddrFlags<'_>) -> Result<(String, String)> {
    let kind = flags.kind;
    let listen = flags.listen.or(flags.addr);
    let advertise = flags.advertise.or(flags.addr);
    match (listen, advertise) {
        (None, None) => bail!(
            "no {kind} address: give --{kind}-addr, or --{kind}-listen and --{kind}-advertise"
        ),
        (Some(listen), None) if is_wildcard(listen) => bail!(
            "--{kind}-listen {listen} cannot be dialled by anyone: give --{kind}-advertise \
             (the address others reach this node at) too"
        ),
        (Some(listen), None) => Ok((listen.to_string(), listen.to_string())),
        (None, Some(advertise)) => Ok((advertise.to_string(), advertise.to_string())),
        (Some(listen), Some(advertise)) => Ok((listen.to_string(), advertise.to_string())),
    }
}

/// All four addresses. An advertised wildcard address only gets a warning: a lone node on
/// `--raft-addr 0.0.0.0:7001` works (and did before these flags existed), but peers could
/// not dial it.
pub fn resolve(raft: AddrFlags<'_>, http: AddrFlags<'_>) -> Result<NodeAddrs> {
    let (raft_listen, raft_advertise) = resolve_pair(raft)?;
    if is_wildcard(&raft_advertise) {
        tracing::warn!(
            raft_advertise,
            "peers cannot dial the wildcard raft address this node advertises: give \
             --raft-advertise (this machine's address) with --raft-listen"
        );
    }
    let (http_listen, http_advertise) = resolve_pair(http)?;
    if is_wildcard(&http_advertise) {
        tracing::warn!(
            http_advertise,
            "the HTTP address this node reports is a wildcard address: set --http-advertise"
        );
    }
    Ok(NodeAddrs {
        raft_listen,
        raft_advertise,
        http_listen,
        http_advertise,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn flags<'a>(
        addr: Option<&'a str>,
        listen: Option<&'a str>,
        advertise: Option<&'a str>,
    ) -> AddrFlags<'a> {
        AddrFlags {
            kind: "raft",
            addr,
            listen,
            advertise,
        }
    }

    #[test]
    fn defaults_and_errors() {
        let a = "127.0.0.1:7001";
        assert_eq!(
            resolve_pair(flags(Some(a), None, None)).unwrap(),
            (a.into(), a.into())
        );
        assert_eq!(
            resolve_pair(flags(Some(a), Some("0.0.0.0:7001"), None)).unwrap(),
            ("0.0.0.0:7001".into(), a.into())
        );
        assert_eq!(
            resolve_pair(flags(None, Some("0.0.0.0:1"), Some("10.0.0.5:1"))).unwrap(),
            ("0.0.0.0:1".into(), "10.0.0.5:1".into())
        );
        assert_eq!(
            resolve_pair(flags(None, None, Some("10.0.0.5:1"))).unwrap(),
            ("10.0.0.5:1".into(), "10.0.0.5:1".into())
        );
        let e = resolve_pair(flags(None, None, None))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--raft-addr") && e.contains("--raft-listen"),
            "{e}"
        );
        let e = resolve_pair(flags(None, Some("[::]:7001"), None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--raft-advertise"), "{e}");
        let http = AddrFlags {
            kind: "http",
            addr: None,
            listen: None,
            advertise: None,
        };
        let e = resolve(flags(Some(a), None, None), http)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--http-addr"), "{e}");
    }
}
