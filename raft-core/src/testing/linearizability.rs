//! A linearizability checker for recorded key-value client histories.
//!
//! Clients record what they do in a [`History`]: [`History::invoke`] right before an
//! operation is sent and [`History::complete`] as soon as its result is known. [`check`]
//! then decides whether the recorded history is linearizable with respect to a key-value
//! store in which every key is an independent register:
//!
//! * [`KvOp::Put`] sets the value of the key,
//! * [`KvOp::Get`] returns the current value (`None` if the key is absent),
//! * [`KvOp::Cas`] replaces the value iff the current value equals `expect` (`None`
//!   meaning "the key is absent") and reports whether it did,
//! * [`KvOp::Delete`] removes the key.
//!
//! An operation with [`Outcome::Unknown`] (a timeout, a lost connection, a client that
//! never heard back) may have taken effect at any point after its invocation, or never;
//! its output is unconstrained. An operation with [`Outcome::Failed`] definitely did not
//! take effect and is ignored.
//!
//! The register model is P-compositional, so the history is split by key and every key is
//! checked on its own with a Wing–Gong / Lowe style depth-first search (the algorithm of
//! Porcupine and of Knossos' `linear` checker) over the time-ordered list of invocations
//! and responses, memoizing the visited configurations (set of linearized operations,
//! register value). On top of that the search linearizes applicable reads greedily, drops
//! configurations in which some read can no longer be satisfied, merges register values
//! no remaining operation can tell apart, and tries unknown-outcome writes only where
//! they are needed; all of which keeps histories of thousands of operations with a dozen
//! concurrent clients per key cheap. The work per key is bounded by a step budget; when it
//! runs out the verdict is [`Verdict::Inconclusive`] instead of a hang.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The default maximum number of search steps spent on a single key by [`check`].
pub const DEFAULT_STEP_BUDGET: u64 = 5_000_000;

/// Upper bound on the number of 64-bit words the memo of one key search may hold
/// (about 64 MiB of payload). Beyond it visited configurations are no longer remembered:
/// the search stays correct, it just prunes less.
const MEMO_WORD_CAPACITY: usize = 8 << 20;

/// A key-value operation issued by a client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KvOp {
    /// Set `key` to `value`.
    Put {
        /// The key written.
        key: String,
        /// The value written.
        value: String,
    },
    /// Read the current value of `key`.
    Get {
        /// The key read.
        key: String,
    },
    /// Set `key` to `value` iff its current value is `expect` (`None`: the key is absent).
    Cas {
        /// The key compared and written.
        key: String,
        /// The value the key must currently hold; `None` requires the key to be absent.
        expect: Option<String>,
        /// The value written when the comparison succeeds.
        value: String,
    },
    /// Remove `key`.
    Delete {
        /// The key removed.
        key: String,
    },
}

impl KvOp {
    /// The key this operation acts on.
    pub fn key(&self) -> &str {
        match self {
            KvOp::Put { key, .. }
            | KvOp::Get { key }
            | KvOp::Cas { key, .. }
            | KvOp::Delete { key } => key,
        }
    }
}

impl fmt::Display for KvOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvOp::Put { key, value } => write!(f, "put({key:?}, {value:?})"),
            KvOp::Get { key } => write!(f, "get({key:?})"),
            KvOp::Cas { key, expect, value } => {
                write!(f, "cas({key:?}, {expect:?} -> {value:?})")
            }
            KvOp::Delete { key } => write!(f, "delete({key:?})"),
        }
    }
}

/// The output of a key-value operation that completed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KvOutput {
    /// A [`KvOp::Put`] or [`KvOp::Delete`] took effect.
    Done,
    /// The value returned by a [`KvOp::Get`] (`None`: the key was absent).
    Value(Option<String>),
    /// Whether a [`KvOp::Cas`] swapped the value.
    Swapped(bool),
}

impl fmt::Display for KvOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvOutput::Done => f.write_str("done"),
            KvOutput::Value(value) => write!(f, "{value:?}"),
            KvOutput::Swapped(true) => f.write_str("swapped"),
            KvOutput::Swapped(false) => f.write_str("not swapped"),
        }
    }
}

/// How an operation ended, as far as its client knows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The operation took effect and returned this output.
    Ok(KvOutput),
    /// The operation may or may not have taken effect, at any point after its invocation;
    /// its return time is treated as +infinity and its output is unconstrained.
    Unknown,
    /// The operation definitely did not take effect; the checker ignores it.
    Failed,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok(output) => write!(f, "ok: {output}"),
            Outcome::Unknown => f.write_str("unknown"),
            Outcome::Failed => f.write_str("failed"),
        }
    }
}

/// The handle of an operation recorded by [`History::invoke`], to pass to
/// [`History::complete`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpId(usize);

/// One recorded operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The client that issued the operation.
    pub client: u64,
    /// The operation.
    pub op: KvOp,
    /// Logical time of the invocation.
    pub invoke: u64,
    /// Logical time of the completion, `None` if the operation never completed.
    pub complete: Option<u64>,
    /// How the operation ended.
    pub outcome: Outcome,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "client {} {} => {} [invoke {}, complete ",
            self.client, self.op, self.outcome, self.invoke
        )?;
        match self.complete {
            Some(time) => write!(f, "{time}]"),
            None => f.write_str("never]"),
        }
    }
}

#[derive(Debug, Default)]
struct HistoryInner {
    clock: AtomicU64,
    ops: Mutex<Vec<Operation>>,
}

/// A thread-safe recorder of client operations; clones share the same history.
///
/// Times are taken from a logical clock that is incremented on every invocation and
/// completion, so if one event happens before another in real time, it gets a smaller
/// time.
#[derive(Debug, Clone, Default)]
pub struct History {
    inner: Arc<HistoryInner>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Operation>> {
        // A panicking client must not hide the history from the checker.
        self.inner
            .ops
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn tick(&self) -> u64 {
        self.inner.clock.fetch_add(1, Ordering::SeqCst)
    }

    /// Records that `client` is about to issue `op`; call it before sending the request.
    pub fn invoke(&self, client: u64, op: KvOp) -> OpId {
        let invoke = self.tick();
        let mut ops = self.lock();
        ops.push(Operation {
            client,
            op,
            invoke,
            complete: None,
            outcome: Outcome::Unknown,
        });
        OpId(ops.len() - 1)
    }

    /// Records how the operation `id` ended; call it as soon as the result is known.
    ///
    /// Completing an operation a second time, or with an id from another history, is
    /// ignored.
    pub fn complete(&self, id: OpId, outcome: Outcome) {
        let complete = self.tick();
        let mut ops = self.lock();
        if let Some(op) = ops.get_mut(id.0) {
            if op.complete.is_none() {
                op.complete = Some(complete);
                op.outcome = outcome;
            }
        }
    }

    /// A snapshot of the recorded operations, in invocation order. Operations that were
    /// never completed have outcome [`Outcome::Unknown`] and no completion time.
    pub fn operations(&self) -> Vec<Operation> {
        let mut ops = self.lock().clone();
        ops.sort_by_key(|op| op.invoke);
        ops
    }

    /// The number of recorded operations.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no operation was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// The result of [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The history is linearizable.
    Linearizable,
    /// The operations on `key` cannot be linearized.
    NotLinearizable {
        /// The key whose sub-history is not linearizable.
        key: String,
        /// Where the search got stuck.
        detail: String,
    },
    /// The checker could not decide for `key` (search budget exhausted, malformed
    /// history); no key was found to be non-linearizable.
    Inconclusive {
        /// The key that could not be decided.
        key: String,
        /// Why.
        reason: String,
    },
}

impl Verdict {
    /// Whether the verdict is [`Verdict::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable => f.write_str("linearizable"),
            Verdict::NotLinearizable { key, detail } => {
                write!(f, "key {key:?} is not linearizable: {detail}")
            }
            Verdict::Inconclusive { key, reason } => {
                write!(
                    f,
                    "linearizability of key {key:?} is inconclusive: {reason}"
                )
            }
        }
    }
}

/// Checks whether `ops` is linearizable, spending at most [`DEFAULT_STEP_BUDGET`] search
/// steps per key.
///
/// Keys are checked in lexicographic order; a non-linearizable key wins over an
/// inconclusive one.
pub fn check(ops: &[Operation]) -> Verdict {
    check_with_budget(ops, DEFAULT_STEP_BUDGET)
}

/// [`check`] with an explicit limit on the search steps spent on each key.
pub fn check_with_budget(ops: &[Operation], max_steps_per_key: u64) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in ops {
        if op.outcome != Outcome::Failed {
            by_key.entry(op.op.key()).or_default().push(op);
        }
    }
    let mut inconclusive = None;
    for (key, key_ops) in by_key {
        match check_key(key, &key_ops, max_steps_per_key) {
            Verdict::Linearizable => {}
            bad @ Verdict::NotLinearizable { .. } => return bad,
            undecided @ Verdict::Inconclusive { .. } => {
                inconclusive.get_or_insert(undecided);
            }
        }
    }
    inconclusive.unwrap_or(Verdict::Linearizable)
}

/// A readable listing of the operations on `key` in `ops`, in invocation order, one per
/// line: invoke and complete times, client, operation and outcome.
pub fn describe_key(ops: &[Operation], key: &str) -> String {
    let mut key_ops: Vec<&Operation> = ops.iter().filter(|op| op.op.key() == key).collect();
    key_ops.sort_by_key(|op| op.invoke);
    let mut out = format!(
        "{:>8} {:>8}  {:<8} operation => outcome\n",
        "invoke", "complete", "client"
    );
    for op in key_ops {
        let complete = op
            .complete
            .map_or_else(|| "-".to_owned(), |time| time.to_string());
        out.push_str(&format!(
            "{:>8} {:>8}  {:<8} {} => {}\n",
            op.invoke, complete, op.client, op.op, op.outcome
        ));
    }
    out
}

