//! The session table: what the replicated state remembers of each client session, so that a
//! retried command applies once and its retry gets the first answer (the Raft thesis, §6.3).
//!
//! A session runs one command at a time: command `seq` is proposed (and retried) until it
//! has an answer, then `seq + 1`. The table keeps, per session, the last command's number
//! and its answer. A command with the remembered number is a retry and gets the saved
//! answer; a lower number is a stale duplicate and is refused; a higher one applies.
//!
//! Every decision depends only on the entries applied (and the snapshot they started from),
//! never on a node's clock or configuration, so every replica decides alike. The bounds are
//! therefore constants: a session idle for [`IDLE_ENTRIES`] entries expires, and beyond
//! [`MAX_SESSIONS`] sessions or [`MAX_ANSWER_BYTES`] of saved answers, the least recently
//! used session is forgotten.

use std::collections::HashMap;

use crate::error::{Error, NotApplied};
use crate::records::ClientSession;
use crate::session::SessionTag;

/// A session unused for this many log entries is forgotten.
pub(crate) const IDLE_ENTRIES: u64 = 1_000_000;
/// At most this many sessions are remembered.
pub(crate) const MAX_SESSIONS: usize = 16_384;
/// At most this many bytes of saved answers are kept over all sessions.
pub(crate) const MAX_ANSWER_BYTES: usize = 16 << 20;
/// An answer larger than this is not kept: a retry of its command learns only that it was
/// applied, with an unknown outcome.
pub(crate) const MAX_KEPT_ANSWER: usize = 1 << 20;

/// What applying a command's store answer produced: its bytes, or the store's error text.
pub(crate) type StoreAnswer = std::result::Result<Vec<u8>, String>;

/// What the table says about a command of a session.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Apply it (then [`SessionTable::record`] its answer).
    Apply,
    /// Already applied: this is its answer.
    Answered(crate::error::Result<Vec<u8>>),
}

#[derive(Debug, Clone, Default)]
struct Remembered {
    last_index: u64,
    seq: u64,
    /// `None` when the answer was too large to keep.
    answer: Option<StoreAnswer>,
}

impl Remembered {
    fn answer_bytes(&self) -> usize {
        match &self.answer {
            Some(Ok(v)) => v.len(),
            Some(Err(e)) => e.len(),
            None => 0,
        }
    }
}

/// A remembered session and its neighbours in the order of use.
#[derive(Debug)]
struct Slot {
    id: u64,
    session: Remembered,
    /// The slot used just before this one, and just after.
    older: Option<usize>,
    newer: Option<usize>,
}

/// The sessions of the replicated state.
///
/// Sessions sit in slots linked in the order of their last use, so that a use moves its
/// session to the newest end and the least recently used is at the oldest end, with no lookup
/// beyond the one that finds the session: this runs for every command on every replica.
/// Commands apply in index order, so the newest end is always the highest index.
#[derive(Debug, Default)]
pub(crate) struct SessionTable {
    /// Each session's slot in `slots`. Ids are chosen by clients, so the hasher is seeded
    /// at random (foldhash's quality variant: a fraction of SipHash's cost per lookup).
    by_id: HashMap<u64, usize, foldhash::quality::RandomState>,
    slots: Vec<Slot>,
    /// Slots of forgotten sessions, for the next new ones.
    free: Vec<usize>,
    oldest: Option<usize>,
    newest: Option<usize>,
    answer_bytes: usize,
    /// Sessions forgotten to stay within the bounds, since this table was made.
    pub(crate) evicted: u64,
}

impl SessionTable {
    /// Sessions remembered.
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Bytes of saved answers.
    pub(crate) fn answer_bytes(&self) -> usize {
        self.answer_bytes
    }

