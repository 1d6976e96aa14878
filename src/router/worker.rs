//! A router worker: one process, one thread, one listener, one ledger, one bus consumer.
//!
//! Everything here runs on one current-thread tokio runtime inside a `LocalSet`, so the state
//! is `Rc`/`RefCell` and nothing on the hot path takes a lock. The worker:
//!
//! - accepts WebSocket clients ([`super::upgrade`], [`super::socket`], [`super::session`]),
//! - routes what its bus consumer brings ([`Ingress::deliver`]): one ledger lookup, one
//!   WebSocket frame built per envelope and shared by every subscriber's queue,
//! - runs one sweep per second for every connection at once (idle pings and the 4001 close,
//!   token expiry, the verified-token cache, gauges): no per-connection timers,
//! - obeys [`Control`]: drain, stop, reload.
//!
//! [`serve`] is the contract with the supervisor (which forks workers and maps signals);
//! [`process_main`] is everything a forked worker process does, signals included.
//!
//! Invariants: a connection is in `sessions` from its admission until its end; the ledger
//! only names connections in `sessions`; the consumer watches exactly the ledger's topics.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::auth::Auth;
use super::ledger::{ConnId, Ledger, LedgerError};
use super::outbound::{self, Op};
use super::session::{self, CONTROL_HEADROOM_BYTES, Delivery, Session};
use super::socket::{Conn, Limits};
use super::upgrade::{self, Endpoint, Refusal};
use super::{drain, exporter, listener};
use crate::bus::{self, BusError, Ingress};
use crate::config::{Config, RouterConfig};
use crate::metrics as m;
use crate::wire::limits::MAX_RESYNC_TOPICS;
use crate::wire::{CloseCode, ErrorCode, KeySet, ServerFrame};

/// Subscriptions due to expire, by the second after which their token is no longer valid.
type Wheel = BTreeMap<u64, Vec<(ConnId, Rc<str>)>>;

/// What the supervisor (or a test) tells a running worker.
// A few messages per process lifetime: the size of `Reload` costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Control {
    /// Stop accepting, close every client with 1001 spread over `drain_window_secs`, exit by
    /// `shutdown_grace_secs`.
    Drain,
    /// Close every client now and exit.
    Stop,
    /// Swap the keys and the `[router]` limits without dropping connections. `listen` and
    /// `path` cannot change in a running worker (a new one binds them).
    Reload { keys: KeySet, router: RouterConfig },
    /// Use this TLS config (`[tls]`, re-read on SIGHUP) for new connections; `None`: plain
    /// TCP. Established connections keep what they negotiated.
    Tls(Option<Arc<rustls::ServerConfig>>),
}

