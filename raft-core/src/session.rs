//! Client sessions: a command retried after an unknown outcome applies once.
//!
//! Without a session, a write whose leader died or whose call timed out has an unknown
//! outcome: sending it again may apply it twice. With one, every command carries its
//! session's id and its number in the session; the replicated state remembers each session's
//! last command and answer (in snapshots too), so a retry of an applied command gets the
//! first answer back instead of applying again. [`crate::Mailbox::send_proposal`] does this
//! by itself and retries such writes until its deadline; only the deadline passing leaves an
//! outcome unknown.

use std::sync::Mutex;

use crate::records;

/// A command's place in its client session: what lets the cluster recognise a retry.
///
/// A session runs one command at a time. The client picks a random `id` (never 0),
/// numbers its commands 1, 2, 3, ..., and sends a command again with the same number while
/// its outcome is unknown. [`crate::Mailbox::send_proposal`] keeps sessions by itself;
/// [`crate::Mailbox::send_proposal_in`] is for a client that keeps its own (raft-kv's HTTP
/// clients name theirs in headers).
///
/// ```
/// use raft_core::SessionTag;
///
/// let first = SessionTag::new(0x5eed, 1);
/// // The client had the first command's answer: later commands are "established".
/// let second = SessionTag { seq: 2, established: true, ..first };
/// assert_eq!(second.id, first.id);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionTag {
    /// The session: chosen by the client at random, never 0.
    pub id: u64,
    /// The command's number in the session, from 1; a retry repeats it.
    pub seq: u64,
    /// True once the client has had an answer from the cluster in this session. A cluster
    /// that no longer remembers an established session refuses its commands
    /// ([`crate::NotApplied::SessionExpired`]) instead of starting it afresh, since a
    /// retried command could otherwise apply twice.
    pub established: bool,
}

impl SessionTag {
    /// Command `seq` of session `id`, in a session without an answer yet.
    pub fn new(id: u64, seq: u64) -> Self {
        SessionTag {
            id,
            seq,
            established: false,
        }
    }

    /// True when the tag names a session and a command (neither is 0).
    pub fn is_valid(&self) -> bool {
        self.id != 0 && self.seq != 0
    }

    /// The tag encoded as a log entry's context.
    pub(crate) fn to_context(self) -> Vec<u8> {
        use prost::Message as _;
        records::SessionTag {
            id: self.id,
            seq: self.seq,
            established: self.established,
        }
        .encode_to_vec()
    }

    /// The tag a log entry's context carries, if it is a valid one.
    ///
    /// Every replica decodes the context of every entry it applies, so the encoding
    /// [`SessionTag::to_context`] writes (fields 1, 2, 3 in order, each at most once) is read
    /// directly; anything else goes through the full protobuf decoder, with the same result.
    pub(crate) fn from_context(context: &[u8]) -> Option<Self> {
        use prost::Message as _;
        let r = in_field_order(context).or_else(|| records::SessionTag::decode(context).ok())?;
        let tag = SessionTag {
            id: r.id,
            seq: r.seq,
            established: r.established,
        };
        tag.is_valid().then_some(tag)
    }

    /// A new session's id: random, never 0.
    pub(crate) fn random_id() -> u64 {
        loop {
            let id = rand::random::<u64>();
            if id != 0 {
                return id;
            }
        }
    }
}

/// A `records::SessionTag` whose fields appear in order, each at most once, all varints
/// (what prost writes); `None` for any other encoding, valid or not.
fn in_field_order(mut buf: &[u8]) -> Option<records::SessionTag> {
    let mut tag = records::SessionTag::default();
    let mut last_field = 0;
    while let Some((&key, rest)) = buf.split_first() {
        // Keys of fields 1 to 3 with the varint wire type.
        let field = match key {
            0x08 => 1,
            0x10 => 2,
            0x18 => 3,
            _ => return None,
        };
        if field <= last_field {
            return None;
        }
        last_field = field;
        buf = rest;
        let value = prost::encoding::decode_varint(&mut buf).ok()?;
        match field {
            1 => tag.id = value,
            2 => tag.seq = value,
            _ => tag.established = value != 0,
        }
    }
    Some(tag)
}

/// A mailbox's own session, between commands.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdleSession {
    pub(crate) id: u64,
    pub(crate) next_seq: u64,
    pub(crate) established: bool,
}

impl IdleSession {
    pub(crate) fn new() -> Self {
        IdleSession {
            id: SessionTag::random_id(),
            next_seq: 1,
            established: false,
        }
    }

