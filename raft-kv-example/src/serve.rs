//! `raft-kv serve`: one node — raft over the chosen transport and storage, HTTP in front.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use raft_core::{Config, Raft};

use crate::config_file;
use crate::http_args::HttpArgs;
use crate::http_server::HttpServer;
use crate::http_stats::HttpStats;
use crate::node_addrs::{self, AddrFlags, NodeAddrs};
use crate::raft_tunables::RaftTunables;

use crate::watch::WatchLimits;
use crate::{backends, http, store::KvStore, StorageKind, TlsArgs, TransportKind};

/// Flags of `raft-kv serve`. Each can also come from the environment and from `--config`
/// (see [`crate::config_file`]).
#[derive(clap::Args, Debug, Clone)]
#[command(
    after_help = "Every flag can also be set by the environment variable RAFT_KV_<FLAG> \
    (--data-dir: RAFT_KV_DATA_DIR) or by a key of the --config file named like the flag \
    (data-dir = \"/var/lib/raft-kv\", join = [\"10.0.0.1:7001\"], insecure-transport = true). \
    The command line wins over the environment, which wins over the file, which wins over the \
    defaults; --print-config shows the result."
)]
pub struct ServeArgs {
    /// A TOML file of settings; its keys are these flags' long names.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective settings (as a config file, with where each came from) and exit.
    #[arg(long)]
    pub print_config: bool,
    /// This node's id (1 or more), unique in the cluster.
    #[arg(long)]
    pub id: u64,
    /// The raft address (host:port): listened on, and dialled by peers. See --raft-listen and
    /// --raft-advertise when those differ.
    #[arg(long, value_name = "HOST:PORT")]
    pub raft_addr: Option<String>,
    /// Where the raft transport listens (e.g. 0.0.0.0:7001). Default: --raft-addr, else
    /// --raft-advertise.
    #[arg(long, value_name = "HOST:PORT")]
    pub raft_listen: Option<String>,
    /// The raft address peers dial, stored in the cluster's membership (e.g. 10.0.0.5:7001).
    /// Default: --raft-addr, else --raft-listen.
    #[arg(long, value_name = "HOST:PORT")]
    pub raft_advertise: Option<String>,
    /// The HTTP API's address (host:port): listened on, and reported to clients.
    #[arg(long, value_name = "HOST:PORT")]
    pub http_addr: Option<String>,
    /// Where the HTTP API listens. Default: --http-addr, else --http-advertise.
    #[arg(long, value_name = "HOST:PORT")]
    pub http_listen: Option<String>,
    /// The HTTP address this node reports (its log, /status `http_advertise`). Default:
    /// --http-addr, else --http-listen.
    #[arg(long, value_name = "HOST:PORT")]
    pub http_advertise: Option<String>,
    /// Where this node keeps its state.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Join the cluster through this member's raft address (repeatable). Without it a node
    /// with no state bootstraps a new cluster; a node with state always restarts as itself.
    #[arg(long, conflicts_with = "initial_cluster", value_delimiter = ',')]
    pub join: Vec<String>,
    /// Every founding member as id=host:port, comma-separated (e.g.
    /// `1=10.0.0.1:7001,2=10.0.0.2:7001,3=10.0.0.3:7001`), the same on every founding node:
    /// they may then start in any order, even at the same instant, and form one cluster.
    /// Ignored by a node that already has state; nodes added later use --join instead.
    #[arg(long)]
    pub initial_cluster: Option<raft_core::InitialCluster>,
    /// Tells apart clusters bootstrapped from the same --initial-cluster (e.g. `prod-eu`):
    /// they get different cluster ids and refuse each other's traffic.
    #[arg(long, default_value = "raft-kv")]
    pub initial_cluster_token: String,
    /// How nodes talk to each other (quic needs the TLS flags).
    #[arg(long, value_enum, default_value = crate::DEFAULT_TRANSPORT)]
    pub transport: TransportKind,
    /// Where the raft log lives (rocksdb in DATA_DIR/raft, raft-engine in
    /// DATA_DIR/raft-engine; memory keeps nothing across restarts).
    #[arg(long, value_enum, default_value = crate::DEFAULT_STORAGE)]
    pub storage: StorageKind,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Allow a plaintext raft transport (gRPC without the TLS flags) on an address other
    /// machines can reach. Anyone who reaches it can then act as any node; without this flag
    /// `serve` refuses to start that way (loopback addresses are always allowed).
    #[arg(long)]
    pub insecure_transport: bool,
    /// Most changes each node keeps for `GET /watch`: a watch from an older index, or a
    /// watcher that falls that far behind, is answered "compacted" (410).
    #[arg(long, default_value_t = crate::watch::DEFAULT_HISTORY_CHANGES)]
    pub watch_history_changes: usize,
    /// Most bytes of keys and values each node keeps for `GET /watch` (a value still current
    /// is shared with the store, but counts in full).
    #[arg(long, default_value_t = crate::watch::DEFAULT_HISTORY_BYTES)]
    pub watch_history_bytes: usize,
    /// Most `GET /watch` streams a node serves at once (one more is answered 503).
    #[arg(long, default_value_t = crate::watch::DEFAULT_MAX_WATCHERS)]
    pub max_watchers: usize,
    /// HTTPS, bearer tokens and limits of the HTTP API.
    #[command(flatten)]
    pub http: HttpArgs,
    /// Raft timing, snapshots and limits.
    #[command(flatten)]
    pub raft: RaftTunables,
    /// Propose the writes that name no client session (no `Raft-Session` header) without
    /// one: a write whose outcome became unknown (its leader failed, its call timed out) is
    /// then answered 503 `maybe_applied` instead of being retried until its deadline. Only to
    /// measure what sessions buy (the fault suite's `--no-sessions`).
    #[arg(long)]
    pub no_client_sessions: bool,
}

