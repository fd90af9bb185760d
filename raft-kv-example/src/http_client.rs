//! The CLI's HTTP client: one HTTP/1.1 exchange per call, over TCP or TLS (rustls on ring),
//! with an optional client certificate and bearer token.
//!
//! hyper + tokio-rustls rather than reqwest: reqwest's only rustls variant without aws-lc
//! (`rustls-no-provider`) would make every other reqwest client of this package panic unless
//! a process-wide crypto provider were installed.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Time allowed to open the TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for a whole exchange (connection, TLS, request and response).
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest response body read.
const MAX_RESPONSE_BYTES: usize = 64 << 20;
/// Longest pause allowed in a download's body (the whole download has no time limit).
const DOWNLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Where an exchange puts the response body.
enum Sink<'a> {
    /// In memory, at most [`MAX_RESPONSE_BYTES`].
    Memory,
    /// A successful (2xx) body streams into the writer with no size limit; another status's
    /// body (an error reason) is read into memory as usual.
    Writer(&'a mut (dyn AsyncWrite + Unpin + Send)),
}

/// The TLS files of the CLI: the server's CA, and a client identity for servers that ask.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClientTls<'a> {
    /// The CA the server's certificate must chain to (PEM).
    pub ca: Option<&'a Path>,
    /// This client's certificate (PEM).
    pub cert: Option<&'a Path>,
    /// This client's private key (PEM; refused if group or others may read it).
    pub key: Option<&'a Path>,
}

/// One server's answer.
#[derive(Debug)]
pub struct Reply {
    /// The HTTP status.
    pub status: StatusCode,
    /// The whole body.
    pub body: Bytes,
}

/// Talks to one node's HTTP API.
pub struct HttpClient {
    endpoint: String,
    /// Host to dial (IPv6 without brackets) and port.
    host: String,
    port: u16,
    /// The `Host` header.
    authority: String,
    /// The endpoint's path, prefixed to every request path.
    prefix: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    client_cert: bool,
    token: Option<String>,
}

impl HttpClient {
    /// A client for `endpoint` (`http://host:port` or `https://host:port`).
    pub fn new(endpoint: &str, files: ClientTls<'_>, token: Option<String>) -> Result<HttpClient> {
        let uri: Uri = endpoint
            .parse()
            .with_context(|| format!("{endpoint:?} is not a URL like http://127.0.0.1:7101"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => bail!("{endpoint:?}: the endpoint must start with http:// or https://"),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow!("{endpoint:?}: no host in the endpoint"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = match (https, files.ca) {
            (true, Some(ca)) => {
                let identity = match (files.cert, files.key) {
                    (Some(cert), Some(key)) => Some((cert, key)),
                    (None, None) => None,
                    _ => bail!("--cert and --key go together"),
                };
                let config = crate::http_tls::client_config(ca, identity)?;
                let name = ServerName::try_from(host.clone())
                    .with_context(|| format!("{host:?} is not a valid TLS server name"))?;
                Some((TlsConnector::from(Arc::new(config)), name))
            }
            (true, None) => bail!(
                "an https:// endpoint needs --cacert <PEM>, the CA its certificate chains to \
                 (raft-kv has no built-in trust store)"
            ),
            (false, _) if files.ca.is_some() || files.cert.is_some() || files.key.is_some() => {
                bail!("--cacert, --cert and --key need an https:// endpoint")
            }
            (false, _) => None,
        };
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if token.is_some() && tls.is_none() && !loopback {
            eprintln!(
                "raft-kv: warning: sending a bearer token over plain http:// to {host}; use https://"
            );
        }
        Ok(HttpClient {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            host,
            port,
            authority: authority.as_str().to_string(),
            prefix: uri.path().trim_end_matches('/').to_string(),
            client_cert: files.cert.is_some(),
            tls,
            token,
        })
    }

    /// Sends one request (`path` starting with `/`) with an optional body and content type.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(Bytes, &'static str)>,
    ) -> Result<Reply> {
        let url = format!("{}{path}", self.endpoint);
        tokio::time::timeout(
            EXCHANGE_TIMEOUT,
            self.exchange(method, path, body, Sink::Memory),
        )
        .await
        .map_err(|_| anyhow!("no answer within {EXCHANGE_TIMEOUT:?}"))
        .and_then(|r| r)
        .with_context(|| format!("calling {url}"))
    }

    /// GETs `path` and streams a successful (2xx) response body into `out`, however large
    /// and long (only a pause of a minute fails it); the returned [`Reply`] then has an empty
    /// body. Another status comes back with its body, as from [`HttpClient::send`]. The
    /// caller flushes `out`.
    pub async fn download(
        &self,
        path: &str,
        out: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<Reply> {
        let url = format!("{}{path}", self.endpoint);
        self.exchange(Method::GET, path, None, Sink::Writer(out))
            .await
            .with_context(|| format!("calling {url}"))
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<(Bytes, &'static str)>,
        sink: Sink<'_>,
    ) -> Result<Reply> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header(HOST, &self.authority)
            .header(USER_AGENT, concat!("raft-kv/", env!("CARGO_PKG_VERSION")));
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some((bytes, content_type)) => {
                request = request.header(CONTENT_TYPE, content_type);
                bytes
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(body))
            .context("building the request")?;

        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| anyhow!("no connection within {CONNECT_TIMEOUT:?}"))?
        .context("connecting")?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => exchange(tcp, request, sink).await,
            Some((connector, name)) => {
                let tls =
                    tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name.clone(), tcp))
                        .await
                        .map_err(|_| anyhow!("no TLS handshake within {CONNECT_TIMEOUT:?}"))?
                        .context("TLS handshake")?;
                exchange(tls, request, sink).await.with_context(|| {
                    if self.client_cert {
                        "over TLS"
                    } else {
                        "over TLS (if the server requires a client certificate, give --cert and --key)"
                    }
                })
            }
        }
    }
}

async fn exchange<I>(io: I, request: Request<Full<Bytes>>, sink: Sink<'_>) -> Result<Reply>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .context("starting HTTP/1.1")?;
    let driver = tokio::spawn(connection);
    let result = async {
        let response = tokio::time::timeout(EXCHANGE_TIMEOUT, sender.send_request(request))
            .await
            .map_err(|_| anyhow!("no answer within {EXCHANGE_TIMEOUT:?}"))?
            .context("sending the request")?;
        let status = response.status();
        if let (Sink::Writer(out), true) = (sink, status.is_success()) {
            let mut body = response.into_body();
            loop {
                let frame = tokio::time::timeout(DOWNLOAD_IDLE_TIMEOUT, body.frame())
                    .await
                    .map_err(|_| anyhow!("the download stalled for {DOWNLOAD_IDLE_TIMEOUT:?}"))?;
                let Some(frame) = frame else { break };
                let frame = frame.map_err(|e| anyhow!("reading the response: {e}"))?;
                if let Ok(data) = frame.into_data() {
                    tokio::io::AsyncWriteExt::write_all(out, &data)
                        .await
                        .context("writing the download")?;
                }
            }
            return Ok(Reply {
                status,
                body: Bytes::new(),
            });
        }
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| anyhow!("reading the response: {e}"))?
            .to_bytes();
        Ok(Reply { status, body })
    }
    .await;
    driver.abort();
    result
}
