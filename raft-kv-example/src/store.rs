//! The replicated state machine: a map of keys to byte values, in the seed's style.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use raft_core::{async_trait, SnapshotSink, SnapshotSource, Store, StoreError, StoreResult};
use serde::{Deserialize, Serialize};

use crate::watch::{WatchHub, WatchLimits};

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
    /// Append `value` to the value of `key` (an absent key counts as empty); answers the new
    /// length in bytes (a `u64`). Not idempotent: applied twice, it appends twice, which is
    /// why retries go in a client session. The last variant, so that every earlier command's
    /// encoding is unchanged.
    Append { key: String, value: Vec<u8> },
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

/// The key-value map every replica holds, and the history of its recent changes that
/// watchers read ([`WatchHub`]).
///
/// Values are reference-counted, so a change in the history and the map's current value of
/// its key are one buffer: a history of recent writes costs memory only for values that have
/// since been replaced or deleted.
#[derive(Default)]
pub struct KvStore {
    map: BTreeMap<String, Bytes>,
    watches: Arc<WatchHub>,
}

impl KvStore {
    /// An empty store whose change history has these bounds.
    pub fn with_watch_limits(limits: WatchLimits) -> KvStore {
        KvStore {
            map: BTreeMap::new(),
            watches: Arc::new(WatchHub::new(limits)),
        }
    }

    /// The history of this store's changes, for the watch route.
    pub fn watches(&self) -> Arc<WatchHub> {
        self.watches.clone()
    }

    /// Applies one command; with its log index, records what it changed for watchers.
    fn execute(&mut self, index: Option<u64>, message: &[u8]) -> StoreResult<Vec<u8>> {
        let command = match decode(message) {
            Ok(command) => command,
            Err(e) => {
                if let Some(index) = index {
                    self.watches.record(index, None);
                }
                return Err(e);
            }
        };
        // A recorded change shares its value's buffer with the map.
        let keep = index.is_some() && self.watches.keeps_changes();
        let (answer, change) = match command {
            Command::Put { key, value } => {
                let value = Bytes::from(value);
                let change = keep.then(|| (key.clone(), Some(value.clone())));
                self.map.insert(key, value);
                (Vec::new(), change)
            }
            Command::Delete { key } => {
                let existed = self.map.remove(&key).is_some();
                let change = (existed && keep).then_some((key, None));
                (encode(&existed)?, change)
            }
            Command::Cas { key, expect, value } => {
                let current = self.map.get(&key);
                let swapped = current.map(Bytes::as_ref) == expect.as_deref();
                let previous = current.map(|v| v.to_vec());
                let mut change = None;
                if swapped {
                    let value = Bytes::from(value);
                    change = keep.then(|| (key.clone(), Some(value.clone())));
                    self.map.insert(key, value);
                }
                (encode(&CasOutcome { swapped, previous })?, change)
            }
            Command::Append { key, value } => {
                let current = self.map.entry(key.clone()).or_default();
                let mut grown = match std::mem::take(current).try_into_mut() {
                    // Not shared with the history: grown in place, amortized.
                    Ok(unshared) => unshared,
                    // The history holds the old value: the new one is a new buffer.
                    Err(shared) => {
                        let mut copy = BytesMut::with_capacity(shared.len() + value.len());
                        copy.extend_from_slice(&shared);
                        copy
                    }
                };
                grown.extend_from_slice(&value);
                *current = grown.freeze();
                let length = current.len() as u64;
                let change = keep.then(|| (key, Some(current.clone())));
                (encode(&length)?, change)
            }
        };
        if let Some(index) = index {
            self.watches.record(index, change);
        }
        Ok(answer)
    }
}

/// Watchers of a stopped node's store are ended.
impl Drop for KvStore {
    fn drop(&mut self) {
        self.watches.close();
    }
}

#[async_trait]
impl Store for KvStore {
    /// Applies a command without recording it for watchers (raft-core calls
    /// [`Store::apply_at`]).
    async fn apply(&mut self, message: &[u8]) -> StoreResult<Vec<u8>> {
        self.execute(None, message)
    }

    async fn apply_at(&mut self, index: u64, message: &[u8]) -> StoreResult<Vec<u8>> {
        self.execute(Some(index), message)
    }

