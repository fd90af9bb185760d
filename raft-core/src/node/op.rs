//! The one operation type, from the mailbox to the driver and over the wire, and its codec.

use std::time::{Duration, Instant};

use super::error_codec::error_from_wire;
use super::messages::MembershipChange;
use crate::error::{Error, Result};
use crate::session::SessionTag;
use crate::status::ReadConsistency;
use crate::wire::{
    self, request, response, MembershipAction, MembershipRequest, ProposeRequest, QueryRequest,
    Request, Response, TransferLeaderRequest,
};

/// One operation a client asks of the cluster, whoever asks: this node's mailbox, or another
/// node's over the wire.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    /// A command, and its place in its client session when it has one.
    Propose(Vec<u8>, Option<SessionTag>),
    Read(Vec<u8>, ReadConsistency),
    Membership(MembershipChange),
    Transfer(u64),
}

impl Op {
    /// True when only the leader can serve it. A follower serves linearizable reads itself
    /// (ReadIndex through the leader, then its own state machine) and stale reads locally.
    pub(crate) fn needs_leader(&self) -> bool {
        match self {
            Op::Read(_, consistency) => *consistency == ReadConsistency::Lease,
            Op::Propose(..) | Op::Membership(_) | Op::Transfer(_) => true,
        }
    }

    /// Reads and leader transfers can be retried after any failure; writes only after a
    /// failure that proves they did not take effect.
    pub(crate) fn idempotent(&self) -> bool {
        matches!(self, Op::Read(..) | Op::Transfer(_))
    }

    /// Can be sent again after an unknown outcome: idempotent, or a command in a client
    /// session (the cluster answers its retry from the session instead of applying again).
    pub(crate) fn retry_safe(&self) -> bool {
        self.idempotent() || matches!(self, Op::Propose(_, Some(_)))
    }

    /// The request that carries this operation to another node, with what is left of its
    /// deadline when it leaves (clocks differ between nodes: the wire carries a duration).
    pub(crate) fn to_request(&self, deadline: Instant) -> Request {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout_ms = left.as_millis().max(1) as u64;
        let kind = match self.clone() {
            Op::Propose(data, session) => {
                let session = session.unwrap_or(SessionTag::new(0, 0));
                request::Kind::Propose(ProposeRequest {
                    data,
                    timeout_ms,
                    session_id: session.id,
                    session_seq: session.seq,
                    session_established: session.established,
                })
            }
            Op::Read(query, consistency) => request::Kind::Query(QueryRequest {
                query,
                consistency: wire::ReadConsistency::from(consistency) as i32,
                timeout_ms,
            }),
            Op::Membership(change) => request::Kind::Membership(MembershipRequest {
                action: change.action as i32,
                node_id: change.node_id,
                addr: change.addr,
                timeout_ms,
                empty_storage: change.empty_storage,
            }),
            Op::Transfer(target) => {
                request::Kind::TransferLeader(TransferLeaderRequest { target, timeout_ms })
            }
        };
        Request {
            kind: Some(kind),
            cluster_id: 0,
        }
    }
}

/// The answer another node gave to an operation.
pub(crate) fn answer_from_wire(response: Response) -> Result<Vec<u8>> {
    match response.kind {
        Some(response::Kind::Propose(v)) | Some(response::Kind::Query(v)) => Ok(v),
        Some(response::Kind::Membership(_)) | Some(response::Kind::TransferLeader(_)) => {
            Ok(Vec::new())
        }
        Some(response::Kind::Error(e)) => Err(error_from_wire(e)),
        _ => Err(Error::remote("unexpected response")),
    }
}

impl Op {
    /// The operation a request from another node carries, and its deadline here: `now` plus
    /// what its sender still waits, `default` when it says nothing, at most four times
    /// `default`. `None` when the request is not an operation.
    pub(crate) fn from_request(
        kind: &request::Kind,
        default: Duration,
        now: Instant,
    ) -> Option<Result<(Op, Instant)>> {
        let timeout = |ms: u64| {
            now + if ms == 0 {
                default
            } else {
                Duration::from_millis(ms).min(default * 4)
            }
        };
        Some(Ok(match kind {
            request::Kind::Propose(p) => {
                let session = SessionTag {
                    id: p.session_id,
                    seq: p.session_seq,
                    established: p.session_established,
                };
                let session = match (p.session_id, session.is_valid()) {
                    (0, _) => None,
                    (_, true) => Some(session),
                    (_, false) => {
                        return Some(Err(Error::Invalid(
                            "a proposal in a session numbers its command from 1".into(),
                        )))
                    }
                };
                (Op::Propose(p.data.clone(), session), timeout(p.timeout_ms))
            }
            request::Kind::Query(q) => {
                let consistency = wire::ReadConsistency::try_from(q.consistency)
                    .unwrap_or(wire::ReadConsistency::Linearizable);
                (
                    Op::Read(q.query.clone(), consistency.into()),
                    timeout(q.timeout_ms),
                )
            }
            request::Kind::Membership(m) => {
                let Ok(action) = MembershipAction::try_from(m.action) else {
                    return Some(Err(Error::Invalid(format!(
                        "unknown membership action {}",
                        m.action
                    ))));
                };
                let change = MembershipChange {
                    action,
                    node_id: m.node_id,
                    addr: m.addr.clone(),
                    empty_storage: m.empty_storage,
                };
                (Op::Membership(change), timeout(m.timeout_ms))
            }
            request::Kind::TransferLeader(t) => (Op::Transfer(t.target), timeout(t.timeout_ms)),
            _ => return None,
        }))
    }
}
