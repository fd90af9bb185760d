//! The HTTP API's accept loop: plain TCP or TLS (rustls), one hyper HTTP/1.1 connection per
//! task, behind the per-request [gate](crate::http_gate).
//!
//! # Connections
//!
//! - **Cap**: at most `--http-max-connections` (default 16384) connections are open at once;
//!   one more is closed as soon as it is accepted (and counted). At start-up the process
//!   raises its open-file soft limit to the hard limit, and lowers the cap to leave a quarter
//!   of the limit (at most 1024 descriptors) to raft and storage.
//! - **Slow clients**: the TLS handshake and every request head must arrive within
//!   `--http-header-timeout` (default 10 s), or the connection is closed (slowloris). The same
//!   timer bounds an idle keep-alive connection: it is closed after that long without a new
//!   request. An idle connection is a parked task holding a socket and a small buffer: it
//!   wakes for nothing but its socket or its timer, so ten thousand of them cost memory, not
//!   CPU.
//! - **Plaintext on the HTTPS port**: a request that starts like plain HTTP is answered 400
//!   with a hint to use `https://`, then closed.
//! - **Shutdown**: when the shutdown future completes, the listener closes, idle connections
//!   close, and requests in flight finish (for at most the request timeout plus
//!   [`SHUTDOWN_SLACK`]).

use std::future::Future;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::extract::DefaultBodyLimit;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::http_args::HttpConfig;
use crate::http_gate::{self, Gate};
use crate::http_stats::{bump, GaugeGuard, HttpStats};

/// How long shutdown waits for connections beyond the request timeout.
pub const SHUTDOWN_SLACK: Duration = Duration::from_secs(5);

/// Largest read buffer of a connection: bounds a request head (a larger one gets 431).
const MAX_CONNECTION_BUFFER: usize = 64 * 1024;

/// Accept queue depth asked of the kernel (which caps it at `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 4096;

/// Pause after an accept error such as running out of file descriptors, so the loop does not
/// spin while nothing can be accepted.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// At most one warning per this period for refused connections and accept errors.
const WARNING_PERIOD: Duration = Duration::from_secs(10);

/// What every connection task shares.
struct Shared {
    tls: Option<TlsAcceptor>,
    http1: hyper::server::conn::http1::Builder,
    app: Router,
    header_timeout: Duration,
    stats: Arc<HttpStats>,
}

/// A bound HTTP API, ready to [run](HttpServer::run).
pub struct HttpServer {
    listener: TcpListener,
    shared: Arc<Shared>,
    max_connections: u32,
    shutdown_grace: Duration,
}