/// Why a worker could not start.
#[derive(Debug, Error)]
pub enum WorkerError {
    #[error("listener: {0}")]
    Listen(#[source] std::io::Error),
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    #[error("tls: {0}")]
    Tls(#[from] crate::config::ConfigError),
}

/// How long a connection may take to write its close frame before it is cut.
const CLOSE_DEADLINE: Duration = Duration::from_secs(5);

/// How long `Stop` waits for close frames to leave before giving up on them.
const STOP_FLUSH: Duration = Duration::from_secs(1);

/// Seconds since the epoch, derived from tokio's clock: anchored once at start, so that
/// token expiry follows a paused test clock like every other timer (NTP slews both clocks;
/// a step of the wall clock is not followed, which is the safer way for expiry).
#[derive(Clone, Copy)]
pub struct Clock {
    wall_at_start: Duration,
    start: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Self { wall_at_start: SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default(), start: Instant::now() }
    }

    pub fn now_secs(&self) -> u64 {
        (self.wall_at_start + self.start.elapsed()).as_secs()
    }

    /// Milliseconds since the epoch (envelope `ts` is in these).
    pub fn now_ms(&self) -> u64 {
        (self.wall_at_start + self.start.elapsed()).as_millis() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Metric handles resolved once (a registry lookup per delivery would cost more than it).
struct Counters {
    received: metrics::Counter,
    unrouted: metrics::Counter,
    deliveries: metrics::Counter,
    dropped_gap: metrics::Counter,
    dropped_close: metrics::Counter,
    gaps: metrics::Counter,
    anomalies: metrics::Counter,
    route: metrics::Histogram,
    latency: metrics::Histogram,
}

impl Counters {
    fn new() -> Self {
        Self {
            received: metrics::counter!(m::ENVELOPES_RECEIVED),
            unrouted: metrics::counter!(m::ENVELOPES_UNROUTED),
            deliveries: metrics::counter!(m::DELIVERIES),
            dropped_gap: metrics::counter!(m::DROPS, "reason" => "gap"),
            dropped_close: metrics::counter!(m::DROPS, "reason" => "slow_consumer_close"),
            gaps: metrics::counter!(m::GAPS),
            anomalies: metrics::counter!(m::BUS_SEQ_ANOMALIES),
            route: metrics::histogram!(m::ROUTE_SECONDS),
            latency: metrics::histogram!(m::DELIVERY_LATENCY),
        }
    }
}

/// The worker's state, shared by its tasks.
pub struct Worker {
    pub index: usize,
    cfg: RefCell<RouterConfig>,
    pub auth: Rc<Auth>,
    pub clock: Clock,
    ledger: RefCell<Ledger>,
    /// Live sessions by connection id (slot); freed slots are reused.
    sessions: RefCell<Vec<Option<Rc<Session>>>>,
    free: RefCell<Vec<ConnId>>,
    live: Cell<usize>,
    /// Connections opened and closed: a burst of either is followed by a heap trim.
    heap: super::heap::Trimmer,
    /// Subscriptions by the second after which their token is expired: the shared wheel.
    expiry: RefCell<Wheel>,
    /// Entries in `expiry`, stale ones (closed connections, renewed subscriptions) included.
    wheel_len: Cell<usize>,
    consumer: RefCell<Option<bus::Consumer>>,
    /// The bus went down since the last up: the next up sends resync.
    bus_was_down: Cell<bool>,
    accepting: Cell<bool>,
    /// wss:// when set: the acceptor new connections are wrapped with.
    tls: RefCell<Option<tokio_rustls::TlsAcceptor>>,
    counters: Counters,
}

impl Worker {
    fn new(cfg: &Config, keys: KeySet, index: usize) -> Self {
        Self {
            index,
            cfg: RefCell::new(cfg.router.clone()),
            auth: Rc::new(Auth::new(keys, cfg.tokens.policy())),
            clock: Clock::new(),
            ledger: RefCell::new(Ledger::new()),
            sessions: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            live: Cell::new(0),
            heap: super::heap::Trimmer::default(),
            expiry: RefCell::new(BTreeMap::new()),
            wheel_len: Cell::new(0),
            consumer: RefCell::new(None),
            bus_was_down: Cell::new(false),
            accepting: Cell::new(true),
            tls: RefCell::new(None),
            counters: Counters::new(),
        }
    }

    /// The connection-layer limits from the current `[router]` config.
    pub fn limits(&self) -> Limits {
        let c = self.cfg.borrow();
        Limits {
            max_message_bytes: c.max_frame_bytes,
            fragments: false,
            text: false,
            frames_per_sec: c.client_frames_per_sec,
            burst: c.client_frames_burst,
            max_violations: c.max_violations,
            control_queue_bytes: c.outbound_queue_bytes + CONTROL_HEADROOM_BYTES,
        }
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.live.get()
    }

    fn session(&self, id: ConnId) -> Option<Rc<Session>> {
        self.sessions.borrow().get(id as usize).and_then(Clone::clone)
    }

    fn all_sessions(&self) -> Vec<Rc<Session>> {
        self.sessions.borrow().iter().flatten().cloned().collect()
    }

    /// Forgets a connection (its end): ledger, wheel entries lapse on their own.
    pub fn remove(&self, id: ConnId) {
        let gone = self.ledger.borrow_mut().remove_conn(id);
        for t in gone {
            self.unwatch(&t);
        }
        let mut s = self.sessions.borrow_mut();
        if let Some(slot) = s.get_mut(id as usize)
            && slot.take().is_some()
        {
            self.free.borrow_mut().push(id);
            self.live.set(self.live.get() - 1);
            self.heap.note();
            metrics::counter!(m::CLOSES, "reason" => "ended").increment(1);
        }
    }

    fn watch(&self, topic: &str) {
        if let Some(c) = self.consumer.borrow().as_ref() {
            c.watch(topic);
        }
    }

    fn unwatch(&self, topic: &str) {
        if let Some(c) = self.consumer.borrow().as_ref() {
            c.unwatch(topic);
        }
    }

    /// Handles a subscribe request.
    pub async fn subscribe(&self, s: &Session, id: u32, topic: &str, token: &str) {
        let (limit, bound) = {
            let c = self.cfg.borrow();
            (c.max_subscriptions_per_connection, c.outbound_queue_bytes + CONTROL_HEADROOM_BYTES)
        };
        let too_many = |s: &Session| {
            metrics::counter!(m::FRAMES_REJECTED, "reason" => ErrorCode::TooManySubscriptions.as_str()).increment(1);
            s.send_error(
                id,
                ErrorCode::TooManySubscriptions.as_str(),
                &format!("at most {limit} subscriptions per connection"),
                bound,
            );
        };
        {
            let l = self.ledger.borrow();
            if !l.is_subscribed(s.conn.id, topic) && l.count_of(s.conn.id) >= limit {
                return too_many(s);
            }
        }
        let clock = self.clock;
        let claims = match self.auth.verify(token, move || clock.now_secs()).await {
            Ok(c) => c,
            Err(e) => {
                metrics::counter!(m::TOKEN_REJECTIONS, "reason" => e.code()).increment(1);
                return s.send_error(id, e.code(), &e.to_string(), bound);
            }
        };
        if let Err(e) = claims.require(topic) {
            metrics::counter!(m::TOKEN_REJECTIONS, "reason" => e.code()).increment(1);
            return s.send_error(id, e.code(), &e.to_string(), bound);
        }
        if !s.conn.is_open() || self.session(s.conn.id).is_none() {
            return; // closed while the token was being checked
        }
        let valid_until = claims.exp.saturating_add(self.auth.policy().skew_secs);
        let res = self.ledger.borrow_mut().subscribe(s.conn.id, topic, valid_until, limit);
        match res {
            Err(LedgerError::TooMany { .. }) => too_many(s),
            Ok(sub) => {
                if sub.first {
                    self.watch(topic);
                }
                let name = self.ledger.borrow().name(topic).unwrap_or_else(|| Rc::from(topic));
                self.expiry.borrow_mut().entry(valid_until).or_default().push((s.conn.id, name));
                self.wheel_len.set(self.wheel_len.get() + 1);
                s.send(&ServerFrame::Ok { id, last_seq: sub.last_seq }, bound);
                tracing::debug!(conn = s.conn.id, topic, sub = %claims.sub, "subscribed");
            }
        }
    }

    /// Handles an unsubscribe request.
    pub fn unsubscribe(&self, s: &Session, id: u32, topic: &str) {
        let bound = self.limits().control_queue_bytes;
        let res = self.ledger.borrow_mut().unsubscribe(s.conn.id, topic);
        match res {
            None => s.send_error(id, ErrorCode::NotSubscribed.as_str(), "not subscribed to this topic", bound),
            Some(last) => {
                if last {
                    self.unwatch(topic);
                }
                s.send(&ServerFrame::Ok { id, last_seq: None }, bound);
            }
        }
    }

    /// Ends subscriptions whose token expired before `now` (seconds): `unsubscribed` frames.
    fn expire(&self, now: u64) {
        let due: Wheel = {
            let mut wheel = self.expiry.borrow_mut();
            let later = wheel.split_off(&now);
            std::mem::replace(&mut *wheel, later)
        };
        let bound = self.limits().control_queue_bytes;
        let n: usize = due.values().map(Vec::len).sum();
        self.wheel_len.set(self.wheel_len.get() - n);
        for (until, subs) in due {
            for (conn, topic) in subs {
                // A renewed subscription has a later time and its own wheel entry.
                if self.ledger.borrow().valid_until(conn, &topic) != Some(until) {
                    continue;
                }
                let last = self.ledger.borrow_mut().unsubscribe(conn, &topic);
                if last == Some(true) {
                    self.unwatch(&topic);
                }
                if let Some(s) = self.session(conn) {
                    s.send(&ServerFrame::Unsubscribed { topic: &topic, code: "token_expired" }, bound);
                }
            }
        }
    }

    /// Drops wheel entries of subscriptions that ended early (closed connections, renewals)
    /// once they outnumber the live ones, so a reconnect storm does not pile them up until
    /// their tokens expire. Amortized: it runs when the wheel has doubled.
    fn compact_wheel(&self) {
        let live = self.ledger.borrow().subscription_count();
        if self.wheel_len.get() <= 2 * live + 1024 {
            return;
        }
        let ledger = self.ledger.borrow();
        let mut wheel = self.expiry.borrow_mut();
        let mut kept = 0;
        wheel.retain(|until, subs| {
            subs.retain(|(conn, topic)| ledger.valid_until(*conn, topic) == Some(*until));
            kept += subs.len();
            !subs.is_empty()
        });
        self.wheel_len.set(kept);
    }

    /// Pings connections silent for `ping_interval`, closes those silent past `idle_timeout`.
    fn keepalive(&self) {
        let (ping, idle) = {
            let c = self.cfg.borrow();
            (Duration::from_secs(c.ping_interval_secs), Duration::from_secs(c.idle_timeout_secs))
        };
        let now = Instant::now();
        let bound = self.limits().control_queue_bytes;
        for s in self.sessions.borrow().iter().flatten() {
            let c = &s.conn;
            let silent = now.saturating_duration_since(c.last_rx.get());
            let stuck =
                c.out.borrow().closing_since().is_some_and(|t| now.saturating_duration_since(t) >= CLOSE_DEADLINE);
            if stuck {
                // The close frame could not even be written: the peer reads nothing. Cut it.
                metrics::counter!(m::CLOSES, "reason" => "close_timeout").increment(1);
                c.out.borrow_mut().kill();
            } else if silent >= idle {
                if c.is_open() {
                    metrics::counter!(m::CLOSES, "reason" => "idle_timeout").increment(1);
                    c.close(CloseCode::IDLE_TIMEOUT, "idle timeout", true);
                }
            } else if silent >= ping && now.saturating_duration_since(c.last_ping.get()) >= ping {
                c.last_ping.set(now);
                c.send_control(outbound::ping_frame(), bound);
            }
        }
    }

    /// The once-a-second sweep over every connection.
    fn sweep(&self) {
        let now = self.clock.now_secs();
        self.expire(now);
        self.compact_wheel();
        self.keepalive();
        self.auth.sweep(now);
        if self.heap.due(now) {
            super::heap::trim();
        }
        let l = self.ledger.borrow();
        metrics::gauge!(m::CONNECTIONS).set(self.live.get() as f64);
        metrics::gauge!(m::SUBSCRIPTIONS).set(l.subscription_count() as f64);
        metrics::gauge!(m::TOPICS).set(l.topic_count() as f64);
    }

    /// Tells every subscriber to reconcile its topics (the bus may have lost envelopes).
    fn resync_all(&self) {
        let bound = self.limits().control_queue_bytes;
        let ledger = self.ledger.borrow();
        let mut frames = 0u64;
        for conn in ledger.conns() {
            let Some(s) = self.session(conn) else { continue };
            let topics: Vec<&str> = ledger.topics_of(conn).map(|t| &**t).collect();
            for chunk in topics.chunks(MAX_RESYNC_TOPICS) {
                s.send(&ServerFrame::Resync { topics: chunk.to_vec() }, bound);
                frames += 1;
            }
        }
        metrics::counter!(m::RESYNCS).increment(frames);
        tracing::info!(frames, "bus is back: resync sent");
    }

    /// Closes every client with `code`, now.
    fn close_all(&self, code: u16, reason: &str, discard: bool) {
        for s in self.all_sessions() {
            s.conn.close(code, reason, discard);
        }
    }

    fn set_tls(&self, tls: Option<Arc<rustls::ServerConfig>>) {
        *self.tls.borrow_mut() = tls.map(tokio_rustls::TlsAcceptor::from);
    }

    fn reload(&self, keys: KeySet, router: RouterConfig) {
        {
            let old = self.cfg.borrow();
            // Port 0 in the file means "the one picked at start", not a change.
            let moved = router.listen != old.listen && router.listen.port() != 0;
            if moved || old.path != router.path {
                tracing::warn!("router.listen and router.path changes need a restart; keeping the old ones");
            }
        }
        let mut router = router;
        {
            let old = self.cfg.borrow();
            router.listen = old.listen;
            router.path = old.path.clone();
        }
        *self.cfg.borrow_mut() = router;
        self.auth.set_keys(keys);
        metrics::counter!(m::CONFIG_RELOADS, "result" => "ok").increment(1);
        tracing::info!(worker = self.index, "reloaded keys and limits");
    }
}

impl Endpoint for Worker {
    type Session = Session;

    fn is_path(&self, path: &str) -> bool {
        self.cfg.borrow().path == path
    }

    fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.borrow().handshake_timeout_secs)
    }

    fn protocol(&self) -> Option<&'static str> {
        Some(upgrade::PROTOCOL)
    }

