//! The append workload's history and checker.
//!
//! Clients append unique tokens (`c<client>.<n>;`) to a few keys that nothing else writes.
//! An append is not idempotent: sent twice, it applies twice, so a client retries one whose
//! outcome is unknown only in its client session (the `Raft-Session` headers, same number),
//! where the cluster answers a retry of an applied command with its first answer. From the
//! keys' final values the checker verifies that every acknowledged append appears exactly
//! once, at the place its answer (the new length) says; that no token appears twice; that
//! no refused append (outcome "not applied") appears; and that nothing appears that no client
//! sent.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What became of one append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Applied; the value's length right after it.
    Ok(u64),
    /// Certainly not applied.
    Failed,
    /// Maybe applied (at most once).
    Unknown,
}

/// One append, as the client saw it.
#[derive(Debug, Clone)]
pub struct AppendRecord {
    /// The client.
    pub client: u64,
    /// The key appended to.
    pub key: String,
    /// The token appended (followed by `;` in the value).
    pub token: String,
    /// What became of it.
    pub outcome: AppendOutcome,
    /// The node its first attempt went to.
    pub node: u64,
    /// Seconds since the start of the run, at invocation and completion.
    pub t_invoke: f64,
    /// See `t_invoke`.
    pub t_complete: f64,
    /// How many requests it took.
    pub attempts: u32,
    /// Why it did not succeed.
    pub error: Option<String>,
}

/// The separator after every token.
pub const SEPARATOR: char = ';';

/// The tokens of a final value, in order; `Err` when the value does not end with a
/// separator (a torn append).
fn tokens(value: &str) -> Result<Vec<&str>, String> {
    if !value.is_empty() && !value.ends_with(SEPARATOR) {
        return Err(format!(
            "the value does not end with {SEPARATOR:?}: ...{:?}",
            tail(value)
        ));
    }
    Ok(value.split(SEPARATOR).filter(|t| !t.is_empty()).collect())
}

fn tail(value: &str) -> &str {
    let start = value.char_indices().rev().nth(40).map_or(0, |(i, _)| i);
    &value[start..]
}

