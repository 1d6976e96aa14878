//! `switchboard-bench`: a load tool for the router, on loopback.
//!
//! Two measurements for now (the full load generator grows from here):
//!
//! - `fanout`: T topics x S subscribers, N envelopes per topic published through the local
//!   bus as fast as it takes them; reports deliveries per second (envelope frames received by
//!   all clients, first publish to last frame) and any gap frames (slow-consumer drops).
//! - `idle`: N connections, each subscribed to one topic, then the router's RSS growth per
//!   connection (`--pid` of the router process).
//!
//! Clients are spread over source addresses 127.0.0.2.. (with IP_BIND_ADDRESS_NO_PORT) so
//! that more than one address' worth of ephemeral ports is available, and the fd limit is
//! raised to the hard limit. Everything stays on this machine.

use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

mod amqp;
mod journal;

use anyhow::{Context, bail};
use bytes::{Buf, BytesMut};
use clap::{Parser, Subcommand};
use switchboard::app::TokenIssuer;
use switchboard::bus::Routed;
use switchboard::client::{Client, request};
use switchboard::config::Config;
use switchboard::wire::{EnvelopeRef, ServerFrame};
use tokio::io::AsyncReadExt;

#[derive(Parser)]
#[command(about = "Load tool for the switchboard router (loopback only)")]
struct Cli {
    /// Router address (`ready router=...`).
    #[arg(long, global = true, default_value = "127.0.0.1:8000")]
    addr: SocketAddr,
    /// The router's config file (for the local bus directory).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Secret key file to mint subscriber tokens with.
    #[arg(long, global = true, default_value = "keys/bench.secret")]
    key: PathBuf,
    /// How many source addresses (127.0.0.2 upwards) to spread clients over.
    #[arg(long, global = true, default_value_t = 16)]
    sources: u8,
    /// Handshakes in flight at once while connecting.
    #[arg(long, global = true, default_value_t = 256)]
    concurrency: usize,
    /// Write the results as JSON to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct LoadArgs {
    #[arg(long, default_value_t = 1)]
    topics: usize,
    #[arg(long, default_value_t = 1000)]
    subs: usize,
    /// Envelopes per topic.
    #[arg(long, default_value_t = 1000)]
    envelopes: u64,
    /// Payload bytes per envelope (the last 8 carry the publish time, ns).
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Envelopes per bus write (local bus) or per journal transaction (publisher).
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Publishes per second over all topics; 0 = as fast as accepted.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// How envelopes reach the router: `local` (the local bus) or `publisher` (the Rust
    /// `app::Publisher`: journal append, then the outbox onto the local bus).
    #[arg(long, default_value = "local")]
    via: String,
    /// Concurrent publisher tasks (`--via publisher`).
    #[arg(long, default_value_t = 64)]
    tasks: usize,
}

#[derive(Subcommand)]
enum Cmd {
    /// 1 topic x SUBS: deliveries/s, gaps, end-to-end latency.
    Fanout(LoadArgs),
    /// TOPICS x SUBS: the same figures over many topics.
    Topics(LoadArgs),
    /// RSS growth of the router per idle, subscribed connection.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
        /// Topics to spread the subscriptions over; 0: connect without subscribing.
        #[arg(long, default_value_t = 100)]
        topics: usize,
        /// The router's pid (all its descendants' RSS is summed: supervisor and workers).
        #[arg(long)]
        pid: u32,
    },
    /// Connect + upgrade + subscribe per second, a fresh Ed25519 token per connection.
    Connect {
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
    },
    /// N clients on a multi-worker router, SIGKILL one worker, time until 99.9 % receive again.
    Storm {
        #[arg(long, default_value_t = 20_000)]
        conns: usize,
        /// The supervisor's pid (a child of it is killed).
        #[arg(long)]
        pid: u32,
        #[arg(long, default_value_t = 15)]
        timeout_secs: u64,
        /// Reconnects in flight at once after the kill; 0 = unlimited (every client at once).
        #[arg(long, default_value_t = 0)]
        reconnect_concurrency: usize,
    },
    /// Draws plots (SVG) from JSON results into a directory.
    Plot {
        #[arg(long, default_value = "bench/out")]
        out: PathBuf,
        files: Vec<PathBuf>,
    },
}

fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Connects client `i` from source address 127.0.0.(2 + i % sources).
async fn connect(i: usize, sources: u8, addr: SocketAddr) -> anyhow::Result<Client> {
    let src = Ipv4Addr::new(127, 0, 0, 2 + (i % sources.max(1) as usize) as u8);
    let s = tokio::net::TcpSocket::new_v4()?;
    let one: libc::c_int = 1;
    // SAFETY: a plain setsockopt on a socket we own, with a correctly sized int argument.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of_val(&one) as libc::socklen_t,
        );
    }
    s.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    let stream = s.connect(addr).await?;
    Ok(Client::connect_raw(stream, &request(&addr.to_string(), "/ws", "")).await?)
}

async fn subscribe(c: &mut Client, topic: &str, token: &str) -> anyhow::Result<()> {
    c.subscribe(1, topic, token).await?;
    loop {
        let m = c.next().await?;
        match m.frame() {
            Some(ServerFrame::Ok { .. }) => return Ok(()),
            Some(ServerFrame::Error { code, message, .. }) => bail!("subscribe refused: {code}: {message}"),
            _ => continue,
        }
    }
}

/// Connects `n` clients, `topic_of(i)` subscribed, `cli.concurrency` handshakes in flight.
async fn connect_all(
    cli: &Cli,
    n: usize,
    topic_of: impl Fn(usize) -> String,
    tokens: &dyn Fn(&str) -> String,
) -> anyhow::Result<Vec<Client>> {
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let end = (i + cli.concurrency.max(1)).min(n);
        let mut tasks = Vec::new();
        for k in i..end {
            let (addr, sources, topic) = (cli.addr, cli.sources, topic_of(k));
            let token = tokens(&topic);
            tasks.push(tokio::task::spawn_local(async move {
                let mut c = connect(k, sources, addr).await?;
                if !topic.is_empty() {
                    subscribe(&mut c, &topic, &token).await?;
                }
                anyhow::Ok(c)
            }));
        }
        for t in tasks {
            out.push(t.await.context("client task")??);
        }
        i = end;
    }
    Ok(out)
}

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// What the readers share (one thread: cells, no atomics).
struct Counters {
    envelopes: Cell<u64>,
    gaps: Cell<u64>,
    /// End-to-end latency in ns: receive time minus the publish time in the payload's last 8 bytes.
    latency: std::cell::RefCell<hdrhistogram::Histogram<u64>>,
    /// Envelopes received after the storm's kill, per connection index (storm only).
    closed: Cell<u64>,
}

impl Counters {
    fn new() -> Rc<Self> {
        Rc::new(Self {
            envelopes: Cell::new(0),
            gaps: Cell::new(0),
            latency: std::cell::RefCell::new(
                hdrhistogram::Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("bounds"),
            ),
            closed: Cell::new(0),
        })
    }
}