    fn tls(&self) -> Option<tokio_rustls::TlsAcceptor> {
        self.tls.borrow().clone()
    }

    fn open(self: &Rc<Self>) -> Result<Rc<Session>, Refusal> {
        if !self.accepting.get() {
            return Err(Refusal::Draining);
        }
        if self.live.get() >= self.cfg.borrow().max_connections {
            return Err(Refusal::Full);
        }
        let mut sessions = self.sessions.borrow_mut();
        let id = self.free.borrow_mut().pop().unwrap_or(sessions.len() as ConnId);
        let s = Rc::new(Session::new(Conn::new(id), Rc::downgrade(self)));
        if id as usize == sessions.len() {
            sessions.push(Some(s.clone()));
        } else {
            sessions[id as usize] = Some(s.clone());
        }
        self.live.set(self.live.get() + 1);
        self.heap.note();
        Ok(s)
    }
}

impl Ingress for Worker {
    fn deliver(&self, topic: &str, seq: u64, frame: Bytes) {
        let started = std::time::Instant::now();
        self.counters.received.increment(1);
        let (bound, policy) = {
            let c = self.cfg.borrow();
            (c.outbound_queue_bytes, c.slow_consumer)
        };
        let mut ledger = self.ledger.borrow_mut();
        let Some(route) = ledger.route(topic, seq) else {
            self.counters.unrouted.increment(1);
            return;
        };
        if route.anomaly {
            self.counters.anomalies.increment(1);
        }
        // One WebSocket frame per envelope per worker, shared by every subscriber.
        let framed = outbound::frame(Op::Binary, &frame);
        let sessions = self.sessions.borrow();
        let (mut queued, mut dropped, mut gaps, mut closed) = (0u64, 0u64, 0u64, 0u64);
        for &c in route.conns {
            let Some(Some(s)) = sessions.get(c as usize) else { continue };
            match session::deliver(&s.conn, route.topic, seq, &framed, bound, policy) {
                Delivery::Queued => queued += 1,
                Delivery::Gapped(n) => {
                    dropped += n;
                    gaps += 1;
                }
                Delivery::Closed => closed += 1,
                Delivery::Skipped => {}
            }
        }
        self.counters.deliveries.increment(queued);
        if queued > 0 {
            // Envelope ts (the journal's accept time, ms) to the frame queued for the sockets.
            if let Some(ts) = crate::wire::envelope::peek_ts(&frame) {
                self.counters.latency.record(self.clock.now_ms().saturating_sub(ts) as f64 / 1000.0);
            }
        }
        if gaps > 0 {
            self.counters.dropped_gap.increment(dropped);
            self.counters.gaps.increment(gaps);
        }
        if closed > 0 {
            self.counters.dropped_close.increment(closed);
            metrics::counter!(m::CLOSES, "reason" => "slow_consumer").increment(closed);
        }
        self.counters.route.record(started.elapsed().as_secs_f64());
    }

