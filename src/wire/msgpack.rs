//! A strict, allocation-free MessagePack reader for the handful of types the contract uses.
//!
//! Why not serde here: the decoders must tell apart truncated input, a wrong type and trailing
//! bytes, with the position, and must never allocate on behalf of a length they have not yet
//! checked. Writing goes through `rmp::encode`, which always picks the shortest encoding, so
//! encoded bytes are canonical and the SPEC.md vectors are stable.

use thiserror::Error;

/// Why bytes are not the MessagePack the contract expects.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("input ends early at byte {at}")]
    Truncated { at: usize },
    #[error("expected {expected} at byte {at}")]
    WrongType { expected: &'static str, at: usize },
    #[error("string at byte {at} is not valid UTF-8")]
    InvalidUtf8 { at: usize },
    #[error("{what} is {len} long, above the limit of {max}")]
    TooLong { what: &'static str, len: usize, max: usize },
    #[error("{extra} unexpected bytes after the value")]
    TrailingBytes { extra: usize },
    #[error("array has {got} elements, expected {expected}")]
    WrongArity { got: usize, expected: &'static str },
}

/// A cursor over a byte slice; every read checks bounds and types.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The unread rest.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    /// Fails unless every byte was consumed.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes { extra }),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(DecodeError::Truncated { at: self.buf.len() }),
        }
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn be(&mut self, n: usize) -> Result<u64, DecodeError> {
        Ok(self.take(n)?.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    fn peek(&self) -> Result<u8, DecodeError> {
        self.buf.get(self.pos).copied().ok_or(DecodeError::Truncated { at: self.pos })
    }

    /// True when the next value is `nil` (and consumes it).
    pub fn nil(&mut self) -> Result<bool, DecodeError> {
        if self.peek()? == 0xc0 {
            self.pos += 1;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    pub fn array_len(&mut self) -> Result<usize, DecodeError> {
        let at = self.pos;
        let len = match self.byte()? {
            b @ 0x90..=0x9f => u64::from(b & 0x0f),
            0xdc => self.be(2)?,
            0xdd => self.be(4)?,
            _ => return Err(DecodeError::WrongType { expected: "array", at }),
        };
        // An element takes at least one byte: a length above what is left is a lie.
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > self.buf.len() - self.pos {
            return Err(DecodeError::Truncated { at: self.buf.len() });
        }
        Ok(len)
    }

    /// An unsigned integer in any encoding (a non-negative signed encoding is accepted too).
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        let at = self.pos;
        let v = match self.byte()? {
            b @ 0x00..=0x7f => u64::from(b),
            0xcc => self.be(1)?,
            0xcd => self.be(2)?,
            0xce => self.be(4)?,
            0xcf => self.be(8)?,
            m @ 0xd0..=0xd3 => {
                let n = 1usize << (m - 0xd0);
                let raw = self.be(n)?;
                let shift = 64 - 8 * n as u32;
                let signed = ((raw << shift) as i64) >> shift;
                u64::try_from(signed).map_err(|_| DecodeError::WrongType { expected: "unsigned integer", at })?
            }
            _ => return Err(DecodeError::WrongType { expected: "unsigned integer", at }),
        };
        Ok(v)
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let at = self.pos;
        let v = self.u64()?;
        u32::try_from(v).map_err(|_| DecodeError::WrongType { expected: "32-bit unsigned integer", at })
    }

    pub fn str(&mut self, what: &'static str, max: usize) -> Result<&'a str, DecodeError> {
        let at = self.pos;
        let len = match self.byte()? {
            b @ 0xa0..=0xbf => usize::from(b & 0x1f),
            0xd9 => self.be(1)? as usize,
            0xda => self.be(2)? as usize,
            0xdb => self.be(4)? as usize,
            _ => return Err(DecodeError::WrongType { expected: "string", at }),
        };
        if len > max {
            return Err(DecodeError::TooLong { what, len, max });
        }
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8 { at })
    }

    pub fn bin(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let at = self.pos;
        let len = match self.byte()? {
            0xc4 => self.be(1)? as usize,
            0xc5 => self.be(2)? as usize,
            0xc6 => self.be(4)? as usize,
            _ => return Err(DecodeError::WrongType { expected: "binary", at }),
        };
        if len > max {
            return Err(DecodeError::TooLong { what, len, max });
        }
        self.take(len)
    }
}

/// Writers over `Vec<u8>`: infallible, so the `Result`s of `rmp::encode` are absorbed here once.
pub mod write {
    use rmp::encode;

    // Writing into a Vec<u8> cannot fail (it only grows), which is why the results are ignored.
    pub fn array_len(out: &mut Vec<u8>, n: u32) {
        let _ = encode::write_array_len(out, n);
    }
    pub fn uint(out: &mut Vec<u8>, v: u64) {
        let _ = encode::write_uint(out, v);
    }
    pub fn str(out: &mut Vec<u8>, s: &str) {
        let _ = encode::write_str(out, s);
    }
    pub fn bin(out: &mut Vec<u8>, b: &[u8]) {
        let _ = encode::write_bin(out, b);
    }
    pub fn nil(out: &mut Vec<u8>) {
        let _ = encode::write_nil(out);
    }
    pub fn opt_uint(out: &mut Vec<u8>, v: Option<u64>) {
        match v {
            Some(v) => uint(out, v),
            None => nil(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_int_encoding() {
        for (bytes, v) in [
            (&[0x05][..], 5u64),
            (&[0xcc, 0xff], 255),
            (&[0xcd, 0x01, 0x00], 256),
            (&[0xce, 0, 1, 0, 0], 65536),
            (&[0xcf, 0, 0, 0, 1, 0, 0, 0, 0], 1 << 32),
            (&[0xd0, 0x05], 5),
        ] {
            let mut r = Reader::new(bytes);
            assert_eq!(r.u64().unwrap(), v);
            r.finish().unwrap();
        }
        assert!(matches!(Reader::new(&[0xff]).u64(), Err(DecodeError::WrongType { .. })));
        assert!(matches!(Reader::new(&[0xd0, 0xff]).u64(), Err(DecodeError::WrongType { .. })));
        assert!(matches!(Reader::new(&[0xcd, 0x01]).u64(), Err(DecodeError::Truncated { .. })));
    }

    #[test]
    fn array_length_cannot_exceed_input() {
        assert!(matches!(Reader::new(&[0xdd, 0xff, 0xff, 0xff, 0xff]).array_len(), Err(DecodeError::Truncated { .. })));
    }

    #[test]
    fn strings_are_bounded_before_reading() {
        let mut r = Reader::new(&[0xdb, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(r.str("topic", 200), Err(DecodeError::TooLong { .. })));
        assert!(matches!(Reader::new(&[0xa2, 0xff, 0xfe]).str("s", 9), Err(DecodeError::InvalidUtf8 { .. })));
    }
}
