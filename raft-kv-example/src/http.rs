//! The HTTP API every node serves; followers forward to the leader through raft-core.
//!
//! The routes here assume an admitted request: TLS, bearer tokens (`/cluster/*` needs an
//! admin token), body size, concurrency and time limits are enforced in front of them by
//! [`crate::http_gate`] and [`crate::http_server`].

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRef, Path, Query as UrlQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use raft_core::{
    Error, Fatal, Mailbox, MaybeApplied, NotApplied, ReadConsistency, SessionTag, StoreError,
};
use serde::{Deserialize, Serialize};

use crate::http_stats::HttpStats;
use crate::store::{decode, encode, CasOutcome, Command, Query};
use crate::watch::{WatchError, WatchHub};

/// Longest key accepted, in bytes.
const MAX_KEY: usize = 1024;

/// What the routes share: the node's mailbox and the HTTP front's metrics.
#[derive(Clone)]
pub struct ApiState {
    mailbox: Mailbox,
    stats: Arc<HttpStats>,
    /// The HTTP address this node reports in `/status`.
    http_advertise: Arc<str>,
    /// The store's recent changes, for `/watch`.
    watches: Arc<WatchHub>,
}

impl FromRef<ApiState> for Mailbox {
    fn from_ref(state: &ApiState) -> Mailbox {
        state.mailbox.clone()
    }
}

/// The routes of one node; `/metrics` includes `stats`; `/status` reports `http_advertise`;
/// `/watch` follows the changes `watches` records (the node's store's, see
/// [`crate::store::KvStore::watches`]).
pub fn router(
    mailbox: Mailbox,
    stats: Arc<HttpStats>,
    http_advertise: &str,
    watches: Arc<WatchHub>,
) -> Router {
    Router::new()
        .route("/kv/{key}", put(put_key).get(get_key).delete(delete_key))
        .route("/kv/{key}/cas", post(cas_key))
        .route("/watch", get(watch_all))
        .route("/watch/", get(watch_all))
        .route("/watch/{*prefix}", get(watch_prefix))
        .route("/kv/{key}/append", post(append_key))
        .route("/status", get(status))
        .merge(crate::health::routes(mailbox.clone()))
        .route("/metrics", get(metrics))
        .route("/cluster/leave", post(leave))
        .route("/cluster/remove/{id}", post(remove))
        .route("/cluster/transfer-leader/{id}", post(transfer_leader))
        .route("/cluster/members", get(members))
        .route("/cluster/add-learner/{id}", post(add_learner))
        .route("/cluster/promote/{id}", post(promote))
        .route("/cluster/backup", get(crate::backup::route))
        .with_state(ApiState {
            mailbox,
            stats,
            http_advertise: http_advertise.into(),
            watches,
        })
}

/// An error answer: a status code, a JSON body with the reason and, for errors of the raft
/// node, what became of the request (`"outcome"`), and for an overloaded node a `Retry-After`
/// header.
pub struct ApiError {
    status: StatusCode,
    reason: String,
    /// Set when the request was refused because the node is overloaded: it did not take
    /// effect, and the client should come back after a pause rather than at once.
    retry_after: bool,
    outcome: Option<&'static str>,
    /// For a watch from an index this node no longer keeps: the oldest it does.
    oldest_index: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, reason: impl Into<String>) -> ApiError {
        ApiError {
            status,
            reason: reason.into(),
            retry_after: false,
            outcome: None,
            oldest_index: None,
        }
    }
}

/// What became of a request that failed with `e`, as clients read it: `not_applied` (safe to
/// retry), `maybe_applied` (read the state to know), or `store_error` (the state machine's
/// own answer).
fn outcome_of(e: &Error) -> &'static str {
    match e {
        Error::NotApplied(_)
        | Error::NotLeader { .. }
        | Error::Invalid(_)
        | Error::Fatal(Fatal::Shutdown) => "not_applied",
        Error::Store(_) => "store_error",
        _ => "maybe_applied",
    }
}

/// Seconds an overloaded node asks clients to wait (`Retry-After`): long enough for a full
/// queue to drain, short enough that a retrying client barely notices.
const BUSY_RETRY_AFTER_SECS: &str = "1";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.reason });
        if let Some(outcome) = self.outcome {
            body["outcome"] = outcome.into();
        }
        if let Some(oldest) = self.oldest_index {
            body["oldest_index"] = oldest.into();
        }
        let body = Json(body);
        if self.retry_after {
            (
                self.status,
                [(header::RETRY_AFTER, BUSY_RETRY_AFTER_SECS)],
                body,
            )
                .into_response()
        } else {
            (self.status, body).into_response()
        }
    }
}

