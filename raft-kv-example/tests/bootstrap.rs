//! Static bootstrap and cluster identity against real `raft-kv` processes: founding nodes
//! started at the same instant form exactly one cluster, every time; a node holding another
//! cluster's state is refused with both cluster ids named.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{sample, KvCluster, Transport};

const ROUNDS: usize = 20;

/// Every node's status once all answer, agree on one leader and one cluster id, and list all
/// founders as voters; panics after `timeout` with what they said.
async fn wait_one_cluster(cluster: &KvCluster, n: u64, timeout: Duration) -> Vec<Value> {
    let want: Vec<u64> = (1..=n).collect();
    let deadline = Instant::now() + timeout;
    loop {
        let mut statuses = Vec::new();
        for id in 1..=n {
            statuses.push(cluster.status(id).await);
        }
        if statuses.iter().all(Option::is_some) {
            let statuses: Vec<Value> = statuses.into_iter().flatten().collect();
            let first = &statuses[0];
            let agreed = !first["leader_id"].is_null()
                && first["cluster_id"].as_str() != Some("0000000000000000")
                && statuses.iter().all(|s| {
                    s["leader_id"] == first["leader_id"]
                        && s["cluster_id"] == first["cluster_id"]
                        && serde_json::from_value::<Vec<u64>>(s["voters"].clone()).ok()
                            == Some(want.clone())
                        && s["learners"].as_array().is_some_and(Vec::is_empty)
                });
            if agreed {
                return statuses;
            }
            if Instant::now() > deadline {
                panic!("{n} founders did not form one cluster: {statuses:#?}");
            }
        } else if Instant::now() > deadline {
            panic!("not every founder answers: {statuses:#?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Starts `n` founders at once, `ROUNDS` times, and checks each time that exactly one cluster
/// with every founder as a voter formed, and that it takes writes on every node.
async fn start_together(n: u64) {
    let mut times = Vec::new();
    for round in 0..ROUNDS {
        let mut cluster = KvCluster::empty(Transport::Grpc);
        let started = Instant::now();
        cluster.start_founders(n, &format!("round-{round}"));
        let statuses = wait_one_cluster(&cluster, n, Duration::from_secs(60)).await;
        let formed = started.elapsed();
        let leader = statuses[0]["leader_id"].as_u64().unwrap();
        // Written through a node that may not lead, read back linearizably from every node.
        let key = format!("round-{round}");
        cluster.put(n, &key, "formed").await.unwrap();
        for id in 1..=n {
            assert_eq!(
                cluster
                    .get(id, &key, "linearizable")
                    .await
                    .unwrap()
                    .as_deref(),
                Some("formed"),
                "round {round}: node {id}"
            );
        }
        cluster.assert_no_panics();
        // Each founder bootstrapped from the list, or, if it started after the others had
        // already elected (a slow process start), joined them: one cluster either way.
        let mut joined = Vec::new();
        for id in 1..=n {
            let log = cluster.log_text(id);
            if log.contains("joining it instead of bootstrapping") {
                joined.push(id);
            } else {
                assert!(
                    log.contains("bootstrapped a new cluster"),
                    "round {round}: node {id} neither bootstrapped nor joined:\n{log}"
                );
            }
        }
        println!(
            "{n} founders, round {round}: one cluster {} with voters 1..={n}, leader {leader}, \
             formed {} ms after the first process started; joined late: {joined:?}",
            statuses[0]["cluster_id"].as_str().unwrap_or("?"),
            formed.as_millis()
        );
        times.push(formed);
    }
    times.sort();
    println!(
        "{n} founders started together {ROUNDS} times: one cluster every time; formed in \
         median {} ms, max {} ms",
        times[times.len() / 2].as_millis(),
        times[times.len() - 1].as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_founders_started_together_form_one_cluster_every_time() {
    start_together(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_founders_started_together_form_one_cluster_every_time() {
    start_together(5).await;
}

/// Node 3's disk replaced by the state of another cluster (started at node 3's own address):
/// the cluster's traffic to it is refused, naming both cluster ids, and the cluster goes on.
/// Node 3 led before, so node 1 may still forward a write there: the refusal is retried
/// until a new leader is known, not returned to the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_clusters_state_is_refused_naming_both_ids() {
    let mut cluster = KvCluster::empty(Transport::Grpc);
    cluster.start_founders(3, "ours");
    let statuses = wait_one_cluster(&cluster, 3, Duration::from_secs(60)).await;
    let ours = statuses[0]["cluster_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let three = cluster.status(3).await;
        let one = cluster.status(1).await;
        if three.is_some_and(|s| s["role"] == "leader")
            && one.is_some_and(|s| s["leader_id"] == serde_json::json!(3))
        {
            break;
        }
        // Refused while an election or another transfer runs: asked again next round.
        let _ = cluster.post(1, "/cluster/transfer-leader/3").await;
        assert!(Instant::now() < deadline, "node 3 never took the lead");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.terminate(3);

    // Another cluster's node 3, on this cluster's address for node 3.
    let other_dir = cluster.root.path().join("other-node-3");
    std::fs::rename(cluster.data_dir(3), &other_dir).unwrap();
    let raft3 = cluster.node(3).raft.clone();
    let alone = format!("3={raft3}");
    cluster.spawn_with(
        3,
        &[
            "--initial-cluster".to_string(),
            alone,
            "--initial-cluster-token".to_string(),
            "theirs".to_string(),
        ],
    );
    // Sent before nodes 1 and 2 elect a new leader: node 1 forwards it to node 3's address,
    // first unreachable, then the other cluster's node, until the election is over.
    cluster.put(1, "during", "the-election").await.unwrap();
    let theirs = cluster
        .wait_status(3, Duration::from_secs(30), |s| s["role"] == "leader")
        .await["cluster_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(ours, theirs);

    // The cluster's leader keeps sending to node 3's address; node 3 refuses every batch.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = cluster.log_text(3);
        if log.contains("cluster id mismatch") && log.contains(&ours) && log.contains(&theirs) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 3 never refused the other cluster by id:\n{}",
            cluster.log_tail(3)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = cluster.metrics(3).await;
    let refused = sample(
        &metrics,
        "raftkit_refused_messages_total{reason=\"cluster\"}",
    );
    assert!(refused.unwrap_or(0.0) > 0.0, "{metrics}");

    // Neither side was disturbed: node 3 leads only itself, the others still take writes.
    let three = cluster.status(3).await.unwrap();
    assert_eq!(three["voters"], serde_json::json!([3]));
    cluster.put(1, "after", "still-writable").await.unwrap();
    let one = cluster.status(1).await.unwrap();
    assert_eq!(one["cluster_id"].as_str(), Some(ours.as_str()));
    assert_eq!(one["voters"], serde_json::json!([1, 2, 3]));
    cluster.assert_no_panics();
}

/// A founder restarted with a different member list keeps its stored membership, says so in
/// its log, and the cluster is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_founder_with_state_ignores_a_changed_list_and_warns() {
    let mut cluster = KvCluster::empty(Transport::Grpc);
    cluster.start_founders(3, "kept");
    let before = wait_one_cluster(&cluster, 3, Duration::from_secs(60)).await;
    cluster.put(1, "k", "v").await.unwrap();
    cluster.terminate(2);
    let mut list: Vec<String> = (1..=3)
        .map(|id| format!("{id}={}", cluster.node(id).raft))
        .collect();
    list.push("4=127.0.0.1:9".to_string());
    cluster.spawn_with(
        2,
        &[
            "--initial-cluster".to_string(),
            list.join(","),
            "--initial-cluster-token".to_string(),
            "kept".to_string(),
        ],
    );
    let after = wait_one_cluster(&cluster, 3, Duration::from_secs(60)).await;
    assert_eq!(after[1]["cluster_id"], before[0]["cluster_id"]);
    let log = cluster.log_text(2);
    assert!(
        log.contains("the stored membership differs from the initial cluster given"),
        "{log}"
    );
    assert_eq!(
        cluster
            .get(2, "k", "linearizable")
            .await
            .unwrap()
            .as_deref(),
        Some("v")
    );
    cluster.assert_no_panics();
}

/// A founder that lost its disk and is started again with the same `--initial-cluster` does
/// not bootstrap a second time (it would be a voter that forgot its votes and log): it sees
/// the cluster has run, joins it as a new incarnation, and gets the data back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_founder_that_lost_its_disk_rejoins_instead_of_bootstrapping() {
    let mut cluster = KvCluster::empty(Transport::Grpc);
    cluster.start_founders(3, "disk");
    let before = wait_one_cluster(&cluster, 3, Duration::from_secs(60)).await;
    for i in 0..20 {
        cluster.put(1, &format!("k{i}"), "v").await.unwrap();
    }
    cluster.kill9(2);
    cluster.wipe(2);
    let list = (1..=3)
        .map(|id| format!("{id}={}", cluster.node(id).raft))
        .collect::<Vec<_>>()
        .join(",");
    cluster.spawn_with(
        2,
        &[
            "--initial-cluster".to_string(),
            list,
            "--initial-cluster-token".to_string(),
            "disk".to_string(),
        ],
    );
    let after = wait_one_cluster(&cluster, 3, Duration::from_secs(90)).await;
    assert_eq!(after[1]["cluster_id"], before[0]["cluster_id"]);
    let log = cluster.log_text(2);
    assert!(log.contains("joining it instead of bootstrapping"), "{log}");
    assert_eq!(
        log.matches("bootstrapped a new cluster").count(),
        1,
        "node 2 bootstrapped again:\n{log}"
    );
    for i in 0..20 {
        assert_eq!(
            cluster
                .get(2, &format!("k{i}"), "linearizable")
                .await
                .unwrap()
                .as_deref(),
            Some("v")
        );
    }
    cluster.assert_no_panics();
}
