//! What the bus declares on the broker, and the names it uses (docs/rabbitmq.md).
//!
//! - the fan-out exchange `<exchange>` (durable): every bound queue gets every envelope;
//! - in buckets routing, the direct exchange `<exchange>.buckets` (durable) instead;
//! - per worker connection, an exclusive, auto-delete queue `switchboard.<host>.<worker>.<nonce>`
//!   bounded with `x-max-length` + `x-overflow: drop-head`.
//!
//! Queue names are chosen by the client, never by the broker: lapin's recovery re-declares a
//! broker-named `amq.gen-*` queue and gets ACCESS_REFUSED (tech-notes section 2). Each
//! connection takes a fresh nonce: the previous exclusive queue dies with its connection, but
//! the broker may not have noticed a dead connection yet, and re-declaring the same exclusive
//! name from a new connection would fail with RESOURCE_LOCKED until it does.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use super::message::Routing;

/// The exchange envelopes are published to and queues bind to, for a routing mode.
pub fn exchange_for(exchange: &str, routing: Routing) -> String {
    match routing {
        Routing::Fanout => exchange.to_owned(),
        Routing::Buckets(_) => format!("{exchange}.buckets"),
    }
}

/// The queue (and connection) name of worker `index` on `host` for one connection.
pub fn queue_name(host: &str, index: usize, nonce: &str) -> String {
    format!("switchboard.{host}.{index}.{nonce}")
}

/// Declares the exchange of `routing` (idempotent; fails with PRECONDITION_FAILED when an
/// exchange of that name exists with another type or durability).
pub async fn declare_exchange(ch: &Channel, name: &str, routing: Routing) -> lapin::Result<()> {
    let kind = match routing {
        Routing::Fanout => ExchangeKind::Fanout,
        Routing::Buckets(_) => ExchangeKind::Direct,
    };
    let opts = ExchangeDeclareOptions { durable: true, ..Default::default() };
    ch.exchange_declare(name.into(), kind, opts, FieldTable::default()).await
}

/// Declares a worker's queue: exclusive (only this connection consumes it, and the broker
/// deletes it when the connection ends), auto-delete, and bounded at the broker.
pub async fn declare_queue(ch: &Channel, name: &str, max_length: u32) -> lapin::Result<()> {
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(max_length as i64));
    // Drop the oldest: a lagging worker keeps the newest envelopes; clients reconcile the rest.
    args.insert("x-overflow".into(), AMQPValue::LongString(LongString::from("drop-head")));
    let opts = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
    ch.queue_declare(name.into(), opts, args).await.map(|_| ())
}

pub async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) -> lapin::Result<()> {
    ch.queue_bind(queue.into(), exchange.into(), key.into(), QueueBindOptions::default(), FieldTable::default()).await
}

pub async fn unbind(ch: &Channel, queue: &str, exchange: &str, key: &str) -> lapin::Result<()> {
    ch.queue_unbind(queue.into(), exchange.into(), key.into(), FieldTable::default()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(exchange_for("sb", Routing::Fanout), "sb");
        assert_eq!(exchange_for("sb", Routing::Buckets(8)), "sb.buckets");
        assert_eq!(queue_name("web-1", 3, "0a1b2c3d"), "switchboard.web-1.3.0a1b2c3d");
    }
}
