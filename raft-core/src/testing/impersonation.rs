//! The peer-identity scenario every authenticating transport must pass: callers holding valid
//! certificates of the cluster's CA try to act as someone they are not, and a live cluster
//! refuses all of it without any effect on its term or membership.
//!
//! The transport's tests build the callers (each a transport presenting one certificate) and
//! run [`assert_impersonation_refused`] against the leader of a running cluster.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use crate::RaftCodec as _;
use raft::prelude::{Message, MessageType};

use crate::wire::{
    request, response, MembershipAction, MembershipRequest, ProposeRequest, RaftBatch, Request,
    SnapshotChunk, StatusRequest, TransferLeaderRequest,
};
use crate::{Mailbox, Transport};

/// How long each impersonation attempt may take to be answered.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The callers of the scenario, each presenting one certificate issued by the cluster's CA.
pub struct Impostors {
    /// A member's id and a transport presenting that member's own certificate: it will claim
    /// to be another member.
    pub member: (u64, Arc<dyn Transport>),
    /// A transport presenting a certificate that names no node (a client certificate).
    pub without_node_id: Arc<dyn Transport>,
    /// An id that is not a member and a transport presenting a certificate naming it.
    pub outsider: (u64, Arc<dyn Transport>),
}

/// A vote request from `from` at a far higher term: stepped, it would depose the leader.
fn vote_bytes(from: u64, to: u64, term: u64) -> Vec<u8> {
    let mut msg = Message::default();
    msg.set_msg_type(MessageType::MsgRequestVote);
    msg.from = from;
    msg.to = to;
    msg.term = term;
    msg.log_term = term;
    msg.index = 1 << 40;
    msg.encode_to_vec()
}

fn forged_batch(from: u64, to: u64, term: u64) -> RaftBatch {
    RaftBatch {
        cluster_id: 0,
        from,
        to,
        messages: vec![vote_bytes(from, to, term).into()],
        from_addr: format!("forged-{from}"),
    }
}

fn membership(action: MembershipAction, node_id: u64, empty_storage: bool) -> Request {
    Request {
        cluster_id: 0,
        kind: Some(request::Kind::Membership(MembershipRequest {
            action: action as i32,
            node_id,
            addr: format!("forged-{node_id}"),
            timeout_ms: 2000,
            empty_storage,
        })),
    }
}

fn propose(data: &[u8]) -> Request {
    Request {
        cluster_id: 0,
        kind: Some(request::Kind::Propose(ProposeRequest {
            data: data.to_vec(),
            timeout_ms: 2000,
            ..Default::default()
        })),
    }
}

fn chunk(from: u64, to: u64) -> Request {
    Request {
        cluster_id: 0,
        kind: Some(request::Kind::SnapshotChunk(SnapshotChunk {
            from,
            to,
            transfer_id: 1,
            offset: 0,
            total_len: 4,
            data: vec![0; 4],
            last: false,
            message: Vec::new(),
        })),
    }
}

/// Sends `request` and asserts it was refused (an error answer, or no answer at all).
async fn refused(who: &str, transport: &dyn Transport, addr: &str, request: Request) {
    let what = format!("{:?}", request.kind);
    match transport.call(addr, request, CALL_TIMEOUT).await {
        Ok(response) => match response.kind {
            Some(response::Kind::Error(e)) => {
                tracing::info!(who, "refused as expected: {}", e.message)
            }
            other => panic!("{who}: {what} was accepted: {other:?}"),
        },
        Err(e) => tracing::info!(who, "refused as expected: {e}"),
    }
}

fn refusals(leader: &Mailbox, reason: &str) -> u64 {
    leader
        .metrics()
        .refused_messages
        .iter()
        .find(|(r, _)| *r == reason)
        .map_or(0, |(_, n)| *n)
}

/// Runs the scenario against `leader` (reachable at `leader_addr`), whose cluster has
/// `victim` as another member besides the impostor member. Panics, naming the caller and the
/// request, when anything is accepted or the leader's term or membership changed.
pub async fn assert_impersonation_refused(
    leader: &Mailbox,
    leader_addr: &str,
    victim: u64,
    impostors: &Impostors,
) {
    let before = leader.status().await.unwrap();
    let leader_id = before.id;
    let high_term = before.term + 100;
    let identity_before = refusals(leader, "identity");
    let not_member_before = refusals(leader, "not_member");
    let (member_id, member) = (&impostors.member.0, impostors.member.1.as_ref());
    assert_ne!(*member_id, victim, "the victim must be another member");
    let anonymous = impostors.without_node_id.as_ref();
    let (outsider_id, outsider) = (impostors.outsider.0, impostors.outsider.1.as_ref());

    // A member speaking as another member: raft messages, snapshot chunks, a join that would
    // replace the victim's incarnation.
    let _ = member
        .send(leader_addr, forged_batch(victim, leader_id, high_term))
        .await;
    refused(
        "member as victim",
        member,
        leader_addr,
        chunk(victim, leader_id),
    )
    .await;
    refused(
        "member as victim",
        member,
        leader_addr,
        membership(MembershipAction::Join, victim, true),
    )
    .await;

    // A certificate naming no node: no raft traffic, no writes, no membership changes.
    let _ = anonymous
        .send(leader_addr, forged_batch(victim, leader_id, high_term))
        .await;
    let _ = anonymous
        .send(leader_addr, forged_batch(*member_id, leader_id, high_term))
        .await;
    refused("no node id", anonymous, leader_addr, propose(b"anonymous")).await;
    refused(
        "no node id",
        anonymous,
        leader_addr,
        chunk(*member_id, leader_id),
    )
    .await;
    refused(
        "no node id",
        anonymous,
        leader_addr,
        membership(MembershipAction::Remove, victim, false),
    )
    .await;
    // Asking how the node is stays allowed.
    let status = anonymous
        .call(
            leader_addr,
            Request {
                cluster_id: 0,
                kind: Some(request::Kind::Status(StatusRequest {})),
            },
            CALL_TIMEOUT,
        )
        .await
        .unwrap();
    assert!(
        matches!(status.kind, Some(response::Kind::Status(_))),
        "status is open to every certificate of the CA: {status:?}"
    );

    // A node of the CA that is not a member: its own id, but no say in this cluster.
    let _ = outsider
        .send(leader_addr, forged_batch(outsider_id, leader_id, high_term))
        .await;
    refused("outsider", outsider, leader_addr, propose(b"outsider")).await;
    refused(
        "outsider",
        outsider,
        leader_addr,
        membership(MembershipAction::Remove, victim, false),
    )
    .await;
    refused(
        "outsider",
        outsider,
        leader_addr,
        Request {
            cluster_id: 0,
            kind: Some(request::Kind::TransferLeader(TransferLeaderRequest {
                target: victim,
                timeout_ms: 2000,
            })),
        },
    )
    .await;

    // One-way batches are refused asynchronously: wait for every refusal to be counted.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let identity = refusals(leader, "identity") - identity_before;
        let not_member = refusals(leader, "not_member") - not_member_before;
        // member: batch, chunk, join; anonymous: 2 batches, proposal, chunk, remove.
        if identity >= 8 && not_member >= 4 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "refusals counted: identity {identity} (want 8), not_member {not_member} (want 4)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = leader.status().await.unwrap();
    assert_eq!(after.term, before.term, "the term moved");
    assert_eq!(after.leader_id, Some(leader_id), "the leader changed");
    assert_eq!(after.voters, before.voters, "the voters changed");
    assert_eq!(after.learners, before.learners, "the learners changed");
    assert_eq!(
        after.members, before.members,
        "the member addresses changed"
    );
}
