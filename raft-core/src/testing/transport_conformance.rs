//! The [`Transport`] conformance suite: the contract every transport must meet, checked with
//! real servers and clients of the transport under test. A transport's tests run
//! [`run_all`], and the size checks when the transport limits message sizes:
//!
//! ```
//! use raft_core::testing::transport_conformance::{run_all, TransportFactory};
//!
//! let network = raft_core::LocalNetwork::new();
//! let runtime = tokio::runtime::Runtime::new().unwrap();
//! runtime.block_on(run_all(&TransportFactory::local(&network)));
//! ```

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::error::TransportError;
use crate::transport::{InboundHandler, LocalNetwork, PeerIdentity, ServerGuard, Transport};
use crate::wire::{self, request, response, RaftBatch};

/// How long the suite's own calls may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long traffic that should flow may take to arrive.
const PATIENCE: Duration = Duration::from_secs(20);

type MakeTransport = dyn Fn(u64) -> Arc<dyn Transport> + Send + Sync;
type MakeAddr = dyn Fn(u64) -> String + Send + Sync;

/// Makes the transports of a test and picks the addresses they serve on. The checks of this
/// suite take one, and so does a [`TestCluster`](super::cluster::TestCluster).
#[derive(Clone)]
pub struct TransportFactory {
    transport: Arc<MakeTransport>,
    addr: Arc<MakeAddr>,
    unreachable_within: Duration,
}

impl TransportFactory {
    /// `transport(id)` makes a new transport for node `id` (with that node's identity where
    /// the transport has identities), as a new process would get; `addr(id)` picks an address
    /// nobody serves yet for node `id` to serve on.
    pub fn new(
        transport: impl Fn(u64) -> Arc<dyn Transport> + Send + Sync + 'static,
        addr: impl Fn(u64) -> String + Send + Sync + 'static,
    ) -> Self {
        TransportFactory {
            transport: Arc::new(transport),
            addr: Arc::new(addr),
            unreachable_within: Duration::from_secs(1),
        }
    }

    /// Transports over the in-process `network`, each speaking as its node
    /// ([`LocalNetwork::transport_as`]); node `id` serves on `node-{id}`.
    pub fn local(network: &LocalNetwork) -> Self {
        let network = network.clone();
        Self::new(
            move |id| Arc::new(network.transport_as(id)),
            |id| format!("node-{id}"),
        )
    }

    /// How long a first send or call to an address nobody serves may take to fail: a
    /// transport may have to wait out a connection attempt. One second unless set.
    pub fn unreachable_within(mut self, bound: Duration) -> Self {
        self.unreachable_within = bound;
        self
    }

    /// A new transport for node `id`.
    pub fn transport(&self, id: u64) -> Arc<dyn Transport> {
        (self.transport)(id)
    }

    /// An address for node `id` to serve on.
    pub fn addr(&self, id: u64) -> String {
        (self.addr)(id)
    }
}

/// `127.0.0.1` with a TCP port nobody listened on a moment ago.
pub fn free_tcp_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// `127.0.0.1` with a UDP port nobody used a moment ago.
pub fn free_udp_addr() -> String {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().to_string()
}

/// Retries `f` every 50 ms until it returns `Ok`; panics with its last error after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("{what}: not yet: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{what}: still failing after {timeout:?}: {e}"),
        }
    }
}

/// An inbound handler standing in for node `id`. It records the raft batches addressed to
/// `id` and refuses the others, as a node does. It answers `Status` with its id, `Propose`
/// with the proposed bytes, `Query` with 1000 bytes per byte of query (so a test picks the
/// size of an answer), and anything else with an error.
pub struct Recorder {
    id: u64,
    batches: Mutex<Vec<RaftBatch>>,
    arrived: Notify,
}

impl Recorder {
    /// A recorder for node `id` that has seen nothing.
    pub fn new(id: u64) -> Arc<Recorder> {
        Arc::new(Recorder {
            id,
            batches: Mutex::new(Vec::new()),
            arrived: Notify::new(),
        })
    }

    /// The batches recorded so far, in arrival order.
    pub fn batches(&self) -> Vec<RaftBatch> {
        self.batches.lock().unwrap().clone()
    }

