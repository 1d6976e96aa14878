//! Store tests on real databases: a model-based property test, concurrent processes, edges.
//!
//! PostgreSQL must be reachable at 127.0.0.1:5432 as `postgres` (trust), as
//! `scripts/services.sh postgres` sets it up: a test that cannot reach it fails. Each test
//! works in a database of its own (`switchboard_test_<pid>_<n>`), dropped afterwards.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestCaseError, TestRunner};

use super::*;
use crate::config::{JournalConfig, StoreKind};
use crate::wire::envelope;

/// A PostgreSQL database for one test, dropped when this is.
pub(crate) struct TestDb {
    pub name: String,
    pub url: String,
}

const PG_ADMIN: &str = "host=127.0.0.1 port=5432 user=postgres dbname=postgres";

fn pg_admin(sql: &str) {
    for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        pg_admin_one(statement.to_owned());
    }
}

fn pg_admin_one(sql: String) {
    // On a thread of its own: callers may be inside a runtime (Drop in async tests).
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(PG_ADMIN, tokio_postgres::NoTls)
                .await
                .expect("PostgreSQL must run at 127.0.0.1:5432 (scripts/services.sh postgres)");
            tokio::spawn(conn);
            client.batch_execute(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        })
    })
    .join()
    .unwrap();
}

impl TestDb {
    pub(crate) fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!("switchboard_test_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        pg_admin(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE); CREATE DATABASE {name}"));
        let url = format!("host=127.0.0.1 port=5432 user=postgres dbname={name}");
        Self { name, url }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        pg_admin(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

pub(crate) fn sqlite_config(dir: &std::path::Path) -> JournalConfig {
    JournalConfig { sqlite_path: dir.join("journal.sqlite"), ..JournalConfig::default() }
}

pub(crate) fn pg_config(db: &TestDb) -> JournalConfig {
    JournalConfig { store: StoreKind::Postgres, postgres_url: db.url.clone(), ..JournalConfig::default() }
}

fn env(topic: &str, kind: &str, payload: &[u8]) -> NewEnvelope {
    NewEnvelope::new(topic, kind, payload.to_vec()).unwrap()
}

/// Every envelope of `topic`, page by page.
pub(crate) async fn read_all(store: &EnvelopeStore, topic: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let ReadResult::Page(p) = store.read(topic, after, 97).await.unwrap() else { panic!("pruned") };
        for f in &p.frames {
            let e = envelope::decode(f).unwrap();
            out.push((e.seq, e.id.to_owned()));
        }
        after = p.next_after;
        if !p.more {
            return out;
        }
    }
}