/// What a client whose session the cluster forgot must do.
const NEW_SESSION_HINT: &str =
    "start a new session: another Raft-Session id, with Raft-Session-Seq 1";

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let mut reason = e.to_string();
        let status = match &e {
            Error::NotApplied(NotApplied::SessionExpired)
            | Error::MaybeApplied(MaybeApplied::SessionExpired) => {
                reason = format!("{reason}: {NEW_SESSION_HINT}");
                StatusCode::GONE
            }
            Error::NotApplied(NotApplied::SupersededInSession) => StatusCode::CONFLICT,
            Error::Invalid(_) | Error::Store(_) => StatusCode::BAD_REQUEST,
            Error::NotApplied(_)
            | Error::MaybeApplied(_)
            | Error::NotLeader { .. }
            | Error::Fatal(Fatal::Shutdown) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            reason,
            retry_after: matches!(e, Error::NotApplied(NotApplied::Busy(_))),
            outcome: Some(outcome_of(&e)),
            oldest_index: None,
        }
    }
}

/// raft-kv's own encoding failed: a bug, not the client's fault.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
    }
}

fn bad_request(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, msg)
}

fn check_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(bad_request(format!("keys must be 1 to {MAX_KEY} bytes")));
    }
    Ok(())
}

/// The header naming a write's client session: a nonzero u64 the client picked at random.
pub const SESSION_HEADER: &str = "raft-session";
/// The header numbering a write in its client session: 1, 2, 3, ...; a retry repeats it.
pub const SESSION_SEQ_HEADER: &str = "raft-session-seq";

/// The client session a write names in its headers: both headers or neither (400 otherwise,
/// and for a value that is not a nonzero u64).
fn session_of(headers: &HeaderMap) -> Result<Option<SessionTag>, ApiError> {
    let number = |name: &str| -> Result<Option<u64>, ApiError> {
        let Some(value) = headers.get(name) else {
            return Ok(None);
        };
        let parsed = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&n| n != 0);
        match parsed {
            Some(n) => Ok(Some(n)),
            None => Err(bad_request(format!(
                "the {name} header must be a whole number from 1 to {}",
                u64::MAX
            ))),
        }
    };
    match (number(SESSION_HEADER)?, number(SESSION_SEQ_HEADER)?) {
        (None, None) => Ok(None),
        (Some(id), Some(seq)) => Ok(Some(SessionTag {
            id,
            seq,
            // A client sends command n > 1 only after it had an answer in the session (one
            // request at a time): the cluster must then know the session, or it expired.
            established: seq > 1,
        })),
        _ => Err(bad_request(format!(
            "the {SESSION_HEADER} and {SESSION_SEQ_HEADER} headers go together"
        ))),
    }
}

/// Proposes `command`: in the client's own session when its headers name one, else in one
/// of the mailbox's sessions.
async fn propose(
    mailbox: &Mailbox,
    session: Option<SessionTag>,
    command: Command,
) -> Result<Vec<u8>, ApiError> {
    let data = encode(&command)?;
    Ok(match session {
        Some(tag) => mailbox.send_proposal_in(tag, data).await?,
        None => mailbox.send_proposal(data).await?,
    })
}

async fn put_key(
    State(mailbox): State<Mailbox>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    check_key(&key)?;
    let session = session_of(&headers)?;
    propose(
        &mailbox,
        session,
        Command::Put {
            key,
            value: body.to_vec(),
        },
    )
    .await?;
    Ok(StatusCode::OK)
}

#[derive(Deserialize)]
struct ReadParams {
    consistency: Option<String>,
}

async fn get_key(
    State(mailbox): State<Mailbox>,
    Path(key): Path<String>,
    UrlQuery(params): UrlQuery<ReadParams>,
) -> Result<Response, ApiError> {
    check_key(&key)?;
    let consistency = match params.consistency.as_deref() {
        None | Some("linearizable") => ReadConsistency::Linearizable,
        Some("lease") => ReadConsistency::Lease,
        Some("stale") => ReadConsistency::Stale,
        Some(other) => {
            return Err(bad_request(format!(
                "consistency must be linearizable, lease or stale, not {other:?}"
            )))
        }
    };
    let answer = mailbox
        .query_with(encode(&Query::Get { key })?, consistency)
        .await?;
    Ok(match decode::<Option<Vec<u8>>>(&answer)? {
        Some(value) => (StatusCode::OK, value).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": "no such key" })),
        )
            .into_response(),
    })
}

