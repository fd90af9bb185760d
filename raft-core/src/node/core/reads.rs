//! Reads: ReadIndex batches, the leader lease, and answering reads once their index is
//! applied.

use super::*;

pub(super) struct PendingRead {
    pub(super) query: ReadOp,
    pub(super) deadline: Instant,
    pub(super) reply: Responder,
}

/// Reads that share one ReadIndex request.
pub(super) struct ReadBatch {
    pub(super) reads: Vec<PendingRead>,
    pub(super) first_issued: Instant,
    pub(super) last_issued: Instant,
}

impl NodeCore {
    pub(super) fn lease_valid(&self) -> bool {
        let raft = &self.raw.raft;
        self.is_leader()
            && raft.lead_transferee.is_none()
            && self.transfer_term != Some(raft.term)
            && self.lease_until.is_some_and(|t| self.now < t)
    }

    pub(super) fn pending_read_count(&self) -> usize {
        self.new_reads.len()
            + self
                .pending_reads
                .values()
                .map(|b| b.reads.len())
                .sum::<usize>()
            + Counters::get(&self.counters.pending_apply_reads) as usize
    }

    pub(super) fn read(
        &mut self,
        query: ReadOp,
        consistency: ReadConsistency,
        deadline: Instant,
        reply: Responder,
    ) {
        let max = self.config.max_pending_reads;
        if self.pending_read_count() >= max {
            let _ = reply.send(Err(self.busy(format!("{max} reads are already waiting"))));
            return;
        }
        match consistency {
            ReadConsistency::Stale => self.send_to_apply(ApplyMsg::Read {
                index: 0,
                query,
                deadline,
                reply,
            }),
            ReadConsistency::Lease if self.lease_valid() => self.send_to_apply(ApplyMsg::Read {
                index: self.raw.raft.raft_log.committed,
                query,
                deadline,
                reply,
            }),
            ReadConsistency::Lease if !self.is_leader() => {
                let _ = reply.send(Err(self.not_leader()));
            }
            _ => self.new_reads.push(PendingRead {
                query,
                deadline,
                reply,
            }),
        }
    }

    /// Issues one ReadIndex for all linearizable reads of this turn.
    pub(super) fn flush_reads(&mut self) {
        if self.new_reads.is_empty() {
            return;
        }
        self.read_seq += 1;
        let mut ctx = Vec::with_capacity(24);
        ctx.extend_from_slice(&self.id.to_be_bytes());
        ctx.extend_from_slice(&self.read_nonce.to_be_bytes());
        ctx.extend_from_slice(&self.read_seq.to_be_bytes());
        self.raw.read_index(ctx.clone());
        let now = self.now;
        self.pending_reads.insert(
            ctx,
            ReadBatch {
                reads: std::mem::take(&mut self.new_reads),
                first_issued: now,
                last_issued: now,
            },
        );
    }

    pub(super) fn on_read_state(&mut self, state: ReadState) {
        let Some(batch) = self.pending_reads.remove(&state.request_ctx) else {
            return;
        };
        let lease = self.config.lease_duration();
        if self.is_leader() && !lease.is_zero() {
            // A quorum heard from us after `first_issued`: none of them votes for another
            // candidate within an election timeout of that (check-quorum leases).
            let until = batch.first_issued + lease;
            if self.lease_until.is_none_or(|t| t < until) {
                self.lease_until = Some(until);
            }
        }
        for read in batch.reads {
            self.send_to_apply(ApplyMsg::Read {
                index: state.index,
                query: read.query,
                deadline: read.deadline,
                reply: read.reply,
            });
        }
    }
}
