//! The streams a [`crate::Store`] writes its snapshot into and restores it from, so a large
//! state never has to be held whole as one buffer.

use std::io::{Read, Write};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use raft::prelude::SnapshotMetadata;

use crate::error::{StorageError, StoreError};
use crate::log_storage::LogStorage;
use crate::snapshot_payload::{
    InlinePayloadWriter, PayloadReader, SnapshotPayload, SnapshotPayloadWriter,
};
use crate::store::StoreResult;

/// Bytes handed to the log storage's writer (or read from its reader) at a time.
const CHUNK: usize = 1 << 20;
/// Chunks queued between the store and the blocking thread that writes or reads them: with
/// [`CHUNK`], what a stream holds in memory at most, besides the chunk in the caller's hands.
const CHUNKS_QUEUED: usize = 2;
/// Emptied chunk buffers handed back for reuse. A stream allocates a handful of buffers
/// rather than one per chunk: a buffer freed on another thread than the one that allocated
/// it is not promptly reusable under every allocator (mimalloc defers such frees), and a
/// fresh buffer per chunk grew a snapshot's memory with the state's size.
const SPARE_CHUNKS: usize = CHUNKS_QUEUED + 1;

/// Buffers passed back from the side that consumed them to the side that fills them.
struct SpareChunks {
    tx: mpsc::Sender<Vec<u8>>,
    rx: mpsc::Receiver<Vec<u8>>,
}

impl SpareChunks {
    fn new() -> Self {
        let (tx, rx) = mpsc::channel(SPARE_CHUNKS);
        SpareChunks { tx, rx }
    }

    /// An empty buffer of [`CHUNK`] bytes' capacity: a returned one if there is one.
    fn take(rx: &mut mpsc::Receiver<Vec<u8>>) -> Vec<u8> {
        rx.try_recv().unwrap_or_else(|_| Vec::with_capacity(CHUNK))
    }

    /// Hands `buf` back for reuse; dropped when enough are waiting already or it is not a
    /// chunk buffer.
    fn give(tx: &mpsc::Sender<Vec<u8>>, mut buf: Vec<u8>) {
        if buf.capacity() == CHUNK {
            buf.clear();
            let _ = tx.try_send(buf);
        }
    }
}

enum ToWriter {
    Bytes(Vec<u8>),
    /// Everything was written: finish the payload. A channel that closes without it abandons
    /// the payload.
    End,
}

enum SinkOut {
    /// Written in place: a log storage in memory, or the in-memory sink.
    Direct(Box<dyn SnapshotPayloadWriter>),
    /// Written by a blocking thread, a chunk at a time.
    Thread {
        tx: mpsc::Sender<ToWriter>,
        done: JoinHandle<Result<SnapshotPayload, StorageError>>,
        /// Buffers the thread wrote and handed back.
        spare: mpsc::Receiver<Vec<u8>>,
    },
}

/// Where [`crate::Store::snapshot_to`] writes the state.
///
/// Writes are buffered and handed to the log storage a chunk (1 MiB) at a time, on a blocking
/// thread; `write` waits while two chunks are queued, so a snapshot of any size holds a few
/// MiB of it in memory.
///
/// ```
/// # async fn demo() -> raft_core::StoreResult<()> {
/// use raft_core::SnapshotSink;
///
/// let mut sink = SnapshotSink::memory();
/// sink.write(b"key=value\n").await?;
/// assert_eq!(sink.into_memory()?, b"key=value\n");
/// # Ok(()) }
/// ```
pub struct SnapshotSink {
    out: SinkOut,
    buf: Vec<u8>,
    len: u64,
    crc: crc32fast::Hasher,
}

impl std::fmt::Debug for SnapshotSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotSink")
            .field("written", &self.len)
            .finish_non_exhaustive()
    }
}

