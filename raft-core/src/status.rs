//! What a node reports about itself, and read consistency levels.

use std::collections::BTreeMap;

use crate::wire;

/// A node's role in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Role {
    /// Follows a leader (or waits for one).
    #[default]
    Follower,
    /// Campaigning in an election.
    Candidate,
    /// Checking whether an election could succeed (pre-vote).
    PreCandidate,
    /// The leader.
    Leader,
    /// A non-voting member receiving the log.
    Learner,
}

impl Role {
    /// Lower-case name (`leader`, `follower`, ...).
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::PreCandidate => "pre-candidate",
            Role::Leader => "leader",
            Role::Learner => "learner",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of a node's raft state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub id: u64,
    /// Its role.
    pub role: Role,
    /// The leader it knows of.
    pub leader_id: Option<u64>,
    /// Current term.
    pub term: u64,
    /// Highest log index known committed.
    pub commit_index: u64,
    /// Highest log index applied to the state machine.
    pub applied_index: u64,
    /// Voting members.
    pub voters: Vec<u64>,
    /// Non-voting members.
    pub learners: Vec<u64>,
    /// Address of every member.
    pub members: BTreeMap<u64, String>,
    /// Index of the latest snapshot.
    pub snapshot_index: u64,
    /// First index still in the log.
    pub first_log_index: u64,
    /// Last index in the log.
    pub last_log_index: u64,
    /// The cluster this node belongs to: chosen when the cluster was bootstrapped, 0 while a
    /// joining node has not received its first snapshot.
    pub cluster_id: u64,
    /// Proposals waiting for their result on this node.
    pub pending_proposals: u64,
    /// Reads waiting on this node.
    pub pending_reads: u64,
    /// On the leader: how far each member (itself included) has the log. Empty on other
    /// nodes: only the leader tracks replication.
    pub progress: BTreeMap<u64, MemberProgress>,
}

/// What [`crate::Mailbox::watch_status`] publishes: the part of a node's [`Status`] that
/// changes with events (its role, the leader it knows, the term, the membership, the applied
/// index), updated by the node as they happen rather than asked for.
///
/// The node publishes a new value only when one of these fields changed, and a subscriber sees
/// the latest value (not every intermediate one): a `tokio::sync::watch` channel coalesces
/// updates that arrive faster than it reads them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LiveStatus {
    /// This node.
    pub id: u64,
    /// Its role.
    pub role: Role,
    /// The leader it knows of.
    pub leader_id: Option<u64>,
    /// Current term.
    pub term: u64,
    /// Voting members, sorted.
    pub voters: Vec<u64>,
    /// Non-voting members, sorted.
    pub learners: Vec<u64>,
    /// Highest log index applied to the state machine.
    pub applied_index: u64,
    /// True once this node stopped (shut down, removed, failed or aborted): nothing changes
    /// any more.
    pub stopped: bool,
}

/// How fresh a [`crate::Mailbox::query_with`] read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadConsistency {
    /// Reflects every write acknowledged before the read started (ReadIndex through a quorum).
    #[default]
    Linearizable,
    /// Served by the leader while its lease holds (no quorum round trip); relies on bounded
    /// clock drift between nodes.
    Lease,
    /// Whatever this node has applied; may be arbitrarily old.
    Stale,
}

impl From<ReadConsistency> for wire::ReadConsistency {
    fn from(c: ReadConsistency) -> Self {
        match c {
            ReadConsistency::Linearizable => wire::ReadConsistency::Linearizable,
            ReadConsistency::Lease => wire::ReadConsistency::Lease,
            ReadConsistency::Stale => wire::ReadConsistency::Stale,
        }
    }
}

impl From<wire::ReadConsistency> for ReadConsistency {
    fn from(c: wire::ReadConsistency) -> Self {
        match c {
            wire::ReadConsistency::Linearizable => ReadConsistency::Linearizable,
            wire::ReadConsistency::Lease => ReadConsistency::Lease,
            wire::ReadConsistency::Stale => ReadConsistency::Stale,
        }
    }
}

impl From<&Status> for wire::NodeStatus {
    fn from(s: &Status) -> Self {
        let role = match s.role {
            Role::Follower => wire::Role::Follower,
            Role::Candidate => wire::Role::Candidate,
            Role::PreCandidate => wire::Role::PreCandidate,
            Role::Leader => wire::Role::Leader,
            Role::Learner => wire::Role::Learner,
        };
        wire::NodeStatus {
            id: s.id,
            role: role as i32,
            leader_id: s.leader_id.unwrap_or(0),
            term: s.term,
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            voters: s.voters.clone(),
            learners: s.learners.clone(),
            members: s
                .members
                .iter()
                .map(|(&id, addr)| wire::Member {
                    id,
                    addr: addr.clone(),
                    promote: false,
                })
                .collect(),
            snapshot_index: s.snapshot_index,
            first_log_index: s.first_log_index,
            last_log_index: s.last_log_index,
            cluster_id: s.cluster_id,
            pending_proposals: s.pending_proposals,
            pending_reads: s.pending_reads,
            progress: s
                .progress
                .iter()
                .map(|(&id, p)| progress_to_wire(id, p))
                .collect(),
        }
    }
}