async fn delete_key(
    State(mailbox): State<Mailbox>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    check_key(&key)?;
    let session = session_of(&headers)?;
    let existed: bool = decode(&propose(&mailbox, session, Command::Delete { key }).await?)?;
    Ok(if existed {
        StatusCode::OK
    } else {
        StatusCode::NO_CONTENT
    })
}

#[derive(Deserialize)]
struct CasBody {
    expect: Option<String>,
    value: String,
}

async fn cas_key(
    State(mailbox): State<Mailbox>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_key(&key)?;
    let session = session_of(&headers)?;
    let shape = |e: &dyn std::fmt::Display| {
        bad_request(format!(
            "expected {{\"expect\": string|null, \"value\": string}}: {e}"
        ))
    };
    // serde would also read a struct from a JSON array (`["old", "new"]`); only an object is
    // this API's body.
    let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| shape(&e))?;
    if !json.is_object() {
        return Err(shape(&"the body is not a JSON object"));
    }
    let cas: CasBody = serde_json::from_value(json).map_err(|e| shape(&e))?;
    let command = Command::Cas {
        key,
        expect: cas.expect.map(String::into_bytes),
        value: cas.value.into_bytes(),
    };
    let outcome: CasOutcome = decode(&propose(&mailbox, session, command).await?)?;
    let current = outcome
        .previous
        .map(|v| String::from_utf8_lossy(&v).into_owned());
    let status = if outcome.swapped {
        StatusCode::OK
    } else {
        StatusCode::CONFLICT
    };
    Ok((
        status,
        Json(serde_json::json!({ "swapped": outcome.swapped, "previous": current })),
    )
        .into_response())
}

#[derive(Deserialize)]
struct WatchParams {
    from: Option<u64>,
}

/// `GET /watch`: every key's changes (see [`watch_prefix`]).
async fn watch_all(
    State(watches): State<Arc<WatchHub>>,
    UrlQuery(params): UrlQuery<WatchParams>,
) -> Result<Response, ApiError> {
    watch(watches, String::new(), params.from)
}

/// `GET /watch/{prefix}?from=N`: a stream of JSON lines, one per change to a key that starts
/// with `prefix`, in log index order: every change with index `N` or later that this node's
/// history still has, then each new one as this node applies it (see
/// [`crate::watch::WatchLine`] for the lines). Without `from`, only changes from now on. The
/// `x-watch-from` header tells the index the stream starts at, to resume from if the stream
/// ends before any line. A `from` older than the history is answered 410 with the oldest index
/// still kept (`oldest_index`).
async fn watch_prefix(
    State(watches): State<Arc<WatchHub>>,
    Path(prefix): Path<String>,
    UrlQuery(params): UrlQuery<WatchParams>,
) -> Result<Response, ApiError> {
    if prefix.len() > MAX_KEY {
        return Err(bad_request(format!("a prefix is at most {MAX_KEY} bytes")));
    }
    watch(watches, prefix, params.from)
}

fn watch(watches: Arc<WatchHub>, prefix: String, from: Option<u64>) -> Result<Response, ApiError> {
    let permit = watches.admit().map_err(watch_error)?;
    let from = from.unwrap_or_else(|| watches.next_index()).max(1);
    watches.check_from(from).map_err(watch_error)?;
    let body = axum::body::Body::from_stream(crate::watch::stream(watches, prefix, from, permit));
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/x-ndjson".to_string()),
            (header::CACHE_CONTROL, "no-cache".to_string()),
            (
                header::HeaderName::from_static("x-watch-from"),
                from.to_string(),
            ),
        ],
        body,
    )
        .into_response())
}

