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

/// Waits for a waiter's answer, turning raft-core's internal deadline errors into the caller's.
async fn wait_answer(
    rx: tokio::sync::oneshot::Receiver<Result<Vec<u8>>>,
    timeout: Duration,
) -> Result<Vec<u8>> {
    // The driver and apply task enforce the deadline; the grace only guards against bugs.
    match tokio::time::timeout(timeout + Duration::from_millis(500), rx).await {
        Err(_) => Err(Error::timeout(timeout)),
        Ok(Err(_)) => Err(Error::node_stopped()),
        Ok(Ok(Err(Error::MaybeApplied(MaybeApplied::Timeout(_))))) => Err(Error::timeout(timeout)),
        Ok(Ok(answer)) => answer,
    }
}

impl NodeHandle {
    pub(crate) async fn submit(
        &self,
        timeout: Duration,
        make: impl FnOnce(Instant, crate::node::messages::Responder) -> DriverMsg,
    ) -> Result<Vec<u8>> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let deadline = Instant::now() + timeout;
        self.offer(make(deadline, reply))?;
        wait_answer(rx, timeout).await
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

    /// Runs `op` on this node: answered by the driver, or the apply task, within `timeout`.
    pub(crate) async fn run(&self, op: Op, timeout: Duration) -> Result<Vec<u8>> {
        self.submit(timeout, |deadline, reply| DriverMsg::Op {
            op,
            deadline,
            reply,
        })
        .await
    }

    /// Runs a forwarded batch of operations, handed to the driver as one message; the
    /// answers come back in order. A full inbox refuses the whole batch.
    pub(crate) async fn run_many(&self, ops: Vec<(Op, Duration)>) -> Vec<Result<Vec<u8>>> {
        let now = Instant::now();
        let mut items = Vec::with_capacity(ops.len());
        let mut waits = Vec::with_capacity(ops.len());
        for (op, timeout) in ops {
            let (reply, rx) = tokio::sync::oneshot::channel();
            items.push((op, now + timeout, reply));
            waits.push((rx, timeout));
        }
        if let Err(e) = self.offer(DriverMsg::Ops(items)) {
            return waits.iter().map(|_| Err(e.clone())).collect();
        }
        futures::future::join_all(waits.into_iter().map(|(rx, t)| wait_answer(rx, t))).await
    }

    pub(crate) async fn status(&self) -> Result<Status> {
        ask(&self.driver_tx, DriverMsg::Status).await
    }
}