/// Checks `history` and panics with a readable report unless it is linearizable
/// (an inconclusive check panics too). The report lists the offending key's operations
/// in invocation order.
#[allow(clippy::panic)]
#[track_caller]
pub fn assert_linearizable(history: &History) {
    let ops = history.operations();
    let verdict = check(&ops);
    match &verdict {
        Verdict::Linearizable => {}
        Verdict::NotLinearizable { key, .. } | Verdict::Inconclusive { key, .. } => panic!(
            "linearizability check failed for a history of {} operations\n{verdict}\n\n\
             operations on key {key:?} in invoke order:\n{}",
            ops.len(),
            describe_key(&ops, key)
        ),
    }
}

// ---------------------------------------------------------------------------------------
// The search.

/// Register value id: 0 is "absent", n > 0 is the n-th interned string.
type ValueId = u32;
const ABSENT: ValueId = 0;

/// The effect of one operation on the register, with values interned.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Put (or delete, with [`ABSENT`]).
    Write(ValueId),
    /// A completed get that returned this value.
    Read(ValueId),
    /// A completed cas with a known result.
    Cas {
        expect: ValueId,
        value: ValueId,
        swapped: bool,
    },
    /// A cas with an unknown result: it swaps iff the comparison holds.
    MaybeCas { expect: ValueId, value: ValueId },
}

impl Step {
    /// The register value after the step, or `None` if the step's output is impossible
    /// in `state`.
    fn apply(self, state: ValueId) -> Option<ValueId> {
        match self {
            Step::Write(value) => Some(value),
            Step::Read(seen) => (seen == state).then_some(state),
            Step::Cas {
                expect,
                value,
                swapped,
            } => match (state == expect, swapped) {
                (true, true) => Some(value),
                (false, false) => Some(state),
                _ => None,
            },
            Step::MaybeCas { expect, value } => Some(if state == expect { value } else { state }),
        }
    }

    /// The value the step needs the register to hold, if it is a present value.
    fn needs(self) -> Option<ValueId> {
        match self {
            Step::Read(seen) => Some(seen),
            Step::Cas {
                expect,
                swapped: true,
                ..
            } => Some(expect),
            _ => None,
        }
        .filter(|&value| value != ABSENT)
    }

    /// The present value the step may write.
    fn produces(self) -> Option<ValueId> {
        match self {
            Step::Write(value)
            | Step::Cas {
                value,
                swapped: true,
                ..
            }
            | Step::MaybeCas { value, .. } => Some(value),
            _ => None,
        }
        .filter(|&value| value != ABSENT)
    }

    /// Whether the step never changes the register (a read or a failed cas).
    fn is_read_only(self) -> bool {
        matches!(self, Step::Read(_) | Step::Cas { swapped: false, .. })
    }
}

#[derive(Default)]
struct Interner<'a> {
    ids: HashMap<&'a str, ValueId>,
    values: Vec<&'a str>,
}

impl<'a> Interner<'a> {
    fn intern(&mut self, value: Option<&'a str>) -> ValueId {
        let Some(value) = value else { return ABSENT };
        if let Some(&id) = self.ids.get(value) {
            return id;
        }
        self.values.push(value);
        let id = ValueId::try_from(self.values.len()).unwrap_or(ValueId::MAX);
        self.ids.insert(value, id);
        id
    }

    fn show(&self, id: ValueId) -> String {
        match id.checked_sub(1).and_then(|i| self.values.get(i as usize)) {
            Some(value) => format!("{value:?}"),
            None => "absent".to_owned(),
        }
    }
}

/// A completed operation: it must be linearized between its invocation and response.
struct Required<'a> {
    src: &'a Operation,
    step: Step,
    effect: Effect,
}

/// An operation with an unknown outcome: it may be linearized anywhere after `invoke`,
/// or never.
struct Optional<'a> {
    src: &'a Operation,
    invoke: u64,
    step: Step,
    effect: Effect,
}

/// What an op means to the [`Census`].
#[derive(Debug, Clone, Copy, Default)]
struct Effect {
    /// The present value it needs the register to hold.
    needs: Option<ValueId>,
    /// The present value it may write, if some op that needs it could come after.
    feeds: Option<ValueId>,
    /// The value (present or not) it compares the register with.
    observes: Option<ValueId>,
}

/// Translates a completed operation into its step, or `None` if op and output disagree.
fn required_step<'a>(
    interner: &mut Interner<'a>,
    op: &'a KvOp,
    output: &'a KvOutput,
) -> Option<Step> {
    Some(match (op, output) {
        (KvOp::Put { value, .. }, KvOutput::Done) => Step::Write(interner.intern(Some(value))),
        (KvOp::Delete { .. }, KvOutput::Done) => Step::Write(ABSENT),
        (KvOp::Get { .. }, KvOutput::Value(seen)) => Step::Read(interner.intern(seen.as_deref())),
        (KvOp::Cas { expect, value, .. }, KvOutput::Swapped(swapped)) => Step::Cas {
            expect: interner.intern(expect.as_deref()),
            value: interner.intern(Some(value)),
            swapped: *swapped,
        },
        _ => return None,
    })
}

/// Translates an operation with an unknown outcome; `None` for reads, which have no
/// effect and an unconstrained output, so they can always be left out.
fn optional_step<'a>(interner: &mut Interner<'a>, op: &'a KvOp) -> Option<Step> {
    match op {
        KvOp::Put { value, .. } => Some(Step::Write(interner.intern(Some(value)))),
        KvOp::Delete { .. } => Some(Step::Write(ABSENT)),
        KvOp::Cas { expect, value, .. } => Some(Step::MaybeCas {
            expect: interner.intern(expect.as_deref()),
            value: interner.intern(Some(value)),
        }),
        KvOp::Get { .. } => None,
    }
}

/// FxHash: the memo is hashed a lot and needs no DoS resistance.
#[derive(Default)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, word: usize) {
        self.write_u64(word as u64);
    }
}

/// A bitset.
type Bits = Box<[u64]>;

/// Visited configurations. A configuration is the memo key — the linearized completed
/// ops, then the classes of the register value and of the run word (see [`Search`]) in
/// the last two words — plus the set of linearized unknown-outcome ops. A configuration
/// is pruned if a visited one dominates it: same completed ops and register value class,
/// a subset of its unknown-outcome ops, and the same run word or none. Whatever can still
/// happen from the pruned configuration can happen from the visited one, whose subtree was
/// (or is being) searched.
struct Memo {
    /// Per memo key, the sets of linearized unknown-outcome ops it was visited with.
    map: HashMap<Box<[u64]>, Vec<Bits>, BuildHasherDefault<FxHasher>>,
    words: usize,
}

impl Memo {
    fn new() -> Self {
        Memo {
            map: HashMap::default(),
            words: 0,
        }
    }

    /// Whether a visited configuration with this key dominates `optional`.
    fn dominated(&self, key: &[u64], optional: &[u64], steps: &mut u64) -> bool {
        self.map.get(key).is_some_and(|seen| {
            seen.iter().any(|visited| {
                *steps += 1;
                visited.iter().zip(optional).all(|(v, o)| v & !o == 0)
            })
        })
    }

    /// Records the configuration; false if it (or one that dominates it) was seen.
    fn admit(&mut self, key: &mut [u64], optional: &[u64], steps: &mut u64) -> bool {
        if self.dominated(key, optional, steps) {
            return false;
        }
        if let Some(run) = key.last_mut().filter(|run| **run != NO_RUN) {
            let saved = std::mem::replace(run, NO_RUN);
            let dominated = self.dominated(key, optional, steps);
            if let Some(run) = key.last_mut() {
                *run = saved;
            }
            if dominated {
                return false;
            }
        }
        if self.words < MEMO_WORD_CAPACITY {
            self.words += optional.len() + 2;
            match self.map.get_mut(&*key) {
                Some(seen) => seen.push(optional.into()),
                None => {
                    self.words += key.len() + 8;
                    self.map.insert((&*key).into(), vec![optional.into()]);
                }
            }
        }
        true
    }
}

/// Run word: not inside a run of unknown-outcome ops.
const NO_RUN: u64 = 0;

/// Memo word for a value that no remaining op compares with (see [`Census::class`]).
const GARBAGE: u64 = 1 << 32;

const NIL: usize = usize::MAX;
const HEAD: usize = 0;

fn set_bit(bits: &mut [u64], i: usize) {
    bits[i / 64] |= 1 << (i % 64);
}

fn clear_bit(bits: &mut [u64], i: usize) {
    bits[i / 64] &= !(1 << (i % 64));
}

fn has_bit(bits: &[u64], i: usize) -> bool {
    bits[i / 64] & (1 << (i % 64)) != 0
}

#[derive(Clone, Copy)]
enum Move {
    /// The completed op with this index was linearized.
    Required(usize),
    /// The unknown-outcome op with this index was linearized; `bound` is the time of the
    /// earliest pending response when it was chosen.
    Optional { index: usize, bound: u64 },
}

struct Frame {
    mv: Move,
    /// Register value and run word before the move.
    state: ValueId,
    run: u64,
    /// The move was the only one worth trying from its configuration.
    forced: bool,
}

#[derive(Clone, Copy)]
enum Cursor {
    /// Just entered a configuration.
    Enter,
    /// Trying the completed op whose call entry is this list entry.
    List(usize),
    /// Trying unknown-outcome ops from this index, invoked no later than `bound`.
    Optional { index: usize, bound: u64 },
}

/// The deepest point the search reached, for the report.
struct Deepest {
    linearized: usize,
    state: ValueId,
    blocking: Option<usize>,
    pending: Vec<usize>,
    recent: Vec<Move>,
    /// Which completed and unknown-outcome ops were linearized.
    required_bits: Vec<u64>,
    optional_bits: Vec<u64>,
}

/// Doubly linked list of call and return entries ordered by time (dancing links).
struct Entries {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Per entry (index 0 is the head sentinel): (op, is return, time).
    info: Vec<(usize, bool, u64)>,
    call_of: Vec<usize>,
    ret_of: Vec<usize>,
}

