//! Key files and the verifying key set.
//!
//! Text formats, one key per line, so that any language can read and write them (SPEC.md,
//! "Key files"); `#` starts a comment line:
//!
//! ```text
//! switchboard-ed25519-secret-v1 <kid> <base64url 32-byte seed>      (signing key, mode 0600)
//! switchboard-ed25519-public-v1 <kid> <base64url 32-byte public key>
//! ```
//!
//! A key set holds several public keys by kid, which is how keys rotate: publish the new kid
//! next to the old, switch the issuer, remove the old once its tokens have expired. Keys are
//! decoded once, when loaded (point decompression costs ~6 us, too much per token).

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{SigningKey, VerifyingKey};
use thiserror::Error;

use super::limits::MAX_KID_BYTES;

pub const SECRET_TAG: &str = "switchboard-ed25519-secret-v1";
pub const PUBLIC_TAG: &str = "switchboard-ed25519-public-v1";

/// Why key text was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    #[error("line {line}: expected `<tag> <kid> <base64url key>`")]
    Shape { line: usize },
    #[error("line {line}: unknown tag {tag:?} (expected {expected})")]
    Tag { line: usize, tag: String, expected: &'static str },
    #[error("line {line}: key id {kid:?} must be 1..={MAX_KID_BYTES} bytes of [A-Za-z0-9._-]")]
    Kid { line: usize, kid: String },
    #[error("line {line}: key is not 32 bytes of base64url")]
    Encoding { line: usize },
    #[error("line {line}: not a valid Ed25519 public key")]
    Point { line: usize },
    #[error("key id {0:?} appears twice")]
    DuplicateKid(String),
    #[error("no key found")]
    Empty,
}

/// Whether `kid` is a usable key id (it also names files, hence the narrow alphabet).
pub fn valid_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= MAX_KID_BYTES
        && kid.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// One key line that parsed: its 1-based line number in the text, kid and raw key bytes.
struct KeyLine {
    line: usize,
    kid: String,
    bytes: [u8; 32],
}

fn lines<'a>(text: &'a str, tag: &'static str) -> impl Iterator<Item = Result<KeyLine, KeyError>> + 'a {
    text.lines().enumerate().filter_map(move |(i, l)| {
        let line = i + 1;
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') {
            return None;
        }
        let parts: Vec<&str> = l.split_whitespace().collect();
        let [t, kid, key] = parts[..] else {
            return Some(Err(KeyError::Shape { line }));
        };
        if t != tag {
            return Some(Err(KeyError::Tag { line, tag: t.to_owned(), expected: tag }));
        }
        if !valid_kid(kid) {
            return Some(Err(KeyError::Kid { line, kid: kid.to_owned() }));
        }
        let bytes = URL_SAFE_NO_PAD.decode(key).ok().and_then(|b| <[u8; 32]>::try_from(b).ok());
        Some(bytes.map(|bytes| KeyLine { line, kid: kid.to_owned(), bytes }).ok_or(KeyError::Encoding { line }))
    })
}

/// A signing key with its kid: what the application (token issuer) holds.
#[derive(Clone)]
pub struct SigningKeyFile {
    pub kid: String,
    pub key: SigningKey,
}

impl std::fmt::Debug for SigningKeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyFile").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl SigningKeyFile {
    pub fn new(kid: &str, seed: [u8; 32]) -> Self {
        Self { kid: kid.to_owned(), key: SigningKey::from_bytes(&seed) }
    }

    /// Parses the secret key text (exactly one key).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let mut it = lines(text, SECRET_TAG);
        let first = it.next().ok_or(KeyError::Empty)??;
        if let Some(extra) = it.next() {
            return Err(KeyError::Shape { line: extra?.line });
        }
        Ok(Self::new(&first.kid, first.bytes))
    }

    /// The secret key text.
    pub fn to_text(&self) -> String {
        format!("{SECRET_TAG} {} {}\n", self.kid, URL_SAFE_NO_PAD.encode(self.key.to_bytes()))
    }

    /// The matching public key text.
    pub fn public_text(&self) -> String {
        public_line(&self.kid, &self.key.verifying_key())
    }
}

/// One public key line.
pub fn public_line(kid: &str, key: &VerifyingKey) -> String {
    format!("{PUBLIC_TAG} {kid} {}\n", URL_SAFE_NO_PAD.encode(key.to_bytes()))
}

