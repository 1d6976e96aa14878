//! Publishing from a Rust application: journal append, then the outbox publishes to the bus.
//!
//! Role: what an application server links instead of calling `POST /v1/envelopes`. It opens
//! the store itself (the same database the `switchboard journal` API serves reconciliation
//! from) and runs an outbox publisher thread. Concurrent `publish` calls are grouped into one
//! transaction by the store's writer, so many tasks publishing at once cost one commit per
//! group: that is how it sustains tens of thousands of publishes per second on SQLite.
//!
//! ```no_run
//! # async fn demo(cfg: switchboard::config::Config) -> Result<(), Box<dyn std::error::Error>> {
//! let publisher = switchboard::app::Publisher::open(&cfg.journal, &cfg.bus).await?;
//! let a = publisher.publish("post:42", "comment.created", br#"{"id":7}"#.to_vec()).await?;
//! println!("stored as seq {} ({})", a.seq, a.id);
//! publisher.close(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```

use std::time::Duration;

use thiserror::Error;

use crate::config::{BusConfig, JournalConfig};
use crate::journal::outbox::{Outbox, OutboxOptions};
use crate::journal::store::{EnvelopeStore, InvalidEnvelope, StoreError};

pub use crate::journal::store::{Appended, NewEnvelope};

/// Why a publish failed.
#[derive(Debug, Error)]
pub enum PublishError {
    /// The envelope breaks a rule (topic, kind, size); nothing was stored.
    #[error("invalid envelope: {0}")]
    Invalid(#[from] InvalidEnvelope),
    /// The store failed; nothing was stored.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The outbox thread could not start.
    #[error("cannot start the outbox publisher: {0}")]
    Outbox(std::io::Error),
}

/// An application's handle to the journal: append, and let the outbox publish.
pub struct Publisher {
    store: EnvelopeStore,
    outbox: Outbox,
}

impl Publisher {
    /// Opens the store `journal` names (migrating it) and starts publishing its outbox to `bus`.
    /// Must run inside a tokio runtime.
    pub async fn open(journal: &JournalConfig, bus: &BusConfig) -> Result<Self, PublishError> {
        let store = EnvelopeStore::open(journal).await?;
        let outbox =
            Outbox::start(store.clone(), bus, OutboxOptions::from_config(journal)).map_err(PublishError::Outbox)?;
        Ok(Self { store, outbox })
    }

    /// Stores one envelope and returns its seq, id and ts; the bus gets it right after.
    pub async fn publish(
        &self,
        topic: &str,
        kind: &str,
        payload: impl Into<Vec<u8>>,
    ) -> Result<Appended, PublishError> {
        let e = NewEnvelope::new(topic, kind, payload)?;
        let mut out = self.store.append(vec![e]).await?;
        out.pop().ok_or_else(|| StoreError::Database("append returned nothing".into()).into())
    }

    /// Stores several envelopes in one transaction (all or none); results in order.
    pub async fn publish_batch(&self, envelopes: Vec<NewEnvelope>) -> Result<Vec<Appended>, PublishError> {
        Ok(self.store.append(envelopes).await?)
    }

    /// The store, to mount [`crate::journal::http::Service`] over the same database.
    pub fn store(&self) -> &EnvelopeStore {
        &self.store
    }

    /// Whether this process is the one publishing the outbox now.
    pub fn is_outbox_leader(&self) -> bool {
        self.outbox.is_leader()
    }

    /// Publishes what is still pending (for at most `grace`) and stops the outbox.
    pub async fn close(self, grace: Duration) {
        self.outbox.close(grace).await;
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::*;
    use crate::bus::local::{Consumer, Recorder};
    use crate::journal::store::ReadResult;

    #[tokio::test(flavor = "current_thread")]
    async fn journal_app_publisher_appends_then_the_bus_gets_it() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let dir = tempfile::tempdir().unwrap();
                let rec = Rc::new(Recorder::default());
                let _worker = Consumer::start(&dir.path().join("bus"), 0, rec.clone()).unwrap();
                let journal = JournalConfig { sqlite_path: dir.path().join("j.sqlite"), ..JournalConfig::default() };
                let bus = BusConfig { local_dir: dir.path().join("bus"), ..BusConfig::default() };
                let p = Publisher::open(&journal, &bus).await.unwrap();
                let a = p.publish("post:1", "comment.created", b"{}".to_vec()).await.unwrap();
                assert_eq!((a.topic.as_str(), a.seq), ("post:1", 1));
                let batch = vec![
                    NewEnvelope::new("post:1", "k", vec![1]).unwrap(),
                    NewEnvelope::new("post:2", "k", vec![2]).unwrap(),
                ];
                let b = p.publish_batch(batch).await.unwrap();
                assert_eq!(b.iter().map(|a| a.seq).collect::<Vec<_>>(), [2, 1]);
                assert!(matches!(p.publish("a b", "k", vec![]).await, Err(PublishError::Invalid(_))));
                for _ in 0..500 {
                    if rec.got.borrow().len() >= 3 {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                let got: Vec<(String, u64)> = rec.got.borrow().iter().map(|(t, s, _)| (t.clone(), *s)).collect();
                assert_eq!(got, [("post:1".into(), 1), ("post:1".into(), 2), ("post:2".into(), 1)]);
                let ReadResult::Page(page) = p.store().read("post:1", 0, 10).await.unwrap() else { panic!() };
                assert_eq!(page.frames[0], rec.got.borrow()[0].2, "the bus carries the stored frame");
                assert!(p.is_outbox_leader());
                p.close(Duration::from_secs(2)).await;
            })
            .await;
    }
}
