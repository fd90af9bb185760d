//! `raft-bench`: a load generator against a running raft-kv cluster over HTTP.
//!
//! Each client holds one keep-alive connection to one endpoint (clients are spread over the
//! endpoints) and issues puts and linearizable gets back to back. After `--warmup`, it
//! records every latency in an HDR histogram for `--duration`, then prints a table and one
//! JSON line. Errors are counted and shown, never hidden.
//!
//! `raft-bench --endpoints http://127.0.0.1:7101,http://127.0.0.1:7102 --clients 64`
//!
//! With `--target etcd` the same clients drive etcd (3.4+) through its native gRPC API on the
//! client URLs instead, as etcd's own `benchmark` tool and its clients do: each client holds
//! one HTTP/2 connection (a tonic `Channel`) to one member; a put is `KV.Put{key, value}`, a
//! get `KV.Range{key}` (linearizable, etcd's default). Keys, values, the operation mix and the
//! latency recording are the same, so the two systems compare directly
//! (`benches/etcd-compare.sh`).
//!
//! With `--load` it writes each of the `--keys` keys exactly once instead (`bench-0` to
//! `bench-{keys-1}`, client `i` taking keys `i`, `i + clients`, ...) and stops: a cluster then
//! holds exactly that many keys (`benches/state-curves.sh` measures restart time and memory
//! against it). The rates and latencies are over the whole load; `--duration`, `--warmup` and
//! `--read-ratio` do not apply.

use std::time::{Duration, Instant};

/// The load generator shares the machine with the cluster it measures: keep its own cost low.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::{Channel, Endpoint};

/// etcd's v3 gRPC API, the part raft-bench calls: `KV.Range` and `KV.Put`
/// (`benches/proto/etcd_kv.proto`).
#[allow(
    missing_docs,
    dead_code,
    clippy::all,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

use etcdserverpb::kv_client::KvClient;
use etcdserverpb::{PutRequest, RangeRequest};

/// The system under load.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// `PUT /kv/KEY` with the value as body, `GET /kv/KEY`.
    RaftKv,
    /// etcd 3.4+'s gRPC API: `KV.Put`, `KV.Range`.
    Etcd,
}

/// Load generator for raft-kv (or, for comparison, etcd).
#[derive(Parser, Debug, Clone)]
#[command(name = "raft-bench", version, about)]
struct Args {
    /// Comma-separated HTTP endpoints of raft-kv nodes (etcd: client URLs).
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// The system under load.
    #[arg(long, value_enum, default_value_t = Target::RaftKv)]
    target: Target,
    /// Concurrent clients, each with its own connection.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Bytes per value written.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 1000)]
    keys: u64,
    /// Fraction of operations that are linearizable reads (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    read_ratio: f64,
    /// Seed of the key and operation choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write each of the `--keys` keys once, then stop (a failed put is retried).
    #[arg(long)]
    load: bool,
}

struct ClientResult {
    writes: Histogram<u64>,
    reads: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

fn histogram() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

/// One keep-alive HTTP/1.1 connection to one node, reopened after an error.
struct Connection {
    authority: String,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Connection {
    fn new(endpoint: &str) -> Result<Self> {
        let Some(authority) = endpoint.strip_prefix("http://") else {
            bail!("endpoints must be http://host:port, not {endpoint}");
        };
        Ok(Self {
            authority: authority.trim_end_matches('/').to_string(),
            sender: None,
        })
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| format!("connecting to {}: {e}", self.authority))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        Ok(sender)
    }

    /// Sends one request; the answer's status once its body is read.
    async fn send(&mut self, request: &Request) -> Result<StatusCode, String> {
        let result = self.try_send(request).await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    async fn try_send(&mut self, request: &Request) -> Result<StatusCode, String> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            self.sender = Some(self.connect().await?);
        }
        let request = hyper::Request::builder()
            .method(request.method.clone())
            .uri(&request.path)
            .header(hyper::header::HOST, &self.authority)
            .body(Full::new(request.body.clone()))
            .map_err(|e| e.to_string())?;
        let sender = self.sender.as_mut().ok_or("no connection")?;
        let exchange = async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            response.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        };
        match tokio::time::timeout(Duration::from_secs(10), exchange).await {
            Err(_) => Err("timed out after 10 s".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(status)) => Ok(status),
        }
    }
}

/// One raft-kv operation, ready to send.
struct Request {
    method: Method,
    path: String,
    body: Bytes,
}

/// Builds each client's raft-kv requests.
struct Requests {
    value: Bytes,
}

