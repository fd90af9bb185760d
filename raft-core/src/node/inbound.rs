//! Checks every raft message that comes from the network before raft-rs sees it.
//!
//! raft-rs assumes its peers are correct: many malformed messages reach one of its `fatal!`s
//! instead of being rejected (an empty `MsgPropose`, a heartbeat whose commit index is past
//! the receiver's log, a snapshot whose conf state cannot be restored, a `MsgReadIndex`
//! without its entry, index arithmetic that overflows). Two checks stand in front of it:
//!
//! - [`check_wire`] needs nothing but the message: types that never cross the network, entry
//!   counts per type, indexes and terms in range and in sequence, the snapshot's metadata,
//!   conf state and envelope. It runs on the server side, before a message is queued.
//! - [`check_local`] compares the message with the node's own state, in the driver, right
//!   before `step`: the sender must be a member, a node votes only while it is a voter, a
//!   commit index never points past the local log, an empty node accepts a snapshot only as
//!   a learner, and leader-only messages come from the leader.
//!
//! A refused message is counted by [`Refusal`] and never stepped.

use std::collections::HashSet;

use prost::Message as _;
use raft::eraftpb::{ConfChangeType, ConfState, Message, MessageType, Snapshot};
use raft::{Changer, ProgressTracker};

use crate::records::SnapshotMembers;

/// The largest index or term a message may carry. A real cluster never comes near it, and
/// every sum of an index and a length stays far from overflowing.
pub(crate) const MAX_INDEX: u64 = 1 << 62;
/// Most entries in one append message (raft-rs bounds appends by bytes, this bounds the count).
const MAX_ENTRIES: usize = 1 << 20;
/// Longest `context` of a message and longest read-index request context.
const MAX_CONTEXT: usize = 1024;
/// Most ids in a conf state, and most members in a snapshot envelope.
const MAX_MEMBERS: usize = 10_000;
/// Longest member address in a snapshot envelope.
pub(crate) const MAX_ADDR: usize = 1024;

/// Why a message from the network was refused. Each reason is a label of the
/// `raftkit_refused_messages_total` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Refusal {
    /// The bytes are not a message.
    Undecodable,
    /// A type that only exists inside a node (or an unknown type number).
    LocalType,
    /// `MsgPropose`: proposals travel as calls, never as raft messages.
    Proposal,
    /// `MsgTransferLeader`: raftkit transfers leadership on the leader itself.
    TransferRequest,
    /// Node id 0, a message for another node, one claiming to come from this node, or a
    /// message whose sender differs from its batch's.
    Addressing,
    /// The sender's id is not the one its connection authenticated.
    Identity,
    /// A term that is missing, out of range, or inconsistent with the message's other terms.
    Term,
    /// An index out of range or out of sequence.
    Index,
    /// The wrong number of entries for the type, entries out of sequence, or a bad entry.
    Entries,
    /// A snapshot that is missing where required, present where not allowed, or whose
    /// metadata, conf state or membership envelope is invalid.
    Snapshot,
    /// A field raftkit never sets (a snapshot request, an oversized context).
    Field,
    /// The sender is not a member of this node's configuration.
    NotMember,
    /// A heartbeat whose commit index is past this node's log (the node lost its disk, or
    /// the sender lies).
    CommitBeyondLog,
    /// An append acknowledgement of entries this node never had.
    AckBeyondLog,
    /// A message only the current leader sends, from another node.
    NotLeader,
    /// A vote request to a node that is not a voter in its own configuration (a learner, or
    /// a node with an empty disk that must be re-admitted before it votes).
    NotVoter,
    /// A snapshot that would make a node with no state a voter: nodes (re)join as learners.
    SnapshotAsVoter,
    /// A snapshot for a node with no state whose join has not been accepted yet: until then
    /// any snapshot it could get predates its (re-)admission.
    NotAdmitted,
    /// A snapshot chunk that is out of order, too large, from a node other than the leader,
    /// or of a transfer that expired.
    Chunk,
    /// Traffic from another cluster: both sides know their cluster ids and they differ.
    Cluster,
}

