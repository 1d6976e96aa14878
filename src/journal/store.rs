//! The envelope store: the journal's durable log of every envelope, on SQLite or PostgreSQL.
//!
//! Role: the source of truth. An append assigns the next seq of each topic and stores the
//! encoded envelope frame (the exact bytes clients receive) together with an outbox row, in
//! one transaction; reconciliation reads the frames back by `(topic, seq)`; the outbox
//! publisher and retention work through a [`Lease`], held by one process of a deployment at
//! a time.
//!
//! Concurrent [`EnvelopeStore::append`] calls are grouped by a writer (a thread for SQLite,
//! a few tasks for PostgreSQL) into one transaction of up to `append_batch_max` envelopes:
//! one commit (one fsync) for many appends is where the throughput comes from. Each call
//! stays atomic: the group commits or fails as a whole.
//!
//! Invariants (both backends, checked by the model test in `tests`):
//! - for every topic the stored seqs are exactly `pruned_through+1 ..= last_seq`, without a
//!   gap or a duplicate, whatever the number of concurrent appenders;
//! - an envelope has an outbox row until the bus confirmed it, and retention never removes an
//!   envelope that still has one;
//! - within a topic, outbox ids grow with seq, so publishing in id order is seq order.
//!
//! Migrations are plain SQL files under `migrations/<backend>/NNN_name.sql`, embedded at build
//! time and applied in order at open, each recorded in `schema_version`.

pub mod postgres;
pub mod sqlite;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use thiserror::Error;
use tokio::sync::{Notify, oneshot};

use crate::bus::Routed;
use crate::config::{JournalConfig, StoreKind};
use crate::wire::envelope::validate_fields;
use crate::wire::frame::FrameError;
use crate::wire::limits::{MAX_ENVELOPE_BYTES, MAX_KIND_BYTES};
use crate::wire::{EnvelopeRef, topic};

/// Why the store could not do what was asked. Cloneable: one failed group commit answers
/// every append that was in it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StoreError {
    /// The database cannot be reached or is busy beyond the timeout: worth retrying later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database answered with an error.
    #[error("database error: {0}")]
    Database(String),
    /// The schema is missing, newer than this build, or a migration failed.
    #[error("schema: {0}")]
    Schema(String),
    /// The store's writer has stopped (the process is shutting down).
    #[error("the store is closed")]
    Closed,
}

/// Why an envelope was refused before it reached the database.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidEnvelope {
    #[error("topic: {0}")]
    Topic(String),
    #[error("kind must be 1..={MAX_KIND_BYTES} bytes")]
    Kind,
    #[error("payload is {len} bytes, above the limit of {max}")]
    TooLarge { len: usize, max: usize },
}

/// Largest payload accepted: the frame's fixed fields fit in the remaining KiB.
pub const MAX_PAYLOAD_BYTES: usize = MAX_ENVELOPE_BYTES - 1024;

/// The journal's topic rule: the wire rule (1..=200 bytes of printable ASCII) and, because
/// every stored envelope must be readable back through `GET /v1/topics/{topic}/envelopes`,
/// no `/` and not `.` or `..` (they cannot travel as one URL path segment unchanged).
pub fn check_topic(name: &str) -> Result<(), InvalidEnvelope> {
    topic::validate(name).map_err(|e| InvalidEnvelope::Topic(e.to_string()))?;
    if name.contains('/') {
        return Err(InvalidEnvelope::Topic("a journal topic cannot contain '/'".into()));
    }
    if name == "." || name == ".." {
        return Err(InvalidEnvelope::Topic("a journal topic cannot be '.' or '..'".into()));
    }
    Ok(())
}

/// An envelope to append: what the publisher chooses. The journal adds seq, id and ts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEnvelope {
    topic: String,
    kind: String,
    payload: Vec<u8>,
}

impl NewEnvelope {
    /// Checks topic (see [`check_topic`]), kind and payload size.
    pub fn new(
        topic: impl Into<String>,
        kind: impl Into<String>,
        payload: impl Into<Vec<u8>>,
    ) -> Result<Self, InvalidEnvelope> {
        let (topic, kind, payload) = (topic.into(), kind.into(), payload.into());
        check_topic(&topic)?;
        match validate_fields(&topic, &kind, payload.len()) {
            Ok(()) => Ok(Self { topic, kind, payload }),
            Err(FrameError::TooLarge { len, max }) => Err(InvalidEnvelope::TooLarge { len, max }),
            Err(FrameError::Topic(e)) => Err(InvalidEnvelope::Topic(e.to_string())),
            Err(_) => Err(InvalidEnvelope::Kind),
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }
    pub fn kind(&self) -> &str {
        &self.kind
    }
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
}

/// What an append assigned to one envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub topic: String,
    /// Position in the topic, from 1, gapless.
    pub seq: u64,
    /// Unique id (see `journal::id`).
    pub id: String,
    /// Acceptance time, milliseconds since the Unix epoch.
    pub ts: u64,
}

