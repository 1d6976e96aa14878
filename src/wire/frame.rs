//! Frames between client and router: MessagePack arrays whose first element is the type.
//!
//! ```text
//! client -> router                         router -> client
//! [1, id, topic, token]   subscribe        [16, id, last_seq | nil]      ok
//! [2, id, topic]          unsubscribe      [17, id, code, message]       error (id 0: no request)
//! [3, id]                 ping             [18, id]                      pong
//!                                          [19, topic, seq, id, ts, kind, payload]  envelope
//!                                          [20, [topic, ...]]            resync
//!                                          [21, topic, from_seq, to_seq] gap (inclusive range)
//!                                          [22, topic, code]             unsubscribed by the router
//! ```
//!
//! `id` is the client's request id (u32), echoed in the answer. Every frame is one binary
//! WebSocket message; text messages are refused (the protocol is binary-only).

use thiserror::Error;

use super::envelope::{self, EnvelopeRef};
use super::limits::{
    MAX_ENVELOPE_BYTES, MAX_ERROR_CODE_BYTES, MAX_ERROR_MESSAGE_BYTES, MAX_RESYNC_TOPICS, MAX_TOKEN_TEXT_BYTES,
    MAX_TOPIC_BYTES,
};
use super::msgpack::{DecodeError, Reader, write};
use super::topic::{self, TopicError};

pub const TYPE_SUBSCRIBE: u64 = 1;
pub const TYPE_UNSUBSCRIBE: u64 = 2;
pub const TYPE_PING: u64 = 3;
pub const TYPE_OK: u64 = 16;
pub const TYPE_ERROR: u64 = 17;
pub const TYPE_PONG: u64 = 18;
pub const TYPE_ENVELOPE: u64 = 19;
pub const TYPE_RESYNC: u64 = 20;
pub const TYPE_GAP: u64 = 21;
pub const TYPE_UNSUBSCRIBED: u64 = 22;

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("malformed frame: {0}")]
    Decode(#[from] DecodeError),
    #[error("unknown frame type {0}")]
    UnknownType(u64),
    #[error("invalid topic: {0}")]
    Topic(TopicError),
    #[error("frame is {len} bytes, above the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("invalid field: {0}")]
    Field(String),
}

impl FrameError {
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::Decode(_) | FrameError::Field(_) => ErrorCode::BadFrame,
            FrameError::UnknownType(_) => ErrorCode::UnknownFrame,
            FrameError::Topic(_) => ErrorCode::BadTopic,
            FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
        }
    }
}

/// Stable machine codes in error frames (SPEC.md, "Error codes"). Never renamed, only added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BadFrame,
    UnknownFrame,
    FrameTooLarge,
    TextNotSupported,
    BadTopic,
    TooManySubscriptions,
    RateLimited,
    NotSubscribed,
    /// A token failure; the string is [`super::TokenError::code`].
    Token(&'static str),
    Internal,
}

impl ErrorCode {
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::UnknownFrame => "unknown_frame",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::TextNotSupported => "text_not_supported",
            ErrorCode::BadTopic => "bad_topic",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::Token(c) => c,
            ErrorCode::Internal => "internal",
        }
    }
}

/// WebSocket close codes the router sends (RFC 6455 section 7.4, 4000-4999 private).
pub struct CloseCode;

impl CloseCode {
    /// Normal closure (answer to a client's close).
    pub const NORMAL: u16 = 1000;
    /// The router is draining: reconnect, another worker or host will take you.
    pub const GOING_AWAY: u16 = 1001;
    /// Repeated protocol violations (undecodable frames, floods).
    pub const POLICY: u16 = 1008;
    /// A frame or message above `max_frame_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// Text (or otherwise unacceptable) data in a binary-only protocol, repeated.
    pub const INVALID_DATA: u16 = 1007;
    /// Unexpected server condition.
    pub const INTERNAL: u16 = 1011;
    /// The router restarts: reconnect after a short delay.
    pub const RESTART: u16 = 1012;
    /// The router could not keep up with this client (slow consumer, `close` policy):
    /// reconnect and reconcile.
    pub const SLOW_CONSUMER: u16 = 4000;
    /// No pong or frame within the idle timeout.
    pub const IDLE_TIMEOUT: u16 = 4001;
    /// The server is at `max_connections`.
    pub const OVERLOADED: u16 = 4002;
}

/// A frame from a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFrame<'a> {
    Subscribe { id: u32, topic: &'a str, token: &'a str },
    Unsubscribe { id: u32, topic: &'a str },
    Ping { id: u32 },
}

fn arity(n: usize, expected: usize, label: &'static str) -> Result<(), FrameError> {
    if n == expected { Ok(()) } else { Err(DecodeError::WrongArity { got: n, expected: label }.into()) }
}

fn read_topic<'a>(r: &mut Reader<'a>) -> Result<&'a str, FrameError> {
    let t = r.str("topic", MAX_TOPIC_BYTES + 1).map_err(|e| match e {
        DecodeError::TooLong { len, .. } => FrameError::Topic(TopicError::TooLong { len }),
        e => e.into(),
    })?;
    topic::validate(t).map_err(FrameError::Topic)?;
    Ok(t)
}

