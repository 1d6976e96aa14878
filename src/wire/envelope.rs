//! The envelope: one update for one topic, and its frame, the exact bytes a client receives.
//!
//! The journal assigns `seq` and encodes the frame once; the bus carries those bytes, the
//! router forwards them without reading them, and reconciliation returns the same bytes, so a
//! client has one decoder for live and recovered envelopes.
//!
//! ```text
//! [19, topic: str, seq: uint, id: str, ts: uint (ms since epoch), kind: str, payload: bin]
//! ```

use super::frame::{FrameError, TYPE_ENVELOPE};
use super::limits::{MAX_ENVELOPE_BYTES, MAX_ID_BYTES, MAX_KIND_BYTES, MAX_TOPIC_BYTES};
use super::msgpack::{DecodeError, Reader, write};
use super::topic;

/// An owned envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The root aggregate the update belongs to (`post:42`).
    pub topic: String,
    /// Position in the topic, from 1, assigned by the journal; gapless per topic.
    pub seq: u64,
    /// Unique id (the journal's), for idempotency and logs.
    pub id: String,
    /// When the journal accepted it, milliseconds since the Unix epoch.
    pub ts: u64,
    /// Names the payload's contract (`comment.created`); the router never looks at it.
    pub kind: String,
    /// Opaque bytes whose meaning belongs to the feature that sent them.
    pub payload: Vec<u8>,
}

/// An envelope borrowed from its frame bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeRef<'a> {
    pub topic: &'a str,
    pub seq: u64,
    pub id: &'a str,
    pub ts: u64,
    pub kind: &'a str,
    pub payload: &'a [u8],
}

/// Checks the fields a publisher chooses (`topic`, `kind`, payload size).
pub fn validate_fields(topic_name: &str, kind: &str, payload_len: usize) -> Result<(), FrameError> {
    topic::validate(topic_name).map_err(FrameError::Topic)?;
    if kind.is_empty() || kind.len() > MAX_KIND_BYTES {
        return Err(FrameError::Field(format!("kind must be 1..={MAX_KIND_BYTES} bytes")));
    }
    // Fixed overhead of the frame beside the payload is far below 1 KiB.
    if payload_len > MAX_ENVELOPE_BYTES - 1024 {
        return Err(FrameError::TooLarge { len: payload_len, max: MAX_ENVELOPE_BYTES - 1024 });
    }
    Ok(())
}

impl EnvelopeRef<'_> {
    /// Encodes the envelope frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.topic.len() + self.id.len() + self.kind.len() + self.payload.len());
        write::array_len(&mut out, 7);
        write::uint(&mut out, TYPE_ENVELOPE);
        write::str(&mut out, self.topic);
        write::uint(&mut out, self.seq);
        write::str(&mut out, self.id);
        write::uint(&mut out, self.ts);
        write::str(&mut out, self.kind);
        write::bin(&mut out, self.payload);
        out
    }

    pub fn to_owned(&self) -> Envelope {
        Envelope {
            topic: self.topic.to_owned(),
            seq: self.seq,
            id: self.id.to_owned(),
            ts: self.ts,
            kind: self.kind.to_owned(),
            payload: self.payload.to_vec(),
        }
    }
}

impl Envelope {
    pub fn as_ref(&self) -> EnvelopeRef<'_> {
        EnvelopeRef {
            topic: &self.topic,
            seq: self.seq,
            id: &self.id,
            ts: self.ts,
            kind: &self.kind,
            payload: &self.payload,
        }
    }

    /// Encodes the envelope frame.
    pub fn encode(&self) -> Vec<u8> {
        self.as_ref().encode()
    }
}

/// Decodes an envelope frame strictly.
pub fn decode(bytes: &[u8]) -> Result<EnvelopeRef<'_>, FrameError> {
    if bytes.len() > MAX_ENVELOPE_BYTES {
        return Err(FrameError::TooLarge { len: bytes.len(), max: MAX_ENVELOPE_BYTES });
    }
    let mut r = Reader::new(bytes);
    let n = r.array_len()?;
    if n == 0 {
        return Err(DecodeError::WrongArity { got: 0, expected: "7" }.into());
    }
    let t = r.u64()?;
    if t != TYPE_ENVELOPE {
        return Err(FrameError::UnknownType(t));
    }
    decode_body(&mut r, n)
}

/// Reads `ts` from an envelope frame without decoding the rest: the router's delivery
/// latency metric, which must not cost a decode per envelope. `None` if it is not one.
pub fn peek_ts(frame: &[u8]) -> Option<u64> {
    let mut r = Reader::new(frame);
    if r.array_len().ok()? != 7 || r.u64().ok()? != TYPE_ENVELOPE {
        return None;
    }
    r.str("topic", MAX_TOPIC_BYTES).ok()?;
    r.u64().ok()?;
    r.str("id", MAX_ID_BYTES).ok()?;
    r.u64().ok()
}

/// Decodes the fields after the type tag (shared with [`super::frame::ServerFrame::decode`]).
pub(crate) fn decode_body<'a>(r: &mut Reader<'a>, n: usize) -> Result<EnvelopeRef<'a>, FrameError> {
    if n != 7 {
        return Err(DecodeError::WrongArity { got: n, expected: "7" }.into());
    }
    let topic = r.str("topic", MAX_TOPIC_BYTES)?;
    topic::validate(topic).map_err(FrameError::Topic)?;
    let seq = r.u64()?;
    let id = r.str("id", MAX_ID_BYTES)?;
    let ts = r.u64()?;
    let kind = r.str("kind", MAX_KIND_BYTES)?;
    let payload = r.bin("payload", MAX_ENVELOPE_BYTES)?;
    r.finish()?;
    Ok(EnvelopeRef { topic, seq, id, ts, kind, payload })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_wrong_shapes() {
        let e = Envelope { topic: "post:1".into(), seq: 1, id: "e1".into(), ts: 5, kind: "k".into(), payload: vec![1] };
        let bytes = e.encode();
        assert_eq!(decode(&bytes).unwrap().to_owned(), e);
        assert!(matches!(decode(&bytes[..bytes.len() - 1]), Err(FrameError::Decode(DecodeError::Truncated { .. }))));
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(matches!(decode(&extra), Err(FrameError::Decode(DecodeError::TrailingBytes { extra: 1 }))));
        assert!(matches!(decode(&[0x91, 0x01]), Err(FrameError::UnknownType(1))));
        assert_eq!(peek_ts(&bytes), Some(5));
        assert_eq!(peek_ts(&bytes[..8]), None);
        assert_eq!(peek_ts(&[0x92, 0x10, 0x01]), None);
        let bad_topic = Envelope { topic: "a b".into(), ..e.clone() };
        assert!(matches!(decode(&bad_topic.encode()), Err(FrameError::Topic(_))));
    }
}
