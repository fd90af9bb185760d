//! `/health` and `/ready`: the probes load balancers, orchestrators and supervisors send.
//!
//! - `GET /health`: 200 `{"status":"ok","id":N,"role":"..."}` when the process serves HTTP
//!   and its raft node answers a status request within [`STATUS_TIMEOUT`]; 503
//!   `{"status":"unavailable","reason":"..."}` when the raft node has stopped or is wedged.
//!   A supervisor restarts a process whose `/health` fails.
//! - `GET /ready`: 200 `{"ready":true,...}` when this node is a member (voter or learner),
//!   knows a leader, and has applied to within `max_lag` entries of the commit index it knows
//!   (default [`DEFAULT_MAX_APPLY_LAG`]; `/ready?max_lag=N` sets another); otherwise 503
//!   `{"ready":false,"reason":"..."}`, e.g. `"no leader known"` or `"applying: 5000 entries
//!   behind the commit index"`. A load balancer sends clients only to ready nodes.
//!
//! Both answer without a bearer token and outside the API's concurrency limit
//! ([`crate::http_gate`] lets them through first): probes carry no credentials, and a node
//! busy with client requests is still alive. In exchange they stay cheap and say little: the
//! raft node is asked at most once per [`CACHE_FOR`] however many probes arrive (concurrent
//! probes share one answer), and the answers hold no keys, values or addresses.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use raft_core::{Mailbox, Status};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// The liveness probe's path.
pub const HEALTH_PATH: &str = "/health";
/// The readiness probe's path.
pub const READY_PATH: &str = "/ready";

/// How long a probe waits for the raft node's status: well above a healthy node's answer
/// (microseconds), well below a load balancer's probe timeout (typically 2 to 5 s).
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// How long one status answer serves later probes: bounds the work a flood of
/// unauthenticated probes can cause, and is short next to an election timeout (1 to 2 s), so
/// a node stops being ready about as soon as it loses its leader.
pub const CACHE_FOR: Duration = Duration::from_millis(100);

/// The default of `/ready?max_lag=`: entries a node may have committed but not yet applied
/// and still be ready. A node catching up after a restart or a snapshot is far past it; a
/// loaded but healthy node stays well below.
pub const DEFAULT_MAX_APPLY_LAG: u64 = 1000;

/// Whether a request is a probe, which the gate serves without a token or a concurrency
/// permit. Only GET and HEAD: any other method on these paths goes through the gate as usual.
pub fn is_probe(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD) && (path == HEALTH_PATH || path == READY_PATH)
}

/// The probe routes, for any router state (they carry their own).
pub fn routes<S>(mailbox: Mailbox) -> Router<S> {
    Router::new()
        .route(HEALTH_PATH, get(health))
        .route(READY_PATH, get(ready))
        .with_state(Probes {
            mailbox,
            last: Arc::new(Mutex::new(None)),
        })
}

/// The status answer shared by probes: when it was taken, and the status or why there is
/// none.
type Cached = Option<(Instant, Result<Status, String>)>;

#[derive(Clone)]
struct Probes {
    mailbox: Mailbox,
    last: Arc<Mutex<Cached>>,
}

impl Probes {
    /// The node's status, at most [`CACHE_FOR`] old.
    async fn status(&self) -> Result<Status, String> {
        // Probes queue here while one asks the node: a wedged node is asked once per
        // STATUS_TIMEOUT, not once per probe. A probe that cannot even get its turn within
        // STATUS_TIMEOUT (another is still waiting for the node) reports the same failure, so
        // no probe waits much longer than twice that.
        let Ok(mut last) = tokio::time::timeout(STATUS_TIMEOUT, self.last.lock()).await else {
            return Err(format!(
                "the raft node did not answer within {STATUS_TIMEOUT:?}"
            ));
        };
        if let Some((at, result)) = last.as_ref() {
            if at.elapsed() < CACHE_FOR {
                return result.clone();
            }
        }
        let result = match tokio::time::timeout(STATUS_TIMEOUT, self.mailbox.status()).await {
            Ok(Ok(status)) => Ok(status),
            Ok(Err(e)) => Err(format!("the raft node does not answer: {e}")),
            Err(_elapsed) => Err(format!(
                "the raft node did not answer within {STATUS_TIMEOUT:?}"
            )),
        };
        if let Err(reason) = &result {
            // Once per failure spell, not once per probe.
            if last.as_ref().is_none_or(|(_, before)| before.is_ok()) {
                tracing::warn!(%reason, "health probe: the raft node is not answering");
            }
        }
        *last = Some((Instant::now(), result.clone()));
        result
    }
}

async fn health(State(probes): State<Probes>) -> Response {
    match probes.status().await {
        Ok(s) => (
            StatusCode::OK,
            Json(json!({ "status": "ok", "id": s.id, "role": s.role.as_str() })),
        )
            .into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "reason": reason })),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct ReadyParams {
    max_lag: Option<u64>,
}

async fn ready(
    State(probes): State<Probes>,
    params: Result<Query<ReadyParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let max_lag = match params {
        Ok(Query(p)) => p.max_lag.unwrap_or(DEFAULT_MAX_APPLY_LAG),
        Err(_) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": "max_lag must be a whole number of entries" })),
            )
                .into_response()
        }
    };
    let verdict = probes
        .status()
        .await
        .and_then(|s| readiness(View::from(&s), max_lag).map(|()| s));
    match verdict {
        Ok(s) => (
            StatusCode::OK,
            Json(json!({
                "ready": true,
                "id": s.id,
                "role": s.role.as_str(),
                "leader_id": s.leader_id,
                "commit_index": s.commit_index,
                "applied_index": s.applied_index,
            })),
        )
            .into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "reason": reason })),
        )
            .into_response(),
    }
}

