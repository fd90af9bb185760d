//! Snapshot data in files beside the database, written atomically: a temporary file is
//! written and synced, renamed into place and the directory synced, and only then does the
//! database record point at it. Every read checks the length and CRC-32.
//!
//! Files are written without the storage's writer lock (a large snapshot must not hold up
//! appends), so several may be in flight at once: each new file is pinned from the moment its
//! sequence number is handed out until it is committed (the database points at it) or
//! abandoned (deleted), and cleaning up never deletes a pinned file or the committed one.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use raft_core::backend::eraftpb::{Snapshot, SnapshotMetadata};
use raft_core::{PayloadReader, SnapshotPayload, SnapshotPayloadWriter, StorageError};

use crate::codec::SnapshotRecord;
use raft_core::private_files;

const MAGIC: &[u8; 8] = b"RKSNAP1\n";
const HEADER_LEN: usize = 8 + 8 + 4;

/// Describes an I/O failure with what was being done and where.
pub(crate) fn io_error(action: &str, path: &Path, e: std::io::Error) -> StorageError {
    StorageError::Io(format!("{action} {}: {e}", path.display()))
}

/// Syncs a directory, so a rename or a new file in it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("syncing directory", dir, e))
}

/// Which snapshot files must stay.
#[derive(Debug, Default)]
struct Live {
    /// The sequence number the next new file gets; numbers are never reused, so a file that
    /// is neither committed nor pinned can never become either again.
    next_seq: u64,
    /// The file the database points at.
    committed: Option<u64>,
    /// Files handed out and not yet committed or abandoned, and files whose database write
    /// failed (the database may point at them after all: the next open decides).
    pinned: HashSet<u64>,
}

/// The `snapshots/` directory of a storage.
#[derive(Debug)]
pub(crate) struct SnapshotFiles {
    dir: PathBuf,
    live: Mutex<Live>,
}

impl SnapshotFiles {
    /// Opens (creating) `root/snapshots`. New files are numbered after every file present;
    /// call [`SnapshotFiles::adopt`] once the database says which file is committed.
    pub(crate) fn open(root: &Path) -> Result<Arc<Self>, StorageError> {
        let dir = root.join("snapshots");
        if !dir.is_dir() {
            private_files::create_dir_all(&dir).map_err(|e| io_error("creating", &dir, e))?;
            sync_dir(root)?;
        }
        let files = Self {
            dir,
            live: Mutex::default(),
        };
        files.live().next_seq = files.max_seq()? + 1;
        Ok(Arc::new(files))
    }

    fn live(&self) -> MutexGuard<'_, Live> {
        // Every update of `Live` is a single step, so a panic cannot leave it half-changed.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `committed` as the file the database points at (at open), and deletes every
    /// other snapshot file: temporary files of interrupted writes, and files written whose
    /// database record never landed.
    pub(crate) fn adopt(&self, committed: Option<u64>) {
        {
            let mut live = self.live();
            live.committed = committed;
            if let Some(seq) = committed {
                live.next_seq = live.next_seq.max(seq + 1);
            }
        }
        self.remove_others();
    }

    /// Writes `snapshot`'s data to a new file; returns the file, still pinned, and the record
    /// that is to point at it.
    ///
    /// The storages poison their writer when this fails, as after a failed log write: the
    /// file is on the same disk as the log, and after a failed write or sync the kernel may
    /// have dropped the unwritten pages already, so a later sync that succeeds does not prove
    /// that anything reached the disk. The storage acknowledges nothing more until it is
    /// reopened and has checked what the disk holds.
    pub(crate) fn write_snapshot(
        self: &Arc<Self>,
        snapshot: &Snapshot,
    ) -> Result<(NewFile, SnapshotRecord), StorageError> {
        let file = self.new_file();
        let (len, crc) = file.write(&snapshot.data)?;
        let record = SnapshotRecord {
            seq: file.seq(),
            len,
            crc,
            meta: snapshot.metadata.clone().unwrap_or_default(),
            envelope: None,
        };
        Ok((file, record))
    }

    /// A writer of a new payload file, pinned until its snapshot's record is committed.
    pub(crate) fn payload_writer(self: &Arc<Self>) -> Result<PayloadWriter, StorageError> {
        let file = self.new_file();
        let tmp = self.tmp_path(file.seq());
        let open = || -> std::io::Result<BufWriter<File>> {
            let mut out = BufWriter::with_capacity(1 << 20, private_files::create_file(&tmp)?);
            // The header's length and CRC are filled in when the payload is finished.
            out.write_all(&[0u8; HEADER_LEN])?;
            Ok(out)
        };
        let out = open().map_err(|e| io_error("creating snapshot file", &tmp, e))?;
        Ok(PayloadWriter {
            file,
            out: Some(out),
            len: 0,
            crc: crc32fast::Hasher::new(),
        })
    }

