//! A fault-injecting wrapper over any transport: drop, delay, duplicate, reorder, partition.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{InboundHandler, ServerGuard, Transport};
use crate::error::TransportError;
use crate::wire::{RaftBatch, Request, Response};

/// The fault plan shared by every [`FaultyTransport`] of a test cluster. Cheap to clone; all
/// clones change the same plan, so a test can partition and heal while the cluster runs.
#[derive(Clone)]
pub struct Faults {
    state: Arc<Mutex<FaultState>>,
    /// Whether any fault or recording is set: without one, traffic passes straight through
    /// and never takes the plan's lock (benches run through this wrapper too).
    active: Arc<AtomicBool>,
}

struct FaultState {
    rng: StdRng,
    seed: u64,
    drop_rate: f64,
    duplicate_rate: f64,
    reorder_rate: f64,
    delay: Option<(Duration, Duration)>,
    /// Address of each registered node id.
    addrs: HashMap<u64, String>,
    /// When set, only nodes in the same group talk to each other.
    groups: Option<Vec<HashSet<String>>>,
    /// The most recent traffic, when recording (see [`Faults::record`]).
    recording: Option<Recording>,
}

impl FaultState {
    fn active(&self) -> bool {
        self.drop_rate > 0.0
            || self.duplicate_rate > 0.0
            || self.reorder_rate > 0.0
            || self.delay.is_some()
            || self.groups.is_some()
            || self.recording.is_some()
    }
}

/// The locked plan; releasing it records whether any fault is now set.
struct StateGuard<'a> {
    state: MutexGuard<'a, FaultState>,
    active: &'a AtomicBool,
}

impl Deref for StateGuard<'_> {
    type Target = FaultState;
    fn deref(&self) -> &FaultState {
        &self.state
    }
}

impl DerefMut for StateGuard<'_> {
    fn deref_mut(&mut self) -> &mut FaultState {
        &mut self.state
    }
}

impl Drop for StateGuard<'_> {
    fn drop(&mut self) {
        self.active.store(self.state.active(), Ordering::Release);
    }
}

struct Recording {
    max: usize,
    batches: VecDeque<RaftBatch>,
    calls: VecDeque<Request>,
}

/// What the plan says about one message.
struct Verdict {
    deliver: bool,
    duplicate: bool,
    reorder_after: Option<Duration>,
    delay: Option<Duration>,
}

impl Faults {
    /// A plan with no faults; its random choices come from `seed`.
    pub fn new(seed: u64) -> Self {
        Faults {
            state: Arc::new(Mutex::new(FaultState {
                rng: StdRng::seed_from_u64(seed),
                seed,
                drop_rate: 0.0,
                duplicate_rate: 0.0,
                reorder_rate: 0.0,
                delay: None,
                addrs: HashMap::new(),
                groups: None,
                recording: None,
            })),
            active: Arc::new(AtomicBool::new(false)),
        }
    }

