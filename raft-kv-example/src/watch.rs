//! Watches: the store's recent changes by log index, for `GET /watch/{prefix}`.
//!
//! The store ([`crate::store::KvStore`]) records every change it applies (a put, a delete of
//! a key that existed, a compare-and-swap that swapped) with the log index of its command into
//! a [`WatchHub`]: a bounded history of recent changes shared with the HTTP side. Every replica
//! applies the same log, so a change has the same index on every node, and a watcher that
//! loses its node can resume on another from the index after the last change it saw.
//!
//! Memory is bounded by the history alone. A watcher keeps no queue: it remembers the next
//! index it wants and reads what the history has from there whenever the store records
//! something (a `watch` channel wakes it). A watcher too slow to keep up falls behind the
//! history's start and is ended with the "compacted" error, exactly like one that asks to
//! start too far back: the client then re-reads the keys and watches from a fresh index.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// Bytes a change costs in the history besides its key and value.
const CHANGE_OVERHEAD: usize = 64;

/// A watcher sends at most about this many bytes of lines in one chunk.
const MAX_CHUNK_BYTES: usize = 64 * 1024;

/// A read of the history examines at most this many changes (the rest waits for the next).
const MAX_SCAN: usize = 4096;

/// How long a watcher with nothing to send waits before it sends a progress line.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

/// The default [`WatchLimits::max_changes`].
pub const DEFAULT_HISTORY_CHANGES: usize = 100_000;
/// The default [`WatchLimits::max_bytes`].
pub const DEFAULT_HISTORY_BYTES: usize = 64 * 1024 * 1024;
/// The default [`WatchLimits::max_watchers`].
pub const DEFAULT_MAX_WATCHERS: usize = 1024;

/// Bounds of the history and of the watchers.
#[derive(Debug, Clone, Copy)]
pub struct WatchLimits {
    /// Most changes kept.
    pub max_changes: usize,
    /// Most bytes of keys and values (plus a small overhead per change) kept.
    pub max_bytes: usize,
    /// Most watchers served at once.
    pub max_watchers: usize,
}

impl Default for WatchLimits {
    fn default() -> Self {
        WatchLimits {
            max_changes: DEFAULT_HISTORY_CHANGES,
            max_bytes: DEFAULT_HISTORY_BYTES,
            max_watchers: DEFAULT_MAX_WATCHERS,
        }
    }
}

/// One change to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The log index of the command that made it.
    pub index: u64,
    /// The key.
    pub key: String,
    /// The new value, the same buffer as the store's while it is the key's current value;
    /// `None`: the key was deleted.
    pub value: Option<Bytes>,
}

impl Change {
    fn cost(&self) -> usize {
        // The whole value counts even while the store shares it: the bound holds for a history
        // whose every value has since been replaced.
        CHANGE_OVERHEAD + self.key.len() + self.value.as_ref().map_or(0, Bytes::len)
    }
}

/// Why a watch cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// The history no longer has every change from the index asked for (it was evicted, or
    /// the node restored a snapshot past it): re-read the keys, then watch from
    /// `oldest_index` or later.
    #[error("compacted: changes before index {oldest_index} are no longer kept on this node; re-read the keys and watch from index {oldest_index} or later")]
    Compacted {
        /// The lowest `from` this node can serve now.
        oldest_index: u64,
    },
    /// The node stopped.
    #[error("the node stopped")]
    Closed,
    /// Too many watchers on this node.
    #[error("busy: {0} watchers are already served on this node")]
    Busy(usize),
}

/// The history and what it covers.
#[derive(Debug, Default)]
struct History {
    /// Oldest first, indexes increasing.
    changes: VecDeque<Arc<Change>>,
    /// What `changes` costs, see [`Change::cost`].
    bytes: usize,
    /// Every change with an index above this is in `changes`.
    complete_after: u64,
    /// The last index the store applied (a change or not).
    last_index: u64,
    /// The store was dropped: its node stopped.
    closed: bool,
}

