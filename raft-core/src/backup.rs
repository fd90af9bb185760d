//! Backups: a consistent copy of the replicated state taken from a running cluster
//! ([`crate::Mailbox::backup`]), its file format ([`Backup::write_to`], [`Backup::read_from`]),
//! and [`restore_backup`], which turns one into the initial state of a new one-node cluster
//! (like `etcdctl snapshot save` / `snapshot restore`).
//!
//! # File format
//!
//! Little-endian throughout:
//!
//! | field          | size          | notes                                         |
//! |----------------|---------------|-----------------------------------------------|
//! | magic          | 8             | `RKBACKUP`                                    |
//! | version        | 4             | [`BACKUP_FORMAT_VERSION`]                     |
//! | index          | 8             | the last log index the state includes (≥ 1)   |
//! | term           | 8             | the term of that entry (≥ 1)                  |
//! | member count   | 4             | at most [`MAX_BACKUP_MEMBERS`]                |
//! | each member    | 8 + 4 + len   | id (≠ 0), address length, address (UTF-8)     |
//! | data length    | 8             | at most [`MAX_BACKUP_DATA_BYTES`]             |
//! | data           | data length   | [`crate::Store::snapshot`]'s bytes            |
//! | CRC-32         | 4             | over every byte before it (IEEE, as zlib)     |

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use raft::prelude::{ConfState, HardState, Snapshot, SnapshotMetadata};

use crate::error::{Error, Result};
use crate::log_storage::{snapshot_index, LogStorage};
use crate::node::apply::Applier;
use crate::node::cluster_id;
use crate::node::membership::seal_envelope;
use crate::records::Member;

/// The first bytes of every backup file.
const MAGIC: [u8; 8] = *b"RKBACKUP";

/// The format version this build writes and reads.
pub const BACKUP_FORMAT_VERSION: u32 = 1;

/// Most members a backup may list: far more than any raft cluster has, so a corrupt count is
/// caught before anything is read for it.
pub const MAX_BACKUP_MEMBERS: u32 = 4096;

/// Longest member address in a backup, in bytes.
pub const MAX_BACKUP_ADDR_BYTES: u32 = 4096;

/// Largest state a backup may hold (1 TiB): a corrupt length is refused rather than read.
pub const MAX_BACKUP_DATA_BYTES: u64 = 1 << 40;

/// A consistent copy of a cluster's replicated state at one log index.
///
/// Take one with [`crate::Mailbox::backup`], store it with [`Backup::write_to`] (or
/// [`Backup::to_bytes`]), load it with [`Backup::read_from`] (or [`Backup::from_bytes`]), and
/// start a new cluster from it with [`restore_backup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    /// The last log index whose entry the state includes.
    pub index: u64,
    /// The term of the entry at `index`.
    pub term: u64,
    /// The members (id and raft address) of the cluster the backup was taken from. A restore
    /// does not use them: the restored cluster starts with one new member.
    pub members: BTreeMap<u64, String>,
    /// The user's state, as [`crate::Store::snapshot`] returned it.
    pub data: Vec<u8>,
}

/// Why bytes are not a valid backup.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// Reading the backup failed.
    #[error("reading the backup failed: {0}")]
    Io(#[source] io::Error),
    /// The bytes do not start like a backup file.
    #[error("not a raftkit backup (wrong magic bytes)")]
    BadMagic,
    /// A backup written by a newer (or unknown) format.
    #[error("backup format version {0} is not supported (this build reads version {BACKUP_FORMAT_VERSION})")]
    UnsupportedVersion(u32),
    /// The backup ends before `what`.
    #[error("the backup is truncated: it ends inside {what}")]
    Truncated {
        /// The field being read when the bytes ran out.
        what: &'static str,
    },
    /// A length or count past what any valid backup holds: the bytes are corrupt.
    #[error("the backup is corrupt: {what} is {value}, at most {max} allowed")]
    TooLarge {
        /// The field.
        what: &'static str,
        /// Its value in the file.
        value: u64,
        /// The largest value accepted.
        max: u64,
    },
    /// The checksum does not match the contents.
    #[error(
        "the backup is corrupt: CRC-32 mismatch (stored {stored:08x}, computed {computed:08x})"
    )]
    Checksum {
        /// The CRC-32 stored in the file.
        stored: u32,
        /// The CRC-32 of the bytes read.
        computed: u32,
    },
    /// Bytes follow the checksum.
    #[error("the backup is corrupt: unexpected bytes after its checksum")]
    TrailingBytes,
    /// A field holds an impossible value.
    #[error("the backup is invalid: {0}")]
    Invalid(String),
}