/// One page of a reconciliation read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    /// Envelope frames with seq > `after`, in seq order, gapless.
    pub frames: Vec<Bytes>,
    /// Seq of the last frame, or `after` when the page is empty.
    pub next_after: u64,
    /// Whether envelopes after `next_after` exist (the page stopped at `limit` or at the byte cap).
    pub more: bool,
}

/// The answer to a reconciliation read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadResult {
    Page(Page),
    /// Retention already removed some of the seqs after `after`; the oldest that can still be
    /// served is `oldest_seq` (it may not exist yet when everything was pruned).
    Pruned {
        oldest_seq: u64,
    },
}

/// A topic's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TopicState {
    /// Highest seq assigned (0: nothing appended yet).
    pub last_seq: u64,
    /// Oldest seq retained: `pruned_through + 1`.
    pub oldest_seq: u64,
}

/// An envelope waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The outbox row, to acknowledge.
    pub id: i64,
    pub routed: Routed,
}

/// One topic as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRow {
    pub topic: String,
    pub last_seq: u64,
    pub pruned_through: u64,
    /// `ts` of the oldest retained envelope, when one is retained.
    pub oldest_ts: Option<u64>,
}

/// How much retention keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionRule {
    /// Keep at most this many envelopes per topic (0: no count limit).
    pub max_count: u64,
    /// Remove envelopes accepted before this time, ms since the epoch (0: no age limit).
    pub cutoff_ts: u64,
    /// Most envelopes one prune transaction deletes.
    pub batch: u64,
}

impl RetentionRule {
    /// Whether `row` holds anything this rule removes.
    pub fn wants(&self, row: &TopicRow) -> bool {
        let retained = row.last_seq.saturating_sub(row.pruned_through);
        (self.max_count > 0 && retained > self.max_count) || row.oldest_ts.is_some_and(|ts| ts < self.cutoff_ts)
    }
}

/// Tuning shared by both backends, from `[journal]`.
#[derive(Debug, Clone)]
pub(crate) struct Tuning {
    pub batch_max: usize,
    pub timeout: Duration,
    pub max_page_bytes: usize,
}

impl Tuning {
    fn from_config(cfg: &JournalConfig) -> Self {
        Self {
            batch_max: cfg.append_batch_max,
            timeout: Duration::from_secs(cfg.store_timeout_secs),
            max_page_bytes: cfg.max_page_bytes,
        }
    }
}

/// One caller's append, queued for the group-commit writer.
pub(crate) struct AppendJob {
    pub batch: Vec<NewEnvelope>,
    pub reply: oneshot::Sender<Result<Vec<Appended>, StoreError>>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// How many envelopes of each topic a group holds, sorted by topic: both backends lock the
/// counter rows in this order, so two groups never wait on each other in a cycle.
pub(crate) fn topic_counts<'a>(jobs: impl Iterator<Item = &'a NewEnvelope>) -> BTreeMap<&'a str, u64> {
    let mut counts = BTreeMap::new();
    for e in jobs {
        *counts.entry(e.topic.as_str()).or_insert(0) += 1;
    }
    counts
}

/// A stored row, ready to insert.
pub(crate) struct Prepared {
    pub seq: u64,
    pub id: String,
    pub frame: Vec<u8>,
}

/// Gives each envelope its seq (the range below `last` reserved for its topic, in order), an id
/// and `ts`, and encodes its frame.
pub(crate) fn prepare<'a>(
    envelopes: impl Iterator<Item = &'a NewEnvelope>,
    counts: &BTreeMap<&str, u64>,
    last: &BTreeMap<String, u64>,
    n: usize,
    ts: u64,
) -> Result<Vec<Prepared>, StoreError> {
    let mut next: BTreeMap<&str, u64> = BTreeMap::new();
    for (t, c) in counts {
        let l = last.get(*t).ok_or_else(|| StoreError::Database(format!("no counter returned for {t}")))?;
        let first = (l + 1)
            .checked_sub(*c)
            .filter(|f| *f >= 1)
            .ok_or_else(|| StoreError::Database(format!("counter of {t} is {l}, below the {c} just reserved")))?;
        next.insert(t, first);
    }
    let ids = super::id::generate(ts, n)?;
    let mut out = Vec::with_capacity(n);
    for (e, id) in envelopes.zip(ids) {
        let slot = next.get_mut(e.topic.as_str()).ok_or_else(|| StoreError::Database("counter missing".into()))?;
        let seq = *slot;
        *slot += 1;
        let frame = EnvelopeRef { topic: &e.topic, seq, id: &id, ts, kind: &e.kind, payload: &e.payload }.encode();
        out.push(Prepared { seq, id, frame });
    }
    Ok(out)
}