impl<'a> ClientFrame<'a> {
    /// The request id, if the frame got far enough to have one (for error answers).
    pub fn id(&self) -> u32 {
        match *self {
            ClientFrame::Subscribe { id, .. } | ClientFrame::Unsubscribe { id, .. } | ClientFrame::Ping { id } => id,
        }
    }

    /// Decodes a client frame strictly.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, FrameError> {
        let mut r = Reader::new(bytes);
        let n = r.array_len()?;
        if n == 0 {
            return Err(DecodeError::WrongArity { got: 0, expected: "at least 1" }.into());
        }
        let f = match r.u64()? {
            TYPE_SUBSCRIBE => {
                arity(n, 4, "4")?;
                let id = r.u32()?;
                let topic = read_topic(&mut r)?;
                let token = r.str("token", MAX_TOKEN_TEXT_BYTES)?;
                ClientFrame::Subscribe { id, topic, token }
            }
            TYPE_UNSUBSCRIBE => {
                arity(n, 3, "3")?;
                let id = r.u32()?;
                ClientFrame::Unsubscribe { id, topic: read_topic(&mut r)? }
            }
            TYPE_PING => {
                arity(n, 2, "2")?;
                ClientFrame::Ping { id: r.u32()? }
            }
            t => return Err(FrameError::UnknownType(t)),
        };
        r.finish()?;
        Ok(f)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        match *self {
            ClientFrame::Subscribe { id, topic, token } => {
                write::array_len(&mut out, 4);
                write::uint(&mut out, TYPE_SUBSCRIBE);
                write::uint(&mut out, id.into());
                write::str(&mut out, topic);
                write::str(&mut out, token);
            }
            ClientFrame::Unsubscribe { id, topic } => {
                write::array_len(&mut out, 3);
                write::uint(&mut out, TYPE_UNSUBSCRIBE);
                write::uint(&mut out, id.into());
                write::str(&mut out, topic);
            }
            ClientFrame::Ping { id } => {
                write::array_len(&mut out, 2);
                write::uint(&mut out, TYPE_PING);
                write::uint(&mut out, id.into());
            }
        }
        out
    }
}

