//! Membership: planning and proposing conf changes, promoting caught-up learners, leaving
//! joint consensus, leadership transfer, and applying committed conf changes.

use super::*;

/// What a membership request needs.
pub(super) enum Plan {
    /// Already in effect.
    Done,
    /// One conf change, with the member's address when it adds one.
    Change(ConfChangeType, Option<Member>),
    /// The node lost its disk: remove the old incarnation; it joins again after.
    Replace,
}

pub(super) fn single_change(change_type: ConfChangeType, node_id: u64) -> ConfChangeV2 {
    let mut single = ConfChangeSingle {
        node_id,
        ..Default::default()
    };
    single.set_change_type(change_type);
    let mut cc = ConfChangeV2 {
        changes: vec![single].into(),
        ..Default::default()
    };
    cc.set_transition(ConfChangeTransition::Auto);
    cc
}

pub(super) fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort_unstable();
    v
}

impl NodeCore {
    pub(super) fn conf_pending(&self) -> bool {
        self.raw.raft.has_pending_conf()
    }

    pub(super) fn maybe_leave_joint(&mut self) {
        let cs = self.raw.raft.prs().conf().to_conf_state();
        if cs.voters_outgoing.is_empty() || self.conf_pending() {
            return;
        }
        tracing::info!(node = self.id, "leaving joint configuration");
        if let Err(e) = self
            .raw
            .propose_conf_change(Vec::new(), ConfChangeV2::default())
        {
            tracing::debug!(
                node = self.id,
                "could not leave joint configuration yet: {e}"
            );
        }
    }

    /// The log index a learner has acknowledged (0: nothing yet, or not a member).
    pub(super) fn matched(&self, id: u64) -> u64 {
        self.raw.raft.prs().get(id).map_or(0, |p| p.matched)
    }

    pub(super) fn maybe_promote_learners(&mut self) {
        if self.conf_pending() {
            return;
        }
        let last = self.raw.raft.raft_log.last_index();
        let cs = self.raw.raft.prs().conf().to_conf_state();
        // A learner that acknowledged nothing has no state yet (it may not even have its
        // snapshot): it stays a learner until it caught up, whatever the lag allows.
        let candidate = self.members.iter().find(|m| {
            m.promote && cs.learners.contains(&m.id) && {
                let matched = self.matched(m.id);
                matched > 0 && matched + self.config.promote_lag >= last
            }
        });
        let Some(member) = candidate.cloned() else {
            return;
        };
        tracing::info!(
            node = self.id,
            learner = member.id,
            "promoting caught-up learner to voter"
        );
        let member = Member {
            promote: false,
            ..member
        };
        let id = member.id;
        let (_, _, context) = self.next_context(vec![member]);
        let cc = single_change(ConfChangeType::AddNode, id);
        if let Err(e) = self.raw.propose_conf_change(context, cc) {
            tracing::debug!(node = self.id, "promotion not proposed: {e}");
        }
    }

