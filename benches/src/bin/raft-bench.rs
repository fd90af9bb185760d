//! `raft-bench`: a load generator against a running raft-kv cluster over HTTP.
//!
//! Each client holds one keep-alive connection to one endpoint (clients are spread over the
//! endpoints) and issues puts and linearizable gets back to back. After `--warmup`, it
//! records every latency in an HDR histogram for `--duration`, then prints a table and one
//! JSON line. Errors are counted and shown, never hidden.
//!
//! `raft-bench --endpoints http://127.0.0.1:7101,http://127.0.0.1:7102 --clients 64`

use std::time::{Duration, Instant};

/// The load generator shares the machine with the cluster it measures: keep its own cost low.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Load generator for raft-kv.
#[derive(Parser, Debug, Clone)]
#[command(name = "raft-bench", version, about)]
struct Args {
    /// Comma-separated HTTP endpoints of raft-kv nodes.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
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
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<StatusCode, String> {
        let result = self.try_send(method, path, body).await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    async fn try_send(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<StatusCode, String> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            self.sender = Some(self.connect().await?);
        }
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.authority)
            .body(Full::new(body))
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

async fn client(args: Args, id: usize, start: Instant) -> Result<ClientResult> {
    let mut connection = Connection::new(&args.endpoints[id % args.endpoints.len()])?;
    let mut rng = StdRng::seed_from_u64(args.seed.wrapping_add(id as u64));
    let value = Bytes::from(vec![b'x'; args.value_size]);
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
        let path = format!("/kv/bench-{key}");
        let read = rng.gen_bool(args.read_ratio.clamp(0.0, 1.0));
        let began = Instant::now();
        let outcome = if read {
            connection.send(Method::GET, &path, Bytes::new()).await
        } else {
            connection.send(Method::PUT, &path, value.clone()).await
        };
        let ok = match outcome {
            Ok(status) if status.is_success() || (read && status == StatusCode::NOT_FOUND) => {
                Ok(())
            }
            Ok(status) => Err(format!("HTTP {status}")),
            Err(e) => {
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
        tasks.push(tokio::spawn(client(args.clone(), id, start)));
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
    let seconds = args.duration;
    println!(
        "raft-bench: {} clients, {} endpoints, {:.0} s measured after {:.0} s warmup, {} B values, {} keys, read ratio {}",
        args.clients, args.endpoints.len(), args.duration, args.warmup, args.value_size, args.keys, args.read_ratio
    );
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
    let line = serde_json::json!({
        "clients": args.clients, "endpoints": args.endpoints.len(), "duration_s": seconds,
        "value_size": args.value_size, "keys": args.keys, "read_ratio": args.read_ratio,
        "ops_per_sec": total, "errors": errors, "put": w, "get": r,
    });
    println!("{line}");
    Ok(())
}
