//! Token checks for subscribe: a cache of verified tokens and batched Ed25519 verification.
//!
//! A signature check costs tens of microseconds, the rest of a subscribe almost nothing, so a
//! reconnect storm is a verification storm. Two things absorb it: verified tokens are cached
//! by their text until they expire (a client that reconnects, or subscribes to several
//! topics with one token, costs one verify), and cache misses queued in the same turn of the
//! event loop are verified together with `wire::token::verify_many` (one batch equation for
//! all of them, duplicates verified once).
//!
//! Invariants: the cache only holds tokens verified with the current key set (a reload
//! empties it); every cached entry is re-checked against the clock on each use.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use tokio::sync::{Notify, oneshot};

use crate::wire::KeySet;
use crate::wire::token::{self, Claims, TokenError, TokenPolicy};

/// Most tokens cached per worker; beyond it new tokens are verified but not cached.
pub const MAX_CACHED: usize = 100_000;

/// Most tokens verified in one batch (bounds the time the worker spends in one go: ~2 ms).
pub const MAX_BATCH: usize = 64;

type Reply = oneshot::Sender<Result<Rc<Claims>, TokenError>>;

/// A worker's verifier.
pub struct Auth {
    keys: RefCell<Rc<KeySet>>,
    policy: Cell<TokenPolicy>,
    cache: RefCell<HashMap<Box<str>, Rc<Claims>>>,
    /// Cache misses waiting for the next batch.
    pending: RefCell<Vec<(String, Reply)>>,
    wake: Notify,
    /// Signatures checked (for tests and the log).
    pub verified: Cell<u64>,
}

impl Auth {
    pub fn new(keys: KeySet, policy: TokenPolicy) -> Self {
        Self {
            keys: RefCell::new(Rc::new(keys)),
            policy: Cell::new(policy),
            cache: RefCell::new(HashMap::new()),
            pending: RefCell::new(Vec::new()),
            wake: Notify::new(),
            verified: Cell::new(0),
        }
    }

    pub fn policy(&self) -> TokenPolicy {
        self.policy.get()
    }

    /// Swaps the key set (SIGHUP): tokens verified with the old keys must be verified again.
    pub fn set_keys(&self, keys: KeySet) {
        *self.keys.borrow_mut() = Rc::new(keys);
        self.cache.borrow_mut().clear();
    }

    /// Verifies `text` at `now` (seconds): from the cache, or in the next batch.
    pub async fn verify(&self, text: &str, now: impl Fn() -> u64) -> Result<Rc<Claims>, TokenError> {
        if let Some(c) = self.cache.borrow().get(text) {
            c.check_times(now(), &self.policy.get())?;
            return Ok(c.clone());
        }
        if text.len() > crate::wire::limits::MAX_TOKEN_TEXT_BYTES {
            return Err(TokenError::TooLarge { len: text.len(), max: crate::wire::limits::MAX_TOKEN_TEXT_BYTES });
        }
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().push((text.to_owned(), tx));
        self.wake.notify_one();
        match rx.await {
            Ok(r) => r,
            // The batch task is gone: the worker is shutting down.
            Err(_) => Err(TokenError::Malformed("the router is shutting down".into())),
        }
    }

    /// Drops cached tokens that expired before `now`.
    pub fn sweep(&self, now: u64) {
        let skew = self.policy.get().skew_secs;
        self.cache.borrow_mut().retain(|_, c| c.exp.saturating_add(skew) >= now);
    }

    pub fn cached(&self) -> usize {
        self.cache.borrow().len()
    }

    /// Verifies the queued cache misses, batch after batch, until the task is dropped.
    pub async fn run_batches(self: Rc<Self>, now: impl Fn() -> u64) {
        loop {
            self.wake.notified().await;
            // Let every reader woken in this turn queue its token first.
            tokio::task::yield_now().await;
            loop {
                let batch: Vec<(String, Reply)> = {
                    let mut p = self.pending.borrow_mut();
                    let n = p.len().min(MAX_BATCH);
                    p.drain(..n).collect()
                };
                if batch.is_empty() {
                    break;
                }
                self.verify_batch(batch, now());
                tokio::task::yield_now().await;
            }
        }
    }