    pub(super) fn change_membership(
        &mut self,
        change: MembershipChange,
        deadline: Instant,
        reply: Responder,
    ) {
        let node_id = change.node_id;
        let (conf_change, member) = match self.plan_membership(change) {
            Ok(Plan::Done) => {
                let _ = reply.send(Ok(Vec::new()));
                return;
            }
            Ok(Plan::Change(change, member)) => (change, member),
            Ok(Plan::Replace) => {
                // Remove the old incarnation now; the joining node retries its join and is
                // added again as a learner once the removal applied.
                if self.conf_pending() {
                    let _ = reply.send(Err(Error::membership_busy()));
                    return;
                }
                let (_, _, context) = self.next_context(Vec::new());
                let cc = single_change(ConfChangeType::RemoveNode, node_id);
                let answer = match self.raw.propose_conf_change(context, cc) {
                    Ok(()) => {
                        tracing::warn!(
                            node = self.id,
                            replaced = node_id,
                            "node {node_id} joined with empty storage: removing its old \
                             incarnation before it is added again as a learner"
                        );
                        Err(Error::busy(format!(
                            "node {node_id} lost its state; its old incarnation is being \
                             removed, retry the join"
                        )))
                    }
                    Err(raft::Error::ProposalDropped) => Err(Error::membership_busy()),
                    Err(e) => Err(Error::from(e)),
                };
                let _ = reply.send(answer);
                return;
            }
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        if self.conf_pending() {
            let _ = reply.send(Err(Error::membership_busy()));
            return;
        }
        let (term, seq, context) = self.next_context(member.into_iter().collect());
        match self
            .raw
            .propose_conf_change(context, single_change(conf_change, node_id))
        {
            Ok(()) => self.register(term, seq, deadline, reply),
            Err(raft::Error::ProposalDropped) => {
                let _ = reply.send(Err(Error::membership_busy()));
            }
            Err(e) => {
                let _ = reply.send(Err(Error::from(e)));
            }
        }
    }

    /// What a membership request needs.
    pub(super) fn plan_membership(&mut self, change: MembershipChange) -> Result<Plan> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        let MembershipChange {
            action,
            node_id,
            addr,
            empty_storage,
        } = change;
        if node_id == 0 {
            return Err(Error::Invalid("node id 0 is reserved".into()));
        }
        if addr.len() > MAX_ADDR {
            return Err(Error::Invalid(format!(
                "an address of {} bytes (at most {MAX_ADDR})",
                addr.len()
            )));
        }
        let cs = self.raw.raft.prs().conf().to_conf_state();
        let is_voter = cs.voters.contains(&node_id) || cs.voters_outgoing.contains(&node_id);
        let is_learner = cs.learners.contains(&node_id);
        let known_addr = self.members.addr(node_id).map(str::to_string);
        let member = |promote| Member {
            id: node_id,
            addr: addr.clone(),
            promote,
        };
        match action {
            MembershipAction::Join | MembershipAction::AddLearner => {
                if addr.is_empty() {
                    return Err(Error::Invalid("a joining node needs an address".into()));
                }
                if is_voter || is_learner {
                    if empty_storage {
                        // The node lost its disk: its votes and log are gone. Unless it is a
                        // learner that never acknowledged anything (its earlier join), the
                        // old incarnation must go before it may count again.
                        let fresh = is_learner && self.matched(node_id) == 0;
                        if fresh && known_addr.as_deref() == Some(addr.as_str()) {
                            return Ok(Plan::Done);
                        }
                        self.check_replaceable(node_id, &cs.voters, is_voter)?;
                        return Ok(Plan::Replace);
                    }
                    if known_addr.as_deref() == Some(addr.as_str()) {
                        return Ok(Plan::Done);
                    }
                    return Err(Error::Invalid(format!(
                        "node {node_id} is already a member at {}; remove it first",
                        known_addr.unwrap_or_default()
                    )));
                }
                let promote = action == MembershipAction::Join;
                Ok(Plan::Change(
                    ConfChangeType::AddLearnerNode,
                    Some(member(promote)),
                ))
            }
            MembershipAction::Promote => {
                if is_voter {
                    return Ok(Plan::Done);
                }
                if !is_learner {
                    return Err(Error::Invalid(format!("node {node_id} is not a learner")));
                }
                if self.matched(node_id) == 0 {
                    return Err(Error::Invalid(format!(
                        "learner {node_id} has not received any of the log yet; promote it \
                         once it caught up"
                    )));
                }
                let m = Member {
                    id: node_id,
                    addr: known_addr.unwrap_or(addr),
                    promote: false,
                };
                Ok(Plan::Change(ConfChangeType::AddNode, Some(m)))
            }
            MembershipAction::Remove => {
                if !is_voter && !is_learner {
                    return Ok(Plan::Done);
                }
                if is_voter && cs.voters.len() == 1 {
                    return Err(Error::Invalid(format!(
                        "node {node_id} is the only voter; removing it would end the cluster"
                    )));
                }
                if node_id == self.id {
                    // A leader does not remove itself: hand leadership to the most caught-up
                    // voter first; the caller retries against the new leader.
                    let target = cs
                        .voters
                        .iter()
                        .copied()
                        .filter(|&v| v != self.id)
                        .max_by_key(|&v| self.matched(v));
                    if let Some(target) = target {
                        tracing::info!(
                            node = self.id,
                            target,
                            "transferring leadership before leaving"
                        );
                        self.start_transfer(target);
                    }
                    return Err(Error::NotLeader {
                        leader_id: None,
                        leader_addr: None,
                    });
                }
                Ok(Plan::Change(ConfChangeType::RemoveNode, None))
            }
        }
    }

