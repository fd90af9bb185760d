//! Forwarding: a follower sends its clients' operations to the leader it knows, and the
//! leader handles a forwarded batch as one message, answering each request in order.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use raft_core::testing::cluster::{seed, test_config, TestCluster};
use raft_core::testing::kv::{decode_value, encode_op};
use raft_core::testing::linearizability::KvOp;
use raft_core::wire::{
    request, response, BatchRequest, ProposeRequest, QueryRequest, Request, StatusRequest,
};
use raft_core::{Config, ReadConsistency, Transport};
use support::init_tracing;

/// A 3-node cluster, its leader and one follower.
async fn cluster_with_follower(
    config: Config,
    name: &str,
) -> (std::sync::Arc<TestCluster>, u64, u64) {
    init_tracing();
    let cluster = TestCluster::start(3, config, seed(name)).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let follower = cluster
        .running()
        .into_iter()
        .find(|&id| id != leader)
        .unwrap();
    (cluster, leader, follower)
}

/// A follower that knows the leader sends its clients' proposals straight there: its own
/// driver is never asked, so it never answers "not the leader". After the leader crashes,
/// the follower learns the new one and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_sends_straight_to_the_leader_it_knows() {
    let (cluster, leader, follower) =
        cluster_with_follower(test_config(), "straight_to_the_leader").await;
    let mailbox = cluster.mailbox(follower);
    let deadline = Instant::now() + Duration::from_secs(5);
    while mailbox.status().await.unwrap().leader_id != Some(leader) {
        assert!(
            Instant::now() < deadline,
            "the follower never learned the leader"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = mailbox.metrics().not_leader_answers;
    let put = |i: u32| {
        encode_op(&KvOp::Put {
            key: "k".into(),
            value: i.to_string(),
        })
    };
    for i in 0..100 {
        mailbox.send_proposal(put(i)).await.unwrap();
    }
    assert_eq!(
        mailbox.metrics().not_leader_answers,
        before,
        "proposals went through the follower's driver first"
    );

    cluster.crash(leader).await;
    let rest = cluster.running();
    let new = cluster
        .wait_for_leader_among(&rest, Duration::from_secs(10))
        .await;
    assert_ne!(new, leader);
    for i in 0..10 {
        mailbox.send_proposal(put(i)).await.unwrap();
    }
    cluster.shutdown().await;
}

/// A batch that mixes proposals, a linearizable read and a request that cannot be batched:
/// every answer comes back in its request's place. The batch's requests are concurrent
/// callers', so the read may see either write (the driver takes its ReadIndex after the
/// turn's proposals).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_batch_is_answered_in_order() {
    let (cluster, leader, follower) = cluster_with_follower(test_config(), "forwarded_batch").await;
    let put = |value: &str| {
        request::Kind::Propose(ProposeRequest {
            data: encode_op(&KvOp::Put {
                key: "k".into(),
                value: value.into(),
            }),
            timeout_ms: 5_000,
            ..Default::default()
        })
    };
    let get = request::Kind::Query(QueryRequest {
        query: encode_op(&KvOp::Get { key: "k".into() }),
        consistency: 0,
        timeout_ms: 5_000,
    });
    let requests = [
        put("1"),
        request::Kind::Status(StatusRequest {}),
        get,
        put("2"),
    ]
    .into_iter()
    .map(|kind| Request {
        kind: Some(kind),
        cluster_id: 0,
    })
    .collect();
    let batch = Request {
        kind: Some(request::Kind::Batch(BatchRequest { requests })),
        cluster_id: 0,
    };
    let answer = cluster
        .network()
        .transport_as(follower)
        .call(&cluster.addr(leader), batch, Duration::from_secs(10))
        .await
        .unwrap();
    let Some(response::Kind::Batch(b)) = answer.kind else {
        panic!("not a batch answer: {answer:?}");
    };
    let kinds: Vec<_> = b.responses.into_iter().map(|r| r.kind).collect();
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    assert!(
        matches!(kinds[0], Some(response::Kind::Propose(_))),
        "{kinds:?}"
    );
    assert!(
        matches!(&kinds[1], Some(response::Kind::Error(e)) if e.message.contains("batched")),
        "{kinds:?}"
    );
    match &kinds[2] {
        Some(response::Kind::Query(v)) => {
            let seen = decode_value(v).unwrap();
            assert!(
                seen.as_deref() == Some("1") || seen.as_deref() == Some("2"),
                "{seen:?}"
            );
        }
        other => panic!("the read's answer: {other:?}"),
    }
    assert!(
        matches!(kinds[3], Some(response::Kind::Propose(_))),
        "{kinds:?}"
    );
    cluster.shutdown().await;
}

/// Reads a follower serves itself stay local: with every message between nodes delayed by
/// 300 ms, a follower still answers a stale read from its own state machine at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_serves_stale_reads_itself() {
    // Elections far slower than the injected delay, so the leader stays.
    let config = Config {
        election_tick: 200,
        heartbeat_tick: 10,
        ..test_config()
    };
    let (cluster, _, follower) = cluster_with_follower(config, "stale_reads_stay_local").await;
    let mailbox = cluster.mailbox(follower);
    let put = encode_op(&KvOp::Put {
        key: "k".into(),
        value: "v".into(),
    });
    mailbox.send_proposal(put).await.unwrap();
    cluster.wait_converged(Duration::from_secs(5)).await;
    cluster
        .faults()
        .set_delay(Duration::from_millis(300), Duration::from_millis(300));
    let get = encode_op(&KvOp::Get { key: "k".into() });
    for _ in 0..5 {
        let started = Instant::now();
        let answer = mailbox
            .query_with(get.clone(), ReadConsistency::Stale)
            .await
            .unwrap();
        assert_eq!(decode_value(&answer).unwrap(), Some("v".to_string()));
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "the stale read took {:?}: it went over the network",
            started.elapsed()
        );
    }
    cluster.faults().set_delay(Duration::ZERO, Duration::ZERO);
    cluster.shutdown().await;
}
