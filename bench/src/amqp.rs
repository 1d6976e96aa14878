//! `switchboard-bench amqp ...`: measures the RabbitMQ bus on this machine.
//!
//! Scenarios (each against the broker in `--url`, default the local one, on a throwaway
//! exchange `sbbench.<pid>.<n>` deleted afterwards):
//!
//! - `publish`: confirmed publish throughput for several batch sizes, one worker consuming;
//! - `consume`: a worker's consume throughput from a full queue (it is held on its first
//!   delivery until everything is queued, then released);
//! - `latency`: publish -> `Ingress::deliver` latency at a moderate rate (p50/p99/max);
//! - `buckets`: many topics, a worker interested in 1 %: envelopes received and the worker's
//!   CPU in fan-out and in bucket routing;
//! - `all`: every scenario above, in order.
//!
//! The worker runs in a child process (this binary, `amqp worker ...`) the way a router worker
//! does: one current-thread runtime, a `LocalSet`, an `Rc` Ingress. Its CPU time is the
//! child's getrusage (worker thread plus lapin's I/O thread). Timestamps are wall-clock
//! nanoseconds in the first 8 bytes of each frame (same machine, same clock).

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::Bytes;
use switchboard::bus::amqp::{Consumer, Publisher, buckets};
use switchboard::bus::{Ingress, Routed};
use switchboard::config::{BusConfig, BusKind, BusRouting};

const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// `--key value` pairs.
struct Args(Vec<(String, String)>);

impl Args {
    fn parse(args: &[String]) -> anyhow::Result<Self> {
        let mut v = Vec::new();
        let mut it = args.iter();
        while let Some(k) = it.next() {
            let Some(key) = k.strip_prefix("--") else { bail!("expected --option, got {k}") };
            let val = it.next().with_context(|| format!("--{key} needs a value"))?;
            v.push((key.to_owned(), val.clone()));
        }
        Ok(Self(v))
    }
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
    fn num<T: std::str::FromStr>(&self, key: &str, default: T) -> anyhow::Result<T> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| anyhow::anyhow!("--{key} {v}: not a number")),
        }
    }
}

pub fn main(args: &[String]) -> anyhow::Result<()> {
    let (cmd, rest) = args.split_first().map(|(c, r)| (c.as_str(), r)).unwrap_or(("help", &[]));
    let a = Args::parse(rest)?;
    match cmd {
        "worker" => worker(&a),
        "publish" => publish_scenario(&a),
        "consume" => consume_scenario(&a),
        "latency" => latency_scenario(&a),
        "buckets" => buckets_scenario(&a),
        "delete-exchange" => delete_exchange_cmd(&a),
        "all" => {
            publish_scenario(&a)?;
            consume_scenario(&a)?;
            latency_scenario(&a)?;
            buckets_scenario(&a)
        }
        _ => {
            eprintln!(
                "usage: switchboard-bench amqp (publish|consume|latency|buckets|all) [--url URL] [--size BYTES]\n\
                 \x20 publish: --n 100000   consume: --n 100000 --prefetch 1024\n\
                 \x20 latency: --rate 1000 --secs 10\n\
                 \x20 buckets: --n 100000 --topics 10000 --interest-every 100 --bucket-counts 1024,16384\n\
                 \x20 delete-exchange --exchange NAME: removes NAME and NAME.buckets (a bench run's router exchange)"
            );
            Ok(())
        }
    }
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// CPU time (user + system) of this process so far.
fn cpu() -> Duration {
    // SAFETY: getrusage only writes the struct we pass; RUSAGE_SELF is always valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn bus_cfg(a: &Args, exchange: &str) -> anyhow::Result<BusConfig> {
    Ok(BusConfig {
        kind: BusKind::Amqp,
        amqp_url: a.get("url").unwrap_or(DEFAULT_URL).to_owned(),
        exchange: exchange.to_owned(),
        prefetch: a.num("prefetch", 1024)?,
        queue_max_length: a.num("max-length", 1_000_000)?,
        routing: if a.get("routing") == Some("buckets") { BusRouting::Buckets } else { BusRouting::Fanout },
        buckets: a.num("buckets", 1024)?,
        ..Default::default()
    })
}

fn frame(size: usize) -> Bytes {
    let mut v = vec![0u8; size.max(8)];
    v[..8].copy_from_slice(&now_ns().to_be_bytes());
    Bytes::from(v)
}

// ---------------------------------------------------------------- the worker (child) side

/// The worker's Ingress: counts, measures latency, optionally holds on the first delivery.
struct Probe {
    received: Cell<u64>,
    routed: Cell<u64>,
    /// Topics with "local subscribers"; None: every topic.
    interest: Option<HashSet<String>>,
    lat_us: RefCell<Vec<u32>>,
    start: Cell<Instant>,
    last: Cell<Instant>,
    hold: RefCell<Option<std::sync::mpsc::Receiver<()>>>,
    cpu_start: Cell<Duration>,
}

impl Ingress for Probe {
    fn deliver(&self, topic: &str, _seq: u64, frame: Bytes) {
        if let Some(rx) = self.hold.borrow_mut().take() {
            // Block the worker thread: the broker keeps the rest queued (prefetch aside).
            let _ = rx.recv();
            self.start.set(Instant::now());
            self.cpu_start.set(cpu());
        }
        self.received.set(self.received.get() + 1);
        if self.interest.as_ref().is_none_or(|i| i.contains(topic)) {
            self.routed.set(self.routed.get() + 1);
        }
        if frame.len() >= 8 {
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&frame[..8]);
            let us = now_ns().saturating_sub(u64::from_be_bytes(ts)) / 1000;
            self.lat_us.borrow_mut().push(us.min(u32::MAX as u64) as u32);
        }
        self.last.set(Instant::now());
    }
    fn bus_state(&self, up: bool) {
        eprintln!("worker: bus {}", if up { "up" } else { "down" });
    }
}

