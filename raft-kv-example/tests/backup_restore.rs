//! `raft-kv snapshot save` / `snapshot restore` against real processes: a backup taken under
//! write load holds every write acknowledged before the save began, restores into a new
//! one-node cluster that others join, and damaged files or used data dirs are refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{raft_kv, KvCluster, Transport};

/// One put of the load: `k{i}` = `v{i}`.
#[derive(Clone, Copy, Debug)]
struct Write {
    i: u64,
    invoked: Instant,
    acked: Option<Instant>,
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temp path")
}

/// Starts `writers` tasks putting k0, k1, ... through the given HTTP endpoints, recording
/// every write with when it was invoked and acknowledged.
fn start_load(
    http: reqwest::Client,
    endpoints: Vec<String>,
    log: Arc<Mutex<Vec<Write>>>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let next = Arc::new(AtomicU64::new(0));
    endpoints
        .into_iter()
        .map(|base| {
            let (http, log, stop, next) = (http.clone(), log.clone(), stop.clone(), next.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let invoked = Instant::now();
                    let ok = http
                        .put(format!("{base}/kv/k{i}"))
                        .body(format!("v{i}"))
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 200);
                    log.lock().unwrap().push(Write {
                        i,
                        invoked,
                        acked: ok.then(Instant::now),
                    });
                    if !ok {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect()
}

async fn wait_acked(log: &Mutex<Vec<Write>>, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let acked = log
            .lock()
            .unwrap()
            .iter()
            .filter(|w| w.acked.is_some())
            .count();
        if acked >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {acked} writes acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_into_a_new_cluster() {
    let mut cluster = KvCluster::start(3, Transport::Grpc).await;
    let leader = cluster.leader(Duration::from_secs(30)).await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();

    let log: Arc<Mutex<Vec<Write>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let endpoints = vec![cluster.url(1, ""), cluster.url(2, "")];
    let writers = start_load(cluster.http.clone(), endpoints, log.clone(), stop.clone());
    wait_acked(&log, 40).await;

    // The save goes through a follower (its ReadIndex goes to the leader) while writes go on.
    let backup_file = cluster.root.path().join("cluster.backup");
    let endpoint = cluster.url(follower, "");
    let save_began = Instant::now();
    let (ok, stdout, stderr) = raft_kv(&[
        "snapshot",
        "save",
        path_str(&backup_file),
        "--endpoint",
        &endpoint,
    ])
    .await;
    let save_ended = Instant::now();
    assert!(ok, "snapshot save failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("saved a backup at index"), "{stdout}");
    let acked_so_far = log
        .lock()
        .unwrap()
        .iter()
        .filter(|w| w.acked.is_some())
        .count();
    wait_acked(&log, acked_so_far + 20).await;
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await.unwrap();
    }
    let writes = log.lock().unwrap().clone();
    let before: Vec<u64> = writes
        .iter()
        .filter(|w| w.acked.is_some_and(|t| t < save_began))
        .map(|w| w.i)
        .collect();
    let after: Vec<u64> = writes
        .iter()
        .filter(|w| w.acked.is_some() && w.invoked > save_ended)
        .map(|w| w.i)
        .collect();
    assert!(
        before.len() >= 40 && !after.is_empty(),
        "{before:?} {after:?}"
    );
    eprintln!(
        "{} writes acknowledged before the save began, {} invoked after it ended, save took {:?}",
        before.len(),
        after.len(),
        save_ended - save_began
    );

    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&backup_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the backup file is private");
        let mut part = backup_file.as_os_str().to_owned();
        part.push(".part");
        assert!(!Path::new(&part).exists(), "no .part file is left behind");
    }
    // The old cluster is done with: the new one must not need it.
    for id in 1..=3 {
        cluster.kill9(id);
    }

    // A damaged backup is refused before anything is written.
    let mut bytes = std::fs::read(&backup_file).unwrap();
    // Inside the state, just before the checksum.
    let at = bytes.len() - 10;
    bytes[at] ^= 0x40;
    let damaged = cluster.root.path().join("damaged.backup");
    std::fs::write(&damaged, &bytes).unwrap();
    cluster.add(4);
    let (raft4, dir4) = (
        cluster.node(4).raft.clone(),
        cluster.data_dir(4).to_path_buf(),
    );
    let restore_args = |file: &Path| -> Vec<String> {
        [
            "snapshot",
            "restore",
            path_str(file),
            "--id",
            "4",
            "--raft-addr",
            &raft4,
            "--data-dir",
            path_str(&dir4),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let args = restore_args(&damaged);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, stderr) = raft_kv(&args).await;
    assert!(!ok, "a damaged backup was restored");
    assert!(
        stderr.contains("is not a usable backup") && stderr.contains("corrupt"),
        "{stderr}"
    );
    assert!(!dir4.exists(), "a refused restore leaves no data dir");

    // The real one prepares node 4's data dir ...
    let args = restore_args(&backup_file);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, stdout, stderr) = raft_kv(&args).await;
    assert!(ok, "restore failed:\n{stdout}\n{stderr}");
    // ... once: a dir that holds state is never overwritten.
    let (ok, _, stderr) = raft_kv(&args).await;
    assert!(!ok, "a restore over a node's state succeeded");
    assert!(stderr.contains("already holds files"), "{stderr}");

    // Node 4 starts from it as a one-node cluster; 5 and 6 join it.
    cluster.spawn(4, None);
    cluster
        .wait_status(4, Duration::from_secs(60), |s| s["leader_id"] == 4)
        .await;
    for id in [5, 6] {
        cluster.add(id);
        cluster.spawn(id, Some(4));
    }
    cluster
        .wait_voters(&[4, 5, 6], Duration::from_secs(90))
        .await;
    let status = cluster.status(4).await.unwrap();
    let members: Vec<String> = status["members"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(members, ["4", "5", "6"], "{status}");

    // Every running node (4, 5 and 6) holds every write acknowledged before the save.
    for i in &before {
        let (key, value) = (format!("k{i}"), format!("v{i}"));
        cluster
            .wait_replicated(&key, Some(&value), Duration::from_secs(60))
            .await;
    }
    for id in [4, 5, 6] {
        for i in &after {
            assert_eq!(
                cluster.get(id, &format!("k{i}"), "stale").await,
                Ok(None),
                "k{i}, written after the save ended, on node {id}"
            );
        }
    }
    // The new cluster takes writes.
    cluster.put(5, "after-restore", "yes").await.unwrap();
    assert_eq!(
        cluster.get(6, "after-restore", "linearizable").await,
        Ok(Some("yes".to_string()))
    );
    cluster.assert_no_panics();
}
