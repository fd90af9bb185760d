//! `raft-kv cluster`: a local N-node cluster as child processes, until Ctrl-C.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};

use crate::http::StatusBody;
use crate::{backends, StorageKind, TransportKind};

/// Prints a line; a closed stdout (the reader went away) must not stop the shutdown.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Flags of `raft-kv cluster`.
#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    /// How many nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// grpc or quic (quic gets generated development certificates).
    #[arg(long, value_enum, default_value = crate::DEFAULT_TRANSPORT)]
    pub transport: TransportKind,
    /// Where each node keeps its raft log.
    #[arg(long, value_enum, default_value = crate::DEFAULT_STORAGE)]
    pub storage: StorageKind,
    /// Node i's raft port is base+i, its HTTP port base+100+i.
    #[arg(long, default_value_t = 7000)]
    pub base_port: u16,
    /// Where the nodes keep their state and logs.
    #[arg(long, default_value = "raft-kv-data")]
    pub data_dir: PathBuf,
}

struct NodePlan {
    id: u64,
    raft: String,
    http: String,
}

fn plan(args: &ClusterArgs) -> Result<Vec<NodePlan>> {
    if args.nodes == 0 || args.nodes > 50 {
        bail!("--nodes must be between 1 and 50");
    }
    (1..=args.nodes)
        .map(|id| {
            let port = |offset: u64| {
                u16::try_from(u64::from(args.base_port) + offset + id)
                    .context("--base-port too high for that many nodes")
            };
            Ok(NodePlan {
                id,
                raft: format!("127.0.0.1:{}", port(0)?),
                http: format!("127.0.0.1:{}", port(100)?),
            })
        })
        .collect()
}

pub async fn run(args: ClusterArgs) -> Result<()> {
    let nodes = plan(&args)?;
    // Refuses at once a data dir holding a cluster of another layout (see cluster_dir).
    crate::cluster_dir::claim(&args)?;
    crate::files::create_private_dir(&args.data_dir)?;
    let exe = std::env::current_exe().context("locating the raft-kv binary")?;
    let certs = args.data_dir.join("certs");
    if args.transport.is_quic() && !certs.join("ca").join("ca.pem").exists() {
        backends::write_dev_certs(&certs, args.nodes, &[])?;
    }
    let client = reqwest::Client::new();
    // All nodes start at once from one member list (what operators do on three machines).
    let initial_cluster = nodes
        .iter()
        .map(|n| format!("{}={}", n.id, n.raft))
        .collect::<Vec<_>>()
        .join(",");
    let mut children: Vec<Child> = Vec::new();
    for node in &nodes {
        let dir = args.data_dir.join(format!("node-{}", node.id));
        crate::files::create_private_dir(&dir)?;
        let log = std::fs::File::create(args.data_dir.join(format!("node-{}.log", node.id)))?;
        let mut cmd = Command::new(&exe);
        cmd.arg("serve")
            .args(["--id", &node.id.to_string()])
            .args(["--raft-addr", &node.raft, "--http-addr", &node.http])
            .arg("--data-dir")
            .arg(&dir)
            .args(["--transport", args.transport.name()])
            .args(["--storage", args.storage.name()]);
        if args.transport.is_quic() {
            let own = certs.join(format!("node-{}", node.id));
            cmd.arg("--tls-ca").arg(own.join("ca.pem"));
            cmd.arg("--tls-cert").arg(own.join("node.pem"));
            cmd.arg("--tls-key").arg(own.join("node.key"));
        }
        cmd.args(["--initial-cluster", &initial_cluster]);
        cmd.stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        children.push(cmd.spawn().context("starting a node")?);
    }
    let want = args.nodes as usize;
    wait_until(&client, &nodes[0].http, Duration::from_secs(60), |s| {
        s.leader_id.is_some() && s.voters.len() == want && s.learners.is_empty()
    })
    .await
    .context("the cluster did not form; see the node logs in the data dir")?;

    say!(
        "raft-kv: {} nodes are voters ({:?} transport, {:?} storage, data in {})",
        args.nodes,
        args.transport,
        args.storage,
        args.data_dir.display()
    );
    for node in &nodes {
        say!(
            "  node {}: http://{}  (raft {})",
            node.id,
            node.http,
            node.raft
        );
    }
    let first = &nodes[0].http;
    let last = &nodes[nodes.len() - 1].http;
    say!("try:");
    say!("  curl -X PUT --data-binary world http://{first}/kv/hello");
    say!("  curl http://{last}/kv/hello");
    say!("  curl -X POST -H 'content-type: application/json' -d '{{\"expect\":\"world\",\"value\":\"there\"}}' http://{last}/kv/hello/cas");
    say!("  curl http://{first}/status");
    say!("Ctrl-C stops the cluster.");

    wait_for_stop(&mut children).await;
    say!("raft-kv: stopping the nodes");
    for child in &mut children {
        if let Some(pid) = child.id() {
            // SIGTERM: each node finishes in-flight requests and exits cleanly.
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
    for child in &mut children {
        match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill().await;
            }
        }
    }
    Ok(())
}

async fn wait_for_stop(children: &mut [Child]) {
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    let child_exit = async {
        loop {
            for (i, child) in children.iter_mut().enumerate() {
                if let Ok(Some(status)) = child.try_wait() {
                    say!("raft-kv: node {} exited ({status})", i + 1);
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
        _ = child_exit => {}
    }
}

async fn wait_until(
    client: &reqwest::Client,
    http: &str,
    timeout: Duration,
    done: impl Fn(&StatusBody) -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(response) = client.get(format!("http://{http}/status")).send().await {
            if let Ok(status) = response.json::<StatusBody>().await {
                if done(&status) {
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for http://{http}/status");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