    fn lock(&self) -> StateGuard<'_> {
        StateGuard {
            state: self.state.lock().unwrap_or_else(|e| e.into_inner()),
            active: &self.active,
        }
    }

    fn active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// The seed of the plan's random choices.
    pub fn seed(&self) -> u64 {
        self.lock().seed
    }

    /// Tells the plan which address a node id listens on (needed for [`Faults::partition`]).
    pub fn register(&self, id: u64, addr: &str) {
        self.lock().addrs.insert(id, addr.to_string());
    }

    /// Drops each message (and each call, before or after delivery) with this probability.
    pub fn set_drop_rate(&self, rate: f64) {
        self.lock().drop_rate = rate.clamp(0.0, 1.0);
    }

    /// Delivers each raft batch twice with this probability.
    pub fn set_duplicate_rate(&self, rate: f64) {
        self.lock().duplicate_rate = rate.clamp(0.0, 1.0);
    }

    /// Delivers each raft batch late (so later batches overtake it) with this probability.
    pub fn set_reorder_rate(&self, rate: f64) {
        self.lock().reorder_rate = rate.clamp(0.0, 1.0);
    }

    /// Delays every message and call by a uniform random time in `[min, max]`.
    pub fn set_delay(&self, min: Duration, max: Duration) {
        self.lock().delay = Some((min, max.max(min)));
    }

    /// Splits the nodes into groups that cannot reach each other. Nodes in no group are
    /// isolated.
    pub fn partition(&self, groups: &[&[u64]]) {
        let mut state = self.lock();
        let groups = groups
            .iter()
            .map(|g| {
                g.iter()
                    .filter_map(|id| state.addrs.get(id).cloned())
                    .collect::<HashSet<_>>()
            })
            .collect();
        state.groups = Some(groups);
    }

    /// Cuts one node off from all others.
    pub fn isolate(&self, id: u64) {
        let others: Vec<u64> = self
            .lock()
            .addrs
            .keys()
            .copied()
            .filter(|&n| n != id)
            .collect();
        self.partition(&[&[id], &others]);
    }

    /// Keeps a copy of the `max` most recent raft batches and of the `max` most recent calls
    /// sent through the plan's transports (a hostile-peer test mutates them).
    pub fn record(&self, max: usize) {
        self.lock().recording = Some(Recording {
            max,
            batches: VecDeque::new(),
            calls: VecDeque::new(),
        });
    }

    /// The raft batches recorded so far, oldest first.
    pub fn recorded_batches(&self) -> Vec<RaftBatch> {
        let state = self.lock();
        state
            .recording
            .as_ref()
            .map(|r| r.batches.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The calls recorded so far, oldest first.
    pub fn recorded_calls(&self) -> Vec<Request> {
        let state = self.lock();
        state
            .recording
            .as_ref()
            .map(|r| r.calls.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn keep_batch(&self, batch: &RaftBatch) {
        if let Some(r) = self.lock().recording.as_mut() {
            if r.batches.len() == r.max {
                r.batches.pop_front();
            }
            r.batches.push_back(batch.clone());
        }
    }

    fn keep_call(&self, request: &Request) {
        if let Some(r) = self.lock().recording.as_mut() {
            if r.calls.len() == r.max {
                r.calls.pop_front();
            }
            r.calls.push_back(request.clone());
        }
    }

    /// Removes every partition; other faults stay.
    pub fn heal(&self) {
        self.lock().groups = None;
    }

    /// Removes every fault.
    pub fn clear(&self) {
        let mut state = self.lock();
        state.groups = None;
        state.drop_rate = 0.0;
        state.duplicate_rate = 0.0;
        state.reorder_rate = 0.0;
        state.delay = None;
    }

    fn connected(state: &FaultState, from: &str, to: &str) -> bool {
        match &state.groups {
            None => true,
            Some(groups) => groups.iter().any(|g| g.contains(from) && g.contains(to)),
        }
    }

    fn judge(&self, from: &str, to: &str) -> Verdict {
        let mut state = self.lock();
        let connected = Self::connected(&state, from, to);
        let drop_rate = state.drop_rate;
        let duplicate_rate = state.duplicate_rate;
        let reorder_rate = state.reorder_rate;
        let deliver = connected && !state.rng.gen_bool(drop_rate);
        let duplicate = state.rng.gen_bool(duplicate_rate);
        let reorder_after = if state.rng.gen_bool(reorder_rate) {
            Some(Duration::from_millis(state.rng.gen_range(1..30)))
        } else {
            None
        };
        let delay = state.delay.map(|(min, max)| {
            if max > min {
                state.rng.gen_range(min..=max)
            } else {
                min
            }
        });
        Verdict {
            deliver,
            duplicate,
            reorder_after,
            delay,
        }
    }
}

/// Wraps a transport and applies a shared [`Faults`] plan to what this node sends.
pub struct FaultyTransport<T> {
    inner: Arc<T>,
    faults: Faults,
    local_addr: String,
}

impl<T: Transport> FaultyTransport<T> {
    /// Wraps `inner` for the node listening on `local_addr`.
    pub fn new(inner: T, faults: Faults, local_addr: &str) -> Self {
        FaultyTransport {
            inner: Arc::new(inner),
            faults,
            local_addr: local_addr.to_string(),
        }
    }
}

fn unreachable(addr: &str, reason: &str) -> TransportError {
    TransportError::Unreachable {
        addr: addr.to_string(),
        reason: reason.to_string(),
    }
}

#[async_trait]
impl<T: Transport> Transport for FaultyTransport<T> {
    async fn serve(
        &self,
        addr: &str,
        handler: Arc<dyn InboundHandler>,
    ) -> Result<ServerGuard, TransportError> {
        self.inner.serve(addr, handler).await
    }

    async fn send(&self, addr: &str, batch: RaftBatch) -> Result<(), TransportError> {
        if !self.faults.active() {
            return self.inner.send(addr, batch).await;
        }
        self.faults.keep_batch(&batch);
        let verdict = self.faults.judge(&self.local_addr, addr);
        if let Some(delay) = verdict.delay {
            tokio::time::sleep(delay).await;
        }
        if !verdict.deliver {
            // A lossy network does not tell the sender.
            return Ok(());
        }
        if verdict.duplicate {
            self.inner.send(addr, batch.clone()).await?;
        }
        if let Some(late) = verdict.reorder_after {
            let inner = self.inner.clone();
            let addr = addr.to_string();
            tokio::spawn(async move {
                tokio::time::sleep(late).await;
                let _ = inner.send(&addr, batch).await;
            });
            return Ok(());
        }
        self.inner.send(addr, batch).await
    }

    async fn call(
        &self,
        addr: &str,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        if !self.faults.active() {
            return self.inner.call(addr, request, timeout).await;
        }
        self.faults.keep_call(&request);
        let verdict = self.faults.judge(&self.local_addr, addr);
        // The delay counts against the call's timeout, as time on a slow network would.
        let mut timeout = timeout;
        if let Some(delay) = verdict.delay {
            let slept = delay.min(timeout);
            tokio::time::sleep(slept).await;
            timeout -= slept;
            if timeout.is_zero() {
                return Err(TransportError::failed(
                    addr,
                    "no answer in time (fault injection)",
                ));
            }
        }
        let connected = {
            let state = self.faults.lock();
            Faults::connected(&state, &self.local_addr, addr)
        };
        if !connected {
            return Err(unreachable(addr, "partitioned (fault injection)"));
        }
        if !verdict.deliver {
            // Half the drops lose the request, half lose the response: the caller cannot tell
            // the second kind from success-then-loss.
            if verdict.duplicate {
                let _ = self.inner.call(addr, request, timeout).await;
                return Err(TransportError::Failed {
                    addr: addr.to_string(),
                    reason: "response lost (fault injection)".into(),
                });
            }
            return Err(unreachable(addr, "request lost (fault injection)"));
        }
        self.inner.call(addr, request, timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_cut_only_across_groups() {
        let faults = Faults::new(1);
        for id in 1..=5 {
            faults.register(id, &format!("n{id}"));
        }
        faults.partition(&[&[1, 2], &[3, 4, 5]]);
        let state = faults.lock();
        assert!(Faults::connected(&state, "n1", "n2"));
        assert!(Faults::connected(&state, "n3", "n5"));
        assert!(!Faults::connected(&state, "n1", "n3"));
        assert!(!Faults::connected(&state, "n5", "n2"));
        drop(state);
        faults.isolate(4);
        let state = faults.lock();
        assert!(!Faults::connected(&state, "n4", "n1"));
        assert!(Faults::connected(&state, "n1", "n5"));
        drop(state);
        faults.heal();
        assert!(Faults::connected(&faults.lock(), "n4", "n1"));
    }

    #[test]
    fn drop_rate_one_drops_everything_and_zero_nothing() {
        let faults = Faults::new(2);
        faults.set_drop_rate(1.0);
        assert!((0..100).all(|_| !faults.judge("a", "b").deliver));
        faults.clear();
        assert!((0..100).all(|_| faults.judge("a", "b").deliver));
    }
}
