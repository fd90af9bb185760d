//! The replicated state machine: a map of keys to byte values, in the seed's style.

use std::collections::BTreeMap;

use raft_core::{async_trait, Store, StoreResult};
use serde::{Deserialize, Serialize};

/// A write, proposed through raft.
#[derive(Debug, Serialize, Deserialize)]
pub enum Command {
    /// Set `key` to `value`.
    Put { key: String, value: Vec<u8> },
    /// Remove `key`.
    Delete { key: String },
    /// Set `key` to `value` if its current value is `expect` (`None`: the key is absent).
    Cas {
        key: String,
        expect: Option<Vec<u8>>,
        value: Vec<u8>,
    },
}

/// A read.
#[derive(Debug, Serialize, Deserialize)]
pub enum Query {
    /// The value of `key`, if any.
    Get { key: String },
}

/// What a compare-and-swap did.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CasOutcome {
    /// True when the value was replaced.
    pub swapped: bool,
    /// The value before the operation.
    pub previous: Option<Vec<u8>>,
}

/// Encodes any command, query or answer with bincode.
pub fn encode<T: Serialize>(value: &T) -> StoreResult<Vec<u8>> {
    Ok(bincode::serde::encode_to_vec(
        value,
        bincode::config::standard(),
    )?)
}

/// Decodes what [`encode`] produced.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> StoreResult<T> {
    Ok(bincode::serde::decode_from_slice(bytes, bincode::config::standard())?.0)
}

/// The key-value map every replica holds.
#[derive(Default)]
pub struct KvStore {
    map: BTreeMap<String, Vec<u8>>,
}

#[async_trait]
impl Store for KvStore {
    async fn apply(&mut self, message: &[u8]) -> StoreResult<Vec<u8>> {
        match decode(message)? {
            Command::Put { key, value } => {
                self.map.insert(key, value);
                Ok(Vec::new())
            }
            Command::Delete { key } => encode(&self.map.remove(&key).is_some()),
            Command::Cas { key, expect, value } => {
                let previous = self.map.get(&key).cloned();
                let swapped = previous == expect;
                if swapped {
                    self.map.insert(key, value);
                }
                encode(&CasOutcome { swapped, previous })
            }
        }
    }

    async fn query(&self, query: &[u8]) -> StoreResult<Vec<u8>> {
        match decode(query)? {
            Query::Get { key } => encode(&self.map.get(&key)),
        }
    }

    async fn snapshot(&self) -> StoreResult<Vec<u8>> {
        encode(&self.map)
    }

    async fn restore(&mut self, snapshot: &[u8]) -> StoreResult<()> {
        self.map = decode(snapshot)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commands_queries_and_snapshots() -> StoreResult<()> {
        let mut store = KvStore::default();
        let put = encode(&Command::Put {
            key: "a".into(),
            value: b"1".to_vec(),
        })?;
        store.apply(&put).await?;
        let cas = Command::Cas {
            key: "a".into(),
            expect: None,
            value: b"2".to_vec(),
        };
        let out: CasOutcome = decode(&store.apply(&encode(&cas)?).await?)?;
        assert_eq!(
            out,
            CasOutcome {
                swapped: false,
                previous: Some(b"1".to_vec())
            }
        );
        let get = encode(&Query::Get { key: "a".into() })?;
        let value: Option<Vec<u8>> = decode(&store.query(&get).await?)?;
        assert_eq!(value, Some(b"1".to_vec()));
        let mut copy = KvStore::default();
        copy.restore(&store.snapshot().await?).await?;
        assert_eq!(copy.map, store.map);
        let deleted: bool = decode(
            &store
                .apply(&encode(&Command::Delete { key: "a".into() })?)
                .await?,
        )?;
        assert!(deleted);
        assert!(
            store.apply(b"garbage").await.is_err(),
            "bad input is an error, not a panic"
        );
        Ok(())
    }
}
