//! `raft-kv member ...` against real processes: the member table (from a follower, and under
//! load), then a fourth node's whole life through the CLI: added as a learner, started with
//! `--join`, promoted, given leadership, removed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{raft_kv, KvCluster, Transport};

/// One row of the `member list` table.
#[derive(Debug, Clone)]
struct Row {
    id: u64,
    addr: String,
    /// `voter` or `learner`.
    role: String,
    leader: bool,
    matched: Option<u64>,
    lag: Option<u64>,
    state: String,
    contact: String,
}

fn endpoint(c: &KvCluster, id: u64) -> String {
    format!("http://{}", c.node(id).http)
}

/// `raft-kv member <args> --endpoint <node id's endpoint>`, which must succeed.
async fn member(c: &KvCluster, via: u64, args: &[&str]) -> String {
    let ep = endpoint(c, via);
    let mut all = vec!["member"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--endpoint", &ep]);
    let (ok, stdout, stderr) = raft_kv(&all).await;
    assert!(ok, "raft-kv {all:?} failed:\n{stdout}{stderr}");
    stdout
}

fn parse(table: &str) -> Vec<Row> {
    let mut lines = table.lines();
    assert!(
        lines.next().is_some_and(|l| l.starts_with("leader ")),
        "{table}"
    );
    assert!(
        lines.next().is_some_and(|l| l.starts_with("ID ")),
        "{table}"
    );
    lines
        .map(|line| {
            let mut cells: Vec<&str> = line.split_whitespace().collect();
            let leader = cells.get(3) == Some(&"(leader)");
            if leader {
                cells.remove(3);
            }
            assert_eq!(cells.len(), 7, "row {line:?} of\n{table}");
            Row {
                id: cells[0].parse().unwrap(),
                addr: cells[1].to_string(),
                role: cells[2].to_string(),
                leader,
                matched: cells[3].parse().ok(),
                lag: cells[4].parse().ok(),
                state: cells[5].to_string(),
                contact: cells[6].to_string(),
            }
        })
        .collect()
}

/// `member list` through `via` until `done` holds for its rows; returns the last table.
async fn list_until(
    c: &KvCluster,
    via: u64,
    what: &str,
    done: impl Fn(&[Row]) -> bool,
) -> (String, Vec<Row>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let table = member(c, via, &["list"]).await;
        let rows = parse(&table);
        if done(&rows) {
            return (table, rows);
        }
        assert!(Instant::now() < deadline, "{what}; last table:\n{table}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn row(rows: &[Row], id: u64) -> &Row {
    rows.iter().find(|r| r.id == id).expect("member listed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_cli_lists_progress_and_changes_membership() {
    let mut c = KvCluster::start(3, Transport::Grpc).await;
    c.put(1, "k", "v").await.expect("put");
    let leader = c.leader(Duration::from_secs(10)).await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();

    // From a follower: all three members, the leader marked, everyone caught up.
    let (table, rows) = list_until(&c, follower, "members caught up", |rows| {
        rows.len() == 3 && rows.iter().all(|r| r.lag.is_some_and(|l| l <= 2))
    })
    .await;
    println!("member list via follower {follower}:\n{table}");
    for r in &rows {
        assert_eq!(r.addr, c.node(r.id).raft, "{table}");
        assert_eq!(r.role, "voter", "{table}");
        assert_eq!(r.leader, r.id == leader, "{table}");
        assert!(r.matched.is_some_and(|m| m > 1), "{table}");
        if r.id == leader {
            assert_eq!(r.contact, "-", "{table}");
        } else {
            assert_eq!(r.state, "replicate", "{table}");
            let ms: u64 = r.contact.parse().expect("a last contact in ms");
            assert!(ms < 5_000, "{table}");
        }
    }

    // Under load: every member's matched index advances between two listings.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    // Four writers, one sequential put after another each, through every node.
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let (stop, acked, http) = (stop.clone(), acked.clone(), c.http.clone());
            let url = format!("http://{}/kv", c.node(1 + w % 3).http);
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let ok = http
                        .put(format!("{url}/load-{w}-{n}"))
                        .body(format!("value-{n}"))
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 200);
                    if ok {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let (first_table, first) = list_until(&c, follower, "writes under way", |_| {
        acked.load(Ordering::Relaxed) >= 20
    })
    .await;
    let (second_table, _) = list_until(&c, follower, "matched indexes advance", |rows| {
        rows.len() == 3 && rows.iter().all(|r| r.matched > row(&first, r.id).matched)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    println!("member list under load:\n{first_table}\nthen:\n{second_table}");
    assert!(acked.load(Ordering::Relaxed) >= 20);

    // A malformed address is refused before it reaches raft.
    let ep = endpoint(&c, follower);
    let (ok, _, stderr) = raft_kv(&[
        "member",
        "add-learner",
        "9",
        "no address",
        "--endpoint",
        &ep,
    ])
    .await;
    assert!(!ok && stderr.contains("host:port"), "{stderr}");

    // Node 4: added as a learner, then started; it catches up and stays a learner.
    c.add(4);
    let raft4 = c.node(4).raft.clone();
    let out = member(&c, follower, &["add-learner", "4", &raft4]).await;
    assert!(out.contains("learner"), "{out}");
    c.spawn(4, Some(follower));
    let (table, rows) = list_until(&c, follower, "learner 4 caught up", |rows| {
        rows.len() == 4
            && rows
                .iter()
                .any(|r| r.id == 4 && r.role == "learner" && r.lag == Some(0))
    })
    .await;
    println!("member list with learner 4:\n{table}");
    assert_eq!(row(&rows, 4).addr, raft4);
    // Caught up, it still does not vote: only `promote` makes it a voter.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let table = member(&c, follower, &["list"]).await;
    assert_eq!(row(&parse(&table), 4).role, "learner", "{table}");
    c.assert_running(4);

    member(&c, follower, &["promote", "4"]).await;
    c.wait_voters(&[1, 2, 3, 4], Duration::from_secs(30)).await;
    c.put(4, "through-4", "yes").await.expect("node 4 serves");

    let out = member(&c, follower, &["transfer-leader", "4"]).await;
    assert!(out.contains("node 4 leads"), "{out}");
    let (table, _) = list_until(&c, follower, "node 4 leads", |rows| {
        rows.len() == 4 && row(rows, 4).leader
    })
    .await;
    println!("member list after the transfer to node 4:\n{table}");
    assert_eq!(c.leader(Duration::from_secs(10)).await, 4);

    // Removing the leader: it hands over leadership, leaves, and its process stops.
    member(&c, follower, &["remove", "4"]).await;
    c.wait_voters(&[1, 2, 3], Duration::from_secs(30)).await;
    let exit = c.wait_exit(4, Duration::from_secs(30)).await;
    assert!(exit.success(), "node 4 exited with {exit}");
    let (table, rows) =
        list_until(&c, follower, "three members again", |rows| rows.len() == 3).await;
    println!("member list after removing node 4:\n{table}");
    assert!(rows.iter().all(|r| r.id != 4));
    c.put(1, "after", "removal")
        .await
        .expect("the cluster serves");
    c.assert_no_panics();
}
