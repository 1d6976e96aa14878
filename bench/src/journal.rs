//! Journal throughput: store appends, HTTP publishes, in-process publishes, reconciliation reads.
//!
//! `switchboard-bench journal [--store sqlite|postgres] [--secs N] [--sync full|normal]`
//! runs each scenario for N seconds (default 5) in this process and prints one line per
//! scenario. PostgreSQL uses a database `switchboard_bench` on 127.0.0.1:5432 (recreated with
//! `psql`). The HTTP scenarios run the real journal server on a runtime of its own, with the
//! load on keep-alive connections from another: both share this machine's cores, as they
//! would in production on one host.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard::app::{NewEnvelope, Publisher};
use switchboard::config::{BusConfig, Config, JournalConfig, SqliteSynchronous, StoreKind};
use switchboard::journal::EnvelopeStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const CREDENTIAL: &str = "bench-credential-0123456789";

struct Opts {
    store: StoreKind,
    secs: u64,
    sync: SqliteSynchronous,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts { store: StoreKind::Sqlite, secs: 5, sync: SqliteSynchronous::Full };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--store" => {
                o.store = match val()?.as_str() {
                    "sqlite" => StoreKind::Sqlite,
                    "postgres" => StoreKind::Postgres,
                    s => return Err(format!("unknown store {s}").into()),
                }
            }
            "--secs" => o.secs = val()?.parse()?,
            "--sync" => {
                o.sync = match val()?.as_str() {
                    "full" => SqliteSynchronous::Full,
                    "normal" => SqliteSynchronous::Normal,
                    s => return Err(format!("unknown sync {s}").into()),
                }
            }
            _ => return Err(format!("unknown argument {a}").into()),
        }
    }
    Ok(o)
}

fn report(name: &str, n: u64, elapsed: Duration) {
    println!("{name:<48} {:>10.0}/s  ({n} in {:.1} s)", n as f64 / elapsed.as_secs_f64(), elapsed.as_secs_f64());
}

/// Runs `tasks` copies of `work` at once (each loops until its time is up and returns how
/// many operations it completed) and reports the total rate.
async fn run_for<F, Fut>(name: &str, tasks: usize, work: F) -> u64
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = u64> + Send + 'static,
{
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks).map(|i| tokio::spawn(work(i))).collect();
    let mut total = 0;
    for h in handles {
        total += h.await.unwrap_or(0);
    }
    report(name, total, start.elapsed());
    total
}

fn journal_config(o: &Opts, dir: &std::path::Path) -> JournalConfig {
    JournalConfig {
        store: o.store,
        sqlite_path: dir.join("bench.sqlite"),
        sqlite_synchronous: o.sync,
        postgres_url: "host=127.0.0.1 user=postgres dbname=switchboard_bench".into(),
        app_credentials: vec![CREDENTIAL.into()],
        ..JournalConfig::default()
    }
}

fn fresh_postgres() -> Result<()> {
    for sql in ["DROP DATABASE IF EXISTS switchboard_bench WITH (FORCE)", "CREATE DATABASE switchboard_bench"] {
        let ok = std::process::Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qtAc", sql])
            .status()?
            .success();
        if !ok {
            return Err(format!("psql failed: {sql}").into());
        }
    }
    Ok(())
}