/// A frame from the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame<'a> {
    Ok { id: u32, last_seq: Option<u64> },
    Error { id: u32, code: &'a str, message: &'a str },
    Pong { id: u32 },
    Envelope(EnvelopeRef<'a>),
    Resync { topics: Vec<&'a str> },
    Gap { topic: &'a str, from_seq: u64, to_seq: u64 },
    Unsubscribed { topic: &'a str, code: &'a str },
}

impl<'a> ServerFrame<'a> {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        match self {
            ServerFrame::Ok { id, last_seq } => {
                write::array_len(&mut out, 3);
                write::uint(&mut out, TYPE_OK);
                write::uint(&mut out, (*id).into());
                write::opt_uint(&mut out, *last_seq);
            }
            ServerFrame::Error { id, code, message } => {
                write::array_len(&mut out, 4);
                write::uint(&mut out, TYPE_ERROR);
                write::uint(&mut out, (*id).into());
                write::str(&mut out, code);
                write::str(&mut out, message);
            }
            ServerFrame::Pong { id } => {
                write::array_len(&mut out, 2);
                write::uint(&mut out, TYPE_PONG);
                write::uint(&mut out, (*id).into());
            }
            ServerFrame::Envelope(e) => return e.encode(),
            ServerFrame::Resync { topics } => {
                write::array_len(&mut out, 2);
                write::uint(&mut out, TYPE_RESYNC);
                write::array_len(&mut out, topics.len() as u32);
                for t in topics {
                    write::str(&mut out, t);
                }
            }
            ServerFrame::Gap { topic, from_seq, to_seq } => {
                write::array_len(&mut out, 4);
                write::uint(&mut out, TYPE_GAP);
                write::str(&mut out, topic);
                write::uint(&mut out, *from_seq);
                write::uint(&mut out, *to_seq);
            }
            ServerFrame::Unsubscribed { topic, code } => {
                write::array_len(&mut out, 3);
                write::uint(&mut out, TYPE_UNSUBSCRIBED);
                write::str(&mut out, topic);
                write::str(&mut out, code);
            }
        }
        out
    }

    /// Decodes a router frame (for Rust clients: tests, the bench, the verifying client).
    pub fn decode(bytes: &'a [u8]) -> Result<Self, FrameError> {
        // The envelope is the largest router frame; every other kind is far smaller.
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(FrameError::TooLarge { len: bytes.len(), max: MAX_ENVELOPE_BYTES });
        }
        let mut r = Reader::new(bytes);
        let n = r.array_len()?;
        if n == 0 {
            return Err(DecodeError::WrongArity { got: 0, expected: "at least 1" }.into());
        }
        let f = match r.u64()? {
            TYPE_OK => {
                arity(n, 3, "3")?;
                let id = r.u32()?;
                let last_seq = if r.nil()? { None } else { Some(r.u64()?) };
                ServerFrame::Ok { id, last_seq }
            }
            TYPE_ERROR => {
                arity(n, 4, "4")?;
                ServerFrame::Error {
                    id: r.u32()?,
                    code: r.str("code", MAX_ERROR_CODE_BYTES)?,
                    message: r.str("message", MAX_ERROR_MESSAGE_BYTES)?,
                }
            }
            TYPE_PONG => {
                arity(n, 2, "2")?;
                ServerFrame::Pong { id: r.u32()? }
            }
            TYPE_ENVELOPE => return Ok(ServerFrame::Envelope(envelope::decode_body(&mut r, n)?)),
            TYPE_RESYNC => {
                arity(n, 2, "2")?;
                let count = r.array_len()?;
                if count > MAX_RESYNC_TOPICS {
                    return Err(
                        DecodeError::TooLong { what: "resync topics", len: count, max: MAX_RESYNC_TOPICS }.into()
                    );
                }
                let topics = (0..count).map(|_| read_topic(&mut r)).collect::<Result<_, _>>()?;
                ServerFrame::Resync { topics }
            }
            TYPE_GAP => {
                arity(n, 4, "4")?;
                ServerFrame::Gap { topic: read_topic(&mut r)?, from_seq: r.u64()?, to_seq: r.u64()? }
            }
            TYPE_UNSUBSCRIBED => {
                arity(n, 3, "3")?;
                ServerFrame::Unsubscribed { topic: read_topic(&mut r)?, code: r.str("code", MAX_ERROR_CODE_BYTES)? }
            }
            t => return Err(FrameError::UnknownType(t)),
        };
        r.finish()?;
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_reject_bad_input_with_a_type() {
        let ok = ClientFrame::Subscribe { id: 1, topic: "post:1", token: "t" }.encode();
        assert!(ClientFrame::decode(&ok).is_ok());
        for cut in 0..ok.len() {
            assert!(matches!(ClientFrame::decode(&ok[..cut]), Err(FrameError::Decode(_))), "cut at {cut}");
        }
        assert_eq!(ClientFrame::decode(&[0x91, 0x09]), Err(FrameError::UnknownType(9)));
        assert!(matches!(ClientFrame::decode(&[0x90]), Err(FrameError::Decode(DecodeError::WrongArity { .. }))));
        assert!(matches!(
            ClientFrame::decode(&[0x92, 0x03, 0xa1, b'x']),
            Err(FrameError::Decode(DecodeError::WrongType { .. }))
        ));
        assert!(matches!(
            ClientFrame::decode(&[0x93, 0x03, 0x01, 0x01]),
            Err(FrameError::Decode(DecodeError::WrongArity { .. }))
        ));
        assert!(matches!(
            ClientFrame::decode(&[0x92, 0x03, 0xce, 0xff, 0xff, 0xff, 0xff]),
            Ok(ClientFrame::Ping { id: u32::MAX })
        ));
        assert!(matches!(
            ClientFrame::decode(&[0x92, 0x03, 0xcf, 0, 0, 0, 1, 0, 0, 0, 0]),
            Err(FrameError::Decode(DecodeError::WrongType { .. }))
        ));
        let long = "x".repeat(201);
        let f = ClientFrame::Unsubscribe { id: 1, topic: &long }.encode();
        assert_eq!(ClientFrame::decode(&f), Err(FrameError::Topic(TopicError::TooLong { len: 201 })));
        let huge = ClientFrame::Unsubscribe { id: 1, topic: &"x".repeat(100_000) }.encode();
        assert!(matches!(ClientFrame::decode(&huge), Err(FrameError::Topic(TopicError::TooLong { .. }))));
        assert_eq!(ClientFrame::decode(b"\xc1").unwrap_err().code(), ErrorCode::BadFrame);
    }

    #[test]
    fn server_decode_bounds_envelopes_like_envelope_decode() {
        // Regression: ServerFrame::decode skipped the MAX_ENVELOPE_BYTES check.
        let frame_of = |len: usize| {
            crate::wire::Envelope {
                topic: "post:1".into(),
                seq: 1,
                id: "e1".into(),
                ts: 1,
                kind: "k".into(),
                payload: vec![0; len],
            }
            .encode()
        };
        let overhead = frame_of(70_000).len() - 70_000;
        let at_limit = frame_of(MAX_ENVELOPE_BYTES - overhead);
        assert_eq!(at_limit.len(), MAX_ENVELOPE_BYTES);
        assert!(ServerFrame::decode(&at_limit).is_ok());
        assert!(envelope::decode(&at_limit).is_ok());
        let over = frame_of(MAX_ENVELOPE_BYTES - overhead + 1);
        let too_large = FrameError::TooLarge { len: MAX_ENVELOPE_BYTES + 1, max: MAX_ENVELOPE_BYTES };
        assert_eq!(ServerFrame::decode(&over), Err(too_large.clone()));
        assert_eq!(envelope::decode(&over), Err(too_large));
    }
}
