//! The user's state in a snapshot, kept apart from the snapshot raft-rs sees.
//!
//! A snapshot's data (what raft-rs stores, sends and hands back) is a small envelope: the
//! members, the cluster id and a [`PayloadRef`] (length and CRC-32). The user's state itself
//! is the *payload*: written through a [`SnapshotPayloadWriter`] the log storage hands out,
//! saved or installed together with its snapshot, and read back as a stream. A log storage
//! that keeps snapshot data on disk (`raft-storage`) stores payloads as files, so no copy of
//! a large state is ever held whole; the default methods of [`crate::LogStorage`] keep the
//! payload inside the snapshot data, as a log in memory does anyway.

use std::any::Any;
use std::io::{Read, Write};

use prost::Message as _;
use raft::prelude::Snapshot;

use crate::error::StorageError;
use crate::records::{PayloadRef, SnapshotEnvelope};

/// The user's state of one snapshot, written and synced, to be saved or installed with that
/// snapshot ([`crate::LogStorage::save_snapshot_with`],
/// [`crate::LogStorage::install_snapshot_with`]). Dropping it abandons it.
pub struct SnapshotPayload {
    len: u64,
    crc32: u32,
    place: Place,
}

enum Place {
    /// In memory, for a log storage that keeps the state inside the snapshot data.
    Inline(Vec<u8>),
    /// Kept by the log storage (a file, say); the storage takes its own handle back.
    Stored(Box<dyn Any + Send>),
}

impl std::fmt::Debug for SnapshotPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let place = match self.place {
            Place::Inline(_) => "inline",
            Place::Stored(_) => "stored",
        };
        f.debug_struct("SnapshotPayload")
            .field("len", &self.len)
            .field("crc32", &self.crc32)
            .field("place", &place)
            .finish()
    }
}

impl SnapshotPayload {
    /// A payload the log storage keeps itself: `handle` is whatever it needs to commit it
    /// later (a file's name, a pinned file), taken back with [`SnapshotPayload::into_stored`].
    /// raft-core fills in the length and CRC-32 of what was written.
    pub fn stored(handle: Box<dyn Any + Send>) -> Self {
        SnapshotPayload {
            len: 0,
            crc32: 0,
            place: Place::Stored(handle),
        }
    }

    /// A payload held in memory.
    pub(crate) fn inline(bytes: Vec<u8>) -> Self {
        SnapshotPayload {
            len: bytes.len() as u64,
            crc32: crc32fast::hash(&bytes),
            place: Place::Inline(bytes),
        }
    }

    /// The payload's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty payload.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The CRC-32 of the payload's bytes.
    pub fn crc32(&self) -> u32 {
        self.crc32
    }

    /// The log storage's own handle, if this payload is one it stored as a `T`; otherwise the
    /// payload back.
    pub fn into_stored<T: Any>(self) -> Result<T, SnapshotPayload> {
        let (len, crc32) = (self.len, self.crc32);
        match self.place {
            Place::Stored(handle) => {
                handle
                    .downcast::<T>()
                    .map(|t| *t)
                    .map_err(|handle| SnapshotPayload {
                        len,
                        crc32,
                        place: Place::Stored(handle),
                    })
            }
            place => Err(SnapshotPayload { len, crc32, place }),
        }
    }

    /// The bytes of a payload held in memory.
    pub(crate) fn into_inline(self) -> Option<Vec<u8>> {
        match self.place {
            Place::Inline(bytes) => Some(bytes),
            Place::Stored(_) => None,
        }
    }

    pub(crate) fn set_summary(&mut self, len: u64, crc32: u32) {
        self.len = len;
        self.crc32 = crc32;
    }

    /// The reference the snapshot's envelope carries.
    pub(crate) fn reference(&self) -> PayloadRef {
        PayloadRef {
            len: self.len,
            crc32: self.crc32,
        }
    }

