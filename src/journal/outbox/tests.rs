//! Outbox tests: real stores, the real local bus with a recording worker, a failing bus.

use std::rc::Rc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize};

use super::*;
use crate::bus::local::{Consumer, Recorder};
use crate::config::BusKind;
use crate::journal::store::tests::{TestDb, pg_config, sqlite_config};
use crate::journal::store::{NewEnvelope, ReadResult};

/// The gauges are process-wide: outbox tests take turns.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn opts() -> OutboxOptions {
    OutboxOptions {
        batch: 16,
        // Long: these tests pass only if wake-ups, not the poll, drive the publisher.
        poll: Duration::from_secs(60),
        retry_max: Duration::from_millis(200),
        lease_retry: Duration::from_millis(100),
        retention: None,
    }
}

fn local_bus(dir: &std::path::Path) -> BusConfig {
    BusConfig { kind: BusKind::Local, local_dir: dir.to_owned(), ..BusConfig::default() }
}

/// The process's metrics, rendered (one recorder for the whole test binary).
fn metrics_text() -> String {
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder().unwrap()).render()
}

fn metric(name: &str) -> Option<f64> {
    metrics_text()
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

async fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn append(store: &EnvelopeStore, n: usize) {
    for i in 0..n {
        let topic = format!("t:{}", i % 3);
        store.append(vec![NewEnvelope::new(topic, "k", vec![i as u8]).unwrap()]).await.unwrap();
    }
}

/// Per topic, the seqs received must be 1, 2, 3, ... and the frames the stored ones.
async fn check_delivery(store: &EnvelopeStore, rec: &Recorder, n: usize) {
    let got = rec.got.borrow().clone();
    assert_eq!(got.len(), n, "each envelope exactly once");
    for t in 0..3 {
        let topic = format!("t:{t}");
        let mine: Vec<_> = got.iter().filter(|(tp, _, _)| *tp == topic).collect();
        assert!(mine.iter().enumerate().all(|(i, (_, seq, _))| *seq == i as u64 + 1), "{topic} in seq order");
        let ReadResult::Page(page) = store.read(&topic, 0, 1000).await.unwrap() else { panic!() };
        assert_eq!(page.frames, mine.iter().map(|(_, _, f)| f.clone()).collect::<Vec<_>>());
    }
}

async fn publishes_in_order(cfg: crate::config::JournalConfig) {
    let _turn = TURN.lock().await;
    let bus_dir = tempfile::tempdir().unwrap();
    let rec = Rc::new(Recorder::default());
    let _worker = Consumer::start(bus_dir.path(), 0, rec.clone()).unwrap();
    let store = EnvelopeStore::open(&cfg).await.unwrap();
    let outbox = Outbox::start(store.clone(), &local_bus(bus_dir.path()), opts()).unwrap();
    append(&store, 90).await;
    wait_until("90 deliveries", || rec.got.borrow().len() >= 90).await;
    check_delivery(&store, &rec, 90).await;
    assert!(outbox.is_leader());
    outbox.close(Duration::from_secs(2)).await;
    assert_eq!(store.outbox_len().await.unwrap(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn journal_outbox_publishes_in_order_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    tokio::task::LocalSet::new().run_until(publishes_in_order(sqlite_config(dir.path()))).await;
}

#[tokio::test(flavor = "current_thread")]
async fn journal_outbox_publishes_in_order_postgres() {
    let db = TestDb::new();
    tokio::task::LocalSet::new().run_until(publishes_in_order(pg_config(&db))).await;
}

/// A bus that fails while `down` is set, else delivers through the local bus.
struct FlakySink {
    down: Arc<AtomicBool>,
    attempts: Arc<AtomicUsize>,
    inner: bus::local::Publisher,
}

impl Sink for FlakySink {
    async fn publish(&mut self, batch: &[Routed]) -> Result<(), BusError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(BusError::Amqp("test: the broker is down".into()));
        }
        self.inner.publish(batch).await
    }
}

async fn survives_a_bus_outage(cfg: crate::config::JournalConfig) {
    let _turn = TURN.lock().await;
    let bus_dir = tempfile::tempdir().unwrap();
    let rec = Rc::new(Recorder::default());
    let _worker = Consumer::start(bus_dir.path(), 0, rec.clone()).unwrap();
    let store = EnvelopeStore::open(&cfg).await.unwrap();
    let down = Arc::new(AtomicBool::new(true));
    let attempts = Arc::new(AtomicUsize::new(0));
    let (d, a, dir) = (down.clone(), attempts.clone(), bus_dir.path().to_owned());
    let retries_before = metric(crate::metrics::OUTBOX_RETRIES).unwrap_or(0.0);
    let outbox = Outbox::start_with(store.clone(), opts(), move || {
        let sink = FlakySink { down: d.clone(), attempts: a.clone(), inner: bus::local::Publisher::new(&dir) };
        async move { Ok::<_, BusError>(sink) }
    })
    .unwrap();
    // Appends succeed while the bus is down, and pile up in the outbox.
    append(&store, 60).await;
    wait_until("retries", || attempts.load(Ordering::SeqCst) >= 4).await;
    assert_eq!(store.outbox_len().await.unwrap(), 60);
    assert!(rec.got.borrow().is_empty());
    wait_until("the pending gauge", || metric(crate::metrics::OUTBOX_PENDING) == Some(60.0)).await;
    assert!(metric(crate::metrics::OUTBOX_RETRIES).unwrap() >= retries_before + 3.0);
    // The bus comes back: everything goes out, in order, and the outbox empties.
    down.store(false, Ordering::SeqCst);
    wait_until("60 deliveries", || rec.got.borrow().len() >= 60).await;
    check_delivery(&store, &rec, 60).await;
    outbox.close(Duration::from_secs(2)).await;
    assert_eq!(store.outbox_len().await.unwrap(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn journal_outbox_survives_a_bus_outage_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    tokio::task::LocalSet::new().run_until(survives_a_bus_outage(sqlite_config(dir.path()))).await;
}

#[tokio::test(flavor = "current_thread")]
async fn journal_outbox_survives_a_bus_outage_postgres() {
    let db = TestDb::new();
    tokio::task::LocalSet::new().run_until(survives_a_bus_outage(pg_config(&db))).await;
}

/// Stored but never published (the process died before its outbox ran): the next start
/// publishes it. A second store handle stands for another process: its appends wake the
/// lease holder through the database (NOTIFY / data_version), not through the poll.
async fn picks_up_after_a_crash_and_other_processes(cfg: crate::config::JournalConfig) {
    let _turn = TURN.lock().await;
    let bus_dir = tempfile::tempdir().unwrap();
    let rec = Rc::new(Recorder::default());
    let _worker = Consumer::start(bus_dir.path(), 0, rec.clone()).unwrap();
    {
        let crashed = EnvelopeStore::open(&cfg).await.unwrap();
        append(&crashed, 30).await;
    }
    let store = EnvelopeStore::open(&cfg).await.unwrap();
    let outbox = Outbox::start(store.clone(), &local_bus(bus_dir.path()), opts()).unwrap();
    wait_until("the 30 stored before the start", || rec.got.borrow().len() >= 30).await;
    let other = EnvelopeStore::open(&cfg).await.unwrap();
    append(&other, 30).await;
    wait_until("the other process's 30", || rec.got.borrow().len() >= 60).await;
    check_delivery(&store, &rec, 60).await;
    // A second publisher in the same deployment stands by, and takes over when the first stops.
    let standby = Outbox::start(other.clone(), &local_bus(bus_dir.path()), opts()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(outbox.is_leader() && !standby.is_leader());
    outbox.close(Duration::from_secs(2)).await;
    wait_until("the standby to lead", || standby.is_leader()).await;
    append(&store, 30).await;
    wait_until("30 more through the new leader", || rec.got.borrow().len() >= 90).await;
    check_delivery(&store, &rec, 90).await;
    standby.close(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "current_thread")]
async fn journal_outbox_recovers_and_hands_over_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    tokio::task::LocalSet::new().run_until(picks_up_after_a_crash_and_other_processes(sqlite_config(dir.path()))).await;
}

#[tokio::test(flavor = "current_thread")]
async fn journal_outbox_recovers_and_hands_over_postgres() {
    let db = TestDb::new();
    tokio::task::LocalSet::new().run_until(picks_up_after_a_crash_and_other_processes(pg_config(&db))).await;
}

#[test]
fn journal_backoff_doubles_to_the_cap() {
    let mut b = Backoff::new(Duration::from_millis(300));
    let seen: Vec<u128> = (0..5).map(|_| b.pause().as_millis()).collect();
    assert_eq!(seen, [50, 100, 200, 300, 300]);
    b.reset();
    assert_eq!(b.pause(), Backoff::FIRST);
}