/// What readiness depends on, taken from a [`Status`] (a small view, so the rule and its
/// tests do not follow every field raft-core adds to `Status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct View {
    /// Whether the node is a voter or a learner of the configuration it knows.
    member: bool,
    leader_id: Option<u64>,
    commit_index: u64,
    applied_index: u64,
}

impl From<&Status> for View {
    fn from(s: &Status) -> View {
        View {
            member: s.voters.contains(&s.id) || s.learners.contains(&s.id),
            leader_id: s.leader_id,
            commit_index: s.commit_index,
            applied_index: s.applied_index,
        }
    }
}

/// Why a node should not get client traffic, if it should not.
fn readiness(v: View, max_lag: u64) -> Result<(), String> {
    if !v.member {
        return Err("not a member of the cluster (still joining, or removed from it)".to_string());
    }
    if v.leader_id.is_none() {
        return Err("no leader known".to_string());
    }
    let behind = v.commit_index.saturating_sub(v.applied_index);
    if behind > max_lag {
        return Err(format!(
            "applying: {behind} entries behind the commit index (more than {max_lag})"
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const CAUGHT_UP: View = View {
        member: true,
        leader_id: Some(1),
        commit_index: 5000,
        applied_index: 5000,
    };

    #[test]
    fn a_caught_up_member_with_a_leader_is_ready() {
        assert_eq!(readiness(CAUGHT_UP, DEFAULT_MAX_APPLY_LAG), Ok(()));
    }

    #[test]
    fn no_leader_is_not_ready() {
        let v = View {
            leader_id: None,
            ..CAUGHT_UP
        };
        assert_eq!(readiness(v, 1000), Err("no leader known".to_string()));
    }

    #[test]
    fn lagging_behind_the_commit_index_is_not_ready() {
        let v = View {
            applied_index: 3000,
            ..CAUGHT_UP
        };
        let reason = readiness(v, 1000).unwrap_err();
        assert!(
            reason.starts_with("applying: 2000 entries behind the commit index"),
            "{reason}"
        );
        // At the bound is still ready; a bound of zero wants every entry applied.
        assert_eq!(readiness(v, 2000), Ok(()));
        let one_behind = View {
            applied_index: 4999,
            ..CAUGHT_UP
        };
        assert!(readiness(one_behind, 0).is_err());
    }

    #[test]
    fn a_node_outside_the_membership_is_not_ready() {
        let v = View {
            member: false,
            ..CAUGHT_UP
        };
        let reason = readiness(v, 1000).unwrap_err();
        assert!(reason.starts_with("not a member"), "{reason}");
    }

    fn probes(raft: &raft_core::Raft) -> Probes {
        Probes {
            mailbox: raft.mailbox(),
            last: Arc::new(Mutex::new(None)),
        }
    }

    fn node() -> raft_core::Raft {
        let network = raft_core::LocalNetwork::new();
        raft_core::Raft::builder(1, crate::store::KvStore::default())
            .raft_addr("node-1")
            .transport(network.transport())
            .build()
            .unwrap()
    }

    async fn body(response: Response) -> (StatusCode, serde_json::Value) {
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn a_wedged_or_stopped_raft_node_is_unhealthy() {
        // Built but never run: nothing takes the status request (a wedged driver).
        let raft = node();
        let p = probes(&raft);
        let started = std::time::Instant::now();
        let (status, json) = body(health(State(p.clone())).await).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{json}");
        assert_eq!(json["status"], "unavailable", "{json}");
        assert!(
            json["reason"]
                .as_str()
                .unwrap()
                .contains("did not answer within"),
            "{json}"
        );
        assert!(
            started.elapsed() < STATUS_TIMEOUT * 3,
            "{:?}",
            started.elapsed()
        );
        let (status, json) =
            body(ready(State(p), Ok(Query(ReadyParams { max_lag: None }))).await).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{json}");
        assert_eq!(json["ready"], false, "{json}");

        // Gone (its driver's inbox dropped): answered at once.
        let p = probes(&raft);
        drop(raft);
        let (status, json) = body(health(State(p)).await).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{json}");
        assert!(
            json["reason"].as_str().unwrap().contains("does not answer"),
            "{json}"
        );
    }

    #[tokio::test]
    async fn a_running_single_node_is_healthy_then_ready() {
        let raft = node();
        let p = probes(&raft);
        let running = tokio::spawn(raft.lead());
        let (status, json) = body(health(State(p.clone())).await).await;
        assert_eq!(status, StatusCode::OK, "{json}");
        assert_eq!(json["id"], 1, "{json}");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (status, json) =
                body(ready(State(p.clone()), Ok(Query(ReadyParams { max_lag: None }))).await).await;
            if status == StatusCode::OK {
                assert_eq!(json["leader_id"], 1, "{json}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never ready: {json}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        running.abort();
    }

    #[test]
    fn only_get_and_head_on_the_probe_paths_are_probes() {
        assert!(is_probe(&Method::GET, "/health"));
        assert!(is_probe(&Method::HEAD, "/ready"));
        assert!(!is_probe(&Method::POST, "/health"));
        assert!(!is_probe(&Method::GET, "/status"));
        assert!(!is_probe(&Method::GET, "/health/x"));
        assert!(!is_probe(&Method::GET, "/kv/health"));
    }
}