    fn bus_state(&self, up: bool) {
        metrics::gauge!(m::BUS_CONNECTED).set(if up { 1.0 } else { 0.0 });
        if !up {
            self.bus_was_down.set(true);
            tracing::warn!(worker = self.index, "bus down");
        } else if self.bus_was_down.replace(false) {
            // switchboard_bus_reconnects_total is the bus consumer's (it knows connections).
            self.resync_all();
        }
    }
}

/// A started worker: listening, consuming, sweeping. [`Running::run`] obeys [`Control`].
pub struct Running {
    worker: Rc<Worker>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
}

/// Starts worker `index` on the current `LocalSet`: bus consumer, accept loop, sweeps.
pub async fn start(
    cfg: Config,
    keys: KeySet,
    index: usize,
    listener: std::net::TcpListener,
) -> Result<Running, WorkerError> {
    let listener = tokio::net::TcpListener::from_std(listener).map_err(WorkerError::Listen)?;
    let addr = listener.local_addr().map_err(WorkerError::Listen)?;
    let worker = Rc::new(Worker::new(&cfg, keys, index));
    if let Some(t) = &cfg.tls {
        worker.set_tls(Some(crate::tls::server_config(t)?));
    }
    let mut tasks = Vec::new();
    let clock = worker.clock;
    tasks.push(tokio::task::spawn_local(worker.auth.clone().run_batches(move || clock.now_secs())));
    let consumer = bus::start(&cfg.bus, index, worker.clone() as Rc<dyn Ingress>).await?;
    *worker.consumer.borrow_mut() = Some(consumer);
    let w = worker.clone();
    tasks.push(tokio::task::spawn_local(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            w.sweep();
        }
    }));
    let accept = tokio::task::spawn_local(upgrade::accept_loop(listener, worker.clone()));
    let scheme = if cfg.tls.is_some() { "wss" } else { "ws" };
    tracing::info!(worker = index, %addr, path = %cfg.router.path, scheme, "worker listening");
    Ok(Running { worker, addr, accept: Some(accept), tasks })
}

