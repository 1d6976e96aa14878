//! A router worker's RabbitMQ consumer: one connection, one queue, reconnecting by itself.
//!
//! Runs as a local task on the worker's `LocalSet` and calls the worker's [`Ingress`] on the
//! worker's thread; nothing here blocks that thread (every broker call is awaited, and the
//! reconnect waits are timers), so the worker keeps serving WebSockets while the bus is down.
//!
//! Life of a connection: connect (named like its queue) -> declare the exchange -> declare a
//! fresh exclusive queue -> bind it (fan-out: once; buckets: every wanted bucket) -> basic.qos
//! (`prefetch`, per consumer) -> consume with manual acks -> report `bus_state(true)`. Then
//! deliveries go to `Ingress::deliver` with the body moved into `Bytes` (no copy) and are acked
//! in batches (`multiple`, every `ack_every` messages or `ACK_DELAY` after the first unacked
//! one). When anything fails the connection is dropped, `bus_state(false)` is reported, and
//! after a backoff (exponential, full jitter, capped at 10 s) it starts again with a new queue.
//!
//! Invariants: `bus_state` calls alternate, starting with `true` (connected at start) or
//! `false` (not); unacked deliveries never exceed `prefetch`, so a slow worker holds at most
//! `prefetch` frames and the rest waits at the broker, bounded by `x-max-length`.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Acker, Channel, Connection};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::backoff::{self, Backoff};
use super::buckets::{self, Interest};
use super::message::{self, Routing};
use super::{Target, hostname, nonce, topology};
use crate::bus::{BusError, Ingress};
use crate::config::BusConfig;
use crate::metrics as m;

/// Longest an acknowledgement waits for more deliveries to join its batch.
const ACK_DELAY: Duration = Duration::from_millis(5);
/// Most deliveries acked at once (with `prefetch / 4` below it, the broker never stalls on us).
const ACK_MAX_BATCH: u16 = 256;
/// Backstop for declaring and binding on a fresh connection (heartbeats catch a dead broker
/// sooner; this catches one that answers the heartbeats but not the methods).
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// What a worker can read about its consumer (for health and admin pages, and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Connected and consuming.
    pub up: bool,
    /// The current queue, while up.
    pub queue: Option<String>,
    /// Connections established since start (so reconnects = connections - 1).
    pub connections: u64,
    /// Envelopes handed to the Ingress.
    pub received: u64,
    /// Messages acked and dropped because they had no valid topic, seq or frame.
    pub invalid: u64,
    /// Buckets routing: messages whose routing key was not their topic's bucket.
    pub misrouted: u64,
    /// Buckets routing: buckets bound on the current connection.
    pub bound_buckets: usize,
}

/// Fixed for the consumer's life.
struct Settings {
    target: Target,
    routing: Routing,
    /// Where the queue binds: `<exchange>` or `<exchange>.buckets`.
    exchange: String,
    index: usize,
    host: String,
    prefetch: u16,
    ack_every: u32,
    max_length: u32,
}

/// State shared by the worker-facing handle and the connection task (same thread).
struct Shared {
    /// Buckets routing only: what the worker's subscribers need.
    interest: Option<RefCell<Interest>>,
    /// Wakes the binder when a bucket's wanted state flipped.
    changed: Notify,
    stats: RefCell<ConsumerStats>,
    /// Counters bumped per delivery, kept out of the RefCell to stay cheap.
    received: Cell<u64>,
    invalid: Cell<u64>,
    misrouted: Cell<u64>,
}

