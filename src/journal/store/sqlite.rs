//! The SQLite backend: one database file in WAL mode, for a journal on one host.
//!
//! Role: the embedded default. One writer thread owns the write connection and commits groups
//! of appends (`BEGIN IMMEDIATE`: the write lock is taken before the counters are read, so two
//! processes on the same file serialize instead of both reading the same `last_seq`; the busy
//! timeout makes the loser wait rather than fail). Reads run on a small pool of read
//! connections on tokio's blocking threads; WAL lets them proceed while the writer commits.
//!
//! Invariants: only the writer thread writes through this process's connections; every
//! write is one short transaction.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use nix::fcntl::{Flock, FlockArg};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{Notify, mpsc, oneshot};

use super::{
    AppendJob, Appended, Migration, NewEnvelope, Page, Pending, ReadResult, RetentionRule, StoreError, TopicRow,
    TopicState, Tuning, now_ms, prepare, reply_all, retention_cut, to_db, topic_counts,
};
use crate::bus::Routed;
use crate::config::SqliteSynchronous;

/// Embedded migrations, in order (`migrations/sqlite/NNN_name.sql`).
pub(crate) const MIGRATIONS: &[Migration] = &[(1, "init", include_str!("../migrations/sqlite/001_init.sql"))];

/// Page cache of the writer connection, in KiB.
const WRITER_CACHE_KIB: u32 = 64 * 1024;
/// WAL size, in pages, past which a commit checkpoints (SQLite's default is 1000).
const CHECKPOINT_PAGES: u32 = 16 * 1024;
/// Read connections kept open for reuse.
const READERS_KEPT: usize = 4;
/// Queued writer jobs before appenders wait (backpressure).
const QUEUE: usize = 8192;
/// How often a lease looks for commits by other processes.
const FOREIGN_POLL: Duration = Duration::from_millis(50);

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode::*;
        match e.sqlite_error_code() {
            Some(DatabaseBusy | DatabaseLocked | CannotOpen | DiskFull | SystemIoFailure | PermissionDenied) => {
                StoreError::Unavailable(format!("sqlite: {e}"))
            }
            _ => StoreError::Database(format!("sqlite: {e}")),
        }
    }
}

/// What the writer thread does.
enum WriteJob {
    Append(AppendJob),
    Ack(Vec<i64>, oneshot::Sender<Result<(), StoreError>>),
    Prune(String, RetentionRule, oneshot::Sender<Result<u64, StoreError>>),
}

/// Handle to the SQLite store. Clones share the writer thread and the read pool.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The writer thread's queue; dropping the last sender stops the thread.
    jobs: mpsc::Sender<WriteJob>,
    /// Idle read connections.
    readers: Mutex<Vec<Connection>>,
    path: PathBuf,
    tuning: Tuning,
}

fn open_conn(path: &Path, timeout: Duration) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(timeout)?;
    Ok(conn)
}

fn open_reader(path: &Path, timeout: Duration) -> Result<Connection, StoreError> {
    let conn = open_conn(path, timeout)?;
    conn.execute_batch("PRAGMA query_only = 1;")?;
    Ok(conn)
}

/// Applies the migrations this database has not seen, in one transaction.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let schema = |e: rusqlite::Error| StoreError::Schema(format!("sqlite: {e}"));
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ms INTEGER NOT NULL)",
    )
    .map_err(schema)?;
    let current: i64 = tx.query_row("SELECT coalesce(max(version), 0) FROM schema_version", [], |r| r.get(0))?;
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > i64::from(known) {
        return Err(StoreError::Schema(format!(
            "database schema version {current} is newer than this build knows ({known})"
        )));
    }
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| i64::from(m.0) > current) {
        tx.execute_batch(sql).map_err(|e| StoreError::Schema(format!("migration {version:03}_{name}: {e}")))?;
        tx.execute(
            "INSERT INTO schema_version (version, name, applied_ms) VALUES (?1, ?2, ?3)",
            params![version, name, to_db(now_ms())],
        )?;
    }
    tx.commit()?;
    Ok(())
}

