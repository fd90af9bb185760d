//! The server side of a node: turns inbound raft batches and calls into driver messages.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::cluster_id;
use super::error_codec::error_to_wire;
use super::handle::NodeHandle;
use super::inbound::{check_wire, Refusal, Route, MAX_ADDR};
use super::messages::DriverMsg;
use super::op::Op;
use super::snapshot_transfer::SnapshotAssembler;
use super::Counters;
use crate::error::{Error, NotApplied, TransportError};
use crate::transport::{InboundHandler, PeerIdentity};
use crate::wire::{
    self, request, response, BatchRequest, BatchResponse, LeaderInfoResponse, MembershipAction,
    RaftBatch, Request, Response,
};

/// Most requests accepted in one batch (the forwarding side sends at most 512).
const MAX_BATCH: usize = 4096;

pub(crate) struct NodeServer {
    pub(crate) node: Arc<NodeHandle>,
    pub(crate) assembler: Arc<SnapshotAssembler>,
}

/// The response kind that carries the store's answer to a proposal or a read.
fn answer_carrier(op: &Op) -> fn(Vec<u8>) -> response::Kind {
    match op {
        Op::Propose(..) => response::Kind::Propose,
        _ => response::Kind::Query,
    }
}

fn reply(kind: response::Kind) -> Response {
    Response { kind: Some(kind) }
}

#[async_trait]
impl InboundHandler for NodeServer {
    async fn raft_batch(
        &self,
        peer: PeerIdentity,
        mut batch: RaftBatch,
    ) -> Result<(), TransportError> {
        let id = self.node.id;
        let metrics = &self.node.counters.metrics;
        let count = batch.messages.len().max(1) as u64;
        let whole = |reason: Refusal, why: String| {
            metrics.refuse_many(id, reason, count, &why);
            Err(TransportError::Malformed(why))
        };
        if let Err(why) = self.check_cluster(batch.cluster_id) {
            return whole(Refusal::Cluster, why);
        }
        if !peer.may_be(batch.from) {
            return whole(
                Refusal::Identity,
                format!("{peer} sent raft messages as node {}", batch.from),
            );
        }
        if batch.to != id || batch.from == 0 || batch.from == id {
            return whole(
                Refusal::Addressing,
                format!(
                    "raft batch {}->{} delivered to node {id}",
                    batch.from, batch.to
                ),
            );
        }
        if batch.from_addr.len() > MAX_ADDR {
            return whole(Refusal::Field, "an oversized sender address".into());
        }
        let from_addr: Option<std::sync::Arc<str>> =
            (!batch.from_addr.is_empty()).then(|| batch.from_addr.as_str().into());
        for bytes in std::mem::take(&mut batch.messages) {
            let msg = match wire::decode_raft_message(bytes) {
                Ok(m) => m,
                Err(e) => {
                    metrics.refuse(id, Refusal::Undecodable, &e);
                    continue;
                }
            };
            let checked = if msg.from != batch.from {
                Err(Refusal::Addressing)
            } else if !self.node.counters.admits(msg.from) {
                Err(Refusal::NotMember)
            } else {
                check_wire(&msg, id, Route::Batch)
            };
            if let Err(reason) = checked {
                metrics.refuse(
                    id,
                    reason,
                    &format_args!("{:?} from node {}", msg.get_msg_type(), batch.from),
                );
                continue;
            }
            self.node
                .driver_tx
                .send(DriverMsg::Raft(Box::new(msg), from_addr.clone()))
                .await
                .map_err(|_| TransportError::Unreachable {
                    addr: self.node.addr.clone(),
                    reason: "node stopped".into(),
                })?;
        }
        Ok(())
    }

    async fn call(&self, peer: PeerIdentity, request: Request) -> Response {
        if let Some(kind) = &request.kind {
            let allowed = self
                .check_cluster(request.cluster_id)
                .map_err(|why| (Refusal::Cluster, why))
                .and_then(|()| self.authorize(peer, kind));
            if let Err((reason, why)) = allowed {
                self.node
                    .counters
                    .metrics
                    .refuse(self.node.id, reason, &why);
                // A caller from another cluster most likely has a stale idea of who is at this
                // address (a leader that was replaced): it retries elsewhere, not gives up.
                let error = match reason {
                    Refusal::Cluster => Error::NotApplied(NotApplied::OtherCluster(why)),
                    _ => Error::Invalid(why),
                };
                return reply(response::Kind::Error(error_to_wire(&error)));
            }
        }
        match request.kind {
            Some(request::Kind::Batch(batch)) => self.call_batch(batch).await,
            kind => self.call_one(kind).await,
        }
    }
}

