//! Proposals: batching a turn's proposals into one raft message, registering their waiters,
//! and refusing new work while the node is overloaded.

use super::*;
use crate::session::SessionTag;

/// A proposal waiting for the end of the turn, when all of them go to raft in one message.
pub(super) struct QueuedProposal {
    pub(super) data: Vec<u8>,
    pub(super) session: Option<SessionTag>,
    pub(super) deadline: Instant,
    pub(super) reply: Responder,
}

impl NodeCore {
    pub(super) fn next_context(&mut self, members: Vec<Member>) -> (u64, u64, Vec<u8>) {
        self.seq += 1;
        let term = self.raw.raft.term;
        let context = EntryContext {
            origin: self.id,
            term,
            seq: self.seq,
            members,
        };
        (term, self.seq, context.encode_to_vec())
    }

    pub(super) fn register(&mut self, term: u64, seq: u64, deadline: Instant, reply: Responder) {
        let index = self.raw.raft.raft_log.last_index();
        self.send_to_apply(ApplyMsg::Register {
            index,
            term,
            seq,
            deadline,
            reply,
        });
    }

    pub(super) fn propose(
        &mut self,
        data: Vec<u8>,
        session: Option<SessionTag>,
        deadline: Instant,
        reply: Responder,
    ) {
        if !self.is_leader() {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        self.new_proposals.push(QueuedProposal {
            data,
            session,
            deadline,
            reply,
        });
    }

    /// Why the leader cannot take `bytes` more of proposals now, if it cannot.
    pub(super) fn overloaded(&self, bytes: u64) -> Option<String> {
        let max_backlog = self.config.max_apply_backlog_bytes;
        if self.backlog.bytes > max_backlog {
            return Some(format!(
                "the state machine is {} bytes behind the log (at most {max_backlog})",
                self.backlog.bytes
            ));
        }
        let uncommitted = self.raw.raft.uncommitted_size() as u64;
        let max_uncommitted = self.config.max_uncommitted_bytes;
        if uncommitted > 0 && uncommitted + bytes > max_uncommitted {
            return Some(format!(
                "{uncommitted} bytes of proposals wait for a quorum (at most {max_uncommitted})"
            ));
        }
        None
    }

    /// Hands this turn's proposals to raft as one MsgPropose: one append per follower for the
    /// whole batch instead of one per proposal.
    pub(super) fn flush_proposals(&mut self) {
        if self.new_proposals.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.new_proposals);
        if !self.is_leader() {
            let error = self.not_leader();
            for p in batch {
                let _ = p.reply.send(Err(error.clone()));
            }
            return;
        }
        let bytes = batch.iter().map(|p| p.data.len() as u64).sum();
        if let Some(why) = self.overloaded(bytes) {
            let error = self.busy(why);
            for p in batch {
                let _ = p.reply.send(Err(error.clone()));
            }
            return;
        }
        let term = self.raw.raft.term;
        let mut entries = Vec::with_capacity(batch.len());
        let mut waiters = Vec::with_capacity(batch.len());
        for p in batch {
            entries.push(Entry {
                data: p.data.into(),
                context: p
                    .session
                    .map(SessionTag::to_context)
                    .unwrap_or_default()
                    .into(),
                ..Default::default()
            });
            waiters.push((p.deadline, p.reply));
        }
        let count = entries.len() as u64;
        let mut msg = Message {
            from: self.id,
            entries: entries.into(),
            ..Default::default()
        };
        msg.set_msg_type(MessageType::MsgPropose);
        let last_before = self.raw.raft.raft_log.last_index();
        match self.raw.step(msg) {
            Ok(()) if self.raw.raft.raft_log.last_index() == last_before + count => {
                let metrics = &self.counters.metrics;
                metrics.proposals.fetch_add(count, Ordering::Relaxed);
                self.send_to_apply(ApplyMsg::RegisterProposals {
                    first_index: last_before + 1,
                    term,
                    waiters,
                });
            }
            result => {
                let error = match result {
                    Err(e) => Error::from(e),
                    Ok(()) => Error::dropped(),
                };
                for (_, reply) in waiters {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}