impl Refusal {
    /// Every reason, in metric order.
    pub(crate) const ALL: [Refusal; 20] = [
        Refusal::Undecodable,
        Refusal::LocalType,
        Refusal::Proposal,
        Refusal::TransferRequest,
        Refusal::Addressing,
        Refusal::Identity,
        Refusal::Term,
        Refusal::Index,
        Refusal::Entries,
        Refusal::Snapshot,
        Refusal::Field,
        Refusal::NotMember,
        Refusal::CommitBeyondLog,
        Refusal::AckBeyondLog,
        Refusal::NotLeader,
        Refusal::NotVoter,
        Refusal::SnapshotAsVoter,
        Refusal::NotAdmitted,
        Refusal::Chunk,
        Refusal::Cluster,
    ];

    /// The metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::Undecodable => "undecodable",
            Refusal::LocalType => "local_type",
            Refusal::Proposal => "proposal",
            Refusal::TransferRequest => "transfer_request",
            Refusal::Addressing => "addressing",
            Refusal::Identity => "identity",
            Refusal::Term => "term",
            Refusal::Index => "index",
            Refusal::Entries => "entries",
            Refusal::Snapshot => "snapshot",
            Refusal::Field => "field",
            Refusal::NotMember => "not_member",
            Refusal::CommitBeyondLog => "commit_beyond_log",
            Refusal::AckBeyondLog => "ack_beyond_log",
            Refusal::NotLeader => "not_leader",
            Refusal::NotVoter => "not_voter",
            Refusal::SnapshotAsVoter => "snapshot_as_voter",
            Refusal::NotAdmitted => "not_admitted",
            Refusal::Chunk => "chunk",
            Refusal::Cluster => "cluster",
        }
    }

    pub(crate) fn slot(self) -> usize {
        Refusal::ALL.iter().position(|&r| r == self).unwrap_or(0)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The message types that cross the network between raftkit nodes (in a `RaftBatch`, or for
/// `MsgSnapshot` assembled from chunks). A type number raft-rs does not know never gets this
/// far: the message does not decode.
fn wire_type(t: MessageType) -> Result<MessageType, Refusal> {
    match t {
        MessageType::MsgAppend
        | MessageType::MsgAppendResponse
        | MessageType::MsgRequestVote
        | MessageType::MsgRequestVoteResponse
        | MessageType::MsgSnapshot
        | MessageType::MsgHeartbeat
        | MessageType::MsgHeartbeatResponse
        | MessageType::MsgTimeoutNow
        | MessageType::MsgReadIndex
        | MessageType::MsgReadIndexResp
        | MessageType::MsgRequestPreVote
        | MessageType::MsgRequestPreVoteResponse => Ok(t),
        MessageType::MsgPropose => Err(Refusal::Proposal),
        MessageType::MsgTransferLeader => Err(Refusal::TransferRequest),
        MessageType::MsgHup
        | MessageType::MsgBeat
        | MessageType::MsgUnreachable
        | MessageType::MsgSnapStatus
        | MessageType::MsgCheckQuorum => Err(Refusal::LocalType),
    }
}

/// Where a checked message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// Inside a `RaftBatch`: never a snapshot (snapshots travel as chunks).
    Batch,
    /// Assembled from snapshot chunks: only a `MsgSnapshot`.
    Chunks,
}

/// Checks what can be checked without the node's state. `local` is this node's id.
pub(crate) fn check_wire(msg: &Message, local: u64, route: Route) -> Result<(), Refusal> {
    let t = wire_type(msg.get_msg_type())?;
    match (route, t) {
        (Route::Batch, MessageType::MsgSnapshot) => return Err(Refusal::Snapshot),
        (Route::Chunks, t) if t != MessageType::MsgSnapshot => return Err(Refusal::Snapshot),
        _ => {}
    }
    if msg.from == 0 || msg.to == 0 || msg.to != local || msg.from == local {
        return Err(Refusal::Addressing);
    }
    // Every type raftkit sends carries its sender's term, except a follower's forwarded
    // read-index request.
    let term_required = t != MessageType::MsgReadIndex;
    if msg.term > MAX_INDEX || (term_required && msg.term == 0) || msg.log_term > msg.term {
        return Err(Refusal::Term);
    }
    if msg.commit_term > MAX_INDEX {
        return Err(Refusal::Term);
    }
    if msg.index > MAX_INDEX || msg.commit > MAX_INDEX || msg.reject_hint > MAX_INDEX {
        return Err(Refusal::Index);
    }
    if msg.request_snapshot != 0 || msg.context.len() > MAX_CONTEXT {
        return Err(Refusal::Field);
    }
    if t != MessageType::MsgSnapshot && msg.snapshot.is_some() {
        return Err(Refusal::Snapshot);
    }
    match t {
        MessageType::MsgAppend => check_append(msg),
        MessageType::MsgReadIndex | MessageType::MsgReadIndexResp => match msg.entries.as_slice() {
            [one] if one.data.len() <= MAX_CONTEXT && one.context.is_empty() => Ok(()),
            _ => Err(Refusal::Entries),
        },
        MessageType::MsgSnapshot => {
            if !msg.entries.is_empty() {
                return Err(Refusal::Entries);
            }
            let snapshot = msg.snapshot.as_ref().ok_or(Refusal::Snapshot)?;
            check_snapshot(snapshot, msg.term)
        }
        _ if !msg.entries.is_empty() => Err(Refusal::Entries),
        _ => Ok(()),
    }
}

/// An append's entries must follow `index` one by one, within the terms the message allows.
fn check_append(msg: &Message) -> Result<(), Refusal> {
    // raftkit bootstraps every cluster from a snapshot at index 1, so a leader's append always
    // follows some entry; an append after index 0 would let anyone write an empty log.
    if msg.index == 0 {
        return Err(Refusal::Index);
    }
    // Every entry has a term (the first snapshot's is 1). raft-rs reads 0 as "matches" for
    // an index past a short log, then appends past its end and stops the node.
    if msg.log_term == 0 {
        return Err(Refusal::Term);
    }
    if msg.entries.len() > MAX_ENTRIES {
        return Err(Refusal::Entries);
    }
    let count = msg.entries.len() as u64;
    if msg
        .index
        .checked_add(count)
        .is_none_or(|last| last > MAX_INDEX)
    {
        return Err(Refusal::Index);
    }
    for (expected, entry) in (msg.index + 1..).zip(&msg.entries) {
        if entry.index != expected {
            return Err(Refusal::Entries);
        }
        if entry.term < msg.log_term || entry.term > msg.term || entry.term == 0 {
            return Err(Refusal::Entries);
        }
    }
    Ok(())
}

/// A snapshot's metadata, conf state and membership envelope.
pub(crate) fn check_snapshot(snapshot: &Snapshot, message_term: u64) -> Result<(), Refusal> {
    let meta = snapshot.metadata.as_ref().ok_or(Refusal::Snapshot)?;
    if meta.index == 0 || meta.index > MAX_INDEX || meta.term == 0 || meta.term > message_term {
        return Err(Refusal::Snapshot);
    }
    let cs = meta.conf_state.as_ref().ok_or(Refusal::Snapshot)?;
    check_conf_state(cs).map_err(|_| Refusal::Snapshot)?;
    check_envelope(&snapshot.data).map_err(|_| Refusal::Snapshot)
}

/// The membership part of a snapshot's data: decodable, with sane ids and addresses.
pub(crate) fn check_envelope(data: &[u8]) -> Result<(), String> {
    let members = SnapshotMembers::decode(data)
        .map_err(|e| format!("snapshot envelope: {e}"))?
        .members;
    if members.len() > MAX_MEMBERS {
        return Err(format!("{} members in a snapshot", members.len()));
    }
    let mut seen = HashSet::with_capacity(members.len());
    for m in &members {
        if m.id == 0 || !seen.insert(m.id) {
            return Err(format!("member id {} repeated or zero", m.id));
        }
        if m.addr.len() > MAX_ADDR {
            return Err(format!(
                "member {} has a {}-byte address",
                m.id,
                m.addr.len()
            ));
        }
    }
    Ok(())
}

/// True when raft-rs can restore `cs` exactly: the checks raft-rs would otherwise make
/// with a `fatal!` ("unable to restore config", "invalid restore").
pub(crate) fn check_conf_state(cs: &ConfState) -> Result<(), String> {
    let lists = [
        &cs.voters,
        &cs.learners,
        &cs.voters_outgoing,
        &cs.learners_next,
    ];
    if lists.iter().map(|l| l.len()).sum::<usize>() > MAX_MEMBERS {
        return Err("too many ids in the conf state".into());
    }
    for list in lists {
        let mut seen = HashSet::with_capacity(list.len());
        if list.iter().any(|&id| id == 0 || !seen.insert(id)) {
            return Err("a conf state lists id 0 or an id twice".into());
        }
    }
    if cs.voters.is_empty() {
        return Err("a conf state without voters".into());
    }
    if cs.voters_outgoing.is_empty() && (!cs.learners_next.is_empty() || cs.auto_leave) {
        return Err("joint-only fields outside a joint conf state".into());
    }
    // Replay raft-rs's own restore on a scratch tracker and compare.
    let single = |id, t| raft_proto::new_conf_change_single(id, t);
    let mut tracker = ProgressTracker::new(1);
    let mut apply = |changes: &[raft::eraftpb::ConfChangeSingle], joint: bool| {
        let mut changer = Changer::new(&tracker);
        let (conf, map) = if joint {
            changer.enter_joint(cs.auto_leave, changes)
        } else {
            changer.simple(changes)
        }
        .map_err(|e| e.to_string())?;
        tracker.apply_conf(conf, map, 1);
        Ok::<(), String>(())
    };
    let mut incoming = Vec::new();
    for &id in &cs.voters_outgoing {
        apply(&[single(id, ConfChangeType::AddNode)], false)?;
        incoming.push(single(id, ConfChangeType::RemoveNode));
    }
    incoming.extend(
        cs.voters
            .iter()
            .map(|&id| single(id, ConfChangeType::AddNode)),
    );
    incoming.extend(
        cs.learners
            .iter()
            .chain(&cs.learners_next)
            .map(|&id| single(id, ConfChangeType::AddLearnerNode)),
    );
    if cs.voters_outgoing.is_empty() {
        for change in incoming {
            apply(&[change], false)?;
        }
    } else {
        apply(&incoming, true)?;
    }
    if !raft_proto::conf_state_eq(cs, &tracker.conf().to_conf_state()) {
        return Err("the conf state does not restore to itself".into());
    }
    Ok(())
}

/// What [`check_local`] needs of the node's raft state.
pub(crate) struct LocalView<'a> {
    pub(crate) term: u64,
    pub(crate) leader_id: u64,
    pub(crate) last_index: u64,
    /// The node's configuration is empty: it has no state yet (joining, or after a lost disk).
    pub(crate) empty: bool,
    /// This node is a voter (incoming or outgoing) in its own configuration.
    pub(crate) voter: bool,
    /// The cluster accepted this node's join (or it never needed one).
    pub(crate) admitted: bool,
    pub(crate) is_member: &'a dyn Fn(u64) -> bool,
    pub(crate) local: u64,
}