/// Counts envelope and gap frames on one connection without decoding or allocating, and
/// records latency. Returns this connection's envelope count when the socket closes.
async fn count_frames(c: &mut Client, k: Rc<Counters>, mine: Rc<Cell<u64>>) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        let now = now_ns();
        loop {
            if buf.len() < 2 {
                break;
            }
            let (len, head) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().unwrap_or([0; 8])) as usize, 10),
                126 | 127 => break,
                n => (n as usize, 2),
            };
            if buf.len() < head + len {
                break;
            }
            // Envelope frames start [0x97, 19 ...]; gap frames [0x94, 21 ...].
            match (buf[0] & 0x0f, buf.get(head..head + 2)) {
                (2, Some([0x97, 0x13])) => {
                    k.envelopes.set(k.envelopes.get() + 1);
                    mine.set(mine.get() + 1);
                    if len >= 10 {
                        let end = head + len;
                        let ts = u64::from_be_bytes(buf[end - 8..end].try_into().unwrap_or([0; 8]));
                        if ts > 0 && now > ts {
                            let _ = k.latency.borrow_mut().record(now - ts);
                        }
                    }
                }
                (2, Some([0x94, 0x15])) => k.gaps.set(k.gaps.get() + 1),
                _ => {}
            }
            buf.advance(head + len);
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        match c.stream().read_buf(&mut buf).await {
            Ok(0) | Err(_) => {
                k.closed.set(k.closed.get() + 1);
                return;
            }
            Ok(_) => {}
        }
    }
}

/// RSS (KiB) of `pid` and all its descendants.
fn tree_rss_kib(pid: u32) -> u64 {
    let mut total = rss_kib(pid);
    for child in children(pid) {
        total += tree_rss_kib(child);
    }
    total
}

fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in dir.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|x| x.parse::<u32>().ok()));
            }
        }
    }
    out
}

fn latency_json(h: &hdrhistogram::Histogram<u64>) -> serde_json::Value {
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let mut cdf = Vec::new();
    for q in [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0] {
        cdf.push(serde_json::json!([q, us(q)]));
    }
    serde_json::json!({
        "count": h.len(), "p50_us": us(0.5), "p99_us": us(0.99), "p999_us": us(0.999), "max_us": h.max() as f64 / 1000.0,
        "cdf": cdf,
    })
}

/// Starts a task sampling the delivery counter every 100 ms (timeline) and printing a
/// progress line every second to stderr. Returns the timeline (t in s, deliveries/s).
fn sampler(k: Rc<Counters>, label: &'static str) -> Rc<std::cell::RefCell<Vec<(f64, f64)>>> {
    let tl = Rc::new(std::cell::RefCell::new(Vec::new()));
    let out = tl.clone();
    tokio::task::spawn_local(async move {
        let t0 = Instant::now();
        let mut last = (0u64, Instant::now());
        let mut tick = 0u64;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let n = k.envelopes.get();
            let dt = last.1.elapsed().as_secs_f64().max(1e-9);
            tl.borrow_mut().push((t0.elapsed().as_secs_f64(), (n - last.0) as f64 / dt));
            last = (n, Instant::now());
            tick += 1;
            if tick.is_multiple_of(10) {
                let h = k.latency.borrow();
                eprintln!(
                    "[{label} {:>5.1}s] delivered {n} ({:.0}/s), gaps {}, p50 {:.0} us, p99 {:.0} us",
                    t0.elapsed().as_secs_f64(),
                    tl.borrow().iter().rev().take(10).map(|x| x.1).sum::<f64>() / 10.0,
                    k.gaps.get(),
                    h.value_at_quantile(0.5) as f64 / 1000.0,
                    h.value_at_quantile(0.99) as f64 / 1000.0
                );
            }
        }
    });
    out
}

fn payload_with_ts(size: usize) -> Vec<u8> {
    let mut body = vec![0x42u8; size.max(8)];
    let n = body.len();
    body[n - 8..].copy_from_slice(&now_ns().to_be_bytes());
    body
}