/// How a worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Drained,
    Stopped,
}

impl Running {
    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The worker as the bus sees it (tests drive `bus_state` and `deliver` through it).
    pub fn ingress(&self) -> Rc<dyn Ingress> {
        self.worker.clone()
    }

    pub fn worker(&self) -> &Rc<Worker> {
        &self.worker
    }

    fn stop_accepting(&mut self) {
        self.worker.accepting.set(false);
        if let Some(a) = self.accept.take() {
            // Dropping the accept loop closes the listener (tech-notes section 4: do it first).
            a.abort();
        }
    }

    /// Obeys `control` until drained or stopped. A closed channel counts as `Stop`.
    pub async fn run(mut self, mut control: mpsc::Receiver<Control>) -> Exit {
        let exit = loop {
            match control.recv().await {
                Some(Control::Reload { keys, router }) => self.worker.reload(keys, router),
                Some(Control::Tls(tls)) => self.worker.set_tls(tls),
                Some(Control::Drain) => {
                    self.stop_accepting();
                    let (window, grace) = {
                        let c = self.worker.cfg.borrow();
                        (Duration::from_secs(c.drain_window_secs), Duration::from_secs(c.shutdown_grace_secs))
                    };
                    tracing::info!(worker = self.worker.index, clients = self.worker.connections(), "draining");
                    drain::drain(&self.worker, window, grace, &mut control).await;
                    break Exit::Drained;
                }
                Some(Control::Stop) | None => {
                    self.stop_accepting();
                    self.worker.close_all(CloseCode::GOING_AWAY, "server stopping", true);
                    drain::wait_empty(&self.worker, STOP_FLUSH).await;
                    break Exit::Stopped;
                }
            }
        };
        self.shutdown();
        exit
    }