impl SnapshotSink {
    /// A sink that keeps what is written in memory (see [`SnapshotSink::into_memory`]): for
    /// tests of a store, and for a [`crate::Store::snapshot`] written in terms of
    /// [`crate::Store::snapshot_to`].
    pub fn memory() -> Self {
        Self::direct(Box::new(InlinePayloadWriter::default()))
    }

    /// Everything written to a [`SnapshotSink::memory`] sink.
    pub fn into_memory(self) -> StoreResult<Vec<u8>> {
        let SinkOut::Direct(writer) = self.out else {
            return Err(StoreError::msg("not an in-memory snapshot sink"));
        };
        let payload = writer.finish()?;
        let len = payload.len();
        payload
            .into_inline()
            .ok_or_else(|| StoreError::msg(format!("a {len}-byte payload is not in memory")))
    }

    /// A sink into a new payload of `storage`: written in place for a log in memory,
    /// otherwise by a blocking thread a chunk at a time.
    pub(crate) fn for_storage(storage: &Arc<dyn LogStorage>) -> Result<Self, StorageError> {
        if storage.snapshot_payloads_in_place() {
            return Ok(Self::direct(storage.snapshot_payload_writer()?));
        }
        let storage = storage.clone();
        Ok(Self::on_thread(move || storage.snapshot_payload_writer()))
    }

    /// A sink that writes in place, on the caller's task.
    pub(crate) fn direct(writer: Box<dyn SnapshotPayloadWriter>) -> Self {
        SnapshotSink {
            out: SinkOut::Direct(writer),
            buf: Vec::new(),
            len: 0,
            crc: crc32fast::Hasher::new(),
        }
    }