fn payload(i: u64) -> Vec<u8> {
    format!(r#"{{"comment":{i},"text":"a short comment, about a hundred bytes of JSON, like a real update"}}"#)
        .into_bytes()
}

fn env(topic: u64, i: u64) -> NewEnvelope {
    NewEnvelope::new(format!("post:{topic}"), "comment.created", payload(i)).unwrap_or_else(|e| panic!("{e}"))
}

/// The envelope store alone: one appender at a time, batches, concurrent appenders.
async fn store_scenarios(o: &Opts, cfg: &JournalConfig, tag: &str) -> Result<()> {
    let store = EnvelopeStore::open(cfg).await?;
    let s = store.clone();
    let secs = o.secs;
    run_for(&format!("store append, 1 appender, 1/tx [{tag}]"), 1, move |_| {
        let s = s.clone();
        async move {
            let start = Instant::now();
            let mut n = 0;
            while start.elapsed() < Duration::from_secs(secs) {
                s.append(vec![env(n % 100, n)]).await.unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
            n
        }
    })
    .await;
    let s = store.clone();
    run_for(&format!("store append, 1 appender, batches of 100 [{tag}]"), 1, move |_| {
        let s = s.clone();
        async move {
            let start = Instant::now();
            let mut n = 0;
            while start.elapsed() < Duration::from_secs(secs) {
                s.append((0..100).map(|i| env((n + i) % 100, n + i)).collect()).await.unwrap_or_else(|e| panic!("{e}"));
                n += 100;
            }
            n
        }
    })
    .await;
    let s = store.clone();
    run_for(&format!("store append, 64 concurrent appenders, 1 each [{tag}]"), 64, move |t| {
        let s = s.clone();
        async move {
            let start = Instant::now();
            let mut n = 0;
            while start.elapsed() < Duration::from_secs(secs) {
                s.append(vec![env(t as u64, n)]).await.unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
            n
        }
    })
    .await;
    Ok(())
}

/// The application-side Publisher: concurrent publish calls, outbox publishing behind them.
async fn publisher_scenario(o: &Opts, cfg: &JournalConfig, bus: &BusConfig, tag: &str) -> Result<()> {
    let p = Arc::new(Publisher::open(cfg, bus).await?);
    let secs = o.secs;
    for tasks in [128, 512] {
        let pp = p.clone();
        let start = Instant::now();
        let n = run_for(&format!("app Publisher::publish, {tasks} tasks [{tag}]"), tasks, move |t| {
            let p = pp.clone();
            async move {
                let start = Instant::now();
                let mut n = 0;
                while start.elapsed() < Duration::from_secs(secs) {
                    p.publish(&format!("post:{}", t % 100), "comment.created", payload(n))
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
                    n += 1;
                }
                n
            }
        })
        .await;
        // End to end: until the outbox has put every one of them on the bus.
        let pending = p.store().outbox_len().await?;
        while p.store().outbox_len().await? > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        report(&format!("  ... and on the bus ({pending} were pending at the end)"), n, start.elapsed());
    }
    Ok(())
}

/// One keep-alive HTTP/1.1 connection sending requests one after the other.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self { stream, buf: Vec::with_capacity(64 * 1024) })
    }

    /// Sends `request` and reads one response; returns its status.
    async fn call(&mut self, request: &[u8]) -> Result<u16> {
        self.stream.write_all(request).await?;
        self.buf.clear();
        loop {
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err("connection closed".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
            let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let head = std::str::from_utf8(&self.buf[..end])?;
            let len: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .ok_or("no content-length")?
                .parse()?;
            if self.buf.len() >= end + 4 + len {
                return Ok(head.get(9..12).ok_or("short status line")?.parse()?);
            }
        }
    }
}

fn free_port() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

async fn http_scenarios(o: &Opts, cfg: JournalConfig, tag: &str) -> Result<()> {
    let addr = free_port()?;
    let key = switchboard::wire::SigningKeyFile::new("bench", [5; 32]);
    let tokens =
        switchboard::config::TokensConfig { key_files: vec![], keys: vec![key.public_text()], ..Default::default() };
    let full = Config { journal: JournalConfig { listen: addr, ..cfg }, tokens, ..Config::default() };
    let issuer = switchboard::app::TokenIssuer::new(key);
    let keys = full.tokens.load_keys()?;
    // The server on its own multi-threaded runtime, as `switchboard journal` runs it.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"));
        let _ = rt.block_on(switchboard::journal::http::serve(full, keys, Duration::from_secs(1)));
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            return Err("the journal did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = o.secs;
    for conns in [4, 32] {
        run_for(&format!("HTTP POST /v1/envelopes, {conns} keep-alive conns [{tag}]"), conns, move |t| async move {
            let mut c = Conn::open(addr).await.unwrap_or_else(|e| panic!("{e}"));
            let start = Instant::now();
            let mut n = 0;
            while start.elapsed() < Duration::from_secs(secs) {
                let body =
                    format!(r#"{{"topic":"post:{}","kind":"comment.created","payload":{}}}"#, n % 100, n + t as u64);
                let req = format!(
                    "POST /v1/envelopes HTTP/1.1\r\nHost: j\r\nAuthorization: Bearer {CREDENTIAL}\r\n\
                     Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let status = c.call(req.as_bytes()).await.unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(status, 201);
                n += 1;
            }
            n
        })
        .await;
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let topics: Vec<String> = (0..64).map(|i| format!("post:{i}")).collect();
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    let token = Arc::new(issuer.mint("bench", &refs, now, Duration::from_secs(3600))?);
    run_for(&format!("HTTP GET reconcile, limit 10, 4 keep-alive conns [{tag}]"), 4, move |t| {
        let token = token.clone();
        async move {
            let mut c = Conn::open(addr).await.unwrap_or_else(|e| panic!("{e}"));
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < Duration::from_secs(secs) {
                let topic = (n * 7 + t as u64) % 64;
                let after = (n * 13) % 200;
                let req = format!(
                    "GET /v1/topics/post:{topic}/envelopes?after={after}&limit=10 HTTP/1.1\r\nHost: j\r\n\
                     Authorization: Bearer {token}\r\n\r\n"
                );
                let status = c.call(req.as_bytes()).await.unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(status, 200);
                n += 1;
            }
            n
        }
    })
    .await;
    Ok(())
}

/// `switchboard-bench journal ...`
pub fn main(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let tag = match (o.store, o.sync) {
        (StoreKind::Sqlite, SqliteSynchronous::Full) => "sqlite, synchronous=full",
        (StoreKind::Sqlite, SqliteSynchronous::Normal) => "sqlite, synchronous=normal",
        (StoreKind::Postgres, _) => "postgres",
    };
    let bus_dir = tempfile_dir()?;
    let bus = BusConfig { local_dir: bus_dir.join("bus"), ..BusConfig::default() };
    rt.block_on(async {
        let fresh = |name: &str| -> Result<JournalConfig> {
            let d = bus_dir.join(name);
            std::fs::create_dir_all(&d)?;
            if o.store == StoreKind::Postgres {
                fresh_postgres()?;
            }
            Ok(journal_config(&o, &d))
        };
        store_scenarios(&o, &fresh("store")?, tag).await?;
        publisher_scenario(&o, &fresh("publisher")?, &bus, tag).await?;
        http_scenarios(&o, fresh("http")?, tag).await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    })?;
    let _ = std::fs::remove_dir_all(&bus_dir);
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("switchboard-bench-journal-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