impl From<wire::NodeStatus> for Status {
    fn from(s: wire::NodeStatus) -> Self {
        let role = match wire::Role::try_from(s.role).unwrap_or(wire::Role::Follower) {
            wire::Role::Follower => Role::Follower,
            wire::Role::Candidate => Role::Candidate,
            wire::Role::PreCandidate => Role::PreCandidate,
            wire::Role::Leader => Role::Leader,
            wire::Role::Learner => Role::Learner,
        };
        Status {
            id: s.id,
            role,
            leader_id: (s.leader_id != 0).then_some(s.leader_id),
            term: s.term,
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            voters: s.voters,
            learners: s.learners,
            members: s.members.into_iter().map(|m| (m.id, m.addr)).collect(),
            snapshot_index: s.snapshot_index,
            first_log_index: s.first_log_index,
            last_log_index: s.last_log_index,
            cluster_id: s.cluster_id,
            pending_proposals: s.pending_proposals,
            pending_reads: s.pending_reads,
            progress: s.progress.into_iter().map(progress_from_wire).collect(),
        }
    }
}

/// Where the leader stands in replicating to one member (raft-rs's `ProgressState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicationState {
    /// The leader is finding where the member's log matches its own: one append per
    /// heartbeat until the member accepts one.
    Probe,
    /// Appends stream to the member as fast as it acknowledges them.
    Replicate,
    /// The member is behind the leader's log and receives a snapshot.
    Snapshot,
}

impl ReplicationState {
    /// Lower-case name (`probe`, `replicate`, `snapshot`).
    pub fn as_str(&self) -> &'static str {
        match self {
            ReplicationState::Probe => "probe",
            ReplicationState::Replicate => "replicate",
            ReplicationState::Snapshot => "snapshot",
        }
    }
}

impl std::fmt::Display for ReplicationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The leader's view of one member's log (see [`Status::progress`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberProgress {
    /// Highest log index known to be on the member.
    pub matched: u64,
    /// The next index the leader sends it.
    pub next_index: u64,
    /// Entries the member is behind the leader's last index.
    pub lag: u64,
    /// How the leader replicates to it now.
    pub state: ReplicationState,
    /// Time since this node (the leader) last received any raft message from the member, in
    /// any role, when the status was taken; `None` if it never did since the node started
    /// (and for the leader itself).
    pub last_contact: Option<std::time::Duration>,
    /// Whether raft-rs counted the member as active within the last election timeout.
    pub recent_active: bool,
}

fn progress_to_wire(id: u64, p: &MemberProgress) -> wire::MemberProgress {
    let state = match p.state {
        ReplicationState::Probe => wire::ReplicationState::Probe,
        ReplicationState::Replicate => wire::ReplicationState::Replicate,
        ReplicationState::Snapshot => wire::ReplicationState::Snapshot,
    };
    wire::MemberProgress {
        id,
        matched: p.matched,
        next_index: p.next_index,
        lag: p.lag,
        state: state as i32,
        last_contact_us: p
            .last_contact
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        recent_active: p.recent_active,
    }
}

fn progress_from_wire(p: wire::MemberProgress) -> (u64, MemberProgress) {
    // An unknown state (a newer peer) reads as probe: the one that promises the least.
    let state = match wire::ReplicationState::try_from(p.state).unwrap_or_default() {
        wire::ReplicationState::Probe => ReplicationState::Probe,
        wire::ReplicationState::Replicate => ReplicationState::Replicate,
        wire::ReplicationState::Snapshot => ReplicationState::Snapshot,
    };
    let progress = MemberProgress {
        matched: p.matched,
        next_index: p.next_index,
        lag: p.lag,
        state,
        last_contact: p.last_contact_us.map(std::time::Duration::from_micros),
        recent_active: p.recent_active,
    };
    (p.id, progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_survives_the_wire() {
        let caught_up = MemberProgress {
            matched: 10,
            next_index: 11,
            lag: 0,
            state: ReplicationState::Replicate,
            last_contact: Some(std::time::Duration::from_millis(12)),
            recent_active: true,
        };
        let never_heard = MemberProgress {
            matched: 0,
            next_index: 2,
            lag: 10,
            state: ReplicationState::Snapshot,
            last_contact: None,
            recent_active: false,
        };
        let sent = wire::NodeStatus {
            id: 1,
            progress: vec![
                progress_to_wire(2, &caught_up),
                progress_to_wire(3, &never_heard),
            ],
            ..Default::default()
        };
        let status = Status::from(sent.clone());
        assert_eq!(status.progress.get(&2), Some(&caught_up));
        assert_eq!(status.progress.get(&3), Some(&never_heard));
        assert_eq!(wire::NodeStatus::from(&status).progress, sent.progress);
    }
}