fn worker(a: &Args) -> anyhow::Result<()> {
    let exchange = a.get("exchange").context("--exchange")?.to_owned();
    let cfg = bus_cfg(a, &exchange)?;
    let topics: usize = a.num("topics", 0)?;
    let every: usize = a.num("interest-every", 1)?;
    let interest: Option<HashSet<String>> =
        (topics > 0).then(|| (0..topics).filter(|i| i % every == 0).map(topic_name).collect());
    let (hold_tx, hold_rx) = std::sync::mpsc::channel();
    let probe = Rc::new(Probe {
        received: Cell::new(0),
        routed: Cell::new(0),
        interest,
        lat_us: RefCell::new(Vec::new()),
        start: Cell::new(Instant::now()),
        last: Cell::new(Instant::now()),
        hold: RefCell::new((a.get("hold") == Some("1")).then_some(hold_rx)),
        cpu_start: Cell::new(cpu()),
    });
    // Commands from the parent on stdin; `release` must bypass the (blocked) worker thread.
    let (cmd_tx, mut cmd_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if line == "release" {
                let _ = hold_tx.send(());
            } else if cmd_tx.send(line).is_err() {
                break;
            }
        }
    });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let consumer = Consumer::start(&cfg, 0, probe.clone()).await?;
        if let Some(interest) = &probe.interest
            && cfg.routing == BusRouting::Buckets
        {
            let want: HashSet<u32> = interest.iter().map(|t| buckets::bucket_of(t, cfg.buckets)).collect();
            for t in interest {
                consumer.watch(t);
            }
            while consumer.stats().bound_buckets < want.len() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        println!("ready {}", consumer.stats().bound_buckets);
        while let Some(cmd) = cmd_rx.recv().await {
            let mut words = cmd.split_whitespace();
            match words.next() {
                Some("go") => {
                    probe.start.set(Instant::now());
                    probe.cpu_start.set(cpu());
                    println!("ok");
                }
                Some("stop") => {
                    let expect: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(u64::MAX);
                    // Until everything expected arrived, or nothing new for 2 s.
                    let mut seen = (probe.received.get(), Instant::now());
                    while probe.received.get() < expect && seen.1.elapsed() < Duration::from_secs(2) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        if probe.received.get() != seen.0 {
                            seen = (probe.received.get(), Instant::now());
                        }
                    }
                    let cpu_used = cpu().saturating_sub(probe.cpu_start.get());
                    let secs = probe.last.get().saturating_duration_since(probe.start.get()).as_secs_f64();
                    let mut lat = probe.lat_us.take();
                    lat.sort_unstable();
                    let q =
                        |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied();
                    println!(
                        "result received={} routed={} secs={secs:.3} cpu_ms={} p50_us={} p99_us={} max_us={}",
                        probe.received.get(),
                        probe.routed.get(),
                        cpu_used.as_millis(),
                        q(0.50).unwrap_or(0),
                        q(0.99).unwrap_or(0),
                        lat.last().copied().unwrap_or(0)
                    );
                    break;
                }
                _ => {}
            }
        }
        drop(consumer);
        Ok::<_, anyhow::Error>(())
    })
}

