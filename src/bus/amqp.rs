//! The RabbitMQ bus (lapin): one exclusive queue per worker bound to a fan-out exchange.
//!
//! Two sides. A router worker runs a [`Consumer`] on its own thread: it owns one AMQP
//! connection, hands every delivery to the worker's [`Ingress`](super::Ingress) without copying
//! the frame, and reconnects by itself, reporting the bus down and up so the worker can tell its
//! clients to resync. The application side (journal outbox, `switchboard publish`) uses a
//! [`Publisher`]: batches with publisher confirms, `Ok` only once the broker took everything.
//!
//! # Layout
//!
//! - `consumer.rs`: a worker's connection, its reconnect loop, ack batching, bucket binder;
//! - `publisher.rs`: confirmed batch publishing, typed errors, reconnect on the next call;
//! - `topology.rs`: exchange, queue and binding declarations and names;
//! - `message.rs`: how an envelope maps onto routing key, headers and body;
//! - `buckets.rs`: the bucket hash and a worker's wanted buckets;
//! - `backoff.rs`: reconnect delays (exponential, full jitter).
//!
//! lapin runs one I/O thread per connection but drives its work through the runtime that
//! connected it, so a connection must be made after fork, inside the runtime that uses it
//! (tech-notes section 3). Reconnection is a manual loop, not lapin's auto-recover: that one
//! is racy from the consumer's side and would not tell the worker that envelopes were missed.

mod backoff;
pub mod buckets;
mod consumer;
mod message;
mod publisher;
mod topology;

#[cfg(test)]
mod tests;

use std::time::Duration;

use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties, ErrorKind};

pub use consumer::{Consumer, ConsumerStats};
pub use message::{SEQ_HEADER, TOPIC_HEADER};
pub use publisher::Publisher;

use super::BusError;
use crate::config::{BusConfig, BusRouting};
use message::Routing;

/// Where to connect, and how to name it in errors (host, port and vhost; never the password).
#[derive(Clone)]
struct Target {
    uri: AMQPUri,
    endpoint: String,
    connect_timeout: Duration,
}

impl Target {
    fn new(cfg: &BusConfig) -> Result<Self, BusError> {
        let mut uri: AMQPUri = cfg
            .amqp_url
            .parse()
            .map_err(|e| BusError::Invalid(format!("bus.amqp_url is not a valid AMQP URL: {e}")))?;
        // amq-protocol-uri 10.6 takes the host from `Url::domain()`, which is None for an IP
        // literal, and then silently falls back to "localhost": `amqp://10.0.0.5/` would connect
        // to this machine. Take the host from the URL ourselves.
        if let Some(host) = url_host(&cfg.amqp_url) {
            uri.authority.host = host;
        }
        if uri.query.heartbeat.is_none() {
            uri.query.heartbeat = Some(cfg.heartbeat_secs);
        }
        let endpoint = format!("{}:{} (vhost {})", uri.authority.host, uri.authority.port, uri.vhost);
        Ok(Self { uri, endpoint, connect_timeout: Duration::from_secs(cfg.connect_timeout_secs) })
    }

    /// Opens a connection named `name` (shown by `rabbitmqctl list_connections
    /// client_properties` and the management UI), within the connect timeout.
    async fn connect(&self, name: &str) -> Result<Connection, BusError> {
        let props = ConnectionProperties::default().with_connection_name(name.into());
        match tokio::time::timeout(self.connect_timeout, Connection::connect_uri(self.uri.clone(), props)).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(self.error(&e)),
            Err(_) => Err(BusError::Unreachable {
                endpoint: self.endpoint.clone(),
                reason: format!("no AMQP handshake within {} s", self.connect_timeout.as_secs()),
            }),
        }
    }

    /// Maps a lapin error to what callers can act on.
    fn error(&self, e: &lapin::Error) -> BusError {
        let endpoint = self.endpoint.clone();
        match e.kind() {
            ErrorKind::ProtocolError(amqp) => {
                let reason = amqp.get_message().to_string();
                match amqp.kind() {
                    AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
                    | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => BusError::AccessRefused { endpoint, reason },
                    _ => BusError::Closed { code: amqp.get_id(), reason },
                }
            }
            ErrorKind::IOError(io) => BusError::Unreachable { endpoint, reason: io.to_string() },
            ErrorKind::MissingHeartbeatError => {
                BusError::Unreachable { endpoint, reason: "the broker stopped sending heartbeats".into() }
            }
            ErrorKind::InvalidChannelState(..) | ErrorKind::InvalidConnectionState(_) => {
                BusError::Closed { code: 0, reason: e.to_string() }
            }
            _ => BusError::Amqp(e.to_string()),
        }
    }
}

/// The host part of a URL, as written (IPv6 without brackets).
fn url_host(url: &str) -> Option<String> {
    match url::Url::parse(url).ok()?.host()? {
        url::Host::Domain(d) => Some(d.to_owned()),
        url::Host::Ipv4(a) => Some(a.to_string()),
        url::Host::Ipv6(a) => Some(a.to_string()),
    }
}

fn routing(cfg: &BusConfig) -> Routing {
    match cfg.routing {
        BusRouting::Fanout => Routing::Fanout,
        BusRouting::Buckets => Routing::Buckets(cfg.buckets),
    }
}

/// This host's name as it appears in queue names: at most 64 bytes of `[A-Za-z0-9._-]`.
fn hostname() -> String {
    let raw = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    let clean: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .take(64)
        .collect();
    if clean.is_empty() { "host".into() } else { clean }
}

/// A fresh random suffix for a queue or connection name.
fn nonce() -> String {
    // Without OS randomness, time and pid still make the name unique enough on one host.
    let n = getrandom::u32().unwrap_or_else(|_| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        t.subsec_nanos() ^ std::process::id()
    });
    format!("{n:08x}")
}

/// The exchange publishers send to under `cfg` (the fan-out one, or `<exchange>.buckets`).
pub fn publish_exchange(cfg: &BusConfig) -> String {
    topology::exchange_for(&cfg.exchange, routing(cfg))
}
