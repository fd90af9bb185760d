//! `GET /watch/{prefix}` against real processes: a watcher follows a prefix while writes
//! land, its node (the leader) is SIGKILLed, and it resumes on another node from the index
//! after the last change it saw. What it saw across both streams is every change under the
//! prefix exactly once, in log index order: the same sequence a fresh watch from index 1
//! reads from a surviving node.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use support::{KvCluster, Transport};

/// One change as a watcher saw it: index, key, new value (`None`: deleted).
type Seen = (u64, String, Option<String>);

/// How a watch stream ended.
#[derive(Debug)]
enum End {
    /// The connection broke or closed (its node died).
    Lost,
    /// The watcher saw the key it waited for.
    Found,
}

/// Follows `GET /watch/{prefix}?from=N` on `url` until the stream ends or a change to
/// `until` arrives; appends every change to `seen`. Returns the `x-watch-from` header.
async fn follow(
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    until: &str,
) -> Result<(u64, End), String> {
    // No overall timeout: the stream lasts as long as the test.
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut response = client.get(&url).send().await.map_err(|e| e.to_string())?;
    if response.status() != StatusCode::OK {
        return Err(format!(
            "{url}: {} {}",
            response.status(),
            response.text().await.unwrap_or_default()
        ));
    }
    assert_eq!(
        response.headers()["content-type"],
        "application/x-ndjson",
        "a stream of JSON lines"
    );
    let start: u64 = response.headers()["x-watch-from"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut buffer = Vec::new();
    loop {
        // Progress lines come every 5 s: a longer silence is a dead connection.
        let chunk = tokio::time::timeout(Duration::from_secs(20), response.chunk()).await;
        let chunk = match chunk {
            Ok(Ok(Some(chunk))) => chunk,
            Ok(Ok(None)) | Ok(Err(_)) | Err(_) => return Ok((start, End::Lost)),
        };
        buffer.extend_from_slice(&chunk);
        while let Some(newline) = buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=newline).collect();
            let line: Value = serde_json::from_slice(&line).expect("each line is JSON");
            if let Some(error) = line.get("error") {
                return Err(format!("the stream ended with {error}: {line}"));
            }
            if line.get("progress").is_some() {
                continue;
            }
            let index = line["index"].as_u64().expect("a change has an index");
            let key = line["key"]
                .as_str()
                .expect("a change has a key")
                .to_string();
            let value = if line["deleted"] == Value::Bool(true) {
                None
            } else {
                Some(line["value"].as_str().expect("a UTF-8 value").to_string())
            };
            let done = key == until;
            seen.lock().unwrap().push((index, key, value));
            if done {
                return Ok((start, End::Found));
            }
        }
    }
}