fn topic_name(i: usize) -> String {
    format!("post:{i}")
}

// ---------------------------------------------------------------- the parent side

/// A worker child process and its pipes.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Buckets the worker bound before announcing itself ready.
    bound: String,
}

/// What a worker reported.
#[derive(Debug, Default)]
struct Report {
    received: u64,
    routed: u64,
    secs: f64,
    cpu_ms: u64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
}

impl Worker {
    fn spawn(a: &Args, exchange: &str, extra: &[(&str, String)]) -> anyhow::Result<Self> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["amqp", "worker", "--exchange", exchange]);
        for key in ["url", "prefetch", "routing", "buckets", "max-length"] {
            if let Some(v) = a.get(key) {
                cmd.args([format!("--{key}"), v.to_owned()]);
            }
        }
        for (k, v) in extra {
            cmd.args([format!("--{k}"), v.clone()]);
        }
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("stdout")?);
        let mut w = Self { child, stdin, stdout, bound: String::new() };
        w.bound = w.expect("ready")?.trim_start_matches("ready").trim().to_owned();
        Ok(w)
    }

    fn line(&mut self) -> anyhow::Result<String> {
        let mut l = String::new();
        if self.stdout.read_line(&mut l)? == 0 {
            bail!("the worker exited");
        }
        Ok(l.trim().to_owned())
    }

    fn expect(&mut self, prefix: &str) -> anyhow::Result<String> {
        let l = self.line()?;
        if !l.starts_with(prefix) {
            bail!("worker said {l:?}, expected {prefix}");
        }
        Ok(l)
    }

    fn send(&mut self, cmd: &str) -> anyhow::Result<()> {
        writeln!(self.stdin, "{cmd}")?;
        Ok(self.stdin.flush()?)
    }

    fn go(&mut self) -> anyhow::Result<()> {
        self.send("go")?;
        self.expect("ok").map(|_| ())
    }

    fn stop(mut self, expect: u64) -> anyhow::Result<Report> {
        self.send(&format!("stop {expect}"))?;
        let l = self.expect("result")?;
        let _ = self.child.wait();
        let mut r = Report::default();
        for kv in l.split_whitespace().skip(1) {
            let Some((k, v)) = kv.split_once('=') else { continue };
            match k {
                "received" => r.received = v.parse()?,
                "routed" => r.routed = v.parse()?,
                "secs" => r.secs = v.parse()?,
                "cpu_ms" => r.cpu_ms = v.parse()?,
                "p50_us" => r.p50_us = v.parse()?,
                "p99_us" => r.p99_us = v.parse()?,
                "max_us" => r.max_us = v.parse()?,
                _ => {}
            }
        }
        Ok(r)
    }
}

