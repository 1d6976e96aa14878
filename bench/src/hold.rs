//! The holder: a child process (`switchboard-bench ... hold`) holding a share of the clients.
//!
//! One process holds at most its open-file limit of sockets (about 20k here), and one
//! current-thread runtime reads at most about one core's worth of frames, so the parent
//! (`fleet.rs`) starts several holders and keeps the publisher, the kill and the clock on its
//! own thread. A holder speaks the line protocol of `protocol.rs`: it mints its tokens, says
//! `armed`, waits for `go`, connects and subscribes connections `first .. first + count`
//! (global indices: source address and topic depend on the global index), says `ready`, then
//! ticks its counters until `stop` (or stdin EOF: the parent died), sends its histogram and
//! exits.
//!
//! With `--reconnect` (the storm) a client whose socket closes reconnects: after a random
//! jitter (`--jitter-ms`), then after each failure an exponential backoff with full jitter
//! (`--retry-ms`, `--retry-cap-ms`), through a per-process gate (`--reconnect-concurrency`),
//! each attempt bounded by `--attempt-timeout-ms` so a stalled SYN or handshake does not
//! hold a client forever.
//! Failed attempts are counted by kind (`conn.rs`).
//!
//! Invariant: `live` counts the connections whose `mine` is nonzero, i.e. that received an
//! envelope since their last (re)subscribe; `mine` is reset when the socket closes.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context;
use switchboard::app::TokenIssuer;

use crate::conn::{self, Counters};
use crate::protocol::{Tick, encode_hist};

/// What the parent asks of one holder (the hidden `hold` subcommand's arguments).
#[derive(clap::Args, Clone, Debug)]
pub struct HoldArgs {
    /// Global index of this holder's first connection.
    #[arg(long)]
    pub first: usize,
    /// Connections to hold.
    #[arg(long)]
    pub count: usize,
    /// Topic of connection i: `<prefix>:<i % topics>`; 0 topics: connect without subscribing.
    #[arg(long, default_value = "bench")]
    pub prefix: String,
    #[arg(long, default_value_t = 1)]
    pub topics: usize,
    /// A fresh token per connection (its own `sub`: no token cache hits), minted before `armed`.
    #[arg(long)]
    pub fresh_tokens: bool,
    /// Envelopes each connection should receive (for the `complete` count); 0: not counted.
    #[arg(long, default_value_t = 0)]
    pub expect: u64,
    #[arg(long, default_value_t = 100)]
    pub tick_ms: u64,
    /// Reconnect (and resubscribe) when a socket closes (storm).
    #[arg(long)]
    pub reconnect: bool,
    /// Reconnect attempts in flight at once in this process; 0 = unlimited.
    #[arg(long, default_value_t = 0)]
    pub reconnect_concurrency: usize,
    /// Random delay before a reconnect, uniform in 0..=jitter ms (as client libraries do).
    #[arg(long, default_value_t = 50)]
    pub jitter_ms: u64,
    /// After the n-th failed attempt in a row, wait uniform in 0..=min(cap, retry * 2^(n-1))
    /// ms: exponential backoff with full jitter, as clients/js/src/backoff.js (there 500 ms
    /// and 30 s). A fixed short pause would make every timed-out client come back at once.
    #[arg(long, default_value_t = 100)]
    pub retry_ms: u64,
    #[arg(long, default_value_t = 3000)]
    pub retry_cap_ms: u64,
    /// Bound on one reconnect attempt: TCP connect, upgrade and subscribe.
    #[arg(long, default_value_t = 10_000)]
    pub attempt_timeout_ms: u64,
    /// Bound on one connection of the initial connect (then the holder fails).
    #[arg(long, default_value_t = 10_000)]
    pub connect_timeout_ms: u64,
}

/// Where the holder connects and how (from the parent's global options).
pub struct Target {
    pub addr: SocketAddr,
    pub sources: u8,
    pub concurrency: usize,
}

/// Splitmix64: cheap, good enough for jitter, no crate (one per holder, seeded by pid and time).
struct Rng(Cell<u64>);

impl Rng {
    fn below(&self, n: u64) -> u64 {
        let mut z = self.0.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        self.0.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n.max(1)
    }
}

