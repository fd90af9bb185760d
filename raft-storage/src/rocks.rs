//! The RocksDB backend.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use raft_core::backend::eraftpb::{Entry, HardState, RaftState, Snapshot, SnapshotMetadata};
use raft_core::RaftCodec as _;
use raft_core::{LogStorage, PayloadReader, SnapshotPayload, SnapshotPayloadWriter, StorageError};
use rocksdb::{ErrorKind, Options, ReadOptions, WriteBatch, WriteOptions, DB};

use crate::codec::{
    decode_entry, decode_hard_state, decode_truncated, encode, encode_truncated, SnapshotRecord,
};
use crate::index::LogIndex;
use crate::snapshot_file::{io_error, prepare_dir, SnapshotFiles};
use crate::OpenOptions;
use raft_core::private_files;

const HARD_STATE_KEY: &[u8] = b"\x01hard_state";
const TRUNCATED_KEY: &[u8] = b"\x01truncated";
const SNAPSHOT_KEY: &[u8] = b"\x01snapshot";
const ENTRY_PREFIX: u8 = 0x02;
/// The first key after every entry key.
const ENTRIES_END: &[u8] = &[ENTRY_PREFIX + 1];

fn entry_key(index: u64) -> [u8; 9] {
    let mut key = [ENTRY_PREFIX; 9];
    key[1..].copy_from_slice(&index.to_be_bytes());
    key
}

fn key_index(key: &[u8]) -> Result<u64, StorageError> {
    if key.len() != 9 || key[0] != ENTRY_PREFIX {
        return Err(StorageError::Corrupt(format!(
            "unexpected key {key:?} among the log entries"
        )));
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&key[1..]);
    Ok(u64::from_be_bytes(b))
}

/// Maps a RocksDB error, saying what was being done where.
fn rocks_error(action: &str, path: &Path, e: rocksdb::Error) -> StorageError {
    let text = e.as_ref().to_string();
    let lower = text.to_lowercase();
    let locked = lower.contains("lock hold by current process")
        || (lower.contains("while lock file")
            && (lower.contains("temporarily unavailable")
                || lower.contains("no locks available")
                || lower.contains("resource busy")));
    if locked {
        return StorageError::Locked(format!(
            "{} is already open (by another process, or another storage in this process): {text}",
            path.display()
        ));
    }
    match e.kind() {
        ErrorKind::Corruption => {
            StorageError::Corrupt(format!("{action} {}: {text}", path.display()))
        }
        _ => StorageError::Io(format!("{action} {}: {text}", path.display())),
    }
}

/// What readers see: the log's shape and the latest snapshot's record.
struct State {
    index: LogIndex,
    snapshot: Option<SnapshotRecord>,
}

/// The single writer's state.
struct Writer {
    options: WriteOptions,
    /// Set by the first failed write: the storage then refuses every write.
    failed: Option<String>,
}

/// A durable [`LogStorage`] in RocksDB.
///
/// Layout of the data directory: `db/` is the RocksDB database (entries under `0x02` + the
/// big-endian index; the hard state, the compaction point and the snapshot record under
/// `0x01` keys); `snapshots/` holds the latest snapshot's data. Entries and the hard state are
/// written in one `WriteBatch` with `sync`; compaction deletes the range of compacted keys.
/// Reads of the log's bounds and terms are answered from memory; entries are read from
/// RocksDB (its memtable and block cache hold the recent tail).
///
/// A snapshot's data file is written and synced before the database record points at it.
/// [`LogStorage::save_snapshot`] writes that file without holding up appends, and takes the
/// writer only to check the snapshot is still wanted and to write the record;
/// [`LogStorage::install_snapshot`] replaces the log, so it holds the writer throughout.
///
/// RocksDB locks the directory: a second open, from another process or this one, fails with
/// [`StorageError::Locked`] until the first storage is dropped. Dropping the storage closes
/// the database.
pub struct RocksLogStorage {
    // Field order matters for drop: the database closes before the rest goes.
    db: DB,
    dir: PathBuf,
    snapshots: Arc<SnapshotFiles>,
    state: RwLock<State>,
    writer: Mutex<Writer>,
}