async fn basics(cfg: JournalConfig) {
    let cfg = JournalConfig { max_page_bytes: 1024 * 1024, ..cfg };
    let store = EnvelopeStore::open(&cfg).await.unwrap();
    // Opening again finds the schema in place.
    let again = EnvelopeStore::open(&cfg).await.unwrap();
    drop(again);
    assert_eq!(store.topic_state("t:1").await.unwrap(), TopicState { last_seq: 0, oldest_seq: 1 });
    let a = store.append(vec![env("t:1", "k", b"one"), env("t:2", "k", b"x"), env("t:1", "k", b"two")]).await.unwrap();
    assert_eq!(a.iter().map(|a| (a.topic.as_str(), a.seq)).collect::<Vec<_>>(), [("t:1", 1), ("t:2", 1), ("t:1", 2)]);
    assert!(a.iter().all(|x| x.ts == a[0].ts && x.id.len() == 26));
    let ReadResult::Page(p) = store.read("t:1", 0, 1).await.unwrap() else { panic!() };
    assert_eq!((p.frames.len(), p.more, p.next_after), (1, true, 1));
    let e = envelope::decode(&p.frames[0]).unwrap();
    assert_eq!((e.topic, e.seq, e.kind, e.payload, e.id), ("t:1", 1, "k", &b"one"[..], a[0].id.as_str()));
    let ReadResult::Page(p) = store.read("t:1", 1, 10).await.unwrap() else { panic!() };
    assert_eq!((p.frames.len(), p.more, p.next_after), (1, false, 2));
    let ReadResult::Page(p) = store.read("t:1", 2, 10).await.unwrap() else { panic!() };
    assert_eq!((p.frames.len(), p.more, p.next_after), (0, false, 2));
    let ReadResult::Page(p) = store.read("nobody", u64::MAX, 10).await.unwrap() else { panic!() };
    assert_eq!(p, Page { frames: vec![], next_after: u64::MAX, more: false });
    assert_eq!(store.topic_state("t:1").await.unwrap(), TopicState { last_seq: 2, oldest_seq: 1 });
    store.health().await.unwrap();
    assert_eq!(store.append(vec![]).await.unwrap(), vec![]);

    // The byte cap stops a page early but always returns one envelope.
    let big = vec![7u8; 700 * 1024];
    store.append(vec![env("big", "k", &big), env("big", "k", &big), env("big", "k", &big)]).await.unwrap();
    let ReadResult::Page(p) = store.read("big", 0, 10).await.unwrap() else { panic!() };
    assert_eq!((p.frames.len(), p.more, p.next_after), (1, true, 1), "a 1 MiB cap holds one 700 KiB frame");
    let ReadResult::Page(p) = store.read("big", 2, 10).await.unwrap() else { panic!() };
    assert_eq!((p.frames.len(), p.more, p.next_after), (1, false, 3));

    // The outbox holds everything, in order; one lease at a time.
    let mut lease = store.lease().await.unwrap().expect("first lease");
    assert!(store.lease().await.unwrap().is_none(), "a second lease while the first is held");
    assert_eq!(store.outbox_len().await.unwrap(), 6);
    let pending = lease.pending(100).await.unwrap();
    let order: Vec<(&str, u64)> = pending.iter().map(|p| (p.routed.topic.as_str(), p.routed.seq)).collect();
    assert_eq!(order, [("t:1", 1), ("t:2", 1), ("t:1", 2), ("big", 1), ("big", 2), ("big", 3)]);
    lease.ack(&pending.iter().take(3).map(|p| p.id).collect::<Vec<_>>()).await.unwrap();
    assert_eq!(lease.outbox_len().await.unwrap(), 3);

    // Retention never passes an envelope still in the outbox, and the read then says 410.
    let rule = RetentionRule { max_count: 1, cutoff_ts: 0, batch: 10 };
    assert_eq!(lease.prune_topic("big", rule).await.unwrap(), 0, "big:1..3 are unpublished");
    assert_eq!(lease.prune_topic("t:1", rule).await.unwrap(), 1);
    assert_eq!(store.topic_state("t:1").await.unwrap(), TopicState { last_seq: 2, oldest_seq: 2 });
    assert_eq!(store.read("t:1", 0, 10).await.unwrap(), ReadResult::Pruned { oldest_seq: 2 });
    let ReadResult::Page(p) = store.read("t:1", 1, 10).await.unwrap() else { panic!() };
    assert_eq!(p.next_after, 2);
    let rows = lease.topics_page("", 10).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.topic.as_str()).collect::<Vec<_>>(), ["big", "t:1", "t:2"]);
    assert_eq!(rows[1].pruned_through, 1);
    drop(lease);
    assert!(store.lease().await.unwrap().is_some(), "the lease is free again");
}

#[tokio::test]
async fn journal_sqlite_basics() {
    let dir = tempfile::tempdir().unwrap();
    basics(sqlite_config(dir.path())).await;
}

#[tokio::test]
async fn journal_postgres_basics() {
    let db = TestDb::new();
    basics(pg_config(&db)).await;
}

#[test]
fn journal_migrations_are_the_files_in_order() {
    for (backend, list) in [("sqlite", sqlite::MIGRATIONS), ("postgres", postgres::MIGRATIONS)] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/journal/migrations").join(backend);
        let mut files: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        files.sort();
        let named: Vec<String> = list.iter().map(|(v, n, _)| format!("{v:03}_{n}.sql")).collect();
        assert_eq!(files, named, "{backend}: every file is embedded, in order");
        assert!(list.iter().enumerate().all(|(i, m)| m.0 as usize == i + 1));
    }
}

#[test]
fn journal_topic_rule() {
    assert!(check_topic("post:42").is_ok());
    for bad in ["", "a b", "a/b", ".", "..", "é"] {
        assert!(check_topic(bad).is_err(), "{bad:?}");
    }
    assert!(check_topic("..a").is_ok());
    assert!(matches!(NewEnvelope::new("t", "", vec![]), Err(InvalidEnvelope::Kind)));
    assert!(matches!(
        NewEnvelope::new("t", "k", vec![0; MAX_PAYLOAD_BYTES + 1]),
        Err(InvalidEnvelope::TooLarge { .. })
    ));
}

// ---- The model-based property test ----

