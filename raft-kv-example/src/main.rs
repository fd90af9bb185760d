//! `raft-kv`: a replicated key-value service built only on raftkit's public API.

mod backends;
mod backup;
mod client;
mod cluster;
mod cluster_dir;
mod config_file;
mod files;
mod health;
mod http;
mod http_args;
mod http_auth;
mod http_client;
mod http_gate;
mod http_server;
mod http_stats;
mod http_tls;
mod member;
mod node_addrs;
mod raft_tunables;
mod serve;
mod store;
mod watch;

/// mimalloc instead of glibc's malloc: under load, glibc's malloc and free (with their chunk
/// consolidation) were the largest single costs in a node's profile. The `system-allocator`
/// feature keeps glibc's, for heap profilers that hook malloc.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// A replicated key-value service on raftkit.
#[derive(Parser)]
#[command(name = "raft-kv", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[cfg(not(any(feature = "grpc", feature = "quic")))]
compile_error!("raft-kv needs a raft transport: enable the cargo feature `grpc` or `quic`");

/// How nodes talk to each other; only the transports compiled in (cargo features).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TransportKind {
    /// gRPC over HTTP/2 (TLS optional).
    #[cfg(feature = "grpc")]
    Grpc,
    /// QUIC, always mutual TLS.
    #[cfg(feature = "quic")]
    Quic,
}

/// The default `--transport`: gRPC when compiled in, else QUIC.
#[cfg(feature = "grpc")]
pub const DEFAULT_TRANSPORT: &str = "grpc";
/// The default `--transport`: gRPC when compiled in, else QUIC.
#[cfg(not(feature = "grpc"))]
pub const DEFAULT_TRANSPORT: &str = "quic";

/// Where the raft log lives; only the durable backends compiled in (cargo features).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StorageKind {
    /// RocksDB in DATA_DIR/raft: survives restarts.
    #[cfg(feature = "rocksdb")]
    Rocksdb,
    /// TiKV's raft-engine in DATA_DIR/raft-engine: survives restarts.
    #[cfg(feature = "raft-engine")]
    RaftEngine,
    /// In memory: nothing survives a restart.
    Memory,
}

/// The default `--storage`: the first durable backend compiled in, else memory.
#[cfg(feature = "rocksdb")]
pub const DEFAULT_STORAGE: &str = "rocksdb";
/// The default `--storage`: the first durable backend compiled in, else memory.
#[cfg(all(not(feature = "rocksdb"), feature = "raft-engine"))]
pub const DEFAULT_STORAGE: &str = "raft-engine";
/// The default `--storage`: the first durable backend compiled in, else memory.
#[cfg(not(any(feature = "rocksdb", feature = "raft-engine")))]
pub const DEFAULT_STORAGE: &str = "memory";

/// TLS files for the raft transport.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// The cluster CA certificate (PEM).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM).
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs one node.
    // Boxed: its flags dwarf every other command's.
    Serve(Box<serve::ServeArgs>),
    /// Starts a local N-node cluster as child processes and runs until Ctrl-C.
    Cluster(cluster::ClusterArgs),
    /// Sets a key.
    Put {
        #[command(flatten)]
        endpoint: client::Endpoint,
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Reads a key.
    Get {
        #[command(flatten)]
        endpoint: client::Endpoint,
        /// The key.
        key: String,
        /// linearizable (default), lease or stale.
        #[arg(long, default_value = "linearizable")]
        consistency: String,
    },
    /// Deletes a key.
    Delete {
        #[command(flatten)]
        endpoint: client::Endpoint,
        /// The key.
        key: String,
    },
    /// Sets a key only if its value is the expected one.
    Cas {
        #[command(flatten)]
        endpoint: client::Endpoint,
        /// The key.
        key: String,
        /// The value it must have now (omit: it must be absent).
        #[arg(long)]
        expect: Option<String>,
        /// The new value.
        #[arg(long)]
        value: String,
    },
    /// Follows changes to keys under a prefix: prints one JSON line per change, with its log
    /// index, until the node ends the stream. To resume elsewhere, watch from the last index
    /// seen plus one.
    Watch {
        #[command(flatten)]
        endpoint: client::Endpoint,
        /// The key prefix (omit: every key).
        #[arg(default_value = "")]
        prefix: String,
        /// The first log index to show (every change from there on that the node still keeps);
        /// omit to show only changes from now on.
        #[arg(long)]
        from: Option<u64>,
    },
    /// Appends to a key's value (an absent key counts as empty); prints the new length.
    Append {
        #[command(flatten)]
        endpoint: client::Endpoint,
        /// The key.
        key: String,
        /// The bytes to append.
        value: String,
    },
    /// Prints a node's status.
    Status {
        #[command(flatten)]
        endpoint: client::Endpoint,
    },
    /// Makes the node at the endpoint leave the cluster.
    Leave {
        #[command(flatten)]
        endpoint: client::Endpoint,
    },
    /// Saves a consistent backup of the cluster, or prepares a data dir from one.
    Snapshot {
        #[command(subcommand)]
        command: backup::SnapshotCmd,
    },
    /// Lists and changes the cluster's members (needs an admin token when tokens are on).
    Member {
        #[command(subcommand)]
        command: member::MemberCmd,
    },
    /// Writes a development CA and one certificate per node.
    Certs {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Another DNS name or IP address the nodes are dialled at, besides loopback
        /// (repeatable): QUIC checks the peer's certificate against the address it dials.
        #[arg(long = "name")]
        names: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,raft_rs=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // `serve` also takes its flags from RAFT_KV_* variables and its --config file.
    let cli: Cli = config_file::parse();
    let result = match cli.command {
        Cmd::Serve(args) => serve::serve(*args).await,
        Cmd::Cluster(args) => cluster::run(args).await,
        Cmd::Put {
            endpoint,
            key,
            value,
        } => client::put(&endpoint, &key, value).await,
        Cmd::Get {
            endpoint,
            key,
            consistency,
        } => client::get(&endpoint, &key, &consistency).await,
        Cmd::Delete { endpoint, key } => client::delete(&endpoint, &key).await,
        Cmd::Cas {
            endpoint,
            key,
            expect,
            value,
        } => client::cas(&endpoint, &key, expect, value).await,
        Cmd::Watch {
            endpoint,
            prefix,
            from,
        } => client::watch(&endpoint, &prefix, from).await,
        Cmd::Append {
            endpoint,
            key,
            value,
        } => client::append(&endpoint, &key, value).await,
        Cmd::Status { endpoint } => client::status(&endpoint).await,
        Cmd::Leave { endpoint } => client::leave(&endpoint).await,
        Cmd::Member { command } => member::run(command).await,
        Cmd::Snapshot { command } => backup::run(command).await,
        Cmd::Certs { out, nodes, names } => backends::write_dev_certs(&out, nodes, &names),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raft-kv: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
