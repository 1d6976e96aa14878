//! The journal: the durable log of every envelope, its outbox and its HTTP API.
//!
//! Role: the source of truth of the delivery semantics. An application appends an envelope
//! (through [`crate::app::Publisher`] in process, or `POST /v1/envelopes`); the journal assigns
//! its per-topic seq, stores the frame and an outbox row in one transaction, and the outbox
//! publisher sends it to the bus. A client that lost envelopes asks
//! `GET /v1/topics/{topic}/envelopes?after=SEQ` with its token and gets the same frames.
//!
//! # Layout
//!
//! - [`store`]: the envelope store, SQLite ([`store::sqlite`]) and PostgreSQL
//!   ([`store::postgres`]) backends, group-committed appends; `migrations/` holds the SQL.
//! - [`outbox`]: the publisher task (lease, wake-ups, retries, metrics).
//! - [`retention`]: per-topic count and age limits, pruned in small steps.
//! - [`http`]: the API, as a mountable [`http::Service`] and the `switchboard journal` server.
//! - [`id`]: envelope ids.

pub mod http;
pub mod id;
pub mod outbox;
pub mod retention;
pub mod store;

use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;

use crate::config::Config;
use crate::config::ConfigError;

pub use http::Service;
pub use outbox::{Outbox, OutboxOptions};
pub use store::{Appended, EnvelopeStore, InvalidEnvelope, NewEnvelope, ReadResult, StoreError};

/// Why the journal process could not start or stopped with an error.
#[derive(Debug, Error)]
pub enum JournalError {
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("metrics: {0}")]
    Metrics(String),
}

/// How long in-flight requests and the outbox get to finish after SIGTERM or SIGINT.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// `switchboard journal`: opens the store, starts the outbox publisher and serves the API
/// until SIGTERM or SIGINT. Prints `ready journal=<ip:port>` on stdout once listening.
pub fn run(cfg: Config) -> Result<(), JournalError> {
    let keys = cfg.tokens.load_keys()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("journal").build()?;
    rt.block_on(http::serve(cfg, keys, SHUTDOWN_GRACE))
}
