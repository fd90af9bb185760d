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

use std::collections::{BTreeSet, HashMap};

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

#[derive(Debug, Clone)]
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

/// The sessions of the replicated state.
#[derive(Debug, Default)]
pub(crate) struct SessionTable {
    sessions: HashMap<u64, Remembered>,
    /// (last index, id): the least recently used session first.
    by_use: BTreeSet<(u64, u64)>,
    answer_bytes: usize,
    /// Sessions forgotten to stay within the bounds, since this table was made.
    pub(crate) evicted: u64,
}

impl SessionTable {
    /// Sessions remembered.
    pub(crate) fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Bytes of saved answers.
    pub(crate) fn answer_bytes(&self) -> usize {
        self.answer_bytes
    }

    /// Decides what to do with the command `tag` names, in the entry at `index`.
    pub(crate) fn admit(&mut self, tag: &SessionTag, index: u64) -> Admission {
        self.expire(index);
        let Some(known) = self.sessions.get(&tag.id) else {
            // A session the client already had answers in, forgotten here: a retry of its
            // last command may have been applied before, so it must not apply again.
            return if tag.seq > 1 && tag.established {
                Admission::Answered(Err(Error::NotApplied(NotApplied::SessionExpired)))
            } else {
                Admission::Apply
            };
        };
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
        let last_index = known.last_index;
        self.touch(tag.id, last_index, index);
        Admission::Answered(answer)
    }

    /// Remembers the answer command `tag` got when it applied at `index`.
    pub(crate) fn record(&mut self, tag: &SessionTag, index: u64, answer: &StoreAnswer) {
        let kept = match answer {
            Ok(v) if v.len() > MAX_KEPT_ANSWER => None,
            Err(e) if e.len() > MAX_KEPT_ANSWER => None,
            other => Some(other.clone()),
        };
        let entry = Remembered {
            last_index: index,
            seq: tag.seq,
            answer: kept,
        };
        self.answer_bytes += entry.answer_bytes();
        if let Some(old) = self.sessions.insert(tag.id, entry) {
            self.answer_bytes -= old.answer_bytes();
            self.by_use.remove(&(old.last_index, tag.id));
        }
        self.by_use.insert((index, tag.id));
        while self.sessions.len() > MAX_SESSIONS || self.answer_bytes > MAX_ANSWER_BYTES {
            // The one just recorded is the most recently used: it goes last, never now
            // (its own answer is at most MAX_KEPT_ANSWER, below the byte bound).
            if !self.forget_least_recent(Some(tag.id)) {
                break;
            }
            self.evicted += 1;
        }
    }

    fn touch(&mut self, id: u64, from: u64, to: u64) {
        if let Some(session) = self.sessions.get_mut(&id) {
            session.last_index = to;
            self.by_use.remove(&(from, id));
            self.by_use.insert((to, id));
        }
    }

    /// Forgets sessions idle for more than [`IDLE_ENTRIES`] entries before `index`.
    fn expire(&mut self, index: u64) {
        while let Some(&(last, id)) = self.by_use.first() {
            if last.saturating_add(IDLE_ENTRIES) >= index {
                break;
            }
            debug_assert!(self.sessions.contains_key(&id));
            self.forget_least_recent(None);
        }
    }

    /// Forgets the least recently used session unless it is `keep`; false when none was.
    fn forget_least_recent(&mut self, keep: Option<u64>) -> bool {
        let Some(&(last, id)) = self.by_use.first() else {
            return false;
        };
        if Some(id) == keep {
            return false;
        }
        self.by_use.remove(&(last, id));
        if let Some(old) = self.sessions.remove(&id) {
            self.answer_bytes -= old.answer_bytes();
        }
        true
    }

    /// The table as snapshot records, least recently used first.
    pub(crate) fn to_records(&self) -> Vec<ClientSession> {
        self.by_use
            .iter()
            .filter_map(|&(_, id)| {
                let s = self.sessions.get(&id)?;
                let (answer, failed, kept) = match &s.answer {
                    Some(Ok(v)) => (v.clone(), false, true),
                    Some(Err(e)) => (e.as_bytes().to_vec(), true, true),
                    None => (Vec::new(), false, false),
                };
                Some(ClientSession {
                    id,
                    last_index: s.last_index,
                    seq: s.seq,
                    answer,
                    failed,
                    answer_kept: kept,
                })
            })
            .collect()
    }

    /// The table a snapshot's records describe.
    pub(crate) fn from_records(records: Vec<ClientSession>) -> Self {
        let mut table = SessionTable::default();
        for r in records {
            let answer = match (r.answer_kept, r.failed) {
                (false, _) => None,
                (true, false) => Some(Ok(r.answer)),
                (true, true) => Some(Err(String::from_utf8_lossy(&r.answer).into_owned())),
            };
            let entry = Remembered {
                last_index: r.last_index,
                seq: r.seq,
                answer,
            };
            table.answer_bytes += entry.answer_bytes();
            if let Some(old) = table.sessions.insert(r.id, entry) {
                table.answer_bytes -= old.answer_bytes();
                table.by_use.remove(&(old.last_index, r.id));
            }
            table.by_use.insert((r.last_index, r.id));
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
        assert!(!t.sessions.contains_key(&1) && t.sessions.contains_key(&4));
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