impl SqliteStore {
    pub(crate) async fn open(
        path: &Path,
        sync: SqliteSynchronous,
        tuning: Tuning,
        appended: Arc<Notify>,
    ) -> Result<Self, StoreError> {
        let path = path.to_owned();
        let timeout = tuning.timeout;
        let batch_max = tuning.batch_max;
        let p = path.clone();
        let conn = tokio::task::spawn_blocking(move || -> Result<Connection, StoreError> {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
            }
            let mut conn = open_conn(&p, timeout)?;
            let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(StoreError::Schema(format!("{} cannot use WAL (journal_mode {mode})", p.display())));
            }
            conn.execute_batch(match sync {
                SqliteSynchronous::Full => "PRAGMA synchronous = FULL;",
                SqliteSynchronous::Normal => "PRAGMA synchronous = NORMAL;",
            })?;
            // Appends to many topics dirty many index pages per transaction; a larger cache
            // keeps them in memory, and a larger WAL checkpoint threshold writes each hot page
            // back to the database file once per checkpoint instead of every few commits.
            conn.execute_batch(&format!(
                "PRAGMA cache_size = -{WRITER_CACHE_KIB}; PRAGMA wal_autocheckpoint = {CHECKPOINT_PAGES};"
            ))?;
            migrate(&mut conn)?;
            Ok(conn)
        })
        .await
        .map_err(|e| StoreError::Database(format!("open task: {e}")))??;
        let (tx, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("journal-sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, appended, batch_max))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer thread: {e}")))?;
        Ok(Self { inner: Arc::new(Inner { jobs: tx, readers: Mutex::new(Vec::new()), path, tuning }) })
    }

    pub(crate) async fn submit(&self, job: AppendJob) -> Result<(), StoreError> {
        self.inner.jobs.send(WriteJob::Append(job)).await.map_err(|_| StoreError::Closed)
    }

    /// Runs `f` on a read connection on tokio's blocking pool.
    async fn with_reader<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &Tuning) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = inner.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let mut conn = match pooled {
                Some(c) => c,
                None => open_reader(&inner.path, inner.tuning.timeout)?,
            };
            let out = f(&mut conn, &inner.tuning);
            let mut readers = inner.readers.lock().unwrap_or_else(|p| p.into_inner());
            if readers.len() < READERS_KEPT {
                readers.push(conn);
            }
            out
        })
        .await
        .map_err(|e| StoreError::Database(format!("reader task: {e}")))?
    }

    pub(crate) async fn read(&self, topic: &str, after: u64, limit: usize) -> Result<ReadResult, StoreError> {
        let topic = topic.to_owned();
        self.with_reader(move |conn, tuning| read_page(conn, &topic, after, limit, tuning.max_page_bytes)).await
    }

    pub(crate) async fn topic_state(&self, topic: &str) -> Result<TopicState, StoreError> {
        let topic = topic.to_owned();
        self.with_reader(move |conn, _| {
            let row: Option<(i64, i64)> = conn
                .query_row("SELECT last_seq, pruned_through FROM topics WHERE topic = ?1", [&topic], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            let (last, pruned) = row.unwrap_or((0, 0));
            Ok(TopicState { last_seq: last as u64, oldest_seq: pruned as u64 + 1 })
        })
        .await
    }

    pub(crate) async fn health(&self) -> Result<(), StoreError> {
        self.with_reader(|conn, _| Ok(conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0)).map(|_| ())?)).await
    }

    pub(crate) async fn outbox_len(&self) -> Result<u64, StoreError> {
        self.with_reader(|conn, _| outbox_len(conn)).await
    }

    async fn ack(&self, ids: Vec<i64>) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.inner.jobs.send(WriteJob::Ack(ids, reply)).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn prune(&self, topic: &str, rule: RetentionRule) -> Result<u64, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.inner.jobs.send(WriteJob::Prune(topic.to_owned(), rule, reply)).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// The lease file: `<database>.outbox-lock`.
    fn lock_path(&self) -> PathBuf {
        let mut name = self.inner.path.as_os_str().to_owned();
        name.push(".outbox-lock");
        PathBuf::from(name)
    }

    pub(crate) async fn lease(&self) -> Result<Option<Lease>, StoreError> {
        let path = self.lock_path();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, e)) => return Err(StoreError::Unavailable(format!("flock {}: {e}", path.display()))),
        };
        let conn = open_reader(&self.inner.path, self.inner.tuning.timeout)?;
        let version = data_version(&conn)?;
        Ok(Some(Lease { store: self.clone(), conn, version, _lock: lock }))
    }
}

fn outbox_len(conn: &Connection) -> Result<u64, StoreError> {
    Ok(conn.query_row("SELECT count(*) FROM outbox", [], |r| r.get::<_, i64>(0))? as u64)
}

fn data_version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("PRAGMA data_version", [], |r| r.get(0))?)
}

