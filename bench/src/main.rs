//! `switchboard-bench`: a load tool for the router, on loopback.
//!
//! Scenarios (`scenario.rs`): `fanout` and `topics` (deliveries/s, drops, end-to-end
//! latency; publishing through the local bus, RabbitMQ, the Rust Publisher or the journal's
//! HTTP API: `publish.rs`), `idle` (RSS per connection), `connect` (connections per second)
//! and `storm` (SIGKILL a worker, time until the clients receive again); `plot` draws SVGs
//! from their JSON (`plot.rs`); `amqp` and `journal` measure the bus and the journal alone
//! (`amqp.rs`, `journal.rs`).
//!
//! The clients live in holder processes, children of this binary started by the parent
//! (`fleet.rs` and `hold.rs`, speaking `protocol.rs`): many connections per process on one
//! current-thread runtime each (`conn.rs`), several processes when one process's open-file
//! limit is not enough, spread over source addresses 127.0.0.2.. Everything stays on this
//! machine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod amqp;
mod conn;
mod fleet;
mod hold;
mod journal;
mod plot;
mod protocol;
mod publish;
mod scenario;

use anyhow::Context;
use clap::{Parser, Subcommand};
use switchboard::config::Config;

#[derive(Parser)]
#[command(about = "Load tool for the switchboard router (loopback only)")]
struct Cli {
    /// Router address (`ready router=...`).
    #[arg(long, global = true, default_value = "127.0.0.1:8000")]
    addr: SocketAddr,
    /// The router's config file (its [bus], and [journal] for --via publisher/http).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Secret key file to mint subscriber tokens with.
    #[arg(long, global = true, default_value = "keys/bench.secret")]
    key: PathBuf,
    /// How many source addresses (127.0.0.2 upwards) to spread clients over.
    #[arg(long, global = true, default_value_t = 16, value_parser = clap::value_parser!(u8).range(1..=250))]
    sources: u8,
    /// Handshakes in flight at once per holder process while connecting.
    #[arg(long, global = true, default_value_t = 256)]
    concurrency: usize,
    /// Holder processes for the clients; 0 = 1, or for `storm` ceil(conns / 15000) (one
    /// process holds at most its open-file limit of sockets).
    #[arg(long, global = true, default_value_t = 0)]
    procs: usize,
    /// Holders' counter interval (progress, timeline, storm resolution); 0 = 100 ms, storm 10 ms.
    #[arg(long, global = true, default_value_t = 0)]
    tick_ms: u64,
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
    /// Envelopes per bus write, journal transaction (publisher) or HTTP request (http);
    /// default 256, for http 1.
    #[arg(long)]
    batch: Option<usize>,
    /// Publishes per second over all topics; 0 = as fast as accepted.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// How envelopes reach the router: `local` (the local bus), `amqp` (RabbitMQ, to the
    /// exchange in the config's [bus]), `publisher` (the Rust `app::Publisher`: journal
    /// append, then the outbox onto the bus) or `http` (POST /v1/envelopes to a running
    /// journal, whose outbox publishes to the bus).
    #[arg(long, default_value = "local", value_parser = ["local", "amqp", "publisher", "http"])]
    via: String,
    /// Concurrent publisher tasks (`--via publisher`).
    #[arg(long, default_value_t = 64)]
    tasks: usize,
    /// Keep-alive HTTP connections to the journal (`--via http`).
    #[arg(long, default_value_t = 32)]
    conns: usize,
    /// The journal's HTTP address (`--via http`); default the config's [journal] listen.
    #[arg(long)]
    journal: Option<SocketAddr>,
    /// Application credential for `--via http`; default the config's first [journal] app_credentials.
    #[arg(long)]
    credential: Option<String>,
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
    /// N clients on a multi-worker router, SIGKILL one worker, time until 50/99/99.9 % receive again.
    Storm {
        #[arg(long, default_value_t = 20_000)]
        conns: usize,
        /// The supervisor's pid (one of its sb-worker children is killed).
        #[arg(long)]
        pid: u32,
        #[arg(long, default_value_t = 15)]
        timeout_secs: u64,
        /// Reconnects in flight at once per holder process; 0 = unlimited.
        #[arg(long, default_value_t = 0)]
        reconnect_concurrency: usize,
        /// Random delay before each reconnect attempt, uniform in 0..=JITTER ms.
        #[arg(long, default_value_t = 50)]
        jitter_ms: u64,
        /// Backoff after failed attempts: uniform in 0..=min(cap, RETRY * 2^(n-1)) ms after the
        /// n-th failure in a row (full jitter, as clients/js/src/backoff.js).
        #[arg(long, default_value_t = 100)]
        retry_ms: u64,
        #[arg(long, default_value_t = 3000)]
        retry_cap_ms: u64,
        /// Bound on one reconnect attempt (TCP connect, upgrade, subscribe); 10 s as the JS
        /// client's `connectTimeoutMs`. A short bound turns a storm into a retry storm: the
        /// abandoned handshakes stay in the accept queue and are served for nobody.
        #[arg(long, default_value_t = 10_000)]
        attempt_timeout_ms: u64,
        /// A probe envelope to every client this often: the resolution of "receiving again".
        #[arg(long, default_value_t = 100)]
        probe_ms: u64,
    },
    /// Draws plots (SVG) from JSON results into a directory.
    Plot {
        #[arg(long, default_value = "bench/out")]
        out: PathBuf,
        files: Vec<PathBuf>,
    },
    /// (internal) A holder process: see bench/src/hold.rs.
    #[command(hide = true)]
    Hold(hold::HoldArgs),
}

fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// One line, whatever the cause chain.
fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let r = match args.get(1).map(String::as_str) {
        // The RabbitMQ and journal measurements take their own arguments.
        Some("amqp") => amqp::main(&args[2..]),
        Some("journal") => journal::main(&args[2..]).map_err(|e| anyhow::anyhow!("{e}")),
        _ => run(&args),
    };
    if let Err(e) = r {
        eprintln!("switchboard-bench: {}", one_line(&e));
        std::process::exit(1);
    }
}

fn run(args: &[String]) -> anyhow::Result<()> {
    let cli = Cli::parse();
    raise_fd_limit();
    let g = fleet::Global { addr: cli.addr, key: cli.key.clone(), sources: cli.sources, concurrency: cli.concurrency };
    match &cli.cmd {
        Cmd::Plot { out, files } => return plot::plot(out, files),
        Cmd::Hold(h) => {
            let t = hold::Target { addr: cli.addr, sources: cli.sources, concurrency: cli.concurrency };
            // The parent reads stdout only: the error goes there, as the protocol's last line.
            if let Err(e) = hold::run(&t, &cli.key, h) {
                println!("error {}", one_line(&e));
                std::process::exit(1);
            }
            return Ok(());
        }
        _ => {}
    }
    let cfg = match &cli.config {
        Some(p) => Config::load(p).with_context(|| format!("config {}", p.display()))?,
        None => Config::default(),
    };
    // Fail here, once, rather than in every holder.
    // (The key error names the file and the cause already.)
    switchboard::app::TokenIssuer::from_file(&cli.key).map_err(|e| anyhow::anyhow!("{e}"))?;
    let procs = |auto: usize| if cli.procs == 0 { auto } else { cli.procs };
    let tick = |auto: u64| if cli.tick_ms == 0 { auto } else { cli.tick_ms };
    let spec = |a: &LoadArgs, topics: usize| scenario::LoadSpec {
        topics,
        subs: a.subs,
        envelopes: a.envelopes,
        payload: a.payload,
        batch: a.batch.unwrap_or(if a.via == "http" { 1 } else { 256 }),
        rate: a.rate,
        via: a.via.clone(),
        tasks: if a.via == "http" { a.conns } else { a.tasks },
        journal: a.journal,
        credential: a.credential.clone(),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    let (name, result) = local.block_on(&rt, async {
        let r = match &cli.cmd {
            Cmd::Fanout(a) => ("fanout", scenario::load(&g, &cfg, "fanout", &spec(a, 1), procs(1), tick(100)).await?),
            Cmd::Topics(a) => {
                ("topics", scenario::load(&g, &cfg, "topics", &spec(a, a.topics), procs(1), tick(100)).await?)
            }
            Cmd::Idle { conns, topics, pid } => {
                ("idle", scenario::idle(&g, *conns, *topics, *pid, procs(1), tick(100)).await?)
            }
            Cmd::Connect { conns } => ("connect", scenario::connect(&g, *conns, procs(1), tick(100)).await?),
            Cmd::Storm {
                conns,
                pid,
                timeout_secs,
                reconnect_concurrency,
                jitter_ms,
                retry_ms,
                retry_cap_ms,
                attempt_timeout_ms,
                probe_ms,
            } => {
                let s = scenario::StormSpec {
                    conns: *conns,
                    pid: *pid,
                    timeout: Duration::from_secs(*timeout_secs),
                    reconnect_concurrency: *reconnect_concurrency,
                    jitter_ms: *jitter_ms,
                    retry_ms: *retry_ms,
                    retry_cap_ms: *retry_cap_ms,
                    attempt_timeout_ms: *attempt_timeout_ms,
                    probe_ms: *probe_ms,
                };
                ("storm", scenario::storm(&g, &cfg, &s, procs(conns.div_ceil(15_000)), tick(10)).await?)
            }
            Cmd::Plot { .. } | Cmd::Hold(_) => unreachable!("handled above"),
        };
        anyhow::Ok(r)
    })?;
    if let Some(path) = &cli.json {
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        let doc = serde_json::json!({
            "scenario": name, "args": args[1..].join(" "), "loadavg": load.trim(),
            "unix_time": now, "result": result,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?).with_context(|| format!("{}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
