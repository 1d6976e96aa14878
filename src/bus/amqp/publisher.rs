//! Publishing envelopes to RabbitMQ with publisher confirms (the application side).
//!
//! Used by the journal's outbox and `switchboard publish`. A batch is sent back to back on one
//! confirm-mode channel, then every confirm is awaited: `Ok` means the broker acked each
//! message, in order. Any failure drops the connection and is returned as a typed
//! [`BusError`]; the next call connects again (one attempt, within the connect timeout), so
//! the caller's retry policy (the outbox's) is the only one.
//!
//! Delivery is at least once: after a timeout or a lost connection part of the batch may have
//! reached the exchange, and a retry publishes it again. Clients drop duplicates by seq.
//!
//! `Send`: a publisher may live on any tokio runtime, multi-threaded included, as long as it is
//! used inside the runtime that created its connection (lapin drives its I/O there).

use std::task::Poll;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Channel, Confirmation, Connection, PublisherConfirm};

use super::message::{self, Routing};
use super::{Target, hostname, nonce, topology};
use crate::bus::{BusError, Routed};
use crate::config::BusConfig;
use crate::metrics as m;

/// A confirm-mode channel on one connection.
struct Link {
    conn: Connection,
    ch: Channel,
}

pub struct Publisher {
    target: Target,
    routing: Routing,
    /// The exchange messages go to: `<exchange>` or `<exchange>.buckets`.
    exchange: String,
    publish_timeout: Duration,
    /// Connection name, for `rabbitmqctl list_connections`.
    name: String,
    /// The live connection, if any; `None` after a failure until the next call.
    link: Option<Link>,
}

impl Publisher {
    /// Connects and declares the exchange now.
    pub async fn connect(cfg: &BusConfig) -> Result<Self, BusError> {
        let mut p = Self::lazy(cfg)?;
        p.link = Some(p.open().await?);
        Ok(p)
    }

    /// Checks the configuration; connects on the first publish.
    pub fn lazy(cfg: &BusConfig) -> Result<Self, BusError> {
        let routing = super::routing(cfg);
        Ok(Self {
            target: Target::new(cfg)?,
            routing,
            exchange: topology::exchange_for(&cfg.exchange, routing),
            publish_timeout: Duration::from_secs(cfg.publish_timeout_secs),
            name: format!("switchboard.publisher.{}.{}.{}", hostname(), std::process::id(), nonce()),
            link: None,
        })
    }

    /// The connection name the broker shows for this publisher.
    pub fn connection_name(&self) -> &str {
        &self.name
    }

    async fn open(&self) -> Result<Link, BusError> {
        let conn = self.target.connect(&self.name).await?;
        let setup = async {
            let ch = conn.create_channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            // Declared here too, so publishing works before any router has started.
            topology::declare_exchange(&ch, &self.exchange, self.routing).await?;
            Ok::<_, lapin::Error>(ch)
        };
        match tokio::time::timeout(self.target.connect_timeout, setup).await {
            Ok(Ok(ch)) => Ok(Link { conn, ch }),
            Ok(Err(e)) => Err(self.target.error(&e)),
            Err(_) => Err(BusError::Unreachable {
                endpoint: self.target.endpoint.clone(),
                reason: "the broker did not answer the channel setup in time".into(),
            }),
        }
    }

    /// Publishes `batch` in order and waits for the broker to confirm every message.
    pub async fn publish(&mut self, batch: &[Routed]) -> Result<(), BusError> {
        // Check everything first: a batch is refused whole rather than half sent.
        let mut out = Vec::with_capacity(batch.len());
        for r in batch {
            out.push(message::outgoing(self.routing, r)?);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let result = self.try_publish(batch, out).await;
        match &result {
            Ok(()) => metrics::counter!(m::BUS_PUBLISHED).increment(batch.len() as u64),
            Err(e) => {
                metrics::counter!(m::BUS_PUBLISH_ERRORS, "reason" => error_label(e)).increment(1);
                tracing::warn!(error = %e, messages = batch.len(), "publish failed; reconnecting on the next call");
                // Whatever went wrong, the next call starts from a fresh connection.
                self.link = None;
            }
        }
        result
    }

    async fn try_publish(
        &mut self,
        batch: &[Routed],
        out: Vec<(lapin::types::ShortString, lapin::BasicProperties)>,
    ) -> Result<(), BusError> {
        if self.link.is_none() {
            self.link = Some(self.open().await?);
        }
        let Some(link) = self.link.as_ref() else { return Err(BusError::Amqp("no connection".into())) };
        let target = &self.target;
        let exchange = &self.exchange;
        let send = async {
            // lapin's basic_publish queues its frames on its first poll and then waits for the
            // I/O thread to write them. Polling every publish once, in order, before awaiting
            // any, keeps the batch's order while the writes and their wake-ups overlap.
            let mut sends: Vec<_> = batch
                .iter()
                .zip(out)
                .map(|(r, (key, props))| {
                    Box::pin(link.ch.basic_publish(
                        exchange.as_str().into(),
                        key,
                        BasicPublishOptions::default(),
                        &r.frame,
                        props,
                    ))
                })
                .collect();
            let mut early: Vec<Option<lapin::Result<PublisherConfirm>>> = Vec::with_capacity(sends.len());
            std::future::poll_fn(|cx| {
                early.extend(sends.iter_mut().map(|f| match f.as_mut().poll(cx) {
                    Poll::Ready(r) => Some(r),
                    Poll::Pending => None,
                }));
                Poll::Ready(())
            })
            .await;
            let mut confirms = Vec::with_capacity(batch.len());
            for (f, done) in sends.into_iter().zip(early) {
                // A send that finished on its first poll must not be polled again.
                let sent = match done {
                    Some(r) => r,
                    None => f.await,
                };
                confirms.push(sent.map_err(|e| target.error(&e))?);
            }
            for (i, c) in confirms.into_iter().enumerate() {
                match c.await.map_err(|e| target.error(&e))? {
                    Confirmation::Ack(_) | Confirmation::NotRequested => {}
                    Confirmation::Nack(_) => {
                        let r = &batch[i];
                        return Err(BusError::Refused(format!(
                            "nack for {} seq {} (message {} of {})",
                            r.topic,
                            r.seq,
                            i + 1,
                            batch.len()
                        )));
                    }
                }
            }
            Ok(())
        };
        match tokio::time::timeout(self.publish_timeout, send).await {
            Ok(r) => r,
            Err(_) => Err(BusError::Timeout(self.publish_timeout)),
        }
    }

    /// Closes the connection politely (the broker logs a clean close, not a lost client).
    pub async fn close(mut self) {
        if let Some(link) = self.link.take() {
            let _ = tokio::time::timeout(self.target.connect_timeout, link.conn.close(200, "bye".into())).await;
        }
    }
}

fn error_label(e: &BusError) -> &'static str {
    match e {
        BusError::Unreachable { .. } => "unreachable",
        BusError::AccessRefused { .. } => "access_refused",
        BusError::Closed { .. } => "closed",
        BusError::Refused(_) => "nack",
        BusError::Timeout(_) => "timeout",
        BusError::Invalid(_) => "invalid",
        BusError::Amqp(_) | BusError::Local(_) => "other",
    }
}