fn watch_error(e: WatchError) -> ApiError {
    match e {
        WatchError::Compacted { oldest_index } => ApiError {
            status: StatusCode::GONE,
            reason: e.to_string(),
            retry_after: false,
            outcome: None,
            oldest_index: Some(oldest_index),
        },
        WatchError::Busy(_) => ApiError {
            retry_after: true,
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        },
        WatchError::Closed => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

impl FromRef<ApiState> for Arc<WatchHub> {
    fn from_ref(state: &ApiState) -> Arc<WatchHub> {
        state.watches.clone()
    }
}

/// `POST /kv/{key}/append`: appends the body to the key's value (an absent key counts as
/// empty) and answers `{"length": <the new length in bytes>}`.
async fn append_key(
    State(mailbox): State<Mailbox>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_key(&key)?;
    let session = session_of(&headers)?;
    let command = Command::Append {
        key,
        value: body.to_vec(),
    };
    let length: u64 = decode(&propose(&mailbox, session, command).await?)?;
    Ok(Json(serde_json::json!({ "length": length })).into_response())
}

/// The `/status` document.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatusBody {
    /// This node.
    pub id: u64,
    /// leader, follower, candidate, pre-candidate or learner.
    pub role: String,
    /// The leader this node knows, if any.
    pub leader_id: Option<u64>,
    /// Current term.
    pub term: u64,
    /// Highest committed index known here.
    pub commit_index: u64,
    /// Highest index applied here.
    pub applied_index: u64,
    /// Voting members.
    pub voters: Vec<u64>,
    /// Learners.
    pub learners: Vec<u64>,
    /// Raft address of every member.
    pub members: BTreeMap<u64, String>,
    /// On the leader: each member's replication progress, by id (empty elsewhere).
    #[serde(default)]
    pub progress: Vec<ProgressBody>,
    /// Last index in this node's log (0 from nodes that predate the field).
    #[serde(default)]
    pub last_log_index: u64,
    /// The cluster this node belongs to, as 16 hex digits ("0000000000000000" while a joining
    /// node has not received its first snapshot).
    #[serde(default)]
    pub cluster_id: String,
    /// The HTTP address this node reports (`--http-advertise`); only in a node's own
    /// `/status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_advertise: Option<String>,
}

/// One member's replication progress, as the leader sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgressBody {
    /// The member.
    pub id: u64,
    /// Highest log index known to be on the member.
    pub matched: u64,
    /// The next index the leader sends it.
    pub next_index: u64,
    /// Entries behind the leader's last index.
    pub lag: u64,
    /// probe, replicate or snapshot.
    pub state: String,
    /// Milliseconds since the leader last heard from the member; null if never (and for the
    /// leader itself).
    pub last_contact_ms: Option<u64>,
    /// Whether the member was active within the last election timeout.
    pub recent_active: bool,
}

impl From<raft_core::Status> for StatusBody {
    fn from(s: raft_core::Status) -> Self {
        let progress = s
            .progress
            .iter()
            .map(|(&id, p)| ProgressBody {
                id,
                matched: p.matched,
                next_index: p.next_index,
                lag: p.lag,
                state: p.state.to_string(),
                last_contact_ms: p
                    .last_contact
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                recent_active: p.recent_active,
            })
            .collect();
        StatusBody {
            id: s.id,
            role: s.role.to_string(),
            leader_id: s.leader_id,
            term: s.term,
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            voters: s.voters,
            learners: s.learners,
            members: s.members,
            progress,
            last_log_index: s.last_log_index,
            cluster_id: format!("{:016x}", s.cluster_id),
            http_advertise: None,
        }
    }
}

async fn status(State(state): State<ApiState>) -> Result<Json<StatusBody>, ApiError> {
    let mut body = StatusBody::from(state.mailbox.status().await?);
    body.http_advertise = Some(state.http_advertise.to_string());
    Ok(Json(body))
}

/// `/cluster/members`: the leader's status, with every member's progress, from any node.
async fn members(State(mailbox): State<Mailbox>) -> Result<Json<StatusBody>, ApiError> {
    Ok(Json(mailbox.leader_status().await?.into()))
}

async fn metrics(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let mailbox = &state.mailbox;
    let mut text = mailbox.metrics().render_prometheus("raftkit");
    state.stats.render_prometheus(&mut text);
    state.watches.render_prometheus(&mut text);
    let s = mailbox.status().await?;
    for (name, value) in [
        ("term", s.term),
        ("commit_index", s.commit_index),
        ("applied_index", s.applied_index),
        ("is_leader", u64::from(s.role == raft_core::Role::Leader)),
    ] {
        text.push_str(&format!(
            "# TYPE raftkit_{name} gauge\nraftkit_{name} {value}\n"
        ));
    }
    Ok(([("content-type", "text/plain; version=0.0.4")], text).into_response())
}

async fn leave(State(mailbox): State<Mailbox>) -> Result<StatusCode, ApiError> {
    mailbox.leave().await?;
    Ok(StatusCode::OK)
}

