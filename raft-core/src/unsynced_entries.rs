//! Entries on their way to the log storage. Once a `Ready` is advanced, raft-rs reads its
//! entries back through [`raft::Storage`], while the log writer may still be syncing them: the
//! node keeps them here until their write is durable, and they supersede the log storage from
//! their first index on.

use std::collections::VecDeque;

use raft::prelude::Entry;

/// Entries handed to the log writer and not yet durable, contiguous and in index order.
#[derive(Default)]
pub(crate) struct UnsyncedEntries {
    entries: VecDeque<Entry>,
}

/// What one write put in the log: its first index and each entry's term. Written entries are
/// matched by index and term (two entries with both equal are the same entry), so a write
/// that completes after a later one replaced some of its entries drops only its own.
pub(crate) struct WrittenRange {
    first: u64,
    terms: Vec<u64>,
}

impl WrittenRange {
    pub(crate) fn of(entries: &[Entry]) -> Self {
        WrittenRange {
            first: entries.first().map_or(0, |e| e.index),
            terms: entries.iter().map(|e| e.term).collect(),
        }
    }

    fn term(&self, index: u64) -> Option<u64> {
        let offset = index.checked_sub(self.first)?;
        self.terms.get(usize::try_from(offset).ok()?).copied()
    }
}

impl UnsyncedEntries {
    /// The first unsynced index, if any.
    pub(crate) fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|e| e.index)
    }

    /// The last unsynced index, if any.
    pub(crate) fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|e| e.index)
    }

    /// Adds entries handed to the log writer: like the log storage's append, they replace
    /// every unsynced entry from their first index on.
    pub(crate) fn push(&mut self, new: &[Entry]) {
        let Some(first) = new.first().map(|e| e.index) else {
            return;
        };
        match self.first_index() {
            Some(front) if first > front => {
                let keep = usize::try_from(first - front).unwrap_or(usize::MAX);
                self.entries.truncate(keep);
            }
            _ => self.entries.clear(),
        }
        self.entries.extend(new.iter().cloned());
    }

    /// The write of `written` is durable: its entries are read from the log storage now.
    pub(crate) fn synced(&mut self, written: &WrittenRange) {
        while let Some(front) = self.entries.front() {
            if written.term(front.index) != Some(front.term) {
                break;
            }
            self.entries.pop_front();
        }
    }

    /// Forgets everything: a snapshot replaces the log.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }

    /// The term of an unsynced entry.
    pub(crate) fn term(&self, index: u64) -> Option<u64> {
        self.get(index).map(|e| e.term)
    }

    fn get(&self, index: u64) -> Option<&Entry> {
        let offset = index.checked_sub(self.first_index()?)?;
        self.entries.get(usize::try_from(offset).ok()?)
    }

    /// Appends the unsynced entries in `[low, high)` to `out`.
    pub(crate) fn extend_into(&self, low: u64, high: u64, out: &mut Vec<Entry>) {
        let Some(front) = self.first_index() else {
            return;
        };
        let start = usize::try_from(low.saturating_sub(front)).unwrap_or(usize::MAX);
        let end = usize::try_from(high.saturating_sub(front)).unwrap_or(usize::MAX);
        let end = end.min(self.entries.len());
        if start < end {
            out.extend(self.entries.range(start..end).cloned());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
        range
            .map(|index| Entry {
                index,
                term,
                ..Default::default()
            })
            .collect()
    }

    fn indexes_and_terms(u: &UnsyncedEntries) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        u.extend_into(0, u64::MAX, &mut out);
        out.iter().map(|e| (e.index, e.term)).collect()
    }

    #[test]
    fn a_write_that_completes_drops_only_its_own_entries() {
        let mut u = UnsyncedEntries::default();
        let first = entries(5..=8, 1);
        u.push(&first);
        // A later write replaces 7 and 8 with entries of a newer term before the first lands.
        let second = entries(7..=9, 2);
        u.push(&second);
        assert_eq!(
            indexes_and_terms(&u),
            vec![(5, 1), (6, 1), (7, 2), (8, 2), (9, 2)]
        );
        u.synced(&WrittenRange::of(&first));
        assert_eq!(indexes_and_terms(&u), vec![(7, 2), (8, 2), (9, 2)]);
        assert_eq!(u.term(8), Some(2));
        assert_eq!(u.term(6), None, "read from the log storage now");
        u.synced(&WrittenRange::of(&second));
        assert_eq!(u.first_index(), None);
    }

    #[test]
    fn entries_before_the_unsynced_ones_replace_them_all() {
        let mut u = UnsyncedEntries::default();
        u.push(&entries(10..=12, 3));
        u.push(&entries(8..=9, 4));
        assert_eq!(indexes_and_terms(&u), vec![(8, 4), (9, 4)]);
        let mut out = Vec::new();
        u.extend_into(9, 20, &mut out);
        assert_eq!(out.len(), 1);
    }
}
