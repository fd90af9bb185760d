//! The `raft-kv` node processes: start (inside their namespace), SIGKILL, SIGSTOP/SIGCONT,
//! restart, status, and noticing exits the nemesis did not cause.
//!
//! Nodes run as in production: mutual TLS on the raft transport (gRPC or QUIC) with
//! certificates that name each node's id and cluster address, and bearer tokens on the HTTP
//! API (a regular token for clients, an admin token for `/cluster/*`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Deserialize;

use crate::net::Network;
use crate::Transport;

/// The raft port every node listens on (each node has its own addresses).
const RAFT_PORT: u16 = 7000;
/// The HTTP port every node listens on.
const HTTP_PORT: u16 = 8000;

/// What `/status` answers (the fields the suite uses).
#[derive(Debug, Clone, Deserialize)]
pub struct Status {
    /// The node.
    pub id: u64,
    /// leader, follower, candidate, ...
    pub role: String,
    /// Its current term.
    pub term: u64,
    /// Its commit index.
    pub commit_index: u64,
    /// Its applied index.
    pub applied_index: u64,
    /// Voting members.
    pub voters: Vec<u64>,
    /// Learners.
    pub learners: Vec<u64>,
}

/// An exit the nemesis did not cause.
#[derive(Debug, Clone)]
pub struct Crash {
    /// The node.
    pub id: u64,
    /// Its exit status.
    pub status: String,
    /// Seconds since the start of the run.
    pub at: f64,
    /// The end of its log.
    pub log_tail: String,
}

/// The HTTP API's bearer tokens of a run, and the 0600 files the nodes read them from.
#[derive(Clone)]
pub struct Tokens {
    /// The clients' token (data routes).
    pub client: String,
    /// The admin token (`/cluster/*`).
    pub admin: String,
    /// `--auth-token-file`.
    pub client_file: PathBuf,
    /// `--admin-token-file`.
    pub admin_file: PathBuf,
}

impl Tokens {
    /// Fresh random tokens, written to `dir/secrets/` (0700) as 0600 files.
    pub fn create(dir: &Path) -> Result<Tokens> {
        let secrets = dir.join("secrets");
        raft_core::private_files::create_dir_all(&secrets)
            .with_context(|| format!("creating {}", secrets.display()))?;
        let tokens = Tokens {
            client: random_token(),
            admin: random_token(),
            client_file: secrets.join("auth.tokens"),
            admin_file: secrets.join("admin.tokens"),
        };
        write_private(&tokens.client_file, &tokens.client)?;
        write_private(&tokens.admin_file, &tokens.admin)?;
        Ok(tokens)
    }
}

/// 32 random bytes from the OS, hex: 64 characters.
fn random_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a one-line token file with mode 0600 (raft-kv refuses a file others may read).
fn write_private(path: &Path, token: &str) -> Result<()> {
    use std::io::Write;
    let mut file = raft_core::private_files::create_file(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(file, "{token}").with_context(|| format!("writing {}", path.display()))
}

/// One node process.
pub struct Node {
    /// Its raft id.
    pub id: u64,
    /// Its raft address (cluster network).
    pub raft: String,
    /// Its HTTP base URL (client network).
    pub url: String,
    ns: String,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// SIGSTOPped right now.
    pub paused: bool,
    /// The node may exit by itself (it is being removed from the cluster).
    pub may_exit: bool,
}

impl Node {
    /// Whether a process is running (or paused).
    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }
}

/// The cluster of node processes.
pub struct Nodes {
    exe: PathBuf,
    transport: Transport,
    certs: PathBuf,
    /// The HTTP API's tokens.
    pub tokens: Tokens,
    /// The nodes, by id order.
    pub nodes: Vec<Node>,
    /// Exits nobody asked for.
    pub crashes: Vec<Crash>,
    /// More flags for every `raft-kv serve` (e.g. `--no-client-sessions`).
    pub serve_flags: Vec<String>,
    started: Instant,
}

