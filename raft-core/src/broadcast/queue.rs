//! The messages a node holds between its apply task and its application: those the
//! application has not received yet (bounded: apply waits for room) and a short history of
//! those it has (kept for snapshots that peers catch up from).

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

use super::Limits;

/// What [`Queue::next`] found for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// The message after the last one received.
    Message(u64, Bytes),
    /// Messages `first..=last` were compacted away before this node received them.
    Missed(u64, u64),
    /// Nothing yet.
    Empty,
    /// Nothing more will come: the node stopped, for this reason.
    Stopped(String),
}

/// The state behind the lock.
#[derive(Debug)]
pub(crate) struct QueueState {
    /// Retained messages by sequence number, increasing; there may be holes (messages this
    /// node never had, reported as [`Next::Missed`]).
    items: VecDeque<(u64, Bytes)>,
    /// Sequence number of the next message apply will see (the first message is 1).
    next_seq: u64,
    /// The application has received (or was told it missed) every message up to this one.
    delivered: u64,
    /// Items with a sequence number above `delivered`, and their bytes.
    pending: u64,
    pending_bytes: u64,
    /// Bytes of all items.
    bytes: u64,
    /// The receiver was dropped: nobody waits for messages, apply never waits.
    receiver_gone: bool,
    /// The node stopped, and why.
    stopped: Option<String>,
    limits: Limits,
}

/// Shared by the store (apply task), the receiver and the node's runner.
#[derive(Debug)]
pub(crate) struct Queue {
    state: Mutex<QueueState>,
    /// Wakes the receiver: a message was applied, or the node stopped.
    to_receiver: Notify,
    /// Wakes the apply task: the receiver took a message, went away, or the node stopped.
    to_applier: Notify,
}

impl QueueState {
    fn room_for(&self, seq: u64, len: u64) -> bool {
        seq <= self.delivered
            || self.receiver_gone
            || self.stopped.is_some()
            || self.pending == 0
            || (self.pending < self.limits.queue_messages
                && self.pending_bytes.saturating_add(len) <= self.limits.queue_bytes)
    }

    fn push(&mut self, data: Bytes) -> u64 {
        let seq = self.next_seq;
        self.next_seq = seq.saturating_add(1);
        let len = data.len() as u64;
        self.bytes += len;
        if self.receiver_gone && seq > self.delivered {
            // Nobody will receive it: it is history at once.
            self.delivered = seq;
        }
        if seq > self.delivered {
            self.pending += 1;
            self.pending_bytes += len;
        }
        self.items.push_back((seq, data));
        self.trim();
        seq
    }

    /// Drops the oldest received messages beyond the history limits.
    fn trim(&mut self) {
        while let Some((seq, data)) = self.items.front() {
            if *seq > self.delivered {
                break;
            }
            let history = self.items.len() as u64 - self.pending;
            let history_bytes = self.bytes - self.pending_bytes;
            if history <= self.limits.history_messages && history_bytes <= self.limits.history_bytes
            {
                break;
            }
            self.bytes -= data.len() as u64;
            self.items.pop_front();
        }
    }

    /// Recounts what is pending after `items` or `delivered` changed wholesale.
    fn recount(&mut self) {
        let delivered = self.delivered;
        let pending = self.items.iter().filter(|(seq, _)| *seq > delivered);
        self.pending = pending.clone().count() as u64;
        self.pending_bytes = pending.map(|(_, d)| d.len() as u64).sum();
        self.bytes = self.items.iter().map(|(_, d)| d.len() as u64).sum();
        self.trim();
    }

    fn next(&self) -> Next {
        let wanted = self.delivered.saturating_add(1);
        // Items are in sequence order: the first one past `delivered`, by binary search.
        let after = self
            .items
            .partition_point(|(seq, _)| *seq <= self.delivered);
        match self.items.get(after) {
            Some((seq, data)) if *seq == wanted => Next::Message(*seq, data.clone()),
            Some((seq, _)) => Next::Missed(wanted, seq - 1),
            None if self.next_seq > wanted => Next::Missed(wanted, self.next_seq - 1),
            None => match &self.stopped {
                Some(reason) => Next::Stopped(reason.clone()),
                None => Next::Empty,
            },
        }
    }
}