/// Checks `records` against the final value of every key (`None`: the key is absent;
/// a missing entry: it could not be read). `Ok` carries a one-line summary, `Err` every
/// problem found.
pub fn check(
    records: &[AppendRecord],
    finals: &BTreeMap<String, Option<String>>,
) -> Result<String, Vec<String>> {
    let mut problems = Vec::new();
    let keys: BTreeSet<&String> = records.iter().map(|r| &r.key).collect();
    let mut sent: HashMap<(&str, &str), &AppendRecord> = HashMap::new();
    for r in records {
        if sent.insert((&r.key, &r.token), r).is_some() {
            problems.push(format!(
                "the suite sent token {} to {} twice (a bug of the suite)",
                r.token, r.key
            ));
        }
    }
    // (key, token) -> how often it appears.
    let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
    for key in &keys {
        let value = match finals.get(*key) {
            None => {
                problems.push(format!("key {key}: its final value could not be read"));
                continue;
            }
            Some(None) => "",
            Some(Some(v)) => v.as_str(),
        };
        let found = match tokens(value) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("key {key}: {e}"));
                continue;
            }
        };
        for token in found {
            *seen.entry((key.as_str(), token)).or_default() += 1;
        }
    }
    let mut duplicates: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
    duplicates.sort();
    for ((key, token), n) in duplicates {
        let outcome = sent
            .get(&(*key, *token))
            .map_or("never sent".to_string(), |r| format!("{:?}", r.outcome));
        problems.push(format!(
            "key {key}: token {token} appears {n} times (its append: {outcome})"
        ));
    }
    let mut strangers: Vec<_> = seen.keys().filter(|k| !sent.contains_key(*k)).collect();
    strangers.sort();
    for (key, token) in strangers {
        problems.push(format!("key {key}: token {token} was never sent to it"));
    }
    let (mut ok, mut failed, mut unknown, mut unknown_applied) = (0, 0, 0, 0);
    for r in records {
        let count = seen
            .get(&(r.key.as_str(), r.token.as_str()))
            .copied()
            .unwrap_or(0);
        match r.outcome {
            AppendOutcome::Ok(length) => {
                ok += 1;
                if count == 0 {
                    problems.push(format!(
                        "key {}: acknowledged append {} (client {}, at {:.2}s) is lost",
                        r.key, r.token, r.client, r.t_complete
                    ));
                    continue;
                }
                // Appends only grow a value: the first `length` bytes are the value the
                // append produced, so they end with its token.
                let value = finals
                    .get(&r.key)
                    .and_then(|v| v.as_deref())
                    .unwrap_or_default();
                let expected_end = format!("{}{SEPARATOR}", r.token);
                let prefix = usize::try_from(length).ok().and_then(|l| value.get(..l));
                if !prefix.is_some_and(|p| p.ends_with(&expected_end)) {
                    problems.push(format!(
                        "key {}: append {} answered length {length}, but the final value's \
                         first {length} bytes do not end with it",
                        r.key, r.token
                    ));
                }
            }
            AppendOutcome::Failed => {
                failed += 1;
                if count > 0 {
                    problems.push(format!(
                        "key {}: append {} was refused as not applied ({}), yet it appears",
                        r.key,
                        r.token,
                        r.error.as_deref().unwrap_or("")
                    ));
                }
            }
            AppendOutcome::Unknown => {
                unknown += 1;
                unknown_applied += usize::from(count > 0);
            }
        }
    }
    if problems.is_empty() {
        Ok(format!(
            "{} appends on {} keys: {ok} acknowledged, each exactly once; {failed} refused, \
             none applied; {unknown} unknown, {unknown_applied} of them applied once",
            records.len(),
            keys.len()
        ))
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, token: &str, outcome: AppendOutcome) -> AppendRecord {
        AppendRecord {
            client: 1,
            key: key.into(),
            token: token.into(),
            outcome,
            node: 1,
            t_invoke: 0.0,
            t_complete: 0.0,
            attempts: 1,
            error: None,
        }
    }

    fn finals(pairs: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
            .collect()
    }

    #[test]
    fn a_clean_history_passes() {
        let records = [
            record("a", "c1.1", AppendOutcome::Ok(5)),
            record("a", "c1.2", AppendOutcome::Unknown),
            record("a", "c1.3", AppendOutcome::Ok(15)),
            record("a", "c1.4", AppendOutcome::Unknown),
            record("a", "c1.5", AppendOutcome::Failed),
            record("b", "c2.1", AppendOutcome::Unknown),
        ];
        let summary = check(
            &records,
            &finals(&[("a", Some("c1.1;c1.2;c1.3;")), ("b", None)]),
        );
        assert!(
            matches!(&summary, Ok(s) if s.contains("1 of them applied once")),
            "{summary:?}"
        );
    }

    #[test]
    fn duplicates_losses_strangers_and_misplaced_appends_fail() {
        let problems = |records: &[AppendRecord], value: &str| {
            check(records, &finals(&[("a", Some(value))]))
                .err()
                .unwrap_or_default()
        };
        let ok = |token: &str, length: u64| record("a", token, AppendOutcome::Ok(length));
        // Applied twice.
        let p = problems(&[ok("c1.1", 5)], "c1.1;c1.1;");
        assert!(p.iter().any(|p| p.contains("appears 2 times")), "{p:?}");
        // An unknown one applied twice.
        let p = problems(&[record("a", "c1.1", AppendOutcome::Unknown)], "c1.1;c1.1;");
        assert!(p.iter().any(|p| p.contains("appears 2 times")), "{p:?}");
        // Lost.
        let p = problems(&[ok("c1.1", 5), ok("c1.2", 10)], "c1.1;");
        assert!(
            p.iter().any(|p| p.contains("c1.2") && p.contains("lost")),
            "{p:?}"
        );
        // Refused, yet applied.
        let p = problems(&[record("a", "c1.1", AppendOutcome::Failed)], "c1.1;");
        assert!(p.iter().any(|p| p.contains("refused")), "{p:?}");
        // Never sent.
        let p = problems(&[ok("c1.1", 5)], "c1.1;c9.9;");
        assert!(p.iter().any(|p| p.contains("never sent")), "{p:?}");
        // Not where its answer put it.
        let p = problems(&[ok("c1.1", 10), ok("c1.2", 5)], "c1.1;c1.2;");
        assert_eq!(p.len(), 2, "{p:?}");
        // Torn.
        let p = problems(&[ok("c1.1", 5)], "c1.1;c1");
        assert!(p.iter().any(|p| p.contains("does not end")), "{p:?}");
        // Unreadable.
        let unread = check(&[ok("c1.1", 5)], &BTreeMap::new())
            .err()
            .unwrap_or_default();
        assert!(
            unread.iter().any(|p| p.contains("could not be read")),
            "{unread:?}"
        );
    }
}
