//! The parent's publishers: how envelopes reach the router in `fanout` and `topics`.
//!
//! `--via`:
//! - `local`: the local bus (`switchboard::bus::local::Publisher`, the router's Unix sockets);
//! - `amqp`: RabbitMQ (`switchboard::bus::amqp::Publisher`, confirmed batches), to the
//!   exchange of the router's `[bus]` config;
//! - `publisher`: the Rust `app::Publisher` (journal append, then its outbox onto the bus);
//! - `http`: `POST /v1/envelopes` to a running journal (`switchboard journal`), MessagePack
//!   bodies on `--conns` keep-alive connections; the journal's outbox publishes to the bus.
//!
//! Every payload ends with the wall-clock ns of its creation (8 bytes, big endian): the
//! readers' latency is receive time minus that, across processes on one clock. With
//! `publisher` and `http` the journal assigns the seqs; with `local` and `amqp` the seq of
//! envelope k of a topic is k (from 1).
//!
//! Pacing (`--rate`): publish what is due by now, then wait for the next one ([`pace`]).

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use switchboard::bus::{self, Routed};
use switchboard::config::{BusKind, Config};
use switchboard::wire::EnvelopeRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::conn::now_ns;

/// What to publish (from the scenario's arguments).
pub struct Load<'a> {
    pub names: &'a [String],
    /// Envelopes per topic.
    pub envelopes: u64,
    pub payload: usize,
    /// Publishes per second over all topics; 0 = as fast as accepted.
    pub rate: u64,
    /// Envelopes per bus write, per journal transaction or per HTTP request.
    pub batch: usize,
    /// Concurrent tasks (publisher) or keep-alive connections (http).
    pub tasks: usize,
    /// The journal's HTTP address and application credential (http).
    pub journal: Option<SocketAddr>,
    pub credential: Option<String>,
}

pub fn payload_with_ts(size: usize) -> Vec<u8> {
    let mut body = vec![0x42u8; size.max(8)];
    let n = body.len();
    body[n - 8..].copy_from_slice(&now_ns().to_be_bytes());
    body
}

/// Connects the bus publisher of the router's `[bus]`, checking it is the one `via` names.
pub async fn bus_publisher(cfg: &Config, via: &str) -> anyhow::Result<bus::Publisher> {
    let kind = match cfg.bus.kind {
        BusKind::Local => "local",
        BusKind::Amqp => "amqp",
    };
    if via != kind {
        bail!(
            "--via {via}, but the router config's [bus] kind is {kind:?} (pass the config of the router you measure)"
        );
    }
    bus::Publisher::connect(&cfg.bus).await.with_context(|| format!("connecting the {kind} bus publisher"))
}

/// Publishes one batch; with the local bus, a batch that reached no worker is an error (no
/// router on that bus directory: a wrong `--config`).
pub async fn publish_batch(p: &mut bus::Publisher, cfg: &Config, batch: &[Routed]) -> anyhow::Result<()> {
    match p {
        bus::Publisher::Local(l) => {
            if l.publish_counted(batch).await? == 0 {
                bail!("no router worker listens on the local bus in {}", cfg.bus.local_dir.display());
            }
        }
        p => p.publish(batch).await.context("bus publish")?,
    }
    Ok(())
}

/// Publishes `l.envelopes` per topic, round robin over topics. Returns (publishes, seconds).
pub async fn publish_load(cfg: &Config, via: &str, l: &Load<'_>) -> anyhow::Result<(u64, f64)> {
    match via {
        "local" | "amqp" => publish_bus(cfg, via, l).await,
        "publisher" => publish_app(cfg, l).await,
        "http" => publish_http(cfg, l).await,
        other => bail!("--via {other}: use local, amqp, publisher or http"),
    }
}

/// How many should have been published by `elapsed` (all of them when unpaced).
fn due(rate: u64, total: u64, elapsed: Duration) -> u64 {
    if rate == 0 { total } else { ((elapsed.as_secs_f64() * rate as f64) as u64 + 1).min(total) }
}