    fn shutdown(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        // Dropping the consumer stops the bus (and breaks the Rc cycle through the ingress).
        self.worker.consumer.borrow_mut().take();
        tracing::info!(worker = self.worker.index, left = self.worker.connections(), "worker stopped");
    }
}

/// The drain side of [`Worker`] used by [`drain`].
impl Worker {
    pub(super) fn sessions_snapshot(&self) -> Vec<Rc<Session>> {
        self.all_sessions()
    }

    #[doc(hidden)]
    pub fn session_for_tests(&self, id: ConnId) -> Rc<Session> {
        self.session(id).expect("session")
    }

    pub(super) fn close_all_gently(&self) {
        self.close_all(CloseCode::GOING_AWAY, "server draining: reconnect", false);
    }

    pub(super) fn stop_all_now(&self) {
        self.close_all(CloseCode::GOING_AWAY, "server stopping", true);
    }
}

/// Runs worker `index` until drained or stopped: the contract with the supervisor. Must run
/// inside a `LocalSet` on a current-thread runtime.
pub async fn serve(
    cfg: Config,
    keys: KeySet,
    index: usize,
    listener: std::net::TcpListener,
    control: mpsc::Receiver<Control>,
) -> Result<Exit, WorkerError> {
    let running = start(cfg, keys, index, listener).await?;
    Ok(running.run(control).await)
}

/// Raises the soft fd limit to the hard one: every connection is a descriptor.
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(error = %e, soft, hard, "cannot raise the fd limit");
    }
}