    /// The tag of this session's next command.
    pub(crate) fn tag(&self) -> SessionTag {
        SessionTag {
            id: self.id,
            seq: self.next_seq,
            established: self.established,
        }
    }
}

/// The sessions a mailbox (and its clones) propose in: one per proposal in flight, taken
/// for the proposal and given back after it. At most [`SessionPool::MAX_IDLE`] idle ones are
/// kept; the cluster forgets sessions unused for long by itself.
#[derive(Debug, Default)]
pub(crate) struct SessionPool {
    idle: Mutex<Vec<IdleSession>>,
}

impl SessionPool {
    pub(crate) const MAX_IDLE: usize = 1024;

    /// A session for one proposal: an idle one, or a new one.
    pub(crate) fn take(&self) -> IdleSession {
        let reused = match self.idle.lock() {
            Ok(mut idle) => idle.pop(),
            Err(poisoned) => poisoned.into_inner().pop(),
        };
        reused.unwrap_or_else(IdleSession::new)
    }

    /// Returns a session once its proposal has finished (whatever the outcome).
    pub(crate) fn give_back(&self, session: IdleSession) {
        let mut idle = match self.idle.lock() {
            Ok(idle) => idle,
            Err(poisoned) => poisoned.into_inner(),
        };
        if idle.len() < Self::MAX_IDLE {
            idle.push(session);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    /// The direct reading agrees with prost's decoder wherever it answers, and answers for
    /// every context this version writes. Replay a failure with `RAFTKIT_SEED=<seed>`.
    #[test]
    fn contexts_decode_as_prost_decodes_them() {
        use rand::{Rng, SeedableRng};
        let seed = crate::testing::cluster::seed("contexts_decode_as_prost_decodes_them");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut direct = 0;
        for round in 0..20_000 {
            let tag = SessionTag {
                id: match rng.gen_range(0..3) {
                    0 => 0,
                    1 => rng.gen_range(1..300),
                    _ => rng.gen(),
                },
                seq: rng.gen_range(0..1_000_000),
                established: rng.gen(),
            };
            let written = tag.to_context();
            assert_eq!(
                in_field_order(&written),
                records::SessionTag::decode(&written[..]).ok(),
                "seed {seed}, round {round}"
            );
            assert_eq!(
                SessionTag::from_context(&written),
                tag.is_valid().then_some(tag),
                "seed {seed}, round {round}"
            );
            // Damaged, reordered, repeated or foreign encodings.
            let mut bytes = written.clone();
            match rng.gen_range(0..5) {
                0 => bytes.truncate(rng.gen_range(0..=bytes.len())),
                1 if !bytes.is_empty() => {
                    let at = rng.gen_range(0..bytes.len());
                    bytes[at] = rng.gen();
                }
                2 => bytes.extend_from_slice(&written),
                3 => bytes = (0..rng.gen_range(0..12)).map(|_| rng.gen()).collect(),
                _ => bytes.extend_from_slice(&[0x18, rng.gen_range(0..3), 0x08, 0x05]),
            }
            let full = records::SessionTag::decode(&bytes[..]).ok();
            if let Some(read) = in_field_order(&bytes) {
                direct += 1;
                assert_eq!(Some(read), full, "seed {seed}, round {round}: {bytes:?}");
            }
            let expected = full
                .map(|r| SessionTag {
                    id: r.id,
                    seq: r.seq,
                    established: r.established,
                })
                .filter(SessionTag::is_valid);
            assert_eq!(
                SessionTag::from_context(&bytes),
                expected,
                "seed {seed}, round {round}: {bytes:?}"
            );
        }
        assert!(
            direct > 1_000,
            "seed {seed}: the direct path answered {direct} times"
        );
    }

    #[test]
    fn a_pool_reuses_sessions_and_new_ones_are_random() {
        let pool = SessionPool::default();
        let a = pool.take();
        let b = pool.take();
        assert_ne!(a.id, b.id);
        assert_eq!(a.tag(), SessionTag::new(a.id, 1));
        let mut a = a;
        a.next_seq = 2;
        a.established = true;
        pool.give_back(a);
        let again = pool.take();
        assert_eq!(
            (again.id, again.next_seq, again.established),
            (a.id, 2, true)
        );
        assert!(!SessionTag::new(0, 1).is_valid() && !SessionTag::new(1, 0).is_valid());
    }
}
