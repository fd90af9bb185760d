//! What a `raft-kv cluster` data dir holds, recorded in `cluster.json` beside the node dirs.
//!
//! The nodes of a data dir restart as themselves, with the members and raft addresses their
//! logs remember. A second `raft-kv cluster` over the same dir with another node count,
//! transport or base port therefore cannot form a cluster (the old nodes never admit the new
//! ones, or dial ports nobody listens on); without this record it waited a minute and timed
//! out without saying why. With it, `cluster` refuses at once and says what the dir holds and
//! how to start afresh.

use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::cluster::ClusterArgs;

/// The record's file name, in the cluster's data dir.
pub const MARKER: &str = "cluster.json";

/// The settings that must stay the same for the nodes of a data dir to form a cluster again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Number of nodes (ids 1..=nodes).
    pub nodes: u64,
    /// `grpc` or `quic`.
    pub transport: String,
    /// `rocksdb` or `memory`.
    pub storage: String,
    /// Node i's raft port is base+i, its HTTP port base+100+i.
    pub base_port: u16,
}

impl Layout {
    /// The layout `args` asks for.
    pub fn of(args: &ClusterArgs) -> Layout {
        Layout {
            nodes: args.nodes,
            transport: value_name(args.transport),
            storage: value_name(args.storage),
            base_port: args.base_port,
        }
    }

    /// The flags that start this layout again.
    fn flags(&self) -> String {
        format!(
            "--nodes {} --transport {} --storage {} --base-port {}",
            self.nodes, self.transport, self.storage, self.base_port
        )
    }

    /// What differs from `old`, in flag words ("5 nodes (it has 3)", ...).
    fn differences(&self, old: &Layout) -> Vec<String> {
        let mut out = Vec::new();
        if self.nodes != old.nodes {
            out.push(format!("{} nodes (it has {})", self.nodes, old.nodes));
        }
        if self.transport != old.transport {
            out.push(format!(
                "the {} transport (it has {})",
                self.transport, old.transport
            ));
        }
        if self.storage != old.storage {
            out.push(format!("{} storage (it has {})", self.storage, old.storage));
        }
        if self.base_port != old.base_port {
            out.push(format!(
                "base port {} (it has {})",
                self.base_port, old.base_port
            ));
        }
        out
    }
}

fn value_name(v: impl ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

/// Checks that `args.data_dir` is new, empty of nodes, or holds a cluster of the same layout,
/// then records the layout there. Refuses, saying what the dir holds and how to reset it,
/// when it holds another layout.
pub fn claim(args: &ClusterArgs) -> Result<()> {
    let want = Layout::of(args);
    let dir = &args.data_dir;
    check(dir, &want)?;
    crate::files::create_private_dir(dir)?;
    record(dir, &want)
}

/// The refusal, or `Ok` when a cluster of layout `want` can run over `dir`.
fn check(dir: &Path, want: &Layout) -> Result<()> {
    let shown = dir.display();
    let reset = format!(
        "To start afresh, delete it (and its data): rm -rf {shown}\n  \
         Or keep it and give this cluster another directory: --data-dir <dir>"
    );
    let marker = dir.join(MARKER);
    match std::fs::read(&marker) {
        Ok(bytes) => {
            let old: Layout = serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not a raft-kv cluster record ({e}), so the nodes in {shown} \
                     cannot be checked against this run.\n  {reset}",
                    marker.display()
                )
            })?;
            if old == *want {
                return Ok(());
            }
            bail!(
                "{shown} holds a {}-node cluster ({} transport, {} storage, base port {}) from \
                 an earlier `raft-kv cluster`, and this run asks for {}. Its nodes restart with \
                 the members and addresses they remember, so they cannot form this cluster.\n  \
                 {reset}\n  Or restart it as it was: {}",
                old.nodes,
                old.transport,
                old.storage,
                old.base_port,
                want.differences(&old).join(", "),
                old.flags()
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", marker.display())),
    }
    // No record: a new dir, or one from a raft-kv that did not write it. Node dirs tell at
    // least how many nodes it had.
    let ids = node_dirs(dir)?;
    if !ids.is_empty() && ids.len() as u64 != want.nodes {
        let listed: Vec<String> = ids.iter().map(|id| format!("node-{id}")).collect();
        bail!(
            "{shown} holds the state of {} nodes ({}) from an earlier `raft-kv cluster`, and \
             this run asks for {}. Those nodes restart with the members they remember, so they \
             cannot form this cluster.\n  {reset}\n  Or restart it with --nodes {}",
            ids.len(),
            listed.join(", "),
            want.nodes,
            ids.len()
        );
    }
    Ok(())
}

