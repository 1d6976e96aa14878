//! The bus record: an envelope frame with its topic and seq beside it.
//!
//! The router routes on the side fields and forwards `frame` untouched, so it never decodes a
//! payload. On the local bus (a Unix stream socket) records are length-prefixed:
//!
//! ```text
//! u32be len (of the rest) | u8 topic_len | topic | u64be seq | frame
//! ```
//!
//! On RabbitMQ the same three parts travel as routing key, header `seq` and body.

use thiserror::Error;

use super::limits::{MAX_ENVELOPE_BYTES, MAX_TOPIC_BYTES};
use super::topic::{self, TopicError};

/// Fixed bytes of a record besides topic and frame.
pub const OVERHEAD: usize = 4 + 1 + 8;
/// Largest record body (`len`) accepted.
pub const MAX_RECORD_BYTES: usize = 1 + MAX_TOPIC_BYTES + 8 + MAX_ENVELOPE_BYTES;

/// One routed envelope, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed<'a> {
    pub topic: &'a str,
    pub seq: u64,
    pub frame: &'a [u8],
}

/// Why a bus record was refused. A stream that yields one cannot be trusted further.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecordError {
    #[error("record length {0} is above the limit of {MAX_RECORD_BYTES}")]
    TooLarge(usize),
    #[error("record length {0} is too small for its header")]
    TooSmall(usize),
    #[error("record topic is invalid: {0}")]
    Topic(TopicError),
    #[error("record topic is not UTF-8")]
    TopicUtf8,
    #[error("record frame is empty")]
    EmptyFrame,
}

impl<'a> Routed<'a> {
    /// Appends the length-prefixed record to `out`. The topic must be valid (at most
    /// 200 bytes, so its length fits the one-byte prefix) and the frame non-empty.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        debug_assert!(self.topic.len() <= MAX_TOPIC_BYTES, "topic too long for a record");
        let len = 1 + self.topic.len() + 8 + self.frame.len();
        out.reserve(4 + len);
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.push(self.topic.len() as u8);
        out.extend_from_slice(self.topic.as_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(self.frame);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Reads one record from the front of `buf`: `Ok(None)` when more bytes are needed,
    /// else the record and the bytes it used.
    pub fn decode_prefix(buf: &'a [u8]) -> Result<Option<(Routed<'a>, usize)>, RecordError> {
        let Some(head) = buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge(len));
        }
        if len < 1 + 1 + 8 + 1 {
            return Err(RecordError::TooSmall(len));
        }
        let Some(body) = buf.get(4..4 + len) else {
            return Ok(None);
        };
        let tlen = body[0] as usize;
        if 1 + tlen + 8 > len {
            return Err(RecordError::TooSmall(len));
        }
        let topic = std::str::from_utf8(&body[1..1 + tlen]).map_err(|_| RecordError::TopicUtf8)?;
        topic::validate(topic).map_err(RecordError::Topic)?;
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&body[1 + tlen..1 + tlen + 8]);
        let frame = &body[1 + tlen + 8..];
        if frame.is_empty() {
            return Err(RecordError::EmptyFrame);
        }
        Ok(Some((Routed { topic, seq: u64::from_be_bytes(seq), frame }, 4 + len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_in_pieces() {
        let r = Routed { topic: "post:1", seq: 9, frame: b"\x91\x13" };
        let mut buf = r.encode();
        r.encode_into(&mut buf);
        let one = buf.len() / 2;
        for cut in 0..one {
            assert_eq!(Routed::decode_prefix(&buf[..cut]), Ok(None));
        }
        assert_eq!(Routed::decode_prefix(&buf), Ok(Some((r, one))));
        assert_eq!(Routed::decode_prefix(&[0xff, 0xff, 0xff, 0xff]), Err(RecordError::TooLarge(u32::MAX as usize)));
        assert_eq!(Routed::decode_prefix(&[0, 0, 0, 1, 0]), Err(RecordError::TooSmall(1)));
        let bad = Routed { topic: "a b", seq: 1, frame: b"x" }.encode();
        assert!(matches!(Routed::decode_prefix(&bad), Err(RecordError::Topic(_))));
    }

    #[test]
    fn an_empty_frame_is_named() {
        // Regression: the header check swallowed this case as TooSmall.
        let r = Routed { topic: "post:1", seq: 1, frame: b"" };
        assert_eq!(Routed::decode_prefix(&r.encode()), Err(RecordError::EmptyFrame));
        // A topic length that runs past the record is still TooSmall.
        assert_eq!(
            Routed::decode_prefix(&[0, 0, 0, 11, 3, b'a', 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            Err(RecordError::TooSmall(11))
        );
    }
}
