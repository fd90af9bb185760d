//! # raft-core: Raft for regular people
//!
//! Implement four async methods on your state machine ([`Store`]), pick a [`LogStorage`] and
//! a [`Transport`], and get a replicated, durable, linearizable service. Consensus comes from
//! tikv's `raft` crate; raft-core drives it: durability before acknowledgement, group commit,
//! batched ordered peer senders, leader forwarding, ReadIndex reads, snapshots, membership
//! changes and restarts.
//!
//! For raft-lite's API instead of a state machine (send `Vec<u8>` from any node, receive every
//! message in one total order on every node, durably) see [`broadcast`].
//!
//! ```no_run
//! use raft_core::{async_trait, LocalNetwork, Raft, Store, StoreResult};
//!
//! #[derive(Default)]
//! struct Register(Vec<u8>);
//!
//! #[async_trait]
//! impl Store for Register {
//!     async fn apply(&mut self, message: &[u8]) -> StoreResult<Vec<u8>> {
//!         self.0 = message.to_vec();
//!         Ok(Vec::new())
//!     }
//!     async fn query(&self, _query: &[u8]) -> StoreResult<Vec<u8>> {
//!         Ok(self.0.clone())
//!     }
//!     async fn snapshot(&self) -> StoreResult<Vec<u8>> {
//!         Ok(self.0.clone())
//!     }
//!     async fn restore(&mut self, snapshot: &[u8]) -> StoreResult<()> {
//!         self.0 = snapshot.to_vec();
//!         Ok(())
//!     }
//! }
//!
//! # async fn demo() -> raft_core::Result<()> {
//! let network = LocalNetwork::new();
//! let raft = Raft::builder(1, Register::default())
//!     .raft_addr("node-1")
//!     .transport(network.transport())
//!     .build()?;
//! let mailbox = raft.mailbox();
//! tokio::spawn(raft.lead());
//! mailbox.send_proposal(b"hello".to_vec()).await?;
//! assert_eq!(mailbox.query(Vec::new()).await?, b"hello");
//! # Ok(()) }
//! ```

pub mod backup;
pub mod broadcast;
mod config;
mod error;
mod forwarder;
mod initial_cluster;
mod log_storage;
mod logging;
mod mailbox;
mod mem_log_storage;
mod metrics;
mod node;
pub mod private_files;
mod raft;
mod raft_codec;
mod records;
mod session;
mod snapshot_payload;
mod snapshot_stream;
mod status;
mod store;
pub mod transport;
mod unsynced_entries;
pub mod wire;

#[cfg(feature = "testing")]
pub mod testing;

pub use crate::backup::{restore_backup, Backup, BackupError};
pub use crate::config::Config;
pub use crate::error::{
    Error, Fatal, MaybeApplied, NotApplied, Result, StorageError, StoreError, TransportError,
};
pub use crate::initial_cluster::InitialCluster;
pub use crate::log_storage::LogStorage;
pub use crate::mailbox::Mailbox;
pub use crate::mem_log_storage::MemLogStorage;
pub use crate::metrics::{HistogramSnapshot, Metrics, QueueDepths};
pub use crate::raft::{Raft, RaftBuilder};
pub use crate::raft_codec::{RaftCodec, RaftDecodeError};
pub use crate::session::SessionTag;
pub use crate::snapshot_payload::{PayloadReader, SnapshotPayload, SnapshotPayloadWriter};
pub use crate::snapshot_stream::{SnapshotSink, SnapshotSource};
pub use crate::status::{
    LiveStatus, MemberProgress, ReadConsistency, ReplicationState, Role, Status,
};
pub use crate::store::{Store, StoreResult};
pub use crate::transport::{LocalNetwork, Transport};
pub use async_trait::async_trait;

/// What a [`LogStorage`] implementation needs beyond the trait: raft-rs's protobuf types and
/// helpers every backend uses. The conformance suite is `testing::conformance`.
pub mod backend {
    pub use crate::log_storage::limit_size;
    pub use crate::mem_log_storage::{check_append, check_contiguous};

    /// raft-rs's protobuf types.
    pub mod eraftpb {
        pub use raft::prelude::{
            ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMetadata,
        };
        pub use raft::{RaftState, StorageError as RaftStorageError};
    }
}
