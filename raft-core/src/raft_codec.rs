//! raft-rs's messages to and from bytes.
//!
//! raft-rs keeps entry payloads as reference-counted [`Bytes`], so cloning an entry (raft-rs
//! does so several times per entry on its way through the log) costs no copy. Encoding uses
//! raft-rs's own protobuf code. Decoding never does: bytes from the network or a disk may be
//! hostile, and the protobuf 2 parser recurses without a bound into nested groups
//! (RUSTSEC-2024-0437). They are decoded by prost, which bounds recursion, into mirrors of the
//! messages (`proto/eraftpb_mirror.proto`), then moved into raft-rs's types: payloads are
//! shared with the decoded buffer, not copied.

use bytes::Buf;
use protobuf::{ProtobufEnum, RepeatedField};
use raft::prelude::{
    ConfChange, ConfChangeSingle, ConfChangeV2, ConfState, Entry, HardState, Message, Snapshot,
    SnapshotMetadata,
};

#[allow(missing_docs, clippy::all)]
mod mirror {
    include!(concat!(env!("OUT_DIR"), "/raftkit.eraftpb.v1.rs"));
}

/// Bytes that are not a valid encoding of the expected raft-rs message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable {what}: {reason}")]
pub struct RaftDecodeError {
    what: &'static str,
    reason: String,
}

impl RaftDecodeError {
    fn new(what: &'static str, reason: impl ToString) -> Self {
        Self {
            what,
            reason: reason.to_string(),
        }
    }
}

/// A raft-rs message type that raftkit stores or sends.
///
/// ```
/// use raft::prelude::Entry;
/// use raft_core::RaftCodec;
///
/// let mut entry = Entry::default();
/// entry.index = 7;
/// entry.data = b"put x 1".to_vec().into();
/// let bytes = entry.encode_to_vec();
/// assert_eq!(Entry::decode_from(&bytes[..]).unwrap(), entry);
/// assert!(Entry::decode_from(&[0xff][..]).is_err());
/// ```
pub trait RaftCodec: Sized {
    /// Decodes a value from bytes that may be malformed or hostile: an error, never a panic.
    /// Decoding from [`Bytes`] shares the payloads with it instead of copying them.
    fn decode_from<B: Buf>(buf: B) -> Result<Self, RaftDecodeError>;
    /// The protobuf encoding, as raft-rs's `eraftpb.proto` defines it.
    fn encode_to_vec(&self) -> Vec<u8>;
    /// The length of [`RaftCodec::encode_to_vec`]'s result.
    fn encoded_len(&self) -> usize;
}

macro_rules! codec {
    ($ty:ty, $mirror:ty, $what:literal, $convert:path) => {
        impl RaftCodec for $ty {
            fn decode_from<B: Buf>(buf: B) -> Result<Self, RaftDecodeError> {
                let m = <$mirror as prost::Message>::decode(buf)
                    .map_err(|e| RaftDecodeError::new($what, e))?;
                $convert(m).map_err(|e| RaftDecodeError::new($what, e))
            }
            fn encode_to_vec(&self) -> Vec<u8> {
                // A proto3 message has no required fields, the only reason protobuf
                // refuses to encode.
                protobuf::Message::write_to_bytes(self).unwrap_or_default()
            }
            fn encoded_len(&self) -> usize {
                protobuf::Message::compute_size(self) as usize
            }
        }
    };
}

codec!(Message, mirror::Message, "raft message", message);
codec!(Entry, mirror::Entry, "log entry", entry);
codec!(Snapshot, mirror::Snapshot, "snapshot", snapshot);
codec!(
    SnapshotMetadata,
    mirror::SnapshotMetadata,
    "snapshot metadata",
    snapshot_metadata
);
codec!(HardState, mirror::HardState, "hard state", hard_state);
codec!(ConfState, mirror::ConfState, "conf state", conf_state_ok);
codec!(ConfChange, mirror::ConfChange, "conf change", conf_change);
codec!(
    ConfChangeV2,
    mirror::ConfChangeV2,
    "conf change",
    conf_change_v2
);