impl Requests {
    fn put(&self, key: u64) -> Request {
        Request {
            method: Method::PUT,
            path: format!("/kv/bench-{key}"),
            body: self.value.clone(),
        }
    }

    fn get(&self, key: u64) -> Request {
        Request {
            method: Method::GET,
            path: format!("/kv/bench-{key}"),
            body: Bytes::new(),
        }
    }
}

/// Why an operation failed.
enum Failure {
    /// The node answered with an error.
    Answer(String),
    /// No answer (connection refused or lost, timeout): the node is down or restarting, and
    /// the client pauses before its next operation rather than spin on it.
    Unreachable(String),
}

/// One client of etcd: one gRPC channel (one HTTP/2 connection, reopened by tonic after an
/// error) to one member.
struct EtcdClient {
    kv: KvClient<Channel>,
    value: Bytes,
}

impl EtcdClient {
    fn new(endpoint: &str, value: Bytes) -> Result<Self> {
        if !endpoint.starts_with("http://") {
            bail!("endpoints must be http://host:port, not {endpoint}");
        }
        // Connects on the first call, within the warmup, like raft-kv's connections.
        let channel = Endpoint::from_shared(endpoint.trim_end_matches('/').to_string())
            .with_context(|| format!("endpoint {endpoint}"))?
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Self {
            kv: KvClient::new(channel),
            value,
        })
    }

    async fn send(&mut self, read: bool, key: u64) -> Result<(), Failure> {
        let key = Bytes::from(format!("bench-{key}"));
        let value = self.value.clone();
        let kv = &mut self.kv;
        let call = async move {
            if read {
                // Linearizable: etcd serves a range from the leader's read index unless the
                // request says `serializable`. A key never written is an answer without `kvs`.
                let request = RangeRequest {
                    key,
                    serializable: false,
                    ..Default::default()
                };
                kv.range(request).await.map(drop)
            } else {
                let request = PutRequest {
                    key,
                    value,
                    ..Default::default()
                };
                kv.put(request).await.map(drop)
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), call).await {
            Err(_) => Err(Failure::Unreachable("timed out after 10 s".into())),
            Ok(Ok(())) => Ok(()),
            Ok(Err(status)) => {
                let message = format!("gRPC {:?}: {}", status.code(), status.message());
                if status.code() == tonic::Code::Unavailable {
                    Err(Failure::Unreachable(message))
                } else {
                    Err(Failure::Answer(message))
                }
            }
        }
    }
}

/// One client's link to one node of the system under load.
enum Link {
    RaftKv(Connection, Requests),
    Etcd(EtcdClient),
}

impl Link {
    fn new(target: Target, endpoint: &str, value_size: usize) -> Result<Self> {
        let value = Bytes::from(vec![b'x'; value_size]);
        Ok(match target {
            Target::RaftKv => Self::RaftKv(Connection::new(endpoint)?, Requests { value }),
            Target::Etcd => Self::Etcd(EtcdClient::new(endpoint, value)?),
        })
    }

    /// One put or linearizable get of `key`.
    async fn send(&mut self, read: bool, key: u64) -> Result<(), Failure> {
        match self {
            Self::RaftKv(connection, requests) => {
                let request = if read {
                    requests.get(key)
                } else {
                    requests.put(key)
                };
                match connection.send(&request).await {
                    Ok(status) if status.is_success() => Ok(()),
                    // raft-kv answers 404 for a key never written.
                    Ok(StatusCode::NOT_FOUND) if read => Ok(()),
                    Ok(status) => Err(Failure::Answer(format!("HTTP {status}"))),
                    Err(e) => Err(Failure::Unreachable(e)),
                }
            }
            Self::Etcd(client) => client.send(read, key).await,
        }
    }
}

/// Failed attempts at one key after which `--load` gives up.
const LOAD_ATTEMPTS: u32 = 20;

/// `--load`: this client's share of the keys, each written once.
async fn load_client(args: Args, id: usize) -> Result<ClientResult> {
    let endpoint = &args.endpoints[id % args.endpoints.len()];
    let mut link = Link::new(args.target, endpoint, args.value_size)?;
    let mut result = ClientResult {
        writes: histogram()?,
        reads: histogram()?,
        errors: 0,
        first_error: None,
    };
    for key in (id as u64..args.keys).step_by(args.clients) {
        let mut attempts = 0;
        loop {
            let began = Instant::now();
            let e = match link.send(false, key).await {
                Ok(()) => {
                    let micros = began.elapsed().as_micros().max(1) as u64;
                    result.writes.saturating_record(micros);
                    break;
                }
                Err(Failure::Answer(e)) => e,
                Err(Failure::Unreachable(e)) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    e
                }
            };
            result.errors += 1;
            attempts += 1;
            if attempts == LOAD_ATTEMPTS {
                bail!("bench-{key}: {attempts} failed puts, the last: {e}");
            }
            result.first_error.get_or_insert(e);
        }
    }
    Ok(result)
}

