//! The HTTP API's defences against real `raft-kv serve` processes: bearer tokens and roles
//! (401 / 403 / 200), body size (413), concurrency (503), request and header timeouts (408,
//! slowloris), HTTPS with the CLI, client certificates, refused token files, and ten thousand
//! idle connections.
//!
//! Each test runs its own single-node cluster with short limits passed as flags.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use raft_transport_quic::dev_certs;
use reqwest::StatusCode;
use serde_json::Value;
use support::SingleNode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REGULAR: &str = "regular-token-0123456789abcdef";
const ADMIN: &str = "admin-token-0123456789abcdef00";

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// Writes both token files into `dir`; returns their flags.
fn token_flags(dir: &Path) -> Vec<OsString> {
    let auth = SingleNode::write_file(
        dir,
        "auth.tokens",
        &format!("# readers\n{REGULAR}\n"),
        0o600,
    );
    let admin = SingleNode::write_file(dir, "admin.tokens", &format!("{ADMIN}\n"), 0o600);
    vec![
        "--auth-token-file".into(),
        auth.into(),
        "--admin-token-file".into(),
        admin.into(),
    ]
}

/// The HTTPS flags for node 1's development certificate.
fn tls_flags(dir: &Path) -> Vec<OsString> {
    let certs = SingleNode::certs_dir(dir);
    vec![
        "--http-tls-cert".into(),
        dev_certs::cert_path(&certs, 1).into(),
        "--http-tls-key".into(),
        dev_certs::key_path(&certs, 1).into(),
    ]
}

