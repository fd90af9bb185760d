//! A node far behind catches up through a chunked snapshot after the log was compacted; a
//! backup taken under writes starts a new cluster holding every acknowledged write.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use raft_core::testing::cluster::{seed, test_config, TestCluster};
use raft_core::testing::kv::padding;
use raft_core::testing::linearizability::{assert_linearizable, History};
use raft_core::Config;
use support::init_tracing;

const KEYS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_node_catches_up_through_a_chunked_snapshot() {
    init_tracing();
    let seed = seed("lagging_node_catches_up_through_a_chunked_snapshot");
    let config = Config {
        snapshot_threshold: 50,
        snapshot_log_tail: 10,
        // Many chunks per snapshot: the snapshot below is tens of KiB.
        snapshot_chunk_size: 1024,
        ..test_config()
    };
    let cluster = TestCluster::start(3, config, seed).await;
    let history = History::new();
    cluster
        .run_workload(&history, 4, KEYS, Duration::from_millis(300), seed)
        .await;
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await;
    let lagging = (1..=3).find(|&id| id != leader).expect("a follower");
    let before = cluster.mailbox(lagging).status().await.expect("status");
    cluster.crash(lagging).await;

    // Keys k100.. hold big values so the snapshot needs many chunks.
    let mailbox = cluster.mailbox(leader);
    for i in 0..300 {
        mailbox
            .send_proposal(padding(200))
            .await
            .expect("padding write");
        if i % 10 == 0 {
            let key = format!("k{}", 100 + i / 10);
            let op = raft_core::testing::linearizability::KvOp::Put {
                key,
                value: "v".repeat(1000),
            };
            mailbox
                .send_proposal(raft_core::testing::kv::encode_op(&op))
                .await
                .expect("big write");
        }
    }
    let leader_status = mailbox.status().await.expect("status");
    assert!(
        leader_status.first_log_index > before.last_log_index + 1,
        "the leader compacted past the lagging node: first {} vs lagging last {}",
        leader_status.first_log_index,
        before.last_log_index
    );

    cluster.restart(lagging).await;
    cluster.wait_converged(Duration::from_secs(15)).await;
    let status = cluster.mailbox(lagging).status().await.expect("status");
    assert!(
        status.snapshot_index > before.last_log_index,
        "the lagging node installed a snapshot: {status:?}"
    );
    cluster
        .run_workload(&history, 4, KEYS, Duration::from_millis(300), seed + 1)
        .await;
    cluster.wait_converged(Duration::from_secs(10)).await;
    cluster.final_reads(&history, KEYS).await;
    assert_linearizable(&history);
    // Every replica agrees on the big keys too.
    cluster.assert_replicas_agree(KEYS).await;
    for k in 100..130 {
        let get = raft_core::testing::linearizability::KvOp::Get {
            key: format!("k{k}"),
        };
        let bytes = cluster
            .mailbox(lagging)
            .query_with(
                raft_core::testing::kv::encode_op(&get),
                raft_core::ReadConsistency::Stale,
            )
            .await
            .expect("stale read");
        assert_eq!(
            raft_core::testing::kv::decode_value(&bytes).expect("value"),
            Some("v".repeat(1000)),
            "k{k} on the caught-up node"
        );
    }
    cluster.assert_no_pending(Duration::from_secs(5)).await;
    cluster.shutdown().await;
}

