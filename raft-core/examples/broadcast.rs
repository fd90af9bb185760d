//! Ordered broadcast, raft-lite's API on raftkit: three nodes in one process, each sends a
//! message into its sender, and every node receives the same messages in the same order.
//! `BROADCAST_VS_RAFT_LITE.md` sets it beside raft-lite's README example.
//!
//! `cargo run -p raft-core --example broadcast`

use raft_core::broadcast::{self, BroadcastError};
use raft_core::{InitialCluster, LocalNetwork, MemLogStorage};

#[tokio::main]
async fn main() -> Result<(), BroadcastError> {
    // The static peer list, and the in-process network the three nodes share.
    let members: InitialCluster = "1=node-1,2=node-2,3=node-3".parse()?;
    let network = LocalNetwork::new();
    let mut nodes = Vec::new();
    for id in [1, 2, 3] {
        // One node: a sender of `Vec<u8>` and a receiver of the ordered messages. A durable
        // node passes a disk log storage and `.position_file(...)` instead.
        let (btx, mrx) = broadcast::builder(id, members.clone())
            .log_storage(MemLogStorage::new())
            .transport(network.transport())
            .start()?;
        nodes.push((id, btx, mrx));
    }
    // broadcast a message from every node, all at once
    let sends = nodes.iter().map(|(id, btx, _)| {
        let message = format!("hello from node {id}").into_bytes();
        btx.send(message)
    });
    for sent in futures::future::join_all(sends).await {
        sent?;
    }
    for (id, _, mrx) in &mut nodes {
        for _ in 0..3 {
            // receive the messages in the one order every node sees
            let message = mrx.recv().await?;
            let text = String::from_utf8_lossy(&message.data);
            println!("node {id} received #{}: {text}", message.seq);
        }
    }
    Ok(())
}
