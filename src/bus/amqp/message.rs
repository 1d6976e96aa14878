//! How one routed envelope maps onto an AMQP message, both ways (docs/rabbitmq.md).
//!
//! - body: the envelope frame bytes, exactly as clients receive them (never decoded here);
//! - header `seq`: the per-topic sequence number, a signed 64-bit integer (AMQP field type `l`;
//!   any non-negative integer type is accepted on the way in, so php-amqplib's 32-bit `I` works);
//! - fanout routing: routing key = topic;
//! - buckets routing: routing key = the bucket in decimal, header `topic` = the topic (a long
//!   string, `S`).
//!
//! Pure functions: the consumer and the publisher call them, the tests pin them down.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use super::buckets;
use crate::bus::{BusError, Routed};
use crate::wire::limits::MAX_ENVELOPE_BYTES;
use crate::wire::topic;

/// Header carrying the seq.
pub const SEQ_HEADER: &str = "seq";
/// Header carrying the topic in buckets routing.
pub const TOPIC_HEADER: &str = "topic";

/// How messages are routed on the broker: the mode and, for buckets, their number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    Fanout,
    Buckets(u32),
}

/// Why an incoming message cannot be routed (the metric's `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// No topic, or one that breaks the topic rule.
    Topic,
    /// No `seq` header, or not a non-negative integer.
    Seq,
    /// Empty body, or larger than an envelope may be.
    Frame,
}

impl Invalid {
    pub fn label(self) -> &'static str {
        match self {
            Invalid::Topic => "topic",
            Invalid::Seq => "seq",
            Invalid::Frame => "frame",
        }
    }
}

/// Where an incoming message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming<'a> {
    pub topic: &'a str,
    pub seq: u64,
    /// Buckets routing only: the routing key is not the topic's bucket, i.e. some publisher
    /// hashes differently (another bucket count?) and workers that need it do not get it.
    pub misrouted: bool,
}

/// Reads topic and seq from a delivery's routing key and headers, checking the frame size.
pub fn incoming<'a>(
    routing: Routing,
    routing_key: &'a str,
    headers: Option<&'a FieldTable>,
    body_len: usize,
) -> Result<Incoming<'a>, Invalid> {
    let topic = match routing {
        Routing::Fanout => routing_key,
        Routing::Buckets(_) => match headers.and_then(|h| h.inner().get(TOPIC_HEADER)) {
            Some(AMQPValue::LongString(s)) => std::str::from_utf8(s.as_bytes()).map_err(|_| Invalid::Topic)?,
            Some(AMQPValue::ShortString(s)) => s.as_str(),
            _ => return Err(Invalid::Topic),
        },
    };
    topic::validate(topic).map_err(|_| Invalid::Topic)?;
    let seq = headers.and_then(|h| h.inner().get(SEQ_HEADER)).and_then(seq_value).ok_or(Invalid::Seq)?;
    if body_len == 0 || body_len > MAX_ENVELOPE_BYTES {
        return Err(Invalid::Frame);
    }
    let misrouted = match routing {
        Routing::Fanout => false,
        Routing::Buckets(n) => routing_key.parse::<u32>().ok() != Some(buckets::bucket_of(topic, n)),
    };
    Ok(Incoming { topic, seq, misrouted })
}

fn seq_value(v: &AMQPValue) -> Option<u64> {
    let n: i128 = match *v {
        AMQPValue::LongLongInt(n) => n as i128,
        AMQPValue::LongInt(n) => n as i128,
        AMQPValue::LongUInt(n) => n as i128,
        AMQPValue::ShortInt(n) => n as i128,
        AMQPValue::ShortUInt(n) => n as i128,
        AMQPValue::ShortShortInt(n) => n as i128,
        AMQPValue::ShortShortUInt(n) => n as i128,
        _ => return None,
    };
    u64::try_from(n).ok()
}