/// Answers each job of a group with its slice of the results, in order.
pub(crate) fn reply_all(jobs: Vec<AppendJob>, result: Result<Vec<Appended>, StoreError>) {
    match result {
        Ok(all) => {
            let mut all = all.into_iter();
            for job in jobs {
                let mine: Vec<Appended> = all.by_ref().take(job.batch.len()).collect();
                let _ = job.reply.send(Ok(mine));
            }
        }
        Err(e) => {
            for job in jobs {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
    }
}

/// A migration: version, name and SQL text.
pub(crate) type Migration = (u32, &'static str, &'static str);

/// The store, behind one handle for both backends. Cheap to clone; every clone shares the
/// writer, the connections and the append signal.
#[derive(Clone)]
pub struct EnvelopeStore {
    backend: Backend,
    /// Notified after every committed append: wakes this process's outbox publisher without a
    /// polling delay.
    appended: Arc<Notify>,
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PostgresStore),
}

impl EnvelopeStore {
    /// Opens the configured backend and applies pending migrations. Must run inside a tokio
    /// runtime (PostgreSQL's writer tasks and connections live on it).
    pub async fn open(cfg: &JournalConfig) -> Result<Self, StoreError> {
        let appended = Arc::new(Notify::new());
        let tuning = Tuning::from_config(cfg);
        let backend = match cfg.store {
            StoreKind::Sqlite => Backend::Sqlite(
                sqlite::SqliteStore::open(&cfg.sqlite_path, cfg.sqlite_synchronous, tuning, appended.clone()).await?,
            ),
            StoreKind::Postgres => Backend::Postgres(
                postgres::PostgresStore::open(&cfg.postgres_url, cfg.postgres_pool_size, tuning, appended.clone())
                    .await?,
            ),
        };
        Ok(Self { backend, appended })
    }

    /// Which backend this is.
    pub fn kind(&self) -> StoreKind {
        match self.backend {
            Backend::Sqlite(_) => StoreKind::Sqlite,
            Backend::Postgres(_) => StoreKind::Postgres,
        }
    }

    /// Appends `batch` atomically: every envelope gets the next seq of its topic (in batch
    /// order), an id and the same `ts`; results are in batch order.
    pub async fn append(&self, batch: Vec<NewEnvelope>) -> Result<Vec<Appended>, StoreError> {
        if batch.is_empty() {
            return Ok(vec![]);
        }
        let n = batch.len() as u64;
        let (reply, rx) = oneshot::channel();
        let job = AppendJob { batch, reply };
        match &self.backend {
            Backend::Sqlite(s) => s.submit(job).await?,
            Backend::Postgres(p) => p.submit(job).await?,
        }
        let out = rx.await.map_err(|_| StoreError::Closed)?;
        if out.is_ok() {
            metrics::counter!(crate::metrics::JOURNAL_APPENDS).increment(n);
        }
        out
    }

    /// Envelopes of `topic` with seq > `after`, in order: at most `limit`, and no more than the
    /// configured byte cap (but always at least one when one exists).
    pub async fn read(&self, topic: &str, after: u64, limit: usize) -> Result<ReadResult, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.read(topic, after, limit).await,
            Backend::Postgres(p) => p.read(topic, after, limit).await,
        }
    }

    /// The topic's counters (zeros and oldest 1 for a topic never appended to).
    pub async fn topic_state(&self, topic: &str) -> Result<TopicState, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.topic_state(topic).await,
            Backend::Postgres(p) => p.topic_state(topic).await,
        }
    }

    /// `Ok` when the database answers a trivial query.
    pub async fn health(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.health().await,
            Backend::Postgres(p) => p.health().await,
        }
    }

    /// Envelopes stored but not yet confirmed by the bus (all processes).
    pub async fn outbox_len(&self) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.outbox_len().await,
            Backend::Postgres(p) => p.outbox_len().await,
        }
    }

    /// Tries to become the deployment's outbox publisher (and retention runner): `None` when
    /// another process holds the lease. The lease lasts as long as the value (SQLite: an
    /// exclusive `flock` beside the database file; PostgreSQL: a session advisory lock on a
    /// dedicated connection, so a crashed holder releases it with its connection).
    pub async fn lease(&self) -> Result<Option<Lease>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.lease().await?.map(|l| Lease { inner: LeaseInner::Sqlite(l) })),
            Backend::Postgres(p) => Ok(p.lease().await?.map(|l| Lease { inner: LeaseInner::Postgres(l) })),
        }
    }

    /// Resolves after the next append committed by this process.
    pub(crate) fn appended(&self) -> &Notify {
        &self.appended
    }
}

