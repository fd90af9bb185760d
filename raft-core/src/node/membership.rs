//! Member addresses: carried in conf-change entry contexts and snapshot envelopes.

use std::collections::BTreeMap;
use std::sync::Arc;

use prost::Message as _;

use crate::records::{
    ClientSession, EntryContext, Member, PayloadRef, SnapshotEnvelope, SnapshotMembers,
    SnapshotPayloadOnly,
};

/// The members this node knows, by id. Each address is also kept shared, so every raft
/// message the core sends names its peer's address without copying it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Members {
    by_id: BTreeMap<u64, (Member, Arc<str>)>,
}

impl Members {
    pub(crate) fn from_list(list: Vec<Member>) -> Self {
        let mut members = Members::default();
        for member in list {
            members.upsert(member);
        }
        members
    }

    pub(crate) fn to_list(&self) -> Vec<Member> {
        self.by_id.values().map(|(m, _)| m.clone()).collect()
    }

    pub(crate) fn addr(&self, id: u64) -> Option<&str> {
        self.by_id.get(&id).map(|(_, addr)| &**addr)
    }

    /// The member's address, shared.
    pub(crate) fn shared_addr(&self, id: u64) -> Option<Arc<str>> {
        self.by_id.get(&id).map(|(_, addr)| Arc::clone(addr))
    }

    pub(crate) fn upsert(&mut self, member: Member) {
        let addr = Arc::from(member.addr.as_str());
        self.by_id.insert(member.id, (member, addr));
    }

    pub(crate) fn remove(&mut self, id: u64) {
        self.by_id.remove(&id);
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Member> {
        self.by_id.values().map(|(m, _)| m)
    }

    pub(crate) fn addresses(&self) -> BTreeMap<u64, String> {
        self.by_id
            .iter()
            .map(|(&id, (m, _))| (id, m.addr.clone()))
            .collect()
    }
}

/// Splits snapshot data into the membership and the user's state.
pub(crate) fn open_envelope(data: &[u8]) -> Result<SnapshotEnvelope, String> {
    SnapshotEnvelope::decode(data).map_err(|e| format!("snapshot envelope: {e}"))
}

/// The membership of a snapshot, without copying the user's state.
pub(crate) fn open_members(data: &[u8]) -> Result<Vec<Member>, String> {
    open_membership(data).map(|m| m.members)
}

/// The membership and cluster id of a snapshot, without copying the user's state.
pub(crate) fn open_membership(data: &[u8]) -> Result<SnapshotMembers, String> {
    SnapshotMembers::decode(data).map_err(|e| format!("snapshot envelope: {e}"))
}

/// The reference to the user's state a snapshot keeps apart, if it does, without copying an
/// inline state.
pub(crate) fn open_payload_ref(data: &[u8]) -> Result<Option<PayloadRef>, String> {
    SnapshotPayloadOnly::decode(data)
        .map(|p| p.payload)
        .map_err(|e| format!("snapshot envelope: {e}"))
}

/// Snapshot data holding the user's state inline.
pub(crate) fn seal_envelope(cluster_id: u64, members: Vec<Member>, user_data: Vec<u8>) -> Vec<u8> {
    SnapshotEnvelope {
        members,
        user_data,
        cluster_id,
        payload: None,
        sessions: Vec::new(),
    }
    .encode_to_vec()
}

/// Snapshot data referring to the user's state kept apart, as a payload.
pub(crate) fn seal_envelope_ref(
    cluster_id: u64,
    members: Vec<Member>,
    payload: PayloadRef,
    sessions: Vec<ClientSession>,
) -> Vec<u8> {
    SnapshotEnvelope {
        members,
        user_data: Vec::new(),
        cluster_id,
        payload: Some(payload),
        sessions,
    }
    .encode_to_vec()
}

/// Decodes an entry's context; entries proposed by raft itself (empty context) give `None`.
pub(crate) fn entry_context(context: &[u8]) -> Option<EntryContext> {
    if context.is_empty() {
        return None;
    }
    EntryContext::decode(context).ok()
}