/// The history of recent changes, shared between the store (which records) and the HTTP
/// routes (which serve watchers).
#[derive(Debug)]
pub struct WatchHub {
    history: Mutex<History>,
    /// The last index recorded or restored: wakes the watchers.
    notify: watch::Sender<u64>,
    limits: WatchLimits,
    watchers: Arc<Semaphore>,
    /// Changes dropped from the history to keep it within bounds.
    evicted: AtomicU64,
    /// Watches refused or ended because their start was no longer in the history.
    compacted: AtomicU64,
}

impl Default for WatchHub {
    fn default() -> Self {
        WatchHub::new(WatchLimits::default())
    }
}

/// What one read of the history gave a watcher.
#[derive(Debug)]
pub struct Batch {
    /// JSON lines, one per change, each ending with a newline.
    pub lines: Vec<u8>,
    /// The next index to read from.
    pub next: u64,
}

impl WatchHub {
    /// An empty history with these bounds.
    pub fn new(limits: WatchLimits) -> WatchHub {
        WatchHub {
            history: Mutex::new(History::default()),
            notify: watch::Sender::new(0),
            limits,
            watchers: Arc::new(Semaphore::new(
                limits.max_watchers.min(Semaphore::MAX_PERMITS),
            )),
            evicted: AtomicU64::new(0),
            compacted: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The store applied the command at `index`; `change` is what it changed, if anything.
    pub fn record(&self, index: u64, change: Option<(String, Option<Bytes>)>) {
        let mut h = self.lock();
        if index <= h.last_index {
            tracing::warn!(
                index,
                last = h.last_index,
                "a command applied out of order; not recorded for watchers"
            );
            return;
        }
        h.last_index = index;
        let Some((key, value)) = change else {
            return;
        };
        let change = Change { index, key, value };
        h.bytes += change.cost();
        h.changes.push_back(Arc::new(change));
        let mut evicted = 0;
        while h.changes.len() > self.limits.max_changes || h.bytes > self.limits.max_bytes {
            let Some(old) = h.changes.pop_front() else {
                break;
            };
            h.bytes -= old.cost();
            h.complete_after = old.index;
            evicted += 1;
        }
        drop(h);
        if evicted > 0 {
            self.evicted.fetch_add(evicted, Ordering::Relaxed);
        }
        self.notify.send_replace(index);
    }

    /// The changes the history holds, oldest first.
    #[cfg(test)]
    pub(crate) fn changes(&self) -> Vec<Arc<Change>> {
        self.lock().changes.iter().cloned().collect()
    }

    /// The store was replaced by a snapshot covering every index up to `index`: the history
    /// starts over there (earlier changes are in the snapshot, not in the history). The
    /// cluster's first snapshot, at index 1, holds a fresh store's state: no change precedes
    /// it, so a watch from index 1 misses nothing.
    pub fn restart_at(&self, index: u64) {
        let mut h = self.lock();
        h.changes.clear();
        h.bytes = 0;
        h.complete_after = if index <= 1 { 0 } else { index };
        h.last_index = index;
        drop(h);
        self.notify.send_replace(index);
    }

    /// The store is gone: every watcher ends.
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.send_modify(|_| {});
    }

    /// False when the bounds keep no change at all: the store need not copy its changes.
    pub fn keeps_changes(&self) -> bool {
        self.limits.max_changes > 0 && self.limits.max_bytes > 0
    }

    /// The index a watch without `from` starts at: the next one to be applied.
    pub fn next_index(&self) -> u64 {
        self.lock().last_index + 1
    }

    /// Admits one more watcher, or refuses when `max_watchers` are served already.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, WatchError> {
        self.watchers
            .clone()
            .try_acquire_owned()
            .map_err(|_| WatchError::Busy(self.limits.max_watchers))
    }

    /// Checks that the history has every change from `from` on.
    pub fn check_from(&self, from: u64) -> Result<(), WatchError> {
        let h = self.lock();
        self.covers(&h, from)
    }

    fn covers(&self, h: &History, from: u64) -> Result<(), WatchError> {
        if h.closed {
            return Err(WatchError::Closed);
        }
        if from <= h.complete_after {
            self.compacted.fetch_add(1, Ordering::Relaxed);
            return Err(WatchError::Compacted {
                oldest_index: h.complete_after + 1,
            });
        }
        Ok(())
    }