    /// A sink that writes on a blocking thread, into the writer `open` returns there.
    pub(crate) fn on_thread(
        open: impl FnOnce() -> Result<Box<dyn SnapshotPayloadWriter>, StorageError> + Send + 'static,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<ToWriter>(CHUNKS_QUEUED);
        let SpareChunks {
            tx: spare_tx,
            rx: spare,
        } = SpareChunks::new();
        let done = tokio::task::spawn_blocking(move || {
            let mut writer = open()?;
            while let Some(item) = rx.blocking_recv() {
                match item {
                    ToWriter::Bytes(bytes) => {
                        writer
                            .write_all(&bytes)
                            .map_err(|e| StorageError::Io(format!("writing a snapshot: {e}")))?;
                        SpareChunks::give(&spare_tx, bytes);
                    }
                    ToWriter::End => return writer.finish(),
                }
            }
            Err(StorageError::Invalid("the snapshot was abandoned".into()))
        });
        SnapshotSink {
            out: SinkOut::Thread { tx, done, spare },
            buf: Vec::with_capacity(CHUNK),
            len: 0,
            crc: crc32fast::Hasher::new(),
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.len
    }

    /// Appends `bytes` to the snapshot.
    pub async fn write(&mut self, bytes: &[u8]) -> StoreResult<()> {
        self.crc.update(bytes);
        self.len += bytes.len() as u64;
        match &mut self.out {
            SinkOut::Direct(writer) => writer
                .write_all(bytes)
                .map_err(|e| StoreError::msg(format!("writing a snapshot: {e}"))),
            SinkOut::Thread { .. } => {
                // Chunks are filled to exactly CHUNK, so a buffer never outgrows its capacity.
                let mut rest = bytes;
                while !rest.is_empty() {
                    let take = rest.len().min(CHUNK - self.buf.len());
                    self.buf.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if self.buf.len() == CHUNK {
                        self.send_buffered().await?;
                    }
                }
                Ok(())
            }
        }
    }

    async fn send_buffered(&mut self) -> Result<(), StorageError> {
        let SinkOut::Thread { tx, done, spare } = &mut self.out else {
            return Ok(());
        };
        let bytes = std::mem::replace(&mut self.buf, SpareChunks::take(spare));
        if tx.send(ToWriter::Bytes(bytes)).await.is_err() {
            // The thread stopped early: its result says why.
            return Err(match done.await {
                Ok(Err(e)) => e,
                Ok(Ok(_)) => StorageError::Invalid("the snapshot writer stopped early".into()),
                Err(e) => StorageError::Io(format!("the snapshot writer failed: {e}")),
            });
        }
        Ok(())
    }

    /// Makes what was written durable and returns the payload, with its length and CRC-32.
    pub(crate) async fn finish(mut self) -> Result<SnapshotPayload, StorageError> {
        let (len, crc) = (self.len, self.crc.clone().finalize());
        if !self.buf.is_empty() {
            self.send_buffered().await?;
        }
        let mut payload = match self.out {
            SinkOut::Direct(writer) => writer.finish()?,
            SinkOut::Thread { tx, done, .. } => {
                let _ = tx.send(ToWriter::End).await;
                drop(tx);
                done.await
                    .map_err(|e| StorageError::Io(format!("the snapshot writer failed: {e}")))??
            }
        };
        payload.set_summary(len, crc);
        Ok(payload)
    }
}

enum SourceIn {
    /// Nothing more to fetch: all of it is in the buffer already.
    Done,
    /// Read in place, on the caller's task.
    Direct(std::io::Take<PayloadReader>),
    /// Chunks read by a blocking thread, and the way their buffers go back to it.
    Thread {
        rx: mpsc::Receiver<Result<Vec<u8>, String>>,
        spare: mpsc::Sender<Vec<u8>>,
    },
}

/// What [`crate::Store::restore_from`] reads the state from: the bytes
/// [`crate::Store::snapshot_to`] wrote, checked against the length and CRC-32 recorded when
/// they were written.
///
/// ```
/// # async fn demo() -> raft_core::StoreResult<()> {
/// use raft_core::SnapshotSource;
///
/// let mut source = SnapshotSource::from_bytes(b"key=value\n".to_vec());
/// let mut key = [0u8; 3];
/// source.read_exact(&mut key).await?;
/// assert_eq!(&key, b"key");
/// assert_eq!(source.read_to_end().await?, b"=value\n");
/// # Ok(()) }
/// ```
pub struct SnapshotSource {
    input: SourceIn,
    buf: Vec<u8>,
    pos: usize,
    len: u64,
    /// Bytes fetched from the input so far.
    fetched: u64,
    crc: crc32fast::Hasher,
    expected_crc: Option<u32>,
}

impl std::fmt::Debug for SnapshotSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotSource")
            .field("len", &self.len)
            .field("fetched", &self.fetched)
            .finish_non_exhaustive()
    }
}