impl Entries {
    fn new(times: &[(u64, u64)]) -> Self {
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(times.len() * 2);
        for (op, &(invoke, ret)) in times.iter().enumerate() {
            events.push((invoke, false, op));
            events.push((ret, true, op));
        }
        // At equal times calls come first: such operations count as concurrent.
        events.sort_unstable();
        let len = events.len() + 1;
        let mut entries = Entries {
            next: (1..=len).map(|n| if n == len { NIL } else { n }).collect(),
            prev: (0..len).map(|p| p.wrapping_sub(1)).collect(),
            info: Vec::with_capacity(len),
            call_of: vec![NIL; times.len()],
            ret_of: vec![NIL; times.len()],
        };
        entries.info.push((NIL, false, 0));
        for (i, &(time, is_ret, op)) in events.iter().enumerate() {
            entries.info.push((op, is_ret, time));
            if is_ret {
                entries.ret_of[op] = i + 1;
            } else {
                entries.call_of[op] = i + 1;
            }
        }
        entries
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        if n != NIL {
            self.prev[n] = e;
        }
    }

    fn lift(&mut self, op: usize) {
        self.unlink(self.call_of[op]);
        self.unlink(self.ret_of[op]);
    }

    fn unlift(&mut self, op: usize) {
        self.relink(self.ret_of[op]);
        self.relink(self.call_of[op]);
    }
}

/// Counts, per present value, the not yet linearized ops that need the register to hold
/// it (reads, successful cas) and that may write it. A value with readers left but no
/// writer left is an orphan: unless the register holds it right now, its readers can
/// never be linearized, and neither can the history.
///
/// Also counts, per value, the not yet linearized ops that compare the register with it.
/// A value nobody compares with any more is garbage: which garbage value the register
/// holds makes no difference to what can still happen.
struct Census {
    readers: Vec<u32>,
    writers: Vec<u32>,
    observers: Vec<u32>,
    orphans: u32,
    orphan_sum: u64,
}

impl Census {
    fn new(values: usize, effects: impl Iterator<Item = Effect>) -> Self {
        let mut census = Census {
            readers: vec![0; values + 1],
            writers: vec![0; values + 1],
            observers: vec![0; values + 1],
            orphans: 0,
            orphan_sum: 0,
        };
        for effect in effects {
            if let Some(value) = effect.observes {
                census.observers[value as usize] += 1;
            }
            if let Some(value) = effect.needs {
                census.readers[value as usize] += 1;
            }
            if let Some(value) = effect.feeds {
                census.writers[value as usize] += 1;
            }
        }
        for (value, (&readers, &writers)) in census.readers.iter().zip(&census.writers).enumerate()
        {
            if readers > 0 && writers == 0 {
                census.orphans += 1;
                census.orphan_sum += value as u64;
            }
        }
        census
    }

    fn orphan_changed(&mut self, value: ValueId, now_orphan: bool) {
        if now_orphan {
            self.orphans += 1;
            self.orphan_sum += u64::from(value);
        } else {
            self.orphans -= 1;
            self.orphan_sum -= u64::from(value);
        }
    }

    /// Accounts for the op with this effect being linearized.
    fn take(&mut self, effect: Effect) {
        if let Some(v) = effect.observes {
            self.observers[v as usize] -= 1;
        }
        if let Some(v) = effect.needs {
            let i = v as usize;
            self.readers[i] -= 1;
            if self.readers[i] == 0 && self.writers[i] == 0 {
                self.orphan_changed(v, false);
            }
        }
        if let Some(v) = effect.feeds {
            let i = v as usize;
            self.writers[i] -= 1;
            if self.writers[i] == 0 && self.readers[i] > 0 {
                self.orphan_changed(v, true);
            }
        }
    }

    /// Undoes [`Census::take`].
    fn give(&mut self, effect: Effect) {
        if let Some(v) = effect.observes {
            self.observers[v as usize] += 1;
        }
        if let Some(v) = effect.feeds {
            let i = v as usize;
            if self.writers[i] == 0 && self.readers[i] > 0 {
                self.orphan_changed(v, false);
            }
            self.writers[i] += 1;
        }
        if let Some(v) = effect.needs {
            let i = v as usize;
            if self.readers[i] == 0 && self.writers[i] == 0 {
                self.orphan_changed(v, true);
            }
            self.readers[i] += 1;
        }
    }

    /// `value` as far as the remaining ops can tell.
    fn class(&self, value: ValueId) -> u64 {
        if self.observers[value as usize] == 0 {
            GARBAGE
        } else {
            u64::from(value)
        }
    }

    /// Whether no linearization can be completed with the register at `state`.
    fn dead(&self, state: ValueId) -> bool {
        self.orphans > 1 || (self.orphans == 1 && self.orphan_sum != u64::from(state))
    }
}

fn check_key(key: &str, ops: &[&Operation], max_steps: u64) -> Verdict {
    let malformed = |op: &Operation, why: &str| Verdict::Inconclusive {
        key: key.to_owned(),
        reason: format!("malformed history: {why}: {op}"),
    };
    let mut interner = Interner::default();
    let mut required = Vec::new();
    let mut times = Vec::new();
    let mut optional = Vec::new();
    for &op in ops {
        match &op.outcome {
            Outcome::Failed => {}
            Outcome::Unknown => {
                if let Some(step) = optional_step(&mut interner, &op.op) {
                    optional.push(Optional {
                        src: op,
                        invoke: op.invoke,
                        step,
                        effect: Effect::default(),
                    });
                }
            }
            Outcome::Ok(output) => {
                let Some(step) = required_step(&mut interner, &op.op, output) else {
                    return malformed(op, "output does not match the operation");
                };
                // A completed op without a completion time must still take effect.
                let ret = op.complete.unwrap_or(u64::MAX);
                if ret < op.invoke {
                    return malformed(op, "completed before it was invoked");
                }
                required.push(Required {
                    src: op,
                    step,
                    effect: Effect::default(),
                });
                times.push((op.invoke, ret));
            }
        }
    }
    // An unknown-outcome op invoked after every response can always be put last, so it
    // never helps: drop it.
    let last_return = times.iter().map(|&(_, ret)| ret).max().unwrap_or(0);
    optional.retain(|op| op.invoke <= last_return);
    optional.sort_by_key(|op| op.invoke);

    // Every op that needs a value must come after one that writes it.
    let values = interner.values.len() + 1;
    let mut first_write: Vec<Option<u64>> = vec![None; values];
    let writes = required.iter().map(|r| (r.src.invoke, r.step));
    for (invoke, step) in writes.chain(optional.iter().map(|o| (o.invoke, o.step))) {
        if let Some(value) = step.produces() {
            let first = &mut first_write[value as usize];
            *first = Some(first.map_or(invoke, |first| first.min(invoke)));
        }
    }
    let mut last_read = vec![None; values];
    for (r, &(_, ret)) in required.iter().zip(&times) {
        if let Some(value) = r.step.needs() {
            if first_write[value as usize].is_none_or(|first| first > ret) {
                return Verdict::NotLinearizable {
                    key: key.to_owned(),
                    detail: format!(
                        "this operation observes a value that no operation invoked before it \
                         returned writes: {}",
                        r.src
                    ),
                };
            }
            let last = &mut last_read[value as usize];
            *last = Some(last.map_or(ret, |last: u64| last.max(ret)));
        }
    }
    // A write only feeds the ops that need its value if it can come before one of them.
    let effect = |invoke: u64, step: Step| Effect {
        needs: step.needs(),
        feeds: step
            .produces()
            .filter(|&value| last_read[value as usize].is_some_and(|last| invoke <= last)),
        observes: match step {
            Step::Read(value)
            | Step::Cas { expect: value, .. }
            | Step::MaybeCas { expect: value, .. } => Some(value),
            Step::Write(_) => None,
        },
    };
    for r in &mut required {
        r.effect = effect(r.src.invoke, r.step);
    }
    for o in &mut optional {
        o.effect = effect(o.invoke, o.step);
    }
    let census = Census::new(
        values,
        required
            .iter()
            .map(|r| r.effect)
            .chain(optional.iter().map(|o| o.effect)),
    );
    if census.orphans > 0 {
        // Unreachable after the check above.
        return Verdict::Inconclusive {
            key: key.to_owned(),
            reason: "internal error: inconsistent census".to_owned(),
        };
    }
    let words = required.len().div_ceil(64);
    let search = Search {
        entries: Entries::new(&times),
        required: &required,
        optional: &optional,
        max_steps,
        words,
        config: vec![0; words + 2],
        linearized_optional: vec![0; optional.len().div_ceil(64)],
        memo: Memo::new(),
        census,
        steps: 0,
        state: ABSENT,
        run: NO_RUN,
        linearized: 0,
        stack: Vec::with_capacity(required.len() + optional.len()),
        deepest: None,
    };
    match search.run() {
        SearchResult::Linearizable => Verdict::Linearizable,
        SearchResult::OutOfSteps(steps) => Verdict::Inconclusive {
            key: key.to_owned(),
            reason: format!(
                "search budget of {max_steps} steps exhausted after {steps} steps \
                 ({} completed and {} unknown-outcome operations)",
                required.len(),
                optional.len()
            ),
        },
        SearchResult::NotLinearizable(deepest) => Verdict::NotLinearizable {
            key: key.to_owned(),
            detail: describe_failure(&deepest, &required, &optional, &interner),
        },
    }
}

enum SearchResult {
    Linearizable,
    NotLinearizable(Deepest),
    OutOfSteps(u64),
}

