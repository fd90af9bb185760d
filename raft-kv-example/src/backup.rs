//! Backups: `GET /cluster/backup` on every node, and `raft-kv snapshot save` / `snapshot
//! restore` (like `etcdctl snapshot save` / `restore`).
//!
//! `save` downloads a consistent backup (every write acknowledged before it began) from any
//! node into a file. `restore` turns the file into a data dir from which `raft-kv serve`
//! (same id, raft address and data dir, no `--join`) starts as a one-node cluster holding
//! that state; other nodes then join it with `--join`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use raft_core::{Backup, Mailbox, Store};

use crate::http::ApiError;
use crate::store::KvStore;
use crate::{backends, client, StorageKind};

/// `raft-kv snapshot ...`
#[derive(clap::Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Saves a consistent backup of the cluster's state, taken through the node at the
    /// endpoint, to FILE (mode 0600; needs an admin token when tokens are on).
    Save {
        #[command(flatten)]
        endpoint: client::Endpoint,
        /// The backup file to write (written to FILE.part first, then renamed).
        file: PathBuf,
    },
    /// Prepares a new data dir from a backup: `raft-kv serve` with the same --id,
    /// --raft-addr and --data-dir (and no --join) then starts a one-node cluster holding the
    /// backup's state, which other nodes join with --join.
    Restore {
        /// The backup file (from `raft-kv snapshot save`).
        file: PathBuf,
        /// The id of the node that will serve the restored state.
        #[arg(long)]
        id: u64,
        /// The raft address other nodes will dial to reach that node (host:port; its
        /// --raft-advertise, or --raft-addr): it is stored in the restored membership.
        #[arg(long)]
        raft_addr: String,
        /// The node's data dir: must not exist yet, or be empty.
        #[arg(long)]
        data_dir: PathBuf,
        /// The log storage `raft-kv serve` will use (the same flag): memory keeps nothing,
        /// so it only checks the backup.
        #[arg(long, value_enum, default_value = crate::DEFAULT_STORAGE)]
        storage: StorageKind,
    },
}

/// Runs a `raft-kv snapshot` subcommand.
pub async fn run(command: SnapshotCmd) -> Result<()> {
    match command {
        SnapshotCmd::Save { endpoint, file } => save(&endpoint, &file).await,
        SnapshotCmd::Restore {
            file,
            id,
            raft_addr,
            data_dir,
            storage,
        } => restore(&file, id, &raft_addr, &data_dir, storage).await,
    }
}

/// `GET /cluster/backup`: the encoded backup, as `application/octet-stream`.
pub async fn route(State(mailbox): State<Mailbox>) -> Result<Response, ApiError> {
    let backup = mailbox.backup().await?;
    let (index, term) = (backup.index, backup.term);
    // Encoding copies and checksums the whole state: not on a runtime worker.
    let bytes = tokio::task::spawn_blocking(move || backup.to_bytes())
        .await
        .context("encoding the backup")?
        .context("encoding the backup")?;
    tracing::info!(index, term, bytes = bytes.len(), "backup taken");
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"raft-kv.backup\"",
            ),
        ],
        bytes,
    )
        .into_response())
}

/// `FILE.part`, next to `FILE`.
fn part_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

/// Reads and checks a whole backup file (blocking).
fn read_backup(file: &Path) -> Result<Backup> {
    let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    Backup::read_from(std::io::BufReader::with_capacity(1 << 20, f))
        .with_context(|| format!("{} is not a usable backup", file.display()))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("a blocking task failed")?
}

async fn save(endpoint: &client::Endpoint, file: &Path) -> Result<()> {
    let http = endpoint.client()?;
    let part = part_path(file);
    let result = download(&http, &part).await;
    let backup = match result {
        Ok(backup) => backup,
        Err(e) => {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(e);
        }
    };
    tokio::fs::rename(&part, file)
        .await
        .with_context(|| format!("renaming {} to {}", part.display(), file.display()))?;
    // The rename is durable only once the directory is synced.
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    blocking(move || {
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))
    })
    .await?;
    println!(
        "saved a backup at index {} (term {}, {} bytes of state, {} members) to {}",
        backup.index,
        backup.term,
        backup.data.len(),
        backup.members.len(),
        file.display()
    );
    Ok(())
}

