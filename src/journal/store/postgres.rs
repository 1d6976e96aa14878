//! The PostgreSQL backend: the journal when more than one process or host writes.
//!
//! Role: the same contract as the SQLite backend over a connection pool (deadpool). A few
//! writer tasks take queued appends, group them, and commit each group in one transaction
//! whose first statement bumps the topics' counter rows (`INSERT .. ON CONFLICT DO UPDATE ..
//! RETURNING`): the row lock serializes appenders of one topic across every connection,
//! process and host, which is what keeps seqs gapless and unique. Counter rows are locked in
//! topic order, and deadlocks or serialization failures (which that order makes rare) are
//! retried. Each append transaction also sends a NOTIFY, so the outbox publisher of whichever
//! process holds the lease wakes at once.
//!
//! Invariants: only writer tasks append; the lease connection is never pooled (its session
//! advisory lock must live exactly as long as the lease).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::{StreamExt, pin_mut};
use tokio::sync::{Mutex, Notify, mpsc};
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use super::{
    AppendJob, Appended, Migration, NewEnvelope, Page, Pending, ReadResult, RetentionRule, StoreError, TopicRow,
    TopicState, Tuning, now_ms, prepare, reply_all, retention_cut, to_db, topic_counts,
};
use crate::bus::Routed;

/// Embedded migrations, in order (`migrations/postgres/NNN_name.sql`).
pub(crate) const MIGRATIONS: &[Migration] = &[(1, "init", include_str!("../migrations/postgres/001_init.sql"))];

/// Advisory lock taken (per transaction) while migrating.
const MIGRATION_LOCK: i64 = 0x5357_4a4d_4947_0001;
/// Advisory lock held (per session) by the outbox lease.
const LEASE_LOCK: i64 = 0x5357_4a4f_5554_0001;
/// NOTIFY channel appends signal on.
const CHANNEL: &str = "switchboard_outbox";
/// Queued appends before appenders wait (backpressure).
const QUEUE: usize = 8192;
/// Attempts of a group that hit a deadlock or serialization failure.
const ATTEMPTS: usize = 5;

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The driver's Display says only "db error"; the server's message is in the source.
        let text = match e.as_db_error() {
            Some(db) => format!("postgres: {} {}: {}", db.severity(), db.code().code(), db.message()),
            None => format!("postgres: {e}"),
        };
        match e.code() {
            // Class 08 (connection), 53 (resources), 57 (operator intervention: shutdown, ...),
            // 3D (the database is gone).
            Some(c) if matches!(&c.code()[..2], "08" | "53" | "57" | "3D") => StoreError::Unavailable(text),
            Some(_) => StoreError::Database(text),
            None => StoreError::Unavailable(text),
        }
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => e.into(),
        e => StoreError::Unavailable(format!("postgres pool: {e}")),
    }
}

/// Handle to the PostgreSQL store. Clones share the pool and the writer tasks.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// The writer tasks' queue; dropping the last sender stops them.
    jobs: mpsc::Sender<AppendJob>,
    config: tokio_postgres::Config,
    tuning: Tuning,
}