    /// `snapshot` with this payload put inside its data, for a log storage that keeps no
    /// payloads of its own.
    pub(crate) fn inline_into(self, snapshot: &Snapshot) -> Result<Snapshot, StorageError> {
        let Place::Inline(bytes) = self.place else {
            return Err(StorageError::Invalid(
                "a payload stored elsewhere was handed to a log storage that keeps snapshot \
                 data inline"
                    .into(),
            ));
        };
        let mut envelope = SnapshotEnvelope::decode(&snapshot.data[..])
            .map_err(|e| StorageError::Invalid(format!("snapshot envelope: {e}")))?;
        envelope.user_data = bytes;
        envelope.payload = None;
        Ok(Snapshot {
            data: envelope.encode_to_vec().into(),
            metadata: snapshot.metadata.clone(),
            ..Default::default()
        })
    }
}

/// Where the payload of a snapshot being taken or received is written.
///
/// raft-core writes through it from a blocking thread (or in place, for a log storage that
/// [writes in place](crate::LogStorage::writes_in_place)), then calls
/// [`SnapshotPayloadWriter::finish`]. Dropping a writer without finishing it abandons what
/// it wrote.
pub trait SnapshotPayloadWriter: Write + Send {
    /// Makes everything written durable and returns the payload.
    fn finish(self: Box<Self>) -> Result<SnapshotPayload, StorageError>;
}

/// The default writer: the payload stays in memory until it is saved inside the snapshot
/// data.
#[derive(Debug, Default)]
pub(crate) struct InlinePayloadWriter(Vec<u8>);

impl Write for InlinePayloadWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SnapshotPayloadWriter for InlinePayloadWriter {
    fn finish(self: Box<Self>) -> Result<SnapshotPayload, StorageError> {
        Ok(SnapshotPayload::inline(self.0))
    }
}

/// The payload a snapshot's data holds inline.
pub(crate) fn inline_payload(snapshot: &Snapshot) -> Result<Vec<u8>, StorageError> {
    let envelope = SnapshotEnvelope::decode(&snapshot.data[..])
        .map_err(|e| StorageError::Corrupt(format!("snapshot envelope: {e}")))?;
    if envelope.payload.is_some() {
        return Err(StorageError::Corrupt(format!(
            "the stored snapshot at {} refers to a payload this log storage does not keep",
            snapshot.metadata.as_ref().map_or(0, |m| m.index)
        )));
    }
    Ok(envelope.user_data)
}

/// A reader of one snapshot's payload, as [`crate::LogStorage::snapshot_payload`] returns.
pub type PayloadReader = Box<dyn Read + Send>;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_payload_gives_its_handle_back_only_as_its_own_type() {
        let payload = SnapshotPayload::stored(Box::new(7u64));
        let payload = payload.into_stored::<String>().unwrap_err();
        assert_eq!(payload.into_stored::<u64>().unwrap(), 7);
        let inline = SnapshotPayload::inline(b"abc".to_vec());
        assert_eq!(inline.len(), 3);
        assert!(inline.into_stored::<u64>().is_err());
    }

    #[test]
    fn an_inline_payload_goes_inside_the_envelope() {
        let envelope = SnapshotEnvelope {
            cluster_id: 9,
            payload: Some(PayloadRef { len: 3, crc32: 1 }),
            ..Default::default()
        };
        let snapshot = Snapshot {
            data: envelope.encode_to_vec().into(),
            metadata: None.into(),
            ..Default::default()
        };
        let full = SnapshotPayload::inline(b"abc".to_vec())
            .inline_into(&snapshot)
            .unwrap();
        let opened = SnapshotEnvelope::decode(&full.data[..]).unwrap();
        assert_eq!(opened.user_data, b"abc");
        assert_eq!(opened.cluster_id, 9);
        assert!(opened.payload.is_none());
        let stored = SnapshotPayload::stored(Box::new(1u8));
        assert!(stored.inline_into(&snapshot).is_err());
    }
}
