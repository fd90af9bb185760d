//! The seed's `HashStore`: a replicated `HashMap<u64, String>` with `Insert` and `Get`
//! messages (bincode), run as a 3-node cluster inside one process.
//!
//! `cargo run -p raft-core --example hash_store`

use std::collections::HashMap;
use std::time::Duration;

use raft_core::{async_trait, InitialCluster, LocalNetwork, Raft, Store, StoreError, StoreResult};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
enum Message {
    Insert { key: u64, value: String },
    Get { key: u64 },
}

#[derive(Default)]
struct HashStore(HashMap<u64, String>);

fn encode<T: Serialize>(value: &T) -> StoreResult<Vec<u8>> {
    Ok(bincode::serde::encode_to_vec(
        value,
        bincode::config::standard(),
    )?)
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> StoreResult<T> {
    Ok(bincode::serde::decode_from_slice(bytes, bincode::config::standard())?.0)
}

#[async_trait]
impl Store for HashStore {
    async fn apply(&mut self, message: &[u8]) -> StoreResult<Vec<u8>> {
        match decode(message)? {
            Message::Insert { key, value } => {
                self.0.insert(key, value.clone());
                encode(&value)
            }
            Message::Get { .. } => Err(StoreError::msg("Get is a query, not a command")),
        }
    }

    async fn query(&self, query: &[u8]) -> StoreResult<Vec<u8>> {
        match decode(query)? {
            Message::Get { key } => encode(&self.0.get(&key)),
            Message::Insert { .. } => Err(StoreError::msg("Insert is a command, not a query")),
        }
    }

    async fn snapshot(&self) -> StoreResult<Vec<u8>> {
        encode(&self.0)
    }

    async fn restore(&mut self, snapshot: &[u8]) -> StoreResult<()> {
        self.0 = decode(snapshot)?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let network = LocalNetwork::new();
    // Every founding node gets the same member list; they start together, in any order.
    let cluster = InitialCluster::new((1..=3).map(|id| (id, format!("node-{id}"))))?;
    let mut mailboxes = Vec::new();
    for (&id, addr) in cluster.members() {
        let raft = Raft::builder(id, HashStore::default())
            .raft_addr(addr.clone())
            .transport(network.transport())
            .build()?;
        mailboxes.push(raft.mailbox());
        tokio::spawn(raft.start_cluster(cluster.clone()));
    }
    loop {
        let status = mailboxes[0].status().await?;
        if let Some(leader) = status.leader_id {
            println!("cluster ready: voters {:?}, leader {leader}", status.voters);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Every node accepts writes (followers forward to the leader) and serves linearizable reads.
    for (i, mailbox) in mailboxes.iter().enumerate() {
        let value = format!("written through node {}", i + 1);
        let insert = encode(&Message::Insert {
            key: i as u64,
            value,
        })?;
        let applied: String = decode(&mailbox.send_proposal(insert).await?)?;
        println!("node {}: insert key {i} -> applied {applied:?}", i + 1);
    }
    for (i, mailbox) in mailboxes.iter().enumerate() {
        for key in 0..3u64 {
            let got: Option<String> =
                decode(&mailbox.query(encode(&Message::Get { key })?).await?)?;
            println!("node {}: get key {key} -> {got:?}", i + 1);
        }
    }

    let leader = mailboxes[0].status().await?.leader_id.unwrap_or(1);
    let follower = (1..=3).find(|&id| id != leader).unwrap_or(2);
    println!("node {follower} leaves the cluster");
    mailboxes[follower as usize - 1].leave().await?;
    let status = mailboxes[leader as usize - 1].status().await?;
    println!(
        "leader {leader}: term {}, commit {}, applied {}, voters {:?}",
        status.term, status.commit_index, status.applied_index, status.voters
    );
    Ok(())
}