impl From<BackupError> for Error {
    fn from(e: BackupError) -> Self {
        Error::Invalid(e.to_string())
    }
}

/// Reads through `inner`, feeding every byte to a CRC-32.
struct CrcReader<R> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

impl<R: Read> CrcReader<R> {
    fn exact<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], BackupError> {
        let mut buf = [0u8; N];
        self.read_exact(&mut buf).map_err(|e| eof_is(e, what))?;
        Ok(buf)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, BackupError> {
        self.exact(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, BackupError> {
        self.exact(what).map(u64::from_le_bytes)
    }

    /// Exactly `len` bytes. Never allocates more than was actually read, so a corrupt length
    /// on a short input costs nothing.
    fn take_exact(&mut self, len: u64, what: &'static str) -> Result<Vec<u8>, BackupError> {
        let mut out = Vec::new();
        (&mut *self)
            .take(len)
            .read_to_end(&mut out)
            .map_err(|e| eof_is(e, what))?;
        if out.len() as u64 != len {
            return Err(BackupError::Truncated { what });
        }
        Ok(out)
    }
}

fn eof_is(e: io::Error, what: &'static str) -> BackupError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        BackupError::Truncated { what }
    } else {
        BackupError::Io(e)
    }
}

fn check_max(what: &'static str, value: u64, max: u64) -> Result<(), BackupError> {
    if value > max {
        return Err(BackupError::TooLarge { what, value, max });
    }
    Ok(())
}

/// Writes through `inner`, feeding every byte to a CRC-32.
struct CrcWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> CrcWriter<W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc.update(bytes);
        self.inner.write_all(bytes)
    }
}

impl Backup {
    /// Writes the backup in the file format (see the [module docs](crate::backup)) to `out`. The
    /// caller syncs and closes the file.
    ///
    /// Fails with [`io::ErrorKind::InvalidInput`] for a backup [`Backup::read_from`] would
    /// refuse (index or term 0, member id 0, too many members, an address or data too long).
    pub fn write_to<W: Write>(&self, out: W) -> io::Result<()> {
        self.check()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut w = CrcWriter {
            inner: out,
            crc: crc32fast::Hasher::new(),
        };
        w.put(&MAGIC)?;
        w.put(&BACKUP_FORMAT_VERSION.to_le_bytes())?;
        w.put(&self.index.to_le_bytes())?;
        w.put(&self.term.to_le_bytes())?;
        // `check` bounded the count and lengths to u32.
        w.put(&(self.members.len() as u32).to_le_bytes())?;
        for (id, addr) in &self.members {
            w.put(&id.to_le_bytes())?;
            w.put(&(addr.len() as u32).to_le_bytes())?;
            w.put(addr.as_bytes())?;
        }
        w.put(&(self.data.len() as u64).to_le_bytes())?;
        w.put(&self.data)?;
        let crc = w.crc.clone().finalize();
        w.inner.write_all(&crc.to_le_bytes())
    }

    /// The backup in the file format; see [`Backup::write_to`].
    pub fn to_bytes(&self) -> io::Result<Vec<u8>> {
        let addrs: usize = self.members.values().map(|a| a.len() + 12).sum();
        let mut out = Vec::with_capacity(48 + addrs + self.data.len());
        self.write_to(&mut out)?;
        Ok(out)
    }