    /// Decides what to do with the command `tag` names, in the entry at `index`.
    pub(crate) fn admit(&mut self, tag: &SessionTag, index: u64) -> Admission {
        self.expire(index);
        let Some(&slot) = self.by_id.get(&tag.id) else {
            // A session the client already had answers in, forgotten here: a retry of its
            // last command may have been applied before, so it must not apply again.
            return if tag.established {
                Admission::Answered(Err(Error::NotApplied(NotApplied::SessionExpired)))
            } else {
                Admission::Apply
            };
        };
        let known = &mut self.slots[slot].session;
        if tag.seq > known.seq {
            return Admission::Apply;
        }
        if tag.seq < known.seq {
            // A duplicate of a command the client has had its answer for (it moved on).
            return Admission::Answered(Err(Error::NotApplied(NotApplied::SupersededInSession)));
        }
        let answer = match known.answer.clone() {
            Some(Ok(value)) => Ok(value),
            Some(Err(message)) => Err(Error::store(message)),
            None => Err(Error::applied_answer_not_kept()),
        };
        known.last_index = index;
        self.make_newest(slot);
        Admission::Answered(answer)
    }

    /// Remembers the answer command `tag` got when it applied at `index`.
    pub(crate) fn record(&mut self, tag: &SessionTag, index: u64, answer: &StoreAnswer) {
        let kept = match answer {
            Ok(v) if v.len() > MAX_KEPT_ANSWER => None,
            Err(e) if e.len() > MAX_KEPT_ANSWER => None,
            other => Some(other.clone()),
        };
        self.remember(
            tag.id,
            Remembered {
                last_index: index,
                seq: tag.seq,
                answer: kept,
            },
        );
        while self.by_id.len() > MAX_SESSIONS || self.answer_bytes > MAX_ANSWER_BYTES {
            // The one just recorded is the most recently used: it goes last, never now
            // (its own answer is at most MAX_KEPT_ANSWER, below the byte bound).
            if !self.forget_least_recent(Some(tag.id)) {
                break;
            }
            self.evicted += 1;
        }
    }

