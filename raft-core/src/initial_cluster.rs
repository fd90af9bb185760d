//! The member list a cluster is bootstrapped from when all its nodes start together.

use std::collections::BTreeMap;
use std::str::FromStr;

use crate::error::{Error, Result};

/// Every founding member of a cluster with the address peers reach it at, plus a token that
/// tells apart two clusters with the same members. Give every founding node the same value
/// and start them in any order, at any time: they form one cluster (see
/// [`crate::Raft::start_cluster`]).
///
/// ```
/// let cluster: raft_core::InitialCluster = "1=10.0.0.1:7001,2=10.0.0.2:7001,3=10.0.0.3:7001"
///     .parse()
///     .unwrap();
/// assert_eq!(cluster.members().len(), 3);
/// assert_eq!(cluster.members()[&2], "10.0.0.2:7001");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialCluster {
    members: BTreeMap<u64, String>,
    token: String,
}

/// Longest address accepted in a member list, as on the wire.
const MAX_ADDR: usize = 256;

impl InitialCluster {
    /// The founding members, by id. Ids must be 1 or more and addresses non-empty.
    pub fn new(members: impl IntoIterator<Item = (u64, String)>) -> Result<Self> {
        let mut by_id = BTreeMap::new();
        for (id, addr) in members {
            if id == 0 {
                return Err(Error::config(
                    "initial cluster: node id 0 is reserved; use 1 or more",
                ));
            }
            if addr.is_empty() || addr.len() > MAX_ADDR {
                return Err(Error::config(format!(
                    "initial cluster: node {id} needs an address of 1 to {MAX_ADDR} bytes"
                )));
            }
            if by_id.insert(id, addr).is_some() {
                return Err(Error::config(format!(
                    "initial cluster: node {id} is listed twice"
                )));
            }
        }
        if by_id.is_empty() {
            return Err(Error::config("initial cluster: no members"));
        }
        Ok(InitialCluster {
            members: by_id,
            token: String::new(),
        })
    }

    /// Sets the token (etcd's `--initial-cluster-token`): clusters bootstrapped from the same
    /// members but different tokens get different cluster ids and refuse each other's
    /// traffic. Default: empty.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = token.into();
        self
    }

    /// The founding members, by id.
    pub fn members(&self) -> &BTreeMap<u64, String> {
        &self.members
    }

    /// The token given with [`InitialCluster::with_token`].
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The id every founding node computes for this cluster.
    pub fn cluster_id(&self) -> u64 {
        crate::node::cluster_id::of_initial_members(
            &self.token,
            self.members.iter().map(|(&id, addr)| (id, addr.as_str())),
        )
    }
}

/// Parses `1=host:port,2=host:port,...` (spaces around items are ignored).
impl FromStr for InitialCluster {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let members = s
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                let (id, addr) = item.split_once('=').ok_or_else(|| {
                    Error::config(format!(
                        "initial cluster: `{item}` is not id=host:port (e.g. 1=10.0.0.1:7001)"
                    ))
                })?;
                let id = id.trim().parse::<u64>().map_err(|_| {
                    Error::config(format!(
                        "initial cluster: `{id}` in `{item}` is not a node id"
                    ))
                })?;
                Ok((id, addr.trim().to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        InitialCluster::new(members)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses_with_the_reason() {
        let c: InitialCluster = " 2=b:2, 1=a:1 ,".parse().unwrap();
        assert_eq!(c.members().keys().copied().collect::<Vec<_>>(), vec![1, 2]);
        for (bad, why) in [
            ("", "no members"),
            ("1=a:1,1=b:2", "listed twice"),
            ("0=a:1", "reserved"),
            ("x=a:1", "not a node id"),
            ("1:a", "not id=host:port"),
            ("1=", "needs an address"),
        ] {
            let e = bad.parse::<InitialCluster>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn the_token_changes_the_cluster_id() {
        let c: InitialCluster = "1=a:1,2=b:2".parse().unwrap();
        assert_eq!(c.cluster_id(), c.clone().cluster_id());
        assert_ne!(c.cluster_id(), c.clone().with_token("x").cluster_id());
    }
}
