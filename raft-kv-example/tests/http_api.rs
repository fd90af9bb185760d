//! The HTTP API's edges, against real processes: `/metrics`, 400 on bad input, 503 when no
//! leader answers, and a clean exit 0 on SIGTERM with every acknowledged write kept.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use support::{sample, KvCluster, Transport};

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
