//! The scenarios: what the parent does with its fleet of holders, and the figures it reports.
//!
//! Every scenario holds its clients in holder processes (`fleet.rs`, `hold.rs`), so the
//! publisher, the kill and the clock never share a thread with the readers:
//!
//! - `load` (`fanout`, `topics`): publish through `publish.rs`, then wait until every
//!   delivery arrived (or nothing new for 3 s): deliveries/s (first publish to last frame,
//!   wall clock across processes), gaps, complete subscribers, latency from the merged
//!   histogram;
//! - `idle`: connect, wait 2 s, the router's RSS growth per connection;
//! - `connect`: connections per second from `go` to the last holder's `ready` (tokens minted
//!   before, not timed);
//! - `storm`: SIGKILL one router worker while a probe envelope goes out every `--probe-ms`; the
//!   time until 50 %, 99 % and 99.9 % of the clients are subscribed again (exact, from the
//!   `ok` answers) and receive again (within a probe interval), and stay so; failed
//!   reconnect attempts by kind.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use switchboard::bus::Routed;
use switchboard::config::{BusKind, Config};
use switchboard::wire::EnvelopeRef;

use crate::conn::now_ns;
use crate::fleet::{Fleet, Global};
use crate::protocol::Tick;
use crate::publish::{self, Load};

/// How long holders may take to mint (`armed`) and to connect (`ready`).
fn armed_timeout() -> Duration {
    Duration::from_secs(60)
}