impl HttpServer {
    /// Binds `addr` and puts the gate (limits, tokens) in front of `routes`; `stats` is where
    /// the connections and refusals are counted (the `/metrics` route renders it).
    pub async fn bind(
        addr: &str,
        config: HttpConfig,
        routes: Router,
        stats: Arc<HttpStats>,
    ) -> Result<HttpServer> {
        let listener = listen(addr)
            .await
            .with_context(|| format!("binding the HTTP API to {addr}"))?;
        let local = listener.local_addr().context("the HTTP API's address")?;

        let max_connections = connection_cap(config.max_connections);
        stats
            .max_connections
            .store(u64::from(max_connections), Ordering::Relaxed);
        let tls = config.tls.clone().map(TlsAcceptor::from);
        log_security(local, &config);
        tracing::info!(
            http = %local,
            tls = tls.is_some(),
            max_connections,
            max_concurrent_requests = config.max_concurrent_requests,
            max_body_bytes = config.max_body_bytes,
            request_timeout = ?config.request_timeout,
            header_timeout = ?config.header_timeout,
            "HTTP API limits"
        );

        let gate = Arc::new(Gate::new(
            config.tokens,
            config.max_concurrent_requests,
            config.max_body_bytes,
            config.request_timeout,
            stats.clone(),
        ));
        let app = routes
            .layer(DefaultBodyLimit::max(config.max_body_bytes))
            .layer(axum::middleware::from_fn_with_state(gate, http_gate::admit));
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_timeout)
            .keep_alive(true)
            .max_buf_size(MAX_CONNECTION_BUFFER);
        Ok(HttpServer {
            listener,
            shared: Arc::new(Shared {
                tls,
                http1,
                app,
                header_timeout: config.header_timeout,
                stats,
            }),
            max_connections,
            shutdown_grace: config.request_timeout + SHUTDOWN_SLACK,
        })
    }

    /// Serves until `shutdown` completes, then stops accepting and lets requests in flight
    /// finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let HttpServer {
            listener,
            shared,
            max_connections,
            shutdown_grace,
        } = self;
        let open = Arc::new(Semaphore::new(max_connections as usize));
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::pin!(shutdown);
        let mut last_warning: Option<Instant> = None;
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    if warning_due(&mut last_warning) {
                        tracing::warn!(error = %e, "HTTP API: accepting a connection failed");
                    }
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                    }
                }
            };
            let Ok(permit) = open.clone().try_acquire_owned() else {
                bump(&shared.stats.connections_refused);
                if warning_due(&mut last_warning) {
                    tracing::warn!(
                        max_connections,
                        "HTTP API: connection cap reached (--http-max-connections); closing new connections"
                    );
                }
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(connection(
                shared.clone(),
                stream,
                peer,
                permit,
                stop_rx.clone(),
            ));
        }
        drop(listener);
        let _ = stop_tx.send(true);
        let in_flight = shared.stats.requests_in_flight.load(Ordering::Relaxed);
        tracing::info!(
            in_flight,
            "HTTP API: no new connections; finishing requests"
        );
        if tokio::time::timeout(shutdown_grace, open.acquire_many(max_connections))
            .await
            .is_err()
        {
            tracing::warn!(
                open = shared.stats.connections.load(Ordering::Relaxed),
                "HTTP API: connections still open after {shutdown_grace:?}; dropping them"
            );
        }
        Ok(())
    }
}

/// Binds `addr` with a [`LISTEN_BACKLOG`]-deep accept queue (tokio's default is 128, which a
/// burst of new connections overflows: each overflow costs its client a one-second SYN
/// retry).
async fn listen(addr: &str) -> std::io::Result<TcpListener> {
    let mut last_error = None;
    for addr in tokio::net::lookup_host(addr).await? {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(addr) {
            Ok(()) => return socket.listen(LISTEN_BACKLOG),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(ErrorKind::InvalidInput, "the address resolves to nothing")
    }))
}

/// The connection cap: `wanted`, lowered to fit the open-file limit (raised to its hard limit
/// first).
fn connection_cap(wanted: usize) -> u32 {
    let wanted = u32::try_from(wanted).unwrap_or(u32::MAX).max(1);
    let Some(limit) = raise_open_file_limit() else {
        return wanted;
    };
    let reserve = (limit / 4).min(1024);
    let fits = u32::try_from(limit - reserve).unwrap_or(u32::MAX).max(1);
    if fits < wanted {
        tracing::warn!(
            wanted,
            open_file_limit = limit,
            max_connections = fits,
            "HTTP API: --http-max-connections lowered to fit the open-file limit (raise `ulimit -n`)"
        );
    }
    wanted.min(fits)
}

/// Raises the open-file soft limit to the hard limit; returns the soft limit in force.
fn raise_open_file_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