/// Streams the backup into `part` (mode 0600), syncs it, and reads it back to check it.
async fn download(http: &crate::http_client::HttpClient, part: &Path) -> Result<Backup> {
    let path = part.to_path_buf();
    let std_file = blocking(move || {
        raft_core::private_files::create_file(&path)
            .with_context(|| format!("creating {}", path.display()))
    })
    .await?;
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(std_file));
    let reply = http.download("/cluster/backup", &mut out).await?;
    if !reply.status.is_success() {
        client::check(reply)?;
        bail!("the node did not send a backup");
    }
    tokio::io::AsyncWriteExt::flush(&mut out)
        .await
        .with_context(|| format!("writing {}", part.display()))?;
    let file = out.into_inner();
    file.sync_all()
        .await
        .with_context(|| format!("syncing {}", part.display()))?;
    drop(file);
    let path = part.to_path_buf();
    blocking(move || read_backup(&path))
        .await
        .context("the downloaded backup failed its checks")
}

/// True when `dir` does not exist or is an empty directory.
fn is_new_or_empty(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}

async fn restore(
    file: &Path,
    id: u64,
    raft_addr: &str,
    data_dir: &Path,
    kind: StorageKind,
) -> Result<()> {
    if id == 0 {
        bail!("--id must be 1 or more");
    }
    crate::http::check_raft_addr(raft_addr).map_err(|e| anyhow::anyhow!("--raft-addr: {e}"))?;
    let path = file.to_path_buf();
    let backup = blocking(move || read_backup(&path)).await?;
    // A backup of another application would only fail when the node starts: check now.
    KvStore::default()
        .restore(&backup.data)
        .await
        .map_err(anyhow::Error::from)
        .with_context(|| format!("{} does not hold raft-kv state", file.display()))?;

    let dir = data_dir.to_path_buf();
    let existed = dir.exists();
    if kind != StorageKind::Memory {
        if !is_new_or_empty(&dir)? {
            bail!(
                "{} already holds files: a backup is restored into a new or empty data dir \
                 only, never over a node's state",
                dir.display()
            );
        }
        crate::files::create_private_dir(&dir)
            .with_context(|| format!("creating data dir {}", dir.display()))?;
    }
    let addr = raft_addr.to_string();
    let (index, term, bytes) = (backup.index, backup.term, backup.data.len());
    let restored = blocking(move || {
        let storage = backends::storage(kind, &dir)?;
        raft_core::restore_backup(storage.as_ref(), id, &addr, &backup)
            .context("writing the restored state")?;
        Ok(())
    })
    .await;
    if let Err(e) = restored {
        if !existed && kind != StorageKind::Memory {
            // Nothing but this attempt was in it: leave no half-restored dir behind.
            let _ = std::fs::remove_dir_all(data_dir);
        }
        return Err(e);
    }
    if kind == StorageKind::Memory {
        println!(
            "the backup at index {index} (term {term}, {bytes} bytes of state) is valid; \
             --storage memory keeps nothing, so nothing was restored"
        );
        return Ok(());
    }
    println!(
        "restored the backup at index {index} (term {term}, {bytes} bytes of state) into {} \
         as node {id} at {raft_addr}.\nStart it with `raft-kv serve --id {id} --raft-addr \
         {raft_addr} --data-dir {} ...` (no --join): it runs as a one-node cluster; add \
         nodes with `raft-kv serve ... --join {raft_addr}`.",
        data_dir.display(),
        data_dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_part_file_sits_next_to_the_target() {
        assert_eq!(
            part_path(Path::new("/a/b.backup")),
            PathBuf::from("/a/b.backup.part")
        );
        assert_eq!(part_path(Path::new("b")), PathBuf::from("b.part"));
    }

    #[test]
    fn only_new_or_empty_dirs_take_a_restore() {
        let root = tempfile::tempdir().unwrap();
        assert!(is_new_or_empty(&root.path().join("new")).unwrap());
        assert!(is_new_or_empty(root.path()).unwrap());
        std::fs::write(root.path().join("x"), b"x").unwrap();
        assert!(!is_new_or_empty(root.path()).unwrap());
    }
}
