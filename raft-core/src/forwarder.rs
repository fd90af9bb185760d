//! Forwarding a follower's proposals and reads to the leader, batched.
//!
//! Each forwarded request used to be one transport call: under load a follower made one gRPC
//! call per client request, and the call overhead (HTTP/2 framing, headers, tasks on both
//! ends) was the largest cost in a loaded cluster's profile after the allocator. Now each
//! destination has a queue drained by one task: it keeps at most [`IN_FLIGHT`] calls open,
//! and whatever queued up while they were busy leaves as one [`BatchRequest`]. No timer is
//! involved — a lone request leaves at once as a plain call — so an idle cluster pays nothing
//! and a loaded one sends one call per batch. A request that finds its destination's queue
//! empty and a call free makes that call from its caller's task, without the hand-offs to the
//! drain task and the call's task: at low load each hand-off is a worker thread woken.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::error::TransportError;
use crate::node::op::Op;
use crate::node::Counters;
use crate::transport::Transport;
use crate::wire::{request, response, BatchRequest, Request, Response};

/// Calls kept open per destination; more requests wait and leave together.
const IN_FLIGHT: usize = 2;
/// Most requests in one batch.
const MAX_BATCH: usize = 512;
/// Stop adding requests to a batch once their payloads reach this size (bytes).
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Most destinations with a queue at once (leaders come and go; idle queues are dropped).
const MAX_DESTINATIONS: usize = 64;

type Answer = Result<Response, TransportError>;

/// How a forwarded request ended.
pub(crate) enum Forwarded {
    /// The destination answered.
    Answer(Response),
    /// The transport failed.
    Failed(TransportError),
    /// No answer within the timeout (the request may have been delivered).
    TimedOut,
    /// The queue to that destination is full: the request was not sent.
    Busy,
}

struct Pending {
    op: Op,
    size: usize,
    deadline: Instant,
    reply: oneshot::Sender<Answer>,
}

/// One destination: its queue, and the calls it may have open (shared by the drain task and
/// callers that find the queue empty).
#[derive(Clone)]
struct Destination {
    queue: mpsc::Sender<Pending>,
    calls: Arc<Semaphore>,
}

type Queues = HashMap<String, Destination>;

/// Per-destination queues of requests to forward, each bounded.
pub(crate) struct Forwarder {
    transport: Arc<dyn Transport>,
    capacity: usize,
    counters: Arc<Counters>,
    queues: Mutex<Queues>,
}

impl Forwarder {
    pub(crate) fn new(
        transport: Arc<dyn Transport>,
        capacity: usize,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            transport,
            capacity,
            counters,
            queues: Mutex::new(HashMap::new()),
        }
    }

    /// Sends `op` (a proposal or a query) to `addr`, batched with others bound there, and
    /// waits for its answer until `deadline`. The request leaves with what is left of the
    /// deadline then, so the leader gives up when the caller does.
    pub(crate) async fn call(&self, addr: &str, op: Op, deadline: Instant) -> Forwarded {
        let Some(mut destination) = self.destination(addr) else {
            return Forwarded::Busy;
        };
        if destination.queue.capacity() == destination.queue.max_capacity() {
            if let Ok(call) = destination.calls.clone().try_acquire_owned() {
                return call_alone(self.transport.as_ref(), addr, op, deadline, call).await;
            }
        }
        let (tx, rx) = oneshot::channel();
        let size = match &op {
            Op::Propose(data, _) | Op::Read(data, _) => data.len(),
            Op::Membership(_) | Op::Transfer(_) => 0,
        };
        let mut pending = Pending {
            op,
            size,
            deadline,
            reply: tx,
        };
        // A queue whose task ended (its runtime shut down) is replaced once.
        for retry in [true, false] {
            match destination.queue.try_send(pending) {
                Ok(()) => {
                    let depth = &self.counters.metrics.forward_queue;
                    depth.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return match tokio::time::timeout_at(deadline.into(), rx).await {
                        Ok(Ok(Ok(response))) => Forwarded::Answer(response),
                        Ok(Ok(Err(e))) => Forwarded::Failed(e),
                        Ok(Err(_)) | Err(_) => Forwarded::TimedOut,
                    };
                }
                Err(mpsc::error::TrySendError::Full(_)) => return Forwarded::Busy,
                Err(mpsc::error::TrySendError::Closed(p)) => {
                    pending = p;
                    self.lock().remove(addr);
                    if !retry {
                        break;
                    }
                    let Some(fresh) = self.destination(addr) else {
                        return Forwarded::Busy;
                    };
                    destination = fresh;
                }
            }
        }
        Forwarded::TimedOut
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The queue to `addr`, created on first use; `None` when there are too many busy
    /// destinations to add another.
    fn destination(&self, addr: &str) -> Option<Destination> {
        let mut queues = self.lock();
        if let Some(d) = queues.get(addr).filter(|d| !d.queue.is_closed()) {
            return Some(d.clone());
        }
        if queues.len() >= MAX_DESTINATIONS {
            // Idle queues go; their drain tasks end when their sender is dropped.
            let capacity = self.capacity;
            queues.retain(|_, d| !d.queue.is_closed() && d.queue.capacity() < capacity);
            if queues.len() >= MAX_DESTINATIONS {
                return None;
            }
        }
        let (tx, rx) = mpsc::channel(self.capacity);
        let destination = Destination {
            queue: tx,
            calls: Arc::new(Semaphore::new(IN_FLIGHT)),
        };
        let drain = Drain {
            transport: self.transport.clone(),
            addr: addr.to_string(),
            counters: self.counters.clone(),
            calls: destination.calls.clone(),
        };
        tokio::spawn(drain.run(rx));
        queues.insert(addr.to_string(), destination.clone());
        Some(destination)
    }
}