/// A worker's running consumer. Dropping it closes the connection (and the broker deletes
/// the queue).
pub struct Consumer {
    shared: Rc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Consumer {
    /// Connects worker `index` and starts consuming on the current `LocalSet`.
    ///
    /// Returns an error only for what retrying cannot fix: a bad URL, refused credentials or
    /// vhost, or a conflicting exchange. An unreachable broker is not an error: the consumer
    /// reports `bus_state(false)` before returning and keeps trying in the background.
    pub async fn start(cfg: &BusConfig, index: usize, ingress: Rc<dyn Ingress>) -> Result<Self, BusError> {
        let routing = super::routing(cfg);
        let settings = Settings {
            target: Target::new(cfg)?,
            routing,
            exchange: topology::exchange_for(&cfg.exchange, routing),
            index,
            host: hostname(),
            prefetch: cfg.prefetch,
            ack_every: u32::from((cfg.prefetch / 4).clamp(1, ACK_MAX_BATCH)),
            max_length: cfg.queue_max_length,
        };
        let shared = Rc::new(Shared {
            interest: match routing {
                Routing::Fanout => None,
                Routing::Buckets(n) => Some(RefCell::new(Interest::new(n))),
            },
            changed: Notify::new(),
            stats: RefCell::new(ConsumerStats::default()),
            received: Cell::new(0),
            invalid: Cell::new(0),
            misrouted: Cell::new(0),
        });
        let first = match Session::establish(&settings, &shared).await {
            Err(e) if e.is_permanent() => return Err(e),
            r => r,
        };
        // The run loop logs a failed first attempt; the worker learns it right away.
        match &first {
            Err(_) => shared.set_down(ingress.as_ref()),
            Ok(session) => shared.set_up(ingress.as_ref(), session),
        }
        let task = tokio::task::spawn_local(run(settings, shared.clone(), ingress, first));
        Ok(Self { shared, task })
    }

    /// The worker gained its first local subscriber of `topic`. Buckets routing binds the
    /// topic's bucket if no other watched topic shares it; asynchronously: envelopes for the
    /// topic arrive once the broker has the binding (about one round trip). No-op in fan-out.
    pub fn watch(&self, topic: &str) {
        if let Some(interest) = &self.shared.interest
            && interest.borrow_mut().watch(topic)
        {
            self.shared.changed.notify_one();
        }
    }

    /// The worker lost its last local subscriber of `topic` (unbinds when the bucket is no
    /// longer needed; envelopes already queued still arrive and are unrouted).
    pub fn unwatch(&self, topic: &str) {
        if let Some(interest) = &self.shared.interest
            && interest.borrow_mut().unwatch(topic)
        {
            self.shared.changed.notify_one();
        }
    }

    pub fn stats(&self) -> ConsumerStats {
        let mut s = self.shared.stats.borrow().clone();
        s.received = self.shared.received.get();
        s.invalid = self.shared.invalid.get();
        s.misrouted = self.shared.misrouted.get();
        s
    }
}

impl Shared {
    fn set_up(&self, ingress: &dyn Ingress, session: &Session) {
        {
            let mut s = self.stats.borrow_mut();
            s.up = true;
            s.queue = Some(session.queue.clone());
            s.connections += 1;
            s.bound_buckets = session.bound.len();
            if s.connections > 1 {
                metrics::counter!(m::BUS_RECONNECTS).increment(1);
            }
        }
        metrics::gauge!(m::BUS_CONNECTED).set(1.0);
        tracing::info!(queue = %session.queue, "bus connected");
        ingress.bus_state(true);
    }

    fn set_down(&self, ingress: &dyn Ingress) {
        {
            let mut s = self.stats.borrow_mut();
            s.up = false;
            s.queue = None;
            s.bound_buckets = 0;
        }
        metrics::gauge!(m::BUS_CONNECTED).set(0.0);
        metrics::gauge!(m::BUS_BUCKETS_BOUND).set(0.0);
        ingress.bus_state(false);
    }
}

/// The reconnect loop: serve a session until it fails, report down, back off, start again.
async fn run(settings: Settings, shared: Rc<Shared>, ingress: Rc<dyn Ingress>, first: Result<Session, BusError>) {
    let mut backoff = Backoff::default();
    let mut next = first;
    loop {
        match next {
            Ok(session) => {
                let since = Instant::now();
                let err = session.serve(&settings, &shared, ingress.as_ref()).await;
                tracing::warn!(worker = settings.index, error = %err, "bus connection lost; clients must resync");
                shared.set_down(ingress.as_ref());
                // A connection that stayed up a while starts a new sequence; one that dies at
                // once (a flapping broker) keeps backing off.
                if since.elapsed() >= backoff::CAP {
                    backoff.reset();
                }
            }
            Err(e) => {
                tracing::warn!(worker = settings.index, attempt = backoff.attempt(), error = %e, "bus connect failed");
            }
        }
        tokio::time::sleep(backoff.next_random()).await;
        next = Session::establish(&settings, &shared).await;
        if let Ok(session) = &next {
            shared.set_up(ingress.as_ref(), session);
        }
    }
}

/// One connection, set up and consuming.
struct Session {
    /// Held so the connection lives as long as the session; dropping it closes it.
    _conn: Connection,
    ch: Channel,
    consumer: lapin::Consumer,
    queue: String,
    /// Buckets routing: the buckets this queue is bound to right now.
    bound: BTreeSet<u32>,
}

impl Session {
    async fn establish(s: &Settings, shared: &Shared) -> Result<Session, BusError> {
        let queue = topology::queue_name(&s.host, s.index, &nonce());
        let conn = s.target.connect(&queue).await?;
        let setup = async {
            let ch = conn.create_channel().await?;
            topology::declare_exchange(&ch, &s.exchange, s.routing).await?;
            topology::declare_queue(&ch, &queue, s.max_length).await?;
            let mut bound = BTreeSet::new();
            match &shared.interest {
                None => topology::bind(&ch, &queue, &s.exchange, "").await?,
                Some(interest) => {
                    // Bind what is wanted now; later flips are marked dirty for the binder.
                    let wanted = {
                        let mut i = interest.borrow_mut();
                        i.take_dirty();
                        i.wanted_all()
                    };
                    for b in wanted {
                        topology::bind(&ch, &queue, &s.exchange, &buckets::routing_key(b)).await?;
                        bound.insert(b);
                    }
                }
            }
            // Per consumer (global=false): RabbitMQ 4.3 refuses global QoS.
            ch.basic_qos(s.prefetch, BasicQosOptions { global: false }).await?;
            let opts = BasicConsumeOptions { no_ack: false, exclusive: true, ..Default::default() };
            let consumer =
                ch.basic_consume(queue.as_str().into(), queue.as_str().into(), opts, FieldTable::default()).await?;
            Ok::<_, lapin::Error>((ch, consumer, bound))
        };
        match tokio::time::timeout(SETUP_TIMEOUT, setup).await {
            Ok(Ok((ch, consumer, bound))) => {
                metrics::gauge!(m::BUS_BUCKETS_BOUND).set(bound.len() as f64);
                Ok(Session { _conn: conn, ch, consumer, queue, bound })
            }
            Ok(Err(e)) => Err(s.target.error(&e)),
            Err(_) => Err(BusError::Unreachable {
                endpoint: s.target.endpoint.clone(),
                reason: "the broker did not complete the queue setup in time".into(),
            }),
        }
    }