/// Starts a node with `flags(dir)` and waits until it listens.
async fn start(flags: impl FnOnce(&Path) -> Vec<OsString>) -> SingleNode {
    let dir = SingleNode::prepare();
    let flags = flags(dir.path());
    let mut node = SingleNode::spawn(dir, &flags);
    node.wait_listening(Duration::from_secs(15)).await;
    node
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn url(node: &SingleNode, path: &str) -> String {
    format!("http://{}{path}", node.http)
}

/// Waits until the node leads (asking with `token`, if any).
async fn wait_leader(node: &SingleNode, token: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut request = http().get(url(node, "/status"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Ok(response) = request.send().await {
            if let Ok(status) = response.json::<Value>().await {
                if status["leader_id"] == 1 {
                    return;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader:\n{}", node.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn error_reason(response: reqwest::Response) -> String {
    let body: Value = response.json().await.expect("a JSON error body");
    body["error"].as_str().expect("an error reason").to_string()
}

/// Reads one HTTP response from a raw connection: `(status, head and body text)`, or why
/// there was none (closed, reset, timed out).
async fn read_response(stream: &mut TcpStream, within: Duration) -> Result<(u16, String), String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let status: u16 = text
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("not an HTTP response: {text:?}"))?;
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return Ok((status, text));
            }
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return Err(format!("no response in time; got {:?}", text)),
            Ok(Ok(0)) => return Err(format!("closed; got {text:?}")),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(format!("{e}; got {text:?}")),
        }
    }
}

/// Runs the `raft-kv` CLI (no `RAFT_KV_TOKEN` unless `token_env`).
fn cli(args: &[OsString], token_env: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_raft-kv"));
    cmd.args(args).env_remove("RAFT_KV_TOKEN");
    if let Some(token) = token_env {
        cmd.env("RAFT_KV_TOKEN", token);
    }
    cmd.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_or_malformed_credentials_are_401() {
    let node = start(token_flags).await;
    for (what, header) in [
        ("no Authorization", None),
        ("Basic", Some("Basic YWRtaW46YWRtaW4=")),
        ("empty bearer", Some("Bearer ")),
    ] {
        let mut request = http().get(url(&node, "/status"));
        if let Some(header) = header {
            request = request.header("authorization", header);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
        let challenge = response.headers()["www-authenticate"].to_str().unwrap();
        assert!(challenge.starts_with("Bearer"), "{what}: {challenge}");
        assert!(!error_reason(response).await.is_empty());
    }
    // Admin and data routes alike.
    let response = http()
        .post(url(&node, "/cluster/leave"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let log = node.log();
    assert!(
        !log.contains(REGULAR) && !log.contains(ADMIN),
        "a token was logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_token_is_403() {
    let node = start(token_flags).await;
    for path in ["/status", "/kv/a", "/metrics"] {
        let response = http()
            .get(url(&node, path))
            .bearer_auth("not-a-token-of-this-node-at-all")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{path}");
    }
    // A prefix of a real token is no token.
    let response = http()
        .get(url(&node, "/status"))
        .bearer_auth(&REGULAR[..20])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regular_token_on_cluster_routes_is_403() {
    let node = start(token_flags).await;
    for path in [
        "/cluster/leave",
        "/cluster/remove/2",
        "/cluster/transfer-leader/1",
    ] {
        let response = http()
            .post(url(&node, path))
            .bearer_auth(REGULAR)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{path}");
        let reason = error_reason(response).await;
        assert!(reason.contains("admin"), "{path}: {reason}");
    }
    // The node is still a member: leave was refused.
    let response = http()
        .get(url(&node, "/status"))
        .bearer_auth(REGULAR)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_tokens_are_200() {
    let node = start(token_flags).await;
    wait_leader(&node, Some(REGULAR)).await;
    let put = http()
        .put(url(&node, "/kv/k"))
        .bearer_auth(REGULAR)
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    for token in [REGULAR, ADMIN] {
        let get = http()
            .get(url(&node, "/kv/k"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(get.status(), StatusCode::OK);
        assert_eq!(get.text().await.unwrap(), "v");
    }
    let metrics = http()
        .get(url(&node, "/metrics"))
        .header("authorization", format!("bearer {REGULAR}"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains("raftkit_http_requests_rejected_total{reason=\"unauthorized\"}"),
        "{text}"
    );
    // The admin token may administer: moving leadership to the leader itself is a no-op.
    let transfer = http()
        .post(url(&node, "/cluster/transfer-leader/1"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(transfer.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_role_tokens_may_call_cluster_routes() {
    let node = start(|dir| {
        let auth = SingleNode::write_file(dir, "auth.tokens", &format!("{REGULAR}\n"), 0o600);
        vec!["--auth-token-file".into(), auth.into()]
    })
    .await;
    wait_leader(&node, Some(REGULAR)).await;
    let transfer = http()
        .post(url(&node, "/cluster/transfer-leader/1"))
        .bearer_auth(REGULAR)
        .send()
        .await
        .unwrap();
    assert_eq!(transfer.status(), StatusCode::OK);
    assert!(node.log().contains("one-role deployment"), "{}", node.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_the_limit_is_413() {
    let node = start(|_| os(&["--http-max-body-bytes", "1024"])).await;
    // Declared too large: answered before the body is sent.
    let mut stream = TcpStream::connect(&node.http).await.unwrap();
    stream
        .write_all(b"PUT /kv/big HTTP/1.1\r\nhost: x\r\ncontent-length: 2048\r\n\r\n")
        .await
        .unwrap();
    let (status, response) = read_response(&mut stream, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(status, 413, "{response}");
    assert!(response.contains("--http-max-body-bytes"), "{response}");

    // Streamed with no Content-Length: read up to the limit, then refused.
    let mut stream = TcpStream::connect(&node.http).await.unwrap();
    let mut request =
        b"PUT /kv/big HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        request.extend_from_slice(b"200\r\n");
        request.extend_from_slice(&[b'x'; 512]);
        request.extend_from_slice(b"\r\n");
    }
    stream.write_all(&request).await.unwrap();
    let (status, response) = read_response(&mut stream, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(status, 413, "{response}");

    // At the limit: not refused for its size (no leader needed to tell).
    let response = http()
        .put(url(&node, "/kv/fits"))
        .body(vec![b'x'; 1024])
        .send()
        .await
        .unwrap();
    assert_ne!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

/// A PUT whose body stops after 2 of its 5 bytes: it holds a request slot until the rest comes.
async fn slow_put(node: &SingleNode) -> TcpStream {
    let mut slow = TcpStream::connect(&node.http).await.unwrap();
    slow.write_all(b"PUT /kv/slow HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nab")
        .await
        .unwrap();
    slow
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_concurrency_limit_is_503_at_once() {
    let node = start(|_| os(&["--http-max-concurrent-requests", "1"])).await;
    // One request holds the only slot: its body arrives slowly.
    let mut slow = slow_put(&node).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let started = Instant::now();
        let response = http().get(url(&node, "/status")).send().await.unwrap();
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "the refusal was queued: {:?}",
                started.elapsed()
            );
            assert_eq!(response.headers()["retry-after"], "1");
            let reason = error_reason(response).await;
            assert!(
                reason.contains("--http-max-concurrent-requests"),
                "{reason}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never refused: {}",
            response.status()
        );
        // The server may take up a probe before the slow request's headers: the probe got
        // the slot and the slow request was refused. It must then be sent again.
        if support::answered(&slow) {
            slow = slow_put(&node).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The slow request completes and frees its slot.
    slow.write_all(b"cde").await.unwrap();
    read_response(&mut slow, Duration::from_secs(10))
        .await
        .unwrap();
    let response = http().get(url(&node, "/status")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_slower_than_the_request_timeout_is_408() {
    let node = start(|_| os(&["--http-request-timeout", "1s"])).await;
    let mut stream = TcpStream::connect(&node.http).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(b"PUT /kv/slow HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let (status, response) = read_response(&mut stream, Duration::from_secs(5))
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(status, 408, "{response}");
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
        "{elapsed:?}"
    );
    // The connection is closed after it: its body was never read.
    let mut rest = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_disconnected_after_the_header_timeout() {
    let node = start(|_| os(&["--http-header-timeout", "1s"])).await;
    let head = b"GET /status HTTP/1.1\r\nhost: x\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut stream = TcpStream::connect(&node.http).await.unwrap();
    let started = Instant::now();
    let mut closed_after = None;
    let mut scratch = [0u8; 256];
    // One header byte every 100 ms: never a whole head.
    for byte in head {
        if stream.write_all(&[*byte]).await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut scratch)).await {
            Err(_) => {}
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed_after = Some(started.elapsed());
                break;
            }
            Ok(Ok(n)) => panic!("answered a partial head: {:?}", &scratch[..n]),
        }
    }
    let closed_after = closed_after.expect("the slow client was never disconnected");
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(4),
        "{closed_after:?}"
    );
    // A connection that sends nothing at all is closed too.
    let mut idle = TcpStream::connect(&node.http).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(4), idle.read(&mut scratch)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    // Normal clients are served.
    let response = http().get(url(&node, "/status")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_the_cli_and_plain_http_refused() {
    let node = start(|dir| {
        let mut flags = token_flags(dir);
        flags.extend(tls_flags(dir));
        flags
    })
    .await;
    let dir = node.dir.path();
    let ca: PathBuf = dev_certs::ca_path(&SingleNode::certs_dir(dir));
    let token_file = SingleNode::write_file(dir, "my.token", &format!("# me\n{REGULAR}\n"), 0o600);
    let endpoint = format!("https://{}", node.http);
    let with = |command: &[&str], token_file: Option<&Path>| -> Vec<OsString> {
        let mut args = os(&[command[0], "--endpoint", &endpoint, "--cacert"]);
        args.push(ca.clone().into());
        if let Some(file) = token_file {
            args.push("--token-file".into());
            args.push(file.into());
        }
        args.extend(os(&command[1..]));
        args
    };

    // The single node elects itself within seconds: retry the first write until then.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = cli(
            &with(&["put", "greeting", "hello"], Some(&token_file)),
            None,
        );
        if out.status.success() {
            assert_eq!(text(&out.stdout), "OK");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "put over HTTPS failed: {}\n{}",
            text(&out.stderr),
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = cli(&with(&["get", "greeting"], Some(&token_file)), None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello");
    // The token from the environment; the file wins over it.
    let out = cli(&with(&["get", "greeting"], None), Some(REGULAR));
    assert_eq!(text(&out.stdout), "hello", "{}", text(&out.stderr));
    let out = cli(
        &with(&["get", "greeting"], Some(&token_file)),
        Some("wrong-token-wrong-token"),
    );
    assert_eq!(text(&out.stdout), "hello", "{}", text(&out.stderr));
    // Clear refusals.
    let out = cli(&with(&["get", "greeting"], None), None);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("unauthorized: "),
        "{}",
        text(&out.stderr)
    );
    let out = cli(&with(&["leave"], Some(&token_file)), None);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("forbidden: "),
        "{}",
        text(&out.stderr)
    );
    // No CA to check the server with: refused before connecting.
    let out = cli(&os(&["status", "--endpoint", &endpoint]), Some(REGULAR));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--cacert"),
        "{}",
        text(&out.stderr)
    );

    // Plain HTTP to the HTTPS port fails, with a hint.
    let response = http().get(url(&node, "/status")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(error_reason(response).await.contains("HTTPS"));
    let out = cli(
        &os(&["status", "--endpoint", &format!("http://{}", node.http)]),
        Some(REGULAR),
    );
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ca_refuses_clients_without_a_certificate() {
    let node = start(|dir| {
        let certs = SingleNode::certs_dir(dir);
        let mut flags = tls_flags(dir);
        flags.push("--http-client-ca".into());
        flags.push(dev_certs::ca_path(&certs).into());
        flags
    })
    .await;
    let certs = SingleNode::certs_dir(node.dir.path());
    let client = dev_certs::generate_client(&certs, "tester").unwrap();
    let endpoint = format!("https://{}", node.http);
    let mut args = os(&["status", "--endpoint", &endpoint, "--cacert"]);
    args.push(dev_certs::ca_path(&certs).into());

    let out = cli(&args, None);
    assert!(!out.status.success(), "served a client with no certificate");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("--cert"), "{stderr}");

    let mut with_cert = args.clone();
    with_cert.extend([
        "--cert".into(),
        client.cert.into(),
        "--key".into(),
        client.key.into(),
    ]);
    let out = cli(&with_cert, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status: Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(status["id"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_token_files_and_flags_stop_the_node() {
    let dir = SingleNode::prepare();
    let data = dir.path().join("data");
    let serve = |extra: Vec<OsString>| -> (bool, String) {
        let mut args = os(&[
            "serve",
            "--id",
            "1",
            "--storage",
            "memory",
            "--raft-addr",
            "127.0.0.1:1",
            "--http-addr",
            "127.0.0.1:1",
            "--data-dir",
        ]);
        args.push(data.clone().into());
        args.extend(extra);
        let out = cli(&args, None);
        (out.status.success(), text(&out.stderr))
    };
    let file = |name: &str, content: &str, mode: u32| -> Vec<OsString> {
        let path = SingleNode::write_file(dir.path(), name, content, mode);
        vec!["--auth-token-file".into(), path.into()]
    };
    let (ok, err) = serve(file("short.tokens", "# x\nshort-token\n", 0o600));
    assert!(
        !ok && err.contains("short.tokens") && err.contains("shorter than 16"),
        "{err}"
    );
    assert!(!err.contains("short-token"), "{err}");
    let (ok, err) = serve(file("empty.tokens", "# only comments\n\n", 0o600));
    assert!(
        !ok && err.contains("empty.tokens") && err.contains("no token"),
        "{err}"
    );
    let (ok, err) = serve(file("open.tokens", &format!("{REGULAR}\n"), 0o644));
    assert!(
        !ok && err.contains("open.tokens") && err.contains("644"),
        "{err}"
    );
    let certs = SingleNode::certs_dir(dir.path());
    let (ok, err) = serve(vec![
        "--http-client-ca".into(),
        dev_certs::ca_path(&certs).into(),
    ]);
    assert!(!ok && err.contains("--http-tls-cert"), "{err}");
    let (ok, err) = serve(vec![
        "--http-tls-cert".into(),
        dev_certs::cert_path(&certs, 1).into(),
    ]);
    assert!(!ok && err.contains("--http-tls-key"), "{err}");
    assert!(!data.exists(), "the node touched its data dir");
}

/// Raises this process's open-file soft limit to the hard limit; returns the new soft limit.
fn raise_open_file_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_do_not_lock_out_clients() {
    const IDLE: usize = 10_000;
    let limit = raise_open_file_limit();
    if limit < 10_500 {
        eprintln!("skipped: the open-file limit is {limit}, below 10500 (raise `ulimit -Hn`)");
        return;
    }
    // Idle connections outlive the test: only the cap and the fd limit bound them.
    let node = start(|_| os(&["--http-header-timeout", "60s"])).await;
    wait_leader(&node, None).await;

    let started = Instant::now();
    let mut idle = Vec::with_capacity(IDLE);
    while idle.len() < IDLE {
        let batch: Vec<_> = (0..256.min(IDLE - idle.len()))
            .map(|_| tokio::spawn(TcpStream::connect(node.http.clone())))
            .collect();
        for connect in batch {
            idle.push(connect.await.unwrap().expect("an idle connection"));
        }
    }
    eprintln!("{IDLE} idle connections in {:?}", started.elapsed());

    // A normal client is answered promptly while they are held.
    let client = http();
    let asked = Instant::now();
    let put = client
        .put(url(&node, "/kv/busy-day"))
        .body("still here")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let get = client.get(url(&node, "/kv/busy-day")).send().await.unwrap();
    assert_eq!(get.text().await.unwrap(), "still here");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "answered in {:?}",
        asked.elapsed()
    );
    // The server holds them all (they are not waiting in the listen backlog).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = client
            .get(url(&node, "/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let open: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("raftkit_http_connections ")?.parse().ok())
            .expect("raftkit_http_connections");
        if open >= IDLE as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {open} connections accepted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(idle);
}
