//! Deterministic simulation: N node cores on simulated time, network and disks, all driven
//! from one seed.
//!
//! The simulator runs the same code a real node runs, minus the tokio shell: each node is a
//! [`NodeCore`](crate::node::core::NodeCore) (every raft decision, proposal batching, reads
//! and leases, membership policy) and an apply task's state (proposal waiters, parked reads,
//! snapshots) over the replicated KV register store of [`super::kv`]. One event queue
//! orders everything: ticks, message deliveries, completed disk writes, client operations and
//! faults. Nothing reads the wall clock or a thread's random generator, so a seed replays the
//! same interleaving, bit for bit; [`Report::trace`] is a hash of that interleaving.
//!
//! Faults, all drawn from the seed:
//! - network: per-message delay (so reordering), loss, duplication, and partitions that cut
//!   the nodes into two sides;
//! - disks: write latency, crashes that lose the write in flight or keep it, failed fsyncs
//!   (the node stops, as a real one does, and restarts from what its disk holds), and lost
//!   disks (the node comes back empty and is re-admitted through the leader).
//!
//! Every run checks:
//! - **linearizability** of the clients' history (puts, compare-and-swaps, deletes, and
//!   linearizable and lease reads), with [`super::linearizability`];
//! - **no lost acknowledged write**: after the faults stop, every client reads every key, and
//!   those reads are part of the checked history;
//! - **replica agreement**: no two nodes apply different entries at one index, and once the
//!   cluster has quiesced every node holds the same state;
//! - **no pending waiter**: every operation is answered by its deadline (plus one sweep).
//!
//! ```
//! use raft_core::testing::simulation::{run, SimConfig};
//!
//! let report = run(7, &SimConfig::default()).expect("seed 7 passes");
//! assert_eq!(report.trace, run(7, &SimConfig::default()).unwrap().trace);
//! ```
//!
//! `cargo run --release -p raft-core --features testing --example simulate -- --seeds N` runs
//! many seeds and prints the first that fails.

mod node;
mod world;

use std::fmt;
use std::time::Duration;

/// What one simulated run does.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Voters in the cluster.
    pub nodes: u64,
    /// Clients, each running one operation at a time.
    pub clients: usize,
    /// Keys the clients work on: few keys, many conflicts.
    pub keys: usize,
    /// Simulated time during which faults happen.
    pub fault_time: Duration,
    /// Simulated time after the faults stop during which clients keep working.
    pub calm_time: Duration,
    /// Inject faults at all (off: a healthy cluster, for the determinism and speed baseline).
    pub faults: bool,
    /// Break the disks: each crash loses the node's vote and its last entries, though they
    /// were synced. Raft cannot be safe on such disks (a node may vote twice in one term, a
    /// committed entry may be left on a minority); this exists to show the checks catch it.
    pub amnesiac_disks: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 3,
            clients: 4,
            keys: 3,
            fault_time: Duration::from_secs(6),
            calm_time: Duration::from_secs(2),
            faults: true,
            amnesiac_disks: false,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The seed that produced this run.
    pub seed: u64,
    /// Events processed (ticks, deliveries, disk completions, client steps, faults).
    pub events: u64,
    /// Client operations issued, and how they ended.
    pub operations: usize,
    /// Operations that succeeded.
    pub acknowledged: usize,
    /// Writes whose outcome stayed unknown (timed out, leader lost).
    pub unknown: usize,
    /// Highest index any node applied.
    pub applied: u64,
    /// Faults injected.
    pub crashes: u64,
    /// Disks lost (the node came back empty).
    pub disk_losses: u64,
    /// Failed fsyncs.
    pub fsync_failures: u64,
    /// Partitions made.
    pub partitions: u64,
    /// Snapshots a leader sent to a lagging node, and it received.
    pub snapshots_delivered: u64,
    /// Log writes handed out while an earlier one of the same node was still in flight.
    pub overlapped_writes: u64,
    /// Hash of every event and message in order: equal traces, equal interleavings.
    pub trace: u64,
}

/// A run that broke a property, with the seed that replays it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimFailure {
    /// The seed to replay.
    pub seed: u64,
    /// Which property broke, and how.
    pub what: String,
    /// What the run did up to the failure.
    pub report: Box<Report>,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "simulation seed {} failed: {} (after {} events, {} operations)",
            self.seed, self.what, self.report.events, self.report.operations
        )
    }
}

impl std::error::Error for SimFailure {}

/// Runs one seed and checks every property; the same seed gives the same [`Report`].
pub fn run(seed: u64, config: &SimConfig) -> Result<Report, SimFailure> {
    world::World::new(seed, config.clone()).run()
}