    async fn restore_from_at(
        &mut self,
        index: u64,
        source: &mut SnapshotSource,
    ) -> StoreResult<()> {
        self.restore_from(source).await?;
        self.watches.restart_at(index);
        Ok(())
    }

    async fn query(&self, query: &[u8]) -> StoreResult<Vec<u8>> {
        match decode(query)? {
            // A byte slice has the encoding of the `Option<Vec<u8>>` clients decode.
            Query::Get { key } => encode(&self.map.get(&key).map(Bytes::as_ref)),
        }
    }

    /// Bincode of the map as a `BTreeMap<String, Vec<u8>>`: its length, then each key and
    /// value.
    async fn snapshot(&self) -> StoreResult<Vec<u8>> {
        let mut whole = Vec::new();
        put_varint(&mut whole, self.map.len() as u64);
        for (key, value) in &self.map {
            put_entry(&mut whole, key, value);
        }
        Ok(whole)
    }

    async fn restore(&mut self, snapshot: &[u8]) -> StoreResult<()> {
        let map: BTreeMap<String, Vec<u8>> = decode(snapshot)?;
        self.map = map.into_iter().map(|(k, v)| (k, Bytes::from(v))).collect();
        Ok(())
    }

    /// Writes exactly the bytes of [`Store::snapshot`], one entry at a time, so no serialized
    /// copy of the map is held.
    async fn snapshot_to(&self, sink: &mut SnapshotSink) -> StoreResult<()> {
        let mut entry = Vec::new();
        put_varint(&mut entry, self.map.len() as u64);
        sink.write(&entry).await?;
        for (key, value) in &self.map {
            entry.clear();
            put_entry(&mut entry, key, value);
            sink.write(&entry).await?;
        }
        Ok(())
    }

    /// Reads what [`Store::snapshot_to`] (or [`Store::snapshot`]) wrote, an entry at a time.
    async fn restore_from(&mut self, source: &mut SnapshotSource) -> StoreResult<()> {
        let mut map = BTreeMap::new();
        let count = read_varint(source).await?;
        for _ in 0..count {
            let key = String::from_utf8(read_bytes(source).await?)?;
            let value = Bytes::from(read_bytes(source).await?);
            map.insert(key, value);
        }
        if source.remaining() != 0 {
            return Err(StoreError::msg(format!(
                "{} bytes follow the snapshot's {count} entries",
                source.remaining()
            )));
        }
        self.map = map;
        Ok(())
    }
}

