//! Cluster identity: a number chosen when a cluster is bootstrapped, kept in every snapshot
//! envelope, and carried by every batch and call, so a node whose state belongs to another
//! cluster (a reused disk, a wrong address in a config file) is refused rather than mixed in.
//!
//! It guards against operator mistakes, not attackers: peers prove who they are with
//! certificates (see [`crate::transport::PeerIdentity`]).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::Counters;
use crate::error::TransportError;
use crate::transport::{InboundHandler, ServerGuard, Transport};
use crate::wire::{RaftBatch, Request, Response};

/// A new cluster's id when nothing ties it to its members: random, never 0 (0 means "not
/// known yet").
pub(crate) fn random() -> u64 {
    loop {
        let id = rand::random::<u64>();
        if id != 0 {
            return id;
        }
    }
}

/// The id of a cluster bootstrapped from a static member list: every node given the same list
/// and token computes the same id on its own. FNV-1a, because it must not change between
/// builds or Rust versions (std's hasher may).
pub(crate) fn of_initial_members<'a>(
    token: &str,
    members: impl Iterator<Item = (u64, &'a str)>,
) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(PRIME);
        }
    };
    // Lengths first, so ("ab", "c") and ("a", "bc") differ.
    eat(&(token.len() as u64).to_le_bytes());
    eat(token.as_bytes());
    for (id, addr) in members {
        eat(&id.to_le_bytes());
        eat(&(addr.len() as u64).to_le_bytes());
        eat(addr.as_bytes());
    }
    hash.max(1)
}

/// How ids are shown to people: fixed-width hex, as etcd does.
pub(crate) fn display(id: u64) -> String {
    format!("{id:016x}")
}

/// `Ok` unless both sides know their cluster and the clusters differ; the error names both.
pub(crate) fn check(node: u64, ours: u64, theirs: u64) -> Result<(), String> {
    if ours == 0 || theirs == 0 || ours == theirs {
        return Ok(());
    }
    Err(format!(
        "cluster id mismatch: node {node} belongs to cluster {}, the sender to cluster {} \
         (a node started with another cluster's data, or pointed at the wrong addresses)",
        display(ours),
        display(theirs)
    ))
}

/// Wraps the user's transport so every outgoing batch and call names this node's cluster.
pub(crate) struct StampingTransport {
    pub(crate) inner: Arc<dyn Transport>,
    pub(crate) counters: Arc<Counters>,
}

impl StampingTransport {
    fn cluster_id(&self) -> u64 {
        Counters::get(&self.counters.cluster_id)
    }
}

#[async_trait]
impl Transport for StampingTransport {
    async fn serve(
        &self,
        addr: &str,
        handler: Arc<dyn InboundHandler>,
    ) -> Result<ServerGuard, TransportError> {
        self.inner.serve(addr, handler).await
    }

    async fn send(&self, addr: &str, mut batch: RaftBatch) -> Result<(), TransportError> {
        batch.cluster_id = self.cluster_id();
        self.inner.send(addr, batch).await
    }

    async fn call(
        &self,
        addr: &str,
        mut request: Request,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        request.cluster_id = self.cluster_id();
        self.inner.call(addr, request, timeout).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_same_members_and_token_give_the_same_id_anything_else_another() {
        let members = [(1, "a:1"), (2, "b:2"), (3, "c:3")];
        let id = of_initial_members("t", members.iter().copied());
        assert_eq!(id, of_initial_members("t", members.iter().copied()));
        assert_ne!(id, of_initial_members("u", members.iter().copied()));
        assert_ne!(id, of_initial_members("t", members[..2].iter().copied()));
        let moved = [(1, "a:1"), (2, "b:2"), (3, "c:4")];
        assert_ne!(id, of_initial_members("t", moved.iter().copied()));
        assert_ne!(id, 0);
        // Pinned: nodes built by different compilers must agree.
        assert_eq!(
            display(of_initial_members("", std::iter::empty())),
            "a8c7f832281a39c5"
        );
    }

    #[test]
    fn only_two_known_and_different_ids_clash() {
        assert!(check(1, 0, 5).is_ok());
        assert!(check(1, 5, 0).is_ok());
        assert!(check(1, 5, 5).is_ok());
        let e = check(1, 5, 6).unwrap_err();
        assert!(
            e.contains("0000000000000005") && e.contains("0000000000000006"),
            "{e}"
        );
    }
}
