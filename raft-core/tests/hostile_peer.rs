//! A hostile peer on the cluster's network sends random and mutated raft messages, snapshot
//! chunks and calls while clients run. No node stops, the history stays linearizable, the
//! replicas agree, and every refusal is counted.
//!
//! Two attackers: an outsider that authenticated as node 66 (a certificate of the cluster's CA
//! for a node that is not a member) sends anything at all under any id; an unauthenticated
//! impostor (a plaintext network) sends, under the leader's id, the messages that each
//! stopped a node before raftkit checked its input.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use raft_core::testing::cluster::{seed, test_config, TestCluster};
use raft_core::testing::hostile::HostilePeer;
use raft_core::testing::linearizability::{assert_linearizable, History};
use raft_core::wire::{request, LeaderInfoRequest, RaftBatch, Request, StatusRequest};
use raft_core::RaftCodec as _;
use raft_core::Transport;
use rand::Rng;
use support::init_tracing;

const KEYS: usize = 4;
/// Raft messages the attackers send in all.
const MESSAGES: usize = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_peer_cannot_stop_or_corrupt_the_cluster() {
    init_tracing();
    let seed = seed("hostile_peer");
    let cluster = TestCluster::start(3, test_config(), seed).await;
    cluster.faults().record(512);
    let history = History::new();
    let load = {
        let (cluster, history) = (cluster.clone(), history.clone());
        tokio::spawn(async move {
            cluster
                .run_workload(&history, 6, KEYS, Duration::from_secs(25), seed)
                .await
        })
    };
    // Let some real traffic be recorded, to mutate.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut hostile = HostilePeer::new(seed);
    let outsider = cluster.network().transport_as(66);
    let impostor = cluster.network().transport();
    let mut sent = 0usize;
    let mut batches = 0usize;
    let attack = std::time::Instant::now();
    while sent < MESSAGES {
        let captured = cluster.faults().recorded_batches();
        let target = hostile.rng().gen_range(1..=3u64);
        let addr = cluster.addr(target);
        let roll = hostile.rng().gen_range(0..100);
        if roll < 85 {
            // The outsider, mostly as itself, sometimes claiming a member's id.
            let from = if hostile.rng().gen_bool(0.8) {
                66
            } else {
                hostile.rng().gen_range(0..5)
            };
            let to = if hostile.rng().gen_bool(0.95) {
                target
            } else {
                hostile.rng().gen()
            };
            let batch = hostile.batch(&captured, from, to);
            sent += batch.messages.len();
            let _ = outsider.send(&addr, batch).await;
        } else if roll < 95 {
            // The impostor speaks for the leader, with the messages that used to be fatal.
            let statuses = cluster.statuses().await;
            let Some(leader) = statuses.values().find_map(|s| s.leader_id) else {
                continue;
            };
            if leader == target {
                continue;
            }
            let Some(status) = statuses.get(&target) else {
                continue;
            };
            let messages: Vec<_> = hostile
                .fatal_messages(leader, target, status.term, status.last_log_index)
                .iter()
                .map(|m| m.encode_to_vec().into())
                .collect();
            sent += messages.len();
            let batch = RaftBatch {
                cluster_id: 0,
                from: leader,
                to: target,
                messages,
                from_addr: cluster.addr(leader),
            };
            let _ = impostor.send(&addr, batch).await;
            for chunk in hostile.inconsistent_snapshot_chunks(leader, target, status.term) {
                let request = Request {
                    cluster_id: 0,
                    kind: Some(request::Kind::SnapshotChunk(chunk)),
                };
                let _ = impostor.call(&addr, request, Duration::from_secs(5)).await;
            }
        } else {
            // Chunks and calls from the outsider.
            let from = if hostile.rng().gen_bool(0.5) {
                66
            } else {
                hostile.rng().gen_range(1..=3)
            };
            let kind = match hostile.rng().gen_range(0..3) {
                0 => request::Kind::SnapshotChunk(hostile.random_chunk(from, target)),
                1 => request::Kind::LeaderInfo(LeaderInfoRequest {}),
                _ => request::Kind::Status(StatusRequest {}),
            };
            let _ = outsider
                .call(
                    &addr,
                    Request {
                        cluster_id: 0,
                        kind: Some(kind),
                    },
                    Duration::from_secs(5),
                )
                .await;
        }
        batches += 1;
        if batches % 64 == 0 {
            cluster.assert_alive();
            // Leave the nodes some room: an attacker this fast gets its share, not all.
            tokio::task::yield_now().await;
        }
    }
    eprintln!(
        "hostile_peer: {sent} messages in {batches} sends, {:?}",
        attack.elapsed()
    );

    let stats = load.await.expect("workload");
    eprintln!("hostile_peer: {stats:?}");
    assert!(
        stats.ok > 50,
        "clients made progress during the attack: {stats:?}"
    );
    cluster.assert_alive();
    cluster.wait_for_leader(Duration::from_secs(10)).await;
    cluster.wait_converged(Duration::from_secs(15)).await;
    cluster.final_reads(&history, KEYS).await;
    assert_linearizable(&history);
    cluster.assert_replicas_agree(KEYS).await;
    cluster.assert_no_pending(Duration::from_secs(5)).await;

    let mut refused = std::collections::BTreeMap::new();
    for id in 1..=3 {
        for (reason, n) in cluster.mailbox(id).metrics().refused_messages {
            *refused.entry(reason).or_insert(0u64) += n;
        }
    }
    eprintln!("hostile_peer: refused by reason {refused:?}");
    for reason in [
        "identity",
        "not_member",
        "undecodable",
        "proposal",
        "local_type",
        "commit_beyond_log",
        "entries",
        "index",
        "snapshot",
    ] {
        assert!(refused[reason] > 0, "no message was refused as {reason}");
    }
    // Every message was refused one way or another: the outsider is not a member and the
    // impostor's messages are all malformed.
    let total: u64 = refused.values().sum();
    assert!(
        total as usize >= sent * 9 / 10,
        "{total} refusals for {sent} messages"
    );
    cluster.shutdown().await;
}