fn read_page(
    conn: &mut Connection,
    topic: &str,
    after: u64,
    limit: usize,
    max_bytes: usize,
) -> Result<ReadResult, StoreError> {
    // One read transaction: the prune mark and the rows come from the same snapshot.
    let tx = conn.transaction()?;
    let pruned: i64 = tx
        .query_row("SELECT pruned_through FROM topics WHERE topic = ?1", [topic], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    if after < pruned as u64 {
        return Ok(ReadResult::Pruned { oldest_seq: pruned as u64 + 1 });
    }
    let mut page = Page { frames: Vec::new(), next_after: after, more: false };
    {
        let mut st =
            tx.prepare_cached("SELECT seq, frame FROM envelopes WHERE topic = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3")?;
        let mut rows = st.query(params![topic, to_db(after), (limit as i64).saturating_add(1)])?;
        let mut bytes = 0usize;
        while let Some(row) = rows.next()? {
            let frame = row.get_ref(1)?.as_blob().map_err(|e| StoreError::Database(e.to_string()))?;
            if page.frames.len() >= limit || (!page.frames.is_empty() && bytes + frame.len() > max_bytes) {
                page.more = true;
                break;
            }
            bytes += frame.len();
            page.frames.push(Bytes::copy_from_slice(frame));
            page.next_after = row.get::<_, i64>(0)? as u64;
        }
    }
    tx.commit()?;
    Ok(ReadResult::Page(page))
}

/// The writer thread: takes jobs in order and commits consecutive appends and outbox
/// acknowledgements together, one transaction (one fsync) for the whole group.
fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<WriteJob>, appended: Arc<Notify>, batch_max: usize) {
    let mut carry: Option<WriteJob> = None;
    loop {
        let job = match carry.take() {
            Some(j) => j,
            None => match rx.blocking_recv() {
                Some(j) => j,
                None => return,
            },
        };
        let (mut appends, mut acks) = (Vec::new(), Vec::new());
        let mut n = 0;
        let mut next = Some(job);
        while let Some(job) = next.take() {
            match job {
                WriteJob::Append(j) => {
                    n += j.batch.len();
                    appends.push(j);
                }
                WriteJob::Ack(ids, reply) => {
                    n += ids.len();
                    acks.push((ids, reply));
                }
                WriteJob::Prune(topic, rule, reply) if appends.is_empty() && acks.is_empty() => {
                    let _ = reply.send(prune(&mut conn, &topic, rule));
                    break;
                }
                prune @ WriteJob::Prune(..) => {
                    carry = Some(prune);
                    break;
                }
            }
            if n < batch_max {
                next = rx.try_recv().ok();
            }
        }
        if appends.is_empty() && acks.is_empty() {
            continue;
        }
        let ack_ids: Vec<i64> = acks.iter().flat_map(|(ids, _)| ids.iter().copied()).collect();
        let total: usize = appends.iter().map(|j| j.batch.len()).sum();
        let result = commit_group(&mut conn, appends.iter().flat_map(|j| j.batch.iter()), total, &ack_ids);
        for (_, reply) in acks {
            let _ = reply.send(result.as_ref().map(|_| ()).map_err(Clone::clone));
        }
        let added = !appends.is_empty() && result.is_ok();
        reply_all(appends, result);
        if added {
            appended.notify_one();
        }
    }
}

/// One transaction: delete the acknowledged outbox rows, then append the envelopes.
fn commit_group<'a>(
    conn: &mut Connection,
    all: impl Iterator<Item = &'a NewEnvelope> + Clone,
    n: usize,
    acks: &[i64],
) -> Result<Vec<Appended>, StoreError> {
    let counts = topic_counts(all.clone());
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if !acks.is_empty() {
        let mut del = tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?;
        for id in acks {
            del.execute([id])?;
        }
    }
    let ts = now_ms();
    let mut last = BTreeMap::new();
    {
        let mut bump = tx.prepare_cached(
            "INSERT INTO topics (topic, last_seq) VALUES (?1, ?2)
             ON CONFLICT (topic) DO UPDATE SET last_seq = last_seq + excluded.last_seq
             RETURNING last_seq",
        )?;
        for (t, c) in &counts {
            let l: i64 = bump.query_row(params![t, to_db(*c)], |r| r.get(0))?;
            last.insert((*t).to_owned(), l as u64);
        }
    }
    let prepared = if n > 0 { prepare(all.clone(), &counts, &last, n, ts)? } else { Vec::new() };
    let mut out = Vec::with_capacity(n);
    {
        let mut ins =
            tx.prepare_cached("INSERT INTO envelopes (topic, seq, id, ts, frame) VALUES (?1, ?2, ?3, ?4, ?5)")?;
        let mut outbox = tx.prepare_cached("INSERT INTO outbox (topic, seq) VALUES (?1, ?2)")?;
        for (e, p) in all.zip(prepared) {
            ins.execute(params![e.topic(), to_db(p.seq), p.id, to_db(ts), p.frame])?;
            outbox.execute(params![e.topic(), to_db(p.seq)])?;
            out.push(Appended { topic: e.topic().to_owned(), seq: p.seq, id: p.id, ts });
        }
    }
    tx.commit()?;
    Ok(out)
}