    /// How many batches arrived so far.
    pub fn count(&self) -> usize {
        self.batches.lock().unwrap().len()
    }

    /// Waits until at least `n` batches arrived and returns them all; panics after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<RaftBatch> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            if self.count() >= n {
                return self.batches();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "only {} of {n} batches arrived within {timeout:?}",
                self.count()
            );
            let _ = tokio::time::timeout(left, notified).await;
        }
    }
}

#[async_trait]
impl InboundHandler for Recorder {
    async fn raft_batch(&self, _: PeerIdentity, batch: RaftBatch) -> Result<(), TransportError> {
        if batch.to != self.id {
            return Err(TransportError::Malformed(format!(
                "raft batch for node {} delivered to node {}",
                batch.to, self.id
            )));
        }
        self.batches.lock().unwrap().push(batch);
        self.arrived.notify_waiters();
        Ok(())
    }

    async fn call(&self, _: PeerIdentity, request: wire::Request) -> wire::Response {
        let kind = match request.kind {
            Some(request::Kind::Status(_)) => response::Kind::Status(wire::NodeStatus {
                id: self.id,
                ..Default::default()
            }),
            Some(request::Kind::Propose(p)) => response::Kind::Propose(p.data),
            Some(request::Kind::Query(q)) => response::Kind::Query(vec![7; q.query.len() * 1000]),
            _ => response::Kind::Error(wire::ErrorReply {
                code: wire::ErrorCode::Invalid as i32,
                message: "unsupported".into(),
                ..Default::default()
            }),
        };
        wire::Response { kind: Some(kind) }
    }
}

/// A raft batch from `from` to `to` whose one message carries `seq`.
pub fn batch(from: u64, to: u64, seq: u64) -> RaftBatch {
    RaftBatch {
        cluster_id: 0,
        from,
        to,
        messages: vec![seq.to_be_bytes().to_vec().into()],
        from_addr: String::new(),
    }
}

/// The `seq` of a batch made by [`batch`].
pub fn seq_of(batch: &RaftBatch) -> u64 {
    u64::from_be_bytes(batch.messages[0][..8].try_into().unwrap())
}

/// A `Status` request.
pub fn status_request() -> wire::Request {
    wire::Request {
        cluster_id: 0,
        kind: Some(request::Kind::Status(wire::StatusRequest {})),
    }
}

/// A `Propose` request of `data`.
pub fn propose(data: Vec<u8>) -> wire::Request {
    wire::Request {
        cluster_id: 0,
        kind: Some(request::Kind::Propose(wire::ProposeRequest {
            data,
            timeout_ms: 0,
            ..Default::default()
        })),
    }
}

/// Asks `addr` for its status; returns the node id it reports.
pub async fn status_id(transport: &dyn Transport, addr: &str) -> Result<u64, TransportError> {
    match transport
        .call(addr, status_request(), CALL_TIMEOUT)
        .await?
        .kind
    {
        Some(response::Kind::Status(s)) => Ok(s.id),
        other => panic!("{addr} answered a status request with {other:?}"),
    }
}

fn assert_unreachable<T: std::fmt::Debug>(what: &str, result: Result<T, TransportError>) {
    match result {
        Err(TransportError::Unreachable { .. }) => {}
        other => panic!("{what}: expected Unreachable, got {other:?}"),
    }
}

/// Serves a [`Recorder`] for node `id` on a new transport of `t`.
async fn serve(t: &TransportFactory, id: u64) -> (String, Arc<Recorder>, ServerGuard) {
    let addr = t.addr(id);
    let recorder = Recorder::new(id);
    let guard = t
        .transport(id)
        .serve(&addr, recorder.clone())
        .await
        .unwrap_or_else(|e| panic!("serving {addr}: {e}"));
    (addr, recorder, guard)
}

/// Runs every check that needs no size limit; panics at the first failure.
pub async fn run_all(t: &TransportFactory) {
    batches_arrive_in_order(t).await;
    calls_are_answered(t).await;
    concurrent_senders_keep_their_order(t).await;
    unreachable_peers_fail_promptly(t).await;
    a_restarted_server_is_reached_again(t).await;
    serving_a_busy_address_is_a_setup_error(t).await;
    call_timeouts_are_honoured(t).await;
}