/// The right to publish the outbox and run retention, with the connection to do it.
pub struct Lease {
    inner: LeaseInner,
}

enum LeaseInner {
    Sqlite(sqlite::Lease),
    Postgres(postgres::Lease),
}

impl Lease {
    /// The oldest `limit` outbox entries, in outbox order (seq order within a topic).
    pub async fn pending(&mut self, limit: usize) -> Result<Vec<Pending>, StoreError> {
        match &mut self.inner {
            LeaseInner::Sqlite(l) => l.pending(limit).await,
            LeaseInner::Postgres(l) => l.pending(limit).await,
        }
    }

    /// Removes outbox entries the bus confirmed.
    pub async fn ack(&mut self, ids: &[i64]) -> Result<(), StoreError> {
        match &mut self.inner {
            LeaseInner::Sqlite(l) => l.ack(ids).await,
            LeaseInner::Postgres(l) => l.ack(ids).await,
        }
    }

    /// Size of the outbox.
    pub async fn outbox_len(&mut self) -> Result<u64, StoreError> {
        match &mut self.inner {
            LeaseInner::Sqlite(l) => l.outbox_len().await,
            LeaseInner::Postgres(l) => l.outbox_len().await,
        }
    }

    /// Resolves when another process may have appended (PostgreSQL: a NOTIFY on the outbox
    /// channel; SQLite: the database's `data_version` changed, checked every 50 ms). Errors
    /// mean the lease's connection is gone.
    pub async fn foreign_append(&mut self) -> Result<(), StoreError> {
        match &mut self.inner {
            LeaseInner::Sqlite(l) => l.foreign_append().await,
            LeaseInner::Postgres(l) => l.foreign_append().await,
        }
    }

    /// Up to `limit` topics after `after` in name order, for a retention pass.
    pub async fn topics_page(&mut self, after: &str, limit: usize) -> Result<Vec<TopicRow>, StoreError> {
        match &mut self.inner {
            LeaseInner::Sqlite(l) => l.topics_page(after, limit).await,
            LeaseInner::Postgres(l) => l.topics_page(after, limit).await,
        }
    }

    /// Removes, in one short transaction, at most `rule.batch` of the oldest envelopes of
    /// `topic` that `rule` no longer keeps, never one still in the outbox. Returns how many.
    pub async fn prune_topic(&mut self, topic: &str, rule: RetentionRule) -> Result<u64, StoreError> {
        match &mut self.inner {
            LeaseInner::Sqlite(l) => l.prune_topic(topic, rule).await,
            LeaseInner::Postgres(l) => l.prune_topic(topic, rule).await,
        }
    }
}

/// The cut retention may make in one topic: the highest seq to delete, or `None`.
///
/// `first_young` is the lowest retained seq with `ts >= cutoff` among the oldest `batch`,
/// `batch_last` the highest seq among them; `min_pending` the lowest seq still in the outbox.
pub(crate) fn retention_cut(
    rule: &RetentionRule,
    last_seq: u64,
    pruned_through: u64,
    first_young: Option<u64>,
    batch_last: Option<u64>,
    min_pending: Option<u64>,
) -> Option<u64> {
    let by_count = if rule.max_count > 0 { last_seq.saturating_sub(rule.max_count) } else { 0 };
    let by_age = if rule.cutoff_ts > 0 {
        match (first_young, batch_last) {
            (Some(y), _) => y.saturating_sub(1),
            (None, Some(l)) => l,
            (None, None) => 0,
        }
    } else {
        0
    };
    let mut cut = by_count.max(by_age).min(pruned_through.saturating_add(rule.batch)).min(last_seq);
    if let Some(p) = min_pending {
        cut = cut.min(p.saturating_sub(1));
    }
    (cut > pruned_through).then_some(cut)
}

/// Clamps a seq into the databases' signed 64-bit integers.
pub(crate) fn to_db(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

#[cfg(test)]
pub(crate) mod tests;
