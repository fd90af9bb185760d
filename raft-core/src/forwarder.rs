//! Forwarding a follower's proposals and reads to the leader, batched.
//!
//! Each forwarded request used to be one transport call: under load a follower made one gRPC
//! call per client request, and the call overhead (HTTP/2 framing, headers, tasks on both
//! ends) was the largest cost in a loaded cluster's profile after the allocator. Now each
//! destination has a queue drained by one task: it keeps at most [`IN_FLIGHT`] calls open,
//! and whatever queued up while they were busy leaves as one [`BatchRequest`]. No timer is
//! involved — a lone request leaves at once as a plain call — so an idle cluster pays nothing
//! and a loaded one sends one call per batch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::error::TransportError;
use crate::transport::Transport;
use crate::wire::{request, response, BatchRequest, Request, Response};

/// Calls kept open per destination; more requests wait and leave together.
const IN_FLIGHT: usize = 2;
/// Most requests in one batch.
const MAX_BATCH: usize = 512;
/// Stop adding requests to a batch once their payloads reach this size (bytes).
const MAX_BATCH_BYTES: usize = 1 << 20;

type Answer = Result<Response, TransportError>;

struct Pending {
    request: Request,
    size: usize,
    timeout: Duration,
    reply: oneshot::Sender<Answer>,
}

/// Per-destination queues of requests to forward.
pub(crate) struct Forwarder {
    transport: Arc<dyn Transport>,
    queues: Mutex<HashMap<String, mpsc::UnboundedSender<Pending>>>,
}

impl Forwarder {
    pub(crate) fn new(transport: Arc<dyn Transport>) -> Self {
        Self {
            transport,
            queues: Mutex::new(HashMap::new()),
        }
    }