    /// Reads a whole backup from `input` and checks it: magic, version, lengths, values and
    /// the CRC-32, and that nothing follows it. Corrupt or truncated input is an error, never
    /// a panic or a huge allocation.
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let file = std::fs::File::open("cluster.backup")?;
    /// let backup = raft_core::Backup::read_from(std::io::BufReader::new(file))?;
    /// println!("state at index {}, {} bytes", backup.index, backup.data.len());
    /// # Ok(()) }
    /// ```
    pub fn read_from<R: Read>(input: R) -> Result<Backup, BackupError> {
        let mut r = CrcReader {
            inner: input,
            crc: crc32fast::Hasher::new(),
        };
        if r.exact::<8>("the magic bytes")? != MAGIC {
            return Err(BackupError::BadMagic);
        }
        let version = r.u32("the version")?;
        if version != BACKUP_FORMAT_VERSION {
            return Err(BackupError::UnsupportedVersion(version));
        }
        let index = r.u64("the index")?;
        let term = r.u64("the term")?;
        let count = r.u32("the member count")?;
        check_max("the member count", count.into(), MAX_BACKUP_MEMBERS.into())?;
        let mut members = BTreeMap::new();
        for _ in 0..count {
            let id = r.u64("a member id")?;
            let len = r.u32("a member address length")?;
            check_max(
                "a member address length",
                len.into(),
                MAX_BACKUP_ADDR_BYTES.into(),
            )?;
            let addr = String::from_utf8(r.take_exact(len.into(), "a member address")?)
                .map_err(|_| BackupError::Invalid(format!("member {id}'s address is not UTF-8")))?;
            if members.insert(id, addr).is_some() {
                return Err(BackupError::Invalid(format!("member {id} is listed twice")));
            }
        }
        let len = r.u64("the data length")?;
        check_max("the data length", len, MAX_BACKUP_DATA_BYTES)?;
        let data = r.take_exact(len, "the data")?;
        let computed = r.crc.clone().finalize();
        let mut stored = [0u8; 4];
        r.inner
            .read_exact(&mut stored)
            .map_err(|e| eof_is(e, "the checksum"))?;
        let stored = u32::from_le_bytes(stored);
        if stored != computed {
            return Err(BackupError::Checksum { stored, computed });
        }
        let mut extra = [0u8; 1];
        loop {
            match r.inner.read(&mut extra) {
                Ok(0) => break,
                Ok(_) => return Err(BackupError::TrailingBytes),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(BackupError::Io(e)),
            }
        }
        let backup = Backup {
            index,
            term,
            members,
            data,
        };
        backup.check().map_err(BackupError::Invalid)?;
        Ok(backup)
    }

    /// Reads a backup from bytes; see [`Backup::read_from`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Backup, BackupError> {
        Self::read_from(bytes)
    }

    /// The values a valid backup may hold.
    fn check(&self) -> std::result::Result<(), String> {
        if self.index == 0 || self.term == 0 {
            return Err(format!(
                "index {} and term {} must both be at least 1",
                self.index, self.term
            ));
        }
        if self.members.len() > MAX_BACKUP_MEMBERS as usize {
            return Err(format!(
                "{} members, at most {MAX_BACKUP_MEMBERS}",
                self.members.len()
            ));
        }
        if self.members.contains_key(&0) {
            return Err("member id 0 is reserved".into());
        }
        if let Some((id, _)) = self
            .members
            .iter()
            .find(|(_, a)| a.len() > MAX_BACKUP_ADDR_BYTES as usize)
        {
            return Err(format!(
                "member {id}'s address is over {MAX_BACKUP_ADDR_BYTES} bytes"
            ));
        }
        if self.data.len() as u64 > MAX_BACKUP_DATA_BYTES {
            return Err(format!(
                "{} bytes of data, at most {MAX_BACKUP_DATA_BYTES}",
                self.data.len()
            ));
        }
        Ok(())
    }
}