    /// The file and record for `snapshot`, whose payload `payload` a [`PayloadWriter`] of
    /// these files wrote.
    pub(crate) fn take_payload(
        &self,
        snapshot: &Snapshot,
        payload: SnapshotPayload,
    ) -> Result<(NewFile, SnapshotRecord), StorageError> {
        let written = payload.into_stored::<WrittenPayload>().map_err(|_| {
            StorageError::Invalid("a snapshot payload another storage wrote".into())
        })?;
        if !std::ptr::eq(Arc::as_ptr(&written.file.files), self) {
            return Err(StorageError::Invalid(
                "a snapshot payload another storage wrote".into(),
            ));
        }
        let record = SnapshotRecord {
            seq: written.file.seq(),
            len: written.len,
            crc: written.crc,
            meta: snapshot.metadata.clone().unwrap_or_default(),
            envelope: Some(snapshot.data.to_vec()),
        };
        Ok((written.file, record))
    }

    /// Opens the payload of the snapshot `meta` names, which must be `stored` (the record of
    /// the latest snapshot) and keep its payload apart.
    pub(crate) fn open_payload_of(
        &self,
        stored: Option<&SnapshotRecord>,
        meta: &SnapshotMetadata,
    ) -> Result<PayloadReader, StorageError> {
        match stored {
            Some(record)
                if record.envelope.is_some()
                    && record.meta.index == meta.index
                    && record.meta.term == meta.term =>
            {
                self.open_payload(record)
            }
            _ => Err(StorageError::Invalid(format!(
                "the snapshot at {} (term {}) is no longer the stored one",
                meta.index, meta.term
            ))),
        }
    }

    /// Opens the payload file `record` points at, positioned at the payload; its header is
    /// checked against the record, and the reader checks the CRC-32 as it reads.
    pub(crate) fn open_payload(
        &self,
        record: &SnapshotRecord,
    ) -> Result<PayloadReader, StorageError> {
        let OpenSnapshot { mut file, path, .. } = self.open_file(record)?;
        check_header(&mut file, &path, record)?;
        Ok(Box::new(
            BufReader::with_capacity(1 << 20, file).take(record.len),
        ))
    }