async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version integer PRIMARY KEY, name text NOT NULL, applied_ms bigint NOT NULL)",
    )
    .await?;
    let current: i32 = tx.query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[]).await?.get(0);
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if current as i64 > i64::from(known) {
        return Err(StoreError::Schema(format!(
            "database schema version {current} is newer than this build knows ({known})"
        )));
    }
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 as i64 > current as i64) {
        tx.batch_execute(sql).await.map_err(|e| StoreError::Schema(format!("migration {version:03}_{name}: {e}")))?;
        tx.execute(
            "INSERT INTO schema_version (version, name, applied_ms) VALUES ($1, $2, $3)",
            &[&(*version as i32), name, &to_db(now_ms())],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

impl PostgresStore {
    pub(crate) async fn open(
        url: &str,
        pool_size: usize,
        tuning: Tuning,
        appended: Arc<Notify>,
    ) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| StoreError::Schema(format!("journal.postgres_url: {e}")))?;
        config.connect_timeout(tuning.timeout);
        if config.get_application_name().is_none() {
            config.application_name("switchboard-journal");
        }
        let manager =
            Manager::from_config(config.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(tuning.timeout))
            .create_timeout(Some(tuning.timeout))
            .recycle_timeout(Some(tuning.timeout))
            .build()
            .map_err(|e| StoreError::Schema(format!("postgres pool: {e}")))?;
        {
            let mut client = pool.get().await.map_err(pool_error)?;
            migrate(&mut client).await?;
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        // Two writers overlap one group's commit with the next group's statements; more only
        // add contention on hot counter rows.
        for _ in 0..pool_size.clamp(1, 2) {
            tokio::spawn(writer(rx.clone(), pool.clone(), appended.clone(), tuning.batch_max));
        }
        Ok(Self { inner: Arc::new(Inner { pool, jobs: tx, config, tuning }) })
    }

    pub(crate) async fn submit(&self, job: AppendJob) -> Result<(), StoreError> {
        self.inner.jobs.send(job).await.map_err(|_| StoreError::Closed)
    }

    pub(crate) async fn read(&self, topic: &str, after: u64, limit: usize) -> Result<ReadResult, StoreError> {
        let client = self.inner.pool.get().await.map_err(pool_error)?;
        let st = client
            .prepare_cached("SELECT seq, frame FROM envelopes WHERE topic = $1 AND seq > $2 ORDER BY seq LIMIT $3")
            .await?;
        let lim = (limit as i64).saturating_add(1);
        let after_db = to_db(after);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&topic, &after_db, &lim];
        let rows = client.query_raw(&st, params).await?;
        pin_mut!(rows);
        let mut page = Page { frames: Vec::new(), next_after: after, more: false };
        let mut bytes = 0usize;
        while let Some(row) = rows.next().await {
            let row = row?;
            let frame: &[u8] = row.try_get(1)?;
            if page.frames.len() >= limit
                || (!page.frames.is_empty() && bytes + frame.len() > self.inner.tuning.max_page_bytes)
            {
                page.more = true;
                break;
            }
            bytes += frame.len();
            page.frames.push(Bytes::copy_from_slice(frame));
            page.next_after = row.try_get::<_, i64>(0)? as u64;
        }
        // Read the prune mark after the rows: a prune that committed before the rows were read
        // is seen here, so a page never silently starts after a pruned hole.
        let pruned: i64 = client
            .query_opt("SELECT pruned_through FROM topics WHERE topic = $1", &[&topic])
            .await?
            .map_or(0, |r| r.get(0));
        if after < pruned as u64 {
            return Ok(ReadResult::Pruned { oldest_seq: pruned as u64 + 1 });
        }
        Ok(ReadResult::Page(page))
    }

    pub(crate) async fn topic_state(&self, topic: &str) -> Result<TopicState, StoreError> {
        let client = self.inner.pool.get().await.map_err(pool_error)?;
        let row = client.query_opt("SELECT last_seq, pruned_through FROM topics WHERE topic = $1", &[&topic]).await?;
        let (last, pruned) = row.map_or((0, 0), |r| (r.get::<_, i64>(0), r.get::<_, i64>(1)));
        Ok(TopicState { last_seq: last as u64, oldest_seq: pruned as u64 + 1 })
    }

    pub(crate) async fn health(&self) -> Result<(), StoreError> {
        let client = self.inner.pool.get().await.map_err(pool_error)?;
        client.query_one("SELECT 1", &[]).await?;
        Ok(())
    }

    pub(crate) async fn outbox_len(&self) -> Result<u64, StoreError> {
        let client = self.inner.pool.get().await.map_err(pool_error)?;
        Ok(client.query_one("SELECT count(*) FROM outbox", &[]).await?.get::<_, i64>(0) as u64)
    }

    pub(crate) async fn lease(&self) -> Result<Option<Lease>, StoreError> {
        let (client, mut connection) = self.inner.config.connect(NoTls).await?;
        let (notes_tx, notes) = mpsc::unbounded_channel();
        // Drive the connection ourselves to see NOTIFY messages (the pool's connections drop them).
        tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(_))) => {
                        let _ = notes_tx.send(());
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!(error = %StoreError::from(e), "outbox lease connection failed");
                        return;
                    }
                    None => return,
                }
            }
        });
        let got: bool = client.query_one("SELECT pg_try_advisory_lock($1)", &[&LEASE_LOCK]).await?.get(0);
        if !got {
            return Ok(None);
        }
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        Ok(Some(Lease { client, notes }))
    }
}