/// Checks a message that passed [`check_wire`] against the node's state.
pub(crate) fn check_local(msg: &Message, view: &LocalView<'_>) -> Result<(), Refusal> {
    // A node with no configuration yet takes its first state from whoever runs the cluster;
    // it never votes and accepts a snapshot only as a learner (below).
    if !view.empty && !(view.is_member)(msg.from) {
        return Err(Refusal::NotMember);
    }
    match msg.get_msg_type() {
        MessageType::MsgRequestVote | MessageType::MsgRequestPreVote if !view.voter => {
            Err(Refusal::NotVoter)
        }
        MessageType::MsgHeartbeat if msg.commit > view.last_index => Err(Refusal::CommitBeyondLog),
        MessageType::MsgAppendResponse if !msg.reject && msg.index > view.last_index => {
            Err(Refusal::AckBeyondLog)
        }
        MessageType::MsgTimeoutNow if msg.from != view.leader_id || msg.term != view.term => {
            Err(Refusal::NotLeader)
        }
        MessageType::MsgReadIndexResp if msg.from != view.leader_id => Err(Refusal::NotLeader),
        MessageType::MsgSnapshot if view.empty && !view.admitted => Err(Refusal::NotAdmitted),
        MessageType::MsgSnapshot if view.empty => {
            let cs = msg
                .snapshot
                .as_ref()
                .and_then(|s| s.metadata.as_ref())
                .and_then(|m| m.conf_state.as_ref())
                .ok_or(Refusal::Snapshot)?;
            if cs.voters.contains(&view.local) || cs.voters_outgoing.contains(&view.local) {
                return Err(Refusal::SnapshotAsVoter);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use raft::eraftpb::{Entry, SnapshotMetadata};

    use super::*;
    use crate::node::membership::seal_envelope;
    use crate::records::Member;

    fn msg(t: MessageType) -> Message {
        let mut m = Message {
            from: 1,
            to: 2,
            term: 3,
            ..Default::default()
        };
        m.set_msg_type(t);
        m
    }

    fn append() -> Message {
        let mut m = msg(MessageType::MsgAppend);
        m.log_term = 2;
        m.index = 10;
        m.entries = (11..13)
            .map(|index| Entry {
                index,
                term: 3,
                ..Default::default()
            })
            .collect();
        m
    }

    fn snapshot_msg(cs: ConfState) -> Message {
        let mut m = msg(MessageType::MsgSnapshot);
        m.snapshot = Some(Snapshot {
            data: seal_envelope(
                0,
                vec![Member {
                    id: 1,
                    addr: "a".into(),
                    promote: false,
                }],
                b"state".to_vec(),
            )
            .into(),
            metadata: Some(SnapshotMetadata {
                conf_state: Some(cs).into(),
                index: 20,
                term: 3,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
        .into();
        m
    }

    fn view(empty: bool, voter: bool, members: &'static [u64]) -> LocalView<'static> {
        LocalView {
            term: 3,
            leader_id: 1,
            last_index: 15,
            empty,
            voter,
            admitted: true,
            is_member: Box::leak(Box::new(move |id| members.contains(&id))),
            local: 2,
        }
    }

    #[test]
    fn well_formed_messages_pass() {
        assert_eq!(check_wire(&append(), 2, Route::Batch), Ok(()));
        for t in [
            MessageType::MsgHeartbeat,
            MessageType::MsgHeartbeatResponse,
            MessageType::MsgAppendResponse,
            MessageType::MsgRequestVote,
            MessageType::MsgRequestPreVoteResponse,
            MessageType::MsgTimeoutNow,
        ] {
            assert_eq!(check_wire(&msg(t), 2, Route::Batch), Ok(()), "{t:?}");
        }
        let mut read = msg(MessageType::MsgReadIndex);
        read.term = 0;
        read.entries = vec![Entry {
            data: vec![7; 24].into(),
            ..Default::default()
        }]
        .into();
        assert_eq!(check_wire(&read, 2, Route::Batch), Ok(()));
        let snap = snapshot_msg(ConfState::from((vec![1, 3], vec![2])));
        assert_eq!(check_wire(&snap, 2, Route::Chunks), Ok(()));
    }

    #[test]
    fn the_messages_that_stopped_nodes_are_refused() {
        // An MsgPropose with no entries and term 0: raft-rs's "stepped empty MsgProp".
        let mut propose = msg(MessageType::MsgPropose);
        propose.term = 0;
        assert_eq!(
            check_wire(&propose, 2, Route::Batch),
            Err(Refusal::Proposal)
        );
        // A heartbeat committing past the log: "to_commit is out of range".
        let mut heartbeat = msg(MessageType::MsgHeartbeat);
        heartbeat.term = 9;
        heartbeat.commit = 1_000;
        assert_eq!(check_wire(&heartbeat, 2, Route::Batch), Ok(()));
        assert_eq!(
            check_local(&heartbeat, &view(false, true, &[1, 3])),
            Err(Refusal::CommitBeyondLog)
        );
        // A snapshot whose conf state raft-rs cannot restore: "invalid restore".
        let mut cs = ConfState::from((vec![1, 3], vec![2, 3]));
        assert!(check_conf_state(&cs).is_err(), "voter and learner at once");
        assert_eq!(
            check_wire(&snapshot_msg(cs.clone()), 2, Route::Chunks),
            Err(Refusal::Snapshot)
        );
        cs = ConfState::from((vec![1], vec![2]));
        cs.learners_next = vec![4];
        assert!(
            check_conf_state(&cs).is_err(),
            "learners_next outside joint"
        );
        // A read index with no entries: raft-rs indexes entries[0].
        let mut read = msg(MessageType::MsgReadIndex);
        read.term = 0;
        assert_eq!(check_wire(&read, 2, Route::Batch), Err(Refusal::Entries));
        let mut resp = msg(MessageType::MsgReadIndexResp);
        resp.entries = vec![Entry::default(), Entry::default()].into();
        assert_eq!(check_wire(&resp, 2, Route::Batch), Err(Refusal::Entries));
    }

    #[test]
    fn structural_refusals() {
        let cases: Vec<(Message, Refusal)> = vec![
            (
                {
                    let mut m = append();
                    m.log_term = 0;
                    m
                },
                Refusal::Term,
            ),
            (
                {
                    let mut m = append();
                    m.entries[1].index = 14;
                    m
                },
                Refusal::Entries,
            ),
            (
                {
                    let mut m = append();
                    m.entries[0].term = 9;
                    m
                },
                Refusal::Entries,
            ),
            (
                {
                    let mut m = append();
                    m.index = u64::MAX;
                    m
                },
                Refusal::Index,
            ),
            (
                {
                    let mut m = append();
                    m.index = 0;
                    m.log_term = 0;
                    m.entries[0].index = 1;
                    m.entries[1].index = 2;
                    m
                },
                Refusal::Index,
            ),
            (
                {
                    let mut m = append();
                    m.log_term = 4;
                    m
                },
                Refusal::Term,
            ),
            (
                {
                    let mut m = msg(MessageType::MsgHeartbeat);
                    m.term = 0;
                    m
                },
                Refusal::Term,
            ),
            (
                {
                    let mut m = msg(MessageType::MsgHeartbeat);
                    m.term = u64::MAX;
                    m
                },
                Refusal::Term,
            ),
            (
                {
                    let mut m = msg(MessageType::MsgHeartbeat);
                    m.entries = vec![Entry::default()].into();
                    m
                },
                Refusal::Entries,
            ),
            (
                {
                    let mut m = msg(MessageType::MsgAppendResponse);
                    m.request_snapshot = 5;
                    m
                },
                Refusal::Field,
            ),
            (
                {
                    let mut m = msg(MessageType::MsgHeartbeat);
                    m.to = 3;
                    m
                },
                Refusal::Addressing,
            ),
            (
                {
                    let mut m = msg(MessageType::MsgHeartbeat);
                    m.from = 2;
                    m
                },
                Refusal::Addressing,
            ),
            (msg(MessageType::MsgHup), Refusal::LocalType),
            (msg(MessageType::MsgCheckQuorum), Refusal::LocalType),
            (
                msg(MessageType::MsgTransferLeader),
                Refusal::TransferRequest,
            ),
            (
                snapshot_msg(ConfState::from((vec![1], vec![2]))),
                Refusal::Snapshot,
            ),
        ];
        for (i, (m, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                check_wire(&m, 2, Route::Batch),
                Err(want),
                "case {i}: {m:?}"
            );
        }
        // Chunks carry snapshots only, and their envelope must decode.
        assert_eq!(
            check_wire(&append(), 2, Route::Chunks),
            Err(Refusal::Snapshot)
        );
        let mut garbage = snapshot_msg(ConfState::from((vec![1], vec![2])));
        if let Some(s) = garbage.snapshot.as_mut() {
            s.data = vec![0xff; 9].into();
        }
        assert_eq!(
            check_wire(&garbage, 2, Route::Chunks),
            Err(Refusal::Snapshot)
        );
        let mut no_meta = garbage.clone();
        if let Some(s) = no_meta.snapshot.as_mut() {
            s.metadata = None.into();
        }
        assert_eq!(
            check_wire(&no_meta, 2, Route::Chunks),
            Err(Refusal::Snapshot)
        );
    }

    #[test]
    fn joint_conf_states_restore() {
        let cs = ConfState {
            voters: vec![1, 2, 3],
            learners: vec![5],
            voters_outgoing: vec![1, 2, 4, 6],
            learners_next: vec![4],
            auto_leave: true,
            ..Default::default()
        };
        assert_eq!(check_conf_state(&cs), Ok(()));
        let empty = ConfState::default();
        assert!(check_conf_state(&empty).is_err());
    }

    #[test]
    fn local_refusals() {
        let member = view(false, true, &[1, 3]);
        let mut from_outsider = msg(MessageType::MsgHeartbeat);
        from_outsider.from = 66;
        assert_eq!(
            check_local(&from_outsider, &member),
            Err(Refusal::NotMember)
        );
        // A node with no state listens to anyone, but never votes.
        let empty = view(true, false, &[]);
        assert_eq!(check_local(&from_outsider, &empty), Ok(()));
        assert_eq!(
            check_local(&msg(MessageType::MsgRequestVote), &empty),
            Err(Refusal::NotVoter)
        );
        assert_eq!(
            check_local(
                &msg(MessageType::MsgRequestPreVote),
                &view(false, false, &[1])
            ),
            Err(Refusal::NotVoter)
        );
        // ... and takes a snapshot only as a learner.
        let as_voter = snapshot_msg(ConfState::from((vec![1, 2], vec![])));
        assert_eq!(
            check_local(&as_voter, &empty),
            Err(Refusal::SnapshotAsVoter)
        );
        let as_learner = snapshot_msg(ConfState::from((vec![1], vec![2])));
        assert_eq!(check_local(&as_learner, &empty), Ok(()));
        // Before its join was accepted, an empty node takes no snapshot at all: an older one
        // (where it was a learner of its previous incarnation) would make it a voter again
        // as it replays the log.
        let waiting = LocalView {
            admitted: false,
            ..view(true, false, &[])
        };
        assert_eq!(
            check_local(&as_learner, &waiting),
            Err(Refusal::NotAdmitted)
        );
        assert_eq!(check_local(&as_voter, &member), Ok(()));
        let mut ack = msg(MessageType::MsgAppendResponse);
        ack.index = 16;
        assert_eq!(check_local(&ack, &member), Err(Refusal::AckBeyondLog));
        ack.reject = true;
        assert_eq!(check_local(&ack, &member), Ok(()));
        let mut timeout = msg(MessageType::MsgTimeoutNow);
        timeout.from = 3;
        assert_eq!(check_local(&timeout, &member), Err(Refusal::NotLeader));
        timeout.from = 1;
        timeout.term = 4;
        assert_eq!(check_local(&timeout, &member), Err(Refusal::NotLeader));
        timeout.term = 3;
        assert_eq!(check_local(&timeout, &member), Ok(()));
    }

    #[test]
    fn every_reason_has_its_own_label() {
        let labels: HashSet<&str> = Refusal::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), Refusal::ALL.len());
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(r.slot(), i);
        }
    }
}