    /// Sets session `id` to `session`, as its newest use.
    fn remember(&mut self, id: u64, session: Remembered) {
        self.answer_bytes += session.answer_bytes();
        if let Some(&slot) = self.by_id.get(&id) {
            let old = std::mem::replace(&mut self.slots[slot].session, session);
            self.answer_bytes -= old.answer_bytes();
            self.make_newest(slot);
            return;
        }
        let fresh = Slot {
            id,
            session,
            older: None,
            newer: None,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = fresh;
                slot
            }
            None => {
                self.slots.push(fresh);
                self.slots.len() - 1
            }
        };
        self.by_id.insert(id, slot);
        self.link_newest(slot);
    }

    /// Moves a linked slot to the newest end.
    fn make_newest(&mut self, slot: usize) {
        if self.newest != Some(slot) {
            self.unlink(slot);
            self.link_newest(slot);
        }
    }

    fn unlink(&mut self, slot: usize) {
        let (older, newer) = (self.slots[slot].older, self.slots[slot].newer);
        match older {
            Some(o) => self.slots[o].newer = newer,
            None => self.oldest = newer,
        }
        match newer {
            Some(n) => self.slots[n].older = older,
            None => self.newest = older,
        }
    }

    fn link_newest(&mut self, slot: usize) {
        self.slots[slot].older = self.newest;
        self.slots[slot].newer = None;
        match self.newest {
            Some(n) => self.slots[n].newer = Some(slot),
            None => self.oldest = Some(slot),
        }
        self.newest = Some(slot);
    }

    /// Forgets sessions idle for more than [`IDLE_ENTRIES`] entries before `index`.
    fn expire(&mut self, index: u64) {
        while let Some(oldest) = self.oldest {
            if self.slots[oldest]
                .session
                .last_index
                .saturating_add(IDLE_ENTRIES)
                >= index
            {
                break;
            }
            self.forget_least_recent(None);
        }
    }

    /// Forgets the least recently used session unless it is `keep`; false when none was.
    fn forget_least_recent(&mut self, keep: Option<u64>) -> bool {
        let Some(oldest) = self.oldest else {
            return false;
        };
        let id = self.slots[oldest].id;
        if Some(id) == keep {
            return false;
        }
        self.unlink(oldest);
        self.by_id.remove(&id);
        let forgotten = std::mem::take(&mut self.slots[oldest].session);
        self.answer_bytes -= forgotten.answer_bytes();
        self.free.push(oldest);
        true
    }

    /// The sessions' slots, least recently used first.
    fn in_order_of_use(&self) -> impl Iterator<Item = &Slot> {
        std::iter::successors(self.oldest.map(|s| &self.slots[s]), |slot| {
            slot.newer.map(|s| &self.slots[s])
        })
    }

    /// The table as snapshot records, least recently used first.
    pub(crate) fn to_records(&self) -> Vec<ClientSession> {
        self.in_order_of_use()
            .map(|slot| {
                let s = &slot.session;
                let (answer, failed, kept) = match &s.answer {
                    Some(Ok(v)) => (v.clone(), false, true),
                    Some(Err(e)) => (e.as_bytes().to_vec(), true, true),
                    None => (Vec::new(), false, false),
                };
                ClientSession {
                    id: slot.id,
                    last_index: s.last_index,
                    seq: s.seq,
                    answer,
                    failed,
                    answer_kept: kept,
                }
            })
            .collect()
    }

    /// The table a snapshot's records describe.
    pub(crate) fn from_records(mut records: Vec<ClientSession>) -> Self {
        let mut table = SessionTable::default();
        // In order of use; equal indexes (only in a crafted snapshot) by id, so every replica
        // orders them alike. A repeated id keeps its last record.
        records.sort_by_key(|r| (r.last_index, r.id));
        for r in records {
            let answer = match (r.answer_kept, r.failed) {
                (false, _) => None,
                (true, false) => Some(Ok(r.answer)),
                (true, true) => Some(Err(String::from_utf8_lossy(&r.answer).into_owned())),
            };
            table.remember(
                r.id,
                Remembered {
                    last_index: r.last_index,
                    seq: r.seq,
                    answer,
                },
            );
        }
        table
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn tag(id: u64, seq: u64, established: bool) -> SessionTag {
        SessionTag {
            id,
            seq,
            established,
        }
    }

    fn answered(admission: Admission) -> crate::error::Result<Vec<u8>> {
        match admission {
            Admission::Answered(a) => a,
            Admission::Apply => panic!("expected an answer, got Apply"),
        }
    }

    #[test]
    fn a_retry_gets_the_saved_answer_and_a_stale_duplicate_is_refused() {
        let mut t = SessionTable::default();
        assert!(matches!(t.admit(&tag(7, 1, false), 10), Admission::Apply));
        t.record(&tag(7, 1, false), 10, &Ok(b"one".to_vec()));
        assert_eq!(answered(t.admit(&tag(7, 1, false), 11)).unwrap(), b"one");
        assert!(matches!(t.admit(&tag(7, 2, true), 12), Admission::Apply));
        t.record(&tag(7, 2, true), 12, &Err("no such key".into()));
        let again = answered(t.admit(&tag(7, 2, true), 13));
        assert!(matches!(again, Err(Error::Store(_))), "{again:?}");
        let stale = answered(t.admit(&tag(7, 1, true), 14));
        assert!(matches!(
            stale,
            Err(Error::NotApplied(NotApplied::SupersededInSession))
        ));
    }

    #[test]
    fn a_forgotten_session_is_refused_only_once_established() {
        let mut t = SessionTable::default();
        assert!(matches!(t.admit(&tag(9, 5, false), 1), Admission::Apply));
        let refused = answered(t.admit(&tag(9, 5, true), 1));
        assert!(matches!(
            refused,
            Err(Error::NotApplied(NotApplied::SessionExpired))
        ));
    }

    #[test]
    fn idle_sessions_expire_by_log_index() {
        let mut t = SessionTable::default();
        t.record(&tag(1, 1, false), 5, &Ok(Vec::new()));
        t.record(&tag(2, 1, false), 6 + IDLE_ENTRIES, &Ok(Vec::new()));
        assert!(matches!(
            t.admit(&tag(3, 1, false), 6 + IDLE_ENTRIES),
            Admission::Apply
        ));
        assert_eq!(t.len(), 1, "session 1 went idle and was forgotten");
        assert!(matches!(
            answered(t.admit(&tag(1, 1, true), 7 + IDLE_ENTRIES)),
            Err(Error::NotApplied(NotApplied::SessionExpired))
        ));
    }

    #[test]
    fn the_table_stays_within_its_bounds_forgetting_the_least_recent() {
        let mut t = SessionTable::default();
        for id in 1..=(MAX_SESSIONS as u64 + 3) {
            t.record(&tag(id, 1, false), id, &Ok(Vec::new()));
        }
        assert_eq!(t.len(), MAX_SESSIONS);
        assert_eq!(t.evicted, 3);
        assert!(!t.by_id.contains_key(&1) && t.by_id.contains_key(&4));
        let mut t = SessionTable::default();
        let big = vec![0u8; MAX_KEPT_ANSWER];
        for id in 1..=20u64 {
            t.record(&tag(id, 1, false), id, &Ok(big.clone()));
        }
        assert!(t.answer_bytes() <= MAX_ANSWER_BYTES);
        assert_eq!(t.len(), MAX_ANSWER_BYTES / MAX_KEPT_ANSWER);
        t.record(&tag(99, 1, false), 99, &Ok(vec![0; MAX_KEPT_ANSWER + 1]));
        assert!(matches!(
            answered(t.admit(&tag(99, 1, true), 100)),
            Err(Error::MaybeApplied(_))
        ));
    }

    /// The table as an ordered set of (last index, id): slower, obviously right.
    #[derive(Default)]
    struct Oracle {
        sessions: HashMap<u64, (u64, u64, Option<StoreAnswer>)>,
        by_use: std::collections::BTreeSet<(u64, u64)>,
        bytes: usize,
        /// Sessions forgotten for idling, for the count bound, for the byte bound.
        idle: u64,
        over_count: u64,
        over_bytes: u64,
    }

    impl Oracle {
        fn forget_first(&mut self, keep: Option<u64>) -> bool {
            let Some(&(last, id)) = self.by_use.first() else {
                return false;
            };
            if Some(id) == keep {
                return false;
            }
            self.by_use.remove(&(last, id));
            let (_, _, answer) = self.sessions.remove(&id).unwrap();
            self.bytes -= size(&answer);
            true
        }

        /// `Some(seq)`: apply; `None`: answered (with whatever the table said).
        fn admit(&mut self, tag: &SessionTag, index: u64) -> &'static str {
            while let Some(&(last, _)) = self.by_use.first() {
                if last + IDLE_ENTRIES >= index {
                    break;
                }
                self.forget_first(None);
                self.idle += 1;
            }
            let Some(&(last, seq, _)) = self.sessions.get(&tag.id) else {
                return if tag.established { "expired" } else { "apply" };
            };
            if tag.seq > seq {
                return "apply";
            }
            if tag.seq < seq {
                return "superseded";
            }
            self.by_use.remove(&(last, tag.id));
            self.by_use.insert((index, tag.id));
            self.sessions.get_mut(&tag.id).unwrap().0 = index;
            "answered"
        }

        fn record(&mut self, tag: &SessionTag, index: u64, answer: &StoreAnswer) {
            let kept = match answer {
                Ok(v) if v.len() > MAX_KEPT_ANSWER => None,
                other => Some(other.clone()),
            };
            self.bytes += size(&kept);
            if let Some((last, _, old)) = self.sessions.insert(tag.id, (index, tag.seq, kept)) {
                self.bytes -= size(&old);
                self.by_use.remove(&(last, tag.id));
            }
            self.by_use.insert((index, tag.id));
            while self.sessions.len() > MAX_SESSIONS || self.bytes > MAX_ANSWER_BYTES {
                let over_count = self.sessions.len() > MAX_SESSIONS;
                if !self.forget_first(Some(tag.id)) {
                    break;
                }
                if over_count {
                    self.over_count += 1;
                } else {
                    self.over_bytes += 1;
                }
            }
        }

        fn order(&self) -> Vec<(u64, u64)> {
            self.by_use.iter().copied().collect()
        }
    }

    fn size(answer: &Option<StoreAnswer>) -> usize {
        match answer {
            Some(Ok(v)) => v.len(),
            Some(Err(e)) => e.len(),
            None => 0,
        }
    }

    fn kind(admission: &Admission) -> &'static str {
        match admission {
            Admission::Apply => "apply",
            Admission::Answered(Err(Error::NotApplied(NotApplied::SessionExpired))) => "expired",
            Admission::Answered(Err(Error::NotApplied(NotApplied::SupersededInSession))) => {
                "superseded"
            }
            Admission::Answered(_) => "answered",
        }
    }

    /// Random commands, retries and duplicates in three phases (small answers and a stream of
    /// new sessions past the count bound; large answers past the byte bound; idle gaps):
    /// every decision, the eviction order and the records match the oracle's, and a table
    /// restored from its records (in any order) goes on deciding alike.
    /// Replay a failure with `RAFTKIT_SEED=<seed>`.
    #[test]
    fn the_table_decides_and_evicts_exactly_as_an_ordered_set_would() {
        use rand::seq::SliceRandom;
        use rand::{Rng, SeedableRng};
        let seed = crate::testing::cluster::seed(
            "the_table_decides_and_evicts_exactly_as_an_ordered_set_would",
        );
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (mut table, mut oracle) = (SessionTable::default(), Oracle::default());
        let mut next_seq: HashMap<u64, u64> = HashMap::new();
        let mut index = 1u64;
        // Half the commands open a new session: this many fill the table past its count.
        let fill = 2 * MAX_SESSIONS as u64 + 4_000;
        for step in 0..fill + 20_000 {
            let (large_answers, idle_gaps) = match step {
                s if s < fill => (false, false),
                s if s < fill + 10_000 => (true, false),
                _ => (false, true),
            };
            index += if idle_gaps && rng.gen_ratio(1, 2_000) {
                IDLE_ENTRIES
            } else {
                rng.gen_range(1..3)
            };
            // A few busy sessions, and a stream of new ones that fills the table.
            let id = if rng.gen_bool(0.5) {
                rng.gen_range(1..=40)
            } else {
                100 + step
            };
            let next = next_seq.entry(id).or_insert(1);
            let seq = match rng.gen_range(0..10) {
                0 => next.saturating_sub(1).max(1),
                1 => next.saturating_sub(2).max(1),
                _ => *next,
            };
            let t = tag(id, seq, seq > 1 || rng.gen_bool(0.1));
            let got = table.admit(&t, index);
            assert_eq!(
                kind(&got),
                oracle.admit(&t, index),
                "seed {seed}, step {step}"
            );
            if matches!(got, Admission::Apply) {
                let answer: StoreAnswer = match rng.gen_range(0..20) {
                    0 => Err("refused".into()),
                    1 => Ok(vec![1; MAX_KEPT_ANSWER + 1]),
                    2 if large_answers => Ok(vec![2; 600_000]),
                    _ => Ok(vec![3; rng.gen_range(0..64)]),
                };
                table.record(&t, index, &answer);
                oracle.record(&t, index, &answer);
                next_seq.insert(id, seq + 1);
            }
            assert_eq!(
                table.len(),
                oracle.sessions.len(),
                "seed {seed}, step {step}"
            );
            assert_eq!(
                table.answer_bytes(),
                oracle.bytes,
                "seed {seed}, step {step}"
            );
            // Forgotten sessions' slots are reused: the slab never outgrows the count bound.
            assert!(
                table.slots.len() <= MAX_SESSIONS + 1,
                "seed {seed}, step {step}: {} slots",
                table.slots.len()
            );
            if step % 5_000 == 0 {
                let mut records = table.to_records();
                let order: Vec<(u64, u64)> = records.iter().map(|r| (r.last_index, r.id)).collect();
                assert_eq!(order, oracle.order(), "seed {seed}, step {step}");
                records.shuffle(&mut rng);
                let restored = SessionTable::from_records(records);
                assert_eq!(restored.to_records(), table.to_records(), "seed {seed}");
                assert_eq!(restored.answer_bytes(), table.answer_bytes(), "seed {seed}");
                table = restored;
            }
        }
        assert!(
            oracle.over_count > 0 && oracle.over_bytes > 0 && oracle.idle > 0,
            "a bound was never reached (seed {seed}): {} for the count, {} for bytes, {} idle",
            oracle.over_count,
            oracle.over_bytes,
            oracle.idle
        );
        assert_eq!(
            table.slots.len() - table.free.len(),
            table.len(),
            "every slot is either a remembered session or free"
        );
    }

    #[test]
    fn records_round_trip() {
        let mut t = SessionTable::default();
        t.record(&tag(1, 3, true), 10, &Ok(b"a".to_vec()));
        t.record(&tag(2, 1, false), 11, &Err("bad".into()));
        t.record(&tag(3, 2, true), 12, &Ok(vec![0; MAX_KEPT_ANSWER + 1]));
        let back = SessionTable::from_records(t.to_records());
        assert_eq!(back.to_records(), t.to_records());
        assert_eq!(back.answer_bytes(), t.answer_bytes());
    }
}
