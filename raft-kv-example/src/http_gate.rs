//! The per-request gate in front of every route, in this order:
//!
//! 1. **Concurrency**: at most `--http-max-concurrent-requests` requests are served at once;
//!    one more is answered 503 with `Retry-After: 1` at once, not queued.
//! 2. **Credentials** (when token files are given): 401 / 403, see [`crate::http_auth`].
//! 3. **Body size**: a `Content-Length` over `--http-max-body-bytes` is answered 413 without
//!    reading the body; a streamed (chunked) body is read up to the limit and answered 413
//!    past it.
//! 4. **Time**: the body must arrive, and the route answer, within `--http-request-timeout`
//!    of the request head: a body still incomplete then is answered 408 (and the connection
//!    closed); a route still working (e.g. a proposal waiting for a quorum) 503. A write cut
//!    short this way may still take effect.
//!
//! Bodies are read whole here, so the routes get them already in memory.
//!
//! Health probes (`GET` or `HEAD` of `/health` and `/ready`) skip all four: they need no token
//! and no permit, read no body and bound their own time ([`crate::health`]).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::http_auth::{Access, Tokens};
use crate::http_stats::{bump, GaugeGuard, HttpStats};

/// The gate's settings and shared state.
#[derive(Debug)]
pub struct Gate {
    /// `None`: no token file, the API is open.
    pub tokens: Option<Tokens>,
    /// One permit per request being served.
    pub permits: Arc<Semaphore>,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Time from the request head to the answer.
    pub request_timeout: Duration,
    /// Where refusals are counted.
    pub stats: Arc<HttpStats>,
}

impl Gate {
    /// A gate admitting `max_concurrent_requests` requests at once.
    pub fn new(
        tokens: Option<Tokens>,
        max_concurrent_requests: usize,
        max_body_bytes: usize,
        request_timeout: Duration,
        stats: Arc<HttpStats>,
    ) -> Gate {
        stats.max_concurrent_requests.store(
            u64::try_from(max_concurrent_requests).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        Gate {
            tokens,
            permits: Arc::new(Semaphore::new(max_concurrent_requests)),
            max_body_bytes,
            request_timeout,
            stats,
        }
    }
}

fn refusal(status: StatusCode, reason: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": reason.into() }))).into_response()
}

/// A refusal after which the connection is closed (its request body was not read).
fn closing_refusal(status: StatusCode, reason: impl Into<String>) -> Response {
    let mut response = refusal(status, reason);
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn content_length(request: &Request) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The middleware (`axum::middleware::from_fn_with_state(gate, admit)`).
pub async fn admit(State(gate): State<Arc<Gate>>, request: Request, next: Next) -> Response {
    let deadline = Instant::now() + gate.request_timeout;
    let stats = &gate.stats;

    // Health probes skip the concurrency limit and the tokens: load balancers send them
    // without credentials, and a node busy with clients is still alive. They read no body and
    // bound their own work (crate::health).
    if crate::health::is_probe(request.method(), request.uri().path()) {
        return next.run(request).await;
    }

    let Ok(_permit) = gate.permits.clone().try_acquire_owned() else {
        bump(&stats.rejected_busy);
        let mut response = refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy: too many requests in flight on this node (--http-max-concurrent-requests)",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    let _in_flight = GaugeGuard::new(&stats.requests_in_flight);

    if let Some(tokens) = &gate.tokens {
        let access = Access::of_path(request.uri().path());
        if let Err(denied) = tokens.check(request.headers().get(header::AUTHORIZATION), access) {
            let status = denied.status();
            let mut response = refusal(status, denied.reason());
            if status == StatusCode::UNAUTHORIZED {
                bump(&stats.rejected_unauthorized);
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"raft-kv\""),
                );
            } else {
                bump(&stats.rejected_forbidden);
            }
            return response;
        }
    }

    let max = gate.max_body_bytes;
    let too_large = || {
        bump(&stats.rejected_too_large);
        closing_refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is over {max} bytes (--http-max-body-bytes)"),
        )
    };
    if content_length(&request).is_some_and(|n| n > u64::try_from(max).unwrap_or(u64::MAX)) {
        return too_large();
    }
    let (parts, body) = request.into_parts();
    let body = match tokio::time::timeout_at(deadline, Limited::new(body, max).collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
        Ok(Err(e)) => {
            return closing_refusal(
                StatusCode::BAD_REQUEST,
                format!("reading the request body: {e}"),
            )
        }
        Err(_elapsed) => {
            bump(&stats.request_timeouts);
            return closing_refusal(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {:?} (--http-request-timeout)",
                    gate.request_timeout
                ),
            );
        }
    };
    let request = Request::from_parts(parts, Body::from(body));
    match tokio::time::timeout_at(deadline, next.run(request)).await {
        Ok(response) => response,
        Err(_elapsed) => {
            bump(&stats.request_timeouts);
            refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "no answer within {:?} (--http-request-timeout); a write may still take effect",
                    gate.request_timeout
                ),
            )
        }
    }
}
