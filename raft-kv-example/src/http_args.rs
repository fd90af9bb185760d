//! The HTTP API flags of `raft-kv serve` (HTTPS, bearer tokens, limits), and what they load
//! into at start-up: misconfiguration stops the node before it touches its data.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use crate::http_auth::Tokens;
use crate::http_tls;

/// Default `--http-max-body-bytes`: 4 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 4 << 20;

/// Flags of the HTTP API.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "HTTP API (TLS, tokens, limits)")]
pub struct HttpArgs {
    /// Serve HTTPS with this certificate chain (PEM). Goes with --http-tls-key.
    #[arg(long, value_name = "PEM", requires = "http_tls_key")]
    pub http_tls_cert: Option<PathBuf>,
    /// The HTTPS private key (PEM; refused if group or others may read it). Goes with
    /// --http-tls-cert.
    #[arg(long, value_name = "PEM", requires = "http_tls_cert")]
    pub http_tls_key: Option<PathBuf>,
    /// Require a client certificate chaining to this CA (PEM) on every HTTPS connection.
    /// Only with --http-tls-cert/--http-tls-key.
    #[arg(long, value_name = "PEM", requires = "http_tls_cert")]
    pub http_client_ca: Option<PathBuf>,
    /// Bearer tokens, one per line ('#' comments and blank lines ignored; 16 characters or
    /// more; mode 600). With any token file, every route requires `Authorization: Bearer
    /// <token>`. These tokens may use /kv, /status and /metrics; without --admin-token-file
    /// they may also use /cluster/* (one-role deployment).
    #[arg(long, value_name = "PATH")]
    pub auth_token_file: Option<PathBuf>,
    /// Admin bearer tokens (same format): the only tokens allowed on /cluster/* (leave,
    /// remove, transfer-leader) when given; they may use every other route too.
    #[arg(long, value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,
    /// Largest request body in bytes; larger ones are answered 413.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub http_max_body_bytes: u64,
    /// Requests served at once; more are answered 503 with `Retry-After: 1` at once.
    #[arg(long, value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_concurrent_requests: u32,
    /// Longest time from a request's head to its answer, body included: a body not received
    /// by then is answered 408, a route still working 503 (a write may still take effect).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub http_request_timeout: Duration,
    /// A connection must complete its TLS handshake and each request head within this time
    /// (slow clients are disconnected); an idle keep-alive connection is closed after it too.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub http_header_timeout: Duration,
    /// Open HTTP connections at most (lowered to fit the open-file limit); a connection past
    /// it is closed at once.
    #[arg(long, value_name = "N", default_value_t = 16384,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_connections: u32,
}

/// Parses `500ms`, `10s`, `2m` or a bare number of seconds; zero is refused.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 10s or 2m"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(format!("{text:?}: the unit is ms, s or m")),
    };
    if duration.is_zero() {
        return Err("the duration must be more than 0".into());
    }
    Ok(duration)
}

/// The HTTP API's settings, files loaded.
pub struct HttpConfig {
    /// `Some`: serve HTTPS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// True when client certificates are required.
    pub client_certs: bool,
    /// `Some`: bearer tokens required.
    pub tokens: Option<Tokens>,
    /// See [`HttpArgs::http_max_body_bytes`].
    pub max_body_bytes: usize,
    /// See [`HttpArgs::http_max_concurrent_requests`].
    pub max_concurrent_requests: usize,
    /// See [`HttpArgs::http_request_timeout`].
    pub request_timeout: Duration,
    /// See [`HttpArgs::http_header_timeout`].
    pub header_timeout: Duration,
    /// See [`HttpArgs::http_max_connections`].
    pub max_connections: usize,
}

impl HttpArgs {
    /// Reads the certificate, key and token files.
    pub fn load(&self) -> Result<HttpConfig> {
        let tls = match (&self.http_tls_cert, &self.http_tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(http_tls::server_config(
                cert,
                key,
                self.http_client_ca.as_deref(),
            )?)),
            (None, None) if self.http_client_ca.is_some() => {
                anyhow::bail!("--http-client-ca needs --http-tls-cert and --http-tls-key")
            }
            (None, None) => None,
            _ => anyhow::bail!("--http-tls-cert and --http-tls-key go together"),
        };
        let tokens = Tokens::load(
            self.auth_token_file.as_deref(),
            self.admin_token_file.as_deref(),
        )?;
        let to_usize = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
        Ok(HttpConfig {
            tls,
            client_certs: self.http_client_ca.is_some(),
            tokens,
            max_body_bytes: usize::try_from(self.http_max_body_bytes).unwrap_or(usize::MAX),
            max_concurrent_requests: to_usize(self.http_max_concurrent_requests),
            request_timeout: self.http_request_timeout,
            header_timeout: self.http_header_timeout,
            max_connections: to_usize(self.http_max_connections),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        for bad in ["", "0s", "s", "1h", "-1s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