impl NodeServer {
    /// Refuses traffic from another cluster; a sender or receiver that does not know its
    /// cluster yet (a node that is joining) is let through.
    fn check_cluster(&self, theirs: u64) -> Result<(), String> {
        let ours = Counters::get(&self.node.counters.cluster_id);
        cluster_id::check(self.node.id, ours, theirs)
    }

    /// Whether `peer` may make this call. A plaintext transport authenticates nobody, so its
    /// callers are taken at their word. Over TLS, a certificate naming no node may only ask
    /// who leads and how the node is; a certificate naming a node that is not a member may only
    /// ask to join as itself; a member may do anything, but only ever as itself (snapshot
    /// chunks, and joins that replace a lost disk, carry the sender's own id).
    fn authorize(&self, peer: PeerIdentity, kind: &request::Kind) -> Result<(), (Refusal, String)> {
        use request::Kind;
        let id = match (peer, kind) {
            (PeerIdentity::Unauthenticated, _) | (_, Kind::LeaderInfo(_) | Kind::Status(_)) => {
                return Ok(())
            }
            (PeerIdentity::WithoutNodeId, _) => {
                return Err((
                    Refusal::Identity,
                    format!("{peer} may only ask for status, not {}", kind_name(kind)),
                ))
            }
            (PeerIdentity::Node(id), _) => id,
        };
        let claimed = match kind {
            Kind::SnapshotChunk(chunk) => Some(chunk.from),
            Kind::Membership(m) if m.empty_storage => Some(m.node_id),
            _ => None,
        };
        if let Some(claimed) = claimed.filter(|&c| c != id) {
            return Err((
                Refusal::Identity,
                format!("{peer} sent {} as node {claimed}", kind_name(kind)),
            ));
        }
        let joins_as_itself = matches!(kind, Kind::Membership(m)
            if m.node_id == id && m.action == MembershipAction::Join as i32);
        if joins_as_itself || self.node.counters.admits(id) {
            Ok(())
        } else {
            Err((
                Refusal::NotMember,
                format!("{peer} is not a member and sent {}", kind_name(kind)),
            ))
        }
    }

    /// A follower's forwarded proposals and queries: handed to the driver as one message and
    /// each answered as if it had come alone (the driver puts them in one raft proposal and
    /// one ReadIndex).
    async fn call_batch(&self, batch: BatchRequest) -> Response {
        if batch.requests.len() > MAX_BATCH {
            return reply(response::Kind::Error(error_to_wire(&Error::Invalid(
                format!(
                    "a batch of {} requests (at most {MAX_BATCH})",
                    batch.requests.len()
                ),
            ))));
        }
        let default = self.node.config.request_timeout;
        let now = Instant::now();
        // Decoded in order; what is not a proposal or a query is answered at once.
        let mut responses: Vec<Option<Response>> = Vec::with_capacity(batch.requests.len());
        let mut ops = Vec::with_capacity(batch.requests.len());
        for r in batch.requests {
            let op = match &r.kind {
                Some(kind @ (request::Kind::Propose(_) | request::Kind::Query(_))) => {
                    Op::from_request(kind, default, now)
                }
                _ => None,
            };
            match op {
                Some(Ok(op_and_deadline)) => {
                    ops.push(op_and_deadline);
                    responses.push(None);
                }
                Some(Err(e)) => {
                    responses.push(Some(reply(response::Kind::Error(error_to_wire(&e)))))
                }
                None => responses.push(Some(reply(response::Kind::Error(error_to_wire(
                    &Error::Invalid("only proposals and queries can be batched".into()),
                ))))),
            }
        }
        let carriers: Vec<_> = ops.iter().map(|(op, _)| answer_carrier(op)).collect();
        let mut answers = self.node.run_many(ops).await.into_iter().zip(carriers);
        let responses = responses
            .into_iter()
            .map(|slot| {
                slot.unwrap_or_else(|| match answers.next() {
                    Some((Ok(answer), carry)) => reply(carry(answer)),
                    Some((Err(e), _)) => reply(response::Kind::Error(error_to_wire(&e))),
                    None => reply(response::Kind::Error(error_to_wire(&Error::remote(
                        "an answer went missing",
                    )))),
                })
            })
            .collect();
        reply(response::Kind::Batch(BatchResponse { responses }))
    }

