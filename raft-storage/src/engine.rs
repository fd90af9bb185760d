//! The raft-engine backend (cargo feature `raft-engine`).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use raft_core::backend::eraftpb::{Entry, HardState, RaftState, Snapshot, SnapshotMetadata};
use raft_core::backend::limit_size;
use raft_core::{LogStorage, PayloadReader, SnapshotPayload, SnapshotPayloadWriter, StorageError};
use raft_engine::{Command, Config, Engine, LogBatch, MessageExt, ReadableSize};

use crate::codec::{
    decode_entry, decode_hard_state, decode_truncated, encode, encode_truncated, SnapshotRecord,
};
use crate::index::LogIndex;
use crate::snapshot_file::{io_error, prepare_dir, SnapshotFiles};
use crate::OpenOptions;
use raft_core::private_files;

/// The raft group holding the entries.
const ENTRIES: u64 = 1;
/// The raft group holding our key-values (hard state, compaction point, snapshot record).
const META: u64 = 2;
const HARD_STATE_KEY: &[u8] = b"hard_state";
const TRUNCATED_KEY: &[u8] = b"truncated";
const SNAPSHOT_KEY: &[u8] = b"snapshot";

/// One entry as raft-engine stores it: its index, then its protobuf encoding, length-prefixed
/// (raft-engine checks the index of every entry it reads back).
///
/// raft-engine decodes entries through protobuf 2's `Message`, whose parser recurses without
/// a bound into nested groups (RUSTSEC-2024-0437): handed raft-rs's `Entry`, it would parse
/// whatever the disk holds with it. The engine gets this small message instead, the entry's
/// bytes opaque to it, and [`RaftCodec`](raft_core::RaftCodec) decodes them.
#[derive(Debug, Clone, Default, PartialEq)]
struct EngineEntry {
    index: u64,
    bytes: Vec<u8>,
    unknown: protobuf::UnknownFields,
}

impl EngineEntry {
    fn encode(entry: &Entry) -> Self {
        Self {
            index: entry.index,
            bytes: encode(entry),
            unknown: Default::default(),
        }
    }
}

impl protobuf::Clear for EngineEntry {
    fn clear(&mut self) {
        self.index = 0;
        self.bytes.clear();
    }
}

impl protobuf::Message for EngineEntry {
    fn descriptor(&self) -> &'static protobuf::reflect::MessageDescriptor {
        // raft-engine never uses reflection; protobuf's default for this panics.
        Self::descriptor_static()
    }
    fn is_initialized(&self) -> bool {
        true
    }
    fn merge_from(
        &mut self,
        is: &mut protobuf::CodedInputStream<'_>,
    ) -> protobuf::ProtobufResult<()> {
        self.index = is.read_raw_varint64()?;
        let len = is.read_raw_varint32()?;
        self.bytes.clear();
        is.read_raw_bytes_into(len, &mut self.bytes)
    }
    fn write_to_with_cached_sizes(
        &self,
        os: &mut protobuf::CodedOutputStream<'_>,
    ) -> protobuf::ProtobufResult<()> {
        os.write_raw_varint64(self.index)?;
        os.write_raw_varint32(self.bytes.len() as u32)?;
        os.write_raw_bytes(&self.bytes)
    }
    fn compute_size(&self) -> u32 {
        let len = self.bytes.len() as u32;
        protobuf::rt::compute_raw_varint64_size(self.index)
            + protobuf::rt::compute_raw_varint32_size(len)
            + len
    }
    fn get_cached_size(&self) -> u32 {
        self.compute_size()
    }
    fn get_unknown_fields(&self) -> &protobuf::UnknownFields {
        &self.unknown
    }
    fn mut_unknown_fields(&mut self) -> &mut protobuf::UnknownFields {
        &mut self.unknown
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn new() -> Self {
        Self::default()
    }
    fn default_instance() -> &'static Self {
        static INSTANCE: std::sync::OnceLock<EngineEntry> = std::sync::OnceLock::new();
        INSTANCE.get_or_init(EngineEntry::default)
    }
}

/// Tells raft-engine how to find an entry's index.
struct EntryExt;

impl MessageExt for EntryExt {
    type Entry = EngineEntry;

    fn index(e: &EngineEntry) -> u64 {
        e.index
    }
}

/// Decodes entries fetched from raft-engine, the first being `first`.
fn decode_fetched(fetched: Vec<EngineEntry>, first: u64) -> Result<Vec<Entry>, StorageError> {
    fetched
        .iter()
        .zip(first..)
        .map(|(e, index)| decode_entry(&e.bytes, index))
        .collect()
}