fn known<E: ProtobufEnum>(value: i32, field: &str) -> Result<E, String> {
    E::from_i32(value).ok_or_else(|| format!("unknown {field} {value}"))
}

fn message(m: mirror::Message) -> Result<Message, String> {
    Ok(Message {
        msg_type: known(m.msg_type, "message type")?,
        to: m.to,
        from: m.from,
        term: m.term,
        log_term: m.log_term,
        index: m.index,
        entries: RepeatedField::from_vec(
            m.entries
                .into_iter()
                .map(entry)
                .collect::<Result<Vec<_>, _>>()?,
        ),
        commit: m.commit,
        commit_term: m.commit_term,
        snapshot: m.snapshot.map(snapshot).transpose()?.into(),
        request_snapshot: m.request_snapshot,
        reject: m.reject,
        reject_hint: m.reject_hint,
        context: m.context,
        deprecated_priority: m.deprecated_priority,
        priority: m.priority,
        ..Default::default()
    })
}

fn entry(m: mirror::Entry) -> Result<Entry, String> {
    Ok(Entry {
        entry_type: known(m.entry_type, "entry type")?,
        term: m.term,
        index: m.index,
        data: m.data,
        context: m.context,
        sync_log: m.sync_log,
        ..Default::default()
    })
}

fn snapshot(m: mirror::Snapshot) -> Result<Snapshot, String> {
    Ok(Snapshot {
        data: m.data,
        metadata: m.metadata.map(snapshot_metadata).transpose()?.into(),
        ..Default::default()
    })
}

fn snapshot_metadata(m: mirror::SnapshotMetadata) -> Result<SnapshotMetadata, String> {
    Ok(SnapshotMetadata {
        conf_state: m.conf_state.map(conf_state).into(),
        index: m.index,
        term: m.term,
        ..Default::default()
    })
}

fn conf_state(m: mirror::ConfState) -> ConfState {
    ConfState {
        voters: m.voters,
        learners: m.learners,
        voters_outgoing: m.voters_outgoing,
        learners_next: m.learners_next,
        auto_leave: m.auto_leave,
        ..Default::default()
    }
}

fn conf_state_ok(m: mirror::ConfState) -> Result<ConfState, String> {
    Ok(conf_state(m))
}

fn hard_state(m: mirror::HardState) -> Result<HardState, String> {
    Ok(HardState {
        term: m.term,
        vote: m.vote,
        commit: m.commit,
        ..Default::default()
    })
}

fn conf_change(m: mirror::ConfChange) -> Result<ConfChange, String> {
    Ok(ConfChange {
        change_type: known(m.change_type, "conf change type")?,
        node_id: m.node_id,
        context: m.context,
        id: m.id,
        ..Default::default()
    })
}