    fn verify_batch(&self, batch: Vec<(String, Reply)>, now: u64) {
        let mut unique: Vec<&str> = Vec::with_capacity(batch.len());
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(batch.len());
        for (t, _) in &batch {
            index.entry(t.as_str()).or_insert_with(|| {
                unique.push(t.as_str());
                unique.len() - 1
            });
        }
        let keys = self.keys.borrow().clone();
        let policy = self.policy.get();
        let results: Vec<Result<Rc<Claims>, TokenError>> =
            token::verify_many(&unique, &keys, now, &policy).into_iter().map(|r| r.map(Rc::new)).collect();
        self.verified.set(self.verified.get() + unique.len() as u64);
        {
            let mut cache = self.cache.borrow_mut();
            for (t, r) in unique.iter().zip(&results) {
                if let Ok(c) = r
                    && cache.len() < MAX_CACHED
                {
                    cache.insert((*t).into(), c.clone());
                }
            }
        }
        let slots: Vec<Option<usize>> = batch.iter().map(|(t, _)| index.get(t.as_str()).copied()).collect();
        for ((_, reply), slot) in batch.into_iter().zip(slots) {
            let r = slot.map_or_else(|| Err(TokenError::Malformed("lost in the batch".into())), |i| results[i].clone());
            let _ = reply.send(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn setup() -> (Rc<Auth>, SigningKey) {
        let sk = SigningKey::from_bytes(&[3; 32]);
        let mut keys = KeySet::default();
        keys.insert("k", sk.verifying_key()).unwrap();
        (Rc::new(Auth::new(keys, TokenPolicy { skew_secs: 0, max_ttl_secs: 600 })), sk)
    }

    fn mint(sk: &SigningKey, sub: &str, exp: u64) -> String {
        let c = Claims { kid: "k".into(), sub: sub.into(), topics: vec!["t".into()], iat: 1000, exp, nbf: None };
        token::mint(&c, sk)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn batches_dedupes_and_caches() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let (auth, sk) = setup();
                tokio::task::spawn_local(auth.clone().run_batches(|| 1001));
                let a = mint(&sk, "a", 1100);
                let b = mint(&sk, "b", 1100);
                let forged = mint(&SigningKey::from_bytes(&[4; 32]), "c", 1100);
                let texts = [a.clone(), a.clone(), b.clone(), forged, a.clone()];
                let futs = texts.iter().map(|t| {
                    let auth = auth.clone();
                    let t = t.clone();
                    tokio::task::spawn_local(async move { auth.verify(&t, || 1001).await })
                });
                let mut results = Vec::new();
                for f in futs.collect::<Vec<_>>() {
                    results.push(f.await.unwrap());
                }
                assert!(results[0].is_ok() && results[1].is_ok() && results[2].is_ok() && results[4].is_ok());
                assert_eq!(results[3].as_ref().unwrap_err().code(), "token_bad_signature");
                assert_eq!(auth.verified.get(), 3, "duplicates are verified once");
                assert_eq!(auth.cached(), 2);
                // From the cache: no new signature check, but the clock still applies.
                assert!(auth.verify(&a, || 1050).await.is_ok());
                assert_eq!(auth.verify(&a, || 1101).await.unwrap_err().code(), "token_expired");
                assert_eq!(auth.verified.get(), 3);
                auth.sweep(1101);
                assert_eq!(auth.cached(), 0);
                auth.set_keys(KeySet::default());
                assert_eq!(auth.verify(&b, || 1001).await.unwrap_err().code(), "token_unknown_kid");
            })
            .await;
    }
}
