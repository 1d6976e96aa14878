//! The outbox publisher: sends stored envelopes to the bus, in seq order per topic, until the
//! bus confirms each.
//!
//! Role: an envelope is stored (with an outbox row) before it is published; this task
//! publishes what the outbox holds and deletes the rows the bus took, so a broker outage or a
//! crash between append and publish loses nothing: on start it finds whatever was stored but
//! not confirmed. It runs on a thread of its own with a single-threaded runtime (the bus
//! publisher need not be `Send`, and publishing never competes with the API for a core's
//! scheduler). One process per deployment publishes: the one holding the store's [`Lease`];
//! others stand by and retry the lease. The same loop runs retention steps.
//!
//! Wake-ups: an append in this process wakes the loop at once; appends in other processes
//! wake it through the lease (PostgreSQL NOTIFY, SQLite `data_version`); a slow poll
//! (`outbox_poll_ms`) is the safety net. When the bus fails the batch is retried with a
//! doubling pause (50 ms up to `outbox_retry_max_ms`) after reconnecting.
//!
//! Delivery is at least once: a crash after the bus took a batch but before its rows were
//! deleted publishes it again (routers and clients drop a seq they already have).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot};

use super::retention::{Retention, RetentionPolicy};
use super::store::{EnvelopeStore, Lease, StoreError};
use crate::bus::{self, BusError, Routed};
use crate::config::{BusConfig, JournalConfig};

/// Where the outbox publishes: the bus, or a stand-in in tests.
pub trait Sink {
    /// Publishes a batch in order; `Ok` means every envelope was taken.
    fn publish(&mut self, batch: &[Routed]) -> impl Future<Output = Result<(), BusError>>;
}

impl Sink for bus::Publisher {
    fn publish(&mut self, batch: &[Routed]) -> impl Future<Output = Result<(), BusError>> {
        bus::Publisher::publish(self, batch)
    }
}

/// The outbox's tuning, from `[journal]`.
#[derive(Debug, Clone)]
pub struct OutboxOptions {
    /// Envelopes per bus call.
    pub batch: usize,
    /// Safety-net poll.
    pub poll: Duration,
    /// Longest pause between retries while the bus fails.
    pub retry_max: Duration,
    /// How often a standby process tries to take the lease.
    pub lease_retry: Duration,
    /// Retention, when configured.
    pub retention: Option<RetentionPolicy>,
}

impl OutboxOptions {
    pub fn from_config(cfg: &JournalConfig) -> Self {
        Self {
            batch: cfg.outbox_batch,
            poll: Duration::from_millis(cfg.outbox_poll_ms),
            retry_max: Duration::from_millis(cfg.outbox_retry_max_ms),
            lease_retry: Duration::from_secs(2),
            retention: RetentionPolicy::from_config(cfg),
        }
    }
}

/// The pause before the next retry: 50 ms, doubling, capped.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(50);

    pub fn new(max: Duration) -> Self {
        Self { next: Self::FIRST.min(max), max }
    }

    /// The pause to take now; the following one is twice as long, up to the cap.
    pub fn pause(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        now
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST.min(self.max);
    }
}

/// Shared between the handle and the thread.
struct Control {
    /// Set by `close`: publish what is pending, then stop.
    draining: AtomicBool,
    /// Past this instant a draining loop stops even with envelopes pending.
    deadline: Mutex<Option<Instant>>,
    /// Interrupts any wait of the loop.
    wake: Notify,
    /// Whether this process holds the lease now.
    leader: AtomicBool,
}

impl Control {
    fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    fn past_deadline(&self) -> bool {
        self.draining() && self.deadline.lock().unwrap_or_else(|p| p.into_inner()).is_none_or(|d| Instant::now() >= d)
    }
}

/// Handle to the running publisher. Dropping it stops the loop without draining.
pub struct Outbox {
    control: Arc<Control>,
    done: Option<oneshot::Receiver<()>>,
}

impl Outbox {
    /// Starts publishing `store`'s outbox to the bus configured by `bus`.
    pub fn start(store: EnvelopeStore, bus: &BusConfig, opts: OutboxOptions) -> std::io::Result<Self> {
        let bus = bus.clone();
        Self::start_with(store, opts, move || {
            let bus = bus.clone();
            async move { bus::Publisher::connect(&bus).await }
        })
    }

    /// Starts publishing through sinks made by `connect` (called again after a sink failed).
    pub fn start_with<C, F, S>(store: EnvelopeStore, opts: OutboxOptions, connect: C) -> std::io::Result<Self>
    where
        C: FnMut() -> F + Send + 'static,
        F: Future<Output = Result<S, BusError>> + 'static,
        S: Sink + 'static,
    {
        let control = Arc::new(Control {
            draining: AtomicBool::new(false),
            deadline: Mutex::new(None),
            wake: Notify::new(),
            leader: AtomicBool::new(false),
        });
        let (done_tx, done) = oneshot::channel();
        let c = control.clone();
        std::thread::Builder::new().name("journal-outbox".into()).spawn(move || {
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt.block_on(run(store, opts, connect, c)),
                Err(e) => tracing::error!(error = %e, "outbox: cannot build its runtime"),
            }
            let _ = done_tx.send(());
        })?;
        Ok(Self { control, done: Some(done) })
    }

    /// Whether this process holds the outbox lease now.
    pub fn is_leader(&self) -> bool {
        self.control.leader.load(Ordering::Acquire)
    }

    /// Publishes what is pending (for at most `grace`), then stops. What is left stays in the
    /// store for the next start.
    pub async fn close(mut self, grace: Duration) {
        *self.control.deadline.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + grace);
        self.control.draining.store(true, Ordering::Release);
        self.control.wake.notify_one();
        if let Some(done) = self.done.take() {
            // The loop checks the deadline between batches; one slow bus call may overrun it.
            let _ = tokio::time::timeout(grace + Duration::from_secs(5), done).await;
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if self.done.is_some() {
            *self.control.deadline.lock().unwrap_or_else(|p| p.into_inner()) = None;
            self.control.draining.store(true, Ordering::Release);
            self.control.wake.notify_one();
        }
    }
}