fn conf_change_v2(m: mirror::ConfChangeV2) -> Result<ConfChangeV2, String> {
    let changes = m
        .changes
        .into_iter()
        .map(|c| {
            Ok(ConfChangeSingle {
                change_type: known(c.change_type, "conf change type")?,
                node_id: c.node_id,
                ..Default::default()
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(ConfChangeV2 {
        transition: known(m.transition, "transition")?,
        changes: RepeatedField::from_vec(changes),
        context: m.context,
        ..Default::default()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use raft::prelude::{ConfChangeTransition, ConfChangeType, EntryType, MessageType};

    fn full_message() -> Message {
        let conf_state = ConfState {
            voters: vec![1, 2, 3],
            learners: vec![4],
            voters_outgoing: vec![1, 2],
            learners_next: vec![5],
            auto_leave: true,
            ..Default::default()
        };
        let snapshot = Snapshot {
            data: Bytes::from_static(b"state"),
            metadata: Some(SnapshotMetadata {
                conf_state: Some(conf_state).into(),
                index: 90,
                term: 4,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let entry = Entry {
            entry_type: EntryType::EntryConfChangeV2,
            term: 5,
            index: 101,
            data: Bytes::from_static(b"data"),
            context: Bytes::from_static(b"ctx"),
            sync_log: true,
            ..Default::default()
        };
        Message {
            msg_type: MessageType::MsgSnapshot,
            to: 2,
            from: 1,
            term: 5,
            log_term: 4,
            index: 100,
            entries: vec![entry.clone(), entry].into(),
            commit: 99,
            commit_term: 4,
            snapshot: Some(snapshot).into(),
            request_snapshot: 7,
            reject: true,
            reject_hint: 8,
            context: Bytes::from_static(b"mctx"),
            deprecated_priority: 3,
            priority: -2,
            ..Default::default()
        }
    }

    #[test]
    fn the_mirror_decodes_what_raft_rs_encodes_field_for_field() {
        let m = full_message();
        let bytes = m.encode_to_vec();
        assert_eq!(bytes.len(), m.encoded_len());
        let back = Message::decode_from(Bytes::from(bytes.clone())).unwrap();
        assert_eq!(back, m);
        // And the mirror's own encoding (it packs repeated numbers, raft-rs's does not) means
        // the same.
        let mirrored = <mirror::Message as prost::Message>::decode(&bytes[..]).unwrap();
        let again = prost::Message::encode_to_vec(&mirrored);
        assert_eq!(Message::decode_from(&again[..]).unwrap(), m);
    }

    #[test]
    fn conf_changes_and_hard_states_round_trip() {
        let cc = ConfChange {
            change_type: ConfChangeType::AddLearnerNode,
            node_id: 9,
            id: 3,
            context: Bytes::from_static(b"c"),
            ..Default::default()
        };
        assert_eq!(
            ConfChange::decode_from(&cc.encode_to_vec()[..]).unwrap(),
            cc
        );
        let v2 = ConfChangeV2 {
            transition: ConfChangeTransition::Explicit,
            changes: vec![ConfChangeSingle {
                change_type: ConfChangeType::RemoveNode,
                node_id: 2,
                ..Default::default()
            }]
            .into(),
            context: Bytes::from_static(b"v2"),
            ..Default::default()
        };
        assert_eq!(
            ConfChangeV2::decode_from(&v2.encode_to_vec()[..]).unwrap(),
            v2
        );
        let hs = HardState {
            term: 1,
            vote: 2,
            commit: 3,
            ..Default::default()
        };
        assert_eq!(HardState::decode_from(&hs.encode_to_vec()[..]).unwrap(), hs);
    }

    #[test]
    fn decoded_payloads_share_the_buffer() {
        let e = Entry {
            data: Bytes::from(vec![7u8; 64]),
            ..Default::default()
        };
        let buf = Bytes::from(e.encode_to_vec());
        let back = Entry::decode_from(buf.clone()).unwrap();
        let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
        assert!(range.contains(&(back.data.as_ptr() as usize)));
    }

    #[test]
    fn unknown_enums_and_garbage_are_errors() {
        let unknown_type = mirror::Message {
            msg_type: 99,
            ..Default::default()
        };
        let bytes = prost::Message::encode_to_vec(&unknown_type);
        assert!(Message::decode_from(&bytes[..]).is_err());
        let unknown_entry = mirror::Message {
            msg_type: MessageType::MsgAppend as i32,
            entries: vec![mirror::Entry {
                entry_type: 77,
                ..Default::default()
            }],
            ..Default::default()
        };
        let bytes = prost::Message::encode_to_vec(&unknown_entry);
        assert!(Message::decode_from(&bytes[..]).is_err());
        assert!(Message::decode_from(&[0x0a, 0xff, 0xff][..]).is_err());
        // Groups nested far deeper than a stack allows protobuf 2 to recurse: refused, and
        // the test thread's stack survives.
        let mut nested = vec![0x0bu8; 100_000]; // field 1, start group
        nested.extend(std::iter::repeat_n(0x0cu8, 100_000)); // end group
        assert!(Message::decode_from(&nested[..]).is_err());
    }
}