    /// Sends `request` (a proposal or a query) to `addr`, batched with others bound there.
    /// `size` is its payload size; `timeout` bounds the call on the caller's side too.
    pub(crate) async fn call(
        &self,
        addr: &str,
        request: Request,
        size: usize,
        timeout: Duration,
    ) -> Option<Answer> {
        let (tx, rx) = oneshot::channel();
        let mut pending = Pending {
            request,
            size,
            timeout,
            reply: tx,
        };
        // A queue whose task ended (its runtime shut down) is replaced once.
        for _ in 0..2 {
            let queue = self.queue(addr);
            match queue.send(pending) {
                Ok(()) => return tokio::time::timeout(timeout, rx).await.ok()?.ok(),
                Err(mpsc::error::SendError(p)) => {
                    pending = p;
                    self.lock().remove(addr);
                }
            }
        }
        None
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<Pending>>> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn queue(&self, addr: &str) -> mpsc::UnboundedSender<Pending> {
        let mut queues = self.lock();
        if let Some(q) = queues.get(addr).filter(|q| !q.is_closed()) {
            return q.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(drain(self.transport.clone(), addr.to_string(), rx));
        queues.insert(addr.to_string(), tx.clone());
        tx
    }
}

/// Takes requests off one destination's queue, at most [`IN_FLIGHT`] calls at a time.
async fn drain(
    transport: Arc<dyn Transport>,
    addr: String,
    mut queue: mpsc::UnboundedReceiver<Pending>,
) {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut size = first.size;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && size < MAX_BATCH_BYTES {
            match queue.try_recv() {
                Ok(p) => {
                    size += p.size;
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        // Callers that gave up already need no call.
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        tokio::spawn(send(transport.clone(), addr.clone(), batch, permit));
    }
}

async fn send(
    transport: Arc<dyn Transport>,
    addr: String,
    mut batch: Vec<Pending>,
    _permit: OwnedSemaphorePermit,
) {
    let timeout = batch
        .iter()
        .map(|p| p.timeout)
        .max()
        .unwrap_or(Duration::ZERO);
    if batch.len() == 1 {
        if let Some(p) = batch.pop() {
            let call = transport.call(&addr, p.request);
            if let Ok(answer) = tokio::time::timeout(timeout, call).await {
                let _ = p.reply.send(answer);
            }
        }
        return;
    }
    let (requests, replies): (Vec<Request>, Vec<oneshot::Sender<Answer>>) =
        batch.into_iter().map(|p| (p.request, p.reply)).unzip();
    let count = requests.len();
    let call = transport.call(
        &addr,
        Request {
            kind: Some(request::Kind::Batch(BatchRequest { requests })),
        },
    );
    let Ok(answer) = tokio::time::timeout(timeout, call).await else {
        return; // every caller times out on its own
    };
    match answer {
        Ok(Response {
            kind: Some(response::Kind::Batch(b)),
        }) if b.responses.len() == count => {
            for (reply, response) in replies.into_iter().zip(b.responses) {
                let _ = reply.send(Ok(response));
            }
        }
        // A whole-batch answer (an error reply) goes to every caller.
        Ok(other @ Response { .. }) if !matches!(other.kind, Some(response::Kind::Batch(_))) => {
            for reply in replies {
                let _ = reply.send(Ok(other.clone()));
            }
        }
        Ok(_) => {
            let e = TransportError::Malformed(format!(
                "{addr} answered a batch of {count} requests with a different number of answers"
            ));
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::transport::{InboundHandler, ServerGuard};
    use crate::wire::{BatchResponse, ProposeRequest, RaftBatch};

    /// Answers each proposal with its own data after a delay; counts the calls it got and
    /// the requests inside them.
    #[derive(Default)]
    struct Echo {
        calls: AtomicUsize,
        requests: AtomicUsize,
        answer_short: bool,
    }

    fn echo(request: Request) -> Response {
        match request.kind {
            Some(request::Kind::Propose(p)) => Response {
                kind: Some(response::Kind::Propose(p.data)),
            },
            other => panic!("unexpected {other:?}"),
        }
    }

    #[async_trait]
    impl Transport for Echo {
        async fn serve(
            &self,
            _: &str,
            _: Arc<dyn InboundHandler>,
        ) -> Result<ServerGuard, TransportError> {
            unreachable!()
        }
        async fn send(&self, _: &str, _: RaftBatch) -> Result<(), TransportError> {
            unreachable!()
        }
        async fn call(&self, _: &str, request: Request) -> Result<Response, TransportError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok(match request.kind {
                Some(request::Kind::Batch(b)) => {
                    self.requests.fetch_add(b.requests.len(), Ordering::SeqCst);
                    let mut responses: Vec<Response> = b.requests.into_iter().map(echo).collect();
                    if self.answer_short {
                        responses.pop();
                    }
                    Response {
                        kind: Some(response::Kind::Batch(BatchResponse { responses })),
                    }
                }
                kind => {
                    self.requests.fetch_add(1, Ordering::SeqCst);
                    echo(Request { kind })
                }
            })
        }
    }

    fn propose(i: u32) -> Request {
        Request {
            kind: Some(request::Kind::Propose(ProposeRequest {
                data: i.to_be_bytes().to_vec(),
                timeout_ms: 1000,
            })),
        }
    }

    async fn call_many(transport: Arc<Echo>, n: u32) -> Vec<Option<Answer>> {
        let forwarder = Arc::new(Forwarder::new(transport));
        let calls = (0..n).map(|i| {
            let forwarder = forwarder.clone();
            tokio::spawn(async move {
                forwarder
                    .call("leader", propose(i), 4, Duration::from_secs(5))
                    .await
            })
        });
        let mut answers = Vec::new();
        for c in calls.collect::<Vec<_>>() {
            answers.push(c.await.unwrap());
        }
        answers
    }

    #[tokio::test]
    async fn concurrent_requests_share_calls_and_get_their_own_answers() {
        let transport = Arc::new(Echo::default());
        let answers = call_many(transport.clone(), 200).await;
        for (i, answer) in (0u32..).zip(answers) {
            let response = answer.expect("answered").expect("no transport error");
            assert_eq!(
                response.kind,
                Some(response::Kind::Propose(i.to_be_bytes().to_vec())),
                "request {i} got another's answer"
            );
        }
        let calls = transport.calls.load(Ordering::SeqCst);
        assert_eq!(transport.requests.load(Ordering::SeqCst), 200);
        assert!(calls <= 20, "200 concurrent requests took {calls} calls");
    }

    #[tokio::test]
    async fn a_lone_request_is_a_plain_call() {
        let transport = Arc::new(Echo::default());
        let forwarder = Forwarder::new(transport.clone());
        for i in 0..3 {
            let answer = forwarder
                .call("leader", propose(i), 4, Duration::from_secs(5))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                answer.kind,
                Some(response::Kind::Propose(i.to_be_bytes().to_vec()))
            );
        }
        assert_eq!(transport.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_short_batch_answer_is_an_error_for_every_caller() {
        let transport = Arc::new(Echo {
            answer_short: true,
            ..Echo::default()
        });
        let answers = call_many(transport.clone(), 50).await;
        let batched = answers
            .iter()
            .filter(|a| matches!(a, Some(Err(TransportError::Malformed(_)))))
            .count();
        assert!(batched > 0, "some requests were batched");
        // Requests that went alone were answered normally; none got a wrong answer.
        for (i, answer) in (0u32..).zip(&answers) {
            if let Some(Ok(r)) = answer {
                assert_eq!(
                    r.kind,
                    Some(response::Kind::Propose(i.to_be_bytes().to_vec()))
                );
            }
        }
    }
}
