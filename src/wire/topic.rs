//! Topic names: opaque strings, usually the id of a root aggregate (`post:42`, `user:7`).
//!
//! The rule is deliberately narrow (1..=200 bytes of printable ASCII, no space) so a topic is
//! safe in a URL path segment, an AMQP routing key, a log line and a SQL parameter alike.

use std::fmt;

use thiserror::Error;

use super::limits::MAX_TOPIC_BYTES;

/// Why a string is not a valid topic.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic is {len} bytes, above the limit of {MAX_TOPIC_BYTES}")]
    TooLong { len: usize },
    #[error("topic has a byte 0x{byte:02x} at {at} outside printable ASCII (0x21..=0x7e)")]
    BadByte { byte: u8, at: usize },
}

/// Checks a topic name against the contract's rule.
pub fn validate(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong { len: s.len() });
    }
    match s.bytes().position(|b| !(0x21..=0x7e).contains(&b)) {
        Some(at) => Err(TopicError::BadByte { byte: s.as_bytes()[at], at }),
        None => Ok(()),
    }
}

/// A topic name that has passed [`validate`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(String);

impl Topic {
    pub fn new(s: impl Into<String>) -> Result<Self, TopicError> {
        let s = s.into();
        validate(&s)?;
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_boundaries() {
        validate("a").unwrap();
        validate(&"x".repeat(200)).unwrap();
        validate("post:42").unwrap();
        validate("!~").unwrap();
    }

    #[test]
    fn rejects_with_a_reason() {
        assert_eq!(validate(""), Err(TopicError::Empty));
        assert_eq!(validate(&"x".repeat(201)), Err(TopicError::TooLong { len: 201 }));
        assert_eq!(validate("a b"), Err(TopicError::BadByte { byte: b' ', at: 1 }));
        assert_eq!(validate("é"), Err(TopicError::BadByte { byte: 0xc3, at: 0 }));
        assert_eq!(validate("a\x7f"), Err(TopicError::BadByte { byte: 0x7f, at: 1 }));
    }
}
