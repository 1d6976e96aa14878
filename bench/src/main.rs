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
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Deliveries per second for TOPICS x SUBS with ENVELOPES per topic.
    Fanout {
        #[arg(long, default_value_t = 1)]
        topics: usize,
        #[arg(long, default_value_t = 1000)]
        subs: usize,
        #[arg(long, default_value_t = 1000)]
        envelopes: u64,
        /// Payload bytes per envelope.
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Envelopes per bus write.
        #[arg(long, default_value_t = 256)]
        batch: usize,
    },
    /// RSS growth of the router per idle, subscribed connection.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
        /// Topics to spread the subscriptions over; 0: connect without subscribing.
        #[arg(long, default_value_t = 100)]
        topics: usize,
        /// The router's pid.
        #[arg(long)]
        pid: u32,
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

/// Counts envelope and gap frames on one connection without decoding or allocating.
async fn count_frames(mut c: Client, envelopes: Rc<Cell<u64>>, gaps: Rc<Cell<u64>>) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
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
                (2, Some([0x97, 0x13])) => envelopes.set(envelopes.get() + 1),
                (2, Some([0x94, 0x15])) => gaps.set(gaps.get() + 1),
                _ => {}
            }
            buf.advance(head + len);
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        match c.stream().read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
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
    raise_fd_limit();
    let cfg = match &cli.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let issuer = TokenIssuer::from_file(&cli.key)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let tokens = move |topic: &str| issuer.mint("bench", &[topic], now, Duration::from_secs(3000)).unwrap_or_default();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        match cli.cmd {
            Cmd::Fanout { topics, subs, envelopes, payload, batch } => {
                let names: Vec<String> = (0..topics).map(|t| format!("bench:{t}")).collect();
                let t0 = Instant::now();
                let clients = connect_all(&cli, topics * subs, |i| names[i % topics].clone(), &tokens).await?;
                eprintln!("{} clients subscribed in {:.1?}", clients.len(), t0.elapsed());
                let got = Rc::new(Cell::new(0u64));
                let gaps = Rc::new(Cell::new(0u64));
                for c in clients {
                    tokio::task::spawn_local(count_frames(c, got.clone(), gaps.clone()));
                }
                let body = vec![0x42u8; payload];
                let mut publisher = switchboard::bus::local::Publisher::new(&cfg.bus.local_dir);
                let expected = (topics * subs) as u64 * envelopes;
                let start = Instant::now();
                let mut pending = Vec::with_capacity(batch);
                for seq in 1..=envelopes {
                    for t in &names {
                        let e = EnvelopeRef { topic: t, seq, id: "b", ts: 0, kind: "bench", payload: &body };
                        pending.push(Routed { topic: t.clone(), seq, frame: e.encode().into() });
                        if pending.len() == batch {
                            publisher.publish_counted(&pending).await?;
                            pending.clear();
                        }
                    }
                }
                publisher.publish_counted(&pending).await?;
                let published = start.elapsed();
                let mut last = (0, Instant::now());
                while got.get() < expected {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    if got.get() != last.0 {
                        last = (got.get(), Instant::now());
                    } else if last.1.elapsed() > Duration::from_secs(3) {
                        break;
                    }
                }
                let secs = last.1.duration_since(start).as_secs_f64().max(1e-9);
                println!(
                    "fanout topics={topics} subs={subs} envelopes/topic={envelopes} payload={payload}B: \
                     {} of {expected} delivered, {} gaps, published in {:.2?}, {:.0} deliveries/s",
                    got.get(),
                    gaps.get(),
                    published,
                    got.get() as f64 / secs
                );
            }
            Cmd::Idle { conns, topics, pid } => {
                let before = rss_kib(pid);
                let t0 = Instant::now();
                let topic_of = |i: usize| if topics == 0 { String::new() } else { format!("idle:{}", i % topics) };
                let clients = connect_all(&cli, conns, topic_of, &tokens).await?;
                eprintln!("{} clients subscribed in {:.1?}", clients.len(), t0.elapsed());
                tokio::time::sleep(Duration::from_secs(2)).await;
                let after = rss_kib(pid);
                println!(
                    "idle conns={conns} topics={topics}: router RSS {before} KiB -> {after} KiB, {:.2} KiB per connection",
                    (after.saturating_sub(before)) as f64 / conns as f64
                );
                drop(clients);
            }
        }
        anyhow::Ok(())
    })
}