/// The value node `mailbox` holds for `key`, from its own state.
async fn stale_get(mailbox: &raft_core::Mailbox, key: &str) -> Option<String> {
    use raft_core::testing::kv::{decode_value, encode_op};
    use raft_core::testing::linearizability::KvOp;
    let query = encode_op(&KvOp::Get {
        key: key.to_string(),
    });
    let bytes = mailbox
        .query_with(query, raft_core::ReadConsistency::Stale)
        .await
        .expect("stale read");
    decode_value(&bytes).expect("a value")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_writes_restores_into_a_new_cluster() {
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use raft_core::testing::kv::{encode_op, KvStore};
    use raft_core::testing::linearizability::KvOp;
    use raft_core::{restore_backup, Backup, LocalNetwork, MemLogStorage, Raft};

    init_tracing();
    let seed = seed("a_backup_under_writes_restores_into_a_new_cluster");
    let config = test_config();
    let cluster = TestCluster::start(3, config.clone(), seed).await;
    let old_cluster_id = cluster
        .mailbox(1)
        .status()
        .await
        .expect("status")
        .cluster_id;

    // One writer puts w{i} = v{i} in order, through node 1, and records what was acknowledged.
    let acked: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let invoked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, invoked, stop) = (acked.clone(), invoked.clone(), stop.clone());
        let mailbox = cluster.mailbox(1);
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                invoked.store(i, Ordering::SeqCst);
                let op = KvOp::Put {
                    key: format!("w{i}"),
                    value: format!("v{i}"),
                };
                if mailbox.send_proposal(encode_op(&op)).await.is_ok() {
                    acked.lock().unwrap().insert(i);
                }
                i += 1;
            }
        })
    };
    let wait_acked = |n: usize| {
        let acked = acked.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while acked.lock().unwrap().len() < n {
                assert!(std::time::Instant::now() < deadline, "writes stalled");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_acked(30).await;

    // Through a follower: its ReadIndex goes to the leader.
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await;
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    let before: BTreeSet<u64> = acked.lock().unwrap().clone();
    let backup = cluster.mailbox(follower).backup().await.expect("backup");
    let invoked_after = invoked.load(Ordering::SeqCst);
    // Counted from now, not from `before`: a slow backup may already have seen 20 writes
    // acknowledged, and every write acknowledged from here on started no earlier than the
    // one in flight now, so all but that one started after the backup.
    let acked_at_backup = acked.lock().unwrap().len();
    wait_acked(acked_at_backup + 20).await;
    stop.store(true, Ordering::SeqCst);
    writer.await.expect("writer");
    let written_later: Vec<u64> = acked
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|&i| i > invoked_after)
        .collect();
    assert!(!written_later.is_empty(), "writes went on after the backup");
    assert_eq!(
        backup.members.keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    // Through the file format and back.
    let backup = Backup::from_bytes(&backup.to_bytes().expect("encode")).expect("decode");
    cluster.shutdown().await;

    // A new cluster on a new network: node 11 from the backup, 12 and 13 join it.
    let network = LocalNetwork::new();
    let storage = MemLogStorage::new();
    restore_backup(&storage, 11, "new-11", &backup).expect("restore");
    let raft = Raft::builder(11, KvStore::new())
        .raft_addr("new-11")
        .transport(network.transport_as(11))
        .log_storage(storage.clone())
        .config(config.clone())
        .build()
        .expect("node 11");
    let first = raft.mailbox();
    let mut tasks = vec![tokio::spawn(raft.lead())];
    // The restored node leads a cluster of one at once.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = first.status().await.expect("status");
        if s.leader_id == Some(11) {
            assert_eq!(s.voters, vec![11]);
            assert!(s.applied_index >= backup.index, "{s:?}");
            assert_ne!(s.cluster_id, 0);
            assert_ne!(
                s.cluster_id, old_cluster_id,
                "a restored cluster is a new cluster"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node 11 never led: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A second restore into the same storage is refused.
    let e = restore_backup(&storage, 11, "new-11", &backup).expect_err("non-empty storage");
    assert!(e.to_string().contains("already holds state"), "{e}");

    let mut mailboxes = vec![first.clone()];
    for id in [12, 13] {
        let raft = Raft::builder(id, KvStore::new())
            .raft_addr(format!("new-{id}"))
            .transport(network.transport_as(id))
            .config(config.clone())
            .build()
            .expect("joiner");
        mailboxes.push(raft.mailbox());
        tasks.push(tokio::spawn(raft.join(11, "new-11")));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = first.status().await.expect("status");
        if s.voters == vec![11, 12, 13] && s.learners.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never 3 voters: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let last = *before.iter().next_back().expect("writes before the backup");
    for mailbox in &mailboxes {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while stale_get(mailbox, &format!("w{last}")).await.is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "node {} never caught up",
                mailbox.id()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for &i in &before {
            assert_eq!(
                stale_get(mailbox, &format!("w{i}")).await,
                Some(format!("v{i}")),
                "w{i}, acknowledged before the backup, on node {}",
                mailbox.id()
            );
        }
        for &i in &written_later {
            assert_eq!(
                stale_get(mailbox, &format!("w{i}")).await,
                None,
                "w{i}, written after the backup, on node {}",
                mailbox.id()
            );
        }
    }
    // The new cluster takes writes.
    let op = KvOp::Put {
        key: "after".into(),
        value: "restore".into(),
    };
    mailboxes[2]
        .send_proposal(encode_op(&op))
        .await
        .expect("write");
    let get = encode_op(&KvOp::Get {
        key: "after".into(),
    });
    let bytes = mailboxes[1].query(get).await.expect("read");
    assert_eq!(
        raft_core::testing::kv::decode_value(&bytes).expect("value"),
        Some("restore".into())
    );
    for mailbox in &mailboxes {
        mailbox.shutdown().await;
    }
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
}