impl std::fmt::Debug for RocksLogStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksLogStorage")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl RocksLogStorage {
    /// Opens the storage in `dir`, creating the directory and an empty log if needed.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StorageError> {
        Self::open_with(dir, &OpenOptions::default())
    }

    /// Opens the storage in `dir` with `options`.
    pub fn open_with(dir: impl AsRef<Path>, options: &OpenOptions) -> Result<Self, StorageError> {
        let dir = dir.as_ref().to_path_buf();
        prepare_dir(&dir, options.create_if_missing)?;
        let db_path = dir.join("db");
        // RocksDB creates its files with the umask; a 0700 `db/` (and data directory) keeps
        // them private. See the crate docs, "Permissions".
        if options.create_if_missing && !db_path.exists() {
            private_files::create_dir_all(&db_path)
                .map_err(|e| io_error("creating", &db_path, e))?;
        }
        let mut opts = Options::default();
        opts.create_if_missing(options.create_if_missing);
        // RocksDB's own info log: keep it small.
        opts.set_keep_log_file_num(2);
        opts.set_max_log_file_size(1 << 20);
        opts.set_max_background_jobs(2);
        // The log is written once and dropped at compaction, rarely read back from the
        // memtable: 16 MiB memtables (RocksDB's default is 64 MiB, two of them) keep the log's
        // resident memory small next to the state.
        opts.set_write_buffer_size(16 << 20);
        // A torn WAL tail (power loss) is cut at the last whole synced write; every write we
        // acknowledge was synced, so nothing acknowledged is lost.
        opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::PointInTime);
        let db = DB::open(&opts, &db_path).map_err(|e| rocks_error("opening", &db_path, e))?;
        let snapshots = SnapshotFiles::open(&dir)?;
        let state = load(&db, &db_path, &snapshots)?;
        snapshots.adopt(state.snapshot.as_ref().map(|r| r.seq));
        let mut write_options = WriteOptions::default();
        write_options.set_sync(true);
        Ok(Self {
            db,
            dir,
            snapshots,
            state: RwLock::new(state),
            writer: Mutex::new(Writer {
                options: write_options,
                failed: None,
            }),
        })
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        // Writers validate before they mutate, so a panic cannot leave the state half-written.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the writer, refusing if an earlier write failed.
    fn writer(&self) -> Result<MutexGuard<'_, Writer>, StorageError> {
        let w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(why) = &w.failed {
            return Err(StorageError::Io(format!(
                "an earlier write to {} failed ({why}); the storage refuses writes until it is reopened",
                self.dir.display()
            )));
        }
        Ok(w)
    }

    /// Writes `batch` durably; a failure poisons the writer.
    fn commit(&self, w: &mut Writer, batch: WriteBatch) -> Result<(), StorageError> {
        self.db
            .write_opt(batch, &w.options)
            .map_err(|e| fail(w, rocks_error("writing to", &self.dir, e)))
    }

    /// Poisons the writer without holding it: after a failed snapshot file write in
    /// `save_snapshot` (why: [`SnapshotFiles::write_snapshot`]).
    fn poison(&self, e: StorageError) -> StorageError {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        w.failed.get_or_insert_with(|| e.to_string());
        e
    }
}

fn fail(w: &mut Writer, e: StorageError) -> StorageError {
    w.failed = Some(e.to_string());
    e
}

impl RocksLogStorage {
    /// Installs a snapshot from the leader (`payload`: its data kept apart, already
    /// written).
    fn install(
        &self,
        snapshot: &Snapshot,
        payload: Option<SnapshotPayload>,
    ) -> Result<(), StorageError> {
        // The writer is held throughout: the follower waits for the install anyway, and the
        // log is replaced as a whole.
        let mut w = self.writer()?;
        let meta = snapshot.metadata.clone().unwrap_or_default();
        if meta.index == 0 {
            return Err(StorageError::Invalid(
                "cannot install an empty snapshot".into(),
            ));
        }
        let (file, record) = match payload {
            None => self.snapshots.write_snapshot(snapshot),
            Some(payload) => self.snapshots.take_payload(snapshot, payload),
        }
        .map_err(|e| fail(&mut w, e))?;
        let hs = self
            .read_state()
            .index
            .hard_state_after_snapshot(&meta, true);
        let mut batch = WriteBatch::default();
        batch.delete_range(entry_key(0).as_slice(), ENTRIES_END);
        batch.put(TRUNCATED_KEY, encode_truncated(meta.index, meta.term));
        batch.put(SNAPSHOT_KEY, record.encode());
        batch.put(HARD_STATE_KEY, encode(&hs));
        {
            let mut st = self.write_state();
            if let Err(e) = self.commit(&mut w, batch) {
                file.keep_after_failed_commit();
                return Err(e);
            }
            st.index.set_snapshot(meta, hs, true);
            st.snapshot = Some(record);
        }
        // Readers now see the new record, so the old file can go.
        file.commit();
        drop(w);
        self.snapshots.remove_others();
        Ok(())
    }