impl SnapshotSource {
    /// A source over bytes in memory: for tests of a store.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        let len = bytes.len() as u64;
        SnapshotSource {
            input: SourceIn::Done,
            buf: bytes,
            pos: 0,
            len,
            fetched: len,
            crc: crc32fast::Hasher::new(),
            expected_crc: None,
        }
    }

    /// A source over the payload of `storage`'s stored snapshot `meta`, of `len` bytes with
    /// CRC-32 `crc32`: read in place, or by a blocking thread, as the storage says.
    pub(crate) fn for_storage(
        storage: &Arc<dyn LogStorage>,
        meta: SnapshotMetadata,
        len: u64,
        crc32: u32,
    ) -> Result<Self, StorageError> {
        if storage.snapshot_payloads_in_place() {
            let reader = storage.snapshot_payload(&meta)?;
            return Ok(Self::reading(
                len,
                crc32,
                SourceIn::Direct(reader.take(len)),
            ));
        }
        let storage = storage.clone();
        Ok(Self::on_thread(len, crc32, move || {
            storage.snapshot_payload(&meta)
        }))
    }

    fn reading(len: u64, crc32: u32, input: SourceIn) -> Self {
        SnapshotSource {
            input,
            buf: Vec::new(),
            pos: 0,
            len,
            fetched: 0,
            crc: crc32fast::Hasher::new(),
            expected_crc: Some(crc32),
        }
    }

    /// A source over `len` bytes with CRC-32 `crc32` that a blocking thread reads from the
    /// reader `open` returns there.
    pub(crate) fn on_thread(
        len: u64,
        crc32: u32,
        open: impl FnOnce() -> Result<PayloadReader, StorageError> + Send + 'static,
    ) -> Self {
        let (tx, rx) = mpsc::channel(CHUNKS_QUEUED);
        let SpareChunks {
            tx: spare,
            rx: mut spare_rx,
        } = SpareChunks::new();
        tokio::task::spawn_blocking(move || {
            let mut reader = match open() {
                Ok(r) => r.take(len),
                Err(e) => {
                    let _ = tx.blocking_send(Err(e.to_string()));
                    return;
                }
            };
            loop {
                let mut chunk = SpareChunks::take(&mut spare_rx);
                match (&mut reader).take(CHUNK as u64).read_to_end(&mut chunk) {
                    Ok(0) => return,
                    Ok(_) => {
                        if tx.blocking_send(Ok(chunk)).is_err() {
                            return; // The restore stopped reading.
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(format!("reading a snapshot: {e}")));
                        return;
                    }
                }
            }
        });
        Self::reading(len, crc32, SourceIn::Thread { rx, spare })
    }

    /// The snapshot's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty snapshot.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> u64 {
        self.len - self.fetched + (self.buf.len() - self.pos) as u64
    }

    /// Fetches the next chunk into the buffer; false at the end.
    async fn fill(&mut self) -> StoreResult<bool> {
        if self.pos < self.buf.len() {
            return Ok(true);
        }
        if self.fetched == self.len {
            self.input = SourceIn::Done;
            return Ok(false);
        }
        let received = match &mut self.input {
            SourceIn::Done => return Ok(false),
            SourceIn::Thread { rx, spare } => {
                SpareChunks::give(spare, std::mem::take(&mut self.buf));
                rx.recv().await
            }
            SourceIn::Direct(reader) => {
                let mut chunk = Vec::with_capacity(CHUNK);
                match reader.take(CHUNK as u64).read_to_end(&mut chunk) {
                    Ok(0) => None,
                    Ok(_) => Some(Ok(chunk)),
                    Err(e) => Some(Err(format!("reading a snapshot: {e}"))),
                }
            }
        };
        let chunk = match received {
            Some(Ok(chunk)) => chunk,
            Some(Err(e)) => return Err(StoreError::msg(e)),
            None => {
                return Err(StoreError::msg(format!(
                    "the snapshot ends after {} of its {} bytes",
                    self.fetched, self.len
                )))
            }
        };
        self.fetched += chunk.len() as u64;
        self.crc.update(&chunk);
        if self.fetched == self.len {
            let crc = self.crc.clone().finalize();
            if self.expected_crc.is_some_and(|expected| expected != crc) {
                return Err(StoreError::msg(format!(
                    "the snapshot's {} bytes fail their CRC-32 check",
                    self.len
                )));
            }
        }
        self.buf = chunk;
        self.pos = 0;
        Ok(!self.buf.is_empty())
    }

    /// The next piece of the snapshot, of any length; `None` at the end.
    pub async fn chunk(&mut self) -> StoreResult<Option<Vec<u8>>> {
        if !self.fill().await? {
            return Ok(None);
        }
        let mut rest = std::mem::take(&mut self.buf);
        if self.pos > 0 {
            rest.drain(..self.pos);
        }
        self.pos = 0;
        Ok(Some(rest))
    }

    /// Reads up to `buf.len()` bytes; 0 at the end.
    pub async fn read(&mut self, buf: &mut [u8]) -> StoreResult<usize> {
        if buf.is_empty() || !self.fill().await? {
            return Ok(0);
        }
        let n = buf.len().min(self.buf.len() - self.pos);
        buf[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }

    /// Fills `buf` exactly; an error if the snapshot ends first.
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> StoreResult<()> {
        let mut filled = 0;
        while filled < buf.len() {
            let n = self.read(&mut buf[filled..]).await?;
            if n == 0 {
                return Err(StoreError::msg(format!(
                    "the snapshot ended {} bytes early",
                    buf.len() - filled
                )));
            }
            filled += n;
        }
        Ok(())
    }

    /// Reads the rest of the snapshot into one buffer.
    pub async fn read_to_end(&mut self) -> StoreResult<Vec<u8>> {
        if self.fetched == self.len {
            // All of it is in the buffer already: hand it over without a copy.
            return Ok(self.chunk().await?.unwrap_or_default());
        }
        let mut out = Vec::with_capacity(usize::try_from(self.remaining()).unwrap_or(0));
        while self.fill().await? {
            out.extend_from_slice(&self.buf[self.pos..]);
            self.pos = self.buf.len();
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::io::Cursor;

    use super::*;

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn a_threaded_sink_writes_in_chunks_and_sums_what_it_wrote() {
        let data = bytes(3 * CHUNK + 17);
        let mut sink = SnapshotSink::on_thread(|| Ok(Box::new(InlinePayloadWriter::default())));
        for piece in data.chunks(4096 + 3) {
            sink.write(piece).await.unwrap();
        }
        let payload = sink.finish().await.unwrap();
        assert_eq!(payload.len(), data.len() as u64);
        assert_eq!(payload.crc32(), crc32fast::hash(&data));
        assert_eq!(payload.into_inline().unwrap(), data);
    }

    #[tokio::test]
    async fn a_writer_that_fails_fails_the_snapshot() {
        struct Failing;
        impl Write for Failing {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk full"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        impl SnapshotPayloadWriter for Failing {
            fn finish(self: Box<Self>) -> Result<SnapshotPayload, StorageError> {
                panic!("a failed payload must not be finished")
            }
        }
        let mut sink = SnapshotSink::on_thread(|| Ok(Box::new(Failing)));
        let mut failed = None;
        for _ in 0..8 {
            if let Err(e) = sink.write(&bytes(CHUNK)).await {
                failed = Some(e);
                break;
            }
        }
        let err = match failed {
            Some(e) => e.to_string(),
            None => sink.finish().await.unwrap_err().to_string(),
        };
        assert!(err.contains("disk full"), "{err}");
    }

    #[tokio::test]
    async fn a_threaded_source_reads_back_and_checks_the_crc() {
        let data = bytes(2 * CHUNK + 5);
        let crc = crc32fast::hash(&data);
        let copy = data.clone();
        let mut source = SnapshotSource::on_thread(data.len() as u64, crc, move || {
            Ok(Box::new(Cursor::new(copy)))
        });
        let mut head = [0u8; 10];
        source.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, &data[..10]);
        assert_eq!(source.read_to_end().await.unwrap(), &data[10..]);

        let copy = data.clone();
        let mut bad = SnapshotSource::on_thread(data.len() as u64, crc ^ 1, move || {
            Ok(Box::new(Cursor::new(copy)))
        });
        let err = bad.read_to_end().await.unwrap_err().to_string();
        assert!(err.contains("CRC-32"), "{err}");

        let short = data[..100].to_vec();
        let mut truncated = SnapshotSource::on_thread(data.len() as u64, crc, move || {
            Ok(Box::new(Cursor::new(short)))
        });
        let err = truncated.read_to_end().await.unwrap_err().to_string();
        assert!(err.contains("ends after 100"), "{err}");
    }

    #[tokio::test]
    async fn a_source_in_memory_reads_in_any_pieces() {
        let mut source = SnapshotSource::from_bytes(b"abcdef".to_vec());
        let mut two = [0u8; 2];
        assert_eq!(source.read(&mut two).await.unwrap(), 2);
        assert_eq!(source.remaining(), 4);
        assert_eq!(source.chunk().await.unwrap().unwrap(), b"cdef");
        assert_eq!(source.chunk().await.unwrap(), None);
        assert!(source.read_exact(&mut two).await.is_err());
    }
}