    /// Checks the file `record` points at (length and CRC-32), reading it a piece at a time.
    pub(crate) fn verify(&self, record: &SnapshotRecord) -> Result<(), StorageError> {
        let OpenSnapshot { mut file, path, .. } = self.open_file(record)?;
        check_header(&mut file, &path, record)?;
        let mut crc = crc32fast::Hasher::new();
        let mut len = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| io_error("reading snapshot file", &path, e))?;
            if n == 0 {
                break;
            }
            len += n as u64;
            crc.update(&buf[..n]);
        }
        if len != record.len {
            return Err(corrupt(
                &path,
                record,
                &format!("truncated: {len} of {} bytes", record.len),
            ));
        }
        if crc.finalize() != record.crc {
            return Err(corrupt(&path, record, "checksum mismatch"));
        }
        Ok(())
    }

    /// Hands out a new, pinned snapshot file, to be written with [`NewFile::write`].
    pub(crate) fn new_file(self: &Arc<Self>) -> NewFile {
        let seq = {
            let mut live = self.live();
            let seq = live.next_seq;
            live.next_seq += 1;
            live.pinned.insert(seq);
            seq
        };
        NewFile {
            files: self.clone(),
            seq,
            settled: false,
        }
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("snap-{seq:016x}.bin"))
    }

    fn tmp_path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("snap-{seq:016x}.tmp"))
    }

    /// The highest sequence number of any snapshot file present (0 if none).
    fn max_seq(&self) -> Result<u64, StorageError> {
        let mut max = 0;
        for name in self.names()? {
            if let Some(seq) = parse_seq(&name) {
                max = max.max(seq);
            }
        }
        Ok(max)
    }

    fn names(&self) -> Result<Vec<String>, StorageError> {
        let read = fs::read_dir(&self.dir).map_err(|e| io_error("listing", &self.dir, e))?;
        let mut names = Vec::new();
        for item in read {
            let item = item.map_err(|e| io_error("listing", &self.dir, e))?;
            names.push(item.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    /// Writes the data of snapshot file `seq` durably; returns its length and CRC-32.
    fn write(&self, seq: u64, data: &[u8]) -> Result<(u64, u32), StorageError> {
        let crc = crc32fast::hash(data);
        let len = data.len() as u64;
        let tmp = self.tmp_path(seq);
        let fin = self.path(seq);
        let write = || -> std::io::Result<()> {
            // 0600 (a fresh file: sequence numbers are never reused).
            let mut f = private_files::create_file(&tmp)?;
            let mut header = Vec::with_capacity(HEADER_LEN);
            header.extend_from_slice(MAGIC);
            header.extend_from_slice(&len.to_be_bytes());
            header.extend_from_slice(&crc.to_be_bytes());
            f.write_all(&header)?;
            f.write_all(data)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(io_error("writing snapshot file", &tmp, e));
        }
        fs::rename(&tmp, &fin).map_err(|e| io_error("renaming snapshot file to", &fin, e))?;
        sync_dir(&self.dir)?;
        Ok((len, crc))
    }

    /// Reads and checks the data of the snapshot `record` points at.
    #[cfg(test)]
    pub(crate) fn read(&self, record: &SnapshotRecord) -> Result<Vec<u8>, StorageError> {
        self.open_file(record)?.read()
    }

    /// Opens the file `record` points at. Reading it with [`OpenSnapshot::read`] needs no
    /// lock: an open file survives being replaced and deleted.
    pub(crate) fn open_file(&self, record: &SnapshotRecord) -> Result<OpenSnapshot, StorageError> {
        let path = self.path(record.seq);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(corrupt(&path, record, "missing"));
            }
            Err(e) => return Err(io_error("opening snapshot file", &path, e)),
        };
        Ok(OpenSnapshot {
            file,
            path,
            record: record.clone(),
        })
    }

    /// Deletes every snapshot file but the committed one and the pinned ones (best effort: a
    /// leftover file is harmless, and the next open deletes it).
    ///
    /// Safe to call without the writer lock: a file that is neither committed nor pinned when
    /// it is checked is garbage for good (only a pinned file can become the committed one, and
    /// numbers are never reused), so deleting it after the check is safe. Callers commit a new
    /// file only after readers can no longer reach the file it replaces.
    pub(crate) fn remove_others(&self) {
        let names = match self.names() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("cannot clean old snapshot files: {e}");
                return;
            }
        };
        let garbage: Vec<String> = {
            let live = self.live();
            names
                .into_iter()
                .filter(|name| name.starts_with("snap-"))
                .filter(|name| {
                    parse_seq(name).is_none_or(|seq| {
                        live.committed != Some(seq) && !live.pinned.contains(&seq)
                    })
                })
                .collect()
        };
        for name in garbage {
            let path = self.dir.join(&name);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!("cannot remove old snapshot file {}: {e}", path.display());
                }
            }
        }
    }
}

/// A snapshot file being written, pinned against [`SnapshotFiles::remove_others`] until it
/// is committed; dropping it unsettled abandons it: its files are deleted and it is unpinned.
#[derive(Debug)]
pub(crate) struct NewFile {
    files: Arc<SnapshotFiles>,
    seq: u64,
    /// Committed, or kept after a failed database write: nothing to undo on drop.
    settled: bool,
}

impl NewFile {
    /// The file's sequence number, for the database record.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// Writes `data` durably (temporary file, sync, rename, directory sync); returns its
    /// length and CRC-32.
    pub(crate) fn write(&self, data: &[u8]) -> Result<(u64, u32), StorageError> {
        self.files.write(self.seq, data)
    }

    /// The database now points at this file, and readers see it: it becomes the committed
    /// file, so the one it replaces is no longer protected.
    pub(crate) fn commit(mut self) {
        let mut live = self.files.live();
        live.committed = Some(self.seq);
        live.pinned.remove(&self.seq);
        self.settled = true;
    }

    /// The database write that was to point at this file failed: it may still have reached
    /// the disk, so the file stays, pinned (the storage refuses writes from now on, and the
    /// next open deletes the file if the database does not point at it).
    pub(crate) fn keep_after_failed_commit(mut self) {
        self.settled = true;
    }
}

impl Drop for NewFile {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        for path in [self.files.tmp_path(self.seq), self.files.path(self.seq)] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!("cannot remove unused snapshot file {}: {e}", path.display());
                }
            }
        }
        self.files.live().pinned.remove(&self.seq);
    }
}