/// Appends one key and value of a snapshot, each length-prefixed.
fn put_entry(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    put_varint(out, key.len() as u64);
    out.extend_from_slice(key.as_bytes());
    put_varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

/// Appends `n` as bincode's standard varint: one byte below 251, else a marker byte and the
/// little-endian u16, u32 or u64.
fn put_varint(out: &mut Vec<u8>, n: u64) {
    if n < 251 {
        out.push(n as u8);
    } else if let Ok(n) = u16::try_from(n) {
        out.push(251);
        out.extend_from_slice(&n.to_le_bytes());
    } else if let Ok(n) = u32::try_from(n) {
        out.push(252);
        out.extend_from_slice(&n.to_le_bytes());
    } else {
        out.push(253);
        out.extend_from_slice(&n.to_le_bytes());
    }
}

/// Reads what [`put_varint`] wrote.
async fn read_varint(source: &mut SnapshotSource) -> StoreResult<u64> {
    let mut marker = [0u8; 1];
    source.read_exact(&mut marker).await?;
    let width = match marker[0] {
        n @ 0..=250 => return Ok(u64::from(n)),
        251 => 2,
        252 => 4,
        253 => 8,
        other => return Err(StoreError::msg(format!("bad length marker {other}"))),
    };
    let mut bytes = [0u8; 8];
    source.read_exact(&mut bytes[..width]).await?;
    Ok(u64::from_le_bytes(bytes))
}

/// Reads a length-prefixed byte string, refusing a length past the snapshot's end.
async fn read_bytes(source: &mut SnapshotSource) -> StoreResult<Vec<u8>> {
    let len = read_varint(source).await?;
    if len > source.remaining() {
        return Err(StoreError::msg(format!(
            "a {len}-byte string in a snapshot with {} bytes left",
            source.remaining()
        )));
    }
    let mut bytes = vec![0u8; len as usize];
    source.read_exact(&mut bytes).await?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_streamed_snapshot_is_the_whole_one_and_restores_either_way() -> StoreResult<()> {
        let mut store = KvStore::default();
        // Lengths on both sides of each varint width.
        for (i, len) in [0usize, 1, 250, 251, 65_535, 65_536, 300_000]
            .iter()
            .enumerate()
        {
            store.map.insert(
                format!("key-{i}-{}", "k".repeat(i * 60)),
                Bytes::from(vec![i as u8; *len]),
            );
        }
        let whole = store.snapshot().await?;
        // The format is bincode's of a map of byte vectors, so snapshots written by a store
        // that held `Vec<u8>` values restore, and the reverse.
        let as_vectors: BTreeMap<&String, Vec<u8>> =
            store.map.iter().map(|(k, v)| (k, v.to_vec())).collect();
        assert!(whole == encode(&as_vectors)?, "bincode of the map");
        let mut sink = SnapshotSink::memory();
        store.snapshot_to(&mut sink).await?;
        let streamed = sink.into_memory()?;
        assert!(whole == streamed, "byte for byte the same");
        let mut copy = KvStore::default();
        copy.restore_from(&mut SnapshotSource::from_bytes(whole.clone()))
            .await?;
        assert_eq!(copy.map, store.map);
        let mut truncated = KvStore::default();
        let cut = SnapshotSource::from_bytes(whole[..whole.len() - 1].to_vec());
        assert!(truncated.restore_from(&mut { cut }).await.is_err());
        let mut longer = whole.clone();
        longer.push(0);
        assert!(KvStore::default()
            .restore_from(&mut SnapshotSource::from_bytes(longer))
            .await
            .is_err());
        let mut lying = vec![1u8, 253];
        lying.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(KvStore::default()
            .restore_from(&mut SnapshotSource::from_bytes(lying))
            .await
            .is_err());
        Ok(())
    }

    /// What the store records for watchers: puts, deletes of present keys and swaps, each
    /// with its index; not failed swaps, deletes of absent keys or bad commands.
    #[tokio::test]
    async fn applied_changes_are_recorded_with_their_index() -> StoreResult<()> {
        let mut store = KvStore::default();
        let watches = store.watches();
        let put = |key: &str, value: &str| {
            encode(&Command::Put {
                key: key.into(),
                value: value.as_bytes().to_vec(),
            })
        };
        let cas = |expect: Option<&str>, value: &str| {
            encode(&Command::Cas {
                key: "a".into(),
                expect: expect.map(|e| e.as_bytes().to_vec()),
                value: value.as_bytes().to_vec(),
            })
        };
        let delete = |key: &str| encode(&Command::Delete { key: key.into() });
        store.apply_at(2, &put("a", "1")?).await?;
        store.apply_at(3, &cas(Some("wrong"), "x")?).await?;
        store.apply_at(4, &cas(Some("1"), "2")?).await?;
        store.apply_at(6, &delete("absent")?).await?;
        assert!(store.apply_at(7, b"garbage").await.is_err());
        store.apply_at(8, &delete("a")?).await?;
        // Without an index (not how raft-core applies), nothing is recorded.
        store.apply(&put("b", "1")?).await?;
        let batch = watches.read(1, "").map_err(StoreError::msg)?;
        let text = String::from_utf8(batch.lines)?;
        assert_eq!(
            text,
            concat!(
                r#"{"index":2,"key":"a","value":"1"}"#,
                "\n",
                r#"{"index":4,"key":"a","value":"2"}"#,
                "\n",
                r#"{"index":8,"key":"a","deleted":true}"#,
                "\n"
            )
        );
        assert_eq!(batch.next, 9);
        // A restored snapshot restarts the history at its index.
        let snapshot = store.snapshot().await?;
        store
            .restore_from_at(20, &mut SnapshotSource::from_bytes(snapshot))
            .await?;
        assert!(watches.check_from(20).is_err());
        assert!(watches.check_from(21).is_ok());
        drop(store);
        assert!(
            watches.check_from(21).is_err(),
            "a dropped store ends its watches"
        );
        Ok(())
    }

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

    #[tokio::test]
    async fn append_extends_the_value_and_answers_its_length() -> StoreResult<()> {
        let mut store = KvStore::default();
        let append = |value: &str| {
            encode(&Command::Append {
                key: "log".into(),
                value: value.as_bytes().to_vec(),
            })
        };
        // An absent key counts as empty.
        let len: u64 = decode(&store.apply(&append("ab")?).await?)?;
        assert_eq!(len, 2);
        let len: u64 = decode(&store.apply(&append("cde")?).await?)?;
        assert_eq!(len, 5);
        // Not idempotent: the same command twice appends twice.
        let len: u64 = decode(&store.apply(&append("cde")?).await?)?;
        assert_eq!(len, 8);
        assert_eq!(
            store.map.get("log").map(Bytes::as_ref),
            Some(&b"abcdecde"[..])
        );
        // Appending to a value set by a put.
        store
            .apply(&encode(&Command::Put {
                key: "log".into(),
                value: b"x".to_vec(),
            })?)
            .await?;
        let len: u64 = decode(&store.apply(&append("y")?).await?)?;
        assert_eq!(
            (len, store.map.get("log").map(|v| v.to_vec())),
            (2, Some(b"xy".to_vec()))
        );
        Ok(())
    }

    /// A recorded change and the map's value are one buffer until the key is written again;
    /// an append never alters a value the history still holds.
    #[tokio::test]
    async fn the_history_shares_values_with_the_map() -> StoreResult<()> {
        let mut store = KvStore::default();
        let watches = store.watches();
        let write = |append: bool, value: &[u8]| {
            let (key, value) = ("k".to_string(), value.to_vec());
            encode(&if append {
                Command::Append { key, value }
            } else {
                Command::Put { key, value }
            })
        };
        let current = |store: &KvStore| store.map.get("k").map(|v| v.as_ptr());
        let recorded = |at: usize| {
            let changes = watches.changes();
            changes[at].value.as_ref().map(|v| (v.as_ptr(), v.to_vec()))
        };
        store.apply_at(1, &write(false, &[1; 1000])?).await?;
        assert_eq!(
            recorded(0).map(|(at, _)| at),
            current(&store),
            "a put is stored once"
        );
        store.apply_at(2, &write(true, b"tail")?).await?;
        let mut grown = vec![1; 1000];
        grown.extend_from_slice(b"tail");
        assert_eq!(recorded(0).map(|(_, v)| v), Some(vec![1; 1000]));
        assert_eq!(recorded(1).map(|(_, v)| v), Some(grown.clone()));
        assert_eq!(recorded(1).map(|(at, _)| at), current(&store));
        // Without a history the value is grown in place.
        let mut unwatched = KvStore::with_watch_limits(WatchLimits {
            max_bytes: 0,
            ..WatchLimits::default()
        });
        unwatched.apply_at(1, &write(true, b"ab")?).await?;
        unwatched.apply_at(2, &write(true, b"cd")?).await?;
        assert_eq!(
            unwatched.map.get("k").map(|v| v.to_vec()),
            Some(b"abcd".to_vec())
        );
        Ok(())
    }

    #[test]
    fn older_commands_keep_their_encoding() -> StoreResult<()> {
        // bincode numbers enum variants in order: Append came last, so Put, Delete and Cas
        // written before it still decode as themselves.
        let put = encode(&Command::Put {
            key: "k".into(),
            value: b"v".to_vec(),
        })?;
        assert_eq!(put, [0, 1, b'k', 1, b'v']);
        let delete = encode(&Command::Delete { key: "k".into() })?;
        assert_eq!(delete, [1, 1, b'k']);
        let cas = encode(&Command::Cas {
            key: "k".into(),
            expect: None,
            value: b"v".to_vec(),
        })?;
        assert_eq!(cas, [2, 1, b'k', 0, 1, b'v']);
        let append = encode(&Command::Append {
            key: "k".into(),
            value: b"v".to_vec(),
        })?;
        assert_eq!(append[0], 3);
        Ok(())
    }
}