impl ServeArgs {
    /// The listen and advertised addresses, from the address flags.
    pub fn addresses(&self) -> Result<NodeAddrs> {
        node_addrs::resolve(
            AddrFlags {
                kind: "raft",
                addr: self.raft_addr.as_deref(),
                listen: self.raft_listen.as_deref(),
                advertise: self.raft_advertise.as_deref(),
            },
            AddrFlags {
                kind: "http",
                addr: self.http_addr.as_deref(),
                listen: self.http_listen.as_deref(),
                advertise: self.http_advertise.as_deref(),
            },
        )
    }

    /// The raft configuration; an error names the flags (and where their values came from).
    pub fn raft_config(&self) -> Result<Config> {
        self.raft
            .to_config()
            .map_err(|e| anyhow::anyhow!("{}", config_file::explain(&format!("{e:#}"))))
    }
}

pub async fn serve(args: ServeArgs) -> Result<()> {
    // Settings that need no file first, so --print-config doubles as a check of them.
    for name in config_file::unknown_env_vars() {
        tracing::warn!(
            name,
            "ignoring an environment variable that names no flag of serve"
        );
    }
    let addrs = args.addresses()?;
    let config = args.raft_config()?;
    if args.print_config {
        print!("{}", config_file::effective_toml());
        return Ok(());
    }
    // Certificates, keys and token files next: a mistake there stops the node before it
    // touches its data.
    let http_config = args.http.load().context("the HTTP API's settings")?;
    crate::files::create_private_dir(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    backends::check_plaintext(
        args.transport,
        &args.tls,
        &addrs.raft_listen,
        args.insecure_transport,
    )?;
    let transport = backends::transport(args.transport, &args.tls)?;
    let storage = backends::storage(args.storage, &args.data_dir)?;
    let store = KvStore::with_watch_limits(WatchLimits {
        max_changes: args.watch_history_changes,
        max_bytes: args.watch_history_bytes,
        max_watchers: args.max_watchers,
    });
    let watches = store.watches();
    let raft = Raft::builder(args.id, store)
        .raft_addr(addrs.raft_advertise.clone())
        .listen_addr(addrs.raft_listen.clone())
        .transport(transport)
        .log_storage(storage)
        .config(config)
        .build()?;
    let mailbox = raft.mailbox();
    let mailbox = if args.no_client_sessions {
        tracing::warn!(
            "--no-client-sessions: writes without a Raft-Session header are not retried after an unknown outcome"
        );
        mailbox.without_sessions()
    } else {
        mailbox
    };
    let mut node = if let Some(cluster) = args.initial_cluster.clone() {
        tokio::spawn(raft.start_cluster(cluster.with_token(args.initial_cluster_token.clone())))
    } else if raft.has_state()? || args.join.is_empty() {
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
        &addrs.http_listen,
        http_config,
        http::router(
            mailbox.clone(),
            stats.clone(),
            &addrs.http_advertise,
            watches.clone(),
        ),
        stats,
    )
    .await?;
    tracing::info!(
        id = args.id,
        http = %format!(
            "{}://{}",
            if args.http.http_tls_cert.is_some() { "https" } else { "http" },
            addrs.http_advertise
        ),
        http_listen = %addrs.http_listen,
        raft = %addrs.raft_advertise,
        raft_listen = %addrs.raft_listen,
        "raft-kv serving"
    );
    let (node_done_tx, node_done_rx) = tokio::sync::oneshot::channel::<()>();
    let server = server.run(async move {
        tokio::select! {
            _ = terminate_signal() => tracing::info!("signal received: finishing in-flight requests"),
            _ = node_done_rx => {}
        }
        // Watch streams never end by themselves: end them, so in-flight requests can finish.
        watches.close();
    });
    tokio::pin!(server);
    let mut node_result = None;
    tokio::select! {
        served = &mut server => served.context("HTTP server")?,
        result = &mut node => {
            // The node stopped by itself (removed from the cluster, or failed): stop serving,
            // but let the requests in flight finish first. The request that made this node
            // leave is one of them, and its client is owed the answer.
            let _ = node_done_tx.send(());
            node_result = Some(result);
            // The node's own outcome is what this process reports.
            if let Err(e) = (&mut server).await {
                tracing::warn!("HTTP server, finishing the requests in flight: {e:#}");
            }
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