/// A writer task: takes the next group of queued appends and commits it.
async fn writer(rx: Arc<Mutex<mpsc::Receiver<AppendJob>>>, pool: Pool, appended: Arc<Notify>, batch_max: usize) {
    loop {
        let (group, n) = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            let mut n = first.batch.len();
            let mut group = vec![first];
            while n < batch_max {
                match rx.try_recv() {
                    Ok(j) => {
                        n += j.batch.len();
                        group.push(j);
                    }
                    Err(_) => break,
                }
            }
            (group, n)
        };
        let result = append_group(&pool, &group, n).await;
        let ok = result.is_ok();
        reply_all(group, result);
        if ok {
            appended.notify_one();
        }
    }
}

/// Why one attempt at a group failed.
enum AttemptError {
    Pg(tokio_postgres::Error),
    Store(StoreError),
}

impl From<tokio_postgres::Error> for AttemptError {
    fn from(e: tokio_postgres::Error) -> Self {
        AttemptError::Pg(e)
    }
}

async fn append_group(pool: &Pool, group: &[AppendJob], n: usize) -> Result<Vec<Appended>, StoreError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let all: Vec<&NewEnvelope> = group.iter().flat_map(|j| j.batch.iter()).collect();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match try_append(&mut client, &all, n).await {
            Ok(out) => return Ok(out),
            Err(AttemptError::Store(e)) => return Err(e),
            Err(AttemptError::Pg(e))
                if attempt < ATTEMPTS
                    && matches!(e.code(), Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE) =>
            {
                tracing::debug!(error = %e, attempt, "append retried");
            }
            Err(AttemptError::Pg(e)) => return Err(e.into()),
        }
    }
}

async fn try_append(
    client: &mut deadpool_postgres::Client,
    all: &[&NewEnvelope],
    n: usize,
) -> Result<Vec<Appended>, AttemptError> {
    let counts = topic_counts(all.iter().copied());
    let tx = client.transaction().await?;
    let bump = tx
        .prepare_cached(
            "INSERT INTO topics (topic, last_seq) SELECT * FROM unnest($1::text[], $2::int8[])
             ON CONFLICT (topic) DO UPDATE SET last_seq = topics.last_seq + excluded.last_seq
             RETURNING topic, last_seq",
        )
        .await?;
    let names: Vec<&str> = counts.keys().copied().collect();
    let adds: Vec<i64> = counts.values().map(|&c| to_db(c)).collect();
    let mut last = BTreeMap::new();
    for row in tx.query(&bump, &[&names, &adds]).await? {
        last.insert(row.try_get::<_, String>(0)?, row.try_get::<_, i64>(1)? as u64);
    }
    let ts = now_ms();
    let prepared = prepare(all.iter().copied(), &counts, &last, n, ts).map_err(AttemptError::Store)?;
    let topics: Vec<&str> = all.iter().map(|e| e.topic()).collect();
    let seqs: Vec<i64> = prepared.iter().map(|p| to_db(p.seq)).collect();
    let ids: Vec<&str> = prepared.iter().map(|p| p.id.as_str()).collect();
    let tss: Vec<i64> = vec![to_db(ts); n];
    let frames: Vec<&[u8]> = prepared.iter().map(|p| p.frame.as_slice()).collect();
    let ins = tx
        .prepare_cached(
            "INSERT INTO envelopes (topic, seq, id, ts, frame)
             SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::int8[], $5::bytea[])",
        )
        .await?;
    let outbox =
        tx.prepare_cached("INSERT INTO outbox (topic, seq) SELECT * FROM unnest($1::text[], $2::int8[])").await?;
    let notify = tx.prepare_cached("SELECT pg_notify($1, '')").await?;
    // Pipelined: the three statements go out together, one round trip instead of three.
    futures_util::future::try_join3(
        tx.execute(&ins, &[&topics, &seqs, &ids, &tss, &frames]),
        tx.execute(&outbox, &[&topics, &seqs]),
        tx.execute(&notify, &[&CHANNEL]),
    )
    .await?;
    tx.commit().await?;
    Ok(all
        .iter()
        .zip(prepared)
        .map(|(e, p)| Appended { topic: e.topic().to_owned(), seq: p.seq, id: p.id, ts })
        .collect())
}

/// The PostgreSQL lease: a dedicated connection holding the session advisory lock and
/// listening on the outbox channel.
pub(crate) struct Lease {
    client: Client,
    /// One message per NOTIFY received; closed when the connection is gone.
    notes: mpsc::UnboundedReceiver<()>,
}

