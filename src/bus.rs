//! How envelopes reach every router worker: the local bus (one host) or RabbitMQ.
//!
//! Both carry the same three parts: topic and seq beside the envelope frame bytes, so a
//! worker routes without decoding. A worker starts a consumer with [`start`] and receives
//! envelopes through its [`Ingress`]; application-side code publishes through [`Publisher`].

pub mod amqp;
pub mod local;

use std::rc::Rc;

use bytes::Bytes;
use thiserror::Error;

use crate::config::{BusConfig, BusKind};

/// One envelope as the bus carries it: routing fields beside the frame bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub topic: String,
    pub seq: u64,
    /// The envelope frame, exactly as clients receive it.
    pub frame: Bytes,
}

/// What a router worker does with what its bus brings. Called on the worker's thread only.
pub trait Ingress {
    /// An envelope arrived for `topic`; `frame` is forwarded to subscribers untouched.
    fn deliver(&self, topic: &str, seq: u64, frame: Bytes);
    /// The bus connection went down (`false`) or came (back) up (`true`). After a
    /// down-then-up, envelopes may have been missed: the worker sends `resync`.
    fn bus_state(&self, up: bool);
}

/// Why the bus failed. Every variant's message names the broker by host, port and vhost,
/// never by its credentials.
#[derive(Debug, Error)]
pub enum BusError {
    #[error("local bus: {0}")]
    Local(#[from] std::io::Error),
    /// Any other AMQP failure.
    #[error("amqp bus: {0}")]
    Amqp(String),
    /// The broker nacked a message (it could not take it, e.g. a full queue with reject-publish).
    #[error("the broker refused the message: {0}")]
    Refused(String),
    /// The broker could not be reached or the connection to it was lost (DNS, TCP, handshake,
    /// missed heartbeats, connect timeout). Retrying later may work.
    #[error("cannot reach the broker at {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    /// The broker refused the credentials or the vhost (ACCESS_REFUSED, NOT_ALLOWED): a
    /// configuration problem, retrying will not help.
    #[error("the broker at {endpoint} refused access: {reason}")]
    AccessRefused { endpoint: String, reason: String },
    /// The broker closed the channel or connection with an AMQP reply code (e.g. 406
    /// PRECONDITION_FAILED when an exchange exists with another type, 320 CONNECTION_FORCED
    /// when an operator closed it); code 0 when the channel was already closed.
    #[error("the broker closed the channel ({code}): {reason}")]
    Closed { code: u16, reason: String },
    /// The broker did not confirm a batch in time (e.g. it blocks publishers on a memory or
    /// disk alarm). Some of the batch may have been delivered.
    #[error("the broker did not confirm within {0:?}")]
    Timeout(std::time::Duration),
    /// The envelope cannot travel on this bus (bad topic, seq or frame size).
    #[error("cannot publish: {0}")]
    Invalid(String),
}

impl BusError {
    /// True for errors that retrying cannot fix (configuration or input), as opposed to a
    /// broker that is down, restarting or busy.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            BusError::AccessRefused { .. }
                | BusError::Invalid(_)
                | BusError::Closed { code: 403 | 404 | 406 | 530, .. }
        )
    }
}

/// A worker's running consumer. Dropping it stops consuming.
pub enum Consumer {
    Local(local::Consumer),
    Amqp(amqp::Consumer),
}

impl Consumer {
    /// The worker gained its first subscriber of `topic` (used by bucket routing).
    pub fn watch(&self, topic: &str) {
        if let Consumer::Amqp(c) = self {
            c.watch(topic)
        }
    }

    /// The worker lost its last subscriber of `topic`.
    pub fn unwatch(&self, topic: &str) {
        if let Consumer::Amqp(c) = self {
            c.unwatch(topic)
        }
    }
}

/// Starts worker `index`'s consumer on the current thread's `LocalSet`.
pub async fn start(cfg: &BusConfig, index: usize, ingress: Rc<dyn Ingress>) -> Result<Consumer, BusError> {
    match cfg.kind {
        BusKind::Local => Ok(Consumer::Local(local::Consumer::start(&cfg.local_dir, index, ingress)?)),
        BusKind::Amqp => Ok(Consumer::Amqp(amqp::Consumer::start(cfg, index, ingress).await?)),
    }
}

/// Publishes routed envelopes to every worker (application side: journal outbox, CLI).
pub enum Publisher {
    Local(local::Publisher),
    /// Boxed: it is several hundred bytes (URL, names) and the local one is small.
    Amqp(Box<amqp::Publisher>),
}

impl Publisher {
    /// Connects now, so a wrong URL or an unreachable broker is reported at once.
    pub async fn connect(cfg: &BusConfig) -> Result<Self, BusError> {
        match cfg.kind {
            BusKind::Local => Ok(Publisher::Local(local::Publisher::new(&cfg.local_dir))),
            BusKind::Amqp => Ok(Publisher::Amqp(Box::new(amqp::Publisher::connect(cfg).await?))),
        }
    }

    /// Checks the configuration but connects on the first publish (for an outbox that must
    /// start while the broker is down). Failures then surface from [`Publisher::publish`].
    pub fn lazy(cfg: &BusConfig) -> Result<Self, BusError> {
        match cfg.kind {
            BusKind::Local => Ok(Publisher::Local(local::Publisher::new(&cfg.local_dir))),
            BusKind::Amqp => Ok(Publisher::Amqp(Box::new(amqp::Publisher::lazy(cfg)?))),
        }
    }

    /// Closes the connection politely (AMQP connection.close) instead of dropping it.
    pub async fn close(self) {
        if let Publisher::Amqp(p) = self {
            p.close().await
        }
    }

    /// Publishes a batch, in order. `Ok` means the bus took every one (broker confirms for
    /// AMQP; written to every live worker socket for the local bus).
    pub async fn publish(&mut self, batch: &[Routed]) -> Result<(), BusError> {
        match self {
            Publisher::Local(p) => p.publish(batch).await,
            Publisher::Amqp(p) => p.publish(batch).await,
        }
    }
}

/// Why `publish_one` failed.
#[derive(Debug, Error)]
pub enum PublishOneError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// Encodes and publishes one envelope on a throwaway runtime (the `publish` command); returns
/// a note for the operator. Envelopes published this way are not in the journal.
pub fn publish_one(
    cfg: &BusConfig,
    topic: &str,
    seq: u64,
    kind: &str,
    payload: Vec<u8>,
) -> Result<String, PublishOneError> {
    crate::wire::envelope::validate_fields(topic, kind, payload.len())
        .map_err(|e| PublishOneError::Invalid(e.to_string()))?;
    let ts =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let id = format!("cli-{ts}-{seq}");
    let env = crate::wire::EnvelopeRef { topic, seq, id: &id, ts, kind, payload: &payload };
    let routed = Routed { topic: topic.to_owned(), seq, frame: Bytes::from(env.encode()) };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(BusError::Local)?;
    rt.block_on(async {
        match cfg.kind {
            BusKind::Local => {
                let mut p = local::Publisher::new(&cfg.local_dir);
                let n = p.publish_counted(std::slice::from_ref(&routed)).await?;
                Ok(format!(" to {n} local worker(s)"))
            }
            BusKind::Amqp => {
                let mut p = Publisher::connect(cfg).await?;
                let r = p.publish(std::slice::from_ref(&routed)).await;
                p.close().await;
                r?;
                Ok(format!(" to the amqp exchange {}", amqp::publish_exchange(cfg)))
            }
        }
    })
}
