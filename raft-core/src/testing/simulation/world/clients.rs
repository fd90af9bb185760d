//! The clients: each runs one operation at a time against some node, records it in the
//! history, and follows the leader the answers name; and the re-admission of a node that
//! lost its disk.

use super::*;

pub(super) struct Pending {
    pub(super) id: OpId,
    pub(super) op: KvOp,
    pub(super) reply: oneshot::Receiver<crate::error::Result<Vec<u8>>>,
    pub(super) deadline: Time,
}

pub(super) struct Client {
    pub(super) pending: Option<Pending>,
    /// The leader the last answer named.
    pub(super) hint: Option<u64>,
    pub(super) written: u64,
    /// Keys not yet read successfully in the final phase.
    pub(super) to_read: Vec<String>,
}

/// A re-admission in progress: an empty node asks the leader to take it back.
pub(super) struct JoinRequest {
    pub(super) node: u64,
    pub(super) reply: Option<oneshot::Receiver<crate::error::Result<Vec<u8>>>>,
}

impl World {
    /// An empty node asks the leader to re-admit it, until the leader accepts.
    pub(super) fn join_step(&mut self, id: u64) {
        let Some(at) = self.joins.iter().position(|j| j.node == id) else {
            return;
        };
        if !self.running(id) {
            self.joins.remove(at);
            return;
        }
        let Some(leader) = self.leader().filter(|&l| l != id) else {
            self.at(100 * MS, Event::Join(id));
            return;
        };
        let (reply, rx) = oneshot::channel();
        let op = Op::Membership(MembershipChange {
            action: MembershipAction::Join,
            node_id: id,
            addr: addr(id),
            empty_storage: true,
        });
        let deadline = self.instant() + sim_config().request_timeout;
        self.joins[at].reply = Some(rx);
        self.push_input(
            leader,
            NodeInput::Msg(DriverMsg::Op {
                op,
                deadline,
                reply,
            }),
        );
    }

    pub(super) fn poll_joins(&mut self) {
        let mut retry = Vec::new();
        let mut done = Vec::new();
        for (i, join) in self.joins.iter_mut().enumerate() {
            let Some(rx) = join.reply.as_mut() else {
                continue;
            };
            match rx.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => {}
                Ok(Ok(_)) => done.push(i),
                Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed) => {
                    join.reply = None;
                    retry.push(join.node);
                }
            }
        }
        for i in done.into_iter().rev() {
            let node = self.joins.remove(i).node;
            if let Some(r) = self.node(node).running.as_ref() {
                r.counters
                    .join_pending
                    .store(false, std::sync::atomic::Ordering::Relaxed);
            }
        }
        for node in retry {
            self.at(200 * MS, Event::Join(node));
        }
    }

    pub(super) fn client_step(&mut self, c: usize) {
        if self.clients[c].pending.is_some() || self.phase == Phase::Done {
            return;
        }
        let op = if self.phase == Phase::FinalReads {
            match self.clients[c].to_read.first() {
                Some(key) => KvOp::Get { key: key.clone() },
                None => return,
            }
        } else {
            self.random_op(c)
        };
        let running: Vec<u64> = (1..=self.config.nodes)
            .filter(|&id| self.running(id))
            .collect();
        if running.is_empty() {
            let after = self.between(10, 50);
            self.at(after, Event::ClientStep(c));
            return;
        }
        let target = match self.clients[c].hint.filter(|h| running.contains(h)) {
            Some(leader) => leader,
            None => running[self.rng.gen_range(0..running.len())],
        };
        let (reply, rx) = oneshot::channel();
        let bytes = encode_op(&op);
        let op_for_node = match &op {
            KvOp::Get { .. } => {
                let consistency = if self.rng.gen_bool(0.3) {
                    ReadConsistency::Lease
                } else {
                    ReadConsistency::Linearizable
                };
                Op::Read(bytes, consistency)
            }
            _ => Op::Propose(bytes, None),
        };
        let timeout = sim_config().request_timeout;
        let id = self.history.invoke(c as u64, op.clone());
        self.clients[c].pending = Some(Pending {
            id,
            op,
            reply: rx,
            deadline: self.now + timeout,
        });
        let deadline = self.instant() + timeout;
        self.push_input(
            target,
            NodeInput::Msg(DriverMsg::Op {
                op: op_for_node,
                deadline,
                reply,
            }),
        );
    }

    pub(super) fn random_op(&mut self, c: usize) -> KvOp {
        let key = format!("k{}", self.rng.gen_range(0..self.config.keys));
        let roll = self.rng.gen_range(0..100);
        let client = &mut self.clients[c];
        client.written += 1;
        let value = format!("c{c}.{}", client.written);
        match roll {
            0..=29 => KvOp::Put { key, value },
            30..=69 => KvOp::Get { key },
            70..=89 => {
                let expect = (self.rng.gen_bool(0.7)).then(|| {
                    let earlier = self.rng.gen_range(1..=client.written);
                    format!("c{c}.{earlier}")
                });
                KvOp::Cas { key, expect, value }
            }
            _ => KvOp::Delete { key },
        }
    }

    /// Collects the answers that arrived; an operation past its deadline and the sweeps
    /// that follow it, with no answer, is a waiter left pending.
    pub(super) fn poll_clients(&mut self) {
        self.poll_joins();
        for c in 0..self.clients.len() {
            let Some(pending) = self.clients[c].pending.as_mut() else {
                continue;
            };
            let result = match pending.reply.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => {
                    // The node answers every waiter by its deadline, within a tick; the
                    // mailbox stops waiting 500 ms after it only to bound a bug's harm.
                    if self.now > pending.deadline + Duration::from_millis(500) {
                        let what = format!(
                            "client {c}'s {} is unanswered 500 ms past its deadline",
                            pending.op
                        );
                        self.fail(what);
                    }
                    continue;
                }
                Ok(result) => result,
                Err(oneshot::error::TryRecvError::Closed) => Err(Error::node_stopped()),
            };
            let Some(pending) = self.clients[c].pending.take() else {
                continue;
            };
            let hint = match &result {
                Err(Error::NotLeader { leader_id, .. }) => *leader_id,
                Err(_) => None,
                Ok(_) => self.clients[c].hint,
            };
            let (output, outcome) = decode_answer(&pending.op, result);
            (c, format!("{outcome}")).hash(&mut self.trace);
            self.history.complete(pending.id, outcome);
            let client = &mut self.clients[c];
            client.hint = hint;
            if output.is_ok() && self.phase == Phase::FinalReads {
                client.to_read.retain(|k| k != pending.op.key());
                if self.clients.iter().all(|c| c.to_read.is_empty()) {
                    self.phase = Phase::Done;
                    return;
                }
            }
            let after = if output.is_err() {
                self.between(5, 50)
            } else {
                self.between(0, 10)
            };
            self.at(after, Event::ClientStep(c));
        }
    }
}