/// The holder's shared state.
struct State {
    k: Counters,
    /// Envelopes per held connection since its last (re)subscribe (index: i - first).
    mine: Vec<Cell<u64>>,
    reconnects: Cell<u64>,
    /// Connections open and subscribed now.
    subscribed: Cell<u64>,
    fails: RefCell<BTreeMap<String, u64>>,
    expect: u64,
}

impl State {
    fn tick(&self, n: u64) -> Tick {
        let h = self.k.latency.borrow();
        let (live, complete) = self.mine.iter().fold((0, 0), |(l, c), m| {
            let m = m.get();
            (l + (m > 0) as u64, c + (self.expect > 0 && m == self.expect) as u64)
        });
        Tick {
            n,
            envelopes: self.k.envelopes.get(),
            gaps: self.k.gaps.get(),
            live,
            complete,
            reconnects: self.reconnects.get(),
            subscribed: self.subscribed.get(),
            last_ns: self.k.last_ns.get(),
            p50_us: h.value_at_quantile(0.5) / 1000,
            p99_us: h.value_at_quantile(0.99) / 1000,
            cpu_ms: cpu_ms(),
            fails: self.fails.borrow().clone(),
        }
    }

    fn fail(&self, kind: String) {
        *self.fails.borrow_mut().entry(kind).or_default() += 1;
    }
}

/// CPU time (user + system) of this process so far, ms.
fn cpu_ms() -> u64 {
    // SAFETY: getrusage only writes the struct we pass; RUSAGE_SELF is always valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let ms = |t: libc::timeval| t.tv_sec as u64 * 1000 + t.tv_usec as u64 / 1000;
    ms(ru.ru_utime) + ms(ru.ru_stime)
}