/// Publishes `a.envelopes` per topic, round robin over topics, at `a.rate` per second (0: as
/// fast as accepted). Returns (publishes, seconds taken).
async fn publish_load(cfg: &Config, a: &LoadArgs, names: &[String]) -> anyhow::Result<(u64, f64)> {
    let total = a.envelopes * names.len() as u64;
    let start = Instant::now();
    // How many should have been published by now (paced) or everything (unpaced).
    let due = |sent: u64| -> u64 {
        if a.rate == 0 {
            total
        } else {
            ((start.elapsed().as_secs_f64() * a.rate as f64) as u64 + 1).min(total).max(sent)
        }
    };
    match a.via.as_str() {
        "local" => {
            let mut publisher = switchboard::bus::local::Publisher::new(&cfg.bus.local_dir);
            let mut pending = Vec::with_capacity(a.batch);
            let mut sent = 0u64;
            while sent < total {
                let upto = due(sent);
                while sent < upto {
                    let t = &names[(sent % names.len() as u64) as usize];
                    let seq = sent / names.len() as u64 + 1;
                    let body = payload_with_ts(a.payload);
                    let e = EnvelopeRef { topic: t, seq, id: "b", ts: 0, kind: "bench", payload: &body };
                    pending.push(Routed { topic: t.clone(), seq, frame: e.encode().into() });
                    sent += 1;
                    if pending.len() == a.batch {
                        publisher.publish_counted(&pending).await?;
                        pending.clear();
                    }
                }
                if !pending.is_empty() {
                    publisher.publish_counted(&pending).await?;
                    pending.clear();
                }
                if a.rate > 0 && sent < total {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
        "publisher" => {
            let p = Rc::new(switchboard::app::Publisher::open(&cfg.journal, &cfg.bus).await?);
            let next = Rc::new(Cell::new(0u64));
            let mut tasks = Vec::new();
            let n = names.len() as u64;
            let names: Rc<Vec<String>> = Rc::new(names.to_vec());
            let (rate, batch, payload) = (a.rate, a.batch.max(1) as u64, a.payload);
            for _ in 0..a.tasks.max(1) {
                let (p, next, names) = (p.clone(), next.clone(), names.clone());
                tasks.push(tokio::task::spawn_local(async move {
                    loop {
                        let first = next.get();
                        if first >= total {
                            return anyhow::Ok(());
                        }
                        if rate > 0 && first as f64 > start.elapsed().as_secs_f64() * rate as f64 {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            continue;
                        }
                        let upto = (first + batch).min(total);
                        next.set(upto);
                        let mut v = Vec::with_capacity((upto - first) as usize);
                        for i in first..upto {
                            let t = &names[(i % n) as usize];
                            v.push(switchboard::app::NewEnvelope::new(t.as_str(), "bench", payload_with_ts(payload))?);
                        }
                        p.publish_batch(v).await?;
                    }
                }));
            }
            for t in tasks {
                t.await??;
            }
            let secs = start.elapsed().as_secs_f64();
            if let Ok(p) = Rc::try_unwrap(p) {
                p.close(Duration::from_secs(10)).await;
            }
            return Ok((total, secs));
        }
        other => bail!("--via {other}: use local or publisher (RabbitMQ: the `amqp` scenario)"),
    }
    Ok((total, start.elapsed().as_secs_f64()))
}

fn table(rows: &[(&str, String)]) {
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    println!("+-{}-+-{}-+", "-".repeat(w), "-".repeat(24));
    for (k, v) in rows {
        println!("| {k:<w$} | {v:>24} |");
    }
    println!("+-{}-+-{}-+", "-".repeat(w), "-".repeat(24));
}

async fn run_load(
    cli: &Cli,
    cfg: &Config,
    a: &LoadArgs,
    tokens: &dyn Fn(&str) -> String,
) -> anyhow::Result<serde_json::Value> {
    let topics = a.topics.max(1);
    let names: Vec<String> = (0..topics).map(|t| format!("bench:{t}")).collect();
    let t0 = Instant::now();
    let clients = connect_all(cli, topics * a.subs, |i| names[i % topics].clone(), tokens).await?;
    eprintln!("{} clients subscribed in {:.1?}", clients.len(), t0.elapsed());
    let k = Counters::new();
    let mut per_conn = Vec::new();
    for mut c in clients {
        let mine = Rc::new(Cell::new(0));
        per_conn.push(mine.clone());
        let k = k.clone();
        tokio::task::spawn_local(async move { count_frames(&mut c, k, mine).await });
    }
    let tl = sampler(k.clone(), "load");
    let expected = (topics * a.subs) as u64 * a.envelopes;
    let start = Instant::now();
    let (published, pub_secs) = publish_load(cfg, a, &names).await?;
    let mut last = (0, Instant::now());
    while k.envelopes.get() < expected {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if k.envelopes.get() != last.0 {
            last = (k.envelopes.get(), Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let end = if k.envelopes.get() >= expected { Instant::now() } else { last.1 };
    let secs = end.duration_since(start).as_secs_f64().max(1e-9);
    let complete = per_conn.iter().filter(|c| c.get() == a.envelopes).count();
    let got = k.envelopes.get();
    let h = k.latency.borrow();
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    table(&[
        ("scenario", format!("{}x{} via {}", topics, a.subs, a.via)),
        (
            "payload / rate",
            format!("{} B / {}", a.payload, if a.rate == 0 { "max".into() } else { format!("{}/s", a.rate) }),
        ),
        ("published", format!("{published} in {pub_secs:.2} s")),
        ("publishes/s", format!("{:.0}", published as f64 / pub_secs.max(1e-9))),
        ("delivered", format!("{got} of {expected}")),
        ("deliveries/s", format!("{:.0}", got as f64 / secs)),
        ("gaps", k.gaps.get().to_string()),
        ("subscribers complete", format!("{complete} of {}", per_conn.len())),
        ("latency p50", format!("{:.1} us", us(0.5))),
        ("latency p99", format!("{:.1} us", us(0.99))),
        ("latency p99.9", format!("{:.1} us", us(0.999))),
        ("latency max", format!("{:.1} us", h.max() as f64 / 1000.0)),
    ]);
    Ok(serde_json::json!({
        "topics": topics, "subs": a.subs, "envelopes_per_topic": a.envelopes, "payload": a.payload,
        "rate": a.rate, "via": a.via, "published": published, "publish_secs": pub_secs,
        "publishes_per_s": published as f64 / pub_secs.max(1e-9),
        "expected": expected, "delivered": got, "deliveries_per_s": got as f64 / secs, "gaps": k.gaps.get(),
        "subscribers": per_conn.len(), "subscribers_complete": complete,
        "latency": latency_json(&h), "timeline": *tl.borrow(),
    }))
}

async fn storm(
    cli: &Cli,
    conns: usize,
    pid: u32,
    timeout: Duration,
    reconnect_concurrency: usize,
    tokens: &dyn Fn(&str) -> String,
) -> anyhow::Result<serde_json::Value> {
    let cfg = match &cli.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let topic = "storm:0".to_string();
    let token = tokens(&topic);
    let t0 = Instant::now();
    let clients = connect_all(cli, conns, |_| topic.clone(), tokens).await?;
    eprintln!("{} clients subscribed in {:.1?}", clients.len(), t0.elapsed());
    // A probe envelope every 10 ms; a client counts as receiving once a frame arrived since
    // it (re)subscribed (its counter is reset when its socket closes).
    let alive: Rc<Vec<Rc<Cell<u64>>>> = Rc::new((0..conns).map(|_| Rc::new(Cell::new(0))).collect());
    let k = Counters::new();
    let reconnects = Rc::new(Cell::new(0u64));
    let failures = Rc::new(Cell::new(0u64));
    // Reconnects in flight at once, as a real client library would pace them (with jitter).
    let gate = Rc::new(tokio::sync::Semaphore::new(if reconnect_concurrency == 0 {
        tokio::sync::Semaphore::MAX_PERMITS
    } else {
        reconnect_concurrency
    }));
    for (i, c) in clients.into_iter().enumerate() {
        let (gate, failures) = (gate.clone(), failures.clone());
        let (alive, k, token, topic, reconnects) =
            (alive.clone(), k.clone(), token.clone(), topic.clone(), reconnects.clone());
        let (addr, sources) = (cli.addr, cli.sources);
        tokio::task::spawn_local(async move {
            let mut c = c;
            loop {
                let mine = alive[i].clone();
                count_frames(&mut c, k.clone(), mine).await;
                alive[i].set(0);
                // Reconnect until it works (the supervisor respawns the worker; the other one takes over).
                loop {
                    let _permit = gate.acquire().await;
                    match async {
                        let mut c = connect(i, sources, addr).await?;
                        subscribe(&mut c, &topic, &token).await?;
                        anyhow::Ok(c)
                    }
                    .await
                    {
                        Ok(n) => {
                            c = n;
                            reconnects.set(reconnects.get() + 1);
                            break;
                        }
                        Err(_) => {
                            failures.set(failures.get() + 1);
                            drop(_permit);
                            tokio::time::sleep(Duration::from_millis(20)).await
                        }
                    }
                }
            }
        });
    }
    let mut publisher = switchboard::bus::local::Publisher::new(&cfg.bus.local_dir);
    let probe = {
        let topic = topic.clone();
        tokio::task::spawn_local(async move {
            let mut seq = 1;
            loop {
                let body = payload_with_ts(16);
                let e = EnvelopeRef { topic: &topic, seq, id: "p", ts: 0, kind: "probe", payload: &body };
                let _ =
                    publisher.publish_counted(&[Routed { topic: topic.clone(), seq, frame: e.encode().into() }]).await;
                seq += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let live_before = alive.iter().filter(|a| a.get() > 0).count();
    let workers = children(pid);
    let victim = *workers.first().context("the supervisor has no worker children")?;
    let kill_at = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), nix::sys::signal::Signal::SIGKILL)?;
    eprintln!("killed worker {victim} of {workers:?}; {live_before} of {conns} receiving before");
    let target = (conns as f64 * 0.999).ceil() as usize;
    let mut recovered = None;
    let mut min_live = conns;
    let mut tl = Vec::new();
    while kill_at.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let live = alive.iter().filter(|a| a.get() > 0).count();
        min_live = min_live.min(live);
        tl.push((kill_at.elapsed().as_secs_f64(), live as f64));
        if kill_at.elapsed().as_millis() % 1000 < 10 {
            eprintln!(
                "[storm {:.1}s] receiving {live} of {conns}, reconnects {}",
                kill_at.elapsed().as_secs_f64(),
                reconnects.get()
            );
        }
        if live >= target && min_live < conns && kill_at.elapsed() > Duration::from_millis(200) {
            recovered = Some(kill_at.elapsed().as_secs_f64());
            break;
        }
    }
    probe.abort();
    let rec = recovered.map(|s| format!("{s:.2} s")).unwrap_or_else(|| "not within timeout".into());
    table(&[
        ("scenario", format!("storm {conns} clients")),
        ("receiving before kill", live_before.to_string()),
        ("lowest after kill", min_live.to_string()),
        ("reconnects", reconnects.get().to_string()),
        ("failed reconnect attempts", failures.get().to_string()),
        ("time to 99.9 % receiving", rec),
    ]);
    Ok(serde_json::json!({
        "conns": conns, "receiving_before": live_before, "min_receiving": min_live, "reconnects": reconnects.get(), "failed_attempts": failures.get(),
        "recovered_secs": recovered, "victim": victim, "timeline": tl,
    }))
}

fn plot(out: &std::path::Path, files: &[PathBuf]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    std::fs::create_dir_all(out)?;
    for f in files {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(f)?)?;
        let stem = f.file_stem().and_then(|s| s.to_str()).unwrap_or("run").to_string();
        let r = &v["result"];
        if let Some(cdf) = r["latency"]["cdf"].as_array().filter(|c| !c.is_empty()) {
            // x: latency (us, log), y: fraction below. Quantiles 0 and 1 are min and max.
            let pts: Vec<(f64, f64)> =
                cdf.iter().filter_map(|p| Some((p[1].as_f64()?.max(1.0), p[0].as_f64()?))).collect();
            let xmax = pts.iter().map(|p| p.0).fold(1.0, f64::max) * 1.2;
            let xmin = pts.iter().map(|p| p.0).fold(f64::MAX, f64::min).max(1.0) / 1.2;
            let path = out.join(format!("{stem}-latency-cdf.svg"));
            let root = SVGBackend::new(&path, (800, 500)).into_drawing_area();
            root.fill(&WHITE)?;
            let mut ch = ChartBuilder::on(&root)
                .caption(format!("{stem}: end-to-end latency CDF"), ("sans-serif", 22))
                .margin(15)
                .x_label_area_size(40)
                .y_label_area_size(50)
                .build_cartesian_2d((xmin..xmax).log_scale(), 0.0..1.0)?;
            ch.configure_mesh().x_desc("latency (us, log)").y_desc("fraction of deliveries").draw()?;
            ch.draw_series(LineSeries::new(pts.clone(), &BLUE))?;
            ch.draw_series(pts.iter().map(|p| Circle::new(*p, 3, BLUE.filled())))?;
            root.present()?;
            eprintln!("wrote {}", path.display());
        }
        if let Some(tl) = r["timeline"].as_array().filter(|t| !t.is_empty()) {
            let pts: Vec<(f64, f64)> = tl.iter().filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?))).collect();
            let xmax = pts.iter().map(|p| p.0).fold(0.1, f64::max);
            let ymax = pts.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
            let path = out.join(format!("{stem}-timeline.svg"));
            let root = SVGBackend::new(&path, (800, 500)).into_drawing_area();
            root.fill(&WHITE)?;
            let ylabel = if v["scenario"] == "storm" { "clients receiving" } else { "deliveries/s" };
            let mut ch = ChartBuilder::on(&root)
                .caption(format!("{stem}: {ylabel} over time"), ("sans-serif", 22))
                .margin(15)
                .x_label_area_size(40)
                .y_label_area_size(80)
                .build_cartesian_2d(0.0..xmax, 0.0..ymax)?;
            ch.configure_mesh().x_desc("seconds").y_desc(ylabel).draw()?;
            ch.draw_series(LineSeries::new(pts, &RED))?;
            root.present()?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // The RabbitMQ measurements take their own arguments (bench/src/amqp.rs).
    if args.get(1).map(String::as_str) == Some("amqp") {
        return amqp::main(&args[2..]);
    }
    if args.get(1).map(String::as_str) == Some("journal") {
        return journal::main(&args[2..]).map_err(|e| anyhow::anyhow!("{e}"));
    }
    let cli = Cli::parse();
    if let Cmd::Plot { out, files } = &cli.cmd {
        return plot(out, files);
    }
    raise_fd_limit();
    let cfg = match &cli.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let issuer = Rc::new(TokenIssuer::from_file(&cli.key)?);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let iss = issuer.clone();
    let tokens = move |topic: &str| iss.mint("bench", &[topic], now, Duration::from_secs(3000)).unwrap_or_default();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    let (name, result) = local.block_on(&rt, async {
        let r = match &cli.cmd {
            Cmd::Fanout(a) => ("fanout", run_load(&cli, &cfg, &LoadArgs { topics: 1, ..a.clone() }, &tokens).await?),
            Cmd::Topics(a) => ("topics", run_load(&cli, &cfg, a, &tokens).await?),
            Cmd::Idle { conns, topics, pid } => {
                let (conns, topics, pid) = (*conns, *topics, *pid);
                let before = tree_rss_kib(pid);
                let t0 = Instant::now();
                let topic_of = |i: usize| if topics == 0 { String::new() } else { format!("idle:{}", i % topics) };
                let clients = connect_all(&cli, conns, topic_of, &tokens).await?;
                eprintln!("{} clients subscribed in {:.1?}", clients.len(), t0.elapsed());
                tokio::time::sleep(Duration::from_secs(2)).await;
                let after = tree_rss_kib(pid);
                let per = (after.saturating_sub(before)) as f64 / conns as f64;
                let sock = sockstat_kib();
                // Balance: open fds per worker (connections plus a constant few).
                let per_worker: Vec<usize> = children(pid)
                    .iter()
                    .map(|w| std::fs::read_dir(format!("/proc/{w}/fd")).map(|d| d.count()).unwrap_or(0))
                    .collect();
                table(&[
                    ("scenario", format!("idle {conns} conns, {topics} topics")),
                    ("router RSS before", format!("{before} KiB")),
                    ("router RSS after", format!("{after} KiB")),
                    ("user space per conn", format!("{per:.2} KiB")),
                    ("kernel TCP mem (host)", format!("{sock} KiB")),
                    ("fds per worker", format!("{per_worker:?}")),
                ]);
                drop(clients);
                ("idle", serde_json::json!({"conns": conns, "topics": topics, "rss_before_kib": before,
                    "rss_after_kib": after, "kib_per_conn": per, "host_tcp_mem_kib": sock, "fds_per_worker": per_worker}))
            }
            Cmd::Connect { conns } => {
                let conns = *conns;
                // Fresh tokens: one per connection with its own `sub`, so no token cache hits.
                // Minted before the clock starts (the signing is the application's cost).
                let m0 = Instant::now();
                let fresh: Vec<String> = (0..conns)
                    .map(|i| {
                        issuer.mint(&format!("c{i}-{now}"), &["conn:0"], now, Duration::from_secs(3000)).unwrap_or_default()
                    })
                    .collect();
                let mint_secs = m0.elapsed().as_secs_f64();
                let next = Cell::new(0usize);
                let t0 = Instant::now();
                let clients = connect_all(&cli, conns, |_| "conn:0".into(), &|_| {
                    let i = next.get();
                    next.set(i + 1);
                    fresh[i].clone()
                })
                .await?;
                let secs = t0.elapsed().as_secs_f64();
                let rate = clients.len() as f64 / secs;
                table(&[
                    ("scenario", format!("connect {conns}, {} in flight", cli.concurrency)),
                    ("tokens minted (not timed)", format!("{conns} in {mint_secs:.2} s")),
                    ("connected + subscribed", format!("{} in {secs:.2} s", clients.len())),
                    ("per second", format!("{rate:.0}")),
                ]);
                drop(clients);
                ("connect", serde_json::json!({"conns": conns, "concurrency": cli.concurrency, "secs": secs, "per_s": rate, "mint_secs": mint_secs}))
            }
            Cmd::Storm { conns, pid, timeout_secs, reconnect_concurrency } => (
                "storm",
                storm(&cli, *conns, *pid, Duration::from_secs(*timeout_secs), *reconnect_concurrency, &tokens).await?,
            ),
            Cmd::Plot { .. } => unreachable!(),
        };
        anyhow::Ok(r)
    })?;
    if let Some(path) = &cli.json {
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let doc = serde_json::json!({
            "scenario": name, "args": args[1..].join(" "), "loadavg": load.trim(),
            "unix_time": now, "result": result,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Kernel TCP memory of the whole host (`/proc/net/sockstat` `mem`, pages), KiB.
fn sockstat_kib() -> u64 {
    std::fs::read_to_string("/proc/net/sockstat")
        .ok()
        .and_then(|s| {
            let l = s.lines().find(|l| l.starts_with("TCP:"))?;
            let mut it = l.split_whitespace();
            while let Some(w) = it.next() {
                if w == "mem" {
                    return it.next()?.parse::<u64>().ok();
                }
            }
            None
        })
        .map(|p| p * 4)
        .unwrap_or(0)
}
