//! Private modes for what the storage creates: directories 0700, files 0600 (on Unix).
//!
//! A data directory holds the whole replicated state (entries, snapshots): no other local
//! user may read it. RocksDB and raft-engine create their own files (SST, WAL, MANIFEST, LOG,
//! LOCK, raft-engine's log files) with the process umask, typically 0644; they are protected
//! by the directories they live in, which this crate creates 0700 before the backend opens
//! them (`db/`, `engine/`, and the data directory above them).

use std::fs::File;
use std::io;
use std::path::Path;

/// Creates `dir` and any missing parents, each with mode 0700.
pub(crate) fn create_dir_all(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Opens `path` for writing, truncated; a new file gets mode 0600.
pub(crate) fn create_file(path: &Path) -> io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}
