//! Byte formats shared by the backends: protobuf for raft's own messages (encoded by raft-rs,
//! decoded by [`RaftCodec`], which never lets protobuf 2 parse what a disk holds), and small
//! fixed layouts for our records.

use raft_core::backend::eraftpb::{Entry, HardState, SnapshotMetadata};
use raft_core::RaftCodec;
use raft_core::StorageError;

/// Encodes a raft protobuf message.
pub(crate) fn encode<M: RaftCodec>(message: &M) -> Vec<u8> {
    message.encode_to_vec()
}

/// Decodes a raft protobuf message; `what` names it in the error.
pub(crate) fn decode<M: RaftCodec>(bytes: &[u8], what: &str) -> Result<M, StorageError> {
    M::decode_from(bytes)
        .map_err(|e| StorageError::Corrupt(format!("cannot decode the {what}: {e}")))
}

pub(crate) fn decode_entry(bytes: &[u8], index: u64) -> Result<Entry, StorageError> {
    let entry: Entry = decode(bytes, "log entry")?;
    if entry.index != index {
        return Err(StorageError::Corrupt(format!(
            "the entry stored at index {index} says it is entry {}",
            entry.index
        )));
    }
    Ok(entry)
}

pub(crate) fn decode_hard_state(bytes: &[u8]) -> Result<HardState, StorageError> {
    decode(bytes, "hard state")
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(b)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_be_bytes(b)
}

/// The index and term of the last compacted entry.
pub(crate) fn encode_truncated(index: u64, term: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&index.to_be_bytes());
    out.extend_from_slice(&term.to_be_bytes());
    out
}

pub(crate) fn decode_truncated(bytes: &[u8]) -> Result<(u64, u64), StorageError> {
    if bytes.len() != 16 {
        return Err(StorageError::Corrupt(format!(
            "the compaction record has {} bytes, expected 16",
            bytes.len()
        )));
    }
    Ok((u64_at(bytes, 0), u64_at(bytes, 8)))
}

/// A record whose file holds the whole snapshot data.
const SNAPSHOT_RECORD_INLINE: u8 = 1;
/// A record that holds the snapshot data (the envelope) itself; its file holds the payload.
const SNAPSHOT_RECORD_PAYLOAD: u8 = 2;

/// Where the latest snapshot lives: its metadata, and which file holds its data.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct SnapshotRecord {
    /// The snapshot file's sequence number (`snapshots/snap-<seq>.bin`).
    pub(crate) seq: u64,
    /// Length and CRC-32 of the data.
    pub(crate) len: u64,
    pub(crate) crc: u32,
    pub(crate) meta: SnapshotMetadata,
    /// The snapshot's data when the file holds only its payload; `None` when the file holds
    /// the data.
    pub(crate) envelope: Option<Vec<u8>>,
}

impl SnapshotRecord {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let meta = encode(&self.meta);
        let envelope = self.envelope.as_deref().unwrap_or_default();
        let mut out = Vec::with_capacity(25 + meta.len() + envelope.len());
        out.push(if self.envelope.is_some() {
            SNAPSHOT_RECORD_PAYLOAD
        } else {
            SNAPSHOT_RECORD_INLINE
        });
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.len.to_be_bytes());
        out.extend_from_slice(&self.crc.to_be_bytes());
        if self.envelope.is_some() {
            out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
        }
        out.extend_from_slice(&meta);
        out.extend_from_slice(envelope);
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, StorageError> {
        let bad = || {
            StorageError::Corrupt(
                "the snapshot record is truncated or of an unknown version".into(),
            )
        };
        if bytes.len() < 21 {
            return Err(bad());
        }
        let (seq, len, crc) = (u64_at(bytes, 1), u64_at(bytes, 9), u32_at(bytes, 17));
        let (meta, envelope) = match bytes[0] {
            SNAPSHOT_RECORD_INLINE => (&bytes[21..], None),
            SNAPSHOT_RECORD_PAYLOAD if bytes.len() >= 25 => {
                let meta_len = u32_at(bytes, 21) as usize;
                let rest = &bytes[25..];
                if rest.len() < meta_len {
                    return Err(bad());
                }
                let (meta, envelope) = rest.split_at(meta_len);
                (meta, Some(envelope.to_vec()))
            }
            _ => return Err(bad()),
        };
        Ok(Self {
            seq,
            len,
            crc,
            meta: decode(meta, "snapshot metadata")?,
            envelope,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use raft_core::backend::eraftpb::ConfState;

    #[test]
    fn records_round_trip_and_reject_garbage() {
        let rec = SnapshotRecord {
            seq: 7,
            len: 3,
            crc: 0xdead_beef,
            meta: SnapshotMetadata {
                conf_state: Some(ConfState::from((vec![1, 2], vec![3]))).into(),
                index: 10,
                term: 2,
                ..Default::default()
            },
            envelope: None,
        };
        assert_eq!(SnapshotRecord::decode(&rec.encode()).unwrap(), rec);
        let with_envelope = SnapshotRecord {
            envelope: Some(b"envelope".to_vec()),
            ..rec.clone()
        };
        let encoded = with_envelope.encode();
        assert_eq!(SnapshotRecord::decode(&encoded).unwrap(), with_envelope);
        assert!(SnapshotRecord::decode(&encoded[..30]).is_err());
        assert!(SnapshotRecord::decode(&[9; 30]).is_err());
        assert!(SnapshotRecord::decode(&rec.encode()[..10]).is_err());
        assert_eq!(decode_truncated(&encode_truncated(5, 6)).unwrap(), (5, 6));
        assert!(decode_truncated(&[1, 2]).is_err());
        let e = Entry {
            index: 4,
            term: 1,
            ..Default::default()
        };
        assert_eq!(decode_entry(&encode(&e), 4).unwrap(), e);
        assert!(decode_entry(&encode(&e), 5).is_err());
        assert!(decode_hard_state(&[0xff, 0xff, 0xff]).is_err());
    }
}