/// One step of a test case.
#[derive(Debug, Clone)]
enum Op {
    /// Concurrent appenders, each appending one batch of (topic, payload length).
    Append(Vec<Vec<(usize, usize)>>),
    /// A reconciliation read.
    Read { topic: usize, after: u64, limit: usize },
    /// Drain the outbox as the publisher would.
    Publish,
    /// Retention to `keep` envelopes.
    Prune { topic: usize, keep: u64 },
}

const TOPICS: usize = 3;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec(prop::collection::vec((0..TOPICS, 0usize..300), 1..6), 1..5).prop_map(Op::Append),
        4 => (0..TOPICS, 0u64..30, 1usize..8).prop_map(|(topic, after, limit)| Op::Read { topic, after, limit }),
        1 => Just(Op::Publish),
        1 => (0..TOPICS, 1u64..6).prop_map(|(topic, keep)| Op::Prune { topic, keep }),
    ]
}

/// What the store must hold, kept the trivial way.
#[derive(Default)]
struct TopicModel {
    /// seq -> frame bytes (encoded from what the append returned).
    frames: BTreeMap<u64, Vec<u8>>,
    last: u64,
    pruned: u64,
    unpublished: BTreeSet<u64>,
}

fn fail(msg: String) -> TestCaseError {
    TestCaseError::fail(msg)
}

async fn run_case(
    store: &EnvelopeStore,
    lease: &mut Lease,
    prefix: &str,
    max_page_bytes: usize,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    let name = |i: usize| format!("{prefix}:t{i}");
    let mut model: Vec<TopicModel> = (0..TOPICS).map(|_| TopicModel::default()).collect();
    // Earlier cases' envelopes are not this case's business: publish them away first.
    loop {
        let rows = lease.pending(500).await.map_err(|e| fail(e.to_string()))?;
        if rows.is_empty() {
            break;
        }
        lease.ack(&rows.iter().map(|p| p.id).collect::<Vec<_>>()).await.map_err(|e| fail(e.to_string()))?;
    }
    for op in ops {
        match op {
            Op::Append(appenders) => {
                let calls = appenders.iter().enumerate().map(|(a, batch)| {
                    let envs: Vec<NewEnvelope> = batch
                        .iter()
                        .enumerate()
                        .map(|(i, &(t, len))| env(&name(t), &format!("k{a}.{i}"), &vec![(a * 7 + i) as u8; len]))
                        .collect();
                    let store = store.clone();
                    async move { (envs.clone(), store.append(envs).await) }
                });
                let results = futures_util::future::join_all(calls).await;
                let mut got: Vec<BTreeSet<u64>> = (0..TOPICS).map(|_| BTreeSet::new()).collect();
                for (envs, r) in results {
                    let r = r.map_err(|e| fail(format!("append: {e}")))?;
                    prop_assert_eq!(r.len(), envs.len());
                    let mut last_in_batch: BTreeMap<String, u64> = BTreeMap::new();
                    for (e, a) in envs.iter().zip(&r) {
                        prop_assert_eq!(&a.topic, e.topic());
                        if let Some(prev) = last_in_batch.insert(a.topic.clone(), a.seq) {
                            prop_assert!(a.seq > prev, "seqs grow within a batch");
                        }
                        let t = (0..TOPICS).find(|&t| name(t) == a.topic).unwrap();
                        prop_assert!(got[t].insert(a.seq), "duplicate seq {}", a.seq);
                        let frame = crate::wire::EnvelopeRef {
                            topic: &a.topic,
                            seq: a.seq,
                            id: &a.id,
                            ts: a.ts,
                            kind: e.kind(),
                            payload: e.payload(),
                        }
                        .encode();
                        model[t].frames.insert(a.seq, frame);
                        model[t].unpublished.insert(a.seq);
                    }
                }
                for (t, seqs) in got.into_iter().enumerate() {
                    let m = &mut model[t];
                    let expected: BTreeSet<u64> = (m.last + 1..=m.last + seqs.len() as u64).collect();
                    prop_assert_eq!(&seqs, &expected, "topic {} got exactly the next seqs", t);
                    m.last += seqs.len() as u64;
                }
            }
            Op::Read { topic, after, limit } => {
                let m = &model[topic];
                let got = store.read(&name(topic), after, limit).await.map_err(|e| fail(format!("read: {e}")))?;
                if after < m.pruned {
                    prop_assert_eq!(got, ReadResult::Pruned { oldest_seq: m.pruned + 1 });
                    continue;
                }
                let mut want = Page { frames: vec![], next_after: after, more: false };
                let mut bytes = 0;
                for (seq, f) in m.frames.range(after + 1..) {
                    if want.frames.len() >= limit || (!want.frames.is_empty() && bytes + f.len() > max_page_bytes) {
                        want.more = true;
                        break;
                    }
                    bytes += f.len();
                    want.frames.push(Bytes::from(f.clone()));
                    want.next_after = *seq;
                }
                prop_assert_eq!(got, ReadResult::Page(want));
            }
            Op::Publish => {
                let mut seen: Vec<Vec<u64>> = vec![vec![]; TOPICS];
                loop {
                    let batch = lease.pending(7).await.map_err(|e| fail(format!("pending: {e}")))?;
                    if batch.is_empty() {
                        break;
                    }
                    for p in &batch {
                        let t = (0..TOPICS)
                            .find(|&t| name(t) == p.routed.topic)
                            .ok_or_else(|| fail("foreign row".into()))?;
                        prop_assert_eq!(&p.routed.frame[..], &model[t].frames[&p.routed.seq][..]);
                        seen[t].push(p.routed.seq);
                    }
                    lease
                        .ack(&batch.iter().map(|p| p.id).collect::<Vec<_>>())
                        .await
                        .map_err(|e| fail(e.to_string()))?;
                }
                for (t, s) in seen.into_iter().enumerate() {
                    let want: Vec<u64> = model[t].unpublished.iter().copied().collect();
                    prop_assert_eq!(s, want, "topic {} published once each, in seq order", t);
                    model[t].unpublished.clear();
                }
            }
            Op::Prune { topic, keep } => {
                let rule = RetentionRule { max_count: keep, cutoff_ts: 0, batch: 3 };
                while lease.prune_topic(&name(topic), rule).await.map_err(|e| fail(e.to_string()))? > 0 {}
                let m = &mut model[topic];
                let mut cut = m.last.saturating_sub(keep);
                if let Some(first) = m.unpublished.first() {
                    cut = cut.min(first - 1);
                }
                if cut > m.pruned {
                    m.pruned = cut;
                    m.frames = m.frames.split_off(&(cut + 1));
                }
                let state = store.topic_state(&name(topic)).await.map_err(|e| fail(e.to_string()))?;
                prop_assert_eq!(state, TopicState { last_seq: m.last, oldest_seq: m.pruned + 1 });
            }
        }
    }
    Ok(())
}