fn ready_timeout(conns: usize) -> Duration {
    Duration::from_secs(60 + conns as u64 / 500)
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

pub fn table(rows: &[(&str, String)]) {
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let vw = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(24);
    println!("+-{}-+-{}-+", "-".repeat(w), "-".repeat(vw));
    for (k, v) in rows {
        println!("| {k:<w$} | {v:>vw$} |");
    }
    println!("+-{}-+-{}-+", "-".repeat(w), "-".repeat(vw));
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

/// Starts a fleet and brings it to `ready`; returns it with the seconds from `go` to the
/// last `ready` as the parent saw it.
async fn start_fleet(
    label: &str,
    g: &Global,
    conns: usize,
    procs: usize,
    tick_ms: u64,
    hold: &[String],
) -> anyhow::Result<(Fleet, f64, Vec<f64>)> {
    let mut fleet = Fleet::spawn(label, g, conns, procs, tick_ms, hold)?;
    fleet.armed(armed_timeout()).await?;
    let go = Instant::now();
    fleet.go()?;
    let ready = fleet.ready(ready_timeout(conns)).await?;
    let last = ready.iter().map(|r| r.1).max().unwrap_or(go);
    let secs = last.duration_since(go).as_secs_f64();
    eprintln!("{conns} clients connected in {secs:.2} s by {} holder(s)", fleet.procs());
    Ok((fleet, secs, ready.into_iter().map(|r| r.0).collect()))
}

/// What `fanout`/`topics` were asked.
pub struct LoadSpec {
    pub topics: usize,
    pub subs: usize,
    pub envelopes: u64,
    pub payload: usize,
    pub batch: usize,
    pub rate: u64,
    pub via: String,
    pub tasks: usize,
    pub journal: Option<std::net::SocketAddr>,
    pub credential: Option<String>,
}

pub async fn load(
    g: &Global,
    cfg: &Config,
    label: &str,
    a: &LoadSpec,
    procs: usize,
    tick_ms: u64,
) -> anyhow::Result<serde_json::Value> {
    let topics = a.topics.max(1);
    let names: Vec<String> = (0..topics).map(|t| format!("bench:{t}")).collect();
    let conns = topics * a.subs;
    let hold = strs(&["--prefix", "bench", "--topics", &topics.to_string(), "--expect", &a.envelopes.to_string()]);
    let (mut fleet, connect_secs, _) = start_fleet(label, g, conns, procs, tick_ms, &hold).await?;
    let expected = conns as u64 * a.envelopes;
    let l = Load {
        names: &names,
        envelopes: a.envelopes,
        payload: a.payload,
        rate: a.rate,
        batch: a.batch,
        tasks: a.tasks,
        journal: a.journal,
        credential: a.credential.clone(),
    };
    let go_at = fleet.go_at.unwrap_or_else(Instant::now);
    let (start, start_ns) = (Instant::now(), now_ns());
    let (published, pub_secs) = fleet.drive(publish::publish_load(cfg, &a.via, &l)).await?;
    // Until everything arrived, or nothing new for 3 s.
    let mut last = (fleet.total().envelopes, Instant::now());
    while !fleet.pump_until(Duration::from_millis(200), |f| f.total().envelopes >= expected).await? {
        let now = fleet.total().envelopes;
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let offset = start.duration_since(go_at).as_secs_f64();
    let tick = fleet.tick_ms as f64 / 1000.0;
    let mut timeline = Vec::new();
    let mut prev = 0;
    for r in &fleet.rounds {
        let t = fleet.round_secs(r.n) - offset;
        if t > -0.25 {
            timeline.push((t, r.envelopes.saturating_sub(prev) as f64 / tick));
        }
        prev = r.envelopes;
    }
    let wall = fleet.go_at.map_or(0.0, |g| g.elapsed().as_secs_f64());
    let (fin, h) = fleet.stop().await?;
    let got = fin.envelopes;
    let secs = (fin.last_ns.saturating_sub(start_ns) as f64 / 1e9).max(1e-9);
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    table(&[
        ("scenario", format!("{label} {topics}x{} via {}", a.subs, a.via)),
        (
            "payload / rate",
            format!("{} B / {}", a.payload, if a.rate == 0 { "max".into() } else { format!("{}/s", a.rate) }),
        ),
        ("holders / connect time", format!("{} / {connect_secs:.2} s", procs.clamp(1, conns))),
        ("published", format!("{published} in {pub_secs:.2} s")),
        ("publishes/s", format!("{:.0}", published as f64 / pub_secs.max(1e-9))),
        ("delivered", format!("{got} of {expected}")),
        ("deliveries/s", format!("{:.0}", got as f64 / secs)),
        ("gaps", fin.gaps.to_string()),
        ("subscribers complete", format!("{} of {conns}", fin.complete)),
        ("latency p50", format!("{:.1} us", us(0.5))),
        ("latency p99", format!("{:.1} us", us(0.99))),
        ("latency p99.9", format!("{:.1} us", us(0.999))),
        ("latency max", format!("{:.1} us", h.max() as f64 / 1000.0)),
        ("holders' CPU", holders_cpu(&fin, wall, procs.clamp(1, conns))),
    ]);
    Ok(serde_json::json!({
        "holders_cpu_secs": fin.cpu_ms as f64 / 1000.0, "holders_wall_secs": wall,
        "topics": topics, "subs": a.subs, "envelopes_per_topic": a.envelopes, "payload": a.payload,
        "rate": a.rate, "via": a.via, "batch": a.batch, "tasks": a.tasks, "procs": procs.clamp(1, conns),
        "connect_secs": connect_secs, "published": published, "publish_secs": pub_secs,
        "publishes_per_s": published as f64 / pub_secs.max(1e-9),
        "expected": expected, "delivered": got, "deliveries_per_s": got as f64 / secs, "gaps": fin.gaps,
        "subscribers": conns, "subscribers_complete": fin.complete,
        "latency": latency_json(&h), "timeline": timeline,
    }))
}

/// "12.3 s in 18.0 s x 2 (34 % busy)": the holders' CPU over the time since `go`.
fn holders_cpu(fin: &Tick, wall: f64, procs: usize) -> String {
    let cpu = fin.cpu_ms as f64 / 1000.0;
    format!("{cpu:.1} s in {wall:.1} s x {procs} ({:.0} % busy)", 100.0 * cpu / (wall * procs as f64).max(1e-9))
}

/// CPU time (user + system) of `pid` and its descendants, ms, per process.
fn tree_cpu_ms(pid: u32, out: &mut BTreeMap<u32, u64>) {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')').map_or("", |r| r.1);
        let f: Vec<u64> = rest.split_whitespace().skip(11).take(2).filter_map(|x| x.parse().ok()).collect();
        if f.len() == 2 {
            out.insert(pid, (f[0] + f[1]) * 1000 / hz);
        }
    }
    for c in children(pid) {
        tree_cpu_ms(c, out);
    }
}

/// CPU the router's processes used since `before` (processes that died since are not counted).
fn router_cpu_since(pid: u32, before: &BTreeMap<u32, u64>) -> f64 {
    let mut now = BTreeMap::new();
    tree_cpu_ms(pid, &mut now);
    now.iter().map(|(p, ms)| ms.saturating_sub(before.get(p).copied().unwrap_or(0))).sum::<u64>() as f64 / 1000.0
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// RSS (KiB) of `pid` and all its descendants.
fn tree_rss_kib(pid: u32) -> u64 {
    rss_kib(pid) + children(pid).into_iter().map(tree_rss_kib).sum::<u64>()
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

/// The router's worker processes under supervisor `pid` (named `sb-worker-N`; the admin
/// child is `sb-admin`).
fn workers(pid: u32) -> Vec<u32> {
    children(pid)
        .into_iter()
        .filter(|c| std::fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|n| n.starts_with("sb-worker")))
        .collect()
}

fn check_pid(pid: u32) -> anyhow::Result<()> {
    if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        bail!("--pid {pid}: no such process");
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

pub async fn idle(
    g: &Global,
    conns: usize,
    topics: usize,
    pid: u32,
    procs: usize,
    tick_ms: u64,
) -> anyhow::Result<serde_json::Value> {
    check_pid(pid)?;
    let before = tree_rss_kib(pid);
    let hold = strs(&["--prefix", "idle", "--topics", &topics.to_string()]);
    let (mut fleet, secs, _) = start_fleet("idle", g, conns, procs, tick_ms, &hold).await?;
    fleet.pump_for(Duration::from_secs(2)).await?;
    let after = tree_rss_kib(pid);
    let per = (after.saturating_sub(before)) as f64 / conns as f64;
    let sock = sockstat_kib();
    // Balance: open fds per worker (connections plus a constant few).
    let per_worker: Vec<usize> = workers(pid)
        .iter()
        .map(|w| std::fs::read_dir(format!("/proc/{w}/fd")).map(|d| d.count()).unwrap_or(0))
        .collect();
    fleet.stop().await?;
    table(&[
        ("scenario", format!("idle {conns} conns, {topics} topics")),
        ("connected in", format!("{secs:.2} s")),
        ("router RSS before", format!("{before} KiB")),
        ("router RSS after", format!("{after} KiB")),
        ("user space per conn", format!("{per:.2} KiB")),
        ("kernel TCP mem (host)", format!("{sock} KiB")),
        ("fds per worker", format!("{per_worker:?}")),
    ]);
    Ok(serde_json::json!({"conns": conns, "topics": topics, "rss_before_kib": before, "connect_secs": secs,
        "rss_after_kib": after, "kib_per_conn": per, "host_tcp_mem_kib": sock, "fds_per_worker": per_worker}))
}

pub async fn connect(g: &Global, conns: usize, procs: usize, tick_ms: u64) -> anyhow::Result<serde_json::Value> {
    // A fresh token per connection (its own `sub`: no token cache hits), minted by each holder
    // before it says `armed`: the signing is the application's cost, not timed.
    let hold = strs(&["--prefix", "conn", "--topics", "1", "--fresh-tokens"]);
    let m0 = Instant::now();
    let mut fleet = Fleet::spawn("connect", g, conns, procs, tick_ms, &hold)?;
    fleet.armed(armed_timeout()).await?;
    let mint_secs = m0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    fleet.go()?;
    let ready = fleet.ready(ready_timeout(conns)).await?;
    let secs = ready.iter().map(|r| r.1).max().unwrap_or(t0).duration_since(t0).as_secs_f64().max(1e-9);
    let rate = conns as f64 / secs;
    let per_holder: Vec<f64> = ready.iter().map(|r| r.0).collect();
    let wall = fleet.go_at.map_or(0.0, |g| g.elapsed().as_secs_f64());
    let (fin, _) = fleet.stop().await?;
    table(&[
        ("scenario", format!("connect {conns}, {} in flight per holder", g.concurrency)),
        ("holders", per_holder.len().to_string()),
        ("tokens minted (not timed)", format!("{conns} in {mint_secs:.2} s")),
        ("connected + subscribed", format!("{conns} in {secs:.2} s")),
        ("per holder (own clock)", per_holder.iter().map(|s| format!("{s:.2} s")).collect::<Vec<_>>().join(" ")),
        ("per second", format!("{rate:.0}")),
        ("holders' CPU (go to stop)", holders_cpu(&fin, wall, per_holder.len())),
    ]);
    Ok(serde_json::json!({"conns": conns, "concurrency": g.concurrency, "procs": per_holder.len(), "secs": secs,
        "per_s": rate, "mint_secs": mint_secs, "holder_secs": per_holder}))
}

/// What `storm` was asked.
pub struct StormSpec {
    pub conns: usize,
    pub pid: u32,
    pub timeout: Duration,
    pub reconnect_concurrency: usize,
    pub jitter_ms: u64,
    pub retry_ms: u64,
    pub retry_cap_ms: u64,
    pub attempt_timeout_ms: u64,
    pub probe_ms: u64,
}

/// Seconds after the kill until `live >= target` for good (from the round after the last one
/// below it); `Some(0.0)` if it never went below, `None` if it was still below at the end.
fn back_for_good(after: &[(f64, u64)], target: u64) -> Option<f64> {
    match after.iter().rposition(|r| r.1 < target) {
        None => Some(0.0),
        Some(i) => after.get(i + 1).map(|r| r.0),
    }
}

pub async fn storm(
    g: &Global,
    cfg: &Config,
    s: &StormSpec,
    procs: usize,
    tick_ms: u64,
) -> anyhow::Result<serde_json::Value> {
    check_pid(s.pid)?;
    if workers(s.pid).len() < 2 {
        bail!("--pid {}: fewer than 2 sb-worker children (the storm needs a multi-worker router's supervisor)", s.pid);
    }
    let conns = s.conns;
    let hold = strs(&[
        "--prefix",
        "storm",
        "--topics",
        "1",
        "--reconnect",
        "--reconnect-concurrency",
        &s.reconnect_concurrency.to_string(),
        "--jitter-ms",
        &s.jitter_ms.to_string(),
        "--retry-ms",
        &s.retry_ms.to_string(),
        "--retry-cap-ms",
        &s.retry_cap_ms.to_string(),
        "--attempt-timeout-ms",
        &s.attempt_timeout_ms.to_string(),
    ]);
    let (mut fleet, connect_secs, _) = start_fleet("storm", g, conns, procs, tick_ms, &hold).await?;
    // A probe envelope every `probe_ms`; a client counts as receiving once one arrived since
    // it (re)subscribed. The probe is the only traffic: every 10 ms to 20,000 clients would
    // be 2 M deliveries/s, most of what the router and the holders can do on this machine,
    // and the recovery would measure that overload rather than the reconnects.
    let via = match cfg.bus.kind {
        BusKind::Local => "local",
        BusKind::Amqp => "amqp",
    };
    let mut publisher = publish::bus_publisher(cfg, via).await?;
    let probe_ms = s.probe_ms.max(1);
    let probe = tokio::task::spawn_local(async move {
        let topic = "storm:0".to_string();
        let mut seq = 1;
        loop {
            let body = publish::payload_with_ts(16);
            let e = EnvelopeRef { topic: &topic, seq, id: "p", ts: 0, kind: "probe", payload: &body };
            // A failed publish (a worker just died, the broker hiccups) is the next probe's job.
            let _ = publisher.publish(&[Routed { topic: topic.clone(), seq, frame: e.encode().into() }]).await;
            seq += 1;
            tokio::time::sleep(Duration::from_millis(probe_ms)).await;
        }
    });
    fleet.pump_for(Duration::from_millis(1500)).await?;
    let live_before = fleet.total().live;
    let all = workers(s.pid);
    let victim = *all.first().context("the supervisor has no worker left")?;
    let mut cpu_at_kill = BTreeMap::new();
    tree_cpu_ms(s.pid, &mut cpu_at_kill);
    let holders_at_kill = fleet.total().cpu_ms;
    let kill_at = Instant::now();
    let kill_off = kill_at.duration_since(fleet.go_at.unwrap_or(kill_at)).as_secs_f64();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), nix::sys::signal::Signal::SIGKILL)
        .with_context(|| format!("SIGKILL worker {victim}"))?;
    eprintln!("killed worker {victim} of {all:?}; {live_before} of {conns} receiving before");
    let target = (conns as f64 * 0.999).ceil() as u64;
    let recovered = fleet
        .pump_until(s.timeout, |f| {
            let after: Vec<&Tick> = f.rounds.iter().filter(|t| f.round_secs(t.n) > kill_off).collect();
            let dipped = after.iter().any(|t| t.live < target);
            let last = after.last();
            dipped && last.is_some_and(|t| t.live >= target && f.round_secs(t.n) - kill_off > 0.2)
        })
        .await?;
    if recovered {
        // A tail for the plot, and to see that it stays so.
        fleet.pump_for(Duration::from_millis(500)).await?;
    }
    probe.abort();
    let since_kill = kill_at.elapsed().as_secs_f64();
    let router_cpu = router_cpu_since(s.pid, &cpu_at_kill);
    let series = |f: fn(&Tick) -> u64| -> Vec<(f64, u64)> {
        fleet.rounds.iter().map(|t| (fleet.round_secs(t.n) - kill_off, f(t))).filter(|p| p.0 > -1.0).collect()
    };
    let (timeline, timeline_sub) = (series(|t| t.live), series(|t| t.subscribed));
    let (fin, _) = fleet.stop().await?;
    let after: Vec<(f64, u64)> = timeline.iter().copied().filter(|p| p.0 > 0.0).collect();
    let after_sub: Vec<(f64, u64)> = timeline_sub.iter().copied().filter(|p| p.0 > 0.0).collect();
    let min_live = after.iter().map(|p| p.1).min().unwrap_or(live_before);
    let at = |p: f64| back_for_good(&after, (conns as f64 * p).ceil() as u64);
    let (t50, t99, t999) = (at(0.5), at(0.99), at(0.999));
    let sub_at = |p: f64| back_for_good(&after_sub, (conns as f64 * p).ceil() as u64);
    let (s50, s99, s999) = (sub_at(0.5), sub_at(0.99), sub_at(0.999));
    let show = |t: Option<f64>| match t {
        Some(0.0) => "never below".to_owned(),
        Some(t) => format!("{t:.2} s"),
        None => format!("not within {} s", s.timeout.as_secs()),
    };
    let kinds: Vec<(String, u64)> = fin.fails.iter().map(|(k, v)| (k.clone(), *v)).collect();
    let labels: Vec<String> = kinds.iter().map(|(k, _)| format!("  failed: {k}")).collect();
    let mut rows = vec![
        ("scenario", format!("storm {conns} clients, {} holder(s)", procs.clamp(1, conns))),
        ("connected in", format!("{connect_secs:.2} s")),
        (
            "reconnect policy",
            format!(
                "probe {} ms; jitter 0-{} ms, backoff {}..{} ms, timeout {} ms, {} in flight",
                probe_ms,
                s.jitter_ms,
                s.retry_ms,
                s.retry_cap_ms,
                s.attempt_timeout_ms,
                if s.reconnect_concurrency == 0 { "unlimited".into() } else { s.reconnect_concurrency.to_string() }
            ),
        ),
        ("receiving before kill", live_before.to_string()),
        ("lowest after kill", min_live.to_string()),
        ("reconnects", fin.reconnects.to_string()),
        ("failed reconnect attempts", fin.failed().to_string()),
    ];
    for ((_, v), l) in kinds.iter().zip(&labels) {
        rows.push((l.as_str(), v.to_string()));
    }
    rows.push(("time to 50 % subscribed", show(s50)));
    rows.push(("time to 99 % subscribed", show(s99)));
    rows.push(("time to 99.9 % subscribed", show(s999)));
    rows.push(("time to 50 % receiving", show(t50)));
    rows.push(("time to 99 % receiving", show(t99)));
    rows.push(("time to 99.9 % receiving", show(t999)));
    let holders_cpu = fin.cpu_ms.saturating_sub(holders_at_kill) as f64 / 1000.0;
    let nprocs = procs.clamp(1, conns);
    rows.push(("after the kill: holders' CPU", format!("{holders_cpu:.1} s in {since_kill:.1} s x {nprocs}")));
    rows.push(("after the kill: router CPU", format!("{router_cpu:.1} s in {since_kill:.1} s (live processes)")));
    table(&rows);
    let fails: BTreeMap<String, u64> = fin.fails.clone();
    Ok(serde_json::json!({
        "conns": conns, "procs": procs.clamp(1, conns), "connect_secs": connect_secs, "via": via,
        "receiving_before": live_before, "min_receiving": min_live,
        "reconnects": fin.reconnects, "failed_attempts": fin.failed(), "failures": fails,
        "recovered_50_secs": t50, "recovered_99_secs": t99, "recovered_secs": t999,
        "subscribed_50_secs": s50, "subscribed_99_secs": s99, "subscribed_999_secs": s999,
        "probe_ms": probe_ms, "jitter_ms": s.jitter_ms, "retry_ms": s.retry_ms, "retry_cap_ms": s.retry_cap_ms, "attempt_timeout_ms": s.attempt_timeout_ms,
        "reconnect_concurrency": s.reconnect_concurrency, "victim": victim, "workers": all,
        "secs_after_kill": since_kill, "holders_cpu_secs_after_kill": holders_cpu,
        "router_cpu_secs_after_kill": router_cpu,
        "timeline": timeline, "timeline_subscribed": timeline_sub,
    }))
}

#[cfg(test)]
mod tests {
    use super::back_for_good;

    #[test]
    fn back_for_good_is_after_the_last_dip() {
        let tl = [(0.01, 10), (0.02, 5), (0.03, 10), (0.04, 8), (0.05, 10)];
        assert_eq!(back_for_good(&tl, 10), Some(0.05));
        assert_eq!(back_for_good(&tl, 5), Some(0.0));
        assert_eq!(back_for_good(&tl[..4], 10), None);
    }
}
