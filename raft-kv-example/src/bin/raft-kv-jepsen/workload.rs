//! The clients: put / get / cas / delete on a small key set, and appends of unique tokens
//! to a few other keys ([`crate::appends`]), against random nodes over the HTTP API, every
//! operation recorded with its outcome.
//!
//! Each client writes in its own client session (`Raft-Session`, `Raft-Session-Seq`): a write
//! whose outcome is unknown is sent again, to a random node, with the same number until the
//! operation's deadline (`--op-timeout`), and the cluster applies it once. `--no-sessions`
//! sends each write once without the headers (and starts the nodes with
//! `--no-client-sessions`), as before sessions existed.
//!
//! Outcomes follow what the API promises:
//!
//! * a read that did not answer 200/404 is `Failed` (it has no effect, whatever happened);
//! * a write refused before it was sent (connection refused), or answered 503 with an error
//!   raft-core documents as "did not take effect" (no leader, not the leader, proposal
//!   dropped, membership busy), is `Failed` — so the checker holds the server to that
//!   promise;
//! * any other write error (timeout, leadership lost, transport failure, 500, a connection
//!   that broke after the request was sent) is `Unknown`: it may or may not have applied.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use raft_core::testing::linearizability::{KvOp, KvOutput, Operation, Outcome};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;

use crate::appends::{AppendOutcome, AppendRecord, SEPARATOR};

/// An HTTP client builder that sends `Authorization: Bearer <token>` on every request (a
/// request's own `bearer_auth` replaces it, e.g. the admin token on `/cluster/*`).
pub fn authorized(token: &str) -> anyhow::Result<reqwest::ClientBuilder> {
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))?;
    value.set_sensitive(true);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, value);
    Ok(reqwest::Client::builder().default_headers(headers))
}

/// One recorded operation, with wall-clock times for the report.
#[derive(Debug, Clone)]
pub struct Record {
    /// The logical history entry the checker sees.
    pub op: Operation,
    /// The node the request went to.
    pub node: u64,
    /// Seconds since the start of the run, at invocation.
    pub t_invoke: f64,
    /// Seconds since the start of the run, at completion.
    pub t_complete: Option<f64>,
    /// Why it did not succeed.
    pub error: Option<String>,
}

/// A thread-safe recorder. Invocations and completions take their logical time under one
/// lock, so real-time order and logical order agree.
pub struct Recorder {
    clock: AtomicU64,
    records: Mutex<Vec<Record>>,
    started: Instant,
}