fn exchange_name(tag: &str) -> String {
    format!("sbbench.{}.{tag}", std::process::id())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// Removes a scenario's exchanges.
async fn delete_exchange(url: &str, name: &str) {
    let Ok(conn) = lapin::Connection::connect(url, Default::default()).await else { return };
    if let Ok(ch) = conn.create_channel().await {
        for x in [name.to_owned(), format!("{name}.buckets")] {
            let _ = ch.exchange_delete(x.as_str().into(), Default::default()).await;
        }
    }
    let _ = conn.close(200, "bye".into()).await;
}

/// `amqp delete-exchange --exchange NAME`: removes a bench router's exchanges (routers declare
/// them durable and never delete them; scripts/bench.sh names one per run).
fn delete_exchange_cmd(a: &Args) -> anyhow::Result<()> {
    let name = a.get("exchange").context("--exchange NAME")?.to_owned();
    if !name.starts_with("sbbench.") {
        bail!("--exchange {name}: only bench exchanges (sbbench.*) are deleted here");
    }
    let url = a.get("url").unwrap_or(DEFAULT_URL).to_owned();
    runtime()?.block_on(async {
        let conn = lapin::Connection::connect(&url, Default::default()).await.context("connecting to RabbitMQ")?;
        let ch = conn.create_channel().await?;
        ch.exchange_delete(name.as_str().into(), Default::default())
            .await
            .with_context(|| format!("deleting {name}"))?;
        // The bucket exchange exists only under routing = "buckets"; RabbitMQ deletes a missing
        // exchange without complaint.
        let _ = ch.exchange_delete(format!("{name}.buckets").as_str().into(), Default::default()).await;
        let _ = conn.close(200, "bye".into()).await;
        println!("deleted exchange {name}");
        anyhow::Ok(())
    })
}

/// Publishes `n` envelopes over `topics` topics in batches; returns (wall time, publisher CPU).
async fn publish_n(
    cfg: &BusConfig,
    n: usize,
    batch: usize,
    topics: usize,
    size: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let mut p = Publisher::connect(cfg).await?;
    let (t0, c0) = (Instant::now(), cpu());
    let mut seq = vec![0u64; topics];
    let mut sent = 0;
    while sent < n {
        let k = batch.min(n - sent);
        let b: Vec<Routed> = (sent..sent + k)
            .map(|i| {
                let t = i % topics;
                seq[t] += 1;
                Routed { topic: topic_name(t), seq: seq[t], frame: frame(size) }
            })
            .collect();
        p.publish(&b).await?;
        sent += k;
    }
    let r = (t0.elapsed(), cpu().saturating_sub(c0));
    p.close().await;
    Ok(r)
}

fn publish_scenario(a: &Args) -> anyhow::Result<()> {
    let n_max: usize = a.num("n", 100_000)?;
    let size: usize = a.num("size", 200)?;
    let url = a.get("url").unwrap_or(DEFAULT_URL).to_owned();
    println!("## publish with confirms ({size}-byte frames, one worker queue bound)");
    println!("| batch | messages | msg/s | publisher CPU us/msg | worker received | worker consume msg/s |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for (batch, n) in [(1, (n_max / 20).max(1)), (10, n_max / 4), (100, n_max), (1000, n_max)] {
        let exchange = exchange_name(&format!("pub{batch}"));
        let cfg = bus_cfg(a, &exchange)?;
        let mut w = Worker::spawn(a, &exchange, &[])?;
        w.go()?;
        let (wall, pcpu) = runtime()?.block_on(publish_n(&cfg, n, batch, 100, size))?;
        let r = w.stop(n as u64)?;
        println!(
            "| {batch} | {n} | {:.0} | {:.1} | {} | {:.0} |",
            n as f64 / wall.as_secs_f64(),
            pcpu.as_secs_f64() * 1e6 / n as f64,
            r.received,
            r.received as f64 / r.secs.max(1e-9)
        );
        runtime()?.block_on(delete_exchange(&url, &exchange));
    }
    Ok(())
}

fn consume_scenario(a: &Args) -> anyhow::Result<()> {
    let n: usize = a.num("n", 100_000)?;
    let size: usize = a.num("size", 200)?;
    let url = a.get("url").unwrap_or(DEFAULT_URL).to_owned();
    let exchange = exchange_name("consume");
    let cfg = bus_cfg(a, &exchange)?;
    let mut w = Worker::spawn(a, &exchange, &[("hold", "1".into())])?;
    runtime()?.block_on(publish_n(&cfg, n, 1000, 100, size))?;
    w.send("release")?;
    let r = w.stop(n as u64)?;
    println!(
        "## consume from a full queue (prefetch {}, acks every {} or 5 ms)",
        cfg.prefetch,
        (cfg.prefetch / 4).clamp(1, 256)
    );
    println!("| messages | received | seconds | msg/s | worker CPU us/msg |");
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {n} | {} | {:.2} | {:.0} | {:.1} |",
        r.received,
        r.secs,
        r.received as f64 / r.secs.max(1e-9),
        r.cpu_ms as f64 * 1000.0 / r.received.max(1) as f64
    );
    runtime()?.block_on(delete_exchange(&url, &exchange));
    Ok(())
}