impl Queue {
    /// An empty queue whose application has received every message up to `delivered`.
    pub(crate) fn new(delivered: u64, limits: Limits) -> Self {
        Queue {
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                next_seq: 1,
                delivered,
                pending: 0,
                pending_bytes: 0,
                bytes: 0,
                receiver_gone: false,
                stopped: None,
                limits,
            }),
            to_receiver: Notify::new(),
            to_applier: Notify::new(),
        }
    }

    /// Sets the position and the limits before the node runs.
    pub(crate) fn configure(&self, delivered: u64, limits: Limits) {
        let mut state = self.lock();
        state.delivered = delivered;
        state.limits = limits;
        state.recount();
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, QueueState> {
        // Every update checks before it mutates: a panic elsewhere cannot leave it half-done.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends the next message once the application's queue has room for it (or nobody
    /// waits for it any more), and returns its sequence number.
    pub(crate) async fn push(&self, data: Bytes) -> u64 {
        let len = data.len() as u64;
        loop {
            let notified = self.to_applier.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                let seq = state.next_seq;
                if state.room_for(seq, len) {
                    let seq = state.push(data);
                    drop(state);
                    self.to_receiver.notify_one();
                    return seq;
                }
            }
            notified.await;
        }
    }

    /// The next thing for the application, waiting until there is one.
    pub(crate) async fn next(&self) -> Next {
        loop {
            let notified = self.to_receiver.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.lock().next() {
                Next::Empty => {}
                next => return next,
            }
            notified.await;
        }
    }

    /// The application has received (or was told it missed) everything up to `seq`.
    pub(crate) fn delivered(&self, seq: u64) {
        let mut state = self.lock();
        if seq <= state.delivered {
            return;
        }
        // Only the items between the old position and the new one stop being pending.
        let delivered = state.delivered;
        let from = state.items.partition_point(|(s, _)| *s <= delivered);
        let to = state.items.partition_point(|(s, _)| *s <= seq);
        let (count, bytes) = state
            .items
            .range(from..to)
            .fold((0u64, 0u64), |(c, b), (_, d)| (c + 1, b + d.len() as u64));
        state.pending -= count;
        state.pending_bytes -= bytes;
        state.delivered = seq;
        state.trim();
        drop(state);
        self.to_applier.notify_one();
    }

    /// The receiver was dropped.
    pub(crate) fn receiver_gone(&self) {
        let mut state = self.lock();
        state.receiver_gone = true;
        state.delivered = state.delivered.max(state.next_seq.saturating_sub(1));
        state.recount();
        drop(state);
        self.to_applier.notify_one();
    }

    /// The node stopped: the receiver gets what is left, then `reason`; apply no longer waits.
    pub(crate) fn stop(&self, reason: impl Into<String>) {
        let mut state = self.lock();
        if state.stopped.is_none() {
            state.stopped = Some(reason.into());
        }
        drop(state);
        self.to_receiver.notify_one();
        self.to_applier.notify_one();
    }

    /// The reason the node stopped, if it did.
    pub(crate) fn stopped(&self) -> Option<String> {
        self.lock().stopped.clone()
    }

    /// Sequence number of the next message.
    pub(crate) fn next_seq(&self) -> u64 {
        self.lock().next_seq
    }

    /// Sequence number of the next message, and every retained message (cheap clones).
    pub(crate) fn contents(&self) -> (u64, Vec<(u64, Bytes)>) {
        let state = self.lock();
        (state.next_seq, state.items.iter().cloned().collect())
    }

    /// Replaces the state with a snapshot's: `next_seq` and its retained `items` (increasing,
    /// below `next_seq`). Messages held in memory that precede the snapshot's oldest one stay:
    /// the application may not have received them yet.
    pub(crate) fn restore(&self, next_seq: u64, items: Vec<(u64, Bytes)>) {
        let mut state = self.lock();
        let oldest = items.first().map_or(next_seq, |(seq, _)| *seq);
        state.items.retain(|(seq, _)| *seq < oldest);
        state.items.extend(items);
        state.next_seq = next_seq;
        if state.receiver_gone {
            state.delivered = state.delivered.max(next_seq.saturating_sub(1));
        }
        state.recount();
        drop(state);
        self.to_receiver.notify_one();
        self.to_applier.notify_one();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn limits(queue: u64, history: u64) -> Limits {
        Limits {
            queue_messages: queue,
            history_messages: history,
            ..Limits::default()
        }
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[tokio::test]
    async fn delivers_in_order_and_keeps_a_bounded_history() {
        let q = Queue::new(0, limits(10, 2));
        for m in ["a", "b", "c", "d"] {
            q.push(b(m)).await;
        }
        for (seq, m) in [(1, "a"), (2, "b"), (3, "c")] {
            assert_eq!(q.next().await, Next::Message(seq, b(m)));
            q.delivered(seq);
        }
        let (next, items) = q.contents();
        assert_eq!(next, 5);
        // Two received ones as history, plus the pending "d".
        assert_eq!(
            items.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
    }

    #[tokio::test]
    async fn apply_waits_for_room_and_the_receiver_makes_it() {
        let q = std::sync::Arc::new(Queue::new(0, limits(2, 0)));
        q.push(b("a")).await;
        q.push(b("b")).await;
        let third = tokio::spawn({
            let q = q.clone();
            async move { q.push(b("c")).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!third.is_finished(), "a full queue makes apply wait");
        assert_eq!(q.next().await, Next::Message(1, b("a")));
        q.delivered(1);
        assert_eq!(third.await.unwrap(), 3);
    }

    #[tokio::test]
    async fn a_snapshot_past_the_receiver_reports_the_gap_once() {
        let q = Queue::new(0, limits(10, 10));
        q.push(b("a")).await;
        // A leader's snapshot at 10 that keeps only 8 and 9.
        q.restore(10, vec![(8, b("h")), (9, b("i"))]);
        assert_eq!(q.next().await, Next::Message(1, b("a")));
        q.delivered(1);
        assert_eq!(q.next().await, Next::Missed(2, 7));
        q.delivered(7);
        assert_eq!(q.next().await, Next::Message(8, b("h")));
    }

    /// The running counts equal a recount after any mix of pushes, deliveries and restores.
    #[tokio::test]
    async fn counts_stay_exact() {
        let q = Queue::new(0, limits(100, 3));
        let check = |q: &Queue| {
            let mut state = q.lock();
            let counted = (state.pending, state.pending_bytes, state.bytes);
            state.recount();
            assert_eq!(counted, (state.pending, state.pending_bytes, state.bytes));
        };
        for i in 0..10u64 {
            q.push(Bytes::from(vec![0u8; i as usize])).await;
            check(&q);
        }
        q.delivered(4);
        check(&q);
        q.restore(30, vec![(20, b("xx")), (25, b("yyy"))]);
        check(&q);
        for upto in [6, 12, 19, 22, 29] {
            q.delivered(upto);
            check(&q);
        }
        q.push(b("z")).await;
        check(&q);
        assert_eq!(
            q.contents().1.len(),
            4,
            "a history of 3, and the pending last one"
        );
    }

    #[tokio::test]
    async fn messages_received_before_a_restart_are_not_pending_again() {
        let q = Queue::new(3, limits(1, 0));
        // Re-applied after the restart: received already, so apply never waits for them.
        for m in ["a", "b", "c", "d"] {
            q.push(b(m)).await;
        }
        assert_eq!(q.next().await, Next::Message(4, b("d")));
        q.stop("shut down");
        q.delivered(4);
        assert_eq!(q.next().await, Next::Stopped("shut down".into()));
    }
}
