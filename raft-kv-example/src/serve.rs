//! `raft-kv serve`: one node — raft over the chosen transport and storage, HTTP in front.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use raft_core::{Config, Raft};

use crate::http_args::HttpArgs;
use crate::http_server::HttpServer;
use crate::http_stats::HttpStats;

use crate::{backends, http, store::KvStore, StorageKind, TlsArgs, TransportKind};

/// Flags of `raft-kv serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// This node's id (1 or more), unique in the cluster.
    #[arg(long)]
    pub id: u64,
    /// Where the raft transport listens (host:port); peers use this address.
    #[arg(long)]
    pub raft_addr: String,
    /// Where the HTTP API listens (host:port).
    #[arg(long)]
    pub http_addr: String,
    /// Where this node keeps its state.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Join the cluster through this member's raft address (repeatable). Without it a node
    /// with no state bootstraps a new cluster; a node with state always restarts as itself.
    #[arg(long)]
    pub join: Vec<String>,
    /// grpc or quic (quic needs the TLS flags).
    #[arg(long, value_enum, default_value = "grpc")]
    pub transport: TransportKind,
    /// rocksdb or memory.
    #[arg(long, value_enum, default_value = "rocksdb")]
    pub storage: StorageKind,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Allow a plaintext raft transport (gRPC without the TLS flags) on an address other
    /// machines can reach. Anyone who reaches it can then act as any node; without this flag
    /// `serve` refuses to start that way (loopback addresses are always allowed).
    #[arg(long)]
    pub insecure_transport: bool,
    /// HTTPS, bearer tokens and limits of the HTTP API.
    #[command(flatten)]
    pub http: HttpArgs,
}

pub async fn serve(args: ServeArgs) -> Result<()> {
    // Certificates, keys and token files first: a mistake there stops the node before it
    // touches its data.
    let http_config = args.http.load().context("the HTTP API's settings")?;
    crate::files::create_private_dir(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    backends::check_plaintext(
        args.transport,
        &args.tls,
        &args.raft_addr,
        args.insecure_transport,
    )?;
    let transport = backends::transport(args.transport, &args.tls)?;
    let storage = backends::storage(args.storage, &args.data_dir)?;
    let raft = Raft::builder(args.id, KvStore::default())
        .raft_addr(args.raft_addr.clone())
        .transport(transport)
        .log_storage(storage)
        .config(Config::default())
        .build()?;
    let mailbox = raft.mailbox();
    let mut node = if raft.has_state()? || args.join.is_empty() {
        tokio::spawn(raft.lead())
    } else {
        // A node that lost its disk may be the leader its peers still remember (they have
        // not noticed it died yet): joining through itself would go nowhere, so it then
        // joins through a peer, which forwards to the leader once the cluster elected one.
        let (leader_id, leader_addr) = raft
            .find_leader_info(args.join.clone())
            .await?
            .filter(|(leader_id, _)| *leader_id != args.id)
            .unwrap_or_else(|| (0, args.join[0].clone()));
        tracing::info!(leader_id, %leader_addr, "joining the cluster");
        tokio::spawn(raft.join(leader_id, leader_addr))
    };

    let stats = Arc::new(HttpStats::default());
    let server = HttpServer::bind(
        &args.http_addr,
        http_config,
        http::router(mailbox.clone(), stats.clone()),
        stats,
    )
    .await?;
    tracing::info!(id = args.id, http = %args.http_addr, raft = %args.raft_addr, "raft-kv serving");
    let (node_done_tx, node_done_rx) = tokio::sync::oneshot::channel::<()>();
    let server = server.run(async move {
        tokio::select! {
            _ = terminate_signal() => tracing::info!("signal received: finishing in-flight requests"),
            _ = node_done_rx => {}
        }
    });
    let mut node_result = None;
    tokio::select! {
        served = server => served.context("HTTP server")?,
        result = &mut node => {
            // The node stopped by itself (removed from the cluster, or failed): stop serving.
            let _ = node_done_tx.send(());
            node_result = Some(result);
        }
    }
    // In-flight requests are done; stop raft. Every acknowledged write was already durable.
    mailbox.shutdown().await;
    let result = match node_result {
        Some(r) => r,
        None => node.await,
    };
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e).context("raft node failed"),
        Err(e) => Err(e).context("raft node task"),
    }
}

async fn terminate_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