    /// The changes under `prefix` from index `from` on, as JSON lines (about
    /// [`MAX_CHUNK_BYTES`] at most), and the index to read from next.
    ///
    /// The lock is held only to find the changes (at most [`MAX_SCAN`] examined): they are
    /// written out after it is released, so watchers delay the store's applies very little.
    pub fn read(&self, from: u64, prefix: &str) -> Result<Batch, WatchError> {
        let mut found = Vec::new();
        let next = {
            let h = self.lock();
            self.covers(&h, from)?;
            let start = h.changes.partition_point(|c| c.index < from);
            let mut next = from.max(h.last_index + 1);
            let mut bytes = 0;
            for (scanned, change) in h.changes.range(start..).enumerate() {
                if bytes >= MAX_CHUNK_BYTES || scanned >= MAX_SCAN {
                    next = change.index;
                    break;
                }
                if change.key.starts_with(prefix) {
                    bytes += change.cost();
                    found.push(change.clone());
                }
            }
            next
        };
        let mut lines = Vec::new();
        for change in &found {
            write_change(&mut lines, change);
        }
        Ok(Batch { lines, next })
    }

    /// A receiver that wakes when the history may have something new.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }

    /// Appends the history's metrics in Prometheus text format, named `raftkit_kv_watch_*`.
    pub fn render_prometheus(&self, out: &mut String) {
        let (changes, bytes, oldest) = {
            let h = self.lock();
            (h.changes.len(), h.bytes, h.complete_after + 1)
        };
        let watchers = self
            .limits
            .max_watchers
            .min(Semaphore::MAX_PERMITS)
            .saturating_sub(self.watchers.available_permits());
        let gauges = [
            ("history_changes", changes as u64),
            ("history_max_changes", self.limits.max_changes as u64),
            ("history_bytes", bytes as u64),
            ("history_max_bytes", self.limits.max_bytes as u64),
            ("history_oldest_index", oldest),
            ("watchers", watchers as u64),
            ("max_watchers", self.limits.max_watchers as u64),
        ];
        for (name, value) in gauges {
            let _ = writeln!(
                out,
                "# TYPE raftkit_kv_watch_{name} gauge\nraftkit_kv_watch_{name} {value}"
            );
        }
        let counters = [
            ("evicted_total", self.evicted.load(Ordering::Relaxed)),
            ("compacted_total", self.compacted.load(Ordering::Relaxed)),
        ];
        for (name, value) in counters {
            let _ = writeln!(
                out,
                "# TYPE raftkit_kv_watch_{name} counter\nraftkit_kv_watch_{name} {value}"
            );
        }
    }
}

/// One line of a watch stream, as clients read it. Exactly one of the shapes:
///
/// - a change: `{"index":12,"key":"app/a","value":"1"}`; a value that is not UTF-8 comes as
///   `"value_hex"` instead of `"value"`; a deletion as `{"index":13,"key":"app/a","deleted":true}`;
/// - progress, sent when nothing changed for a while: `{"progress":20}`: every change under the
///   prefix up to index 20 was sent;
/// - the end, after which the server closes the stream: `{"error":"compacted: ...",
///   "oldest_index":7}` (or an error without `oldest_index`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchLine {
    /// A change's log index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    /// A change's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The new value, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The new value in hex, when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_hex: Option<String>,
    /// The key was deleted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// Every change up to this index was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<u64>,
    /// Why the stream ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// With a "compacted" error: the lowest index to watch from now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_index: Option<u64>,
}

impl WatchLine {
    fn of_change(change: &Change) -> WatchLine {
        let mut line = WatchLine {
            index: Some(change.index),
            key: Some(change.key.clone()),
            ..WatchLine::default()
        };
        match &change.value {
            None => line.deleted = true,
            Some(v) => match std::str::from_utf8(v) {
                Ok(s) => line.value = Some(s.to_string()),
                Err(_) => line.value_hex = Some(hex(v)),
            },
        }
        line
    }

