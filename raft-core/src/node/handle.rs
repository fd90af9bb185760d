//! The local node as its mailbox and its server side see it: submitting proposals, reads and
//! membership changes to this node's driver and waiting for the answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::driver::ask;
use super::messages::DriverMsg;
use super::op::Op;
use super::Counters;
use crate::config::Config;
use crate::error::{Error, MaybeApplied, Result};
use crate::forwarder::Forwarder;
use crate::metrics::NodeMetrics;
use crate::status::Status;
use crate::transport::Transport;

/// The local node as seen by its mailbox and its server side.
pub(crate) struct NodeHandle {
    pub(crate) id: u64,
    pub(crate) addr: String,
    /// Where the transport listens: `addr` unless the builder set another.
    pub(crate) listen_addr: String,
    pub(crate) config: Config,
    pub(crate) driver_tx: mpsc::Sender<DriverMsg>,
    pub(crate) transport: Arc<dyn Transport>,
    /// Batches the proposals and reads this node forwards to the leader.
    pub(crate) forwarder: Forwarder,
    pub(crate) counters: Arc<Counters>,
}

/// How long past its deadline a waiter may stay unanswered before its caller stops waiting.
/// The driver and the apply task own the waiters and answer each by its deadline (the
/// simulator checks it); this only bounds the harm of a bug.
const ANSWER_GRACE: Duration = Duration::from_millis(500);

/// Waits for a waiter's answer. `allotted`: how long the caller gave, for the timeout error.
async fn wait_answer(
    rx: tokio::sync::oneshot::Receiver<Result<Vec<u8>>>,
    deadline: Instant,
    allotted: Duration,
) -> Result<Vec<u8>> {
    match tokio::time::timeout_at((deadline + ANSWER_GRACE).into(), rx).await {
        Err(_) => Err(Error::timeout(allotted)),
        Ok(Err(_)) => Err(Error::node_stopped()),
        Ok(Ok(Err(Error::MaybeApplied(MaybeApplied::Timeout(_))))) => Err(Error::timeout(allotted)),
        Ok(Ok(answer)) => answer,
    }
}

impl NodeHandle {
    /// Hands the driver a message with a waiter that is answered by `deadline`, and waits.
    pub(crate) async fn submit(
        &self,
        deadline: Instant,
        make: impl FnOnce(Instant, crate::node::messages::Responder) -> DriverMsg,
    ) -> Result<Vec<u8>> {
        self.submit_at(Instant::now(), deadline, make).await
    }

    /// [`NodeHandle::submit`] for a caller that read the clock just before (`now`): the
    /// proposal path reads it as rarely as it can.
    async fn submit_at(
        &self,
        now: Instant,
        deadline: Instant,
        make: impl FnOnce(Instant, crate::node::messages::Responder) -> DriverMsg,
    ) -> Result<Vec<u8>> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let allotted = deadline.saturating_duration_since(now);
        self.offer(make(deadline, reply))?;
        wait_answer(rx, deadline, allotted).await
    }

    /// Puts `msg` in the driver's inbox, or refuses at once. Clients never wait for room: a
    /// full inbox means the node is behind, and waiting callers would pile up without bound.
    fn offer(&self, msg: DriverMsg) -> Result<()> {
        match self.driver_tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                NodeMetrics::inc(&self.counters.metrics.busy);
                Err(Error::busy("the node's inbox is full"))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Error::shutdown()),
        }
    }

    /// Runs `op` on this node: answered by the driver, or the apply task, by `deadline`.
    pub(crate) async fn run(&self, op: Op, deadline: Instant) -> Result<Vec<u8>> {
        self.run_at(Instant::now(), op, deadline).await
    }

    /// [`NodeHandle::run`] for a caller that read the clock just before (`now`).
    pub(crate) async fn run_at(&self, now: Instant, op: Op, deadline: Instant) -> Result<Vec<u8>> {
        self.submit_at(now, deadline, |deadline, reply| DriverMsg::Op {
            op,
            deadline,
            reply,
        })
        .await
    }

    /// Runs a forwarded batch of operations, handed to the driver as one message; the
    /// answers come back in order. A full inbox refuses the whole batch.
    pub(crate) async fn run_many(&self, ops: Vec<(Op, Instant)>) -> Vec<Result<Vec<u8>>> {
        let now = Instant::now();
        let mut items = Vec::with_capacity(ops.len());
        let mut waits = Vec::with_capacity(ops.len());
        for (op, deadline) in ops {
            let (reply, rx) = tokio::sync::oneshot::channel();
            items.push((op, deadline, reply));
            waits.push((rx, deadline));
        }
        if let Err(e) = self.offer(DriverMsg::Ops(items)) {
            return waits.iter().map(|_| Err(e.clone())).collect();
        }
        futures::future::join_all(waits.into_iter().map(|(rx, deadline)| {
            wait_answer(rx, deadline, deadline.saturating_duration_since(now))
        }))
        .await
    }

    pub(crate) async fn status(&self) -> Result<Status> {
        ask(&self.driver_tx, DriverMsg::Status).await
    }
}