async fn remove(
    State(mailbox): State<Mailbox>,
    Path(id): Path<u64>,
) -> Result<StatusCode, ApiError> {
    mailbox.remove_node(id).await?;
    Ok(StatusCode::OK)
}

async fn transfer_leader(
    State(mailbox): State<Mailbox>,
    Path(id): Path<u64>,
) -> Result<StatusCode, ApiError> {
    mailbox.transfer_leader(id).await?;
    Ok(StatusCode::OK)
}

/// Longest raft address accepted, in bytes.
const MAX_RAFT_ADDR: usize = 256;

/// Checks that `addr` looks like `host:port` (`[v6]:port` for IPv6) and names one machine
/// (not `0.0.0.0` or `[::]`): it is what peers dial, so a typo or a wildcard must not become
/// a member the cluster keeps dialling.
pub(crate) fn check_raft_addr(addr: &str) -> Result<(), String> {
    if addr.is_empty() || addr.len() > MAX_RAFT_ADDR {
        return Err(format!("the address must be 1 to {MAX_RAFT_ADDR} bytes"));
    }
    let shape = || format!("{addr:?} is not host:port");
    let (host, port) = addr.rsplit_once(':').ok_or_else(shape)?;
    if !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
        return Err(format!("{addr:?}: the port must be 1 to 65535"));
    }
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        }
    };
    let wildcard = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified());
    if wildcard {
        Err(format!(
            "{addr:?} is a wildcard: give the address other nodes dial (the advertised one)"
        ))
    } else if host_ok {
        Ok(())
    } else {
        Err(shape())
    }
}

#[derive(Deserialize)]
struct AddLearnerBody {
    addr: String,
}

/// `/cluster/add-learner/{id}` with `{"addr": "host:port"}`: a member that receives the log
/// but does not vote until promoted.
async fn add_learner(
    State(mailbox): State<Mailbox>,
    Path(id): Path<u64>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let shape = |e: &dyn std::fmt::Display| {
        bad_request(format!("expected {{\"addr\": \"host:port\"}}: {e}"))
    };
    let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| shape(&e))?;
    if !json.is_object() {
        return Err(shape(&"the body is not a JSON object"));
    }
    let body: AddLearnerBody = serde_json::from_value(json).map_err(|e| shape(&e))?;
    check_raft_addr(&body.addr).map_err(bad_request)?;
    mailbox.add_learner(id, body.addr).await?;
    Ok(StatusCode::OK)
}

