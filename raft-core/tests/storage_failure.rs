//! A failed log write stops the node loudly and acknowledges nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use raft_core::testing::breakable::BreakableLog;
use raft_core::testing::cluster::test_config;
use raft_core::testing::kv::{encode_op, KvStore};
use raft_core::testing::linearizability::KvOp;
use raft_core::{Error, Fatal, LocalNetwork, LogStorage, MemLogStorage, Raft};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_write_stops_the_node_and_acknowledges_nothing() {
    support::init_tracing();
    let log = BreakableLog::new(
        Arc::new(MemLogStorage::new()),
        "simulated: no space left on device",
    );
    let raft = Raft::builder(1, KvStore::new())
        .raft_addr("node-1")
        .transport(LocalNetwork::new().transport())
        .log_storage(log.clone())
        .config(test_config())
        .build()
        .unwrap();
    let mailbox = raft.mailbox().with_timeout(Duration::from_secs(2));
    let node = tokio::spawn(raft.lead());
    let put = |v: &str| {
        encode_op(&KvOp::Put {
            key: "k".into(),
            value: v.into(),
        })
    };
    mailbox
        .send_proposal(put("before"))
        .await
        .expect("healthy write");
    let last_durable = log.inner().last_index().unwrap();

    log.break_writes();
    let result = mailbox.send_proposal(put("after")).await;
    assert!(
        result.is_err(),
        "a write that could not be persisted was acknowledged"
    );
    let exit = tokio::time::timeout(Duration::from_secs(5), node)
        .await
        .expect("the node stops")
        .expect("no panic");
    match exit {
        Err(Error::Fatal(Fatal::Storage(e))) => {
            assert!(e.to_string().contains("no space left"), "{e}")
        }
        other => panic!("the node must stop with the storage error, got {other:?}"),
    }
    assert_eq!(
        log.inner().last_index().unwrap(),
        last_durable,
        "nothing new was written"
    );
    // The stopped node refuses further work instead of hanging.
    let after = mailbox.send_proposal(put("later")).await;
    assert!(
        matches!(after, Err(Error::Fatal(Fatal::Shutdown))),
        "{after:?}"
    );
}
