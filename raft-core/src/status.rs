//! What a node reports about itself, and read consistency levels.

use std::collections::BTreeMap;

use crate::wire;

/// A node's role in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows a leader (or waits for one).
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
    /// Proposals waiting for their result on this node.
    pub pending_proposals: u64,
    /// Reads waiting on this node.
    pub pending_reads: u64,
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
            pending_proposals: s.pending_proposals,
            pending_reads: s.pending_reads,
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
            pending_proposals: s.pending_proposals,
            pending_reads: s.pending_reads,
        }
    }
}
