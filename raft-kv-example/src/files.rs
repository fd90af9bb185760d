//! The node's own files and directories are private to the user it runs as: its data dir
//! holds the raft log, snapshots (every key and value) and the storage's files, which must
//! not be readable by other local users.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// Creates `dir` (and any missing parents) with mode 0700. If it exists already with any
/// group or other permission bits, they are removed (the mode becomes 0700) with a warning.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => tighten(dir, &meta),
        Ok(_) => bail!("{} exists and is not a directory", dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(dir),
        Err(e) => Err(e).with_context(|| format!("checking {}", dir.display())),
    }
}

fn create(dir: &Path) -> Result<()> {
    raft_core::private_files::create_dir_all(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

#[cfg(unix)]
fn tighten(dir: &Path, meta: &std::fs::Metadata) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    tracing::warn!(
        "data dir {} had mode {mode:04o}, readable by other users; setting it to 0700",
        dir.display()
    );
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("setting the mode of {} to 0700", dir.display()))
}

#[cfg(not(unix))]
fn tighten(_dir: &Path, _meta: &std::fs::Metadata) -> Result<()> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::PermissionsExt;

    use super::create_private_dir;

    fn mode(path: &std::path::Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn creates_0700_and_tightens_an_open_dir() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        create_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&root.path().join("a")), 0o700);

        let open = root.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&open).unwrap();
        assert_eq!(mode(&open), 0o700);

        let file = root.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(create_private_dir(&file).is_err());
    }
}