/// The depth-first search over the configurations of one key.
///
/// Pruning, on top of the memo:
///
/// * A read or failed cas that can be linearized now is, without trying alternatives:
///   in any completion of the current configuration it can be moved to the front, as it
///   does not change the register.
/// * Configurations in which the [`Census`] finds an orphan value are dead.
/// * All garbage register values (see [`Census`]) share one memo key.
/// * Unknown-outcome ops are only linearized in canonical positions: a run of them must
///   be immediately followed by a completed op that could not have been linearized before
///   the run (the register value at its start is kept in the run word, as value + 1), a
///   put or delete can only start a run, and an op without effect is never linearized.
///   Any linearization can be rewritten into this form: if the completed op after a run
///   could go before it, a read or failed cas moves in front of the run, and a write makes
///   the run pointless so it is dropped; a write inside a run makes the ops before it
///   pointless.
struct Search<'s, 'a> {
    entries: Entries,
    required: &'s [Required<'a>],
    optional: &'s [Optional<'a>],
    max_steps: u64,
    /// Length of the linearized-completed-ops bitset at the start of `config`, which is
    /// followed by the class of the register value and the class of the run word: the
    /// memo key.
    words: usize,
    config: Vec<u64>,
    linearized_optional: Vec<u64>,
    memo: Memo,
    census: Census,
    steps: u64,
    state: ValueId,
    run: u64,
    linearized: usize,
    stack: Vec<Frame>,
    deepest: Option<Deepest>,
}

impl Search<'_, '_> {
    fn run(mut self) -> SearchResult {
        let n = self.required.len();
        if n == 0 {
            return SearchResult::Linearizable;
        }
        self.admit(ABSENT, NO_RUN);
        let mut cursor = Cursor::Enter;
        loop {
            self.steps += 1;
            if self.steps > self.max_steps {
                return SearchResult::OutOfSteps(self.steps);
            }
            cursor = match cursor {
                Cursor::Enter => {
                    if self.linearized == n {
                        return SearchResult::Linearizable;
                    }
                    match self.applicable_read() {
                        None => Cursor::List(self.entries.next[HEAD]),
                        Some(op) if self.try_required(op, true) => Cursor::Enter,
                        // Its configuration was seen: so was this one's only useful move.
                        Some(_) => match self.backtrack() {
                            Some(cursor) => cursor,
                            None => return self.failed(),
                        },
                    }
                }
                Cursor::List(e) => {
                    let (op, is_ret, time) = match self.entries.info.get(e) {
                        Some(&info) => info,
                        None => (NIL, true, u64::MAX),
                    };
                    if is_ret {
                        // No more completed op can go first: try unknown-outcome ops.
                        if self
                            .deepest
                            .as_ref()
                            .is_none_or(|d| self.linearized > d.linearized)
                        {
                            self.deepest = Some(self.snapshot(op));
                        }
                        Cursor::Optional {
                            index: 0,
                            bound: time,
                        }
                    } else if self.try_required(op, false) {
                        Cursor::Enter
                    } else {
                        Cursor::List(self.entries.next[e])
                    }
                }
                Cursor::Optional { index, bound } => {
                    if self.optional.get(index).is_some_and(|o| o.invoke <= bound) {
                        if self.try_optional(index, bound) {
                            Cursor::Enter
                        } else {
                            Cursor::Optional {
                                index: index + 1,
                                bound,
                            }
                        }
                    } else {
                        match self.backtrack() {
                            Some(cursor) => cursor,
                            None => return self.failed(),
                        }
                    }
                }
            };
        }
    }

    fn failed(&mut self) -> SearchResult {
        let deepest = match self.deepest.take() {
            Some(deepest) => deepest,
            // Unreachable: the first response always records a point.
            None => self.snapshot(NIL),
        };
        SearchResult::NotLinearizable(deepest)
    }

    fn run_start(&self) -> Option<ValueId> {
        self.run
            .checked_sub(1)
            .and_then(|start| ValueId::try_from(start).ok())
    }

    /// Completes the memo key of the configuration whose linearized ops are already in
    /// `config` and `linearized_optional`, with these register value and run word, and
    /// records it; false if it was seen or dominated.
    fn admit(&mut self, state: ValueId, run: u64) -> bool {
        self.config[self.words] = self.census.class(state);
        self.config[self.words + 1] = match run.checked_sub(1) {
            Some(start) => {
                self.census
                    .class(ValueId::try_from(start).unwrap_or(ValueId::MAX))
                    + 1
            }
            None => NO_RUN,
        };
        self.memo
            .admit(&mut self.config, &self.linearized_optional, &mut self.steps)
    }

    /// A pending read or failed cas that can be linearized now.
    fn applicable_read(&mut self) -> Option<usize> {
        let run_start = self.run_start();
        let mut e = self.entries.next[HEAD];
        while let Some(&(op, false, _)) = self.entries.info.get(e) {
            self.steps += 1;
            let step = self.required[op].step;
            if step.is_read_only()
                && step.apply(self.state).is_some()
                && run_start.is_none_or(|start| step.apply(start).is_none())
            {
                return Some(op);
            }
            e = self.entries.next[e];
        }
        None
    }

    /// Linearizes the completed op `op` next, if that is possible and worth it.
    fn try_required(&mut self, op: usize, forced: bool) -> bool {
        let Required { step, effect, .. } = self.required[op];
        let Some(next_state) = step.apply(self.state) else {
            return false;
        };
        if self
            .run_start()
            .is_some_and(|start| step.apply(start).is_some())
        {
            return false; // not canonical: the run before it is not needed
        }
        self.census.take(effect);
        set_bit(&mut self.config, op);
        if !self.census.dead(next_state) && self.admit(next_state, NO_RUN) {
            self.stack.push(Frame {
                mv: Move::Required(op),
                state: self.state,
                run: self.run,
                forced,
            });
            self.state = next_state;
            self.run = NO_RUN;
            self.entries.lift(op);
            self.linearized += 1;
            return true;
        }
        self.census.give(effect);
        clear_bit(&mut self.config, op);
        false
    }

    /// Linearizes the unknown-outcome op `index` next, if that is possible and worth it.
    fn try_optional(&mut self, index: usize, bound: u64) -> bool {
        let Optional { step, effect, .. } = self.optional[index];
        if has_bit(&self.linearized_optional, index)
            || (self.run != NO_RUN && matches!(step, Step::Write(_)))
        {
            return false;
        }
        let Some(next_state) = step.apply(self.state).filter(|&next| next != self.state) else {
            return false;
        };
        let run = if self.run == NO_RUN {
            u64::from(self.state) + 1
        } else {
            self.run
        };
        self.census.take(effect);
        set_bit(&mut self.linearized_optional, index);
        if !self.census.dead(next_state) && self.admit(next_state, run) {
            self.stack.push(Frame {
                mv: Move::Optional { index, bound },
                state: self.state,
                run: self.run,
                forced: false,
            });
            self.state = next_state;
            self.run = run;
            return true;
        }
        self.census.give(effect);
        clear_bit(&mut self.linearized_optional, index);
        false
    }

    /// Undoes moves up to the last one that has alternatives; where to continue from, or
    /// `None` when the search space is exhausted.
    fn backtrack(&mut self) -> Option<Cursor> {
        loop {
            let frame = self.stack.pop()?;
            self.state = frame.state;
            self.run = frame.run;
            let cursor = match frame.mv {
                Move::Required(op) => {
                    self.census.give(self.required[op].effect);
                    self.entries.unlift(op);
                    clear_bit(&mut self.config, op);
                    self.linearized -= 1;
                    Cursor::List(self.entries.next[self.entries.call_of[op]])
                }
                Move::Optional { index, bound } => {
                    self.census.give(self.optional[index].effect);
                    clear_bit(&mut self.linearized_optional, index);
                    Cursor::Optional {
                        index: index + 1,
                        bound,
                    }
                }
            };
            if !frame.forced {
                return Some(cursor);
            }
        }
    }

    /// Snapshot of a point where no completed op can be linearized before the response
    /// of `blocking`.
    fn snapshot(&self, blocking: usize) -> Deepest {
        let mut pending = Vec::new();
        let mut e = self.entries.next[HEAD];
        while let Some(&(op, false, _)) = self.entries.info.get(e) {
            pending.push(op);
            e = self.entries.next[e];
        }
        const RECENT: usize = 8;
        let recent = &self.stack[self.stack.len().saturating_sub(RECENT)..];
        Deepest {
            linearized: self.linearized,
            state: self.state,
            blocking: (blocking != NIL).then_some(blocking),
            pending,
            recent: recent.iter().map(|f| f.mv).collect(),
            required_bits: self.config[..self.words].to_vec(),
            optional_bits: self.linearized_optional.clone(),
        }
    }
}