    /// Stores a snapshot this node took (`payload`: its data kept apart, already written).
    fn save(
        &self,
        snapshot: &Snapshot,
        payload: Option<SnapshotPayload>,
    ) -> Result<(), StorageError> {
        let meta = snapshot.metadata.clone().unwrap_or_default();
        {
            // Checked before writing a possibly large file for nothing.
            let _w = self.writer()?;
            if !self.read_state().index.plan_save_snapshot(&meta)? {
                return Ok(());
            }
        }
        // The data file is written and synced without the writer, so appends go on meanwhile.
        // Until it is committed the file is pinned; returning early drops (deletes) it.
        let (file, record) = match payload {
            None => self
                .snapshots
                .write_snapshot(snapshot)
                .map_err(|e| self.poison(e))?,
            Some(payload) => self.snapshots.take_payload(snapshot, payload)?,
        };
        let mut w = self.writer()?;
        // The stored snapshot, or the log, may have changed while the file was written.
        if !self.read_state().index.plan_save_snapshot(&meta)? {
            return Ok(());
        }
        let hs = self
            .read_state()
            .index
            .hard_state_after_snapshot(&meta, false);
        let mut batch = WriteBatch::default();
        batch.put(SNAPSHOT_KEY, record.encode());
        batch.put(HARD_STATE_KEY, encode(&hs));
        if let Err(e) = self.commit(&mut w, batch) {
            file.keep_after_failed_commit();
            return Err(e);
        }
        {
            let mut st = self.write_state();
            st.index.set_snapshot(meta, hs, false);
            st.snapshot = Some(record);
        }
        // Readers now see the new record, so the old file can go.
        file.commit();
        drop(w);
        self.snapshots.remove_others();
        Ok(())
    }
}

/// Reads the stored state and checks it.
fn load(db: &DB, db_path: &Path, snapshots: &SnapshotFiles) -> Result<State, StorageError> {
    let get = |key: &[u8]| db.get(key).map_err(|e| rocks_error("reading", db_path, e));
    let hard_state = match get(HARD_STATE_KEY)? {
        Some(b) => decode_hard_state(&b)?,
        None => HardState::default(),
    };
    let (truncated_index, truncated_term) = match get(TRUNCATED_KEY)? {
        Some(b) => decode_truncated(&b)?,
        None => (0, 0),
    };
    let snapshot = match get(SNAPSHOT_KEY)? {
        Some(b) => {
            let record = SnapshotRecord::decode(&b)?;
            // Check the data now, so a damaged file is reported at open.
            snapshots.verify(&record)?;
            Some(record)
        }
        None => None,
    };
    let mut index = LogIndex::new(
        truncated_index,
        truncated_term,
        hard_state,
        snapshot
            .as_ref()
            .map(|r| r.meta.clone())
            .unwrap_or_default(),
    );
    let mut opts = ReadOptions::default();
    opts.set_iterate_upper_bound(ENTRIES_END.to_vec());
    let mut it = db.raw_iterator_opt(opts);
    it.seek(entry_key(0));
    while let (Some(key), Some(value)) = (it.key(), it.value()) {
        let i = key_index(key)?;
        if i <= truncated_index {
            return Err(StorageError::Corrupt(format!(
                "{}: entry {i} is stored although the log was compacted to {truncated_index}",
                db_path.display()
            )));
        }
        let entry = decode_entry(value, i)?;
        index.push_loaded(i, entry.term)?;
        it.next();
    }
    it.status()
        .map_err(|e| rocks_error("reading the log in", db_path, e))?;
    Ok(State { index, snapshot })
}