fn latency_scenario(a: &Args) -> anyhow::Result<()> {
    let secs: u64 = a.num("secs", 10)?;
    let size: usize = a.num("size", 200)?;
    let url = a.get("url").unwrap_or(DEFAULT_URL).to_owned();
    println!("## latency publish -> Ingress::deliver (one message per publish call, confirmed)");
    println!("| rate msg/s | messages | p50 us | p99 us | max us |");
    println!("|---:|---:|---:|---:|---:|");
    let rates: Vec<u64> = match a.get("rate") {
        Some(r) => vec![r.parse()?],
        None => vec![100, 1000],
    };
    for rate in rates {
        let exchange = exchange_name(&format!("lat{rate}"));
        let cfg = bus_cfg(a, &exchange)?;
        let mut w = Worker::spawn(a, &exchange, &[])?;
        w.go()?;
        let n = rate * secs;
        runtime()?.block_on(async {
            let mut p = Publisher::connect(&cfg).await?;
            let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for i in 0..n {
                tick.tick().await;
                p.publish(&[Routed { topic: topic_name(i as usize % 100), seq: i + 1, frame: frame(size) }]).await?;
            }
            p.close().await;
            Ok::<_, anyhow::Error>(())
        })?;
        let r = w.stop(n)?;
        println!("| {rate} | {} | {} | {} | {} |", r.received, r.p50_us, r.p99_us, r.max_us);
        runtime()?.block_on(delete_exchange(&url, &exchange));
    }
    Ok(())
}

fn buckets_scenario(a: &Args) -> anyhow::Result<()> {
    let n: usize = a.num("n", 100_000)?;
    let topics: usize = a.num("topics", 10_000)?;
    let every: usize = a.num("interest-every", 100)?;
    let size: usize = a.num("size", 200)?;
    let url = a.get("url").unwrap_or(DEFAULT_URL).to_owned();
    let counts: Vec<u32> =
        a.get("bucket-counts").unwrap_or("1024,16384").split(',').map(str::parse).collect::<Result<_, _>>()?;
    println!(
        "## bucket routing: {n} envelopes over {topics} topics, the worker has subscribers in every {every}th ({} topics)",
        topics.div_ceil(every)
    );
    println!(
        "| routing | buckets bound | received | routed (subscribed) | worker CPU ms | CPU us/received | publish msg/s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut modes: Vec<Option<u32>> = vec![None];
    modes.extend(counts.into_iter().map(Some));
    for mode in modes {
        let tag = mode.map_or("fanout".to_owned(), |b| format!("b{b}"));
        let exchange = exchange_name(&tag);
        let mut args = Args(a.0.clone());
        if let Some(b) = mode {
            args.0.push(("routing".into(), "buckets".into()));
            args.0.push(("buckets".into(), b.to_string()));
        }
        let cfg = bus_cfg(&args, &exchange)?;
        let mut w =
            Worker::spawn(&args, &exchange, &[("topics", topics.to_string()), ("interest-every", every.to_string())])?;
        let ready = w.bound.clone();
        w.go()?;
        let (wall, _) = runtime()?.block_on(publish_n(&cfg, n, 1000, topics, size))?;
        // What the broker routes to this worker: everything, or the envelopes of topics in a
        // bucket it bound (publish_n sends envelope i to topic i % topics).
        let expected = match mode {
            None => n,
            Some(b) => {
                let bound: HashSet<u32> =
                    (0..topics).step_by(every).map(|t| buckets::bucket_of(&topic_name(t), b)).collect();
                (0..n).filter(|i| bound.contains(&buckets::bucket_of(&topic_name(i % topics), b))).count()
            }
        };
        let r = w.stop(expected as u64)?;
        if r.received != expected as u64 {
            eprintln!("warning: expected {expected} envelopes at the worker, got {}", r.received);
        }
        println!(
            "| {} | {} | {} | {} | {} | {:.1} | {:.0} |",
            mode.map_or("fanout".to_owned(), |b| format!("buckets/{b}")),
            ready,
            r.received,
            r.routed,
            r.cpu_ms,
            r.cpu_ms as f64 * 1000.0 / r.received.max(1) as f64,
            n as f64 / wall.as_secs_f64()
        );
        runtime()?.block_on(delete_exchange(&url, &exchange));
    }
    Ok(())
}