/// Makes one request's call from its caller's task, holding one of the destination's calls.
async fn call_alone(
    transport: &dyn Transport,
    addr: &str,
    op: Op,
    deadline: Instant,
    _call: OwnedSemaphorePermit,
) -> Forwarded {
    let now = Instant::now();
    if deadline <= now {
        return Forwarded::TimedOut;
    }
    let request = op.to_request(deadline);
    // The transport gives up after what is left of the deadline; the caller waits no longer
    // whatever the transport does.
    let call = transport.call(addr, request, deadline - now);
    match tokio::time::timeout_at(deadline.into(), call).await {
        Ok(Ok(response)) => Forwarded::Answer(response),
        Ok(Err(e)) => Forwarded::Failed(e),
        Err(_) => Forwarded::TimedOut,
    }
}

/// Takes requests off one destination's queue, at most [`IN_FLIGHT`] calls at a time.
struct Drain {
    transport: Arc<dyn Transport>,
    addr: String,
    counters: Arc<Counters>,
    calls: Arc<Semaphore>,
}

impl Drain {
    async fn run(self, mut queue: mpsc::Receiver<Pending>) {
        loop {
            let Ok(permit) = self.calls.clone().acquire_owned().await else {
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
            self.counters
                .metrics
                .forward_queue
                .fetch_sub(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
            // Callers that gave up already need no call.
            batch.retain(|p| !p.reply.is_closed());
            if batch.is_empty() {
                continue;
            }
            tokio::spawn(send(
                self.transport.clone(),
                self.addr.clone(),
                batch,
                permit,
            ));
        }
    }
}

async fn send(
    transport: Arc<dyn Transport>,
    addr: String,
    mut batch: Vec<Pending>,
    _permit: OwnedSemaphorePermit,
) {
    let now = Instant::now();
    // A caller whose deadline passed in the queue has stopped waiting.
    batch.retain(|p| p.deadline > now);
    let Some(last) = batch.iter().map(|p| p.deadline).max() else {
        return;
    };
    let timeout = last - now;
    if batch.len() == 1 {
        if let Some(p) = batch.pop() {
            // The transport gives up after `timeout`; the caller waits no longer either.
            let request = p.op.to_request(p.deadline);
            let _ = p.reply.send(transport.call(&addr, request, timeout).await);
        }
        return;
    }
    let (requests, replies): (Vec<Request>, Vec<oneshot::Sender<Answer>>) = batch
        .into_iter()
        .map(|p| (p.op.to_request(p.deadline), p.reply))
        .unzip();
    let count = requests.len();
    let answer = transport
        .call(
            &addr,
            Request {
                kind: Some(request::Kind::Batch(BatchRequest { requests })),
                cluster_id: 0,
            },
            timeout,
        )
        .await;
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
    use std::time::Duration;

    use async_trait::async_trait;

    use super::*;
    use crate::transport::{InboundHandler, ServerGuard};
    use crate::wire::{BatchResponse, RaftBatch};

    /// Answers each proposal with its own data after a delay; counts the calls it got and
    /// the requests inside them.
    #[derive(Default)]
    struct Echo {
        calls: AtomicUsize,
        requests: AtomicUsize,
        answer_short: bool,
        /// The time left on the last proposal received, as its request said.
        last_timeout_ms: AtomicUsize,
        /// Calls open now, and the most ever open at once.
        open: AtomicUsize,
        most_open: AtomicUsize,
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
        async fn call(
            &self,
            _: &str,
            request: Request,
            _: Duration,
        ) -> Result<Response, TransportError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let open = self.open.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_open.fetch_max(open, Ordering::SeqCst);
            if let Some(request::Kind::Propose(p)) = &request.kind {
                self.last_timeout_ms
                    .store(p.timeout_ms as usize, Ordering::SeqCst);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.open.fetch_sub(1, Ordering::SeqCst);
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
                    echo(Request {
                        cluster_id: 0,
                        kind,
                    })
                }
            })
        }
    }

    fn propose(i: u32) -> Op {
        Op::Propose(i.to_be_bytes().to_vec(), None)
    }

    /// The old shape of an outcome: an answer, a transport error, or nothing.
    fn answer(f: Forwarded) -> Option<Answer> {
        match f {
            Forwarded::Answer(r) => Some(Ok(r)),
            Forwarded::Failed(e) => Some(Err(e)),
            Forwarded::TimedOut | Forwarded::Busy => None,
        }
    }

    async fn call_many(transport: Arc<Echo>, n: u32) -> Vec<Option<Answer>> {
        let forwarder = Arc::new(Forwarder::new(
            transport,
            4096,
            Arc::new(Counters::default()),
        ));
        let calls = (0..n).map(|i| {
            let forwarder = forwarder.clone();
            tokio::spawn(async move {
                answer(
                    forwarder
                        .call(
                            "leader",
                            propose(i),
                            Instant::now() + Duration::from_secs(5),
                        )
                        .await,
                )
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
        // Callers that call alone and the drain task share the destination's calls.
        let most_open = transport.most_open.load(Ordering::SeqCst);
        assert!(
            most_open <= IN_FLIGHT,
            "{most_open} calls were open at once"
        );
    }

    #[tokio::test]
    async fn a_lone_request_is_a_plain_call() {
        let transport = Arc::new(Echo::default());
        let forwarder = Forwarder::new(transport.clone(), 4096, Arc::new(Counters::default()));
        for i in 0..3 {
            let answer = answer(
                forwarder
                    .call(
                        "leader",
                        propose(i),
                        Instant::now() + Duration::from_secs(5),
                    )
                    .await,
            )
            .unwrap()
            .unwrap();
            assert_eq!(
                answer.kind,
                Some(response::Kind::Propose(i.to_be_bytes().to_vec()))
            );
        }
        assert_eq!(transport.calls.load(Ordering::SeqCst), 3);
    }

    /// The caller's deadline is the one the request carries: what is left of it when the
    /// request leaves, and a request whose caller gave up in the queue does not leave.
    #[tokio::test]
    async fn a_request_carries_what_is_left_of_its_deadline() {
        let transport = Arc::new(Echo::default());
        let forwarder = Forwarder::new(transport.clone(), 4096, Arc::new(Counters::default()));
        let deadline = Instant::now() + Duration::from_millis(2000);
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(answer(forwarder.call("leader", propose(1), deadline).await).is_some());
        let carried = transport.last_timeout_ms.load(Ordering::SeqCst);
        // Loose below: a loaded machine may take long between the call and its sending.
        assert!(
            (100..=1300).contains(&carried),
            "the request carried {carried} ms; its caller had at most 1300 left"
        );
        let passed = Instant::now() - Duration::from_millis(1);
        assert!(matches!(
            forwarder.call("leader", propose(2), passed).await,
            Forwarded::TimedOut
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            transport.calls.load(Ordering::SeqCst),
            1,
            "a request past its deadline was sent"
        );
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

    /// A full queue answers at once instead of growing: the caller gets `Busy`.
    #[tokio::test]
    async fn a_full_queue_is_busy_not_unbounded() {
        let transport = Arc::new(Echo::default());
        let counters = Arc::new(Counters::default());
        let forwarder = Arc::new(Forwarder::new(transport.clone(), 8, counters.clone()));
        let calls: Vec<_> = (0..200)
            .map(|i| {
                let forwarder = forwarder.clone();
                tokio::spawn(async move {
                    forwarder
                        .call(
                            "leader",
                            propose(i),
                            Instant::now() + Duration::from_secs(5),
                        )
                        .await
                })
            })
            .collect();
        let mut busy = 0;
        let mut answered = 0;
        for c in calls {
            match c.await.unwrap() {
                Forwarded::Busy => busy += 1,
                Forwarded::Answer(_) => answered += 1,
                _ => {}
            }
        }
        assert!(busy > 0, "some callers were told busy");
        assert!(answered >= 8, "the queue still served callers");
        let depth = counters
            .metrics
            .forward_queue
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(depth, 0, "the depth gauge returns to zero");
    }
}