    /// The line that ends a stream with `error`.
    pub fn of_error(error: &WatchError) -> WatchLine {
        WatchLine {
            error: Some(error.to_string()),
            oldest_index: match error {
                WatchError::Compacted { oldest_index } => Some(*oldest_index),
                _ => None,
            },
            ..WatchLine::default()
        }
    }

    /// The line with a newline, as sent.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = Vec::new();
        write_line(&mut out, self);
        Bytes::from(out)
    }
}

fn write_line(out: &mut Vec<u8>, line: &WatchLine) {
    // A struct of strings and numbers always serializes.
    if serde_json::to_writer(&mut *out, line).is_ok() {
        out.push(b'\n');
    }
}

fn write_change(out: &mut Vec<u8>, change: &Change) {
    write_line(out, &WatchLine::of_change(change));
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// One watcher's stream of chunks: what the history has under `prefix` from `next` on, then
/// each change as the store records it, a progress line after [`PROGRESS_INTERVAL`] of quiet,
/// and an error line at the end if the watch cannot go on. Ends when the node stops.
pub fn stream(
    hub: Arc<WatchHub>,
    prefix: String,
    from: u64,
    permit: OwnedSemaphorePermit,
) -> impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
    struct State {
        hub: Arc<WatchHub>,
        prefix: String,
        next: u64,
        wake: watch::Receiver<u64>,
        done: bool,
        _permit: OwnedSemaphorePermit,
    }
    let wake = hub.subscribe();
    let state = State {
        hub,
        prefix,
        next: from,
        wake,
        done: false,
        _permit: permit,
    };
    futures::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        loop {
            // Marked seen before reading: whatever is recorded after the read wakes us.
            s.wake.borrow_and_update();
            match s.hub.read(s.next, &s.prefix) {
                Err(WatchError::Closed) => return None,
                Err(e) => {
                    s.done = true;
                    return Some((Ok(WatchLine::of_error(&e).to_bytes()), s));
                }
                Ok(batch) => {
                    s.next = batch.next;
                    if !batch.lines.is_empty() {
                        return Some((Ok(Bytes::from(batch.lines)), s));
                    }
                }
            }
            match tokio::time::timeout(PROGRESS_INTERVAL, s.wake.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return None,
                Err(_quiet) => {
                    let line = WatchLine {
                        progress: Some(s.next.saturating_sub(1)),
                        ..WatchLine::default()
                    };
                    return Some((Ok(line.to_bytes()), s));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    fn lines(batch: &Batch) -> Vec<WatchLine> {
        batch
            .lines
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap_or_default())
            .collect()
    }

    fn put(key: &str, value: &str) -> Option<(String, Option<Bytes>)> {
        Some((
            key.to_string(),
            Some(Bytes::copy_from_slice(value.as_bytes())),
        ))
    }

    #[test]
    fn reads_filter_by_prefix_and_start_index_and_show_deletes() {
        let hub = WatchHub::default();
        hub.record(1, put("app/a", "1"));
        hub.record(2, put("other", "x"));
        hub.record(3, None);
        hub.record(4, Some(("app/a".into(), None)));
        hub.record(
            5,
            Some(("app/b".into(), Some(Bytes::from_static(&[0xff, 0x00])))),
        );
        let all = hub.read(1, "app/").map(|b| lines(&b)).unwrap_or_default();
        let keys: Vec<_> = all.iter().map(|l| (l.index, l.key.clone())).collect();
        assert_eq!(
            keys,
            [
                (Some(1), Some("app/a".to_string())),
                (Some(4), Some("app/a".to_string())),
                (Some(5), Some("app/b".to_string()))
            ]
        );
        assert_eq!(all[0].value.as_deref(), Some("1"));
        assert!(all[1].deleted && all[1].value.is_none());
        assert_eq!(all[2].value_hex.as_deref(), Some("ff00"));
        let later = hub.read(2, "app/").map(|b| lines(&b)).unwrap_or_default();
        assert_eq!(later.len(), 2, "from 2 on: the delete and app/b");
        let batch = hub.read(6, "app/");
        assert!(batch
            .as_ref()
            .is_ok_and(|b| b.lines.is_empty() && b.next == 6));
        // Resuming past what this node applied waits there.
        assert!(hub.read(9, "").is_ok_and(|b| b.next == 9));
        assert_eq!(hub.next_index(), 6);
    }

    #[test]
    fn the_history_is_bounded_and_a_start_before_it_is_compacted() {
        let hub = WatchHub::new(WatchLimits {
            max_changes: 3,
            max_bytes: 1 << 20,
            max_watchers: 1,
        });
        for i in 1..=5 {
            hub.record(i, put("k", &i.to_string()));
        }
        // 1 and 2 were evicted: a watch from 3 gets everything, one from 2 would miss 2.
        assert_eq!(
            hub.read(2, "").err(),
            Some(WatchError::Compacted { oldest_index: 3 })
        );
        assert_eq!(hub.read(3, "").map(|b| lines(&b).len()).ok(), Some(3));
        let mut text = String::new();
        hub.render_prometheus(&mut text);
        assert!(
            text.contains("raftkit_kv_watch_history_changes 3"),
            "{text}"
        );
        assert!(text.contains("raftkit_kv_watch_evicted_total 2"), "{text}");
        assert!(
            text.contains("raftkit_kv_watch_compacted_total 1"),
            "{text}"
        );

        // The byte bound too: each change costs its key, value and the overhead.
        let small = WatchHub::new(WatchLimits {
            max_changes: 1000,
            max_bytes: 3 * (CHANGE_OVERHEAD + 2),
            max_watchers: 1,
        });
        for i in 1..=10 {
            small.record(i, put("k", "v"));
        }
        assert_eq!(small.read(8, "").map(|b| lines(&b).len()).ok(), Some(3));
        assert!(small.read(7, "").is_err());

        // One watcher at a time here.
        let permit = hub.admit();
        assert!(permit.is_ok());
        assert_eq!(hub.admit().err(), Some(WatchError::Busy(1)));
        drop(permit);
        assert!(hub.admit().is_ok());
    }

    #[test]
    fn a_snapshot_restarts_the_history_at_its_index() {
        let hub = WatchHub::default();
        hub.record(1, put("k", "1"));
        hub.restart_at(10);
        assert_eq!(
            hub.read(5, "").err(),
            Some(WatchError::Compacted { oldest_index: 11 })
        );
        hub.record(11, put("k", "2"));
        let after = hub.read(11, "").map(|b| lines(&b)).unwrap_or_default();
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].index, Some(11));
        hub.close();
        assert_eq!(hub.read(12, "").err(), Some(WatchError::Closed));
        // A new cluster's first snapshot (index 1) holds no change: everything is kept.
        let fresh = WatchHub::default();
        fresh.restart_at(1);
        assert!(fresh.check_from(1).is_ok());
    }

    #[tokio::test]
    async fn a_stream_sends_the_past_then_live_changes_and_a_lagging_one_is_ended() {
        use futures::StreamExt as _;
        let hub = Arc::new(WatchHub::new(WatchLimits {
            max_changes: 4,
            max_bytes: 1 << 20,
            max_watchers: 2,
        }));
        hub.record(1, put("a/1", "x"));
        let permit = hub.admit().unwrap();
        let mut stream = Box::pin(stream(hub.clone(), "a/".into(), 1, permit));
        let first = stream.next().await;
        assert!(matches!(&first, Some(Ok(b)) if b.starts_with(br#"{"index":1,"#)));
        hub.record(2, put("a/2", "y"));
        let second = stream.next().await;
        assert!(matches!(&second, Some(Ok(b)) if b.starts_with(br#"{"index":2,"#)));
        // While the client reads nothing, the history moves past where it is.
        for i in 3..=10 {
            hub.record(i, put("a/k", "z"));
        }
        let end = stream.next().await;
        let Some(Ok(end)) = end else {
            panic!("no end line: {end:?}")
        };
        let line: WatchLine = serde_json::from_slice(&end).unwrap_or_default();
        assert_eq!(line.oldest_index, Some(7), "{line:?}");
        assert!(stream.next().await.is_none());
    }
}
