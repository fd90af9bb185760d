//! The HTTP API's edges, against real processes: `/metrics`, 400 on bad input, 503 when no
//! leader answers, a clean exit 0 on SIGTERM with every acknowledged write kept, and client
//! sessions (`Raft-Session`, `Raft-Session-Seq`) applying a retried append once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use support::{raft_kv, sample, KvCluster, Transport};

/// The value of an unlabelled Prometheus sample `name` in `text`.
async fn expect_error(response: reqwest::Response, status: StatusCode, what: &str) -> String {
    assert_eq!(response.status(), status, "{what}");
    let body: Value = response.json().await.expect("a JSON error body");
    let reason = body["error"].as_str().expect("an error reason").to_string();
    assert!(!reason.is_empty(), "{what}: empty reason");
    eprintln!("{what}: {status} {reason}");
    reason
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_bad_input_and_no_leader() {
    let mut c = KvCluster::start(3, Transport::Grpc).await;
    let leader = c.leader(Duration::from_secs(10)).await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    for i in 0..20 {
        c.put(follower, &format!("m{i}"), "x").await.expect("put");
    }
    let got = c.get(follower, "m0", "linearizable").await.expect("read");
    assert_eq!(got.as_deref(), Some("x"));

    // /metrics: Prometheus text with the counters, histograms and gauges filled in.
    let response = c.http.get(c.url(leader, "/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.unwrap();
    for (name, at_least) in [
        ("raftkit_proposals_total", 20.0),
        ("raftkit_applied_entries_total", 20.0),
        ("raftkit_log_writes_total", 1.0),
        ("raftkit_log_write_seconds_count", 1.0),
        ("raftkit_commit_index", 20.0),
        ("raftkit_applied_index", 20.0),
        ("raftkit_is_leader", 1.0),
        ("raftkit_term", 1.0),
    ] {
        let value = sample(&text, name).unwrap_or_else(|| panic!("{name} missing:\n{text}"));
        assert!(
            value >= at_least,
            "{name} = {value}, expected >= {at_least}"
        );
    }
    for name in [
        "raftkit_leader_changes_total",
        "raftkit_snapshots_taken_total",
        "raftkit_snapshots_installed_total",
        "raftkit_proposal_seconds_count",
        "raftkit_read_seconds_count",
    ] {
        assert!(sample(&text, name).is_some(), "{name} missing:\n{text}");
    }
    assert!(text.contains("# TYPE raftkit_log_write_seconds histogram"));
    // The follower answered the client's proposals and read: its mailbox timed them.
    let text = c.metrics(follower).await;
    assert_eq!(sample(&text, "raftkit_is_leader"), Some(0.0));
    assert!(sample(&text, "raftkit_proposal_seconds_count").unwrap() >= 20.0);
    assert!(sample(&text, "raftkit_read_seconds_count").unwrap() >= 1.0);

    // 400 on bad input, each with a reason.
    let long_key = "k".repeat(2000);
    let r = c
        .http
        .put(c.url(follower, &format!("/kv/{long_key}")))
        .body("v")
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, "a 2000-byte key").await;
    let r = c
        .http
        .get(c.url(follower, "/kv/m0?consistency=sometimes"))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, "an unknown consistency").await;
    for body in [
        "not json",
        "{\"value\": 5}",
        "{\"expect\": null}",
        "[\"a\", \"b\"]",
    ] {
        let r = c
            .http
            .post(c.url(follower, "/kv/m0/cas"))
            .body(body)
            .send()
            .await
            .unwrap();
        expect_error(r, StatusCode::BAD_REQUEST, &format!("cas body {body}")).await;
    }
    let r = c
        .http
        .post(c.url(follower, "/cluster/remove/not-a-number"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "a non-numeric node id");
    // Nothing above changed the data.
    let got = c.get(leader, "m0", "linearizable").await.expect("read");
    assert_eq!(got.as_deref(), Some("x"));

    // 503 with a reason when no leader can answer: two of three nodes are gone.
    let survivor = follower;
    for id in (1..=3).filter(|&id| id != survivor) {
        c.kill9(id);
    }
    let started = Instant::now();
    let r = c
        .http
        .put(c.url(survivor, "/kv/lost"))
        .body("maybe")
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::SERVICE_UNAVAILABLE, "a write without quorum").await;
    let r = c.http.get(c.url(survivor, "/kv/m0")).send().await.unwrap();
    expect_error(
        r,
        StatusCode::SERVICE_UNAVAILABLE,
        "a linearizable read without quorum",
    )
    .await;
    let r = c
        .http
        .post(c.url(survivor, "/kv/m0/cas"))
        .body(r#"{"expect": "x", "value": "y"}"#)
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::SERVICE_UNAVAILABLE, "a cas without quorum").await;
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "the 503s came within the request deadlines ({:?})",
        started.elapsed()
    );
    // A stale read is still served locally.
    let got = c.get(survivor, "m0", "stale").await.expect("stale read");
    assert_eq!(got.as_deref(), Some("x"));
    c.assert_running(survivor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_and_exits_zero() {
    let mut c = KvCluster::start(3, Transport::Grpc).await;
    let leader = c.leader(Duration::from_secs(10)).await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();

    // Writers keep requests in flight through the follower while it gets SIGTERM.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (http, url, stop) = (c.http.clone(), c.url(follower, "/kv/"), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let key = format!("t{w}-{i}");
                i += 1;
                let sent = http.put(format!("{url}{key}")).body(key.clone()).send();
                match sent.await {
                    Ok(r) if r.status() == StatusCode::OK => acked.push(key),
                    Ok(_) => {}
                    // The node stopped listening: this writer is done.
                    Err(_) => break,
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let status = tokio::task::block_in_place(|| c.terminate(follower));
    stop.store(true, Ordering::SeqCst);
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM exits 0, got {status}; log:\n{}",
        c.log_tail(follower)
    );
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(acked.len() > 10, "the writers got through: {}", acked.len());
    eprintln!(
        "{} writes acknowledged through the stopped node",
        acked.len()
    );
    // Every write it acknowledged is in the cluster.
    for key in &acked {
        let got = c.get(leader, key, "linearizable").await.expect("read");
        assert_eq!(
            got.as_deref(),
            Some(key.as_str()),
            "acknowledged {key} lost"
        );
    }
    // It restarts from its data and rejoins.
    c.spawn(follower, None);
    c.wait_replicated(
        &acked[acked.len() - 1],
        Some(&acked[acked.len() - 1]),
        Duration::from_secs(20),
    )
    .await;
}

/// An append of `value` to `key` through node `id`, in session `(session, seq)` when given:
/// the status and the JSON body.
async fn append(
    c: &KvCluster,
    id: u64,
    key: &str,
    value: &str,
    session: Option<(&str, &str)>,
) -> (StatusCode, Value) {
    let mut request = c
        .http
        .post(c.url(id, &format!("/kv/{key}/append")))
        .body(value.to_string());
    if let Some((session, seq)) = session {
        request = request
            .header("Raft-Session", session)
            .header("Raft-Session-Seq", seq);
    }
    let response = request.send().await.expect("an answer");
    let status = response.status();
    (status, response.json().await.expect("a JSON body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_applies_a_retried_append_once() {
    let c = KvCluster::start(3, Transport::Grpc).await;
    let leader = c.leader(Duration::from_secs(10)).await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let session = "6148914691236517205";

    // Command 1, then its retry through another node: applied once, the first answer again.
    let (status, body) = append(&c, follower, "log", "a;", Some((session, "1"))).await;
    assert_eq!(
        (status, body["length"].as_u64()),
        (StatusCode::OK, Some(2)),
        "{body}"
    );
    let (status, body) = append(&c, leader, "log", "a;", Some((session, "1"))).await;
    assert_eq!(
        (status, body["length"].as_u64()),
        (StatusCode::OK, Some(2)),
        "{body}"
    );
    let got = c.get(leader, "log", "linearizable").await.expect("read");
    assert_eq!(got.as_deref(), Some("a;"), "the retry did not apply again");

    // Command 2 applies; a late copy of command 1 is refused (409, not applied).
    let (status, body) = append(&c, leader, "log", "b;", Some((session, "2"))).await;
    assert_eq!(
        (status, body["length"].as_u64()),
        (StatusCode::OK, Some(4)),
        "{body}"
    );
    let (status, body) = append(&c, follower, "log", "a;", Some((session, "1"))).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a stale command number: {body}"
    );
    assert_eq!(body["outcome"].as_str(), Some("not_applied"), "{body}");

    // Command 5 of a session the cluster never saw: 410, start a new session.
    let (status, body) = append(&c, follower, "log", "x;", Some(("12345", "5"))).await;
    assert_eq!(status, StatusCode::GONE, "{body}");
    assert_eq!(body["outcome"].as_str(), Some("not_applied"), "{body}");
    let reason = body["error"].as_str().unwrap_or_default();
    assert!(reason.contains("new session"), "{reason}");

    // Without a session the append works too (the node keeps the session itself).
    let (status, body) = append(&c, follower, "log", "c;", None).await;
    assert_eq!(
        (status, body["length"].as_u64()),
        (StatusCode::OK, Some(6)),
        "{body}"
    );

    // Malformed session headers: 400 on every write, and nothing applied.
    for (headers, what) in [
        (vec![("Raft-Session", "7")], "a session without a number"),
        (
            vec![("Raft-Session-Seq", "1")],
            "a number without a session",
        ),
        (
            vec![("Raft-Session", "0"), ("Raft-Session-Seq", "1")],
            "session 0",
        ),
        (
            vec![("Raft-Session", "7"), ("Raft-Session-Seq", "0")],
            "number 0",
        ),
        (
            vec![("Raft-Session", "seven"), ("Raft-Session-Seq", "1")],
            "not a number",
        ),
        (
            vec![("Raft-Session", "7"), ("Raft-Session-Seq", "-2")],
            "a negative number",
        ),
    ] {
        let requests = [
            c.http.post(c.url(follower, "/kv/log/append")).body("z;"),
            c.http.put(c.url(follower, "/kv/log")).body("z;"),
            c.http.delete(c.url(follower, "/kv/log")),
            c.http
                .post(c.url(follower, "/kv/log/cas"))
                .body(r#"{"expect": null, "value": "z;"}"#),
        ];
        for request in requests {
            let mut request = request;
            for (name, value) in &headers {
                request = request.header(*name, *value);
            }
            let r = request.send().await.unwrap();
            expect_error(r, StatusCode::BAD_REQUEST, what).await;
        }
    }
    let got = c.get(leader, "log", "linearizable").await.expect("read");
    assert_eq!(got.as_deref(), Some("a;b;c;"));

    // Put, CAS and delete take a session too.
    let put = |seq: &'static str| {
        c.http
            .put(c.url(follower, "/kv/other"))
            .header("Raft-Session", session)
            .header("Raft-Session-Seq", seq)
            .body("v")
    };
    assert_eq!(put("3").send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(put("3").send().await.unwrap().status(), StatusCode::OK);
    let r = put("2").send().await.unwrap();
    expect_error(r, StatusCode::CONFLICT, "a put with a stale number").await;

    // The CLI's append subcommand.
    let endpoint = c.url(follower, "");
    let (ok, stdout, stderr) = raft_kv(&[
        "append",
        "--endpoint",
        endpoint.trim_end_matches('/'),
        "log",
        "d;",
    ])
    .await;
    assert!(ok, "raft-kv append failed: {stderr}");
    assert_eq!(stdout.trim(), "OK, 8 bytes");
}
