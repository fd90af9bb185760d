//! The broadcast's state machine: applying a message numbers it and hands it to the
//! application's queue; a snapshot keeps the next sequence number and the retained messages.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::queue::Queue;
use crate::snapshot_stream::{SnapshotSink, SnapshotSource};
use crate::store::{Store, StoreError, StoreResult};

/// First byte of every broadcast entry: an application message follows. Entries are never
/// empty, so an empty message is a message too (raft-core does not apply empty entries).
pub(crate) const MESSAGE_TAG: u8 = 1;
/// First byte of a broadcast snapshot.
const SNAPSHOT_VERSION: u8 = 1;
/// Bytes before each message in a snapshot: its sequence number and its length.
const ITEM_HEADER: u64 = 16;

/// Encodes an application message as a log entry.
pub(crate) fn entry(message: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(message.len() + 1);
    data.push(MESSAGE_TAG);
    data.extend_from_slice(message);
    data
}

/// The [`Store`] behind a broadcast node. Its replicated state is one number (the next
/// sequence number); the messages it retains are local (what the application has not
/// received yet, and a bounded history), so snapshots of two replicas at one index may hold
/// different messages, but always the same sequence number.
pub(crate) struct BroadcastStore {
    pub(crate) queue: Arc<Queue>,
}

impl Drop for BroadcastStore {
    fn drop(&mut self) {
        // The apply task ended: so did the node.
        self.queue.stop("the node stopped");
    }
}

#[async_trait]
impl Store for BroadcastStore {
    async fn apply(&mut self, message: &[u8]) -> StoreResult<Vec<u8>> {
        match message.split_first() {
            Some((&MESSAGE_TAG, body)) => {
                let seq = self.queue.push(Bytes::copy_from_slice(body)).await;
                Ok(seq.to_le_bytes().to_vec())
            }
            // Deterministic on every replica: the state is left as it was.
            _ => Err(StoreError::msg("not a broadcast message")),
        }
    }

    /// The sequence number of the last message applied (0 before the first).
    async fn query(&self, _query: &[u8]) -> StoreResult<Vec<u8>> {
        let next_seq = self.queue.next_seq();
        Ok(next_seq.saturating_sub(1).to_le_bytes().to_vec())
    }

    async fn snapshot(&self) -> StoreResult<Vec<u8>> {
        let mut sink = SnapshotSink::memory();
        self.snapshot_to(&mut sink).await?;
        sink.into_memory()
    }

    async fn restore(&mut self, snapshot: &[u8]) -> StoreResult<()> {
        let mut source = SnapshotSource::from_bytes(snapshot.to_vec());
        self.restore_from(&mut source).await
    }

    /// `[version][next_seq u64][count u64]` then per message `[seq u64][len u64][bytes]`,
    /// little-endian, written a message at a time.
    async fn snapshot_to(&self, sink: &mut SnapshotSink) -> StoreResult<()> {
        let (next_seq, items) = self.queue.contents();
        let mut head = vec![SNAPSHOT_VERSION];
        head.extend_from_slice(&next_seq.to_le_bytes());
        head.extend_from_slice(&(items.len() as u64).to_le_bytes());
        sink.write(&head).await?;
        for (seq, data) in items {
            let mut header = [0u8; ITEM_HEADER as usize];
            header[..8].copy_from_slice(&seq.to_le_bytes());
            header[8..].copy_from_slice(&(data.len() as u64).to_le_bytes());
            sink.write(&header).await?;
            sink.write(&data).await?;
        }
        Ok(())
    }

    /// Checks everything before it changes anything: the snapshot may come from a peer.
    async fn restore_from(&mut self, source: &mut SnapshotSource) -> StoreResult<()> {
        let mut version = [0u8; 1];
        source.read_exact(&mut version).await?;
        if version[0] != SNAPSHOT_VERSION {
            return Err(StoreError::msg(format!(
                "broadcast snapshot version {} (this build reads {SNAPSHOT_VERSION})",
                version[0]
            )));
        }
        let next_seq = read_u64(source).await?;
        let count = read_u64(source).await?;
        if next_seq == 0 || count > source.remaining() / ITEM_HEADER || count >= next_seq {
            return Err(StoreError::msg(format!(
                "broadcast snapshot: {count} messages before sequence number {next_seq} in \
                 {} bytes",
                source.remaining()
            )));
        }
        let mut items = Vec::new();
        let mut previous = 0u64;
        for _ in 0..count {
            let seq = read_u64(source).await?;
            let len = read_u64(source).await?;
            if seq <= previous || seq >= next_seq || len > source.remaining() {
                return Err(StoreError::msg(format!(
                    "broadcast snapshot: message {seq} ({len} bytes) after {previous}, before \
                     {next_seq}, with {} bytes left",
                    source.remaining()
                )));
            }
            let mut data = vec![0u8; len as usize];
            source.read_exact(&mut data).await?;
            items.push((seq, Bytes::from(data)));
            previous = seq;
        }
        if source.remaining() != 0 {
            return Err(StoreError::msg(format!(
                "broadcast snapshot: {} bytes after the last message",
                source.remaining()
            )));
        }
        self.queue.restore(next_seq, items);
        Ok(())
    }
}

async fn read_u64(source: &mut SnapshotSource) -> StoreResult<u64> {
    let mut bytes = [0u8; 8];
    source.read_exact(&mut bytes).await?;
    Ok(u64::from_le_bytes(bytes))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::queue::Next;
    use super::super::Limits;
    use super::*;

    fn store(delivered: u64) -> BroadcastStore {
        BroadcastStore {
            queue: Arc::new(Queue::new(delivered, Limits::default())),
        }
    }

    #[tokio::test]
    async fn numbers_messages_and_round_trips_through_a_snapshot() {
        let mut a = store(0);
        assert_eq!(a.apply(&entry(b"x")).await.unwrap(), 1u64.to_le_bytes());
        assert_eq!(a.apply(&entry(b"")).await.unwrap(), 2u64.to_le_bytes());
        assert!(a.apply(b"").await.is_err());
        assert!(a.apply(&[9, 1, 2]).await.is_err());
        let snapshot = a.snapshot().await.unwrap();

        // A restarted node whose application had received message 1.
        let mut b = store(1);
        b.restore(&snapshot).await.unwrap();
        assert_eq!(b.query(b"").await.unwrap(), 2u64.to_le_bytes());
        assert_eq!(b.queue.next().await, Next::Message(2, Bytes::new()));
        assert_eq!(b.apply(&entry(b"y")).await.unwrap(), 3u64.to_le_bytes());
    }

    #[tokio::test]
    async fn refuses_damaged_snapshots_without_changing_state() {
        let mut a = store(0);
        a.apply(&entry(b"hello")).await.unwrap();
        let good = a.snapshot().await.unwrap();
        let mut b = store(0);
        for cut in 0..good.len() {
            assert!(b.restore(&good[..cut]).await.is_err(), "cut at {cut}");
        }
        let mut extra = good.clone();
        extra.push(0);
        assert!(b.restore(&extra).await.is_err());
        let mut huge = good.clone();
        // The message's length field claims more than there is.
        huge[25..33].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(b.restore(&huge).await.is_err());
        let mut count = good.clone();
        count[9..17].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(b.restore(&count).await.is_err());
        assert_eq!(b.queue.contents().0, 1, "nothing changed");
        b.restore(&good).await.unwrap();
        assert_eq!(b.queue.contents().0, 2);
    }
}
