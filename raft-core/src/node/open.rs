//! Opening a node from what its log storage holds: the core and the apply task, restored to
//! the last snapshot, with no task started. The tokio node and the simulator both start here.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use raft::prelude::{ConfState, Snapshot, SnapshotMetadata};
use raft::RawNode;
use tokio::sync::{mpsc, watch};

use super::apply::Applier;
use super::core::{CoreParts, NodeCore};
use super::membership::{open_envelope, seal_envelope, Members};
use super::messages::DriverMsg;
use super::snapshot_transfer::ReceivedPayloads;
use super::Counters;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::log_storage::{snapshot_index, LogStorage, RaftStorage};
use crate::logging::raft_logger;
use crate::records::Member;
use crate::store::Store;

/// The first snapshot of a new cluster: `members` are its voters.
///
/// Index 1 rather than 0: every node that joins later starts from this snapshot, so all
/// replicas share one initial state. Founding members of a static cluster each write the
/// same one (their stores' initial states are equal, as every fresh store's must be).
pub(crate) fn first_snapshot(
    cluster_id: u64,
    members: Vec<Member>,
    user_data: Vec<u8>,
) -> Snapshot {
    let voters = members.iter().map(|m| m.id).collect::<Vec<_>>();
    Snapshot {
        data: seal_envelope(cluster_id, members, user_data).into(),
        metadata: Some(SnapshotMetadata {
            conf_state: Some(ConfState::from((voters, vec![]))).into(),
            index: 1,
            term: 1,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

/// What opening a node needs.
pub(crate) struct OpenParts {
    pub(crate) id: u64,
    pub(crate) config: Config,
    pub(crate) storage: Arc<dyn LogStorage>,
    pub(crate) store: Box<dyn Store>,
    pub(crate) counters: Arc<Counters>,
    /// Where the apply task reports a snapshot it took, or its failure.
    pub(crate) driver_tx: mpsc::Sender<DriverMsg>,
    /// Makes this node's ReadIndex contexts unique across its restarts.
    pub(crate) read_nonce: u64,
    /// A fixed election timeout in ticks, at least `config.election_tick`. `None`: raft-rs
    /// draws one from its thread's random generator at each election, which a simulation
    /// cannot replay; the simulator draws it from its seed instead.
    pub(crate) election_timeout_ticks: Option<usize>,
    /// Payloads of snapshots received from the leader, waiting to be installed.
    pub(crate) received_payloads: Arc<ReceivedPayloads>,
}

/// A node ready to run: its core, its apply task's state, and how far that has applied.
pub(crate) struct OpenedNode {
    pub(crate) core: NodeCore,
    pub(crate) applier: Applier,
    pub(crate) applied_rx: watch::Receiver<u64>,
}

/// Opens a node over `parts.storage`: the store is restored from the last snapshot, and the
/// entries after it are applied again as the core hands them over.
pub(crate) async fn open(parts: OpenParts, now: Instant) -> Result<OpenedNode> {
    let OpenParts {
        received_payloads,
        id,
        config,
        storage,
        store,
        counters,
        driver_tx,
        read_nonce,
        election_timeout_ticks,
    } = parts;
    let snapshot = storage.snapshot()?;
    let state = storage.initial_state()?;
    let snap_index = snapshot_index(&snapshot);
    if state.hard_state.commit < snap_index {
        return Err(Error::config(format!(
            "log storage is inconsistent: snapshot at {snap_index} beyond commit index {}",
            state.hard_state.commit
        )));
    }
    let members = if snap_index > 0 {
        let envelope = open_envelope(&snapshot.data).map_err(Error::config)?;
        Members::from_list(envelope.members)
    } else {
        Members::default()
    };
    let (applied_tx, applied_rx) = watch::channel(snap_index);
    let mut applier = Applier::new(
        id,
        store,
        storage.clone(),
        &snapshot,
        members.clone(),
        config.snapshot_threshold,
        driver_tx,
        counters.clone(),
        applied_tx,
    );
    if snap_index > 0 {
        applier.restore_store(&snapshot).await?;
    }
    Counters::set(&counters.applied, snap_index);
    counters
        .live
        .send_modify(|live| live.applied_index = snap_index);

    let snapshot_wanted_for = Arc::new(AtomicU64::new(0));
    let raft_storage = RaftStorage {
        log: storage.clone(),
        snapshot_wanted_for: snapshot_wanted_for.clone(),
        snapshot_floor: Default::default(),
        unsynced: Default::default(),
    };
    let mut raft_config = config.to_raft(id, snap_index);
    if let Some(ticks) = election_timeout_ticks {
        raft_config.min_election_tick = ticks;
        raft_config.max_election_tick = ticks + 1;
    }
    let raw = RawNode::new(&raft_config, raft_storage, &raft_logger(id))?;
    let core = NodeCore::new(
        CoreParts {
            id,
            config,
            raw,
            storage,
            members,
            counters,
            snapshot_wanted_for,
            read_nonce,
            received_payloads,
        },
        now,
    );
    Ok(OpenedNode {
        core,
        applier,
        applied_rx,
    })
}