impl LogStorage for RocksLogStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let st = self.read_state();
        Ok(RaftState::new(
            st.index.hard_state.clone(),
            st.index.conf_state(),
        ))
    }

    fn entries(&self, low: u64, high: u64, max_size: Option<u64>) -> raft::Result<Vec<Entry>> {
        // Held while reading, so no compaction or overwrite runs underneath.
        let st = self.read_state();
        if !st.index.check_range(low, high)? {
            return Ok(Vec::new());
        }
        let max_size = max_size.unwrap_or(u64::MAX);
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(entry_key(high).to_vec());
        let mut it = self.db.raw_iterator_opt(opts);
        it.seek(entry_key(low));
        let mut out = Vec::with_capacity((high - low).min(1024) as usize);
        let mut size = 0u64;
        let mut next = low;
        while let Some(value) = it.value() {
            let entry = decode_entry(value, next)?;
            size += entry.encoded_len() as u64;
            if !out.is_empty() && size > max_size {
                return Ok(out);
            }
            out.push(entry);
            next += 1;
            it.next();
        }
        it.status()
            .map_err(|e| raft::Error::from(rocks_error("reading", &self.dir, e)))?;
        if next != high {
            return Err(StorageError::Corrupt(format!(
                "{}: entry {next} is missing from the log",
                self.dir.display()
            ))
            .into());
        }
        Ok(out)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        self.read_state().index.term(index)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.read_state().index.first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.read_state().index.last_index())
    }

    fn snapshot(&self) -> raft::Result<Snapshot> {
        // The file is opened under the state lock (so it is the one the record names) and
        // read after releasing it: appends need that lock, and a snapshot may be large.
        let (file, meta) = {
            let st = self.read_state();
            let Some(record) = &st.snapshot else {
                return Ok(Snapshot::default());
            };
            if let Some(envelope) = &record.envelope {
                // The file holds the payload alone, read as a stream when it is wanted.
                return Ok(Snapshot {
                    data: envelope.clone().into(),
                    metadata: Some(record.meta.clone()).into(),
                    ..Default::default()
                });
            }
            (self.snapshots.open_file(record)?, record.meta.clone())
        };
        Ok(Snapshot {
            data: file.read()?.into(),
            metadata: Some(meta).into(),
            ..Default::default()
        })
    }

    fn snapshot_metadata(&self) -> raft::Result<SnapshotMetadata> {
        Ok(self
            .read_state()
            .snapshot
            .as_ref()
            .map(|r| r.meta.clone())
            .unwrap_or_default())
    }

    fn append(
        &self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageError> {
        let mut w = self.writer()?;
        let plan = self.read_state().index.plan_append(entries)?;
        if plan.is_none() && hard_state.is_none() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        for e in entries {
            batch.put(entry_key(e.index), e.encode_to_vec());
        }
        if let Some(p) = plan {
            if p.new_last < p.old_last {
                batch.delete_range(entry_key(p.new_last + 1), entry_key(p.old_last + 1));
            }
        }
        if let Some(hs) = hard_state {
            batch.put(HARD_STATE_KEY, encode(hs));
        }
        if plan.is_some_and(|p| p.overwrites) {
            // Replacing entries: readers wait, so none sees a half-replaced suffix.
            let mut st = self.write_state();
            self.commit(&mut w, batch)?;
            st.index.append(entries, hard_state);
        } else {
            // Appending past the end: readers never look there, so they need not wait.
            self.commit(&mut w, batch)?;
            self.write_state().index.append(entries, hard_state);
        }
        Ok(())
    }

    fn install_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.install(snapshot, None)
    }

    fn install_snapshot_with(
        &self,
        snapshot: &Snapshot,
        payload: SnapshotPayload,
    ) -> Result<(), StorageError> {
        self.install(snapshot, Some(payload))
    }

    fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.save(snapshot, None)
    }

    fn save_snapshot_with(
        &self,
        snapshot: &Snapshot,
        payload: SnapshotPayload,
    ) -> Result<(), StorageError> {
        self.save(snapshot, Some(payload))
    }

    fn snapshot_payloads_in_place(&self) -> bool {
        false
    }

    fn snapshot_payload_writer(&self) -> Result<Box<dyn SnapshotPayloadWriter>, StorageError> {
        Ok(Box::new(self.snapshots.payload_writer()?))
    }

    fn snapshot_payload(&self, meta: &SnapshotMetadata) -> Result<PayloadReader, StorageError> {
        // Opened under the state lock, so it is the file the record names; read after.
        let st = self.read_state();
        self.snapshots.open_payload_of(st.snapshot.as_ref(), meta)
    }

    fn compact(&self, index: u64) -> Result<(), StorageError> {
        let mut w = self.writer()?;
        let Some(term) = self.read_state().index.plan_compact(index)? else {
            return Ok(());
        };
        let mut batch = WriteBatch::default();
        batch.delete_range(entry_key(0), entry_key(index + 1));
        batch.put(TRUNCATED_KEY, encode_truncated(index, term));
        // Readers stop asking for the compacted entries first, so they need not wait for the
        // sync. If the write fails the storage refuses all further writes anyway.
        self.write_state().index.compact(index, term);
        self.commit(&mut w, batch)
    }
}
