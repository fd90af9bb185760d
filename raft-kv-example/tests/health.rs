//! `/health` and `/ready` of real `raft-kv serve` processes (quorum loss and recovery, bearer
//! tokens, a saturated concurrency limit), and `raft-kv cluster` refusing a data dir that
//! holds a cluster of another layout.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{KvCluster, SingleNode, Transport};
use tokio::io::AsyncWriteExt;

const TOKEN: &str = "probe-test-token-0123456789abcdef";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// GETs `url` without credentials: the status code and the JSON body (`Null` if none).
async fn probe(http: &reqwest::Client, url: &str) -> Option<(u16, Value)> {
    let response = http.get(url).send().await.ok()?;
    let code = response.status().as_u16();
    Some((code, response.json().await.unwrap_or(Value::Null)))
}

/// Polls `url` until `done` holds for its answer; panics with the last answer after
/// `timeout`.
async fn wait_probe(
    http: &reqwest::Client,
    url: &str,
    timeout: Duration,
    done: impl Fn(u16, &Value) -> bool,
) -> (u16, Value) {
    let deadline = Instant::now() + timeout;
    loop {
        let answer = probe(http, url).await;
        if let Some((code, body)) = &answer {
            if done(*code, body) {
                return (*code, body.clone());
            }
        }
        assert!(
            Instant::now() < deadline,
            "{url} never answered as expected within {timeout:?}; last answer: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_quorum_loss_and_recovery_while_health_stays_ok() {
    let mut c = KvCluster::start(3, Transport::Grpc).await;
    let http = client();
    c.put(1, "k", "v").await.unwrap();
    for id in 1..=3 {
        let (_, body) = wait_probe(
            &http,
            &c.url(id, "/ready"),
            Duration::from_secs(30),
            |code, _| code == 200,
        )
        .await;
        assert_eq!(body["ready"], true, "node {id}: {body}");
        assert!(body["leader_id"].is_u64(), "node {id}: {body}");
        let (code, body) = probe(&http, &c.url(id, "/health")).await.unwrap();
        assert_eq!(
            (code, &body["status"]),
            (200, &Value::from("ok")),
            "node {id}: {body}"
        );
        assert_eq!(body["id"], id, "node {id}: {body}");
    }

    // The leader survives alone: it must notice it lost its quorum (check-quorum) and stop
    // claiming a leader, while its process and raft task stay healthy.
    let survivor = c.leader(Duration::from_secs(10)).await;
    let others: Vec<u64> = (1..=3).filter(|&id| id != survivor).collect();
    for &id in &others {
        c.kill9(id);
    }
    let killed = Instant::now();
    let ready_url = c.url(survivor, "/ready");
    let health_url = c.url(survivor, "/health");
    let deadline = killed + Duration::from_secs(30);
    let reason = loop {
        let (code, body) = probe(&http, &ready_url)
            .await
            .expect("the survivor answers");
        if code == 503 {
            assert_eq!(body["ready"], false, "{body}");
            break body["reason"].as_str().unwrap_or_default().to_string();
        }
        assert_eq!(code, 200, "{body}");
        let (code, body) = probe(&http, &health_url)
            .await
            .expect("the survivor answers");
        assert_eq!(code, 200, "/health while the quorum goes: {body}");
        assert!(
            Instant::now() < deadline,
            "/ready stayed 200 without a quorum"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The election timeout is 1 to 2 s; the bound above is generous for a loaded machine.
    println!(
        "survivor {survivor} unready after {:?}: {reason}",
        killed.elapsed()
    );
    assert!(reason.contains("leader"), "{reason}");
    // Without a quorum it stays unready, and stays healthy.
    for _ in 0..10 {
        let (code, body) = probe(&http, &health_url).await.unwrap();
        assert_eq!((code, &body["status"]), (200, &Value::from("ok")), "{body}");
        let (code, body) = probe(&http, &ready_url).await.unwrap();
        assert_eq!(code, 503, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The killed nodes restart from their data dirs; everyone is ready again.
    for &id in &others {
        c.spawn(id, None);
    }
    for id in 1..=3 {
        wait_probe(
            &http,
            &c.url(id, "/ready"),
            Duration::from_secs(60),
            |code, _| code == 200,
        )
        .await;
    }
    assert_eq!(
        c.get(survivor, "k", "linearizable").await,
        Ok(Some("v".into()))
    );
    c.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_need_no_token_and_no_concurrency_permit() {
    let dir = SingleNode::prepare();
    let tokens = SingleNode::write_file(dir.path(), "auth.tokens", &format!("{TOKEN}\n"), 0o600);
    let flags: Vec<OsString> = vec![
        "--auth-token-file".into(),
        tokens.into(),
        "--http-max-concurrent-requests".into(),
        "1".into(),
        "--http-request-timeout".into(),
        "20s".into(),
    ];
    let mut node = SingleNode::spawn(dir, &flags);
    node.wait_listening(Duration::from_secs(30)).await;
    let http = client();
    let url = |path: &str| format!("http://{}{path}", node.http);

    let (_, body) = wait_probe(&http, &url("/ready"), Duration::from_secs(30), |code, _| {
        code == 200
    })
    .await;
    assert_eq!(body["ready"], true, "{body}");
    let (code, body) = probe(&http, &url("/health")).await.unwrap();
    assert_eq!((code, &body["status"]), (200, &Value::from("ok")), "{body}");
    let head = http.head(url("/health")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    // Tokens are enforced on everything else.
    let status = http.get(url("/status")).send().await.unwrap();
    assert_eq!(status.status(), 401);
    let post = http.post(url("/health")).send().await.unwrap();
    assert_eq!(post.status(), 401, "only GET and HEAD are probes");

    // Take the only request permit: a request whose body never comes holds it until the
    // request timeout. Its head may race this test's own /status request for the permit
    // (then it is refused at once): try again until it holds it.
    let head = format!(
        "PUT /kv/stalled HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: 10\r\n\r\n",
        node.http
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let stalled = loop {
        assert!(
            Instant::now() < deadline,
            "a stalled request never held the permit"
        );
        let mut stalled = tokio::net::TcpStream::connect(&node.http).await.unwrap();
        stalled.write_all(head.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        if support::answered(&stalled) {
            continue;
        }
        let status = http
            .get(url("/status"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        if status.status() == 503 {
            break stalled;
        }
    };
    for path in ["/health", "/ready"] {
        let (code, body) = probe(&http, &url(path)).await.unwrap();
        assert_eq!(code, 200, "{path} with every permit taken: {body}");
    }
    drop(stalled);
}

/// A base port whose 2 x `n` ports (raft base+i, HTTP base+100+i) are free now.
fn free_base_port(n: u16) -> u16 {
    loop {
        let p = support::free_port();
        if p < 60000
            && (1..=n).all(|i| {
                std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()
                    && std::net::TcpListener::bind(("127.0.0.1", p + 100 + i)).is_ok()
            })
        {
            return p;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_refuses_a_data_dir_of_another_layout_at_once() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("raft-kv-data");
    let base = free_base_port(5).to_string();
    let mut first = Command::new(env!("CARGO_BIN_EXE_raft-kv"))
        .args([
            "cluster",
            "--nodes",
            "3",
            "--base-port",
            &base,
            "--data-dir",
        ])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = first.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("Ctrl-C stops") {
                return true;
            }
        }
        false
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    while !lines.is_finished() {
        if Instant::now() > deadline {
            let _ = first.kill();
            panic!("the 3-node raft-kv cluster never became ready");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        lines.join().unwrap(),
        "raft-kv cluster exited before serving"
    );
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("cluster.json")).unwrap()).unwrap();
    assert_eq!(record["nodes"], 3, "{record}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while first.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "raft-kv cluster ignored SIGINT");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Five nodes over the three-node dir: refused before anything starts.
    let started = Instant::now();
    let mut second = Command::new(env!("CARGO_BIN_EXE_raft-kv"))
        .args([
            "cluster",
            "--nodes",
            "5",
            "--base-port",
            &base,
            "--data-dir",
        ])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = second.kill();
            panic!("raft-kv cluster --nodes 5 over a 3-node dir did not exit");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    println!("refused after {:?}:\n{stderr}", started.elapsed());
    assert!(!status.success(), "{status}: {stderr}");
    for needle in [
        "holds a 3-node cluster",
        "asks for 5 nodes (it has 3)",
        &format!("rm -rf {}", data.display()),
        "--data-dir",
    ] {
        assert!(stderr.contains(needle), "{needle:?} not in:\n{stderr}");
    }
    assert!(
        !data.join("node-4").exists(),
        "a node of the refused run was created"
    );
}
