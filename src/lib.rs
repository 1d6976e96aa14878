//! Switchboard: a real-time update router.
//!
//! The application stores an envelope in the journal and publishes it to the bus; the router
//! forwards it to the WebSocket clients subscribed to its topic, having checked their
//! Ed25519 tokens on subscribe. The router routes and nothing else.
//!
//! # Layout
//!
//! - [`wire`]: the contract, pure (no I/O): envelope, frames, tokens, topics, keys, bus record.
//! - [`bus`]: how envelopes reach workers: `bus/local.rs` (Unix sockets, one host), `bus/amqp.rs`
//!   (RabbitMQ: consumer, publisher, topology, bucket routing; docs/rabbitmq.md).
pub mod app;
pub mod bus;
pub mod config;
pub mod journal;
pub mod metrics;
pub mod router;
pub mod telemetry;
pub mod wire;