/// 5,000 batches sent one after another to one peer all arrive, in order.
pub async fn batches_arrive_in_order(t: &TransportFactory) {
    let (addr, recorder, _guard) = serve(t, 1).await;
    let client = t.transport(2);
    const N: u64 = 5_000;
    for seq in 0..N {
        client.send(&addr, batch(2, 1, seq)).await.unwrap();
    }
    let got = recorder.wait_for(N as usize, PATIENCE).await;
    let seqs: Vec<u64> = got.iter().map(seq_of).collect();
    assert_eq!(seqs, (0..N).collect::<Vec<_>>(), "batches out of order");
}

/// Calls get their answers: one after another, and 200 at once, each its own.
pub async fn calls_are_answered(t: &TransportFactory) {
    let (addr, _recorder, _guard) = serve(t, 1).await;
    let client = t.transport(2);
    assert_eq!(status_id(client.as_ref(), &addr).await.unwrap(), 1);
    let answer = client.call(&addr, propose(b"hello".to_vec()), CALL_TIMEOUT);
    let answer = answer.await.unwrap();
    assert_eq!(
        answer.kind,
        Some(response::Kind::Propose(b"hello".to_vec()))
    );
    let calls: Vec<_> = (0..200u32)
        .map(|i| {
            let (client, addr) = (client.clone(), addr.clone());
            tokio::spawn(async move {
                let data = i.to_be_bytes().to_vec();
                let answer = client
                    .call(&addr, propose(data.clone()), CALL_TIMEOUT)
                    .await;
                let answer = answer.unwrap_or_else(|e| panic!("call {i}: {e}"));
                assert_eq!(answer.kind, Some(response::Kind::Propose(data)), "call {i}");
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap();
    }
}

/// Four tasks send 500 batches each through one transport, and after every other batch one
/// the receiver refuses (addressed to another node): all the others arrive, each sender's
/// in its order, so a refused batch is only logged and leaves the stream up.
pub async fn concurrent_senders_keep_their_order(t: &TransportFactory) {
    let (addr, recorder, _guard) = serve(t, 1).await;
    let client = t.transport(2);
    let senders: Vec<_> = (1..=4u64)
        .map(|from| {
            let (client, addr) = (client.clone(), addr.clone());
            tokio::spawn(async move {
                for seq in 0..500 {
                    client.send(&addr, batch(from, 1, seq)).await.unwrap();
                    if seq % 2 == 0 {
                        // A transport that reports the receiver's refusal may; none has to.
                        let _ = client.send(&addr, batch(from, 77, seq)).await;
                    }
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.unwrap();
    }
    let got = recorder.wait_for(2_000, PATIENCE).await;
    for from in 1..=4u64 {
        let seqs: Vec<u64> = got.iter().filter(|b| b.from == from).map(seq_of).collect();
        assert_eq!(seqs, (0..500).collect::<Vec<_>>(), "sender {from}");
    }
}

/// Sends and calls to an address nobody serves fail with [`TransportError::Unreachable`]:
/// the first within [`TransportFactory::unreachable_within`], later sends at once (within
/// 500 ms, far below any connect timeout, with room for a loaded machine: a transport must
/// not make raft wait on a dead peer). So do sends and calls to a string
/// that is no address at all.
pub async fn unreachable_peers_fail_promptly(t: &TransportFactory) {
    let client = t.transport(1);
    let nobody = t.addr(9);
    let started = Instant::now();
    assert_unreachable("first send", client.send(&nobody, batch(1, 9, 0)).await);
    let took = started.elapsed();
    assert!(took < t.unreachable_within, "the first send took {took:?}");
    for seq in 1..=20 {
        let started = Instant::now();
        assert_unreachable("send", client.send(&nobody, batch(1, 9, seq)).await);
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(500),
            "send {seq} took {took:?}"
        );
    }
    for _ in 0..3 {
        let started = Instant::now();
        let result = client.call(&nobody, status_request(), CALL_TIMEOUT).await;
        assert_unreachable("call", result);
        let took = started.elapsed();
        assert!(took < t.unreachable_within, "a call took {took:?}");
    }
    let garbage = "not an address";
    assert_unreachable(garbage, client.send(garbage, batch(1, 9, 0)).await);
    let result = client.call(garbage, status_request(), CALL_TIMEOUT).await;
    assert_unreachable(garbage, result);
}

/// A server that stops becomes unreachable within 3 s (sends and calls fail with
/// [`TransportError::Unreachable`]). A new server at the same address (a restarted process)
/// is reached again within 5 s, with no further help: once a send succeeds, it and every
/// later batch arrive, in order, and calls are answered.
pub async fn a_restarted_server_is_reached_again(t: &TransportFactory) {
    let addr = t.addr(1);
    let client = t.transport(2);
    let first = Recorder::new(1);
    let guard = t.transport(1).serve(&addr, first.clone()).await.unwrap();
    client.send(&addr, batch(2, 1, 0)).await.unwrap();
    first.wait_for(1, PATIENCE).await;

    drop(guard);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut seq = 1;
    loop {
        let result = client.send(&addr, batch(2, 1, seq)).await;
        seq += 1;
        if result.is_err() {
            assert_unreachable("a send to the stopped server", result);
            break;
        }
        assert!(Instant::now() < deadline, "sends kept succeeding");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let result = client.call(&addr, status_request(), CALL_TIMEOUT).await;
    assert_unreachable("a call to the stopped server", result);

    let second = Recorder::new(1);
    let _guard = t.transport(1).serve(&addr, second.clone()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let resumed_at = loop {
        if client.send(&addr, batch(2, 1, seq)).await.is_ok() {
            break seq;
        }
        seq += 1;
        assert!(
            Instant::now() < deadline,
            "the restarted server was not reached"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for seq in resumed_at + 1..resumed_at + 100 {
        client.send(&addr, batch(2, 1, seq)).await.unwrap();
    }
    let seqs: Vec<u64> = second
        .wait_for(100, PATIENCE)
        .await
        .iter()
        .map(seq_of)
        .collect();
    assert_eq!(seqs, (resumed_at..resumed_at + 100).collect::<Vec<_>>());
    assert_eq!(status_id(client.as_ref(), &addr).await.unwrap(), 1);
}

/// Serving an address that is already served fails with [`TransportError::Setup`].
pub async fn serving_a_busy_address_is_a_setup_error(t: &TransportFactory) {
    let (addr, _recorder, _guard) = serve(t, 1).await;
    let err = t.transport(1).serve(&addr, Recorder::new(1)).await;
    assert!(matches!(err, Err(TransportError::Setup(_))), "{err:?}");
}

/// Answers raft batches and never answers a call.
struct Stalling;

#[async_trait]
impl InboundHandler for Stalling {
    async fn raft_batch(&self, _: PeerIdentity, _: RaftBatch) -> Result<(), TransportError> {
        Ok(())
    }

    async fn call(&self, _: PeerIdentity, _: wire::Request) -> wire::Response {
        std::future::pending().await
    }
}

/// A call whose answer does not come fails with [`TransportError::Failed`] once its own
/// timeout has passed (within a second after it), while a concurrent call with a longer
/// timeout is still waiting.
pub async fn call_timeouts_are_honoured(t: &TransportFactory) {
    let addr = t.addr(1);
    let _guard = t
        .transport(1)
        .serve(&addr, Arc::new(Stalling))
        .await
        .unwrap();
    let client = t.transport(2);
    // Connected first, so both calls are surely delivered and `Failed` is the only answer.
    client.send(&addr, batch(2, 1, 0)).await.unwrap();
    let calls: Vec<_> = [300, 1200]
        .map(|ms| {
            let (client, addr) = (client.clone(), addr.clone());
            tokio::spawn(async move {
                let timeout = Duration::from_millis(ms);
                let started = Instant::now();
                let call = client.call(&addr, status_request(), timeout);
                let result = tokio::time::timeout(timeout + Duration::from_secs(1), call).await;
                let result = result.unwrap_or_else(|_| panic!("a call ignored its {timeout:?}"));
                (timeout, started.elapsed(), result)
            })
        })
        .into_iter()
        .collect();
    for call in calls {
        let (timeout, took, result) = call.await.unwrap();
        assert!(
            matches!(result, Err(TransportError::Failed { .. })),
            "a call with timeout {timeout:?}: expected Failed, got {result:?}"
        );
        assert!(
            took + Duration::from_millis(20) >= timeout && took < timeout + Duration::from_secs(1),
            "a call with timeout {timeout:?} failed after {took:?}"
        );
    }
}

/// With transports limited to `max` bytes per message: a batch of more than `max` bytes is
/// split into frames that fit and arrives whole and in order; a batch holding one message
/// over `max`, and a call over `max`, are refused with [`TransportError::Malformed`] before
/// anything is sent.
pub async fn oversized_messages_are_split_or_refused(limited: &TransportFactory, max: usize) {
    let (addr, recorder, _guard) = serve(limited, 1).await;
    let client = limited.transport(2);
    let big = RaftBatch {
        messages: (0..10u8).map(|i| vec![i; max * 5 / 16].into()).collect(),
        ..batch(2, 1, 0)
    };
    client.send(&addr, big.clone()).await.unwrap();
    let small = batch(2, 1, 7);
    client.send(&addr, small.clone()).await.unwrap();
    let frames = eventually("the big batch and the next", PATIENCE, || {
        let mut got = recorder.batches();
        std::future::ready(match got.pop() {
            Some(last) if last == small => Ok(got),
            _ => Err("the batch after the big one has not arrived last".to_string()),
        })
    })
    .await;
    assert!(frames.len() > 1, "the big batch was not split");
    for frame in &frames {
        let size: usize = frame.messages.iter().map(bytes::Bytes::len).sum();
        assert!(size <= max, "a frame of {size} bytes");
        assert_eq!((frame.from, frame.to), (2, 1));
    }
    let joined: Vec<bytes::Bytes> = frames.into_iter().flat_map(|b| b.messages).collect();
    assert_eq!(joined, big.messages, "the big batch arrived changed");

    let huge = RaftBatch {
        messages: vec![vec![0; max + 1].into()],
        ..batch(2, 1, 0)
    };
    let err = client.send(&addr, huge).await;
    assert!(matches!(err, Err(TransportError::Malformed(_))), "{err:?}");
    let err = client
        .call(&addr, propose(vec![1; max + 1]), CALL_TIMEOUT)
        .await;
    assert!(matches!(err, Err(TransportError::Malformed(_))), "{err:?}");
}

/// A server limited to `max` bytes per message, and a client of `loose` that allows more:
/// the client's oversized call fails (delivered, so not as
/// [`TransportError::Unreachable`]), its oversized batch is not delivered, and the server
/// keeps serving everyone, that client included (its sends arrive again within 5 s). Returns
/// the error of the oversized call for the transport's own checks.
pub async fn oversized_inbound_is_refused(
    limited: &TransportFactory,
    loose: &TransportFactory,
    max: usize,
) -> TransportError {
    let (addr, recorder, _guard) = serve(limited, 1).await;
    let client = limited.transport(2);
    let loose = loose.transport(3);
    let result = loose
        .call(&addr, propose(vec![1; max + 1]), CALL_TIMEOUT)
        .await;
    let call_err = match result {
        Err(TransportError::Unreachable { .. }) | Ok(_) => {
            panic!("an oversized call: expected an error after delivery, got {result:?}")
        }
        Err(e) => e,
    };
    let oversized = RaftBatch {
        messages: vec![vec![0; max * 2].into()],
        ..batch(3, 1, 0)
    };
    let _ = loose.send(&addr, oversized).await;
    assert_eq!(status_id(client.as_ref(), &addr).await.unwrap(), 1);
    // A transport may cut the stream that carried the oversized batch and lose what followed.
    eventually(
        "the loose client's sends arrive again",
        Duration::from_secs(5),
        || {
            let (loose, addr, recorder) = (loose.clone(), addr.clone(), recorder.clone());
            async move {
                let _ = loose.send(&addr, batch(3, 1, 1)).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                match recorder.count() {
                    0 => Err("nothing arrived".to_string()),
                    _ => Ok(()),
                }
            }
        },
    )
    .await;
    let got = recorder.batches();
    assert!(
        got.iter().all(|b| b.messages[0].len() == 8),
        "an oversized batch arrived"
    );
    call_err
}
