//! RabbitMQ through the real router: `switchboard router` processes with `bus.kind = "amqp"`
//! on one exchange (two routers on two ports stand for two hosts), publishers from the CLI
//! and from the journal's outbox, a broker-side connection kill, bucket routing.
//!
//! Needs the broker at 127.0.0.1:5672 (`scripts/services.sh rabbitmq`): the tests FAIL, never
//! skip, when it is unreachable. Each test uses its own exchange (`sbtest.e2e.*`, removed by
//! `cargo test --lib sweep_test_exchanges -- --ignored`).

// Test helpers panic on failure: that is how a test fails.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::{Env, Process, connect, next, subscribe_ok};
use switchboard::client::{Client, op};
use switchboard::wire::ServerFrame;

const BROKER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5672);

fn require_broker() {
    if let Err(e) = TcpStream::connect_timeout(&BROKER, Duration::from_secs(2)) {
        panic!("RabbitMQ is not reachable at {BROKER} ({e}): start it with `scripts/services.sh rabbitmq`");
    }
}

fn unique(name: &str) -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("sbtest.e2e.{name}.{}.{t:x}", std::process::id())
}

/// A router config on the amqp bus, exchange `exchange`, two workers.
fn amqp_env(exchange: &str, extra_bus: &str) -> Env {
    let env = Env::new()
        .with("router", "workers = 2")
        .with("bus", "kind = \"amqp\"")
        .with("bus", "amqp_url = \"amqp://guest:guest@127.0.0.1:5672/%2f\"")
        .with("bus", &format!("exchange = \"{exchange}\""));
    if extra_bus.is_empty() { env } else { env.with("bus", extra_bus) }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// The next frame, which must be an envelope: its (topic, seq).
async fn envelope(c: &mut Client) -> (String, u64) {
    let m = next(c).await;
    match m.frame() {
        Some(ServerFrame::Envelope(e)) => (e.topic.to_owned(), e.seq),
        other => panic!("expected an envelope, got {other:?} ({m:?})"),
    }
}

/// Nothing arrives on `c` within `wait`.
async fn silent(c: &mut Client, wait: Duration) {
    if let Ok(m) = tokio::time::timeout(wait, c.next()).await {
        panic!("expected nothing, got {m:?}");
    }
}

/// `switchboard publish` with `env`'s (amqp) config, off the runtime thread.
async fn publish(env: &Env, topic: &str, seq: u64) {
    let (path, topic) = (env.config_path(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["publish", "--config", &path.to_string_lossy()])
            .args(["--topic", &topic, "--kind", "test.event", "--seq", &seq.to_string(), "--payload-json", "{}"])
            .output()
            .unwrap();
        assert!(out.status.success(), "publish failed: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("amqp exchange"), "{out:?}");
    })
    .await
    .unwrap();
}

/// Worker pids of a `switchboard router` (the supervisor's `sb-worker-*` children).
fn worker_pids(router: &Process) -> Vec<u32> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok());
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if ppid == Some(router.pid()) && comm.starts_with("sb-worker-") {
            out.push(pid);
        }
    }
    out
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(cmd).args(args).output().unwrap();
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Closes, from the broker side, every AMQP connection of `router`'s workers: their local
/// ports (from `ss -tnp`) are the broker's peer ports. Checks each is named like its queue
/// (`switchboard.<host>.<worker>.<nonce>`). Returns how many were closed.
fn close_worker_connections(router: &Process) -> usize {
    let pids = worker_pids(router);
    assert!(!pids.is_empty());
    let ss = run("ss", &["-tnpH", "state", "established", "dst", "127.0.0.1:5672"]);
    let ports: Vec<String> = ss
        .lines()
        .filter(|l| pids.iter().any(|p| l.contains(&format!("pid={p},"))))
        .filter_map(|l| l.split_whitespace().nth(2)?.rsplit_once(':').map(|(_, p)| p.to_owned()))
        .collect();
    assert_eq!(ports.len(), pids.len(), "one broker connection per worker: {ss}");
    let list =
        run("rabbitmqctl", &["-q", "list_connections", "--no-table-headers", "pid", "peer_port", "client_properties"]);
    let mut closed = 0;
    for line in list.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 2 && ports.iter().any(|p| p == f[1]) {
            assert!(line.contains("{\"connection_name\",\"switchboard."), "unrecognizable connection: {line}");
            run("rabbitmqctl", &["-q", "close_connection", f[0], "e2e test"]);
            closed += 1;
        }
    }
    closed
}