fn parse_seq(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("snap-")?;
    let hex = hex
        .strip_suffix(".bin")
        .or_else(|| hex.strip_suffix(".tmp"))?;
    u64::from_str_radix(hex, 16).ok()
}

/// Checks that `dir` can hold a storage, creating it (mode 0700) when allowed.
pub(crate) fn prepare_dir(dir: &Path, create: bool) -> Result<(), StorageError> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(StorageError::Io(format!(
                "data directory {} is not a directory",
                dir.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !create {
                return Err(StorageError::Io(format!(
                    "data directory {} does not exist (create_if_missing is off)",
                    dir.display()
                )));
            }
            private_files::create_dir_all(dir)
                .map_err(|e| io_error("creating data directory", dir, e))?;
        }
        Err(e) => return Err(io_error("checking data directory", dir, e)),
    }
    fs::read_dir(dir).map_err(|e| io_error("reading data directory", dir, e))?;
    Ok(())
}

/// Reads and checks a snapshot file's header against `record`.
fn check_header(file: &mut File, path: &Path, record: &SnapshotRecord) -> Result<(), StorageError> {
    let mut header = [0u8; HEADER_LEN];
    file.read_exact(&mut header)
        .map_err(|_| corrupt(path, record, "bad header"))?;
    if &header[..8] != MAGIC {
        return Err(corrupt(path, record, "bad header"));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[8..16]);
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&header[16..20]);
    if u64::from_be_bytes(len) != record.len || u32::from_be_bytes(crc) != record.crc {
        return Err(corrupt(
            path,
            record,
            "header does not match the database's record",
        ));
    }
    Ok(())
}

/// Writes a snapshot's payload into a new snapshot file, a piece at a time: a temporary file,
/// synced, its header filled in, renamed into place and the directory synced when finished.
/// Dropped unfinished, it deletes what it wrote.
pub(crate) struct PayloadWriter {
    file: NewFile,
    /// `None` once finished or failed.
    out: Option<BufWriter<File>>,
    len: u64,
    crc: crc32fast::Hasher,
}

/// A payload file written and synced, waiting for its snapshot's record; dropping it deletes
/// the file.
pub(crate) struct WrittenPayload {
    file: NewFile,
    len: u64,
    crc: u32,
}

impl Write for PayloadWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| std::io::Error::other("the snapshot file was already finished"))?;
        let n = out.write(buf)?;
        self.len += n as u64;
        self.crc.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.as_mut().map_or(Ok(()), |out| out.flush())
    }
}

impl SnapshotPayloadWriter for PayloadWriter {
    fn finish(mut self: Box<Self>) -> Result<SnapshotPayload, StorageError> {
        let files = self.file.files.clone();
        let seq = self.file.seq();
        let (tmp, fin) = (files.tmp_path(seq), files.path(seq));
        let crc = self.crc.clone().finalize();
        let len = self.len;
        let Some(out) = self.out.take() else {
            return Err(StorageError::Invalid(
                "the snapshot file was already finished".into(),
            ));
        };
        let seal = || -> std::io::Result<()> {
            let mut f = out.into_inner().map_err(|e| e.into_error())?;
            let mut header = Vec::with_capacity(HEADER_LEN);
            header.extend_from_slice(MAGIC);
            header.extend_from_slice(&len.to_be_bytes());
            header.extend_from_slice(&crc.to_be_bytes());
            f.seek(SeekFrom::Start(0))?;
            f.write_all(&header)?;
            f.sync_all()
        };
        seal().map_err(|e| io_error("writing snapshot file", &tmp, e))?;
        fs::rename(&tmp, &fin).map_err(|e| io_error("renaming snapshot file to", &fin, e))?;
        sync_dir(&files.dir)?;
        let PayloadWriter { file, .. } = *self;
        Ok(SnapshotPayload::stored(Box::new(WrittenPayload {
            file,
            len,
            crc,
        })))
    }
}

/// A snapshot file opened for reading.
pub(crate) struct OpenSnapshot {
    file: File,
    path: PathBuf,
    record: SnapshotRecord,
}

fn corrupt(path: &Path, record: &SnapshotRecord, what: &str) -> StorageError {
    StorageError::Corrupt(format!(
        "snapshot file {} (snapshot at index {}): {what}",
        path.display(),
        record.meta.index
    ))
}