/// Runs a holder to the end. Errors are printed by the caller as `error <text>`.
pub fn run(t: &Target, key: &std::path::Path, h: &HoldArgs) -> anyhow::Result<()> {
    let (soft, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    if h.count as u64 + 32 > soft {
        anyhow::bail!(
            "{} connections need more than the open-file limit of {soft} in one process: use more --procs",
            h.count
        );
    }
    let issuer = TokenIssuer::from_file(key).map_err(|e| anyhow::anyhow!("{e}"))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let ttl = Duration::from_secs(3000);
    let topic_of = |i: usize| if h.topics == 0 { String::new() } else { format!("{}:{}", h.prefix, i % h.topics) };
    // Tokens before `armed`: the signing is the application's cost, not the router's.
    let range = h.first..h.first + h.count;
    let tokens: Vec<String> = if h.fresh_tokens {
        let pid = std::process::id();
        range
            .clone()
            .map(|i| issuer.mint(&format!("c{i}-{now}-{pid}"), &[topic_of(i).as_str()], now, ttl))
            .collect::<Result<_, _>>()?
    } else {
        let mut by_topic: HashMap<String, String> = HashMap::new();
        let mut v = Vec::with_capacity(h.count);
        for i in range.clone() {
            let topic = topic_of(i);
            if !by_topic.contains_key(&topic) {
                let tok =
                    if topic.is_empty() { String::new() } else { issuer.mint("bench", &[topic.as_str()], now, ttl)? };
                by_topic.insert(topic.clone(), tok);
            }
            v.push(by_topic[&topic].clone());
        }
        v
    };

    // Commands from the parent, read on a plain thread (stdin is blocking).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(line.trim().to_owned()).is_err() {
                return;
            }
        }
        // EOF: the parent is gone or done; dropping `tx` tells the runtime.
    });

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        println!("armed");
        match rx.recv().await.as_deref() {
            Some("go") => {}
            _ => return Ok(()), // stopped before starting
        }
        let go = Instant::now();
        let st = Rc::new(State {
            k: Counters::default(),
            mine: (0..h.count).map(|_| Cell::new(0)).collect(),
            reconnects: Cell::new(0),
            subscribed: Cell::new(0),
            fails: RefCell::new(BTreeMap::new()),
            expect: h.expect,
        });
        // Rounds at go + n * tick; a late round is still sent (tokio's default burst), so
        // the parent always sees every n.
        let ticker = {
            let st = st.clone();
            let tick = Duration::from_millis(h.tick_ms.max(1));
            tokio::task::spawn_local(async move {
                let mut iv = tokio::time::interval_at(tokio::time::Instant::from_std(go) + tick, tick);
                let mut n = 0;
                loop {
                    iv.tick().await;
                    n += 1;
                    println!("{}", st.tick(n).to_line());
                }
            })
        };

        // The initial connect: `concurrency` handshakes in flight, in waves.
        let mut clients = Vec::with_capacity(h.count);
        let mut i = h.first;
        let end = h.first + h.count;
        while i < end {
            let upto = (i + t.concurrency.max(1)).min(end);
            let mut tasks = Vec::with_capacity(upto - i);
            for k in i..upto {
                let (topic, token) = (topic_of(k), tokens[k - h.first].clone());
                let (addr, sources, ms) = (t.addr, t.sources, h.connect_timeout_ms);
                tasks.push(tokio::task::spawn_local(async move {
                    conn::open(k, sources, addr, &topic, &token, ms).await.map_err(|e| (k, e))
                }));
            }
            for task in tasks {
                match task.await.context("client task")? {
                    Ok(c) => {
                        clients.push(c);
                        if h.topics > 0 {
                            st.subscribed.set(st.subscribed.get() + 1);
                        }
                    }
                    Err((k, e)) => anyhow::bail!("connection {k} to {}: {e}", t.addr),
                }
            }
            i = upto;
        }
        println!("ready {:.3}", go.elapsed().as_secs_f64());

        let gate = Rc::new(tokio::sync::Semaphore::new(if h.reconnect_concurrency == 0 {
            tokio::sync::Semaphore::MAX_PERMITS
        } else {
            h.reconnect_concurrency
        }));
        let seed = conn::now_ns() ^ ((std::process::id() as u64) << 32);
        let rng = Rc::new(Rng(Cell::new(seed)));
        let mut readers = Vec::with_capacity(clients.len());
        for (j, c) in clients.into_iter().enumerate() {
            let (st, gate, rng, h) = (st.clone(), gate.clone(), rng.clone(), h.clone());
            let (i, topic, token) = (h.first + j, topic_of(h.first + j), tokens[j].clone());
            let (addr, sources) = (t.addr, t.sources);
            readers.push(tokio::task::spawn_local(async move {
                let mut c = Some(c);
                loop {
                    if let Some(mut old) = c.take() {
                        conn::count_frames(&mut old, &st.k, &st.mine[j]).await;
                        // Dropped before reconnecting: holding the dead socket while the new
                        // one opens doubled the fds a holder needs (EMFILE at 20,000 once).
                    }
                    st.mine[j].set(0);
                    if h.topics > 0 {
                        st.subscribed.set(st.subscribed.get() - 1);
                    }
                    if !h.reconnect {
                        return;
                    }
                    // Reconnect until it works: the supervisor respawns the worker, the other
                    // workers take new connections meanwhile.
                    let mut ceiling = h.jitter_ms;
                    c = Some(loop {
                        tokio::time::sleep(Duration::from_millis(rng.below(ceiling + 1))).await;
                        ceiling = if ceiling < h.retry_ms { h.retry_ms } else { ceiling.saturating_mul(2) }
                            .min(h.retry_cap_ms.max(h.retry_ms));
                        let Ok(_permit) = gate.acquire().await else { return };
                        match conn::open(i, sources, addr, &topic, &token, h.attempt_timeout_ms).await {
                            Ok(n) => {
                                st.reconnects.set(st.reconnects.get() + 1);
                                st.subscribed.set(st.subscribed.get() + 1);
                                break n;
                            }
                            Err(e) => st.fail(e.kind()),
                        }
                    });
                }
            }));
        }

        // Until `stop` or EOF.
        while let Some(cmd) = rx.recv().await {
            if cmd == "stop" {
                break;
            }
        }
        ticker.abort();
        for r in &readers {
            r.abort();
        }
        let n = (go.elapsed().as_millis() as u64) / h.tick_ms.max(1);
        println!("{}", st.tick(n).to_line().replacen("tick", "final", 1));
        println!("{}", encode_hist(&st.k.latency.borrow()));
        anyhow::Ok(())
    })
}