/// The routing key and properties of an outgoing envelope; refuses what a consumer would drop.
pub fn outgoing(routing: Routing, r: &Routed) -> Result<(ShortString, BasicProperties), BusError> {
    topic::validate(&r.topic).map_err(|e| BusError::Invalid(format!("topic {:?}: {e}", r.topic)))?;
    let seq = i64::try_from(r.seq).map_err(|_| {
        BusError::Invalid(format!("seq {} of {} is above 2^63-1 (AMQP carries a signed 64-bit)", r.seq, r.topic))
    })?;
    if r.frame.is_empty() || r.frame.len() > MAX_ENVELOPE_BYTES {
        return Err(BusError::Invalid(format!(
            "frame of {} seq {} is {} bytes (1..={MAX_ENVELOPE_BYTES})",
            r.topic,
            r.seq,
            r.frame.len()
        )));
    }
    let mut headers = FieldTable::default();
    headers.insert(SEQ_HEADER.into(), AMQPValue::LongLongInt(seq));
    // Topics are at most 200 bytes of ASCII (checked above), so they fit a short string.
    let key = match routing {
        Routing::Fanout => ShortString::from(r.topic.as_str()),
        Routing::Buckets(n) => {
            headers.insert(TOPIC_HEADER.into(), AMQPValue::LongString(LongString::from(r.topic.as_str())));
            ShortString::from(buckets::routing_key(buckets::bucket_of(&r.topic, n)))
        }
    };
    Ok((key, BasicProperties::default().with_headers(headers)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(topic: &str, seq: u64, frame: &[u8]) -> Routed {
        Routed { topic: topic.into(), seq, frame: bytes::Bytes::copy_from_slice(frame) }
    }

    fn headers(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    #[test]
    fn fanout_round_trip() {
        let (key, props) = outgoing(Routing::Fanout, &routed("post:42", 7, b"\x91\x01")).expect("valid");
        assert_eq!(key.as_str(), "post:42");
        let h = props.headers().as_ref().expect("valid");
        assert_eq!(h.inner().get("seq"), Some(&AMQPValue::LongLongInt(7)));
        assert!(!h.contains_key("topic"), "fanout keeps messages small: the key is the topic");
        assert_eq!(
            incoming(Routing::Fanout, key.as_str(), Some(h), 2),
            Ok(Incoming { topic: "post:42", seq: 7, misrouted: false })
        );
    }

    #[test]
    fn buckets_round_trip() {
        let r = Routing::Buckets(1024);
        let (key, props) = outgoing(r, &routed("post:42", u64::MAX >> 1, b"x")).expect("valid");
        assert_eq!(key.as_str(), "609");
        let h = props.headers().as_ref().expect("valid");
        assert_eq!(h.inner().get("topic"), Some(&AMQPValue::LongString("post:42".into())));
        assert_eq!(
            incoming(r, key.as_str(), Some(h), 1),
            Ok(Incoming { topic: "post:42", seq: u64::MAX >> 1, misrouted: false })
        );
        // Published with another bucket count: still delivered, but flagged.
        assert!(incoming(r, "1", Some(h), 1).expect("routable").misrouted);
        // Buckets mode never takes the routing key for the topic.
        let only_seq = headers(&[("seq", AMQPValue::LongLongInt(1))]);
        assert_eq!(incoming(r, "609", Some(&only_seq), 1), Err(Invalid::Topic));
    }

    #[test]
    fn incoming_refuses_what_it_cannot_route() {
        let seq = headers(&[("seq", AMQPValue::LongLongInt(3))]);
        assert_eq!(incoming(Routing::Fanout, "", Some(&seq), 1), Err(Invalid::Topic));
        assert_eq!(incoming(Routing::Fanout, "a b", Some(&seq), 1), Err(Invalid::Topic));
        assert_eq!(incoming(Routing::Fanout, "t", None, 1), Err(Invalid::Seq));
        assert_eq!(incoming(Routing::Fanout, "t", Some(&FieldTable::default()), 1), Err(Invalid::Seq));
        for bad in [AMQPValue::LongLongInt(-1), AMQPValue::LongString("3".into()), AMQPValue::Double(3.0)] {
            assert_eq!(incoming(Routing::Fanout, "t", Some(&headers(&[("seq", bad)])), 1), Err(Invalid::Seq));
        }
        assert_eq!(incoming(Routing::Fanout, "t", Some(&seq), 0), Err(Invalid::Frame));
        assert_eq!(incoming(Routing::Fanout, "t", Some(&seq), MAX_ENVELOPE_BYTES + 1), Err(Invalid::Frame));
        let bad_utf8 =
            headers(&[("seq", AMQPValue::LongLongInt(1)), ("topic", AMQPValue::LongString(vec![0xff].into()))]);
        assert_eq!(incoming(Routing::Buckets(8), "0", Some(&bad_utf8), 1), Err(Invalid::Topic));
    }

    #[test]
    fn narrower_integer_seqs_are_accepted() {
        // php-amqplib writes small integers as 32-bit `I`; php-amqp (librabbitmq) as `l`.
        for (v, want) in [
            (AMQPValue::LongInt(5), 5),
            (AMQPValue::LongUInt(6), 6),
            (AMQPValue::ShortInt(7), 7),
            (AMQPValue::ShortShortUInt(8), 8),
            (AMQPValue::LongLongInt(i64::MAX), i64::MAX as u64),
        ] {
            let h = headers(&[("seq", v)]);
            assert_eq!(incoming(Routing::Fanout, "t", Some(&h), 1).expect("routable").seq, want);
        }
    }

    #[test]
    fn outgoing_refuses_what_consumers_would_drop() {
        assert!(matches!(outgoing(Routing::Fanout, &routed("a b", 1, b"x")), Err(BusError::Invalid(_))));
        assert!(matches!(outgoing(Routing::Fanout, &routed("t", u64::MAX, b"x")), Err(BusError::Invalid(_))));
        assert!(matches!(outgoing(Routing::Fanout, &routed("t", 1, b"")), Err(BusError::Invalid(_))));
    }
}