fn engine_error(action: &str, path: &Path, e: raft_engine::Error) -> StorageError {
    let text = e.to_string();
    match e {
        raft_engine::Error::Corruption(_)
        | raft_engine::Error::Codec(_)
        | raft_engine::Error::Protobuf(_) => {
            StorageError::Corrupt(format!("{action} {}: {text}", path.display()))
        }
        raft_engine::Error::Other(_) if text.contains("Failed to lock file") => {
            StorageError::Locked(format!(
                "{} is already open (by another process, or another storage in this process): {text}",
                path.display()
            ))
        }
        _ => StorageError::Io(format!("{action} {}: {text}", path.display())),
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

struct State {
    index: LogIndex,
    snapshot: Option<SnapshotRecord>,
}

struct Writer {
    /// Set by the first failed write: the storage then refuses every write.
    failed: Option<String>,
}

/// A durable [`LogStorage`] in TiKV's raft-engine (cargo feature `raft-engine`).
///
/// raft-engine is a log-structured store made for raft logs: a batch of entries is one
/// sequential append and one `fdatasync`, with an in-memory index of where each entry lives.
/// Layout of the data directory: `engine/` holds raft-engine's files (entries in raft group 1;
/// the hard state, compaction point and snapshot record as key-values of group 2);
/// `snapshots/` holds the latest snapshot's data, as with `RocksLogStorage`.
///
/// Snapshots are saved without holding up appends, as with `RocksLogStorage`.
///
/// raft-engine panics if `fdatasync` fails; this storage catches that panic and returns
/// [`StorageError::Io`], after which it refuses every write until reopened. Like RocksDB,
/// raft-engine locks its directory: a second open fails with [`StorageError::Locked`].
pub struct RaftEngineLogStorage {
    engine: Engine,
    dir: PathBuf,
    snapshots: Arc<SnapshotFiles>,
    state: RwLock<State>,
    writer: Mutex<Writer>,
}

impl std::fmt::Debug for RaftEngineLogStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftEngineLogStorage")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl RaftEngineLogStorage {
    /// Opens the storage in `dir`, creating the directory and an empty log if needed.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StorageError> {
        Self::open_with(dir, &OpenOptions::default())
    }

    /// Opens the storage in `dir` with `options`.
    pub fn open_with(dir: impl AsRef<Path>, options: &OpenOptions) -> Result<Self, StorageError> {
        let dir = dir.as_ref().to_path_buf();
        prepare_dir(&dir, options.create_if_missing)?;
        let engine_dir = dir.join("engine");
        if !options.create_if_missing && !engine_dir.is_dir() {
            return Err(StorageError::Io(format!(
                "{} holds no raft-engine log (create_if_missing is off)",
                engine_dir.display()
            )));
        }
        // raft-engine creates its files with the umask; a 0700 `engine/` (and data directory)
        // keeps them private. See the crate docs, "Permissions".
        if options.create_if_missing && !engine_dir.exists() {
            private_files::create_dir_all(&engine_dir)
                .map_err(|e| io_error("creating", &engine_dir, e))?;
        }
        let Some(engine_dir_str) = engine_dir.to_str() else {
            return Err(StorageError::Io(format!(
                "raft-engine needs a UTF-8 path: {}",
                engine_dir.display()
            )));
        };
        let config = Config {
            dir: engine_dir_str.to_owned(),
            // Smaller files than TiKV's 128 MiB, so compaction frees disk sooner.
            target_file_size: ReadableSize::mb(32),
            recovery_threads: 2,
            ..Config::default()
        };
        let engine = match catch_unwind(|| Engine::open(config)) {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => return Err(engine_error("opening", &engine_dir, e)),
            Err(p) => {
                return Err(StorageError::Corrupt(format!(
                    "opening {}: raft-engine failed: {}",
                    engine_dir.display(),
                    panic_text(p.as_ref())
                )))
            }
        };
        let snapshots = SnapshotFiles::open(&dir)?;
        let state = load(&engine, &engine_dir, &snapshots)?;
        snapshots.adopt(state.snapshot.as_ref().map(|r| r.seq));
        Ok(Self {
            engine,
            dir,
            snapshots,
            state: RwLock::new(state),
            writer: Mutex::new(Writer { failed: None }),
        })
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

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

    /// Writes `batch` durably (one fdatasync); a failure, or a panic inside raft-engine,
    /// poisons the writer.
    fn commit(&self, w: &mut Writer, batch: &mut LogBatch) -> Result<(), StorageError> {
        let result = catch_unwind(AssertUnwindSafe(|| self.engine.write(batch, true)));
        let err = match result {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => engine_error("writing to", &self.dir, e),
            Err(p) => StorageError::Io(format!(
                "writing to {}: raft-engine failed: {}",
                self.dir.display(),
                panic_text(p.as_ref())
            )),
        };
        w.failed = Some(err.to_string());
        Err(err)
    }

    /// Poisons the writer: after a failed snapshot file write (why:
    /// [`SnapshotFiles::write_snapshot`]), which `save_snapshot` does without holding it.
    fn poison(&self, e: StorageError) -> StorageError {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        w.failed.get_or_insert_with(|| e.to_string());
        e
    }
}

fn put(batch: &mut LogBatch, key: &[u8], value: Vec<u8>) -> Result<(), StorageError> {
    batch
        .put(META, key.to_vec(), value)
        .map_err(|e| StorageError::Invalid(format!("raft-engine refused a key: {e}")))
}

impl RaftEngineLogStorage {
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
        .inspect_err(|e| {
            w.failed = Some(e.to_string());
        })?;
        let hs = self
            .read_state()
            .index
            .hard_state_after_snapshot(&meta, true);
        let mut batch = LogBatch::default();
        // Drops every entry of the log; the next append starts a new one after the snapshot.
        batch.add_command(ENTRIES, Command::Clean);
        put(
            &mut batch,
            TRUNCATED_KEY,
            encode_truncated(meta.index, meta.term),
        )?;
        put(&mut batch, SNAPSHOT_KEY, record.encode())?;
        put(&mut batch, HARD_STATE_KEY, encode(&hs))?;
        {
            let mut st = self.write_state();
            if let Err(e) = self.commit(&mut w, &mut batch) {
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
        let mut batch = LogBatch::default();
        put(&mut batch, SNAPSHOT_KEY, record.encode())?;
        put(&mut batch, HARD_STATE_KEY, encode(&hs))?;
        if let Err(e) = self.commit(&mut w, &mut batch) {
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

fn load(engine: &Engine, path: &Path, snapshots: &SnapshotFiles) -> Result<State, StorageError> {
    let hard_state = match engine.get(META, HARD_STATE_KEY) {
        Some(b) => decode_hard_state(&b)?,
        None => HardState::default(),
    };
    let (truncated_index, truncated_term) = match engine.get(META, TRUNCATED_KEY) {
        Some(b) => decode_truncated(&b)?,
        None => (0, 0),
    };
    let snapshot = match engine.get(META, SNAPSHOT_KEY) {
        Some(b) => {
            let record = SnapshotRecord::decode(&b)?;
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
    if let (Some(first), Some(last)) = (engine.first_index(ENTRIES), engine.last_index(ENTRIES)) {
        if first > truncated_index + 1 {
            return Err(StorageError::Corrupt(format!(
                "{}: the log starts at {first} but was compacted only to {truncated_index}",
                path.display()
            )));
        }
        let mut next = truncated_index + 1;
        // Read in chunks to bound memory.
        while next <= last {
            let high = (next + 1024).min(last + 1);
            let mut chunk = Vec::new();
            engine
                .fetch_entries_to::<EntryExt>(ENTRIES, next, high, None, &mut chunk)
                .map_err(|e| engine_error("reading the log in", path, e))?;
            for e in decode_fetched(chunk, next)? {
                index.push_loaded(e.index, e.term)?;
            }
            next = high;
        }
    }
    Ok(State { index, snapshot })
}

impl LogStorage for RaftEngineLogStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let st = self.read_state();
        Ok(RaftState::new(
            st.index.hard_state.clone(),
            st.index.conf_state(),
        ))
    }

    fn entries(&self, low: u64, high: u64, max_size: Option<u64>) -> raft::Result<Vec<Entry>> {
        let st = self.read_state();
        if !st.index.check_range(low, high)? {
            return Ok(Vec::new());
        }
        let mut fetched = Vec::with_capacity((high - low).min(1024) as usize);
        self.engine
            .fetch_entries_to::<EntryExt>(
                ENTRIES,
                low,
                high,
                max_size.map(|m| m.min(usize::MAX as u64) as usize),
                &mut fetched,
            )
            .map_err(|e| raft::Error::from(engine_error("reading", &self.dir, e)))?;
        let mut out = decode_fetched(fetched, low)?;
        if out.is_empty() {
            return Err(StorageError::Corrupt(format!(
                "{}: entries from {low} are missing from the log",
                self.dir.display()
            ))
            .into());
        }
        limit_size(&mut out, max_size);
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
        let encoded: Vec<EngineEntry> = entries.iter().map(EngineEntry::encode).collect();
        let mut batch = LogBatch::with_capacity(entries.len());
        batch
            .add_entries::<EntryExt>(ENTRIES, &encoded)
            .map_err(|e| StorageError::Invalid(format!("cannot add entries to a batch: {e}")))?;
        if let Some(hs) = hard_state {
            put(&mut batch, HARD_STATE_KEY, encode(hs))?;
        }
        // raft-engine drops a conflicting suffix itself when entries overwrite it.
        if plan.is_some_and(|p| p.overwrites) {
            let mut st = self.write_state();
            self.commit(&mut w, &mut batch)?;
            st.index.append(entries, hard_state);
        } else {
            self.commit(&mut w, &mut batch)?;
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
        let mut batch = LogBatch::default();
        batch.add_command(ENTRIES, Command::Compact { index: index + 1 });
        put(&mut batch, TRUNCATED_KEY, encode_truncated(index, term))?;
        self.commit(&mut w, &mut batch)?;
        self.write_state().index.compact(index, term);
        // Deletes log files that hold only compacted entries (and rewrites nearly dead ones).
        if let Err(e) = self.engine.purge_expired_files() {
            tracing::warn!("raft-engine could not purge old log files: {e}");
        }
        Ok(())
    }
}
