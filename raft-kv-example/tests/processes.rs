//! raft-kv as real processes on loopback: every node serves, the leader is SIGKILLed under
//! load and restarted, the whole cluster is SIGKILLed and restarted, membership changes, and
//! the `cluster` command. Nothing acknowledged may be lost.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{KvCluster, Transport};

/// Writes through every node, reads back through every node (linearizable).
async fn every_node_serves(c: &KvCluster, n: u64) {
    for id in 1..=n {
        c.put(id, &format!("via-{id}"), &format!("v{id}"))
            .await
            .expect("put");
        for reader in 1..=n {
            let got = c
                .get(reader, &format!("via-{id}"), "linearizable")
                .await
                .expect("get");
            assert_eq!(
                got.as_deref(),
                Some(format!("v{id}").as_str()),
                "node {reader} reads via-{id}"
            );
        }
    }
}

async fn check_acked(c: &KvCluster, acked: &[(String, String)]) {
    let leader = c.leader(Duration::from_secs(20)).await;
    for (key, value) in acked {
        let got = c
            .get(leader, key, "linearizable")
            .await
            .expect("read after recovery");
        assert_eq!(
            got.as_deref(),
            Some(value.as_str()),
            "acknowledged write {key} lost"
        );
    }
    // Every node converges to the same state.
    if let Some((key, value)) = acked.last() {
        c.wait_replicated(key, Some(value), Duration::from_secs(20))
            .await;
    }
    for node in &c.nodes {
        if node.child.is_some() {
            for (key, value) in acked.iter().step_by(7) {
                let got = c.get(node.id, key, "stale").await.expect("stale read");
                assert_eq!(
                    got.as_deref(),
                    Some(value.as_str()),
                    "node {} diverged on {key}",
                    node.id
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_cluster_survives_leader_sigkill() {
    scenario_leader_kill(Transport::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_cluster_survives_leader_sigkill() {
    scenario_leader_kill(Transport::Quic).await;
}

/// The cluster lives behind a mutex so writers and the nemesis can share it.
async fn scenario_leader_kill(transport: Transport) {
    let c = KvCluster::start(3, transport).await;
    every_node_serves(&c, 3).await;
    let leader = c.leader(Duration::from_secs(10)).await;
    let endpoints: Vec<String> = c.nodes.iter().map(|n| n.http.clone()).collect();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Instant::now() + Duration::from_secs(6);
    let http = c.http.clone();
    let mut writers = Vec::new();
    for w in 0..6usize {
        let (endpoints, acked, http) = (endpoints.clone(), acked.clone(), http.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0usize;
            while Instant::now() < stop {
                n += 1;
                let endpoint = &endpoints[(w + n) % endpoints.len()];
                let (key, value) = (format!("w{w}-{n}"), format!("value-{w}-{n}"));
                let ok = http
                    .put(format!("http://{endpoint}/kv/{key}"))
                    .body(value.clone())
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                if ok {
                    acked.lock().unwrap().push((key, value));
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut c = c;
    c.kill9(leader);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.spawn(leader, None);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "the cluster kept taking writes: {}",
        acked.len()
    );
    for id in 1..=3 {
        c.assert_running(id);
    }
    check_acked(&c, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cluster_sigkill_and_restart_loses_nothing() {
    let mut c = KvCluster::start(3, Transport::Grpc).await;
    let mut acked = Vec::new();
    for i in 0..150 {
        let (key, value) = (format!("k{i}"), format!("v{i}"));
        c.put(i % 3 + 1, &key, &value).await.expect("put");
        acked.push((key, value));
    }
    for id in 1..=3 {
        c.kill9(id);
    }
    for id in 1..=3 {
        c.spawn(id, None);
    }
    check_acked(&c, &acked).await;
    c.put(1, "after-restart", "yes")
        .await
        .expect("serves again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_leave_remove_and_rejoin() {
    let mut c = KvCluster::start(3, Transport::Grpc).await;
    c.put(1, "before", "joins").await.expect("put");
    c.add(4);
    c.spawn(4, Some(2));
    c.wait_voters(&[1, 2, 3, 4], Duration::from_secs(30)).await;
    c.wait_replicated("before", Some("joins"), Duration::from_secs(10))
        .await;

    let leader = c.leader(Duration::from_secs(10)).await;
    let follower = (1..=4).find(|&id| id != leader).unwrap();
    c.post(follower, "/cluster/leave")
        .await
        .expect("follower leaves");
    assert!(c
        .wait_exit(follower, Duration::from_secs(15))
        .await
        .success());
    let mut voters: Vec<u64> = (1..=4).filter(|&id| id != follower).collect();
    c.wait_voters(&voters, Duration::from_secs(20)).await;

    c.post(leader, "/cluster/leave")
        .await
        .expect("leader leaves");
    assert!(c.wait_exit(leader, Duration::from_secs(15)).await.success());
    voters.retain(|&id| id != leader);
    c.wait_voters(&voters, Duration::from_secs(20)).await;

    // Remove a node, wipe its data dir, and let it join again under the same id.
    let (keep, removed) = (voters[0], voters[1]);
    c.post(keep, &format!("/cluster/remove/{removed}"))
        .await
        .expect("remove");
    c.wait_voters(&[keep], Duration::from_secs(20)).await;
    c.kill9(removed);
    std::fs::remove_dir_all(c.data_dir(removed)).unwrap();
    c.spawn(removed, Some(keep));
    let mut both = vec![keep, removed];
    both.sort_unstable();
    c.wait_voters(&both, Duration::from_secs(30)).await;
    c.put(removed, "after", "rejoin")
        .await
        .expect("put through the rejoined node");
    c.wait_replicated("after", Some("rejoin"), Duration::from_secs(10))
        .await;
    c.wait_replicated("before", Some("joins"), Duration::from_secs(10))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_command_serves_and_stops_on_sigint() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    // A base port whose 2 x 3 ports are free.
    let base = loop {
        let p = support::free_port();
        if p < 60000
            && (1..=3).all(|i| {
                std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()
                    && std::net::TcpListener::bind(("127.0.0.1", p + 100 + i)).is_ok()
            })
        {
            break p;
        }
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_raft-kv"))
        .args([
            "cluster",
            "--nodes",
            "3",
            "--base-port",
            &base.to_string(),
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let done = line.contains("Ctrl-C stops");
            seen.push(line);
            if done {
                break;
            }
        }
        seen
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    while !lines.is_finished() {
        assert!(
            Instant::now() < deadline,
            "raft-kv cluster never became ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let printed = lines.join().unwrap();
    let endpoint = printed
        .iter()
        .find_map(|l| l.split_whitespace().find(|w| w.starts_with("http://")))
        .expect("an endpoint is printed")
        .to_string();
    let http = reqwest::Client::new();
    let put = http
        .put(format!("{endpoint}/kv/hello"))
        .body("world")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let got = http
        .get(format!("{endpoint}/kv/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.text().await.unwrap(), "world");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "raft-kv cluster ignored SIGINT");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status}");
    // The children are gone: nothing answers on their ports.
    for i in 1..=3 {
        let addr = format!("127.0.0.1:{}", base + 100 + i);
        assert!(
            std::net::TcpStream::connect(&addr).is_err(),
            "node {i} still serves {addr}"
        );
    }
}