impl Recorder {
    /// An empty history whose wall times count from `started`.
    pub fn new(started: Instant) -> Arc<Recorder> {
        Arc::new(Recorder {
            clock: AtomicU64::new(0),
            records: Mutex::new(Vec::new()),
            started,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Record>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn invoke(&self, client: u64, node: u64, op: KvOp) -> usize {
        let mut records = self.lock();
        let invoke = self.clock.fetch_add(1, Ordering::SeqCst);
        records.push(Record {
            op: Operation {
                client,
                op,
                invoke,
                complete: None,
                outcome: Outcome::Unknown,
            },
            node,
            t_invoke: self.started.elapsed().as_secs_f64(),
            t_complete: None,
            error: None,
        });
        records.len() - 1
    }

    fn complete(&self, index: usize, outcome: Outcome, error: Option<String>) {
        let mut records = self.lock();
        let complete = self.clock.fetch_add(1, Ordering::SeqCst);
        let t = self.started.elapsed().as_secs_f64();
        if let Some(record) = records.get_mut(index) {
            record.op.complete = Some(complete);
            record.op.outcome = outcome;
            record.t_complete = Some(t);
            record.error = error;
        }
    }

    /// Every record so far, in invocation order.
    pub fn records(&self) -> Vec<Record> {
        self.lock().clone()
    }
}

/// One request of the suite: a register operation, or an append.
#[derive(Debug, Clone, Copy)]
enum Call<'a> {
    Kv(&'a KvOp),
    Append { key: &'a str, token: &'a str },
}

/// A successful answer.
enum Reply {
    Kv(KvOutput),
    /// An append's: the value's new length.
    Appended(u64),
}

/// What an HTTP attempt produced.
enum Answer {
    Ok(Reply),
    /// Definitely not applied.
    Failed(String),
    /// Maybe applied.
    Unknown(String),
    /// 410: the cluster no longer knows the session; `not_applied` when the body says this
    /// attempt did not take effect.
    SessionGone {
        not_applied: bool,
        error: String,
    },
}

/// A client's own session: one write at a time, numbered from 1; a retry repeats the number.
#[derive(Debug, Clone, Copy)]
struct ClientSession {
    id: u64,
    seq: u64,
    /// The client has had an answer in it (the server assumes so from `seq > 1`).
    established: bool,
}

impl ClientSession {
    fn new(rng: &mut StdRng) -> ClientSession {
        ClientSession {
            id: rng.gen_range(1..=u64::MAX),
            seq: 1,
            established: false,
        }
    }

    /// Moves on after a write that ended as `answered` (true: the cluster answered it).
    fn next(&mut self, answered: bool, rng: &mut StdRng) {
        if answered || self.established {
            self.seq += 1;
            self.established |= answered;
        } else {
            // Number 2 would claim an answer the client never had: the cluster would refuse
            // it (410) if the first command never applied. Start afresh instead.
            *self = ClientSession::new(rng);
        }
    }
}

/// Whether a 503 body (`{"error": "...", "outcome": "..."}`) promises that the write did not
/// take effect: raft-kv says so by the error's type, never in the reason's text.
fn not_applied(body: &str) -> bool {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(body) else {
        return false;
    };
    value["outcome"].as_str() == Some("not_applied")
}

fn key_path(url: &str, key: &str) -> String {
    // Keys are generated by the suite: ASCII letters, digits and '-'.
    format!("{url}/kv/{key}")
}

/// Runs one operation against `url`; gets use `reads` consistency; `session` (id, number)
/// goes in the session headers; `timeout` replaces the client's.
async fn attempt(
    http: &reqwest::Client,
    url: &str,
    call: Call<'_>,
    reads: &str,
    session: Option<(u64, u64)>,
    timeout: Option<Duration>,
) -> Answer {
    let mut request = match call {
        Call::Kv(KvOp::Put { key, value }) => http.put(key_path(url, key)).body(value.clone()),
        Call::Kv(KvOp::Get { key }) => {
            http.get(format!("{}?consistency={reads}", key_path(url, key)))
        }
        Call::Kv(KvOp::Delete { key }) => http.delete(key_path(url, key)),
        Call::Kv(KvOp::Cas { key, expect, value }) => http
            .post(format!("{}/cas", key_path(url, key)))
            .json(&serde_json::json!({ "expect": expect, "value": value })),
        Call::Append { key, token } => http
            .post(format!("{}/append", key_path(url, key)))
            .body(format!("{token}{SEPARATOR}")),
    };
    if let Some((id, seq)) = session {
        request = request
            .header("Raft-Session", id.to_string())
            .header("Raft-Session-Seq", seq.to_string());
    }
    if let Some(timeout) = timeout {
        request = request.timeout(timeout);
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) if e.is_connect() => return Answer::Failed(format!("connect: {e}")),
        Err(e) => return Answer::Unknown(format!("request: {e}")),
    };
    let status = response.status();
    let body = match response.text().await {
        Ok(b) => b,
        Err(e) => return Answer::Unknown(format!("{status}, reading the body: {e}")),
    };
    let output = match (call, status) {
        (Call::Kv(KvOp::Put { .. }), StatusCode::OK) => Some(KvOutput::Done),
        (Call::Kv(KvOp::Delete { .. }), StatusCode::OK | StatusCode::NO_CONTENT) => {
            Some(KvOutput::Done)
        }
        (Call::Kv(KvOp::Get { .. }), StatusCode::OK) => Some(KvOutput::Value(Some(body.clone()))),
        (Call::Kv(KvOp::Get { .. }), StatusCode::NOT_FOUND) => Some(KvOutput::Value(None)),
        (Call::Kv(KvOp::Cas { .. }), StatusCode::OK) => Some(KvOutput::Swapped(true)),
        // 409 is also a refused session number: only a body with `swapped` is a CAS's.
        (Call::Kv(KvOp::Cas { .. }), StatusCode::CONFLICT) if cas_refused(&body) => {
            Some(KvOutput::Swapped(false))
        }
        (Call::Append { .. }, StatusCode::OK) => {
            return match appended_length(&body) {
                Some(length) => Answer::Ok(Reply::Appended(length)),
                None => Answer::Unknown(format!("{status}: an answer without a length: {body}")),
            }
        }
        _ => None,
    };
    match output {
        Some(out) => Answer::Ok(Reply::Kv(out)),
        None if status == StatusCode::GONE => Answer::SessionGone {
            not_applied: not_applied(&body),
            error: format!("{status}: {body}"),
        },
        None if matches!(
            status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::CONFLICT
        ) && not_applied(&body) =>
        {
            Answer::Failed(format!("{status}: {body}"))
        }
        None if status == StatusCode::BAD_REQUEST => Answer::Failed(format!("{status}: {body}")),
        None => Answer::Unknown(format!("{status}: {body}")),
    }
}

/// Whether a 409 body is a compare-and-swap's "not swapped".
fn cas_refused(body: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(body).is_ok_and(|v| v["swapped"] == false)
}

/// The `length` of an append's answer.
fn appended_length(body: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["length"].as_u64())
}

/// Runs `op` against node `node` at `url` and records it (reads are linearizable).
pub async fn run_op(
    recorder: &Recorder,
    http: &reqwest::Client,
    client: u64,
    node: u64,
    url: &str,
    op: KvOp,
) -> Outcome {
    run_op_with(recorder, http, client, node, url, op, "linearizable").await
}

/// [`run_op`] with reads of the given consistency (`linearizable`, `lease` or `stale`).
pub async fn run_op_with(
    recorder: &Recorder,
    http: &reqwest::Client,
    client: u64,
    node: u64,
    url: &str,
    op: KvOp,
    reads: &str,
) -> Outcome {
    let index = recorder.invoke(client, node, op.clone());
    let answer = attempt(http, url, Call::Kv(&op), reads, None, None).await;
    let outcome = kv_outcome(&op, answer);
    recorder.complete(index, outcome.0.clone(), outcome.1);
    outcome.0
}

/// A register operation's outcome from its final answer.
fn kv_outcome(op: &KvOp, answer: Answer) -> (Outcome, Option<String>) {
    let is_read = matches!(op, KvOp::Get { .. });
    match answer {
        Answer::Ok(Reply::Kv(out)) => (Outcome::Ok(out), None),
        Answer::Ok(Reply::Appended(_)) => (Outcome::Unknown, Some("an append's answer".into())),
        // A read has no effect: whatever happened, it can be left out.
        Answer::Failed(e) | Answer::Unknown(e) if is_read => (Outcome::Failed, Some(e)),
        Answer::SessionGone { error, .. } if is_read => (Outcome::Failed, Some(error)),
        Answer::Failed(e) => (Outcome::Failed, Some(e)),
        Answer::SessionGone {
            not_applied: true,
            error,
        } => (Outcome::Failed, Some(error)),
        Answer::Unknown(e) | Answer::SessionGone { error: e, .. } => (Outcome::Unknown, Some(e)),
    }
}

/// A stale (local) read on one node, not recorded: used for the convergence check.
pub async fn stale_read(
    http: &reqwest::Client,
    url: &str,
    key: &str,
) -> Result<Option<String>, String> {
    read(http, url, key, "stale").await
}

/// A read of `consistency` on one node, not recorded.
pub async fn read(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    consistency: &str,
) -> Result<Option<String>, String> {
    let response = http
        .get(format!("{}?consistency={consistency}", key_path(url, key)))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.text().await.map_err(|e| e.to_string())?;
    match status {
        StatusCode::OK => Ok(Some(body)),
        StatusCode::NOT_FOUND => Ok(None),
        other => Err(format!("{other}: {body}")),
    }
}

/// The keys clients use in epoch `epoch` (a long run moves to fresh keys every epoch so
/// that each key's history stays small enough to check).
pub fn epoch_keys(epoch: u64, keys: usize) -> Vec<String> {
    (0..keys).map(|k| format!("e{epoch}-k{k}")).collect()
}

/// The keys clients append to (only appends write them, so they are not in the register
/// history).
pub fn append_keys(keys: usize) -> Vec<String> {
    (0..keys).map(|k| format!("append-{k}")).collect()
}

/// Percentage of a client's operations that are appends (when there are append keys).
const APPEND_SHARE: u32 = 20;

/// What the client tasks share.
pub struct Workload {
    /// The history.
    pub recorder: Arc<Recorder>,
    /// Node id and URL of every node clients may talk to.
    pub targets: Vec<(u64, String)>,
    /// Keys per epoch.
    pub keys: usize,
    /// Epoch length.
    pub epoch: Duration,
    /// Set to stop the clients.
    pub stop: AtomicBool,
    /// The last value seen per key, so that compare-and-swaps often succeed.
    seen: Mutex<BTreeMap<String, Option<String>>>,
    /// The highest epoch any client used.
    pub max_epoch: AtomicU64,
    /// The consistency of the clients' reads: `linearizable`, or `lease` / `stale` to check
    /// those modes (stale reads are expected to fail the check: a self-test of the suite).
    pub reads: String,
    /// The bearer token clients send.
    token: String,
    /// Keys clients append to (0: no appends).
    pub append_keys: usize,
    /// Whether clients write in their own sessions and retry unknown outcomes.
    pub sessions: bool,
    appends: Mutex<Vec<AppendRecord>>,
    started: Instant,
}

/// How a [`Workload`]'s clients behave.
pub struct ClientSettings {
    /// Keys per epoch.
    pub keys: usize,
    /// Epoch length.
    pub epoch: Duration,
    /// Read consistency.
    pub reads: String,
    /// The bearer token.
    pub token: String,
    /// Keys clients append to (0: no appends).
    pub append_keys: usize,
    /// Client sessions and retries of unknown outcomes.
    pub sessions: bool,
}

impl Workload {
    /// A workload over `targets`.
    pub fn new(
        recorder: Arc<Recorder>,
        targets: Vec<(u64, String)>,
        settings: ClientSettings,
        started: Instant,
    ) -> Arc<Workload> {
        Arc::new(Workload {
            recorder,
            targets,
            keys: settings.keys,
            epoch: settings.epoch,
            stop: AtomicBool::new(false),
            seen: Mutex::new(BTreeMap::new()),
            max_epoch: AtomicU64::new(0),
            reads: settings.reads,
            token: settings.token,
            append_keys: settings.append_keys,
            sessions: settings.sessions,
            appends: Mutex::new(Vec::new()),
            started,
        })
    }

