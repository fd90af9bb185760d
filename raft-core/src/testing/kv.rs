//! A replicated key-value register store for tests, and a client that records every
//! operation into a [`History`] for the linearizability checker.

use std::collections::BTreeMap;

use async_trait::async_trait;
use prost::Message as _;

use super::linearizability::{History, KvOp, KvOutput, Outcome};
use crate::error::{Error, Fatal, StoreError};
use crate::mailbox::Mailbox;
use crate::store::{Store, StoreResult};

#[derive(Clone, PartialEq, prost::Message)]
struct Command {
    #[prost(uint32, tag = "1")]
    op: u32,
    #[prost(string, tag = "2")]
    key: String,
    #[prost(string, optional, tag = "3")]
    expect: Option<String>,
    #[prost(string, tag = "4")]
    value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Pair {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Dump {
    #[prost(message, repeated, tag = "1")]
    pairs: Vec<Pair>,
    #[prost(uint64, tag = "2")]
    applied: u64,
}

const PUT: u32 = 0;
const DELETE: u32 = 1;
const CAS: u32 = 2;
const GET: u32 = 3;
const PAD: u32 = 4;
const APPEND: u32 = 5;

/// Encodes a KV operation as a proposal or query.
pub fn encode_op(op: &KvOp) -> Vec<u8> {
    let command = match op.clone() {
        KvOp::Put { key, value } => Command {
            op: PUT,
            key,
            expect: None,
            value,
        },
        KvOp::Delete { key } => Command {
            op: DELETE,
            key,
            expect: None,
            value: String::new(),
        },
        KvOp::Cas { key, expect, value } => Command {
            op: CAS,
            key,
            expect,
            value,
        },
        KvOp::Get { key } => Command {
            op: GET,
            key,
            expect: None,
            value: String::new(),
        },
    };
    command.encode_to_vec()
}

/// A command that appends `token` and a space to the value of `key` (an absent key counts
/// as empty) and answers the value after it: not idempotent, so applying it twice shows.
/// Read the value back with a [`KvOp::Get`] query.
pub fn encode_append(key: &str, token: &str) -> Vec<u8> {
    Command {
        op: APPEND,
        key: key.into(),
        expect: None,
        value: token.into(),
    }
    .encode_to_vec()
}

/// A command that changes nothing but carries `size` bytes: fills the log in tests.
pub fn padding(size: usize) -> Vec<u8> {
    Command {
        op: PAD,
        key: String::new(),
        expect: None,
        value: "x".repeat(size),
    }
    .encode_to_vec()
}

fn encode_value(value: Option<&String>) -> Vec<u8> {
    match value {
        None => vec![0],
        Some(v) => {
            let mut out = Vec::with_capacity(v.len() + 1);
            out.push(1);
            out.extend_from_slice(v.as_bytes());
            out
        }
    }
}

/// Decodes a [`KvStore`] query result.
pub fn decode_value(bytes: &[u8]) -> Result<Option<String>, String> {
    match bytes.split_first() {
        Some((0, [])) => Ok(None),
        Some((1, rest)) => String::from_utf8(rest.to_vec())
            .map(Some)
            .map_err(|e| e.to_string()),
        _ => Err("malformed value".into()),
    }
}

/// A map of registers: put, get, compare-and-swap, delete. Counts applied commands so tests
/// can check exactly-once application.
#[derive(Debug, Default, Clone)]
pub struct KvStore {
    map: BTreeMap<String, String>,
    applied: u64,
}

impl KvStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Store for KvStore {
    async fn apply(&mut self, message: &[u8]) -> StoreResult<Vec<u8>> {
        let command = Command::decode(message)?;
        self.applied += 1;
        Ok(match command.op {
            PUT => {
                self.map.insert(command.key, command.value);
                Vec::new()
            }
            DELETE => {
                self.map.remove(&command.key);
                Vec::new()
            }
            CAS => {
                if self.map.get(&command.key) == command.expect.as_ref() {
                    self.map.insert(command.key, command.value);
                    vec![1]
                } else {
                    vec![0]
                }
            }
            PAD => Vec::new(),
            APPEND => {
                let value = self.map.entry(command.key).or_default();
                value.push_str(&command.value);
                value.push(' ');
                value.clone().into_bytes()
            }
            other => return Err(StoreError::msg(format!("unknown command {other}"))),
        })
    }

    async fn query(&self, query: &[u8]) -> StoreResult<Vec<u8>> {
        let command = Command::decode(query)?;
        if command.op != GET {
            return Err(StoreError::msg("queries must be gets"));
        }
        Ok(encode_value(self.map.get(&command.key)))
    }

    async fn snapshot(&self) -> StoreResult<Vec<u8>> {
        let pairs = self
            .map
            .iter()
            .map(|(k, v)| Pair {
                key: k.clone(),
                value: v.clone(),
            })
            .collect();
        Ok(Dump {
            pairs,
            applied: self.applied,
        }
        .encode_to_vec())
    }

    async fn restore(&mut self, snapshot: &[u8]) -> StoreResult<()> {
        let dump = Dump::decode(snapshot)?;
        self.map = dump.pairs.into_iter().map(|p| (p.key, p.value)).collect();
        self.applied = dump.applied;
        Ok(())
    }
}

/// A client that runs KV operations through a [`Mailbox`] and records each one, with its
/// outcome, into a shared [`History`].
#[derive(Clone, Debug)]
pub struct KvClient {
    /// The id recorded with each operation.
    pub client: u64,
    history: History,
}

impl KvClient {
    /// A client recording into `history`.
    pub fn new(client: u64, history: History) -> Self {
        KvClient { client, history }
    }

    /// Runs `op` through `mailbox` and records it. Returns the output when it succeeded.
    pub async fn run(&self, mailbox: &Mailbox, op: KvOp) -> Result<KvOutput, Error> {
        let id = self.history.invoke(self.client, op.clone());
        let bytes = encode_op(&op);
        let is_read = matches!(op, KvOp::Get { .. });
        let result = if is_read {
            mailbox.query(bytes).await
        } else {
            mailbox.send_proposal(bytes).await
        };
        let (output, outcome) = decode_answer(&op, result);
        self.history.complete(id, outcome);
        output
    }
}

/// Decodes a node's answer to `op`, and what the history records of it: a failed read has
/// no effect and can be left out whatever happened; a failed write may have applied unless
/// its error says it did not.
pub fn decode_answer(
    op: &KvOp,
    result: Result<Vec<u8>, Error>,
) -> (Result<KvOutput, Error>, Outcome) {
    let is_read = matches!(op, KvOp::Get { .. });
    let output = result.and_then(|answer| match op {
        KvOp::Get { .. } => decode_value(&answer)
            .map(KvOutput::Value)
            .map_err(|e| Error::Store(StoreError::msg(e))),
        KvOp::Cas { .. } => Ok(KvOutput::Swapped(answer == [1])),
        _ => Ok(KvOutput::Done),
    });
    let outcome = match &output {
        Ok(out) => Outcome::Ok(out.clone()),
        Err(_) if is_read => Outcome::Failed,
        Err(e) if may_have_applied(e) => Outcome::Unknown,
        Err(_) => Outcome::Failed,
    };
    (output, outcome)
}

/// True when a failed write may nevertheless have taken effect: the checker must then allow
/// both. A node that failed while the write was pending counts too.
pub fn may_have_applied(e: &Error) -> bool {
    matches!(
        e,
        Error::MaybeApplied(_) | Error::Fatal(Fatal::Storage(_) | Fatal::Failed(_))
    )
}
