//! The small file in which a receiver records how far its application has received.
//!
//! Two 16-byte slots, `[seq u64][crc32 of seq u32]["RKBP"]`, written alternately and synced
//! each time: a write torn by a crash spoils one slot at most, and the other still holds the
//! position before it. The position is the larger valid slot.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::BroadcastError;

const SLOT: usize = 16;
const MAGIC: &[u8; 4] = b"RKBP";

/// An open position file.
#[derive(Debug)]
pub(crate) struct PositionFile {
    path: PathBuf,
    inner: Arc<Mutex<Slots>>,
}

#[derive(Debug)]
struct Slots {
    file: File,
    /// The slot the next record goes to: never the one holding the current position.
    next: usize,
}

fn slot(seq: u64) -> [u8; SLOT] {
    let mut bytes = [0u8; SLOT];
    bytes[..8].copy_from_slice(&seq.to_le_bytes());
    bytes[8..12].copy_from_slice(&crc32fast::hash(&seq.to_le_bytes()).to_le_bytes());
    bytes[12..].copy_from_slice(MAGIC);
    bytes
}

fn parse(bytes: &[u8]) -> Option<u64> {
    let bytes: &[u8; SLOT] = bytes.try_into().ok()?;
    let seq: [u8; 8] = bytes[..8].try_into().ok()?;
    let crc: [u8; 4] = bytes[8..12].try_into().ok()?;
    (&bytes[12..] == MAGIC && crc32fast::hash(&seq) == u32::from_le_bytes(crc))
        .then(|| u64::from_le_bytes(seq))
}

impl PositionFile {
    /// Opens (or creates) the file at `path`; returns it with the position it holds (0 for a
    /// new file).
    pub(crate) fn open(path: &Path) -> Result<(Self, u64), BroadcastError> {
        let error = |e: std::io::Error| BroadcastError::Position {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let existed = path.exists();
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(error)?;
        if !existed {
            // Both slots valid from the start, so a torn first record leaves the other; and
            // the new file must survive a crash, or everything would be delivered again.
            let mut both = slot(0).to_vec();
            both.extend_from_slice(&slot(0));
            file.write_all(&both).map_err(error)?;
            file.sync_all().map_err(error)?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                sync_dir(dir).map_err(error)?;
            }
        }
        let mut bytes = Vec::new();
        file.seek(SeekFrom::Start(0)).map_err(error)?;
        file.read_to_end(&mut bytes).map_err(error)?;
        let slots: Vec<Option<u64>> = bytes.chunks(SLOT).take(2).map(parse).collect();
        let (position, next) = match slots.as_slice() {
            // Created, and the crash came before its first write landed.
            [] => (0, 0),
            [Some(a)] => (*a, 1),
            [Some(a), Some(b)] if b > a => (*b, 0),
            [Some(a), _] => (*a, 1),
            [None, Some(b)] => (*b, 0),
            _ => {
                return Err(BroadcastError::Position {
                    path: path.display().to_string(),
                    reason: format!("no valid position in its {} bytes", bytes.len()),
                })
            }
        };
        let file = PositionFile {
            path: path.to_path_buf(),
            inner: Arc::new(Mutex::new(Slots { file, next })),
        };
        Ok((file, position))
    }

    /// Records `seq` durably (on a blocking thread).
    pub(crate) async fn record(&self, seq: u64) -> Result<(), BroadcastError> {
        let inner = self.inner.clone();
        let write = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut slots = inner.lock().unwrap_or_else(|e| e.into_inner());
            let offset = (slots.next * SLOT) as u64;
            slots.file.seek(SeekFrom::Start(offset))?;
            slots.file.write_all(&slot(seq))?;
            slots.file.sync_data()?;
            slots.next = 1 - slots.next;
            Ok(())
        });
        let reason = match write.await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        Err(BroadcastError::Position {
            path: self.path.display().to_string(),
            reason,
        })
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()?;
    }
    let _ = dir;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[cfg(feature = "testing")]
    #[tokio::test]
    async fn survives_reopening_and_a_torn_slot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("position");
        let (file, at) = PositionFile::open(&path).unwrap();
        assert_eq!(at, 0);
        for seq in [1, 2, 3, 10] {
            file.record(seq).await.unwrap();
        }
        drop(file);
        assert_eq!(PositionFile::open(&path).unwrap().1, 10);
        // Tear the newer slot: a new file holds 0 twice, records then go to slot 1, 0, 1, 0.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[3] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (file, at) = PositionFile::open(&path).unwrap();
        assert_eq!(at, 3, "the older slot still holds the position before");
        file.record(11).await.unwrap();
        assert_eq!(PositionFile::open(&path).unwrap().1, 11);
        std::fs::write(&path, b"garbage").unwrap();
        assert!(PositionFile::open(&path).is_err());
    }
}
