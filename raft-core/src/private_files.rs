//! Directories and files only their owner may read: directories 0700, files 0600 (on Unix).
//!
//! A data directory holds the whole replicated state, and a key directory the node's
//! identity: no other local user may read either. Log stores, certificate tools and the
//! example service create theirs through these.

use std::fs::File;
use std::io;
use std::path::Path;

/// Creates `dir` and any missing parents, each with mode 0700.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
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
pub fn create_file(path: &Path) -> io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}