/// One write through node `via`, retried (through `via`, which forwards) until it is
/// acknowledged: during the election after the kill, writes fail for a while.
async fn write(c: &KvCluster, via: u64, method: &str, key: &str, body: &str) -> StatusCode {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // A key with `/` is one path segment: `%2F`.
        let encoded = key.replace('/', "%2F");
        let url = match method {
            "cas" => c.url(via, &format!("/kv/{encoded}/cas")),
            _ => c.url(via, &format!("/kv/{encoded}")),
        };
        let request = match method {
            "put" => c.http.put(url).body(body.to_string()),
            "delete" => c.http.delete(url),
            _ => c
                .http
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_string()),
        };
        match request.send().await {
            Ok(r) if r.status().is_success() || r.status() == StatusCode::CONFLICT => {
                return r.status()
            }
            Ok(r) => eprintln!("{method} {key}: {}, retrying", r.status()),
            Err(e) => eprintln!("{method} {key}: {e}, retrying"),
        }
        assert!(Instant::now() < deadline, "{method} {key} never succeeded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes round `round` of the workload through `via`: puts, a delete, a compare-and-swap
/// that swaps, one that fails (no change), and writes outside the prefix (filtered out).
async fn workload(c: &KvCluster, via: u64, round: usize) {
    for i in 0..4 {
        let key = format!("w/{}", (round + i) % 3);
        write(c, via, "put", &key, &format!("r{round}-{i}")).await;
        write(c, via, "put", &format!("other/{i}"), "x").await;
    }
    write(c, via, "delete", &format!("w/{}", round % 3), "").await;
    let cas = |body: String| async move { write(c, via, "cas", "w/cas", &body).await };
    cas(format!(
        r#"{{"expect": "never", "value": "failed-{round}"}}"#
    ))
    .await;
    write(c, via, "put", "w/cas", &format!("base-{round}")).await;
    // A retry of a swap that took effect fails: the swap is in the log once either way.
    cas(format!(
        r#"{{"expect": "base-{round}", "value": "cas-{round}"}}"#
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_resumes_on_another_node_after_its_leader_is_killed() {
    let mut c = KvCluster::start(3, Transport::Grpc).await;
    // The watcher starts on node 1, the founder, the only node whose history goes back to
    // index 1 (the others joined through a snapshot); it is the leader that gets killed.
    let mut leader = c.leader(Duration::from_secs(20)).await;
    if leader != 1 {
        c.post(leader, "/cluster/transfer-leader/1")
            .await
            .expect("transfer");
        leader = c.leader(Duration::from_secs(20)).await;
    }
    assert_eq!(leader, 1);
    let writer = (1..=3).find(|&id| id != leader).unwrap();
    let other = (1..=3).find(|&id| id != leader && id != writer).unwrap();

    // Writes before the watch starts: a watch from index 1 sees them too.
    workload(&c, writer, 0).await;

    let seen = Arc::new(Mutex::new(Vec::new()));
    let first = tokio::spawn(follow(
        c.url(leader, "/watch/w/?from=1"),
        seen.clone(),
        "w/end",
    ));
    for round in 1..=3 {
        workload(&c, writer, round).await;
    }
    // The watcher is following live changes when its node dies.
    let wait = Instant::now();
    while !seen
        .lock()
        .unwrap()
        .iter()
        .any(|(_, _, v)| v.as_deref() == Some("r3-3"))
    {
        assert!(
            wait.elapsed() < Duration::from_secs(20),
            "the watcher never saw round 3"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.kill9(leader);
    let (start, end) = first.await.unwrap().expect("the first stream");
    assert_eq!(start, 1);
    assert!(matches!(end, End::Lost), "{end:?}");
    let before_kill = seen.lock().unwrap().len();

    // Writes go on while the watcher reconnects.
    for round in 4..=6 {
        workload(&c, writer, round).await;
    }
    let resume = seen
        .lock()
        .unwrap()
        .last()
        .map_or(1, |(index, _, _)| index + 1);
    let second = tokio::spawn(follow(
        c.url(other, &format!("/watch/w/?from={resume}")),
        seen.clone(),
        "w/end",
    ));
    for round in 7..=8 {
        workload(&c, writer, round).await;
    }
    write(&c, writer, "put", "w/end", "end").await;
    let (start, end) = tokio::time::timeout(Duration::from_secs(30), second)
        .await
        .expect("the second stream reaches the end")
        .unwrap()
        .expect("the second stream");
    assert_eq!(start, resume);
    assert!(matches!(end, End::Found), "{end:?}");

    // The truth: a fresh watch on the node that wrote, from the first change (a node that
    // joined through a snapshot keeps only the changes after it: the first watch, from index
    // 1 on the founding node, saw every change from the start).
    let first_index = seen.lock().unwrap()[0].0;
    let truth = Arc::new(Mutex::new(Vec::new()));
    let (_, end) = tokio::time::timeout(
        Duration::from_secs(30),
        follow(
            c.url(writer, &format!("/watch/w/?from={first_index}")),
            truth.clone(),
            "w/end",
        ),
    )
    .await
    .expect("the full watch reaches the end")
    .expect("the full watch");
    assert!(matches!(end, End::Found), "{end:?}");

    let seen = seen.lock().unwrap().clone();
    let truth = truth.lock().unwrap().clone();
    eprintln!(
        "{} changes seen, {before_kill} before the kill; resumed at {resume}",
        seen.len()
    );
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "in index order, none twice: {seen:?}"
    );
    assert_eq!(seen, truth, "the union is every change exactly once");
    assert!(before_kill > 0 && before_kill < seen.len());
    // Nine rounds: every put and delete under the prefix, the swapped CASes, not the failed
    // ones, nothing outside the prefix.
    assert!(seen.iter().all(|(_, key, _)| key.starts_with("w/")));
    assert!(!seen
        .iter()
        .any(|(_, _, v)| v.as_deref().is_some_and(|v| v.starts_with("failed-"))));
    for round in 0..=8 {
        for i in 0..4 {
            let value = format!("r{round}-{i}");
            assert!(
                seen.iter()
                    .any(|(_, _, v)| v.as_deref() == Some(value.as_str())),
                "{value} missing"
            );
        }
        let cas = format!("cas-{round}");
        assert!(seen
            .iter()
            .any(|(_, _, v)| v.as_deref() == Some(cas.as_str())));
    }
    let deletes = seen.iter().filter(|(_, _, v)| v.is_none()).count();
    assert!(
        deletes >= 9,
        "a delete of an existing key is a change: {deletes}"
    );
    c.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_lines_and_a_start_before_the_history_is_gone() {
    let mut c = KvCluster::empty(Transport::Grpc);
    c.add(1);
    c.spawn_with(1, &["--watch-history-changes".to_string(), "3".to_string()]);
    c.wait_status(1, Duration::from_secs(30), |s| !s["leader_id"].is_null())
        .await;
    c.put(1, "cli%2Fa", "1").await.expect("put");
    c.put(1, "cli%2Fb", "2").await.expect("put");
    c.put(1, "zzz", "3").await.expect("put");

    // The CLI prints the lines as they come; it runs until stopped.
    let endpoint = format!("http://{}", c.node(1).http);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_raft-kv"))
        .args(["watch", "--endpoint", &endpoint, "cli/", "--from", "1"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut text = String::new();
    let read = async {
        use tokio::io::AsyncReadExt as _;
        let mut buf = [0u8; 4096];
        while text.lines().count() < 2 {
            let n = stdout.read(&mut buf).await.unwrap();
            assert!(n > 0, "the CLI stopped early: {text}");
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("two lines from the CLI");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["key"], "cli/a");
    assert_eq!(lines[0]["value"], "1");
    assert_eq!(lines[1]["key"], "cli/b");
    let b_index = lines[1]["index"].as_u64().unwrap();
    assert!(lines[0]["index"].as_u64().unwrap() < b_index);

    // Two more changes push cli/a and cli/b out of the three-change history: a watch from
    // index 1 is answered 410 with the oldest index kept; the watcher already past them
    // goes on.
    c.put(1, "x1", "4").await.expect("put");
    c.put(1, "x2", "5").await.expect("put");
    let metrics = c.metrics(1).await;
    assert_eq!(
        support::sample(&metrics, "raftkit_kv_watch_history_changes"),
        Some(3.0),
        "{metrics}"
    );
    let r = c
        .http
        .get(c.url(1, "/watch/cli/?from=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::GONE);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().starts_with("compacted"),
        "{body}"
    );
    assert_eq!(body["oldest_index"].as_u64(), Some(b_index + 1), "{body}");
    // A bad `from` is a 400, not a stream.
    let r = c
        .http
        .get(c.url(1, "/watch/cli/?from=minus-one"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    c.put(1, "cli%2Fc", "6").await.expect("put");
    let read = async {
        use tokio::io::AsyncReadExt as _;
        let mut buf = [0u8; 4096];
        while !text.contains("cli/c") {
            let n = stdout.read(&mut buf).await.unwrap();
            assert!(n > 0, "the CLI stopped early: {text}");
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("a third line from the CLI");
    // Progress lines may come between; the changes are a, b, then c (x1, x2 are filtered).
    let keys: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter_map(|l| l["key"].as_str().map(str::to_string))
        .collect();
    assert_eq!(keys, ["cli/a", "cli/b", "cli/c"], "{text}");
    let _ = child.kill().await;
}
