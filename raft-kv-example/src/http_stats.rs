//! Counters and gauges of the HTTP front: open connections, requests in flight, refusals.
//! Rendered into `/metrics` next to raft's own metrics.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// The HTTP front's metrics (all relaxed atomics: they are only read for `/metrics`).
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Connections accepted and not closed yet (gauge).
    pub connections: AtomicU64,
    /// The connection cap in force (gauge).
    pub max_connections: AtomicU64,
    /// Connections closed at once because the cap was reached.
    pub connections_refused: AtomicU64,
    /// TLS handshakes that failed (bad certificate, plaintext on the HTTPS port, ...).
    pub tls_handshake_failures: AtomicU64,
    /// Connections closed for not sending a TLS handshake or a request head in time (slow
    /// clients and idle keep-alive connections).
    pub header_timeouts: AtomicU64,
    /// Requests being served (gauge).
    pub requests_in_flight: AtomicU64,
    /// The concurrent-request limit in force (gauge).
    pub max_concurrent_requests: AtomicU64,
    /// 503: over the concurrent-request limit.
    pub rejected_busy: AtomicU64,
    /// 401: no or malformed credentials.
    pub rejected_unauthorized: AtomicU64,
    /// 403: a token that is unknown or lacks the admin role.
    pub rejected_forbidden: AtomicU64,
    /// 413: a body over the limit.
    pub rejected_too_large: AtomicU64,
    /// 408 or 503: the request (body included) took longer than the request timeout.
    pub request_timeouts: AtomicU64,
}

/// Adds one to a counter.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Holds a gauge up by one while alive.
pub struct GaugeGuard<'a>(&'a AtomicU64);

impl<'a> GaugeGuard<'a> {
    /// Increments `gauge` until the guard is dropped.
    pub fn new(gauge: &'a AtomicU64) -> GaugeGuard<'a> {
        gauge.fetch_add(1, Ordering::Relaxed);
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl HttpStats {
    /// Appends the metrics in Prometheus text format, names prefixed `raftkit_http_`.
    pub fn render_prometheus(&self, out: &mut String) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for (name, kind, value) in [
            ("connections", "gauge", get(&self.connections)),
            ("max_connections", "gauge", get(&self.max_connections)),
            (
                "connections_refused_total",
                "counter",
                get(&self.connections_refused),
            ),
            (
                "tls_handshake_failures_total",
                "counter",
                get(&self.tls_handshake_failures),
            ),
            (
                "header_timeouts_total",
                "counter",
                get(&self.header_timeouts),
            ),
            ("requests_in_flight", "gauge", get(&self.requests_in_flight)),
            (
                "max_concurrent_requests",
                "gauge",
                get(&self.max_concurrent_requests),
            ),
        ] {
            let _ = write!(
                out,
                "# TYPE raftkit_http_{name} {kind}\nraftkit_http_{name} {value}\n"
            );
        }
        out.push_str("# TYPE raftkit_http_requests_rejected_total counter\n");
        for (reason, value) in [
            ("busy", get(&self.rejected_busy)),
            ("unauthorized", get(&self.rejected_unauthorized)),
            ("forbidden", get(&self.rejected_forbidden)),
            ("too_large", get(&self.rejected_too_large)),
            ("timeout", get(&self.request_timeouts)),
        ] {
            let _ = writeln!(
                out,
                "raftkit_http_requests_rejected_total{{reason=\"{reason}\"}} {value}"
            );
        }
    }
}