    /// Consumes (and, in buckets routing, keeps the bindings in line with the worker's
    /// interest) until something fails; returns why.
    async fn serve(self, s: &Settings, shared: &Shared, ingress: &dyn Ingress) -> BusError {
        let Session { _conn, ch, mut consumer, queue, mut bound } = self;
        let consume = async {
            let mut unacked: u32 = 0;
            let mut last: Option<Acker> = None;
            let flush = tokio::time::sleep(ACK_DELAY);
            tokio::pin!(flush);
            let received = metrics::counter!(m::ENVELOPES_RECEIVED);
            loop {
                tokio::select! {
                    biased;
                    next = consumer.next() => match next {
                        Some(Ok(d)) => {
                            let lapin::message::Delivery { data, routing_key, properties, acker, .. } = d;
                            match message::incoming(s.routing, routing_key.as_str(), properties.headers().as_ref(), data.len()) {
                                Ok(inc) => {
                                    if inc.misrouted {
                                        shared.misrouted.set(shared.misrouted.get() + 1);
                                        metrics::counter!(m::BUS_MISROUTED).increment(1);
                                    }
                                    shared.received.set(shared.received.get() + 1);
                                    received.increment(1);
                                    // The body Vec becomes the shared frame without a copy.
                                    ingress.deliver(inc.topic, inc.seq, Bytes::from(data));
                                }
                                Err(why) => {
                                    shared.invalid.set(shared.invalid.get() + 1);
                                    metrics::counter!(m::BUS_INVALID, "reason" => why.label()).increment(1);
                                    tracing::debug!(reason = why.label(), routing_key = %routing_key, "dropping a bus message that cannot be routed");
                                }
                            }
                            last = Some(acker);
                            unacked += 1;
                            if unacked >= s.ack_every {
                                if let Err(e) = ack(&mut last, &mut unacked).await {
                                    return s.target.error(&e);
                                }
                            } else if unacked == 1 {
                                flush.as_mut().reset(Instant::now() + ACK_DELAY);
                            }
                        }
                        Some(Err(e)) => return s.target.error(&e),
                        None => return BusError::Closed { code: 0, reason: "the broker cancelled the consumer (queue deleted?)".into() },
                    },
                    () = &mut flush, if unacked > 0 => {
                        if let Err(e) = ack(&mut last, &mut unacked).await {
                            return s.target.error(&e);
                        }
                    }
                }
            }
        };
        let binder = async {
            let Some(interest) = &shared.interest else { return std::future::pending().await };
            loop {
                let dirty = interest.borrow_mut().take_dirty();
                for b in dirty {
                    let want = interest.borrow().wanted(b);
                    let key = buckets::routing_key(b);
                    let r = if want && !bound.contains(&b) {
                        topology::bind(&ch, &queue, &s.exchange, &key).await.map(|()| bound.insert(b))
                    } else if !want && bound.contains(&b) {
                        topology::unbind(&ch, &queue, &s.exchange, &key).await.map(|()| bound.remove(&b))
                    } else {
                        Ok(false)
                    };
                    if let Err(e) = r {
                        return s.target.error(&e);
                    }
                }
                shared.stats.borrow_mut().bound_buckets = bound.len();
                metrics::gauge!(m::BUS_BUCKETS_BOUND).set(bound.len() as f64);
                shared.changed.notified().await;
            }
        };
        tokio::select! {
            e = consume => e,
            e = binder => e,
        }
    }
}

/// Acks every delivery up to the last one (`multiple`).
async fn ack(last: &mut Option<Acker>, unacked: &mut u32) -> lapin::Result<()> {
    *unacked = 0;
    match last.take() {
        Some(a) => a.ack(BasicAckOptions { multiple: true }).await.map(|_| ()),
        None => Ok(()),
    }
}