impl Lease {
    pub(crate) async fn pending(&mut self, limit: usize) -> Result<Vec<Pending>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT o.id, o.topic, o.seq, e.frame FROM outbox o
                 LEFT JOIN envelopes e ON e.topic = o.topic AND e.seq = o.seq
                 ORDER BY o.id LIMIT $1",
                &[&(limit as i64)],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        let mut orphans = Vec::new();
        for row in rows {
            let id: i64 = row.try_get(0)?;
            match row.try_get::<_, Option<Vec<u8>>>(3)? {
                Some(frame) => out.push(Pending {
                    id,
                    routed: Routed {
                        topic: row.try_get(1)?,
                        seq: row.try_get::<_, i64>(2)? as u64,
                        frame: Bytes::from(frame),
                    },
                }),
                None => orphans.push(id),
            }
        }
        if !orphans.is_empty() {
            // Retention never removes an outbox row's envelope; only a manual DELETE could.
            tracing::warn!(count = orphans.len(), "outbox rows without an envelope: dropping them");
            self.ack(&orphans).await?;
        }
        Ok(out)
    }

    pub(crate) async fn ack(&mut self, ids: &[i64]) -> Result<(), StoreError> {
        self.client.execute("DELETE FROM outbox WHERE id = ANY($1)", &[&ids]).await?;
        Ok(())
    }

    pub(crate) async fn outbox_len(&mut self) -> Result<u64, StoreError> {
        Ok(self.client.query_one("SELECT count(*) FROM outbox", &[]).await?.get::<_, i64>(0) as u64)
    }

    pub(crate) async fn foreign_append(&mut self) -> Result<(), StoreError> {
        match self.notes.recv().await {
            Some(()) => {
                while self.notes.try_recv().is_ok() {}
                Ok(())
            }
            None => Err(StoreError::Unavailable("the outbox lease connection closed".into())),
        }
    }

    pub(crate) async fn topics_page(&mut self, after: &str, limit: usize) -> Result<Vec<TopicRow>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT t.topic, t.last_seq, t.pruned_through,
                        (SELECT e.ts FROM envelopes e WHERE e.topic = t.topic AND e.seq = t.pruned_through + 1)
                 FROM topics t WHERE t.topic > $1 ORDER BY t.topic LIMIT $2",
                &[&after, &(limit as i64)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(TopicRow {
                    topic: r.try_get(0)?,
                    last_seq: r.try_get::<_, i64>(1)? as u64,
                    pruned_through: r.try_get::<_, i64>(2)? as u64,
                    oldest_ts: r.try_get::<_, Option<i64>>(3)?.map(|v| v as u64),
                })
            })
            .collect()
    }

    pub(crate) async fn prune_topic(&mut self, topic: &str, rule: RetentionRule) -> Result<u64, StoreError> {
        let tx = self.client.transaction().await?;
        let Some(row) = tx.query_opt("SELECT last_seq, pruned_through FROM topics WHERE topic = $1", &[&topic]).await?
        else {
            return Ok(0);
        };
        let (last, pruned) = (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64);
        let (first_young, batch_last) = if rule.cutoff_ts > 0 {
            let r = tx
                .query_one(
                    "SELECT min(CASE WHEN ts >= $3 THEN seq END), max(seq) FROM
                       (SELECT seq, ts FROM envelopes WHERE topic = $1 AND seq > $2 ORDER BY seq LIMIT $4) AS oldest",
                    &[&topic, &to_db(pruned), &to_db(rule.cutoff_ts), &to_db(rule.batch)],
                )
                .await?;
            (r.get::<_, Option<i64>>(0).map(|v| v as u64), r.get::<_, Option<i64>>(1).map(|v| v as u64))
        } else {
            (None, None)
        };
        let min_pending: Option<i64> =
            tx.query_one("SELECT min(seq) FROM outbox WHERE topic = $1", &[&topic]).await?.get(0);
        let Some(cut) = retention_cut(&rule, last, pruned, first_young, batch_last, min_pending.map(|v| v as u64))
        else {
            return Ok(0);
        };
        let n = tx
            .execute(
                "DELETE FROM envelopes WHERE topic = $1 AND seq > $2 AND seq <= $3",
                &[&topic, &to_db(pruned), &to_db(cut)],
            )
            .await?;
        // Last, so the counter row (which appends of this topic also lock) is held only for
        // the commit. GREATEST: a concurrent prune elsewhere never moves the mark back.
        tx.execute(
            "UPDATE topics SET pruned_through = GREATEST(pruned_through, $2) WHERE topic = $1",
            &[&topic, &to_db(cut)],
        )
        .await?;
        tx.commit().await?;
        Ok(n)
    }
}