/// The public keys a verifier trusts, by kid.
#[derive(Clone, Default, Debug)]
pub struct KeySet {
    keys: HashMap<String, VerifyingKey>,
}

impl KeySet {
    /// Parses public key text (one or more key lines; none at all is [`KeyError::Empty`],
    /// since a verifier without keys refuses every token).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let mut set = KeySet::default();
        for item in lines(text, PUBLIC_TAG) {
            let KeyLine { line, kid, bytes } = item?;
            let vk = VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::Point { line })?;
            set.insert(&kid, vk)?;
        }
        if set.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(set)
    }

    /// Adds a key; a kid may appear once.
    pub fn insert(&mut self, kid: &str, key: VerifyingKey) -> Result<(), KeyError> {
        if self.keys.insert(kid.to_owned(), key).is_some() {
            return Err(KeyError::DuplicateKid(kid.to_owned()));
        }
        Ok(())
    }

    /// Merges another set into this one (duplicate kids refused).
    pub fn extend(&mut self, other: KeySet) -> Result<(), KeyError> {
        for (kid, key) in other.keys {
            self.insert(&kid, key)?;
        }
        Ok(())
    }

    pub fn get(&self, kid: &str) -> Option<&VerifyingKey> {
        self.keys.get(kid)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Key ids, sorted (for logs and `check-config`).
    pub fn kids(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_both_formats() {
        let k = SigningKeyFile::new("k1", [7; 32]);
        let again = SigningKeyFile::parse(&k.to_text()).unwrap();
        assert_eq!(again.key.to_bytes(), [7; 32]);
        let set = KeySet::parse(&format!(
            "# rotation\n{}{}",
            k.public_text(),
            SigningKeyFile::new("k2", [8; 32]).public_text()
        ))
        .unwrap();
        assert_eq!(set.kids(), ["k1", "k2"]);
        assert_eq!(set.get("k1"), Some(&k.key.verifying_key()));
    }

    #[test]
    fn refuses_bad_text_with_the_line() {
        assert_eq!(KeySet::parse("\nfoo bar").unwrap_err(), KeyError::Shape { line: 2 });
        assert!(matches!(
            KeySet::parse(&SigningKeyFile::new("k", [1; 32]).to_text()),
            Err(KeyError::Tag { line: 1, .. })
        ));
        assert_eq!(
            KeySet::parse(&format!("{PUBLIC_TAG} k/1 AAAA")).unwrap_err(),
            KeyError::Kid { line: 1, kid: "k/1".into() }
        );
        assert_eq!(KeySet::parse(&format!("{PUBLIC_TAG} k1 AAAA")).unwrap_err(), KeyError::Encoding { line: 1 });
        let dup = SigningKeyFile::new("k1", [1; 32]).public_text().repeat(2);
        assert_eq!(KeySet::parse(&dup).unwrap_err(), KeyError::DuplicateKid("k1".into()));
        assert_eq!(SigningKeyFile::parse("# nothing").unwrap_err(), KeyError::Empty);
    }

    #[test]
    fn line_numbers_count_comments_and_blanks() {
        // Regression: these used to count key lines only (Point) or assume line 2 (Shape).
        let not_a_point = (0u8..=255).map(|b| [b; 32]).find(|k| VerifyingKey::from_bytes(k).is_err()).unwrap();
        let text = format!("# keys\n\n{PUBLIC_TAG} k1 {}\n", URL_SAFE_NO_PAD.encode(not_a_point));
        assert_eq!(KeySet::parse(&text).unwrap_err(), KeyError::Point { line: 3 });
        let two = format!(
            "{}# second\n{}",
            SigningKeyFile::new("k1", [1; 32]).to_text(),
            SigningKeyFile::new("k2", [2; 32]).to_text()
        );
        assert_eq!(SigningKeyFile::parse(&two).unwrap_err(), KeyError::Shape { line: 3 });
    }

    #[test]
    fn a_public_key_file_without_keys_is_refused() {
        assert_eq!(KeySet::parse("").unwrap_err(), KeyError::Empty);
        assert_eq!(KeySet::parse("# none yet\n\n").unwrap_err(), KeyError::Empty);
    }
}
