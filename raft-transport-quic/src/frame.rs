//! Length-prefixed frames on QUIC streams, and the stream error codes.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of one prost message
//! ([`RaftBatch`] on raft streams, [`Request`](raft_core::wire::Request) /
//! [`Response`](raft_core::wire::Response) on call streams). The length is checked against
//! the configured maximum before anything is allocated, and the payload buffer grows only as
//! bytes actually arrive, so a lying length prefix costs nothing.

use bytes::Bytes;
use prost::Message;
use quinn::{ReadError, RecvStream, VarInt};
use raft_core::TransportError;

/// Bytes of the length prefix.
pub(crate) const PREFIX: usize = 4;

/// Stream / connection error codes of this transport (QUIC application error codes).
pub(crate) mod code {
    use quinn::VarInt;

    /// The server is stopping: the request on this stream was not processed.
    pub(crate) const NOT_PROCESSED: VarInt = VarInt::from_u32(0x52_01);
    /// The peer sent a frame that is too large, truncated, or does not decode.
    pub(crate) const BAD_FRAME: VarInt = VarInt::from_u32(0x52_02);
    /// The sender gave up on this stream (deadline passed).
    pub(crate) const CANCELLED: VarInt = VarInt::from_u32(0x52_03);
    /// The server stopped; closes every connection.
    pub(crate) const SERVER_STOPPED: VarInt = VarInt::from_u32(0x52_04);
    /// The transport was dropped; closes its outbound connections.
    pub(crate) const CLIENT_CLOSED: VarInt = VarInt::from_u32(0x52_05);
}

/// Why reading a frame failed.
#[derive(Debug)]
pub(crate) enum FrameError {
    /// The stream or connection failed (reset, lost, closed): not the peer's data's fault.
    Stream(ReadError),
    /// The length prefix announces more than the maximum.
    TooLarge { len: usize, max: usize },
    /// The stream ended in the middle of a frame.
    Truncated { got: usize, want: usize },
    /// The payload is not a valid message.
    Decode(prost::DecodeError),
}

impl FrameError {
    /// True when the peer sent bytes we refuse (as opposed to a broken stream).
    pub(crate) fn is_bad_input(&self) -> bool {
        !matches!(self, FrameError::Stream(_))
    }
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Stream(e) => write!(f, "stream failed: {e}"),
            FrameError::TooLarge { len, max } => write!(
                f,
                "frame of {len} bytes exceeds the maximum message size of {max} bytes"
            ),
            FrameError::Truncated { got, want } => {
                write!(f, "stream ended inside a frame ({got} of {want} bytes)")
            }
            FrameError::Decode(e) => write!(f, "frame does not decode: {e}"),
        }
    }
}

/// Encodes `message` as one frame. Fails (without encoding) when it exceeds `max`.
pub(crate) fn encode<M: Message>(message: &M, max: usize) -> Result<Bytes, TransportError> {
    let len = message.encoded_len();
    if len > max || len > u32::MAX as usize {
        return Err(TransportError::Malformed(format!(
            "message of {len} bytes exceeds the maximum message size of {max} bytes"
        )));
    }
    let mut buf = Vec::with_capacity(PREFIX + len);
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    message
        .encode(&mut buf)
        .map_err(|e| TransportError::Malformed(format!("encoding failed: {e}")))?;
    Ok(Bytes::from(buf))
}

/// Reads one frame. `Ok(None)` when the stream ended cleanly between frames.
pub(crate) async fn read<M: Message + Default>(
    recv: &mut RecvStream,
    max: usize,
) -> Result<Option<M>, FrameError> {
    let mut prefix = [0u8; PREFIX];
    let mut got = 0;
    while got < PREFIX {
        match recv.read(&mut prefix[got..]).await {
            Ok(Some(n)) => got += n,
            Ok(None) if got == 0 => return Ok(None),
            Ok(None) => return Err(FrameError::Truncated { got, want: PREFIX }),
            Err(e) => return Err(FrameError::Stream(e)),
        }
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    // Grow with the data that actually arrives, not with what the prefix promises.
    let mut payload: Vec<u8> = Vec::with_capacity(len.min(64 * 1024));
    while payload.len() < len {
        match recv.read_chunk(len - payload.len(), true).await {
            Ok(Some(chunk)) => payload.extend_from_slice(&chunk.bytes),
            Ok(None) => {
                return Err(FrameError::Truncated {
                    got: payload.len(),
                    want: len,
                })
            }
            Err(e) => return Err(FrameError::Stream(e)),
        }
    }
    M::decode(payload.as_slice())
        .map(Some)
        .map_err(FrameError::Decode)
}

/// Describes a QUIC application error code of this transport.
pub(crate) fn describe_code(c: VarInt) -> &'static str {
    match c {
        code::NOT_PROCESSED => "the server is stopping",
        code::BAD_FRAME => "the peer refused a bad frame",
        code::CANCELLED => "cancelled",
        code::SERVER_STOPPED => "the server stopped",
        code::CLIENT_CLOSED => "the client closed",
        _ => "unknown code",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use raft_core::wire::RaftBatch;

    #[test]
    fn frames_carry_a_big_endian_length_prefix() {
        let batch = RaftBatch {
            cluster_id: 0,
            from: 1,
            to: 2,
            messages: vec![vec![7; 10].into()],
            from_addr: "a".into(),
        };
        let frame = encode(&batch, 1024).unwrap();
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - PREFIX);
        assert_eq!(RaftBatch::decode(&frame[PREFIX..]).unwrap(), batch);
        assert!(matches!(
            encode(&batch, 4),
            Err(TransportError::Malformed(_))
        ));
    }
}