/// The text exposition of worker `i`'s metrics socket.
fn worker_metrics(env: &Env, i: usize) -> String {
    let path = switchboard::router::exporter::socket_path(&env.path().join("run"), i);
    let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

/// A counter's value in an exposition (0 when absent).
fn value(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn one_publish_reaches_both_hosts_and_topics_stay_isolated() {
    require_broker();
    let exchange = unique("fanout");
    let (a, b) = (amqp_env(&exchange, ""), amqp_env(&exchange, ""));
    let (ra, rb) = (a.router(), b.router());
    runtime().block_on(async {
        let mut subs = vec![];
        for (env, r) in [(&a, &ra), (&b, &rb)] {
            let mut c = connect(r.addr("router")).await;
            subscribe_ok(&mut c, 1, "news", &env.token(&["news", "post:42"], 300)).await;
            subscribe_ok(&mut c, 2, "post:42", &env.token(&["news", "post:42"], 300)).await;
            let mut other = connect(r.addr("router")).await;
            subscribe_ok(&mut other, 1, "sport", &env.token(&["sport"], 300)).await;
            subs.push((c, other));
        }
        // One CLI publish, through host A's config, reaches the subscribers on both hosts.
        publish(&a, "news", 1).await;
        for (c, _) in &mut subs {
            assert_eq!(envelope(c).await, ("news".to_owned(), 1));
        }
        // The journal's outbox on the amqp bus: one append reaches both hosts.
        let cfg = a.config();
        let journal = switchboard::app::Publisher::open(&cfg.journal, &cfg.bus).await.unwrap();
        let appended = journal.publish("post:42", "comment.created", b"{}".to_vec()).await.unwrap();
        for (c, _) in &mut subs {
            assert_eq!(envelope(c).await, ("post:42".to_owned(), appended.seq));
        }
        journal.close(Duration::from_secs(5)).await;
        // Topics stay isolated: the "sport" subscribers got none of that; their first frame
        // is their own topic's.
        publish(&b, "sport", 1).await;
        for (c, other) in &mut subs {
            assert_eq!(envelope(other).await, ("sport".to_owned(), 1));
            silent(c, Duration::from_millis(300)).await;
        }
    });
}

#[test]
fn a_killed_broker_connection_reconnects_resyncs_and_keeps_every_client() {
    require_broker();
    let env = amqp_env(&unique("kill"), "");
    let r = env.router();
    runtime().block_on(async {
        // Enough clients that both workers hold some.
        let mut clients = vec![];
        for _ in 0..8 {
            let mut c = connect(r.addr("router")).await;
            subscribe_ok(&mut c, 1, "news", &env.token(&["news", "post:1"], 300)).await;
            subscribe_ok(&mut c, 2, "post:1", &env.token(&["news", "post:1"], 300)).await;
            clients.push(c);
        }
        publish(&env, "news", 1).await;
        for c in &mut clients {
            assert_eq!(envelope(c).await, ("news".to_owned(), 1));
        }
        let closed = close_worker_connections(&r);
        assert_eq!(closed, 2, "both workers' broker connections");
        // Every client hears resync for its topics once its worker is back on the bus.
        for c in &mut clients {
            let m = next(c).await;
            match m.frame() {
                Some(ServerFrame::Resync { mut topics }) => {
                    topics.sort();
                    assert_eq!(topics, ["news", "post:1"]);
                }
                other => panic!("expected resync, got {other:?} ({m:?})"),
            }
        }
        // Deliveries resume, on the same connections.
        publish(&env, "news", 2).await;
        for c in &mut clients {
            let m = next(c).await;
            assert_ne!(m.op, op::CLOSE, "a client was closed");
            assert!(matches!(m.frame(), Some(ServerFrame::Envelope(e)) if e.seq == 2), "{m:?}");
        }
        let reconnects: f64 = (0..2).map(|i| value(&worker_metrics(&env, i), "switchboard_bus_reconnects_total")).sum();
        assert_eq!(reconnects, 2.0);
    });
}

#[test]
fn bucket_routing_delivers_only_what_a_worker_has_subscribers_for() {
    require_broker();
    let env = amqp_env(&unique("buckets"), "routing = \"buckets\"");
    let r = env.router();
    runtime().block_on(async {
        let mut c = connect(r.addr("router")).await;
        subscribe_ok(&mut c, 1, "news", &env.token(&["news"], 300)).await;
        // The binding is made asynchronously after the subscribe: publish until it lands.
        let mut seq = 0;
        let got = loop {
            seq += 1;
            assert!(seq < 50, "no envelope reached the subscriber");
            publish(&env, "news", seq).await;
            if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(200), c.next()).await {
                break m;
            }
        };
        assert!(matches!(got.frame(), Some(ServerFrame::Envelope(e)) if e.topic == "news"), "{got:?}");
        let before: Vec<String> = (0..2).map(|i| worker_metrics(&env, i)).collect();
        // Topics nobody here subscribes to never reach a worker.
        for (i, t) in ["sport", "weather", "post:9"].iter().enumerate() {
            publish(&env, t, i as u64 + 1).await;
        }
        seq += 1;
        publish(&env, "news", seq).await;
        // Drain until the last news envelope (earlier retries may still be in flight).
        loop {
            let (topic, s) = envelope(&mut c).await;
            assert_eq!(topic, "news");
            if s == seq {
                break;
            }
        }
        let after: Vec<String> = (0..2).map(|i| worker_metrics(&env, i)).collect();
        let delta = |name: &str| -> f64 { (0..2).map(|i| value(&after[i], name) - value(&before[i], name)).sum() };
        assert_eq!(delta("switchboard_envelopes_unrouted_total"), 0.0, "an unwatched topic reached a worker");
        assert!(delta("switchboard_envelopes_received_total") >= 1.0);
        let bound: f64 = (0..2).map(|i| value(&after[i], "switchboard_bus_buckets_bound")).sum();
        assert_eq!(bound, 1.0, "one bucket bound, by the worker with the subscriber");
    });
}