/// Why the leading loop ended.
enum Exit {
    Stop,
    Lost(StoreError),
}

async fn run<C, F, S>(store: EnvelopeStore, opts: OutboxOptions, mut connect: C, control: Arc<Control>)
where
    C: FnMut() -> F,
    F: Future<Output = Result<S, BusError>>,
    S: Sink,
{
    let mut sink: Option<S> = None;
    let mut retention = opts.retention.map(Retention::new);
    loop {
        if control.draining() {
            return;
        }
        let lease = match store.lease().await {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                tracing::debug!("outbox: another process holds the lease; standing by");
                wait(&control, opts.lease_retry).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "outbox: cannot take the lease");
                wait(&control, opts.lease_retry).await;
                continue;
            }
        };
        control.leader.store(true, Ordering::Release);
        ::metrics::gauge!(crate::metrics::OUTBOX_LEADER).set(1.0);
        tracing::info!("outbox: publishing (this process holds the lease)");
        let exit = lead(&store, lease, &opts, &mut connect, &mut sink, &mut retention, &control).await;
        control.leader.store(false, Ordering::Release);
        ::metrics::gauge!(crate::metrics::OUTBOX_LEADER).set(0.0);
        match exit {
            Exit::Stop => return,
            Exit::Lost(e) => {
                tracing::warn!(error = %e, "outbox: lost the store; taking the lease again");
                wait(&control, Duration::from_secs(1)).await;
            }
        }
    }
}

/// Waits `d` or until woken.
async fn wait(control: &Control, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = control.wake.notified() => {}
    }
}

async fn lead<C, F, S>(
    store: &EnvelopeStore,
    mut lease: Lease,
    opts: &OutboxOptions,
    connect: &mut C,
    sink: &mut Option<S>,
    retention: &mut Option<Retention>,
    control: &Control,
) -> Exit
where
    C: FnMut() -> F,
    F: Future<Output = Result<S, BusError>>,
    S: Sink,
{
    let mut backoff = Backoff::new(opts.retry_max);
    let mut gauge_at = Instant::now() - Duration::from_secs(3600);
    loop {
        if let Some(r) = retention.as_mut().filter(|r| r.next_due() <= Instant::now() && !control.draining())
            && let Err(e) = r.step(&mut lease).await
        {
            return Exit::Lost(e);
        }
        let batch = match lease.pending(opts.batch).await {
            Ok(b) => b,
            Err(e) => return Exit::Lost(e),
        };
        if batch.is_empty() {
            ::metrics::gauge!(crate::metrics::OUTBOX_PENDING).set(0.0);
            if control.draining() {
                return Exit::Stop;
            }
            let until = retention.as_ref().map_or(Instant::now() + opts.poll, |r| r.next_due());
            let until = until.min(Instant::now() + opts.poll);
            tokio::select! {
                _ = store.appended().notified() => {}
                r = lease.foreign_append() => if let Err(e) = r { return Exit::Lost(e) },
                _ = tokio::time::sleep_until(until.into()) => {}
                _ = control.wake.notified() => {}
            }
            continue;
        }
        if control.past_deadline() {
            return Exit::Stop;
        }
        if gauge_at.elapsed() >= Duration::from_secs(1) {
            gauge_at = Instant::now();
            match lease.outbox_len().await {
                Ok(n) => ::metrics::gauge!(crate::metrics::OUTBOX_PENDING).set(n as f64),
                Err(e) => return Exit::Lost(e),
            }
        }
        let (ids, routed): (Vec<i64>, Vec<Routed>) = batch.into_iter().map(|p| (p.id, p.routed)).unzip();
        let result = match sink {
            Some(s) => s.publish(&routed).await,
            None => match connect().await {
                Ok(s) => sink.insert(s).publish(&routed).await,
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(()) => {
                if let Err(e) = lease.ack(&ids).await {
                    return Exit::Lost(e);
                }
                ::metrics::counter!(crate::metrics::OUTBOX_PUBLISHED).increment(ids.len() as u64);
                backoff.reset();
            }
            Err(e) => {
                // A failed publisher may hold a broken channel: reconnect before the retry.
                *sink = None;
                ::metrics::counter!(crate::metrics::OUTBOX_RETRIES).increment(1);
                let pause = backoff.pause();
                tracing::warn!(error = %e, pending = ids.len(), retry_in_ms = pause.as_millis() as u64, "outbox: bus publish failed");
                wait(control, pause).await;
            }
        }
    }
}

#[cfg(test)]
mod tests;
