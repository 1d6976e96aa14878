//! Switchboard: a real-time update router.
//!
//! The application stores an envelope in the journal and publishes it to the bus; the router
//! forwards it to the WebSocket clients subscribed to its topic, having checked their
//! Ed25519 tokens on subscribe. The router routes and nothing else.
//!
//! # Layout
//!
//! - [`wire`]: the contract, pure (no I/O): envelope, frames, tokens, topics, keys, bus record.
//! - [`router`]: the worker (listener, upgrade, connection, outbound queue, session, ledger,
//!   token cache, drain, metrics socket); see its Layout list.
//! - [`bus`]: how envelopes reach workers: `bus/local.rs` (Unix sockets, one host), `bus/amqp.rs`
//!   (RabbitMQ: consumer, publisher, topology, bucket routing; docs/rabbitmq.md).
//! - [`client`]: a raw WebSocket client of the frame protocol (tests, bench).
//! - [`journal`]: the durable log: store (SQLite, PostgreSQL), outbox publisher, retention,
//!   HTTP API (`docs/journal-api.md`).
//! - [`app`]: what an application links: [`app::TokenIssuer`], [`app::Publisher`].
//! - [`config`], [`metrics`] (metric names), [`telemetry`] (logs).
pub mod app;
pub mod bus;
pub mod client;
pub mod config;
pub mod journal;
pub mod metrics;
pub mod router;
pub mod telemetry;
pub mod tls;
pub mod wire;