impl OpenSnapshot {
    /// Reads the data and checks its length and checksum against the record.
    pub(crate) fn read(mut self) -> Result<Vec<u8>, StorageError> {
        let (path, record) = (&self.path, &self.record);
        let mut bytes = Vec::with_capacity(HEADER_LEN + record.len as usize);
        self.file
            .read_to_end(&mut bytes)
            .map_err(|e| io_error("reading snapshot file", path, e))?;
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Err(corrupt(path, record, "bad header"));
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[8..16]);
        let mut crc = [0u8; 4];
        crc.copy_from_slice(&bytes[16..20]);
        let (len, crc) = (u64::from_be_bytes(len), u32::from_be_bytes(crc));
        if len != record.len || crc != record.crc {
            return Err(corrupt(
                path,
                record,
                "header does not match the database's record",
            ));
        }
        let data = bytes.split_off(HEADER_LEN);
        if data.len() as u64 != len {
            return Err(corrupt(
                path,
                record,
                &format!("truncated: {} of {len} bytes", data.len()),
            ));
        }
        if crc32fast::hash(&data) != crc {
            return Err(corrupt(path, record, "checksum mismatch"));
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn record(seq: u64, (len, crc): (u64, u32)) -> SnapshotRecord {
        SnapshotRecord {
            seq,
            len,
            crc,
            meta: SnapshotMetadata {
                index: 5,
                ..Default::default()
            },
            envelope: None,
        }
    }

    fn names(files: &SnapshotFiles) -> Vec<String> {
        let mut names = files.names().unwrap();
        names.sort();
        names
    }

    #[test]
    fn write_read_and_detect_damage() {
        let root = tempfile::tempdir().unwrap();
        let files = SnapshotFiles::open(root.path()).unwrap();
        files.adopt(None);
        let data = b"snapshot data".to_vec();
        let first = files.new_file();
        let rec = record(first.seq(), first.write(&data).unwrap());
        first.commit();
        assert_eq!(files.read(&rec).unwrap(), data);
        assert_eq!(files.max_seq().unwrap(), rec.seq);
        let path = files.path(rec.seq);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let err = files.read(&rec).unwrap_err();
        assert!(matches!(err, StorageError::Corrupt(_)), "{err}");
        fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        let err = files.read(&rec).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        let second = files.new_file();
        let seq = second.seq();
        second.write(b"x").unwrap();
        second.commit();
        files.remove_others();
        assert!(!path.exists());
        assert!(files.path(seq).exists());
        assert!(matches!(files.read(&rec), Err(StorageError::Corrupt(_))));
    }

    #[test]
    fn cleaning_spares_pinned_files_and_abandoned_files_go() {
        let root = tempfile::tempdir().unwrap();
        let files = SnapshotFiles::open(root.path()).unwrap();
        // Leftovers of an earlier run: an interrupted write and an unreferenced file.
        fs::write(files.tmp_path(7), b"partial").unwrap();
        fs::write(files.path(8), b"unreferenced").unwrap();
        fs::write(files.path(9), b"committed").unwrap();
        files.adopt(Some(9));
        assert_eq!(names(&files), ["snap-0000000000000009.bin"]);

        // Numbering goes on after every file seen, never reusing one.
        let committed = files.new_file();
        assert_eq!(committed.seq(), 10);
        committed.write(b"a").unwrap();
        committed.commit();
        let in_flight = files.new_file();
        fs::write(files.tmp_path(in_flight.seq()), b"half").unwrap();
        let written = files.new_file();
        written.write(b"c").unwrap();
        let failed = files.new_file();
        failed.write(b"d").unwrap();
        failed.keep_after_failed_commit();
        files.remove_others();
        assert_eq!(
            names(&files),
            [
                "snap-000000000000000a.bin",
                "snap-000000000000000b.tmp",
                "snap-000000000000000c.bin",
                "snap-000000000000000d.bin",
            ]
        );

        // Abandoned files delete themselves, whatever stage they reached.
        drop(in_flight);
        drop(written);
        assert_eq!(
            names(&files),
            ["snap-000000000000000a.bin", "snap-000000000000000d.bin"]
        );
        // A file kept after a failed commit stays until the next open decides.
        files.remove_others();
        assert_eq!(names(&files).len(), 2);
        let reopened = SnapshotFiles::open(root.path()).unwrap();
        reopened.adopt(Some(10));
        assert_eq!(names(&reopened), ["snap-000000000000000a.bin"]);
        assert_eq!(reopened.new_file().seq(), 14);
    }
}