fn describe_failure(
    deepest: &Deepest,
    required: &[Required<'_>],
    optional: &[Optional<'_>],
    interner: &Interner<'_>,
) -> String {
    let register = interner.show(deepest.state);
    let mut out = format!(
        "no valid order exists; the search got furthest with {} of {} completed operations \
         linearized and the register at {register}, where none of the pending completed \
         operations can go next:",
        deepest.linearized,
        required.len(),
    );
    let remaining_required =
        || (0..required.len()).filter(|&i| !has_bit(&deepest.required_bits, i));
    let remaining_optional =
        || (0..optional.len()).filter(|&i| !has_bit(&deepest.optional_bits, i));
    let mut census = Census::new(
        interner.values.len() + 1,
        remaining_required()
            .map(|i| required[i].effect)
            .chain(remaining_optional().map(|i| optional[i].effect)),
    );
    for &op in &deepest.pending {
        let Required { src, step, effect } = required[op];
        out.push_str(&format!("\n    {src}"));
        if deepest.blocking == Some(op) {
            out.push_str(" (the earliest pending response)");
        }
        let Some(next) = step.apply(deepest.state) else {
            out.push_str(&format!(
                "\n      its outcome is impossible with the register at {register}"
            ));
            continue;
        };
        census.take(effect);
        let orphan = (0..census.readers.len())
            .find(|&v| census.readers[v] > 0 && census.writers[v] == 0 && v != next as usize);
        census.give(effect);
        let victim = orphan.and_then(|v| {
            remaining_required()
                .find(|&i| i != op && required[i].step.needs() == Some(v as ValueId))
        });
        match victim {
            Some(victim) => out.push_str(&format!(
                "\n      after it, nothing that could still write {} would be left for: {}",
                interner.show(required[victim].step.needs().unwrap_or(ABSENT)),
                required[victim].src
            )),
            None => out.push_str("\n      every way to continue after it fails"),
        }
    }
    if !deepest.recent.is_empty() {
        out.push_str("\n  last linearized operations before that:");
        for mv in &deepest.recent {
            let src = match *mv {
                Move::Required(op) => required[op].src,
                Move::Optional { index, .. } => optional[index].src,
            };
            out.push_str(&format!("\n    {src}"));
        }
    }
    if !optional.is_empty() {
        out.push_str(&format!(
            "\n  ({} unknown-outcome operations were tried wherever they could have taken effect)",
            optional.len()
        ));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::{BTreeMap, HashMap};
    use std::time::{Duration, Instant};

    // ---- builders ----------------------------------------------------------------------

    fn put(key: &str, value: &str) -> KvOp {
        KvOp::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    fn get(key: &str) -> KvOp {
        KvOp::Get { key: key.into() }
    }

    fn cas(key: &str, expect: Option<&str>, value: &str) -> KvOp {
        KvOp::Cas {
            key: key.into(),
            expect: expect.map(Into::into),
            value: value.into(),
        }
    }

    fn delete(key: &str) -> KvOp {
        KvOp::Delete { key: key.into() }
    }

    fn done() -> Outcome {
        Outcome::Ok(KvOutput::Done)
    }

    fn saw(value: Option<&str>) -> Outcome {
        Outcome::Ok(KvOutput::Value(value.map(Into::into)))
    }

    fn swapped(swapped: bool) -> Outcome {
        Outcome::Ok(KvOutput::Swapped(swapped))
    }

    /// An operation by `client` over `[invoke, complete]`.
    fn op(client: u64, op: KvOp, invoke: u64, complete: u64, outcome: Outcome) -> Operation {
        Operation {
            client,
            op,
            invoke,
            complete: Some(complete),
            outcome,
        }
    }

    fn assert_good(ops: &[Operation]) {
        let verdict = check(ops);
        assert_eq!(verdict, Verdict::Linearizable, "{verdict}");
        assert!(verdict.is_linearizable());
    }

    /// Asserts that `key` (and only it) is reported as not linearizable.
    fn assert_bad(ops: &[Operation], bad_key: &str) -> String {
        match check(ops) {
            Verdict::NotLinearizable { key, detail } => {
                assert_eq!(key, bad_key, "{detail}");
                detail
            }
            other => panic!("expected key {bad_key:?} to be non-linearizable, got: {other}"),
        }
    }

    // ---- hand-written histories --------------------------------------------------------

    #[test]
    fn empty_history_is_linearizable() {
        assert_good(&[]);
    }

    #[test]
    fn sequential_put_get() {
        assert_good(&[
            op(1, get("k"), 0, 1, saw(None)),
            op(1, put("k", "a"), 2, 3, done()),
            op(2, get("k"), 4, 5, saw(Some("a"))),
            op(1, put("k", "b"), 6, 7, done()),
            op(2, get("k"), 8, 9, saw(Some("b"))),
        ]);
    }

    #[test]
    fn sequential_read_of_overwritten_value_is_bad() {
        assert_bad(
            &[
                op(1, put("k", "a"), 0, 1, done()),
                op(1, put("k", "b"), 2, 3, done()),
                op(2, get("k"), 4, 5, saw(Some("a"))),
            ],
            "k",
        );
    }

    #[test]
    fn concurrent_writes_read_sees_either_value() {
        for seen in ["a", "b"] {
            assert_good(&[
                op(1, put("k", "a"), 0, 10, done()),
                op(2, put("k", "b"), 1, 9, done()),
                op(3, get("k"), 11, 12, saw(Some(seen))),
                // Both orders stay possible for a read that overlaps both writes.
                op(4, get("k"), 2, 8, saw(Some(seen))),
            ]);
        }
        // A read overlapping a write may see the old or the new value.
        for seen in [None, Some("a")] {
            assert_good(&[
                op(1, put("k", "a"), 0, 10, done()),
                op(2, get("k"), 1, 2, saw(seen)),
            ]);
        }
    }

    #[test]
    fn reads_must_agree_on_the_order_of_concurrent_writes() {
        // Once a reader saw b after a, no later read may see a again.
        assert_bad(
            &[
                op(1, put("k", "a"), 0, 10, done()),
                op(2, put("k", "b"), 1, 9, done()),
                op(3, get("k"), 11, 12, saw(Some("b"))),
                op(3, get("k"), 13, 14, saw(Some("a"))),
            ],
            "k",
        );
    }

    #[test]
    fn read_of_a_value_never_written_is_bad() {
        let detail = assert_bad(
            &[
                op(1, put("k", "a"), 0, 3, done()),
                op(2, get("k"), 1, 4, saw(Some("zzz"))),
            ],
            "k",
        );
        assert!(detail.contains("zzz"), "{detail}");
    }

    #[test]
    fn stale_read_after_a_completed_write_is_bad() {
        assert_bad(
            &[
                op(1, put("k", "old"), 0, 1, done()),
                op(1, put("k", "new"), 2, 3, done()),
                op(2, get("k"), 4, 6, saw(Some("old"))),
            ],
            "k",
        );
        assert_bad(
            &[
                op(1, put("k", "new"), 0, 1, done()),
                op(2, get("k"), 2, 3, saw(None)),
            ],
            "k",
        );
    }

    #[test]
    fn cas_semantics_good() {
        assert_good(&[
            op(1, cas("k", None, "a"), 0, 1, swapped(true)), // absent key: expect None swaps
            op(1, cas("k", None, "x"), 2, 3, swapped(false)), // now present
            op(2, cas("k", Some("a"), "b"), 4, 5, swapped(true)),
            op(3, cas("k", Some("a"), "c"), 6, 7, swapped(false)),
            op(2, get("k"), 8, 9, saw(Some("b"))),
            op(1, delete("k"), 10, 11, done()),
            op(1, cas("k", Some("b"), "d"), 12, 13, swapped(false)),
            op(1, cas("k", None, "e"), 14, 15, swapped(true)),
            op(1, get("k"), 16, 17, saw(Some("e"))),
        ]);
        // Two concurrent cas from the same expected value: exactly one may win.
        assert_good(&[
            op(1, put("k", "a"), 0, 1, done()),
            op(2, cas("k", Some("a"), "b"), 2, 10, swapped(true)),
            op(3, cas("k", Some("a"), "c"), 3, 9, swapped(false)),
            op(1, get("k"), 11, 12, saw(Some("b"))),
        ]);
    }

    #[test]
    fn cas_semantics_bad() {
        // Swapped although the value did not match.
        assert_bad(
            &[
                op(1, put("k", "b"), 0, 1, done()),
                op(1, cas("k", Some("a"), "c"), 2, 3, swapped(true)),
            ],
            "k",
        );
        // Did not swap although the value matched.
        assert_bad(
            &[
                op(1, put("k", "a"), 0, 1, done()),
                op(1, cas("k", Some("a"), "c"), 2, 3, swapped(false)),
            ],
            "k",
        );
        // expect None on an absent key must swap.
        assert_bad(&[op(1, cas("k", None, "a"), 0, 1, swapped(false))], "k");
        // expect None on a present key must not swap.
        assert_bad(
            &[
                op(1, put("k", "a"), 0, 1, done()),
                op(1, cas("k", None, "c"), 2, 3, swapped(true)),
            ],
            "k",
        );
        // A successful cas is visible to later reads.
        assert_bad(
            &[
                op(1, put("k", "a"), 0, 1, done()),
                op(1, cas("k", Some("a"), "b"), 2, 3, swapped(true)),
                op(2, get("k"), 4, 5, saw(Some("a"))),
            ],
            "k",
        );
        // Two concurrent cas from the same value cannot both win.
        assert_bad(
            &[
                op(1, put("k", "a"), 0, 1, done()),
                op(2, cas("k", Some("a"), "b"), 2, 10, swapped(true)),
                op(3, cas("k", Some("a"), "c"), 3, 9, swapped(true)),
            ],
            "k",
        );
    }

    #[test]
    fn delete_then_get() {
        assert_good(&[
            op(1, put("k", "a"), 0, 1, done()),
            op(1, delete("k"), 2, 3, done()),
            op(2, get("k"), 4, 5, saw(None)),
            op(2, delete("k"), 6, 7, done()), // deleting an absent key is fine
            op(2, get("k"), 8, 9, saw(None)),
        ]);
        assert_bad(
            &[
                op(1, put("k", "a"), 0, 1, done()),
                op(1, delete("k"), 2, 3, done()),
                op(2, get("k"), 4, 5, saw(Some("a"))),
            ],
            "k",
        );
    }

    #[test]
    fn unknown_write_that_took_effect() {
        assert_good(&[
            op(1, put("k", "a"), 0, 1, done()),
            op(2, put("k", "b"), 2, 3, Outcome::Unknown),
            op(3, get("k"), 4, 5, saw(Some("a"))),
            // Took effect long after it "returned".
            op(3, get("k"), 20, 21, saw(Some("b"))),
            op(3, get("k"), 22, 23, saw(Some("b"))),
        ]);
        // Unknown delete and unknown cas that took effect.
        assert_good(&[
            op(1, put("k", "a"), 0, 1, done()),
            op(2, delete("k"), 2, 3, Outcome::Unknown),
            op(3, get("k"), 4, 5, saw(None)),
            op(2, cas("k", None, "c"), 6, 7, Outcome::Unknown),
            op(3, get("k"), 8, 9, saw(Some("c"))),
        ]);
    }

    #[test]
    fn unknown_write_that_did_not_take_effect() {
        assert_good(&[
            op(1, put("k", "a"), 0, 1, done()),
            op(2, put("k", "b"), 2, 3, Outcome::Unknown),
            op(2, cas("k", Some("a"), "c"), 4, 5, Outcome::Unknown),
            op(2, delete("k"), 6, 7, Outcome::Unknown),
            op(2, get("k"), 8, 9, Outcome::Unknown),
            op(3, get("k"), 10, 11, saw(Some("a"))),
            op(3, get("k"), 12, 13, saw(Some("a"))),
        ]);
    }

    #[test]
    fn unknown_write_cannot_take_effect_before_its_invocation_or_twice() {
        // Seen before it was invoked.
        assert_bad(
            &[
                op(3, get("k"), 0, 1, saw(Some("b"))),
                op(2, put("k", "b"), 2, 3, Outcome::Unknown),
            ],
            "k",
        );
        // Seen, overwritten, then seen again: it can only take effect once.
        assert_bad(
            &[
                op(2, put("k", "b"), 0, 1, Outcome::Unknown),
                op(3, get("k"), 2, 3, saw(Some("b"))),
                op(1, put("k", "a"), 4, 5, done()),
                op(3, get("k"), 6, 7, saw(Some("a"))),
                op(3, get("k"), 8, 9, saw(Some("b"))),
            ],
            "k",
        );
        // Two unknown writes of the same value can explain both sightings.
        assert_good(&[
            op(2, put("k", "b"), 0, 1, Outcome::Unknown),
            op(4, put("k", "b"), 0, 1, Outcome::Unknown),
            op(3, get("k"), 2, 3, saw(Some("b"))),
            op(1, put("k", "a"), 4, 5, done()),
            op(3, get("k"), 6, 7, saw(Some("a"))),
            op(3, get("k"), 8, 9, saw(Some("b"))),
        ]);
    }

    #[test]
    fn never_completed_operations_count_as_unknown() {
        let history = History::new();
        let write = history.invoke(1, put("k", "a"));
        let _never = history.invoke(2, put("k", "b"));
        history.complete(write, done());
        let read = history.invoke(3, get("k"));
        history.complete(read, saw(Some("b")));
        let ops = history.operations();
        assert_eq!(ops[1].outcome, Outcome::Unknown);
        assert_eq!(ops[1].complete, None);
        assert_linearizable(&history);
    }

    #[test]
    fn failed_write_must_not_be_seen() {
        assert_bad(
            &[
                op(1, put("k", "a"), 0, 1, done()),
                op(2, put("k", "b"), 2, 3, Outcome::Failed),
                op(3, get("k"), 4, 5, saw(Some("b"))),
            ],
            "k",
        );
        assert_good(&[
            op(1, put("k", "a"), 0, 1, done()),
            op(2, put("k", "b"), 2, 3, Outcome::Failed),
            op(3, get("k"), 4, 5, saw(Some("a"))),
        ]);
    }

    #[test]
    fn only_the_bad_key_is_reported() {
        let mut ops = Vec::new();
        for (i, key) in ["a", "b", "c", "d"].into_iter().enumerate() {
            let t = i as u64 * 10;
            ops.push(op(1, put(key, "1"), t, t + 1, done()));
            ops.push(op(2, put(key, "2"), t + 2, t + 3, done()));
            let seen = if key == "c" { "1" } else { "2" };
            ops.push(op(3, get(key), t + 4, t + 5, saw(Some(seen))));
        }
        let detail = assert_bad(&ops, "c");
        assert!(detail.contains("get(\"c\")"), "{detail}");
    }

    #[test]
    fn not_linearizable_wins_over_inconclusive() {
        let ops = vec![
            // "a" is malformed (inconclusive), "b" is bad.
            op(1, put("a", "1"), 0, 1, saw(None)),
            op(1, put("b", "1"), 0, 1, done()),
            op(2, get("b"), 2, 3, saw(Some("2"))),
        ];
        assert_bad(&ops, "b");
        let verdict = check(&ops[..1]);
        assert!(
            matches!(&verdict, Verdict::Inconclusive { key, reason } if key == "a" && reason.contains("malformed")),
            "{verdict}"
        );
        let backwards = [op(1, put("a", "1"), 5, 4, done())];
        assert!(matches!(check(&backwards), Verdict::Inconclusive { .. }));
    }

    #[test]
    fn exhausted_budget_is_inconclusive() {
        let ops = simulate(&SimConfig {
            seed: 7,
            clients: 8,
            keys: 1,
            ops: 300,
            values: 3,
            p_lost: 0.0,
        });
        assert_eq!(check(&ops), Verdict::Linearizable);
        let verdict = check_with_budget(&ops, 10);
        assert!(
            matches!(&verdict, Verdict::Inconclusive { key, reason } if key == "k0" && reason.contains("budget")),
            "{verdict}"
        );
        assert!(!verdict.is_linearizable());
    }

    #[test]
    fn completed_op_without_completion_time_must_take_effect() {
        let mut read = op(2, get("k"), 2, 0, saw(Some("a")));
        read.complete = None;
        assert_good(&[op(1, put("k", "a"), 0, 1, done()), read.clone()]);
        read.outcome = saw(Some("b"));
        assert_bad(&[op(1, put("k", "a"), 0, 1, done()), read], "k");
    }

    #[test]
    fn verdict_display() {
        assert_eq!(Verdict::Linearizable.to_string(), "linearizable");
        let bad = Verdict::NotLinearizable {
            key: "k".into(),
            detail: "stuck".into(),
        };
        assert_eq!(bad.to_string(), "key \"k\" is not linearizable: stuck");
        let unsure = Verdict::Inconclusive {
            key: "k".into(),
            reason: "budget".into(),
        };
        assert_eq!(
            unsure.to_string(),
            "linearizability of key \"k\" is inconclusive: budget"
        );
        assert!(!bad.is_linearizable() && !unsure.is_linearizable());
    }

    #[test]
    fn assert_linearizable_reports_the_bad_key_in_invoke_order() {
        let history = History::new();
        let a = history.invoke(1, put("good", "x"));
        history.complete(a, done());
        let b = history.invoke(1, put("bad", "x"));
        let c = history.invoke(2, get("bad"));
        history.complete(b, done());
        history.complete(c, saw(Some("y")));
        let d = history.invoke(3, cas("bad", Some("x"), "z"));
        history.complete(d, Outcome::Unknown);
        assert_linearizable_fails_with(
            &history,
            &[
                "key \"bad\" is not linearizable",
                "operations on key \"bad\" in invoke order",
                "       2        4  1        put(\"bad\", \"x\") => ok: done\n",
                "       3        5  2        get(\"bad\") => ok: Some(\"y\")\n",
                "       6        7  3        cas(\"bad\", Some(\"x\") -> \"z\") => unknown\n",
            ],
        );
        let report = describe_key(&history.operations(), "bad");
        assert!(!report.contains("\"good\""), "{report}");
        // Invoke order: the put line comes before the get line.
        assert!(report.find("put(").unwrap() < report.find("get(").unwrap());
    }

    fn assert_linearizable_fails_with(history: &History, needles: &[&str]) {
        let history = history.clone();
        let panic = std::panic::catch_unwind(move || assert_linearizable(&history))
            .expect_err("must panic");
        let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        for needle in needles {
            assert!(
                message.contains(needle),
                "missing {needle:?} in:\n{message}"
            );
        }
    }

    // ---- the recorder ------------------------------------------------------------------

    #[test]
    fn history_basics() {
        let history = History::new();
        assert!(history.is_empty());
        let id = history.invoke(7, put("k", "v"));
        assert_eq!(history.len(), 1);
        assert!(!history.is_empty());
        history.complete(id, done());
        // A second completion is ignored.
        history.complete(id, Outcome::Failed);
        // Unknown ids are ignored.
        History::new().complete(id, Outcome::Failed);
        let ops = history.operations();
        assert_eq!(
            ops,
            vec![Operation {
                client: 7,
                op: put("k", "v"),
                invoke: 0,
                complete: Some(1),
                outcome: done(),
            }]
        );
        assert_eq!(history.clone().len(), 1, "clones share the history");
    }

    /// Threads run operations against a mutex-protected map: the result must be
    /// linearizable, and the recorder must keep every op with consistent times.
    #[test]
    fn history_concurrent_recording_of_a_real_store() {
        const THREADS: u64 = 8;
        const OPS: u64 = 250;
        let history = History::new();
        let store = Arc::new(Mutex::new(HashMap::<String, String>::new()));
        let handles: Vec<_> = (0..THREADS)
            .map(|client| {
                let history = history.clone();
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    let mut rng = StdRng::seed_from_u64(client);
                    for i in 0..OPS {
                        let key = format!("k{}", rng.gen_range(0..3));
                        let value = format!("{client}-{i}");
                        let kv_op = match rng.gen_range(0..4) {
                            0 => put(&key, &value),
                            1 => get(&key),
                            2 => cas(&key, rng.gen_bool(0.5).then_some("0-0"), &value),
                            _ => delete(&key),
                        };
                        let id = history.invoke(client, kv_op.clone());
                        let output = {
                            let mut map = store.lock().unwrap();
                            match kv_op {
                                KvOp::Put { key, value } => {
                                    map.insert(key, value);
                                    KvOutput::Done
                                }
                                KvOp::Get { key } => KvOutput::Value(map.get(&key).cloned()),
                                KvOp::Cas { key, expect, value } => {
                                    let matches = map.get(&key) == expect.as_ref();
                                    if matches {
                                        map.insert(key, value);
                                    }
                                    KvOutput::Swapped(matches)
                                }
                                KvOp::Delete { key } => {
                                    map.remove(&key);
                                    KvOutput::Done
                                }
                            }
                        };
                        if i % 50 == 49 {
                            std::thread::yield_now();
                        }
                        history.complete(id, Outcome::Ok(output));
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        let ops = history.operations();
        assert_eq!(ops.len() as u64, THREADS * OPS);
        assert_eq!(history.len() as u64, THREADS * OPS);
        let mut times: Vec<u64> = ops
            .iter()
            .flat_map(|o| [o.invoke, o.complete.unwrap()])
            .collect();
        assert!(
            ops.windows(2).all(|w| w[0].invoke < w[1].invoke),
            "sorted by invoke"
        );
        assert!(ops.iter().all(|o| o.invoke < o.complete.unwrap()));
        times.sort_unstable();
        times.dedup();
        assert_eq!(
            times.len() as u64,
            2 * THREADS * OPS,
            "every event has its own time"
        );
        for client in 0..THREADS {
            let mine: Vec<&Operation> = ops.iter().filter(|o| o.client == client).collect();
            assert_eq!(mine.len() as u64, OPS);
            assert!(mine
                .windows(2)
                .all(|w| w[0].complete.unwrap() < w[1].invoke));
        }
        assert_linearizable(&history);
    }

    // ---- randomized histories ----------------------------------------------------------

    struct SimConfig {
        seed: u64,
        clients: usize,
        keys: usize,
        ops: usize,
        /// Size of the value pool per key; 0 for unique values.
        values: usize,
        /// Probability that an op ends with an unknown or failed outcome.
        p_lost: f64,
    }

    enum ClientState {
        Idle,
        InFlight {
            index: usize,
            applied: Option<KvOutput>,
        },
    }

    /// Runs clients against a sequential model: every op takes effect (or not) at a
    /// point strictly inside its interval, so the history is linearizable by
    /// construction.
    fn simulate(config: &SimConfig) -> Vec<Operation> {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let mut model: HashMap<String, String> = HashMap::new();
        let mut ops: Vec<Operation> = Vec::with_capacity(config.ops);
        let mut clients: Vec<ClientState> =
            (0..config.clients).map(|_| ClientState::Idle).collect();
        let mut now = 0u64;
        let mut fresh = 0u64;
        let mut value = |rng: &mut StdRng| {
            fresh += 1;
            if config.values == 0 {
                format!("v{fresh}")
            } else {
                format!("v{}", rng.gen_range(0..config.values))
            }
        };
        loop {
            let busy = clients
                .iter()
                .any(|c| matches!(c, ClientState::InFlight { .. }));
            if !busy && ops.len() >= config.ops {
                return ops;
            }
            let c = rng.gen_range(0..config.clients);
            match &mut clients[c] {
                ClientState::Idle => {
                    if ops.len() >= config.ops {
                        continue;
                    }
                    let key = format!("k{}", rng.gen_range(0..config.keys));
                    let kv_op = match rng.gen_range(0..20) {
                        0..=6 => put(&key, &value(&mut rng)),
                        7..=13 => get(&key),
                        14..=17 => {
                            let expect = match rng.gen_range(0..3) {
                                0 => model.get(&key).cloned(),
                                1 => None,
                                _ => Some(value(&mut rng)),
                            };
                            KvOp::Cas {
                                key,
                                expect,
                                value: value(&mut rng),
                            }
                        }
                        _ => delete(&key),
                    };
                    ops.push(Operation {
                        client: c as u64,
                        op: kv_op,
                        invoke: now,
                        complete: None,
                        outcome: Outcome::Unknown,
                    });
                    clients[c] = ClientState::InFlight {
                        index: ops.len() - 1,
                        applied: None,
                    };
                }
                ClientState::InFlight {
                    index,
                    applied: None,
                } => {
                    let index = *index;
                    if rng.gen_bool(config.p_lost / 2.0) {
                        // Never takes effect.
                        ops[index].complete = Some(now);
                        ops[index].outcome = if rng.gen_bool(0.5) {
                            Outcome::Failed
                        } else {
                            Outcome::Unknown
                        };
                        clients[c] = ClientState::Idle;
                    } else {
                        let output = match &ops[index].op {
                            KvOp::Put { key, value } => {
                                model.insert(key.clone(), value.clone());
                                KvOutput::Done
                            }
                            KvOp::Get { key } => KvOutput::Value(model.get(key).cloned()),
                            KvOp::Cas { key, expect, value } => {
                                let matches = model.get(key) == expect.as_ref();
                                if matches {
                                    model.insert(key.clone(), value.clone());
                                }
                                KvOutput::Swapped(matches)
                            }
                            KvOp::Delete { key } => {
                                model.remove(key);
                                KvOutput::Done
                            }
                        };
                        clients[c] = ClientState::InFlight {
                            index,
                            applied: Some(output),
                        };
                    }
                }
                ClientState::InFlight {
                    index,
                    applied: Some(output),
                } => {
                    let index = *index;
                    ops[index].complete = Some(now);
                    ops[index].outcome = if rng.gen_bool(config.p_lost / 2.0) {
                        Outcome::Unknown // took effect, but the client never learnt
                    } else {
                        Outcome::Ok(output.clone())
                    };
                    clients[c] = ClientState::Idle;
                }
            }
            now += 1;
        }
    }

    #[derive(Debug, Clone, Copy)]
    enum Mutation {
        /// A read returns a value nobody wrote.
        NeverWritten,
        /// A read returns a value all of whose writers were invoked after it returned.
        Future,
        /// A read returns a value whose only writer completed, then a completed write
        /// overwrote it, before the read was invoked.
        Stale,
    }

    const MUTATIONS: [Mutation; 3] = [Mutation::NeverWritten, Mutation::Future, Mutation::Stale];

    /// The present value `op` may write (failed ops write nothing).
    fn written(op: &Operation) -> Option<&str> {
        match (&op.op, &op.outcome) {
            (_, Outcome::Failed) => None,
            (KvOp::Put { value, .. } | KvOp::Cas { value, .. }, _) => Some(value),
            _ => None,
        }
    }

    /// Makes one completed read impossible; `None` if the history has no suitable read.
    fn mutate(
        ops: &[Operation],
        mutation: Mutation,
        rng: &mut StdRng,
    ) -> Option<(Vec<Operation>, String)> {
        let completed = |o: &Operation| o.complete.filter(|_| matches!(o.outcome, Outcome::Ok(_)));
        let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, o) in ops.iter().enumerate() {
            by_key.entry(o.op.key()).or_default().push(i);
        }
        let mut candidates: Vec<(usize, String)> = Vec::new();
        for indices in by_key.values() {
            let key_ops = || indices.iter().map(|&i| (i, &ops[i]));
            let reads: Vec<(usize, u64, u64)> = key_ops()
                .filter(|(_, o)| matches!(o.op, KvOp::Get { .. }))
                .filter_map(|(i, o)| Some((i, o.invoke, completed(o)?)))
                .collect();
            // Per value: how many ops may write it, and the earliest invocation among them.
            let mut writers: HashMap<&str, (usize, u64)> = HashMap::new();
            for (_, o) in key_ops() {
                if let Some(value) = written(o) {
                    let entry = writers.entry(value).or_insert((0, u64::MAX));
                    *entry = (entry.0 + 1, entry.1.min(o.invoke));
                }
            }
            match mutation {
                Mutation::NeverWritten => {
                    candidates.extend(reads.iter().map(|&(i, ..)| (i, "never-written".into())))
                }
                Mutation::Future => {
                    // The value whose writers start last.
                    let Some((&value, &(_, first))) = writers.iter().max_by_key(|(_, w)| w.1)
                    else {
                        continue;
                    };
                    for &(i, _, done) in &reads {
                        if done < first {
                            candidates.push((i, value.to_owned()));
                        }
                    }
                }
                Mutation::Stale => {
                    // Completed blind writes, by invocation: (invoke, completion).
                    let mut overwrites: Vec<(u64, u64)> = key_ops()
                        .filter(|(_, o)| matches!(o.op, KvOp::Put { .. } | KvOp::Delete { .. }))
                        .filter_map(|(_, o)| Some((o.invoke, completed(o)?)))
                        .collect();
                    overwrites.sort_unstable();
                    // suffix_min[j]: earliest completion among overwrites[j..].
                    let mut suffix_min = vec![u64::MAX; overwrites.len() + 1];
                    for j in (0..overwrites.len()).rev() {
                        suffix_min[j] = suffix_min[j + 1].min(overwrites[j].1);
                    }
                    // The uniquely written value overwritten the earliest.
                    let mut best: Option<(u64, &str)> = None;
                    for (_, o) in key_ops() {
                        let (KvOp::Put { value, .. }, Some(done)) = (&o.op, completed(o)) else {
                            continue;
                        };
                        if writers.get(value.as_str()).is_some_and(|w| w.0 == 1) {
                            let j = overwrites.partition_point(|&(invoke, _)| invoke <= done);
                            let overwritten = suffix_min[j];
                            if best.is_none_or(|(t, _)| overwritten < t) {
                                best = Some((overwritten, value));
                            }
                        }
                    }
                    let Some((overwritten, value)) = best else {
                        continue;
                    };
                    for &(i, invoke, _) in &reads {
                        if invoke > overwritten {
                            candidates.push((i, value.to_owned()));
                        }
                    }
                }
            }
        }
        if candidates.is_empty() {
            return None;
        }
        let (victim, value) = candidates.swap_remove(rng.gen_range(0..candidates.len()));
        let mut bad = ops.to_vec();
        bad[victim].outcome = saw(Some(&value));
        Some((bad, ops[victim].op.key().to_owned()))
    }

    fn base_seed() -> u64 {
        std::env::var("LINCHECK_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random)
    }

    #[test]
    fn randomized_histories_and_impossible_reads() {
        let seed = base_seed();
        eprintln!("randomized linearizability test: LINCHECK_SEED={seed}");
        let mut rng = StdRng::seed_from_u64(seed);
        for round in 0..60 {
            let config = SimConfig {
                seed: rng.gen(),
                clients: rng.gen_range(1..=10),
                keys: rng.gen_range(1..=4),
                ops: rng.gen_range(1..=150),
                values: rng.gen_range(0..=4),
                p_lost: if rng.gen_bool(0.5) { 0.0 } else { 0.1 },
            };
            let ops = simulate(&config);
            let verdict = check(&ops);
            assert!(
                verdict.is_linearizable(),
                "seed {seed} round {round} (sim seed {}): {verdict}",
                config.seed
            );
            for mutation in MUTATIONS {
                let Some((bad, key)) = mutate(&ops, mutation, &mut rng) else {
                    continue;
                };
                match check(&bad) {
                    Verdict::NotLinearizable { key: reported, .. } => {
                        assert_eq!(reported, key, "seed {seed} round {round} {mutation:?}")
                    }
                    other => panic!(
                        "seed {seed} round {round} (sim seed {}) {mutation:?}: {other}",
                        config.seed
                    ),
                }
            }
        }
    }

    #[test]
    fn large_history_checks_quickly() {
        let seed = base_seed();
        eprintln!("large history test: LINCHECK_SEED={seed}");
        let mut rng = StdRng::seed_from_u64(seed);
        let shapes = [
            // (clients, keys, ops, values, p_lost)
            (8, 5, 2000, 0, 0.0),
            (8, 5, 2000, 3, 0.05),
            (16, 8, 4000, 4, 0.05),
            (16, 5, 3000, 0, 0.02),
        ];
        for (clients, keys, n, values, p_lost) in shapes {
            let config = SimConfig {
                seed: rng.gen(),
                clients,
                keys,
                ops: n,
                values,
                p_lost,
            };
            let ops = simulate(&config);
            let start = Instant::now();
            let verdict = check(&ops);
            let good_time = start.elapsed();
            assert!(
                verdict.is_linearizable(),
                "sim seed {}: {verdict}",
                config.seed
            );
            let mut bad_times = Vec::new();
            for mutation in MUTATIONS {
                let Some((bad, key)) = mutate(&ops, mutation, &mut rng) else {
                    continue;
                };
                let start = Instant::now();
                let verdict = check(&bad);
                bad_times.push((mutation, start.elapsed()));
                assert!(
                    matches!(&verdict, Verdict::NotLinearizable { key: k, .. } if *k == key),
                    "sim seed {} {mutation:?}: {verdict}",
                    config.seed
                );
            }
            eprintln!(
                "{n} ops, {clients} clients, {keys} keys, {values} values, p_lost {p_lost}: good {good_time:?}, bad {bad_times:?}"
            );
            let bad_time = bad_times.iter().map(|&(_, t)| t).max().unwrap_or_default();
            // Generous: debug builds on a loaded machine.
            assert!(good_time < Duration::from_secs(20) && bad_time < Duration::from_secs(20));
        }
    }

    /// Corrupting a few reads of a large history with few distinct values usually keeps it
    /// linearizable, and when not, only the search can tell: it must decide either way
    /// within budget. Fixed seeds keep this deterministic.
    #[test]
    fn corrupted_reads_in_large_histories_are_decided() {
        let mut rng = StdRng::seed_from_u64(11);
        let mut verdicts = (0, 0);
        for seed in 0..10 {
            let mut ops = simulate(&SimConfig {
                seed,
                clients: 16,
                keys: 5,
                ops: 2000,
                values: 2,
                p_lost: 0.05,
            });
            let reads: Vec<usize> = (0..ops.len())
                .filter(|&i| matches!(ops[i].op, KvOp::Get { .. }))
                .filter(|&i| matches!(ops[i].outcome, Outcome::Ok(_)))
                .collect();
            for _ in 0..3 {
                let victim = reads[rng.gen_range(0..reads.len())];
                let seen = match &ops[victim].outcome {
                    Outcome::Ok(KvOutput::Value(Some(value))) if value == "v0" => "v1",
                    _ => "v0",
                };
                ops[victim].outcome = saw(Some(seen));
            }
            let start = Instant::now();
            match check(&ops) {
                Verdict::Linearizable => verdicts.0 += 1,
                Verdict::NotLinearizable { .. } => verdicts.1 += 1,
                inconclusive @ Verdict::Inconclusive { .. } => {
                    panic!("seed {seed}: {inconclusive}")
                }
            }
            assert!(start.elapsed() < Duration::from_secs(20));
        }
        eprintln!(
            "corrupted reads: {} still linearizable, {} not",
            verdicts.0, verdicts.1
        );
    }

    #[test]
    fn many_unknown_writes_on_one_key() {
        // 16 clients hammering one key, a fifth of the writes lost: the search must stay
        // tractable.
        let ops = simulate(&SimConfig {
            seed: 99,
            clients: 16,
            keys: 1,
            ops: 1500,
            values: 0,
            p_lost: 0.2,
        });
        let unknown = ops.iter().filter(|o| o.outcome == Outcome::Unknown).count();
        assert!(unknown > 50, "{unknown}");
        let start = Instant::now();
        let verdict = check(&ops);
        eprintln!(
            "1500 ops on one key, {unknown} unknown: {verdict} in {:?}",
            start.elapsed()
        );
        assert!(verdict.is_linearizable(), "{verdict}");
    }

    // ---- brute-force reference -----------------------------------------------------------

    /// Applies `op` to the register; the output it would return.
    fn model_apply(register: &mut Option<String>, op: &KvOp) -> KvOutput {
        match op {
            KvOp::Put { value, .. } => {
                *register = Some(value.clone());
                KvOutput::Done
            }
            KvOp::Get { .. } => KvOutput::Value(register.clone()),
            KvOp::Cas { expect, value, .. } => {
                let matches = register == expect;
                if matches {
                    *register = Some(value.clone());
                }
                KvOutput::Swapped(matches)
            }
            KvOp::Delete { .. } => {
                *register = None;
                KvOutput::Done
            }
        }
    }

    /// Tries every order of every subset (single key), with no pruning at all.
    fn brute_force(ops: &[Operation]) -> bool {
        fn ret(op: &Operation) -> u64 {
            match op.outcome {
                Outcome::Ok(_) => op.complete.unwrap_or(u64::MAX),
                _ => u64::MAX,
            }
        }
        fn search(ops: &[&Operation], done: &mut Vec<bool>, register: &Option<String>) -> bool {
            let required_left = ops
                .iter()
                .zip(done.iter())
                .any(|(o, &d)| !d && matches!(o.outcome, Outcome::Ok(_)));
            if !required_left {
                return true;
            }
            for i in 0..ops.len() {
                if done[i] {
                    continue;
                }
                // Every other remaining op that returned before this one was invoked must
                // go first.
                let blocked =
                    (0..ops.len()).any(|j| j != i && !done[j] && ret(ops[j]) < ops[i].invoke);
                if blocked {
                    continue;
                }
                let mut next = register.clone();
                let output = model_apply(&mut next, &ops[i].op);
                if let Outcome::Ok(expected) = &ops[i].outcome {
                    if *expected != output {
                        continue;
                    }
                }
                done[i] = true;
                let found = search(ops, done, &next);
                done[i] = false;
                if found {
                    return true;
                }
            }
            false
        }
        let live: Vec<&Operation> = ops
            .iter()
            .filter(|o| o.outcome != Outcome::Failed)
            .collect();
        search(&live, &mut vec![false; live.len()], &None)
    }

    fn random_op(rng: &mut StdRng, values: &[&str]) -> KvOp {
        let value = |rng: &mut StdRng| values[rng.gen_range(0..values.len())].to_owned();
        match rng.gen_range(0..4) {
            0 => put("k", &value(rng)),
            1 => get("k"),
            2 => {
                let expect = rng.gen_bool(0.7).then(|| value(rng));
                cas("k", expect.as_deref(), &value(rng))
            }
            _ => delete("k"),
        }
    }

    /// Small random single-key histories: either arbitrary intervals, outputs and
    /// outcomes (mostly not linearizable), or simulated ones (linearizable), usually with
    /// one outcome corrupted (often not linearizable any more).
    fn small_history(rng: &mut StdRng) -> Vec<Operation> {
        let values = ["a", "b", "c"];
        let n: usize = rng.gen_range(1..=8);
        let p_unknown = rng.gen_range(0.0..0.6);
        let random_output = |rng: &mut StdRng, op: &KvOp| match op {
            KvOp::Put { .. } | KvOp::Delete { .. } => KvOutput::Done,
            KvOp::Get { .. } => KvOutput::Value(
                rng.gen_bool(0.8)
                    .then(|| values[rng.gen_range(0..3)].into()),
            ),
            KvOp::Cas { .. } => KvOutput::Swapped(rng.gen()),
        };
        if rng.gen_bool(0.5) {
            let mut ops = simulate(&SimConfig {
                seed: rng.gen(),
                clients: rng.gen_range(1..=5),
                keys: 1,
                ops: n,
                values: rng.gen_range(1..=3),
                p_lost: p_unknown,
            });
            if rng.gen_bool(0.7) {
                let victim = rng.gen_range(0..ops.len());
                ops[victim].outcome = match rng.gen_range(0..4) {
                    0 => Outcome::Unknown,
                    1 => Outcome::Failed,
                    _ => Outcome::Ok(random_output(rng, &ops[victim].op)),
                };
            }
            return ops;
        }
        (0..n)
            .map(|i| {
                let kv_op = random_op(rng, &values);
                let invoke = rng.gen_range(0..12);
                let outcome = match rng.gen_range(0.0..1.0) {
                    p if p < p_unknown => Outcome::Unknown,
                    p if p < p_unknown + 0.05 => Outcome::Failed,
                    _ => Outcome::Ok(random_output(rng, &kv_op)),
                };
                let complete = rng.gen_bool(0.95).then(|| invoke + rng.gen_range(0..8));
                Operation {
                    client: i as u64,
                    op: kv_op,
                    invoke,
                    complete,
                    outcome,
                }
            })
            .collect()
    }

    #[test]
    fn agrees_with_brute_force_on_small_histories() {
        let seed = base_seed();
        eprintln!("brute-force comparison: LINCHECK_SEED={seed}");
        let mut rng = StdRng::seed_from_u64(seed);
        let rounds = std::env::var("LINCHECK_ROUNDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3000);
        let (mut good, mut bad) = (0, 0);
        for round in 0..rounds {
            let ops = small_history(&mut rng);
            let expected = brute_force(&ops);
            let verdict = check(&ops);
            assert_eq!(
                verdict.is_linearizable(),
                expected,
                "seed {seed} round {round}: {verdict}\n{}",
                describe_key(&ops, "k")
            );
            assert!(
                !matches!(verdict, Verdict::Inconclusive { .. }),
                "seed {seed} round {round}: {verdict}\n{}",
                describe_key(&ops, "k")
            );
            if expected {
                good += 1;
            } else {
                bad += 1;
            }
        }
        eprintln!("{good} linearizable, {bad} not");
        assert!(good > rounds / 10 && bad > rounds / 10, "{good} / {bad}");
    }
}