/// Prepares empty log storage so that node `id` restarts from it as the only voter of a new
/// cluster (reached at `addr`) holding `backup`'s state at `backup.index`.
///
/// The storage gets one snapshot (index and term of the backup, voters `[id]`, the backup's
/// data, and a fresh random cluster id: the restored cluster is a new cluster, which nodes of
/// the old one cannot join or mix with) and a hard state committing it. Then
/// [`crate::Raft::lead`] (or [`crate::Raft::join`]: a node with state ignores both) starts the
/// node, which elects itself; other nodes join it as usual.
///
/// Storage that already holds any state is refused. This call does blocking storage I/O: from
/// async code, run it in `tokio::task::spawn_blocking`.
///
/// ```no_run
/// use raft_core::{restore_backup, Backup, LocalNetwork, MemLogStorage, Raft, Store};
///
/// # async fn demo<S: Store>(store: S) -> Result<(), Box<dyn std::error::Error>> {
/// let backup = Backup::read_from(std::fs::File::open("cluster.backup")?)?;
/// let storage = MemLogStorage::new();
/// restore_backup(&storage, 1, "node-1", &backup)?;
/// let network = LocalNetwork::new();
/// let raft = Raft::builder(1, store)
///     .raft_addr("node-1")
///     .transport(network.transport())
///     .log_storage(storage)
///     .build()?;
/// tokio::spawn(raft.lead());
/// # Ok(()) }
/// ```
pub fn restore_backup(
    storage: &dyn LogStorage,
    id: u64,
    addr: &str,
    backup: &Backup,
) -> Result<()> {
    if id == 0 {
        return Err(Error::config("node id 0 is reserved; use 1 or more"));
    }
    if addr.is_empty() {
        return Err(Error::config("no raft address for the restored node"));
    }
    backup
        .check()
        .map_err(|e| Error::Invalid(format!("backup: {e}")))?;
    if crate::raft::has_state(storage)? {
        return Err(Error::config(
            "the log storage already holds state: a backup is restored into empty storage only \
             (use a new data directory)",
        ));
    }
    let members = vec![Member {
        id,
        addr: addr.to_string(),
        promote: false,
    }];
    let snapshot = Snapshot {
        data: seal_envelope(cluster_id::random(), members, backup.data.clone()).into(),
        metadata: Some(SnapshotMetadata {
            conf_state: Some(ConfState::from((vec![id], vec![]))).into(),
            index: backup.index,
            term: backup.term,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    storage.install_snapshot(&snapshot)?;
    // Installing raises the commit index (and, in the bundled backends, the term); the term
    // must not stay below the snapshot's, or the node's first election would run in a term
    // older than its own log.
    let hard_state = storage.initial_state()?.hard_state;
    if hard_state.commit < backup.index || hard_state.term < backup.term {
        let hs = HardState {
            term: hard_state.term.max(backup.term),
            vote: 0,
            commit: hard_state.commit.max(backup.index),
            ..Default::default()
        };
        storage.append(&[], Some(&hs))?;
    }
    let installed = snapshot_index(&storage.snapshot()?);
    if installed != backup.index {
        return Err(Error::config(format!(
            "the log storage holds a snapshot at {installed} after installing one at {}",
            backup.index
        )));
    }
    tracing::info!(
        node = id,
        addr,
        index = backup.index,
        term = backup.term,
        bytes = backup.data.len(),
        "restored a backup: the node starts as a new one-node cluster"
    );
    Ok(())
}

/// The apply task's half of [`crate::Mailbox::backup`]: the store's state at the applied
/// index.
pub(crate) async fn take(applier: &Applier) -> Result<Backup> {
    let data = applier
        .store
        .snapshot()
        .await
        .map_err(|e| Error::store(format!("snapshot for a backup failed: {e:#}")))?;
    Ok(Backup {
        index: applier.applied,
        term: applier.applied_term,
        members: applier.members.addresses(),
        data,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::mem_log_storage::MemLogStorage;

    fn sample() -> Backup {
        Backup {
            index: 42,
            term: 7,
            members: [(1, "127.0.0.1:7001".to_string()), (3, "h:3".to_string())]
                .into_iter()
                .collect(),
            data: (0..1000u32).map(|i| (i * 7) as u8).collect(),
        }
    }

    #[test]
    fn round_trips() {
        let b = sample();
        let bytes = b.to_bytes().unwrap();
        assert_eq!(&bytes[..8], b"RKBACKUP");
        assert_eq!(Backup::from_bytes(&bytes).unwrap(), b);
        let empty = Backup {
            members: BTreeMap::new(),
            data: Vec::new(),
            ..sample()
        };
        assert_eq!(
            Backup::from_bytes(&empty.to_bytes().unwrap()).unwrap(),
            empty
        );
    }

    #[test]
    fn bad_magic_and_version_are_refused() {
        let mut bytes = sample().to_bytes().unwrap();
        bytes[0] ^= 1;
        assert!(matches!(
            Backup::from_bytes(&bytes),
            Err(BackupError::BadMagic)
        ));
        let mut bytes = sample().to_bytes().unwrap();
        bytes[8] = 9;
        assert!(matches!(
            Backup::from_bytes(&bytes),
            Err(BackupError::UnsupportedVersion(9))
        ));
        assert!(matches!(
            Backup::from_bytes(b"hello"),
            Err(BackupError::Truncated { .. })
        ));
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = sample().to_bytes().unwrap();
        for len in 0..bytes.len() {
            match Backup::from_bytes(&bytes[..len]) {
                Err(BackupError::Truncated { .. }) => {}
                other => panic!("{len} bytes: {other:?}"),
            }
        }
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let bytes = sample().to_bytes().unwrap();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(Backup::from_bytes(&bad).is_err(), "byte {i} flipped");
        }
        // A flip in the data is caught by the checksum alone.
        let mut bad = bytes.clone();
        let at = bytes.len() - 100;
        bad[at] ^= 0x01;
        assert!(matches!(
            Backup::from_bytes(&bad),
            Err(BackupError::Checksum { .. })
        ));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = sample().to_bytes().unwrap();
        bytes.push(0);
        assert!(matches!(
            Backup::from_bytes(&bytes),
            Err(BackupError::TrailingBytes)
        ));
    }

    /// The header of a backup with `count` members whose fields are given raw.
    fn header(count: u32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&BACKUP_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&5u64.to_le_bytes());
        out.extend_from_slice(&2u64.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out
    }

    #[test]
    fn absurd_lengths_are_refused_without_allocating() {
        let bytes = header(u32::MAX);
        assert!(matches!(
            Backup::from_bytes(&bytes),
            Err(BackupError::TooLarge { .. })
        ));
        let mut bytes = header(1);
        bytes.extend_from_slice(&1u64.to_le_bytes());
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Backup::from_bytes(&bytes),
            Err(BackupError::TooLarge { .. })
        ));
        let mut bytes = header(0);
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            Backup::from_bytes(&bytes),
            Err(BackupError::TooLarge { .. })
        ));
        // Under the cap but far beyond the input: truncated, and only the input is read.
        let mut bytes = header(0);
        bytes.extend_from_slice(&(MAX_BACKUP_DATA_BYTES - 1).to_le_bytes());
        bytes.extend_from_slice(b"abc");
        assert!(matches!(
            Backup::from_bytes(&bytes),
            Err(BackupError::Truncated { what: "the data" })
        ));
    }

    #[test]
    fn impossible_values_are_refused() {
        for bad in [
            Backup {
                index: 0,
                ..sample()
            },
            Backup {
                term: 0,
                ..sample()
            },
            Backup {
                members: [(0, "x".to_string())].into_iter().collect(),
                ..sample()
            },
            Backup {
                members: [(1, "x".repeat(MAX_BACKUP_ADDR_BYTES as usize + 1))]
                    .into_iter()
                    .collect(),
                ..sample()
            },
        ] {
            let e = bad.to_bytes().unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        }
        // The same values written by hand (with a valid checksum) are refused on reading.
        let mut bytes = header(0);
        bytes[12..20].copy_from_slice(&0u64.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            Backup::from_bytes(&bytes),
            Err(BackupError::Invalid(_))
        ));
        // A member listed twice.
        let mut bytes = header(2);
        for _ in 0..2 {
            bytes.extend_from_slice(&4u64.to_le_bytes());
            bytes.extend_from_slice(&1u32.to_le_bytes());
            bytes.push(b'a');
        }
        bytes.extend_from_slice(&0u64.to_le_bytes());
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            Backup::from_bytes(&bytes),
            Err(BackupError::Invalid(_))
        ));
    }

    #[test]
    fn restore_prepares_a_one_node_cluster_in_empty_storage_only() {
        let storage = MemLogStorage::new();
        let backup = sample();
        restore_backup(&storage, 9, "node-9", &backup).unwrap();
        let state = storage.initial_state().unwrap();
        assert_eq!(state.hard_state.commit, 42);
        assert_eq!(state.hard_state.term, 7);
        assert_eq!(state.hard_state.vote, 0);
        assert_eq!(state.conf_state.voters, vec![9]);
        let snapshot = storage.snapshot().unwrap();
        let meta = snapshot.metadata.clone().unwrap();
        assert_eq!((meta.index, meta.term), (42, 7));
        let envelope = crate::node::membership::open_envelope(&snapshot.data).unwrap();
        assert_eq!(envelope.user_data, backup.data);
        assert_ne!(envelope.cluster_id, 0);
        assert_eq!(envelope.members.len(), 1);
        assert_eq!(
            (envelope.members[0].id, envelope.members[0].addr.as_str()),
            (9, "node-9")
        );

        let e = restore_backup(&storage, 9, "node-9", &backup).unwrap_err();
        assert!(e.to_string().contains("already holds state"), "{e}");
        let e = restore_backup(&MemLogStorage::new(), 0, "a", &backup).unwrap_err();
        assert!(e.to_string().contains("id 0"), "{e}");
    }
}
