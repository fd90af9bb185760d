//! Runs raft-kv nodes as real processes on loopback for the multi-process tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// Which raft transport the nodes use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    Quic,
}

/// Runs the real `raft-kv` binary with `args`; returns (success, stdout, stderr).
pub async fn raft_kv(args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_raft-kv"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The value of the Prometheus sample `name` (with its labels) in `/metrics` text.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// A free loopback port for both TCP and UDP.
pub fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Whether the server has already answered or closed `stream`, without waiting: a request
/// meant to hold a slot that was refused instead has lost a race and must be sent again.
pub fn answered(stream: &tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 64];
    !matches!(stream.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

pub struct Node {
    pub id: u64,
    pub raft: String,
    pub http: String,
    pub dir: PathBuf,
    pub child: Option<Child>,
}

pub struct KvCluster {
    pub root: tempfile::TempDir,
    pub transport: Transport,
    pub nodes: Vec<Node>,
    pub http: reqwest::Client,
}

impl KvCluster {
    /// Starts `n` nodes: node 1 bootstraps, the others join through it.
    pub async fn start(n: u64, transport: Transport) -> KvCluster {
        let root = tempfile::tempdir().unwrap();
        if transport == Transport::Quic {
            let status = Command::new(env!("CARGO_BIN_EXE_raft-kv"))
                .args(["certs", "--nodes", "9", "--out"])
                .arg(root.path().join("certs"))
                .status()
                .unwrap();
            assert!(status.success(), "raft-kv certs failed");
        }
        let mut cluster = KvCluster::empty_in(root, transport);
        for id in 1..=n {
            cluster.add(id);
            cluster.spawn(id, if id == 1 { None } else { Some(1) });
            if id == 1 {
                cluster
                    .wait_status(1, Duration::from_secs(30), |s| !s["leader_id"].is_null())
                    .await;
            }
        }
        let want: Vec<u64> = (1..=n).collect();
        cluster.wait_voters(&want, Duration::from_secs(60)).await;
        cluster
    }

    /// Registers node `id` (ports and data dir) without starting it.
    pub fn add(&mut self, id: u64) {
        let dir = self.root.path().join(format!("node-{id}"));
        // The probe listener is closed before the next probe, so the OS may hand out the
        // same port again: never give one to two addresses.
        let mut taken: Vec<String> = self
            .nodes
            .iter()
            .flat_map(|n| [n.raft.clone(), n.http.clone()])
            .collect();
        let mut fresh = || loop {
            let addr = format!("127.0.0.1:{}", free_port());
            if !taken.contains(&addr) {
                taken.push(addr.clone());
                return addr;
            }
        };
        let (raft, http) = (fresh(), fresh());
        self.nodes.push(Node {
            id,
            raft,
            http,
            dir,
            child: None,
        });
    }

    pub fn node(&self, id: u64) -> &Node {
        self.nodes.iter().find(|n| n.id == id).expect("known node")
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .expect("known node")
    }

    pub fn url(&self, id: u64, path: &str) -> String {
        format!("http://{}{path}", self.node(id).http)
    }

    /// Starts node `id`, joining through `via` when given.
    pub fn spawn(&mut self, id: u64, via: Option<u64>) {
        let via: Vec<u64> = via.into_iter().collect();
        self.spawn_joining(id, &via);
    }

    /// Starts node `id` with one `--join` per node of `via` (none: it bootstraps or restarts
    /// from its data dir).
    pub fn spawn_joining(&mut self, id: u64, via: &[u64]) {
        let join: Vec<String> = via
            .iter()
            .flat_map(|&v| ["--join".to_string(), self.node(v).raft.clone()])
            .collect();
        self.spawn_with(id, &join);
    }

    /// Registers nodes `1..=n` and starts them all at once as the founding members of one
    /// cluster (`--initial-cluster`), without waiting for anything.
    pub fn start_founders(&mut self, n: u64, token: &str) {
        for id in 1..=n {
            self.add(id);
        }
        let initial = self
            .nodes
            .iter()
            .map(|node| format!("{}={}", node.id, node.raft))
            .collect::<Vec<_>>()
            .join(",");
        let args = [
            "--initial-cluster".to_string(),
            initial,
            "--initial-cluster-token".to_string(),
            token.to_string(),
        ];
        for id in 1..=n {
            self.spawn_with(id, &args);
        }
    }

    /// An empty cluster under a fresh temporary root, for [`KvCluster::start_founders`].
    pub fn empty(transport: Transport) -> KvCluster {
        KvCluster::empty_in(tempfile::tempdir().unwrap(), transport)
    }

    fn empty_in(root: tempfile::TempDir, transport: Transport) -> KvCluster {
        KvCluster {
            root,
            transport,
            nodes: Vec::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    /// Starts node `id` with `extra` arguments after its address and data dir flags.
    pub fn spawn_with(&mut self, id: u64, extra: &[String]) {
        let certs = self.root.path().join("certs");
        let transport = self.transport;
        let log_path = self.root.path().join(format!("node-{id}.log"));
        let node = self.node_mut(id);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_raft-kv"));
        cmd.arg("serve")
            .args([
                "--id",
                &id.to_string(),
                "--raft-addr",
                &node.raft,
                "--http-addr",
                &node.http,
            ])
            .arg("--data-dir")
            .arg(&node.dir)
            .args(extra);
        if transport == Transport::Quic {
            cmd.args(["--transport", "quic"])
                .arg("--tls-ca")
                .arg(certs.join(format!("node-{id}/ca.pem")))
                .arg("--tls-cert")
                .arg(certs.join(format!("node-{id}/node.pem")))
                .arg("--tls-key")
                .arg(certs.join(format!("node-{id}/node.key")));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        cmd.stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .env(
                "RUST_LOG",
                std::env::var("RAFT_KV_LOG").unwrap_or_else(|_| "info,raft_rs=warn".into()),
            );
        node.child = Some(cmd.spawn().unwrap());
    }

    /// Node `id`'s whole log (every incarnation appends to the same file).
    pub fn log_text(&self, id: u64) -> String {
        std::fs::read_to_string(self.root.path().join(format!("node-{id}.log"))).unwrap_or_default()
    }

    pub fn log_tail(&self, id: u64) -> String {
        let text = self.log_text(id);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Panics with the context if any node's log reports a panic (even one in a task that
    /// did not take its process down).
    pub fn assert_no_panics(&self) {
        for node in &self.nodes {
            let text = self.log_text(node.id);
            let lines: Vec<&str> = text.lines().collect();
            if let Some(i) = lines.iter().position(|l| l.contains("panicked")) {
                let context = lines[i.saturating_sub(5)..(i + 15).min(lines.len())].join("\n");
                panic!("node {} panicked:\n{context}", node.id);
            }
        }
    }

    /// Deletes node `id`'s data dir: a lost disk. The node must not be running.
    pub fn wipe(&mut self, id: u64) {
        assert!(self.node(id).child.is_none(), "node {id} is running");
        let dir = self.node(id).dir.clone();
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    pub fn signal(&mut self, id: u64, signal: Signal) {
        if let Some(child) = &self.node(id).child {
            let _ = kill(Pid::from_raw(child.id() as i32), signal);
        }
    }

    /// SIGKILL: the process dies at once, its data dir stays.
    pub fn kill9(&mut self, id: u64) {
        self.signal(id, Signal::SIGKILL);
        if let Some(mut child) = self.node_mut(id).child.take() {
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self, id: u64) -> std::process::ExitStatus {
        self.signal(id, Signal::SIGTERM);
        let mut child = self.node_mut(id).child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("node {id} ignored SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for node `id` to exit by itself; returns its status.
    pub async fn wait_exit(&mut self, id: u64, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.node_mut(id).child.as_mut().expect("running");
            if let Some(status) = child.try_wait().unwrap() {
                self.node_mut(id).child = None;
                return status;
            }
            assert!(Instant::now() < deadline, "node {id} did not exit");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Panics with the node's log if it exited on its own.
    pub fn assert_running(&mut self, id: u64) {
        let exited = self
            .node_mut(id)
            .child
            .as_mut()
            .map(|c| c.try_wait().unwrap());
        if let Some(Some(status)) = exited {
            panic!("node {id} exited ({status}); log:\n{}", self.log_tail(id));
        }
    }

    /// Node `id`'s `/metrics` text.
    pub async fn metrics(&self, id: u64) -> String {
        let response = self
            .http
            .get(self.url(id, "/metrics"))
            .send()
            .await
            .unwrap();
        response.text().await.unwrap()
    }

    pub async fn status(&self, id: u64) -> Option<Value> {
        let response = self.http.get(self.url(id, "/status")).send().await.ok()?;
        response.json().await.ok()
    }

    pub async fn wait_status(
        &self,
        id: u64,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status(id).await {
                if done(&s) {
                    return s;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "node {id} status never matched: {:?}\nlog:\n{}",
                    self.status(id).await,
                    self.log_tail(id)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until some running node leads with exactly `voters` and no learners.
    pub async fn wait_voters(&self, voters: &[u64], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            for node in &self.nodes {
                if node.child.is_none() {
                    continue;
                }
                if let Some(s) = self.status(node.id).await {
                    let got: Vec<u64> =
                        serde_json::from_value(s["voters"].clone()).unwrap_or_default();
                    let learners = s["learners"].as_array().map_or(0, Vec::len);
                    if s["role"] == "leader" && got == voters && learners == 0 {
                        return;
                    }
                }
            }
            if Instant::now() > deadline {
                let mut report = String::new();
                for node in &self.nodes {
                    report.push_str(&format!(
                        "node {}: {:?}\n",
                        node.id,
                        self.status(node.id).await
                    ));
                }
                panic!("voters never became {voters:?}:\n{report}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn leader(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            for node in &self.nodes {
                if node.child.is_some() {
                    if let Some(s) = self.status(node.id).await {
                        if s["role"] == "leader" {
                            return node.id;
                        }
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn put(&self, id: u64, key: &str, value: &str) -> Result<(), String> {
        let r = self
            .http
            .put(self.url(id, &format!("/kv/{key}")))
            .body(value.to_string())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if r.status() == 200 {
            Ok(())
        } else {
            Err(format!(
                "{}: {}",
                r.status(),
                r.text().await.unwrap_or_default()
            ))
        }
    }

    pub async fn get(
        &self,
        id: u64,
        key: &str,
        consistency: &str,
    ) -> Result<Option<String>, String> {
        let r = self
            .http
            .get(self.url(id, &format!("/kv/{key}?consistency={consistency}")))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        match r.status().as_u16() {
            200 => Ok(Some(r.text().await.map_err(|e| e.to_string())?)),
            404 => Ok(None),
            s => Err(format!("{s}: {}", r.text().await.unwrap_or_default())),
        }
    }

    pub async fn post(&self, id: u64, path: &str) -> Result<(), String> {
        let r = self
            .http
            .post(self.url(id, path))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if r.status() == 200 {
            Ok(())
        } else {
            Err(format!(
                "{}: {}",
                r.status(),
                r.text().await.unwrap_or_default()
            ))
        }
    }

    /// Waits until every running node holds `value` for `key` in its own state (stale read).
    pub async fn wait_replicated(&self, key: &str, value: Option<&str>, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for node in &self.nodes {
            if node.child.is_none() {
                continue;
            }
            loop {
                let got = self.get(node.id, key, "stale").await;
                if got.as_ref().ok().map(|v| v.as_deref()) == Some(value) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {} has {key} = {got:?}, want {value:?}",
                    node.id
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    pub fn data_dir(&self, id: u64) -> &Path {
        &self.node(id).dir
    }
}

impl Drop for KvCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The data dir and logs go with the temp dir: show the logs while they exist.
            for node in &self.nodes {
                let text = self.log_text(node.id);
                let lines: Vec<&str> = text.lines().collect();
                eprintln!(
                    "--- node {} log (last 80 lines) ---\n{}",
                    node.id,
                    lines[lines.len().saturating_sub(80)..].join("\n")
                );
            }
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// One `raft-kv serve` process for tests of the HTTP front: a single-node cluster (memory
/// storage; gRPC with mutual TLS from the development certificates in `certs_dir()`, so it
/// needs no plaintext opt-in) started with extra flags. Killed on drop; its log is printed
/// when the test panics.
pub struct SingleNode {
    /// Holds `certs/`, the data dir, the log and whatever files the test writes.
    pub dir: tempfile::TempDir,
    /// The HTTP API's `host:port`.
    pub http: String,
    child: Option<Child>,
}

impl SingleNode {
    /// A temp dir with development certificates for node 1 in `certs/` (see
    /// `raft_transport_quic::dev_certs` for the layout).
    pub fn prepare() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        raft_transport_quic::dev_certs::generate(&dir.path().join("certs"), &[1]).unwrap();
        dir
    }

    /// The certificates directory of a dir from [`SingleNode::prepare`].
    pub fn certs_dir(dir: &Path) -> PathBuf {
        dir.join("certs")
    }

    /// Writes `text` to `dir/name` with `mode` (Unix permissions); returns the path.
    pub fn write_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let path = dir.join(name);
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(mode)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
            .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    /// Starts node 1 in `dir` (from [`SingleNode::prepare`]) with `extra` serve flags. Does
    /// not wait for it: see [`SingleNode::wait_listening`].
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(dir: tempfile::TempDir, extra: &[S]) -> SingleNode {
        use raft_transport_quic::dev_certs;
        let certs = Self::certs_dir(dir.path());
        let (raft, http) = loop {
            let (a, b) = (free_port(), free_port());
            if a != b {
                break (format!("127.0.0.1:{a}"), format!("127.0.0.1:{b}"));
            }
        };
        let log = std::fs::File::create(dir.path().join("node.log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_raft-kv"));
        cmd.args(["serve", "--id", "1", "--storage", "memory"])
            .args(["--raft-addr", &raft, "--http-addr", &http])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--tls-ca")
            .arg(dev_certs::ca_path(&certs))
            .arg("--tls-cert")
            .arg(dev_certs::cert_path(&certs, 1))
            .arg("--tls-key")
            .arg(dev_certs::key_path(&certs, 1))
            .args(extra)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .env(
                "RUST_LOG",
                std::env::var("RAFT_KV_LOG").unwrap_or_else(|_| "info,raft_rs=warn".into()),
            );
        let child = cmd.spawn().unwrap();
        SingleNode {
            dir,
            http,
            child: Some(child),
        }
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    /// Waits until the HTTP port accepts connections; panics with the log if the node exits
    /// or `timeout` passes.
    pub async fn wait_listening(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if tokio::net::TcpStream::connect(&self.http).await.is_ok() {
                return;
            }
            if let Some(status) = self.exited() {
                panic!("the node exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the node never listened:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The exit status, if the node has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().unwrap())
    }

    /// Waits for the node to exit by itself within `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        None
    }
}

impl Drop for SingleNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- node log (last 60 lines) ---\n{}",
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
