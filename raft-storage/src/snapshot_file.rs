//! Snapshot data in files beside the database, written atomically: a temporary file is
//! written and synced, renamed into place and the directory synced, and only then does the
//! database record point at it. Every read checks the length and CRC-32.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use raft_core::StorageError;

use crate::codec::SnapshotRecord;

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

/// The `snapshots/` directory of a storage.
#[derive(Debug)]
pub(crate) struct SnapshotFiles {
    dir: PathBuf,
}

impl SnapshotFiles {
    /// Opens (creating) `root/snapshots`.
    pub(crate) fn open(root: &Path) -> Result<Self, StorageError> {
        let dir = root.join("snapshots");
        if !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(|e| io_error("creating", &dir, e))?;
            sync_dir(root)?;
        }
        Ok(Self { dir })
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("snap-{seq:016x}.bin"))
    }

    /// The highest sequence number of any snapshot file present (0 if none).
    pub(crate) fn max_seq(&self) -> Result<u64, StorageError> {
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
    pub(crate) fn write(&self, seq: u64, data: &[u8]) -> Result<(u64, u32), StorageError> {
        let crc = crc32fast::hash(data);
        let len = data.len() as u64;
        let tmp = self.dir.join(format!("snap-{seq:016x}.tmp"));
        let fin = self.path(seq);
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
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
    pub(crate) fn read(&self, record: &SnapshotRecord) -> Result<Vec<u8>, StorageError> {
        let path = self.path(record.seq);
        let corrupt = |what: &str| {
            StorageError::Corrupt(format!(
                "snapshot file {} (snapshot at index {}): {what}",
                path.display(),
                record.meta.index
            ))
        };
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(corrupt("missing"));
            }
            Err(e) => return Err(io_error("opening snapshot file", &path, e)),
        };
        let mut bytes = Vec::with_capacity(HEADER_LEN + record.len as usize);
        file.read_to_end(&mut bytes)
            .map_err(|e| io_error("reading snapshot file", &path, e))?;
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Err(corrupt("bad header"));
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[8..16]);
        let mut crc = [0u8; 4];
        crc.copy_from_slice(&bytes[16..20]);
        let (len, crc) = (u64::from_be_bytes(len), u32::from_be_bytes(crc));
        if len != record.len || crc != record.crc {
            return Err(corrupt("header does not match the database's record"));
        }
        let data = bytes.split_off(HEADER_LEN);
        if data.len() as u64 != len {
            return Err(corrupt(&format!(
                "truncated: {} of {len} bytes",
                data.len()
            )));
        }
        if crc32fast::hash(&data) != crc {
            return Err(corrupt("checksum mismatch"));
        }
        Ok(data)
    }

    /// Deletes every snapshot file but `keep`'s (best effort: a leftover file is harmless).
    pub(crate) fn remove_others(&self, keep: Option<u64>) {
        let names = match self.names() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("cannot clean old snapshot files: {e}");
                return;
            }
        };
        for name in names {
            let is_kept =
                keep.is_some_and(|k| parse_seq(&name) == Some(k) && name.ends_with(".bin"));
            if !is_kept && name.starts_with("snap-") {
                let path = self.dir.join(&name);
                if let Err(e) = fs::remove_file(&path) {
                    tracing::warn!("cannot remove old snapshot file {}: {e}", path.display());
                }
            }
        }
    }

    /// Removes snapshot file `seq` (after a failed database write).
    pub(crate) fn remove(&self, seq: u64) {
        let _ = fs::remove_file(self.path(seq));
    }
}

fn parse_seq(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("snap-")?;
    let hex = hex
        .strip_suffix(".bin")
        .or_else(|| hex.strip_suffix(".tmp"))?;
    u64::from_str_radix(hex, 16).ok()
}

/// Checks that `dir` can hold a storage, creating it when allowed.
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
            fs::create_dir_all(dir).map_err(|e| io_error("creating data directory", dir, e))?;
        }
        Err(e) => return Err(io_error("checking data directory", dir, e)),
    }
    fs::read_dir(dir).map_err(|e| io_error("reading data directory", dir, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use raft_core::eraftpb::SnapshotMetadata;

    #[test]
    fn write_read_and_detect_damage() {
        let root = tempfile::tempdir().unwrap();
        let files = SnapshotFiles::open(root.path()).unwrap();
        let data = b"snapshot data".to_vec();
        let (len, crc) = files.write(3, &data).unwrap();
        let rec = SnapshotRecord {
            seq: 3,
            len,
            crc,
            meta: SnapshotMetadata {
                index: 5,
                ..Default::default()
            },
        };
        assert_eq!(files.read(&rec).unwrap(), data);
        assert_eq!(files.max_seq().unwrap(), 3);
        let path = files.path(3);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let err = files.read(&rec).unwrap_err();
        assert!(matches!(err, StorageError::Corrupt(_)), "{err}");
        fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        let err = files.read(&rec).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        files.write(4, b"x").unwrap();
        files.remove_others(Some(4));
        assert!(!path.exists());
        assert!(files.path(4).exists());
        assert!(matches!(files.read(&rec), Err(StorageError::Corrupt(_))));
    }
}