    /// A voter that lost its disk can be removed only if the other voters still form a
    /// quorum that this leader reaches; otherwise the removal would never commit.
    pub(super) fn check_replaceable(
        &self,
        node_id: u64,
        voters: &[u64],
        is_voter: bool,
    ) -> Result<()> {
        if !is_voter {
            return Ok(());
        }
        if node_id == self.id {
            return Err(Error::Invalid(format!(
                "node {node_id} leads this cluster and cannot be re-admitted by itself"
            )));
        }
        let others: Vec<u64> = voters.iter().copied().filter(|&v| v != node_id).collect();
        let reachable: Vec<u64> = others
            .iter()
            .copied()
            .filter(|&v| v == self.id || self.heard_from_recently(v))
            .collect();
        if reachable.len() < others.len() / 2 + 1 {
            let unreachable: Vec<u64> = others
                .iter()
                .copied()
                .filter(|v| !reachable.contains(v))
                .collect();
            // Retryable, not a refusal: right after an election, or while a paused peer comes
            // back, a voter that is fine has not been heard from yet. The joining node retries
            // until its deadline and then fails with this advice.
            return Err(Error::busy(format!(
                "node {node_id} lost its disk and must be re-admitted: its old incarnation is \
                 removed first, which needs a quorum of the other voters {others:?}, but \
                 {unreachable:?} are unreachable. Bring them back and retry, or restore the \
                 cluster from a backup"
            )));
        }
        Ok(())
    }

    /// `id` sent this node a raft message within the last election timeout. raft-rs's
    /// `Progress::recent_active` is not used: check-quorum clears it for every peer once per
    /// election timeout, so a request that lands right after that check finds every healthy
    /// peer "inactive", and a client retrying on the same period never gets through.
    fn heard_from_recently(&self, id: u64) -> bool {
        self.last_contact
            .since(id, self.now)
            .is_some_and(|ago| ago <= self.config.min_election_timeout())
    }

    pub(super) fn start_transfer(&mut self, target: u64) {
        self.lease_until = None;
        self.transfer_term = Some(self.raw.raft.term);
        self.raw.transfer_leader(target);
    }

    pub(super) fn transfer_leader(&mut self, target: u64) -> Result<()> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        if target == self.id {
            return Ok(());
        }
        let cs = self.raw.raft.prs().conf().to_conf_state();
        if !cs.voters.contains(&target) {
            return Err(Error::Invalid(format!("node {target} is not a voter")));
        }
        self.start_transfer(target);
        Ok(())
    }

    pub(super) fn apply_conf_change(&mut self, entry: &Entry, cc: &ConfChangeV2) -> ConfOutcome {
        let result = self.raw.apply_conf_change(cc).map_err(|e| e.to_string());
        self.conf_changed = true;
        if result.is_ok() {
            let context = entry_context(&entry.context);
            for change in &cc.changes {
                let id = change.node_id;
                let from_context = context
                    .as_ref()
                    .and_then(|c| c.members.iter().find(|m| m.id == id).cloned());
                let floors = &mut self.raw.mut_store().snapshot_floor;
                match change.get_change_type() {
                    ConfChangeType::AddLearnerNode => {
                        floors.insert(id, entry.index);
                    }
                    ConfChangeType::RemoveNode => {
                        floors.remove(&id);
                    }
                    ConfChangeType::AddNode => {}
                }
                match change.get_change_type() {
                    ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                        if let Some(member) = from_context {
                            self.learned_addrs.remove(&id);
                            self.members.upsert(member);
                        } else if let Some(addr) = self.learned_addrs.remove(&id) {
                            self.members.upsert(Member {
                                id,
                                addr: addr.to_string(),
                                promote: false,
                            });
                        }
                    }
                    ConfChangeType::RemoveNode => {
                        self.members.remove(id);
                        self.outputs.push_back(Output::RemovePeer(id));
                        if id == self.id {
                            self.removed = true;
                        }
                    }
                }
            }
            tracing::info!(
                node = self.id,
                index = entry.index,
                "membership changed: {:?}",
                result.as_ref().ok()
            );
        } else if let Err(e) = &result {
            tracing::warn!(
                node = self.id,
                index = entry.index,
                "conf change rejected: {e}"
            );
        }
        ConfOutcome {
            result,
            members: self.members.to_list(),
        }
    }
}