fn prune(conn: &mut Connection, topic: &str, rule: RetentionRule) -> Result<u64, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let Some((last, pruned)) = tx
        .query_row("SELECT last_seq, pruned_through FROM topics WHERE topic = ?1", [topic], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })
        .optional()?
    else {
        return Ok(0);
    };
    let (first_young, batch_last) = if rule.cutoff_ts > 0 {
        tx.query_row(
            "SELECT min(CASE WHEN ts >= ?3 THEN seq END), max(seq) FROM
               (SELECT seq, ts FROM envelopes WHERE topic = ?1 AND seq > ?2 ORDER BY seq LIMIT ?4)",
            params![topic, to_db(pruned), to_db(rule.cutoff_ts), to_db(rule.batch)],
            |r| Ok((r.get::<_, Option<i64>>(0)?.map(|v| v as u64), r.get::<_, Option<i64>>(1)?.map(|v| v as u64))),
        )?
    } else {
        (None, None)
    };
    let min_pending: Option<i64> =
        tx.query_row("SELECT min(seq) FROM outbox WHERE topic = ?1", [topic], |r| r.get(0))?;
    let Some(cut) = retention_cut(&rule, last, pruned, first_young, batch_last, min_pending.map(|v| v as u64)) else {
        return Ok(0);
    };
    let n = tx.execute(
        "DELETE FROM envelopes WHERE topic = ?1 AND seq > ?2 AND seq <= ?3",
        params![topic, to_db(pruned), to_db(cut)],
    )?;
    tx.execute("UPDATE topics SET pruned_through = ?2 WHERE topic = ?1", params![topic, to_db(cut)])?;
    tx.commit()?;
    Ok(n as u64)
}

/// The SQLite lease: the lock file, and a connection of its own for outbox reads.
///
/// Its reads run inline (they are short); it is meant for a thread of its own, as the
/// outbox publisher runs. Writes go through the store's writer thread.
pub(crate) struct Lease {
    store: SqliteStore,
    conn: Connection,
    /// Last `PRAGMA data_version` seen: it changes when another connection commits.
    version: i64,
    _lock: Flock<File>,
}

impl Lease {
    pub(crate) async fn pending(&mut self, limit: usize) -> Result<Vec<Pending>, StoreError> {
        let mut out = Vec::new();
        let mut orphans = Vec::new();
        {
            let mut st = self.conn.prepare_cached(
                "SELECT o.id, o.topic, o.seq, e.frame FROM outbox o
                 LEFT JOIN envelopes e ON e.topic = o.topic AND e.seq = o.seq
                 ORDER BY o.id LIMIT ?1",
            )?;
            let mut rows = st.query([limit as i64])?;
            while let Some(row) = rows.next()? {
                let id: i64 = row.get(0)?;
                match row.get::<_, Option<Vec<u8>>>(3)? {
                    Some(frame) => out.push(Pending {
                        id,
                        routed: Routed {
                            topic: row.get(1)?,
                            seq: row.get::<_, i64>(2)? as u64,
                            frame: Bytes::from(frame),
                        },
                    }),
                    None => orphans.push(id),
                }
            }
        }
        if !orphans.is_empty() {
            // Cannot happen through this code (retention skips outbox rows); an operator's
            // manual DELETE could cause it, and a stuck row would block nothing but itself.
            tracing::warn!(count = orphans.len(), "outbox rows without an envelope: dropping them");
            self.store.ack(orphans).await?;
        }
        Ok(out)
    }

    pub(crate) async fn ack(&mut self, ids: &[i64]) -> Result<(), StoreError> {
        self.store.ack(ids.to_vec()).await
    }

    pub(crate) async fn outbox_len(&mut self) -> Result<u64, StoreError> {
        outbox_len(&self.conn)
    }

    pub(crate) async fn foreign_append(&mut self) -> Result<(), StoreError> {
        loop {
            tokio::time::sleep(FOREIGN_POLL).await;
            let v = data_version(&self.conn)?;
            if v != self.version {
                self.version = v;
                return Ok(());
            }
        }
    }

    pub(crate) async fn topics_page(&mut self, after: &str, limit: usize) -> Result<Vec<TopicRow>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT t.topic, t.last_seq, t.pruned_through,
                    (SELECT e.ts FROM envelopes e WHERE e.topic = t.topic AND e.seq = t.pruned_through + 1)
             FROM topics t WHERE t.topic > ?1 ORDER BY t.topic LIMIT ?2",
        )?;
        let rows = st.query_map(params![after, limit as i64], |r| {
            Ok(TopicRow {
                topic: r.get(0)?,
                last_seq: r.get::<_, i64>(1)? as u64,
                pruned_through: r.get::<_, i64>(2)? as u64,
                oldest_ts: r.get::<_, Option<i64>>(3)?.map(|v| v as u64),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub(crate) async fn prune_topic(&mut self, topic: &str, rule: RetentionRule) -> Result<u64, StoreError> {
        self.store.prune(topic, rule).await
    }
}