/// Waits until envelope number `sent` is due. tokio's timer ticks in milliseconds, which at
/// 4,000/s bunched 4-8 publishes into each wakeup, and the router then wrote them one after
/// the other: p50 0.31-0.39 ms at 4,000/s against 0.19 ms at 1,000/s. Waits under 2 ms are
/// slept on the thread instead (the parent has nothing else to run meanwhile but the holders'
/// tick lines, which wait in their pipes).
async fn pace(start: Instant, sent: u64, rate: u64) {
    let wait = (start + Duration::from_secs_f64(sent as f64 / rate as f64)).saturating_duration_since(Instant::now());
    if wait >= Duration::from_millis(2) {
        tokio::time::sleep(wait).await;
    } else {
        std::thread::sleep(wait);
        tokio::task::yield_now().await;
    }
}

async fn publish_bus(cfg: &Config, via: &str, l: &Load<'_>) -> anyhow::Result<(u64, f64)> {
    let mut p = bus_publisher(cfg, via).await?;
    let n = l.names.len() as u64;
    let total = l.envelopes * n;
    let batch = l.batch.max(1);
    let start = Instant::now();
    let mut pending = Vec::with_capacity(batch);
    let mut sent = 0u64;
    while sent < total {
        let upto = due(l.rate, total, start.elapsed()).max(sent);
        while sent < upto {
            let t = &l.names[(sent % n) as usize];
            let seq = sent / n + 1;
            let body = payload_with_ts(l.payload);
            let e = EnvelopeRef { topic: t, seq, id: "b", ts: 0, kind: "bench", payload: &body };
            pending.push(Routed { topic: t.clone(), seq, frame: e.encode().into() });
            sent += 1;
            if pending.len() == batch {
                publish_batch(&mut p, cfg, &pending).await?;
                pending.clear();
            }
        }
        if !pending.is_empty() {
            publish_batch(&mut p, cfg, &pending).await?;
            pending.clear();
        }
        if l.rate > 0 && sent < total {
            pace(start, sent, l.rate).await;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    p.close().await;
    Ok((total, secs))
}

/// Runs `tasks` copies of `one(first, upto)` that share the work in slices of `batch`,
/// paced at `rate`.
async fn shared_work<F, Fut>(total: u64, rate: u64, batch: u64, tasks: usize, one: F) -> anyhow::Result<f64>
where
    F: Fn(usize, u64, u64) -> Fut + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + 'static,
{
    let start = Instant::now();
    let next = Rc::new(Cell::new(0u64));
    let one = Rc::new(one);
    let mut handles = Vec::new();
    for task in 0..tasks.max(1) {
        let (next, one) = (next.clone(), one.clone());
        handles.push(tokio::task::spawn_local(async move {
            loop {
                let first = next.get();
                if first >= total {
                    return anyhow::Ok(());
                }
                if rate > 0 && first >= due(rate, total, start.elapsed()) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                let upto = (first + batch.max(1)).min(total);
                next.set(upto);
                one(task, first, upto).await?;
            }
        }));
    }
    for h in handles {
        h.await.context("publisher task")??;
    }
    Ok(start.elapsed().as_secs_f64())
}

async fn publish_app(cfg: &Config, l: &Load<'_>) -> anyhow::Result<(u64, f64)> {
    let p = Rc::new(switchboard::app::Publisher::open(&cfg.journal, &cfg.bus).await.context("opening the journal")?);
    let names: Rc<Vec<String>> = Rc::new(l.names.to_vec());
    let total = l.envelopes * names.len() as u64;
    let payload = l.payload;
    let pp = p.clone();
    let secs = shared_work(total, l.rate, l.batch as u64, l.tasks, move |_, first, upto| {
        let (p, names) = (pp.clone(), names.clone());
        async move {
            let mut v = Vec::with_capacity((upto - first) as usize);
            for i in first..upto {
                let t = &names[(i % names.len() as u64) as usize];
                v.push(switchboard::app::NewEnvelope::new(t.as_str(), "bench", payload_with_ts(payload))?);
            }
            p.publish_batch(v).await?;
            Ok(())
        }
    })
    .await?;
    if let Ok(p) = Rc::try_unwrap(p) {
        p.close(Duration::from_secs(10)).await;
    }
    Ok((total, secs))
}

// ------------------------------------------------------------------------- journal HTTP API

fn mp_len(out: &mut Vec<u8>, n: usize, fix: Option<(u8, usize)>, m8: Option<u8>, m16: u8, m32: u8) {
    match (fix, m8) {
        (Some((base, max)), _) if n <= max => out.push(base | n as u8),
        (_, Some(m)) if n <= 0xff => out.extend_from_slice(&[m, n as u8]),
        _ if n <= 0xffff => {
            out.push(m16);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => {
            out.push(m32);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
}

/// One envelope as the journal's MessagePack publish body: `[topic, kind, payload(bin)]`.
fn mp_envelope(out: &mut Vec<u8>, topic: &str, kind: &str, payload: &[u8]) {
    out.push(0x93);
    for s in [topic, kind] {
        mp_len(out, s.len(), Some((0xa0, 31)), Some(0xd9), 0xda, 0xdb);
        out.extend_from_slice(s.as_bytes());
    }
    mp_len(out, payload.len(), None, Some(0xc4), 0xc5, 0xc6);
    out.extend_from_slice(payload);
}

/// One keep-alive HTTP/1.1 connection, one request at a time.
struct HttpConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl HttpConn {
    async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await.with_context(|| format!("journal at {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Self { stream, buf: Vec::with_capacity(16 * 1024) })
    }

    /// Sends `head` + `body`, reads the answer: (status, body).
    async fn call(&mut self, head: &[u8], body: &[u8]) -> anyhow::Result<(u16, String)> {
        self.stream.write_all(head).await?;
        self.stream.write_all(body).await?;
        self.buf.clear();
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end]).context("answer head is not UTF-8")?;
                let status: u16 = head.get(9..12).context("short status line")?.parse().context("status")?;
                let len: usize = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                    .context("answer without content-length")?
                    .parse()?;
                if self.buf.len() >= end + 4 + len {
                    return Ok((status, String::from_utf8_lossy(&self.buf[end + 4..end + 4 + len]).into_owned()));
                }
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("the journal closed the connection");
            }
        }
    }
}

async fn publish_http(cfg: &Config, l: &Load<'_>) -> anyhow::Result<(u64, f64)> {
    let addr = l.journal.unwrap_or(cfg.journal.listen);
    if addr.port() == 0 {
        bail!(
            "--journal ADDR is needed: the config's [journal] listen has port 0 (`switchboard journal` prints `ready journal=ADDR`)"
        );
    }
    let credential = match (&l.credential, cfg.journal.app_credentials.first()) {
        (Some(c), _) | (None, Some(c)) => c.clone(),
        (None, None) => bail!("--credential is needed: the config's [journal] app_credentials is empty"),
    };
    let names: Rc<Vec<String>> = Rc::new(l.names.to_vec());
    let total = l.envelopes * names.len() as u64;
    let mut conns = Vec::new();
    for _ in 0..l.tasks.max(1) {
        conns.push(Rc::new(tokio::sync::Mutex::new(HttpConn::open(addr).await?)));
    }
    let conns = Rc::new(conns);
    let (payload, batch) = (l.payload, l.batch.max(1));
    let secs = shared_work(total, l.rate, batch as u64, l.tasks, move |task, first, upto| {
        let (names, conns, credential) = (names.clone(), conns.clone(), credential.clone());
        async move {
            let mut body = Vec::with_capacity(batch * (payload + 32));
            if batch > 1 {
                mp_len(&mut body, (upto - first) as usize, Some((0x90, 15)), None, 0xdc, 0xdd);
            }
            for i in first..upto {
                mp_envelope(&mut body, &names[(i % names.len() as u64) as usize], "bench", &payload_with_ts(payload));
            }
            let head = format!(
                "POST /v1/envelopes HTTP/1.1\r\nHost: journal\r\nAuthorization: Bearer {credential}\r\n\
                 Content-Type: application/msgpack\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let mut c = conns[task].lock().await;
            let (status, answer) = c.call(head.as_bytes(), &body).await?;
            if status != 201 {
                bail!("the journal answered HTTP {status}: {}", answer.trim());
            }
            Ok(())
        }
    })
    .await?;
    Ok((total, secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msgpack_envelope_bytes() {
        let mut v = Vec::new();
        mp_envelope(&mut v, "t:1", "k", &[1, 2]);
        assert_eq!(v, [0x93, 0xa3, b't', b':', b'1', 0xa1, b'k', 0xc4, 2, 1, 2]);
        let mut a = Vec::new();
        mp_len(&mut a, 300, Some((0x90, 15)), None, 0xdc, 0xdd);
        assert_eq!(a, [0xdc, 1, 44]);
    }
}