/// Ids of the `node-<id>` directories in `dir` (none when `dir` does not exist), sorted.
fn node_dirs(dir: &Path) -> Result<Vec<u64>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        let name = entry.file_name();
        let id = name
            .to_str()
            .and_then(|n| n.strip_prefix("node-"))
            .and_then(|n| n.parse::<u64>().ok());
        if let (true, Some(id)) = (is_dir, id) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Writes the record (via a temporary file and a rename: a crash leaves the old one or the
/// new one, never half of one).
fn record(dir: &Path, layout: &Layout) -> Result<()> {
    let path = dir.join(MARKER);
    let tmp = dir.join(format!("{MARKER}.tmp"));
    let text = serde_json::to_string_pretty(layout).context("encoding the cluster record")?;
    let _ = std::fs::remove_file(&tmp);
    let mut file = raft_core::private_files::create_file(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    std::io::Write::write_all(&mut file, format!("{text}\n").as_bytes())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(file);
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn layout(nodes: u64) -> Layout {
        Layout {
            nodes,
            transport: "grpc".into(),
            storage: "rocksdb".into(),
            base_port: 7000,
        }
    }

    #[test]
    fn a_new_or_nodeless_dir_is_claimed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        assert!(check(&dir, &layout(3)).is_ok());
        // A dir with unrelated files (a script's log) is fine too.
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("cluster.out"), "x").unwrap();
        assert!(check(&dir, &layout(5)).is_ok());
        record(&dir, &layout(5)).unwrap();
        let text = std::fs::read_to_string(dir.join(MARKER)).unwrap();
        assert_eq!(serde_json::from_str::<Layout>(&text).unwrap(), layout(5));
        assert!(check(&dir, &layout(5)).is_ok(), "the same layout again");
    }

    #[test]
    fn another_layout_is_refused_with_what_the_dir_holds() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        record(dir, &layout(3)).unwrap();
        let want = Layout {
            transport: "quic".into(),
            ..layout(5)
        };
        let message = format!("{:#}", check(dir, &want).unwrap_err());
        for needle in [
            "holds a 3-node cluster (grpc transport, rocksdb storage, base port 7000)",
            "asks for 5 nodes (it has 3), the quic transport (it has grpc)",
            &format!("rm -rf {}", dir.display()),
            "--data-dir",
            "--nodes 3 --transport grpc --storage rocksdb --base-port 7000",
        ] {
            assert!(message.contains(needle), "{needle:?} not in:\n{message}");
        }
        let moved = Layout {
            base_port: 8000,
            ..layout(3)
        };
        let message = format!("{:#}", check(dir, &moved).unwrap_err());
        assert!(
            message.contains("base port 8000 (it has 7000)"),
            "{message}"
        );
    }

    #[test]
    fn node_dirs_without_a_record_are_counted() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        for id in 1..=3 {
            std::fs::create_dir(dir.join(format!("node-{id}"))).unwrap();
        }
        // Logs beside them are not nodes.
        std::fs::write(dir.join("node-4.log"), "").unwrap();
        assert!(check(dir, &layout(3)).is_ok());
        let message = format!("{:#}", check(dir, &layout(5)).unwrap_err());
        assert!(
            message.contains("state of 3 nodes (node-1, node-2, node-3)")
                && message.contains("asks for 5")
                && message.contains("rm -rf"),
            "{message}"
        );
    }

    #[test]
    fn an_unreadable_record_is_refused() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join(MARKER), "not json").unwrap();
        let message = format!("{:#}", check(root.path(), &layout(3)).unwrap_err());
        assert!(
            message.contains("is not a raft-kv cluster record") && message.contains("rm -rf"),
            "{message}"
        );
    }
}