async fn client(args: Args, id: usize, start: Instant) -> Result<ClientResult> {
    let endpoint = &args.endpoints[id % args.endpoints.len()];
    let mut link = Link::new(args.target, endpoint, args.value_size)?;
    let mut rng = StdRng::seed_from_u64(args.seed.wrapping_add(id as u64));
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let stop = measure_from + Duration::from_secs_f64(args.duration);
    let mut result = ClientResult {
        writes: histogram()?,
        reads: histogram()?,
        errors: 0,
        first_error: None,
    };
    loop {
        let now = Instant::now();
        if now >= stop {
            return Ok(result);
        }
        let key = rng.gen_range(0..args.keys);
        let read = rng.gen_bool(args.read_ratio.clamp(0.0, 1.0));
        let began = Instant::now();
        let ok = match link.send(read, key).await {
            Ok(()) => Ok(()),
            Err(Failure::Answer(e)) => Err(e),
            Err(Failure::Unreachable(e)) => {
                // The node is down or restarting: do not spin on it.
                tokio::time::sleep(Duration::from_millis(10)).await;
                Err(e)
            }
        };
        if began < measure_from {
            continue;
        }
        match ok {
            Ok(()) => {
                let micros = began.elapsed().as_micros().max(1) as u64;
                let h = if read {
                    &mut result.reads
                } else {
                    &mut result.writes
                };
                h.saturating_record(micros);
            }
            Err(e) => {
                result.errors += 1;
                result.first_error.get_or_insert(e);
            }
        }
    }
}

fn row(name: &str, h: &Histogram<u64>, seconds: f64) -> serde_json::Value {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let ops = h.len() as f64 / seconds;
    println!(
        "{name:<6} {ops:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0
    );
    serde_json::json!({
        "ops": h.len(), "ops_per_sec": ops,
        "p50_ms": ms(0.5), "p90_ms": ms(0.9), "p99_ms": ms(0.99), "p999_ms": ms(0.999),
        "max_ms": h.max() as f64 / 1000.0,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.clients == 0 || args.duration <= 0.0 || args.keys == 0 {
        bail!("--clients, --duration and --keys must be positive");
    }
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients);
    for id in 0..args.clients {
        tasks.push(if args.load {
            tokio::spawn(load_client(args.clone(), id))
        } else {
            tokio::spawn(client(args.clone(), id, start))
        });
    }
    let mut writes = histogram()?;
    let mut reads = histogram()?;
    let mut errors = 0;
    let mut first_error = None;
    for task in tasks {
        let r = task.await.context("client task")??;
        writes.add(&r.writes)?;
        reads.add(&r.reads)?;
        errors += r.errors;
        first_error = first_error.or(r.first_error);
    }
    let seconds = if args.load {
        start.elapsed().as_secs_f64()
    } else {
        args.duration
    };
    // raft-kv's output is unchanged by `--target`; etcd runs say so in the header and JSON.
    let against = match args.target {
        Target::RaftKv => "",
        Target::Etcd => " (etcd)",
    };
    if args.load {
        println!(
            "raft-bench{against}: loaded {} keys of {} B once each in {seconds:.1} s, {} clients, {} endpoints",
            args.keys, args.value_size, args.clients, args.endpoints.len()
        );
    } else {
        println!(
            "raft-bench{against}: {} clients, {} endpoints, {:.0} s measured after {:.0} s warmup, {} B values, {} keys, read ratio {}",
            args.clients, args.endpoints.len(), args.duration, args.warmup, args.value_size, args.keys, args.read_ratio
        );
    }
    println!(
        "{:<6} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "op", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    let w = row("put", &writes, seconds);
    let r = row("get", &reads, seconds);
    let total = (writes.len() + reads.len()) as f64 / seconds;
    println!("total  {total:>10.0} ops/s, errors {errors}");
    if let Some(e) = &first_error {
        println!("first error: {e}");
    }
    let mut line = serde_json::json!({
        "clients": args.clients, "endpoints": args.endpoints.len(), "duration_s": seconds,
        "value_size": args.value_size, "keys": args.keys, "read_ratio": args.read_ratio,
        "ops_per_sec": total, "errors": errors, "put": w, "get": r,
    });
    if args.load {
        line["load"] = true.into();
    }
    if args.target == Target::Etcd {
        line["target"] = "etcd".into();
    }
    println!("{line}");
    Ok(())
}