    async fn call_one(&self, kind: Option<request::Kind>) -> Response {
        let default = self.node.config.request_timeout;
        let now = Instant::now();
        let op = kind
            .as_ref()
            .and_then(|k| Op::from_request(k, default, now));
        let result: Result<response::Kind, Error> = match (op, kind) {
            (Some(Err(e)), _) => Err(e),
            (Some(Ok((op, deadline))), _) => self.run(op, deadline).await,
            (None, None) => Err(Error::Invalid("empty request".into())),
            (None, Some(request::Kind::Batch(_))) => {
                Err(Error::Invalid("a batch inside a batch".into()))
            }
            (None, Some(request::Kind::LeaderInfo(_))) => self.node.status().await.map(|s| {
                let leader_id = s.leader_id.unwrap_or(0);
                let leader_addr = s
                    .leader_id
                    .and_then(|l| s.members.get(&l).cloned())
                    .unwrap_or_default();
                response::Kind::LeaderInfo(LeaderInfoResponse {
                    leader_id,
                    leader_addr,
                })
            }),
            (None, Some(request::Kind::Status(_))) => self
                .node
                .status()
                .await
                .map(|s| response::Kind::Status((&s).into())),
            (None, Some(request::Kind::SnapshotChunk(chunk))) => {
                match self.assembler.accept(chunk).await {
                    Ok(None) => Ok(response::Kind::SnapshotChunk(true)),
                    Ok(Some(msg)) => {
                        let from = msg.from;
                        match self
                            .node
                            .driver_tx
                            .send(DriverMsg::Raft(Box::new(msg), None))
                            .await
                        {
                            Ok(()) => Ok(response::Kind::SnapshotChunk(true)),
                            Err(_) => Err(Error::shutdown()),
                        }
                        .inspect(|_| {
                            tracing::info!(node = self.node.id, from, "received a snapshot")
                        })
                    }
                    Err((reason, why)) => {
                        self.node
                            .counters
                            .metrics
                            .refuse(self.node.id, reason, &why);
                        Err(Error::Invalid(why))
                    }
                }
            }
            // Every other kind is an operation, handled above.
            (None, Some(_)) => Err(Error::Invalid("not an operation".into())),
        };
        match result {
            Ok(kind) => reply(kind),
            Err(e) => reply(response::Kind::Error(error_to_wire(&e))),
        }
    }

    /// Runs another node's operation here and answers it in the response kind its request
    /// expects.
    async fn run(&self, op: Op, deadline: Instant) -> Result<response::Kind, Error> {
        match op {
            Op::Propose(..) | Op::Read(..) => {
                let carry = answer_carrier(&op);
                self.node.run(op, deadline).await.map(carry)
            }
            Op::Membership(_) => {
                self.node.run(op, deadline).await?;
                // The membership the change produced, as this node sees it.
                let status = self.node.status().await?;
                Ok(response::Kind::Membership((&status).into()))
            }
            Op::Transfer(_) => {
                self.node.run(op, deadline).await?;
                Ok(response::Kind::TransferLeader(true))
            }
        }
    }
}

/// What a call asks for, in a refusal's words.
fn kind_name(kind: &request::Kind) -> &'static str {
    use request::Kind;
    match kind {
        Kind::Propose(_) => "a proposal",
        Kind::Query(_) => "a query",
        Kind::Batch(_) => "a batch of forwarded requests",
        Kind::Membership(_) => "a membership change",
        Kind::TransferLeader(_) => "a leader transfer",
        Kind::LeaderInfo(_) => "a leader query",
        Kind::Status(_) => "a status query",
        Kind::SnapshotChunk(_) => "a snapshot chunk",
    }
}