/// Exit codes of a worker process.
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILURE: i32 = 1;
    pub const CONFIG: i32 = 64;
}

/// Everything a worker process does after the fork (or in `switchboard router` with one
/// worker): runtime, signals, metrics, bus, listener, readiness, run; returns the exit code.
///
/// Signals: SIGTERM drains, SIGINT stops, SIGHUP re-reads `config_path` (when given) and the
/// key files and reloads (keeping the old on error). `ready` gets `ready\n` once listening.
pub fn process_main(cfg: Config, config_path: Option<PathBuf>, index: usize, ready: Option<OwnedFd>) -> i32 {
    raise_fd_limit();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the runtime");
            return exit::FAILURE;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let keys = match cfg.tokens.load_keys() {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(error = %e, "keys");
                return exit::CONFIG;
            }
        };
        let (tx, rx) = mpsc::channel(8);
        if let Err(e) = spawn_signals(tx, config_path) {
            tracing::error!(error = %e, "cannot install signal handlers");
            return exit::FAILURE;
        }
        let _metrics = exporter::start(index, &cfg.router.runtime_dir);
        let listener = match listener::bind(cfg.router.listen) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, addr = %cfg.router.listen, "cannot listen");
                return exit::FAILURE;
            }
        };
        let running = match start(cfg, keys, index, listener).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "worker failed to start");
                return exit::FAILURE;
            }
        };
        if let Some(fd) = ready {
            let mut f = std::fs::File::from(fd);
            let _ = f.write_all(b"ready\n");
        }
        running.run(rx).await;
        exit::OK
    })
}

/// Maps SIGTERM, SIGINT and SIGHUP to [`Control`] messages.
fn spawn_signals(tx: mpsc::Sender<Control>, config_path: Option<PathBuf>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::task::spawn_local(async move {
        loop {
            let msg = tokio::select! {
                _ = term.recv() => Control::Drain,
                _ = int.recv() => Control::Stop,
                _ = hup.recv() => match reload_config(config_path.as_ref()) {
                    Some((tls, reload)) => {
                        // TLS first: the reload is counted once both are in place.
                        if tx.send(Control::Tls(tls)).await.is_err() {
                            return;
                        }
                        reload
                    }
                    None => continue,
                },
            };
            if tx.send(msg).await.is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// The TLS config and the reload a SIGHUP asks for.
type Reloaded = (Option<Arc<rustls::ServerConfig>>, Control);

/// Re-reads the config (if a path is known), the keys and the TLS files; `None` (logged) on
/// any error.
fn reload_config(path: Option<&PathBuf>) -> Option<Reloaded> {
    let Some(path) = path else {
        tracing::warn!("SIGHUP: no config file to re-read (started on defaults)");
        return None;
    };
    let loaded = Config::load(path).and_then(|c| {
        let keys = c.check()?;
        let tls = c.tls.as_ref().map(crate::tls::server_config).transpose()?;
        Ok((c, keys, tls))
    });
    match loaded {
        Ok((c, keys, tls)) => Some((tls, Control::Reload { keys, router: c.router })),
        Err(e) => {
            metrics::counter!(m::CONFIG_RELOADS, "result" => "error").increment(1);
            tracing::error!(error = %e, path = %path.display(), "SIGHUP: config refused, keeping the old one");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expiry_wheel_forgets_ended_subscriptions_in_bulk() {
        let w = Worker::new(&Config::default(), KeySet::default(), 0);
        let add = |conn: ConnId, until: u64| {
            w.ledger.borrow_mut().subscribe(conn, "t", until, 8).unwrap();
            w.expiry.borrow_mut().entry(until).or_default().push((conn, Rc::from("t")));
            w.wheel_len.set(w.wheel_len.get() + 1);
        };
        for conn in 0..3000 {
            add(conn, 100);
        }
        // A storm of reconnects: 2990 connections end, their entries stay behind.
        for conn in 10..3000 {
            w.ledger.borrow_mut().remove_conn(conn);
        }
        w.compact_wheel();
        assert_eq!(w.wheel_len.get(), 10);
        assert_eq!(w.expiry.borrow().values().map(Vec::len).sum::<usize>(), 10);
        // Expiry still finds the live ones.
        w.expire(101);
        assert_eq!(w.ledger.borrow().subscription_count(), 0);
        assert_eq!(w.wheel_len.get(), 0);
    }
}
