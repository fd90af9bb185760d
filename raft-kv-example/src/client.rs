//! The client subcommands: thin HTTP(S) calls against any node.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hyper::{Method, StatusCode};

use crate::http_client::{ClientTls, HttpClient, Reply};

/// The environment variable holding the bearer token (`--token-file` wins over it).
pub const TOKEN_ENV: &str = "RAFT_KV_TOKEN";

/// Which node to talk to, and how.
#[derive(clap::Args, Debug)]
pub struct Endpoint {
    /// A node's HTTP endpoint, e.g. http://127.0.0.1:7101 or https://node1:7101
    #[arg(long)]
    pub endpoint: String,
    /// Trust this CA certificate (PEM) for an https:// endpoint (required for https://:
    /// raft-kv has no built-in trust store).
    #[arg(long, value_name = "PEM")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM), for nodes started with --http-client-ca. Goes with --key.
    #[arg(
        long = "cert",
        id = "client_cert",
        value_name = "PEM",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// Client private key (PEM; mode 600). Goes with --cert.
    #[arg(
        long = "key",
        id = "client_key",
        value_name = "PEM",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
    /// A file holding the bearer token (its first line that is not blank or a # comment;
    /// mode 600). Without it, the token is read from the RAFT_KV_TOKEN environment variable.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
}

impl Endpoint {
    fn token(&self) -> Result<Option<String>> {
        if let Some(path) = &self.token_file {
            let tokens = crate::http_auth::read_token_file(path)?;
            return Ok(tokens.into_iter().next());
        }
        match std::env::var(TOKEN_ENV) {
            Ok(token) if token.trim().is_empty() => Ok(None),
            Ok(token) => {
                let token = token.trim().to_string();
                if !token.bytes().all(|b| b.is_ascii_graphic()) {
                    bail!("{TOKEN_ENV}: a token is visible ASCII characters with no spaces");
                }
                Ok(Some(token))
            }
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => bail!("{TOKEN_ENV} is not UTF-8"),
        }
    }

    /// The HTTP client for this endpoint.
    pub(crate) fn client(&self) -> Result<HttpClient> {
        let tls = ClientTls {
            ca: self.cacert.as_deref(),
            cert: self.client_cert.as_deref(),
            key: self.client_key.as_deref(),
        };
        HttpClient::new(&self.endpoint, tls, self.token()?)
    }

    /// Sends one request; fails on the statuses no command expects (see [`check`]).
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(Bytes, &'static str)>,
    ) -> Result<(StatusCode, String)> {
        check(self.client()?.send(method, path, body).await?)
    }
}

fn key_path(key: &str) -> String {
    encoded_path("/kv/", key)
}

/// `base` followed by `key`, percent-encoded.
fn encoded_path(base: &str, key: &str) -> String {
    let mut out = String::from(base);
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `error` of a JSON error body, or the body itself.
fn reason(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string())
}

/// Fails on the statuses no command expects (404 and 409 are the callers' to read).
pub(crate) fn check(reply: Reply) -> Result<(StatusCode, String)> {
    let status = reply.status;
    let body = String::from_utf8_lossy(&reply.body).into_owned();
    match status {
        StatusCode::UNAUTHORIZED => bail!(
            "unauthorized: {} (give --token-file or set {TOKEN_ENV})",
            reason(&body)
        ),
        StatusCode::FORBIDDEN => bail!("forbidden: {}", reason(&body)),
        StatusCode::NOT_FOUND | StatusCode::CONFLICT => Ok((status, body)),
        s if s.is_client_error() || s.is_server_error() => bail!("{status}: {}", reason(&body)),
        _ => Ok((status, body)),
    }
}

pub async fn put(ep: &Endpoint, key: &str, value: String) -> Result<()> {
    let body = Some((Bytes::from(value), "application/octet-stream"));
    ep.call(Method::PUT, &key_path(key), body).await?;
    println!("OK");
    Ok(())
}

pub async fn get(ep: &Endpoint, key: &str, consistency: &str) -> Result<()> {
    let path = format!("{}?consistency={consistency}", key_path(key));
    let (status, body) = ep.call(Method::GET, &path, None).await?;
    if status == StatusCode::NOT_FOUND {
        bail!("{key}: not found");
    }
    println!("{body}");
    Ok(())
}

pub async fn delete(ep: &Endpoint, key: &str) -> Result<()> {
    let (status, _) = ep.call(Method::DELETE, &key_path(key), None).await?;
    println!(
        "{}",
        if status == StatusCode::OK {
            "deleted"
        } else {
            "absent"
        }
    );
    Ok(())
}

pub async fn cas(ep: &Endpoint, key: &str, expect: Option<String>, value: String) -> Result<()> {
    let body = serde_json::to_vec(&serde_json::json!({ "expect": expect, "value": value }))?;
    let path = format!("{}/cas", key_path(key));
    let (status, body) = ep
        .call(
            Method::POST,
            &path,
            Some((Bytes::from(body), "application/json")),
        )
        .await?;
    if status == StatusCode::CONFLICT {
        bail!("not swapped: {body}");
    }
    println!("swapped");
    Ok(())
}

/// Appends `value` to the key's value; prints the new length in bytes.
pub async fn append(ep: &Endpoint, key: &str, value: String) -> Result<()> {
    let body = Some((Bytes::from(value), "application/octet-stream"));
    let path = format!("{}/append", key_path(key));
    let (_, body) = ep.call(Method::POST, &path, body).await?;
    let length = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["length"].as_u64())
        .with_context(|| format!("the answer has no length: {body}"))?;
    println!("OK, {length} bytes");
    Ok(())
}

pub async fn status(ep: &Endpoint) -> Result<()> {
    let (_, body) = ep.call(Method::GET, "/status", None).await?;
    let value: serde_json::Value = serde_json::from_str(&body).context("the status is not JSON")?;
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}

/// Prints every change to keys under `prefix` as a JSON line (from index `from` on, else from
/// now on) until the node ends the stream; see `GET /watch/{prefix}` in the README.
pub async fn watch(ep: &Endpoint, prefix: &str, from: Option<u64>) -> Result<()> {
    let mut path = if prefix.is_empty() {
        "/watch".to_string()
    } else {
        encoded_path("/watch/", prefix)
    };
    if let Some(from) = from {
        path.push_str(&format!("?from={from}"));
    }
    let mut out = tokio::io::stdout();
    let reply = ep.client()?.download(&path, &mut out).await;
    tokio::io::AsyncWriteExt::flush(&mut out).await?;
    check(reply?)?;
    Ok(())
}

pub async fn leave(ep: &Endpoint) -> Result<()> {
    ep.call(Method::POST, "/cluster/leave", None).await?;
    println!("left");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: StatusCode, body: &str) -> Reply {
        Reply {
            status,
            body: Bytes::from(body.to_string()),
        }
    }

    #[test]
    fn refusals_are_named() {
        let err = check(reply(StatusCode::UNAUTHORIZED, r#"{"error":"no token"}"#))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.starts_with("unauthorized: no token"), "{err}");
        let err = check(reply(StatusCode::FORBIDDEN, r#"{"error":"admin only"}"#))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(err, "forbidden: admin only");
        assert!(check(reply(StatusCode::PAYLOAD_TOO_LARGE, "big")).is_err());
        assert!(check(reply(StatusCode::NOT_FOUND, "")).is_ok());
        assert!(check(reply(StatusCode::OK, "x")).is_ok());
    }
}
