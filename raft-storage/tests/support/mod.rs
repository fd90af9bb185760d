//! Shared helpers for raft-storage's integration tests: the backends under test, and child
//! processes (this test binary re-executed with an environment variable naming its job).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use raft_core::{LogStorage, StorageError};
use raft_storage::OpenOptions;

/// A durable backend of this crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    #[cfg(feature = "rocksdb")]
    Rocks,
    #[cfg(feature = "raft-engine")]
    RaftEngine,
}

impl Backend {
    /// Every backend compiled in.
    pub fn all() -> Vec<Backend> {
        vec![
            #[cfg(feature = "rocksdb")]
            Backend::Rocks,
            #[cfg(feature = "raft-engine")]
            Backend::RaftEngine,
        ]
    }

    pub fn name(self) -> &'static str {
        match self {
            #[cfg(feature = "rocksdb")]
            Backend::Rocks => "rocksdb",
            #[cfg(feature = "raft-engine")]
            Backend::RaftEngine => "raft-engine",
        }
    }

    pub fn from_name(name: &str) -> Backend {
        Backend::all()
            .into_iter()
            .find(|b| b.name() == name)
            .unwrap_or_else(|| panic!("unknown backend {name}"))
    }

    pub fn open_with(
        self,
        dir: &Path,
        options: &OpenOptions,
    ) -> Result<Arc<dyn LogStorage>, StorageError> {
        Ok(match self {
            #[cfg(feature = "rocksdb")]
            Backend::Rocks => Arc::new(raft_storage::RocksLogStorage::open_with(dir, options)?),
            #[cfg(feature = "raft-engine")]
            Backend::RaftEngine => {
                Arc::new(raft_storage::RaftEngineLogStorage::open_with(dir, options)?)
            }
        })
    }

    pub fn open(self, dir: &Path) -> Result<Arc<dyn LogStorage>, StorageError> {
        self.open_with(dir, &OpenOptions::default())
    }
}

/// The environment variable that tells a re-executed test binary which child job to run.
pub const CHILD_ENV: &str = "RAFT_STORAGE_TEST_CHILD";

/// The job this process was started for, if it is a child.
pub fn child_job() -> Option<Vec<String>> {
    std::env::var(CHILD_ENV)
        .ok()
        .map(|v| v.split('|').map(str::to_owned).collect())
}

/// Starts this test binary again, running only the test `entry`, with `job` in the
/// environment; its stdout is piped.
pub fn spawn_child(entry: &str, job: &[String]) -> Child {
    let exe = std::env::current_exe().expect("test binary path");
    Command::new(exe)
        .args(["--exact", entry, "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, job.join("|"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child test process")
}

/// Reads the child's stdout until a line starting with `prefix`; returns the line.
pub fn wait_for_line(lines: &mut impl Iterator<Item = String>, prefix: &str) -> Option<String> {
    lines.find(|l| l.starts_with(prefix))
}

/// The child's stdout as lines, without the test harness's `test <name> ... ` prefix that
/// shares a line with the child's first output.
pub fn child_lines(child: &mut Child) -> impl Iterator<Item = String> {
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .lines()
        .map_while(Result::ok)
        .map(|line| match line.strip_prefix("test ") {
            Some(rest) => rest
                .split_once(" ... ")
                .map_or(line.clone(), |(_, tail)| tail.to_string()),
            None => line,
        })
}
