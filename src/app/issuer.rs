//! Minting subscriber tokens: the application's side of authorization.
//!
//! The application runs its own business check (may this user read this post?) and, if so,
//! mints a short-lived token for exactly the topics it allows.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::wire::keys::{KeyError, SigningKeyFile, valid_kid};
use crate::wire::limits::{MAX_SUB_BYTES, MAX_TOKEN_TOPICS};
use crate::wire::token::{self, Claims};
use crate::wire::topic::{self, TopicError};

#[derive(Debug, Error)]
pub enum IssueError {
    #[error("cannot read key file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("key file {path}: {source}")]
    Key { path: PathBuf, source: KeyError },
    #[error("topic {topic:?}: {source}")]
    Topic { topic: String, source: TopicError },
    #[error("a token grants 1..={MAX_TOKEN_TOPICS} topics, not {0}")]
    TopicCount(usize),
    #[error("sub must be 1..={MAX_SUB_BYTES} bytes")]
    Sub,
    #[error("ttl must be at least one second")]
    Ttl,
}

/// Mints tokens with one signing key.
#[derive(Debug, Clone)]
pub struct TokenIssuer {
    key: SigningKeyFile,
}

impl TokenIssuer {
    pub fn new(key: SigningKeyFile) -> Self {
        Self { key }
    }

    /// Loads a secret key file (`switchboard keygen` writes one).
    pub fn from_file(path: &Path) -> Result<Self, IssueError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| IssueError::Read { path: path.to_owned(), source })?;
        let key = SigningKeyFile::parse(&text).map_err(|source| IssueError::Key { path: path.to_owned(), source })?;
        Ok(Self { key })
    }

    pub fn kid(&self) -> &str {
        &self.key.kid
    }

    /// A token for `sub` granting `topics` from `now` (seconds since the epoch) for `ttl`.
    pub fn mint(&self, sub: &str, topics: &[&str], now: u64, ttl: Duration) -> Result<String, IssueError> {
        if topics.is_empty() || topics.len() > MAX_TOKEN_TOPICS {
            return Err(IssueError::TopicCount(topics.len()));
        }
        for t in topics {
            topic::validate(t).map_err(|source| IssueError::Topic { topic: (*t).to_owned(), source })?;
        }
        if sub.is_empty() || sub.len() > MAX_SUB_BYTES {
            return Err(IssueError::Sub);
        }
        if ttl.as_secs() == 0 {
            return Err(IssueError::Ttl);
        }
        let claims = Claims {
            kid: self.key.kid.clone(),
            sub: sub.to_owned(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            iat: now,
            exp: now + ttl.as_secs(),
            nbf: None,
        };
        Ok(token::mint(&claims, &self.key.key))
    }
}

/// Why `keygen` could not write a key pair.
#[derive(Debug, Error)]
pub enum KeygenError {
    #[error("key id {0:?} must be 1..=64 bytes of [A-Za-z0-9._-]")]
    Kid(String),
    #[error("{path} already exists; refusing to overwrite a key")]
    Exists { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("no randomness from the OS: {0}")]
    Random(String),
}

/// Writes `<dir>/<kid>.secret` (mode 0600) and `<dir>/<kid>.pub`, never overwriting.
pub fn keygen(dir: &Path, kid: &str) -> Result<(PathBuf, PathBuf), KeygenError> {
    if !valid_kid(kid) {
        return Err(KeygenError::Kid(kid.to_owned()));
    }
    let secret = dir.join(format!("{kid}.secret"));
    let public = dir.join(format!("{kid}.pub"));
    for p in [&secret, &public] {
        if p.exists() {
            return Err(KeygenError::Exists { path: p.clone() });
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| KeygenError::Write { path: dir.to_owned(), source })?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeygenError::Random(e.to_string()))?;
    let key = SigningKeyFile::new(kid, seed);
    let write = |path: &PathBuf, mode: u32, text: &str| -> Result<(), KeygenError> {
        let err = |source| KeygenError::Write { path: path.clone(), source };
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeygenError::Exists { path: path.clone() }
            } else {
                err(e)
            }
        })?;
        f.write_all(text.as_bytes()).map_err(err)
    };
    write(&secret, 0o600, &key.to_text())?;
    write(&public, 0o644, &key.public_text())?;
    Ok((secret, public))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{KeySet, TokenPolicy};

    #[test]
    fn keygen_then_mint_then_verify() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = keygen(dir.path(), "k1").unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(matches!(keygen(dir.path(), "k1"), Err(KeygenError::Exists { .. })));
        assert!(matches!(keygen(dir.path(), "../x"), Err(KeygenError::Kid(_))));
        let issuer = TokenIssuer::from_file(&secret).unwrap();
        let t = issuer.mint("user:1", &["post:1"], 1000, Duration::from_secs(60)).unwrap();
        let keys = KeySet::parse(&std::fs::read_to_string(public).unwrap()).unwrap();
        let c = token::verify(&t, &keys, 1010, &TokenPolicy::default()).unwrap();
        assert_eq!((c.sub.as_str(), c.exp), ("user:1", 1060));
        assert!(matches!(issuer.mint("u", &["bad topic"], 0, Duration::from_secs(1)), Err(IssueError::Topic { .. })));
        assert!(matches!(issuer.mint("u", &[], 0, Duration::from_secs(1)), Err(IssueError::TopicCount(0))));
    }
}