/// `/cluster/promote/{id}`: a learner becomes a voter.
async fn promote(
    State(mailbox): State<Mailbox>,
    Path(id): Path<u64>,
) -> Result<StatusCode, ApiError> {
    mailbox.promote(id).await?;
    Ok(StatusCode::OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_core::MaybeApplied;

    async fn body_json(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024)
            .await
            .unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or_default()
    }

    #[test]
    fn raft_addresses_must_be_host_and_port() {
        for good in [
            "127.0.0.1:7001",
            "node-4.example:5000",
            "[::1]:7001",
            "n_4:1",
        ] {
            assert_eq!(check_raft_addr(good), Ok(()), "{good}");
        }
        let long = format!("{}:1", "a".repeat(MAX_RAFT_ADDR));
        for bad in [
            "",
            "127.0.0.1",
            ":7001",
            "host:",
            "host:0",
            "host:65536",
            "host:port",
            "a b:1",
            "user@host:1",
            "::1:7001",
            "[zz]:1",
            "http://h:1",
            "0.0.0.0:7001",
            "[::]:7001",
            long.as_str(),
        ] {
            assert!(check_raft_addr(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[tokio::test]
    async fn busy_is_503_with_retry_after_and_a_reason() {
        let response = ApiError::from(Error::from(NotApplied::Busy(
            "the node's inbox is full".into(),
        )))
        .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
            Some("1")
        );
        let body = body_json(response).await;
        let reason = body["error"].as_str().unwrap_or_default();
        assert!(
            reason.starts_with("busy: the node's inbox is full"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn other_errors_keep_their_status_and_no_retry_after() {
        for (error, status) in [
            (Error::Invalid("no".into()), StatusCode::BAD_REQUEST),
            (
                Error::Store(StoreError::msg("bad")),
                StatusCode::BAD_REQUEST,
            ),
            (
                NotApplied::MembershipBusy.into(),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (NotApplied::Dropped.into(), StatusCode::SERVICE_UNAVAILABLE),
            (
                NotApplied::OtherCluster("cluster id mismatch".into()).into(),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                MaybeApplied::LeadershipLost.into(),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (Fatal::Shutdown.into(), StatusCode::SERVICE_UNAVAILABLE),
            (
                Fatal::Config("x".into()).into(),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ] {
            let what = error.to_string();
            let response = ApiError::from(error).into_response();
            assert_eq!(response.status(), status, "{what}");
            assert!(
                response.headers().get(header::RETRY_AFTER).is_none(),
                "{what}"
            );
            let body = body_json(response).await;
            assert_eq!(body["error"].as_str(), Some(what.as_str()));
            assert!(body["outcome"].is_string(), "{body}");
        }
    }

    #[tokio::test]
    async fn session_errors_are_gone_and_conflict() {
        for (error, status, outcome) in [
            (
                Error::from(NotApplied::SessionExpired),
                StatusCode::GONE,
                "not_applied",
            ),
            (
                MaybeApplied::SessionExpired.into(),
                StatusCode::GONE,
                "maybe_applied",
            ),
            (
                NotApplied::SupersededInSession.into(),
                StatusCode::CONFLICT,
                "not_applied",
            ),
            (
                MaybeApplied::AnswerNotKept.into(),
                StatusCode::SERVICE_UNAVAILABLE,
                "maybe_applied",
            ),
        ] {
            let response = ApiError::from(error).into_response();
            assert_eq!(response.status(), status);
            let body = body_json(response).await;
            assert_eq!(body["outcome"].as_str(), Some(outcome), "{body}");
            if status == StatusCode::GONE {
                let reason = body["error"].as_str().unwrap_or_default();
                assert!(reason.ends_with(NEW_SESSION_HINT), "{reason}");
            }
        }
    }

    #[test]
    fn session_headers_go_together_and_are_nonzero_numbers() {
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                if let Ok(v) = value.parse() {
                    map.insert(*name, v);
                }
            }
            map
        };
        assert!(matches!(session_of(&headers(&[])), Ok(None)));
        let tag = session_of(&headers(&[
            (SESSION_HEADER, "77"),
            (SESSION_SEQ_HEADER, "1"),
        ]));
        assert!(
            matches!(
                tag,
                Ok(Some(SessionTag {
                    id: 77,
                    seq: 1,
                    established: false
                }))
            ),
            "{:?}",
            tag.as_ref().ok()
        );
        let tag = session_of(&headers(&[
            (SESSION_HEADER, "18446744073709551615"),
            (SESSION_SEQ_HEADER, " 2 "),
        ]));
        assert!(
            matches!(
                tag,
                Ok(Some(SessionTag {
                    id: u64::MAX,
                    seq: 2,
                    established: true
                }))
            ),
            "{:?}",
            tag.as_ref().ok()
        );
        for bad in [
            vec![(SESSION_HEADER, "77")],
            vec![(SESSION_SEQ_HEADER, "1")],
            vec![(SESSION_HEADER, "0"), (SESSION_SEQ_HEADER, "1")],
            vec![(SESSION_HEADER, "77"), (SESSION_SEQ_HEADER, "0")],
            vec![(SESSION_HEADER, "-1"), (SESSION_SEQ_HEADER, "1")],
            vec![(SESSION_HEADER, "x"), (SESSION_SEQ_HEADER, "1")],
            vec![
                (SESSION_HEADER, "18446744073709551616"),
                (SESSION_SEQ_HEADER, "1"),
            ],
        ] {
            let result = session_of(&headers(&bad));
            assert!(
                matches!(&result, Err(e) if e.status == StatusCode::BAD_REQUEST),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn outcomes_follow_the_error_type() {
        assert_eq!(outcome_of(&NotApplied::Dropped.into()), "not_applied");
        assert_eq!(
            outcome_of(&NotApplied::Busy("full".into()).into()),
            "not_applied"
        );
        assert_eq!(outcome_of(&Fatal::Shutdown.into()), "not_applied");
        assert_eq!(
            outcome_of(&MaybeApplied::LeadershipLost.into()),
            "maybe_applied"
        );
        assert_eq!(
            outcome_of(&MaybeApplied::Timeout(std::time::Duration::from_secs(1)).into()),
            "maybe_applied"
        );
        assert_eq!(
            outcome_of(&Error::Store(StoreError::msg("no"))),
            "store_error"
        );
    }
}