fn log_security(addr: SocketAddr, config: &HttpConfig) {
    let loopback = addr.ip().is_loopback();
    match &config.tokens {
        Some(tokens) => {
            let (regular, admin) = tokens.counts();
            tracing::info!(
                regular,
                admin,
                "HTTP API: bearer tokens required on every route; /cluster/* needs an admin token"
            );
            if tokens.one_role() {
                tracing::info!(
                    "HTTP API: only --auth-token-file is given: its tokens may also call /cluster/* (one-role deployment)"
                );
            }
        }
        None if !loopback => tracing::warn!(
            http = %addr,
            "HTTP API: no token file: anyone who reaches this address can read, write and change membership (see --auth-token-file, --admin-token-file)"
        ),
        None => {}
    }
    match (&config.tls, config.client_certs) {
        (Some(_), true) => tracing::info!("HTTP API: HTTPS, client certificates required"),
        (Some(_), false) => tracing::info!("HTTP API: HTTPS"),
        (None, _) if !loopback => tracing::warn!(
            http = %addr,
            "HTTP API: plaintext HTTP on a non-loopback address: data and tokens cross the network in the clear (see --http-tls-cert)"
        ),
        (None, _) => {}
    }
}

/// Errors about one connection that came and went: nothing to pause for.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    )
}

fn warning_due(last: &mut Option<Instant>) -> bool {
    let now = Instant::now();
    if last.is_some_and(|at| now.duration_since(at) < WARNING_PERIOD) {
        return false;
    }
    *last = Some(now);
    true
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    // A closed channel means the server is gone: stop too.
    let _ = stop.wait_for(|stop| *stop).await;
}

/// One accepted connection, from the TLS handshake (if any) to its close.
async fn connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
) {
    let _open = GaugeGuard::new(&shared.stats.connections);
    let Some(acceptor) = shared.tls.clone() else {
        serve_http(&shared, stream, peer, &mut stop).await;
        return;
    };
    let stats = shared.stats.clone();
    let handshake = async move {
        if starts_like_plain_http(&stream).await {
            bump(&stats.tls_handshake_failures);
            refuse_plain_http(stream).await;
            return None;
        }
        match acceptor.accept(stream).await {
            Ok(tls) => Some(tls),
            Err(e) => {
                bump(&stats.tls_handshake_failures);
                tracing::debug!(%peer, error = %e, "HTTP API: TLS handshake failed");
                None
            }
        }
    };
    let tls = tokio::select! {
        done = tokio::time::timeout(shared.header_timeout, handshake) => match done {
            Ok(Some(tls)) => tls,
            Ok(None) => return,
            Err(_elapsed) => {
                bump(&shared.stats.header_timeouts);
                tracing::debug!(%peer, "HTTP API: no TLS handshake in time; closing");
                return;
            }
        },
        () = stopped(&mut stop) => return,
    };
    serve_http(&shared, tls, peer, &mut stop).await;
}

/// Serves HTTP/1.1 on `io` until the client leaves, a timeout, or shutdown.
async fn serve_http<I>(shared: &Shared, io: I, peer: SocketAddr, stop: &mut watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(shared.app.clone());
    let conn = shared.http1.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut stopping = false;
    let result = loop {
        tokio::select! {
            result = conn.as_mut() => break result,
            () = stopped(stop), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            bump(&shared.stats.header_timeouts);
            tracing::debug!(%peer, "HTTP API: no request head in time; closed");
        } else {
            tracing::debug!(%peer, error = %e, "HTTP API: connection ended with an error");
        }
    }
}

/// Whether the first byte is an ASCII letter (an HTTP method) rather than a TLS record.
async fn starts_like_plain_http(stream: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(stream.peek(&mut first).await, Ok(1) if first[0].is_ascii_uppercase())
}

/// Answers a plaintext request on the HTTPS port with a 400 and a hint, then closes.
async fn refuse_plain_http(mut stream: TcpStream) {
    // Read what the client sent, so closing does not reset the connection before it reads
    // the answer.
    let mut scratch = [0u8; 4096];
    let _ = stream.try_read(&mut scratch);
    let body = br#"{"error":"this port speaks HTTPS: use an https:// URL"}"#;
    let head = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    if stream.write_all(head.as_bytes()).await.is_err() || stream.write_all(body).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    // Until the client closes (the caller's timeout bounds this).
    while matches!(stream.read(&mut scratch).await, Ok(n) if n > 0) {}
}