fn model_test(cfg: JournalConfig, cases: u32) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let store = rt.block_on(EnvelopeStore::open(&cfg)).unwrap();
    let lease = std::cell::RefCell::new(rt.block_on(store.lease()).unwrap().unwrap());
    let case = std::cell::Cell::new(0u32);
    let mut runner = TestRunner::new(PropConfig { cases, failure_persistence: None, ..PropConfig::default() });
    let result = runner.run(&prop::collection::vec(op(), 1..30), |ops| {
        case.set(case.get() + 1);
        let prefix = format!("c{}", case.get());
        rt.block_on(run_case(&store, &mut lease.borrow_mut(), &prefix, cfg.max_page_bytes, ops))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn journal_sqlite_matches_the_model() {
    let dir = tempfile::tempdir().unwrap();
    // A small byte cap, so pages also stop on bytes.
    model_test(JournalConfig { max_page_bytes: 1024, ..sqlite_config(dir.path()) }, 48);
}

#[test]
fn journal_postgres_matches_the_model() {
    let db = TestDb::new();
    model_test(JournalConfig { max_page_bytes: 1024, ..pg_config(&db) }, 32);
}

// ---- Several OS processes appending to one topic ----

const CHILD_CONFIG: &str = "SWITCHBOARD_TEST_CHILD_CONFIG";
const PER_CHILD: usize = 240;

/// Not a test by itself: the body of a child process of `*_processes_append_gapless`, which
/// runs this test binary again with `CHILD_CONFIG` set. Appends `PER_CHILD` envelopes to
/// topic `race` from four tasks, singly and in batches.
#[test]
fn journal_child_appender_process() {
    let Ok(toml) = std::env::var(CHILD_CONFIG) else { return };
    let cfg: JournalConfig = toml::from_str(&toml).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let store = EnvelopeStore::open(&cfg).await.unwrap();
        let tasks: Vec<_> = (0..4)
            .map(|t| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut done = 0;
                    while done < PER_CHILD / 4 {
                        let n = if done % 3 == 0 { 5.min(PER_CHILD / 4 - done) } else { 1 };
                        let batch = (0..n).map(|_| env("race", "k", format!("{}-{t}", std::process::id()).as_bytes()));
                        store.append(batch.collect()).await.unwrap();
                        done += n;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
}

fn processes_append_gapless(cfg: JournalConfig) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // Migrate once up front, so children race on appends, not only on the schema.
    let store = rt.block_on(EnvelopeStore::open(&cfg)).unwrap();
    let toml = format!(
        "store = {:?}\nsqlite_path = {:?}\npostgres_url = {:?}\n",
        match cfg.store {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
        },
        cfg.sqlite_path.to_str().unwrap(),
        cfg.postgres_url
    );
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| {
            std::process::Command::new(&exe)
                .args([
                    "journal::store::tests::journal_child_appender_process",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_CONFIG, &toml)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success(), "a child appender failed");
    }
    let all = rt.block_on(read_all(&store, "race"));
    let seqs: Vec<u64> = all.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=4 * PER_CHILD as u64).collect::<Vec<_>>(), "exactly 1..=N");
    let ids: HashSet<&String> = all.iter().map(|(_, id)| id).collect();
    assert_eq!(ids.len(), 4 * PER_CHILD);
}

#[test]
fn journal_postgres_processes_append_gapless() {
    let db = TestDb::new();
    processes_append_gapless(pg_config(&db));
}

#[test]
fn journal_sqlite_processes_append_gapless() {
    let dir = tempfile::tempdir().unwrap();
    processes_append_gapless(sqlite_config(dir.path()));
}

// ---- Age retention ----

async fn prunes_by_age(cfg: JournalConfig) {
    let store = EnvelopeStore::open(&cfg).await.unwrap();
    let mut lease = store.lease().await.unwrap().unwrap();
    store.append((0..7).map(|i| env("old", "k", &[i])).collect()).await.unwrap();
    let rule = RetentionRule { max_count: 0, cutoff_ts: now_ms() + 1, batch: 3 };
    assert_eq!(lease.prune_topic("old", rule).await.unwrap(), 0, "nothing leaves before the bus took it");
    let ids: Vec<i64> = lease.pending(100).await.unwrap().iter().map(|p| p.id).collect();
    lease.ack(&ids).await.unwrap();
    let rows = lease.topics_page("", 10).await.unwrap();
    assert!(rule.wants(&rows[0]), "{rows:?}");
    let mut removed = 0;
    loop {
        let n = lease.prune_topic("old", rule).await.unwrap();
        assert!(n <= 3, "one transaction removes at most a batch");
        if n == 0 {
            break;
        }
        removed += n;
    }
    assert_eq!(removed, 7);
    assert_eq!(store.topic_state("old").await.unwrap(), TopicState { last_seq: 7, oldest_seq: 8 });
    assert_eq!(store.read("old", 3, 10).await.unwrap(), ReadResult::Pruned { oldest_seq: 8 });
    let ReadResult::Page(p) = store.read("old", 7, 10).await.unwrap() else { panic!() };
    assert!(p.frames.is_empty());
    // A young envelope stays, and the next append continues the seqs.
    let a = store.append(vec![env("old", "k", b"new")]).await.unwrap();
    assert_eq!(a[0].seq, 8);
    let rule = RetentionRule { cutoff_ts: a[0].ts, ..rule };
    let ids: Vec<i64> = lease.pending(100).await.unwrap().iter().map(|p| p.id).collect();
    lease.ack(&ids).await.unwrap();
    assert_eq!(lease.prune_topic("old", rule).await.unwrap(), 0);
    assert_eq!(read_all_after(&store, "old", 7).await, [8]);
}

async fn read_all_after(store: &EnvelopeStore, topic: &str, after: u64) -> Vec<u64> {
    let ReadResult::Page(p) = store.read(topic, after, 100).await.unwrap() else { panic!() };
    p.frames.iter().map(|f| envelope::decode(f).unwrap().seq).collect()
}

#[tokio::test]
async fn journal_sqlite_prunes_by_age() {
    let dir = tempfile::tempdir().unwrap();
    prunes_by_age(sqlite_config(dir.path())).await;
}

#[tokio::test]
async fn journal_postgres_prunes_by_age() {
    let db = TestDb::new();
    prunes_by_age(pg_config(&db)).await;
}