/// The last `lines` lines of a file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Nodes {
    /// Plans `ids` in `net`, keeping data and logs under `dir`: writes the certificates (one
    /// directory per node, `certs/node-<id>/`) and the token files.
    pub fn new(
        exe: PathBuf,
        transport: Transport,
        net: &Network,
        ids: &[u64],
        dir: &Path,
        started: Instant,
    ) -> Result<Nodes> {
        let certs = dir.join("certs");
        // Both transports run mutual TLS. A node checks the peer certificate against the
        // address it dials, so the certificates must name the cluster addresses; each also
        // names its node id, and a node refuses raft traffic claiming another id.
        let max_id = ids.iter().copied().max().unwrap_or(0);
        let mut cmd = Command::new(&exe);
        cmd.args(["certs", "--nodes", &max_id.to_string(), "--out"])
            .arg(&certs);
        for &id in ids {
            cmd.args(["--name", &net.cluster_ip(id)]);
        }
        let out = cmd.output().context("running raft-kv certs")?;
        if !out.status.success() {
            bail!(
                "raft-kv certs failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for &id in ids {
            let key = certs.join(format!("node-{id}/node.key"));
            if !key.exists() {
                bail!("raft-kv certs wrote no {}", key.display());
            }
        }
        let tokens = Tokens::create(dir)?;
        let nodes = ids
            .iter()
            .map(|&id| Node {
                id,
                raft: format!("{}:{RAFT_PORT}", net.cluster_ip(id)),
                url: format!("http://{}:{HTTP_PORT}", net.client_ip(id)),
                ns: net.namespace(id),
                dir: dir.join(format!("node-{id}")),
                log: dir.join(format!("node-{id}.log")),
                child: None,
                paused: false,
                may_exit: false,
            })
            .collect();
        Ok(Nodes {
            exe,
            transport,
            certs,
            tokens,
            nodes,
            crashes: Vec::new(),
            serve_flags: Vec::new(),
            started,
        })
    }

    /// Node `id`.
    pub fn node(&self, id: u64) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .with_context(|| format!("no node {id}"))
    }

    fn node_mut(&mut self, id: u64) -> Result<&mut Node> {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .with_context(|| format!("no node {id}"))
    }

    /// Every node id.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// Node `id`'s log file.
    pub fn log_path(&self, id: u64) -> Result<PathBuf> {
        Ok(self.node(id)?.log.clone())
    }

    /// Starts node `id` in its namespace; `join` lists raft addresses to join through (a
    /// node with state restarts as itself and ignores it).
    pub fn start(&mut self, id: u64, join: &[String]) -> Result<()> {
        let exe = self.exe.clone();
        let transport = self.transport;
        let node_certs = self.certs.join(format!("node-{id}"));
        let tokens = self.tokens.clone();
        let serve_flags = self.serve_flags.clone();
        let node = self.node_mut(id)?;
        if node.child.is_some() {
            bail!("node {id} is already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .with_context(|| format!("opening {}", node.log.display()))?;
        let http = node.url.trim_start_matches("http://").to_string();
        let mut cmd = Command::new("ip");
        // `ip netns exec` execs the command: the child's pid is raft-kv's own (checked
        // below), so signals reach the node and not a wrapper.
        cmd.args(["netns", "exec", &node.ns])
            .arg(&exe)
            .arg("serve")
            .args(["--id", &id.to_string()])
            .args(["--raft-addr", &node.raft, "--http-addr", &http])
            .arg("--data-dir")
            .arg(&node.dir);
        for addr in join {
            cmd.args(["--join", addr]);
        }
        let transport = match transport {
            Transport::Grpc => "grpc",
            Transport::Quic => "quic",
        };
        cmd.args(["--transport", transport])
            .arg("--tls-ca")
            .arg(node_certs.join("ca.pem"))
            .arg("--tls-cert")
            .arg(node_certs.join("node.pem"))
            .arg("--tls-key")
            .arg(node_certs.join("node.key"))
            .arg("--auth-token-file")
            .arg(&tokens.client_file)
            .arg("--admin-token-file")
            .arg(&tokens.admin_file)
            .args(&serve_flags);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .env(
                "RUST_LOG",
                std::env::var("RAFT_KV_LOG").unwrap_or_else(|_| "info,raft_rs=warn".into()),
            );
        let child = cmd.spawn().context("starting ip netns exec raft-kv")?;
        let pid = child.id();
        node.child = Some(child);
        node.paused = false;
        node.may_exit = false;
        wait_for_exec(pid)
            .with_context(|| format!("node {id} (pid {pid}) never became raft-kv"))?;
        Ok(())
    }

    fn signal(&self, id: u64, signal: Signal) -> Result<()> {
        if let Some(child) = &self.node(id)?.child {
            let pid = i32::try_from(child.id()).context("pid out of range")?;
            kill(Pid::from_raw(pid), signal)
                .with_context(|| format!("sending {signal} to node {id}"))?;
        }
        Ok(())
    }

    /// SIGKILL: the process dies at once; its data dir stays.
    pub fn kill(&mut self, id: u64) -> Result<()> {
        self.signal(id, Signal::SIGKILL)?;
        let node = self.node_mut(id)?;
        node.paused = false;
        if let Some(mut child) = node.child.take() {
            child.wait().context("waiting for a killed node")?;
        }
        Ok(())
    }

    /// SIGSTOP.
    pub fn pause(&mut self, id: u64) -> Result<()> {
        self.signal(id, Signal::SIGSTOP)?;
        self.node_mut(id)?.paused = true;
        Ok(())
    }

    /// SIGCONT.
    pub fn resume(&mut self, id: u64) -> Result<()> {
        self.signal(id, Signal::SIGCONT)?;
        self.node_mut(id)?.paused = false;
        Ok(())
    }

    /// Deletes node `id`'s data dir (it must not be running).
    pub fn wipe(&mut self, id: u64) -> Result<()> {
        let node = self.node(id)?;
        if node.child.is_some() {
            bail!("node {id} is running");
        }
        if node.dir.exists() {
            std::fs::remove_dir_all(&node.dir)
                .with_context(|| format!("wiping {}", node.dir.display()))?;
        }
        Ok(())
    }

    /// Records nodes that exited by themselves. An exit of a node marked `may_exit` is
    /// expected (it was removed from the cluster) unless it failed.
    pub fn reap(&mut self) {
        let at = self.started.elapsed().as_secs_f64();
        let mut crashes = Vec::new();
        for node in &mut self.nodes {
            let Some(child) = node.child.as_mut() else {
                continue;
            };
            match child.try_wait() {
                Ok(Some(status)) => {
                    node.child = None;
                    node.paused = false;
                    if !(node.may_exit && status.success()) {
                        crashes.push(Crash {
                            id: node.id,
                            status: status.to_string(),
                            at,
                            log_tail: tail(&node.log, 40),
                        });
                    }
                }
                Ok(None) => {}
                Err(e) => crashes.push(Crash {
                    id: node.id,
                    status: format!("cannot wait: {e}"),
                    at,
                    log_tail: tail(&node.log, 40),
                }),
            }
        }
        self.crashes.extend(crashes);
    }

    /// Resumes paused nodes and kills every process (end of the run).
    pub fn stop_all(&mut self) {
        for id in self.ids() {
            let _ = self.resume(id);
            let _ = self.kill(id);
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Waits until `pid` runs raft-kv: `ip netns exec` must have exec'd it rather than run it
/// as a child, or signals would hit `ip`.
fn wait_for_exec(pid: u32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let me = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
    loop {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        match comm.trim() {
            "raft-kv" => return Ok(()),
            // Forked but not exec'd yet, still `ip` setting up the namespace, or already
            // gone (the monitor reports that).
            c @ ("ip" | "") if Instant::now() < deadline => {
                let _ = c;
                std::thread::sleep(Duration::from_millis(5));
            }
            c if c == me.trim() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            "" => return Ok(()),
            other => bail!("pid {pid} runs {other:?}, not raft-kv"),
        }
    }
}

/// Asks node `url` for its status.
pub async fn status(http: &reqwest::Client, url: &str) -> Option<Status> {
    let response = http
        .get(format!("{url}/status"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    response.json().await.ok()
}