    /// Every append so far.
    pub fn appends(&self) -> Vec<AppendRecord> {
        self.appends
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs a write `call` through `first` (a random node after it) until it has an answer:
    /// with a session, an attempt whose outcome is unknown is sent again with the same
    /// number until `deadline`; without one, the first attempt's answer is final.
    async fn perform(
        &self,
        http: &reqwest::Client,
        rng: &mut StdRng,
        session: &mut Option<ClientSession>,
        call: Call<'_>,
        first: &str,
        deadline: Instant,
    ) -> (Answer, u32) {
        let mut url = first.to_string();
        let mut attempts = 0;
        // An attempt may have applied the write.
        let mut maybe_applied = false;
        loop {
            attempts += 1;
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            let tag = session.as_ref().map(|s| (s.id, s.seq));
            let answer = attempt(http, &url, call, &self.reads, tag, Some(left)).await;
            let Some(current) = session.as_mut() else {
                return (answer, attempts);
            };
            let error = match answer {
                Answer::Ok(reply) => return (Answer::Ok(reply), attempts),
                Answer::Failed(e) if !maybe_applied => return (Answer::Failed(e), attempts),
                // Not applied now, but an earlier attempt may have been.
                Answer::Failed(e) => e,
                Answer::Unknown(e) => {
                    maybe_applied = true;
                    e
                }
                Answer::SessionGone { not_applied, error } => {
                    // The write may go again only in a new session, and only if no attempt
                    // may have applied it.
                    *current = ClientSession::new(rng);
                    if maybe_applied || !not_applied {
                        return (Answer::Unknown(error), attempts);
                    }
                    error
                }
            };
            let pause = Duration::from_millis(rng.gen_range(50..150));
            if Instant::now() + pause >= deadline {
                let error = format!("{attempts} attempts until the deadline; last: {error}");
                return if maybe_applied {
                    (Answer::Unknown(error), attempts)
                } else {
                    (Answer::Failed(error), attempts)
                };
            }
            tokio::time::sleep(pause).await;
            if let Some((_, next)) = self.targets.choose(rng) {
                url = next.clone();
            }
        }
    }

    /// One append of a unique token, recorded in the append history.
    async fn append(
        &self,
        http: &reqwest::Client,
        rng: &mut StdRng,
        session: &mut Option<ClientSession>,
        client: u64,
        token: String,
        op_timeout: Duration,
    ) -> bool {
        let keys = append_keys(self.append_keys);
        let key = keys[rng.gen_range(0..keys.len())].clone();
        let (node, url) = self.targets[rng.gen_range(0..self.targets.len())].clone();
        let t_invoke = self.started.elapsed().as_secs_f64();
        let deadline = Instant::now() + op_timeout;
        let call = Call::Append {
            key: &key,
            token: &token,
        };
        let (answer, attempts) = self.perform(http, rng, session, call, &url, deadline).await;
        let (outcome, error) = match answer {
            Answer::Ok(Reply::Appended(length)) => (AppendOutcome::Ok(length), None),
            Answer::Ok(Reply::Kv(_)) => (
                AppendOutcome::Unknown,
                Some("not an append's answer".into()),
            ),
            Answer::Failed(e) => (AppendOutcome::Failed, Some(e)),
            Answer::SessionGone {
                not_applied: true,
                error,
            } => (AppendOutcome::Failed, Some(error)),
            Answer::Unknown(e) | Answer::SessionGone { error: e, .. } => {
                (AppendOutcome::Unknown, Some(e))
            }
        };
        let ok = matches!(outcome, AppendOutcome::Ok(_));
        if let Some(s) = session.as_mut() {
            s.next(ok, rng);
        }
        self.appends
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(AppendRecord {
                client,
                key,
                token,
                outcome,
                node,
                t_invoke,
                t_complete: self.started.elapsed().as_secs_f64(),
                attempts,
                error,
            });
        ok
    }

    fn seen(&self) -> MutexGuard<'_, BTreeMap<String, Option<String>>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every key any client may have used.
    pub fn all_keys(&self) -> Vec<String> {
        (0..=self.max_epoch.load(Ordering::SeqCst))
            .flat_map(|e| epoch_keys(e, self.keys))
            .collect()
    }

    fn current_epoch(&self) -> u64 {
        let epoch = (self.started.elapsed().as_millis() / self.epoch.as_millis().max(1)) as u64;
        self.max_epoch.fetch_max(epoch, Ordering::SeqCst);
        epoch
    }

    /// One client: random operations on random nodes until stopped.
    pub async fn client(self: Arc<Self>, client: u64, seed: u64, op_timeout: Duration) {
        let mut rng = StdRng::seed_from_u64(seed);
        let http = match authorized(&self.token).and_then(|b| {
            b.timeout(op_timeout)
                .connect_timeout(Duration::from_secs(1))
                .build()
                .map_err(anyhow::Error::from)
        }) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("raft-kv-jepsen: client {client}: {e}");
                return;
            }
        };
        let mut session = self.sessions.then(|| ClientSession::new(&mut rng));
        let mut seq = 0u64;
        while !self.stop.load(Ordering::SeqCst) {
            seq += 1;
            if self.append_keys > 0 && rng.gen_range(0..100) < APPEND_SHARE {
                let token = format!("c{client}.{seq}");
                let ok = self
                    .append(&http, &mut rng, &mut session, client, token, op_timeout)
                    .await;
                let pause = if ok {
                    rng.gen_range(0..8)
                } else {
                    rng.gen_range(20..100)
                };
                tokio::time::sleep(Duration::from_millis(pause)).await;
                continue;
            }
            let keys = epoch_keys(self.current_epoch(), self.keys);
            let key = keys[rng.gen_range(0..keys.len())].clone();
            let value = format!("{client}-{seq}");
            let roll = rng.gen_range(0..100);
            let op = if roll < 40 {
                KvOp::Get { key: key.clone() }
            } else if roll < 65 {
                KvOp::Put {
                    key: key.clone(),
                    value: value.clone(),
                }
            } else if roll < 92 {
                let expect = match self.seen().get(&key) {
                    Some(v) if rng.gen_bool(0.8) => v.clone(),
                    _ => None,
                };
                KvOp::Cas {
                    key: key.clone(),
                    expect,
                    value: value.clone(),
                }
            } else {
                KvOp::Delete { key: key.clone() }
            };
            let (node, url) = self.targets[rng.gen_range(0..self.targets.len())].clone();
            let outcome = if matches!(op, KvOp::Get { .. }) {
                run_op_with(
                    &self.recorder,
                    &http,
                    client,
                    node,
                    &url,
                    op.clone(),
                    &self.reads,
                )
                .await
            } else {
                let index = self.recorder.invoke(client, node, op.clone());
                let deadline = Instant::now() + op_timeout;
                let (answer, _) = self
                    .perform(&http, &mut rng, &mut session, Call::Kv(&op), &url, deadline)
                    .await;
                let (outcome, error) = kv_outcome(&op, answer);
                if let Some(s) = session.as_mut() {
                    s.next(matches!(outcome, Outcome::Ok(_)), &mut rng);
                }
                self.recorder.complete(index, outcome.clone(), error);
                outcome
            };
            let learned = match (&op, &outcome) {
                (KvOp::Get { .. }, Outcome::Ok(KvOutput::Value(v))) => Some(v.clone()),
                (KvOp::Put { value, .. }, Outcome::Ok(_)) => Some(Some(value.clone())),
                (KvOp::Cas { value, .. }, Outcome::Ok(KvOutput::Swapped(true))) => {
                    Some(Some(value.clone()))
                }
                (KvOp::Delete { .. }, Outcome::Ok(_)) => Some(None),
                _ => None,
            };
            if let Some(v) = learned {
                self.seen().insert(key, v);
            }
            // Failures come fast (refused connections): do not spin.
            let pause = if matches!(outcome, Outcome::Ok(_)) {
                rng.gen_range(0..8)
            } else {
                rng.gen_range(20..100)
            };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::not_applied;

    #[test]
    fn only_the_not_applied_outcome_counts_as_not_applied() {
        let body = |m: &str, outcome: &str| {
            serde_json::json!({ "error": m, "outcome": outcome }).to_string()
        };
        assert!(not_applied(&body("no leader available", "not_applied")));
        assert!(not_applied(&body(
            "busy: the node's inbox is full",
            "not_applied"
        )));
        assert!(!not_applied(&body("request timed out", "maybe_applied")));
        assert!(!not_applied(&body("bad command", "store_error")));
        // The text alone promises nothing: without the outcome field, the outcome is unknown.
        assert!(!not_applied(
            &serde_json::json!({ "error": "no leader available" }).to_string()
        ));
        assert!(!not_applied("no leader available"));
    }
}
