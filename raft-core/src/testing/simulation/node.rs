//! One simulated node: its disk, which outlives crashes, and while it runs, its core and
//! apply task's state.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::log_storage::LogStorage;
use crate::mem_log_storage::MemLogStorage;
use crate::node::apply::Applier;
use crate::node::core::{LogWrite, NodeCore, SnapshotSave};
use crate::node::messages::{ApplyMsg, DriverMsg};
use crate::node::open::{open, OpenParts, OpenedNode};
use crate::node::Counters;
use crate::testing::cluster::test_config;
use crate::testing::kv::KvStore;

/// What reaches a node's core between two turns.
pub(super) enum NodeInput {
    Tick,
    Msg(DriverMsg),
}

/// A node while it runs.
pub(super) struct Running {
    pub(super) core: NodeCore,
    pub(super) applier: Applier,
    pub(super) applied_rx: watch::Receiver<u64>,
    /// What the apply task sends its driver: snapshots it took, its failure.
    pub(super) from_applier: mpsc::Receiver<DriverMsg>,
    /// Inputs that arrived since the last turn, or during a write.
    pub(super) inbox: VecDeque<NodeInput>,
    /// The writes in flight, oldest first, each carried out when its latency has passed
    /// (in order, as one log writer does).
    pub(super) writes: VecDeque<LogWrite>,
    /// When the newest write in flight completes: a later one cannot complete before it.
    pub(super) writes_done_at: Duration,
    /// The snapshot save in flight.
    pub(super) save: Option<Box<SnapshotSave>>,
    pub(super) counters: Arc<Counters>,
}

/// A node: its disk and, unless crashed, its running state.
pub(super) struct SimNode {
    pub(super) id: u64,
    pub(super) disk: Arc<MemLogStorage>,
    /// Bumped at each crash: events meant for an earlier life are ignored.
    pub(super) incarnation: u64,
    pub(super) running: Option<Running>,
}

/// The configuration of every simulated node: the tests' fast ticks, with snapshots and
/// compaction often enough that crashed nodes catch up from snapshots.
pub(super) fn sim_config() -> Config {
    Config {
        snapshot_threshold: 300,
        snapshot_log_tail: 50,
        ..test_config()
    }
}

/// Most snapshots or failures the apply task may report before the simulator reads them.
const APPLIER_REPORTS: usize = 64;

impl SimNode {
    pub(super) fn new(id: u64, disk: Arc<MemLogStorage>) -> Self {
        SimNode {
            id,
            disk,
            incarnation: 0,
            running: None,
        }
    }

    /// Opens the node from its disk. `join_through`: the leader an empty node asks to be
    /// re-admitted through.
    pub(super) fn start(
        &mut self,
        now: Instant,
        read_nonce: u64,
        election_timeout_ticks: usize,
        join_through: Option<(u64, String)>,
    ) -> Result<()> {
        let (driver_tx, from_applier) = mpsc::channel(APPLIER_REPORTS);
        let counters = Arc::new(Counters::default());
        let opening = open(
            OpenParts {
                id: self.id,
                config: sim_config(),
                storage: self.disk.clone() as Arc<dyn LogStorage>,
                store: Box::new(KvStore::new()),
                counters: counters.clone(),
                driver_tx,
                read_nonce,
                election_timeout_ticks: Some(election_timeout_ticks),
                received_payloads: Default::default(),
            },
            now,
        );
        let OpenedNode {
            mut core,
            applier,
            applied_rx,
        } = opening
            .now_or_never()
            .ok_or_else(|| Error::config("opening a simulated node waited"))??;
        if let Some((leader, addr)) = join_through {
            counters
                .join_pending
                .store(true, std::sync::atomic::Ordering::Relaxed);
            core.learn_addr(leader, addr);
        }
        self.running = Some(Running {
            core,
            applier,
            applied_rx,
            from_applier,
            inbox: VecDeque::new(),
            writes: VecDeque::new(),
            writes_done_at: Duration::ZERO,
            save: None,
            counters,
        });
        Ok(())
    }

    /// Stops the node as a power cut would: what it holds in memory is gone, its waiters
    /// are dropped (their clients hear the node stopped). The oldest `keep_writes` writes in
    /// flight reach the disk, and the snapshot save if `keep_writes > 0`.
    pub(super) fn crash(&mut self, keep_writes: usize, amnesia: bool) {
        self.incarnation += 1;
        let Some(mut running) = self.running.take() else {
            return;
        };
        for write in running.writes.drain(..).take(keep_writes) {
            let _ = write.run(self.disk.as_ref());
        }
        if keep_writes > 0 {
            if let Some(save) = running.save {
                let _ = save.run(self.disk.as_ref());
            }
        }
        if amnesia {
            self.forget_recent();
        }
    }

    /// What a disk that lies about syncing does in a crash: the vote and the last few entries
    /// are gone.
    fn forget_recent(&self) {
        const LOST_ENTRIES: u64 = 5;
        let disk = self.disk.as_ref();
        let (Ok(mut state), Ok(first), Ok(last)) =
            (disk.initial_state(), disk.first_index(), disk.last_index())
        else {
            return;
        };
        let keep_to = last.saturating_sub(LOST_ENTRIES);
        state.hard_state.vote = 0;
        if keep_to >= first {
            // Appending the entry at `keep_to` again drops every entry after it.
            if let Ok(entries) = disk.entries(keep_to, keep_to + 1, None) {
                state.hard_state.commit = state.hard_state.commit.min(keep_to);
                let _ = disk.append(&entries, Some(&state.hard_state));
                return;
            }
        }
        let _ = disk.append(&[], Some(&state.hard_state));
    }
}

impl Running {
    /// Hands one message to the apply task and runs it to completion: the simulated store
    /// never waits.
    pub(super) fn apply(&mut self, msg: ApplyMsg, now: Instant) -> Result<()> {
        self.applier
            .handle(msg, now)
            .now_or_never()
            .ok_or_else(|| Error::config("the simulated store waited"))??;
        self.applier.publish();
        while let Ok(report) = self.from_applier.try_recv() {
            match report {
                DriverMsg::Fatal(e) => return Err(e),
                other => self.inbox.push_back(NodeInput::Msg(other)),
            }
        }
        Ok(())
    }

    /// How far the apply task has applied.
    pub(super) fn applied(&self) -> u64 {
        *self.applied_rx.borrow()
    }
}
