//! Chaos: verifying clients over several topics on a 2-worker router with RabbitMQ and the
//! PostgreSQL journal (a fresh database per run), a steady publish load through the journal,
//! and faults while it runs. Per fault it prints envelopes published, delivered live,
//! recovered by reconciliation, lost, duplicated and the time to recover, and asserts lost ==
//! 0 and duplicated == 0.
//!
//! `chaos_bounded` runs in `make test` (about a minute; needs `scripts/services.sh rabbitmq
//! postgres`): worker SIGKILL, broker-side connection close, router SIGKILL + restart, slow
//! consumers, drain (SIGTERM) + restart with a reconnect storm. `chaos_full` (`make chaos`,
//! ignored otherwise, runs alone) adds a RabbitMQ restart (stop_app/start_app) and a
//! PostgreSQL restart while publishing, with more clients and longer phases.
//!
//! "Time to recover": from the end of the fault action until every client has delivered, per
//! topic, the first envelope the journal acknowledged after it (so it includes reconnecting,
//! resubscribing and reconciling). Payloads are 256 bytes, 12 KiB while the slow consumers
//! are paused, so that they overflow their outbound queue (32 KiB) and the kernel buffers and
//! get `gap` frames.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::{Env, Process};
use switchboard::client::verifying::{self, Options, Verifying};

const CREDENTIAL: &str = "chaos-credential-0123456789";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn psql(sql: &str) {
    run("psql", &["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qtAc", sql]);
}

/// Live children of `parent`: (pid, comm).
fn children_of(parent: u32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let mut f = rest.split_whitespace();
        let (state, ppid) = (f.next(), f.next().and_then(|p| p.parse::<u32>().ok()));
        if ppid == Some(parent) && state != Some("Z") {
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            out.push((pid, name.trim().to_owned()));
        }
    }
    out
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(')').map(|(_, r)| !r.trim_start().starts_with('Z')).unwrap_or(false))
        .unwrap_or(false)
}

struct World {
    env: Env,
    db: String,
    router_addr: SocketAddr,
    journal_addr: SocketAddr,
    router: Option<Process>,
    _journal: Process,
    topics: Vec<String>,
    token: String,
}

impl World {
    fn start(n_topics: usize) -> Self {
        let env = Env::new();
        let db = format!("switchboard_chaos_{}", std::process::id());
        psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
        psql(&format!("CREATE DATABASE {db}"));
        let (rport, jport) = (free_port(), free_port());
        let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let text = format!(
            "[router]\nlisten = \"127.0.0.1:{rport}\"\nworkers = 2\nruntime_dir = \"run\"\ndrain_window_secs = 1\n\
             shutdown_grace_secs = 3\noutbound_queue_bytes = 32768\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n[tokens]\nkey_files = [\"keys\"]\n\
             [bus]\nkind = \"amqp\"\nexchange = \"switchboard.chaos.{nonce}\"\nheartbeat_secs = 2\nlocal_dir = \"run/bus\"\n\
             [journal]\nlisten = \"127.0.0.1:{jport}\"\nstore = \"postgres\"\n\
             postgres_url = \"host=127.0.0.1 user=postgres dbname={db}\"\nstore_timeout_secs = 2\n\
             app_credentials = [{CREDENTIAL:?}]\noutbox_poll_ms = 50\n"
        );
        std::fs::write(env.config_path(), text).unwrap();
        let journal = Process::start(&["journal", "--config", &env.config_path().to_string_lossy()], env.path());
        let router = env.router();
        let topics: Vec<String> = (0..n_topics).map(|i| format!("chaos:{i}")).collect();
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        let token = env.token(&refs, 3600);
        Self {
            router_addr: router.addr("router"),
            journal_addr: journal.addr("journal"),
            env,
            db,
            router: Some(router),
            _journal: journal,
            topics,
            token,
        }
    }

    fn workers(&self) -> Vec<(i32, String)> {
        let pid = self.router.as_ref().unwrap().pid();
        children_of(pid).into_iter().filter(|(_, n)| n.starts_with("sb-worker")).collect()
    }

    /// Stops the router with `sig`, waits for every worker to be gone, starts it again.
    fn restart_router(&mut self, sig: Signal) {
        let workers: Vec<i32> = self.workers().into_iter().map(|(p, _)| p).collect();
        let mut r = self.router.take().unwrap();
        r.signal_and_wait(sig, Duration::from_secs(15));
        drop(r);
        let end = Instant::now() + Duration::from_secs(15);
        while workers.iter().any(|p| alive(*p)) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        let r = self.env.router();
        assert_eq!(r.addr("router"), self.router_addr);
        self.router = Some(r);
    }

    /// Closes, from the broker side, the AMQP connections of this router's workers.
    fn close_worker_amqp_connections(&self) -> usize {
        let pids: Vec<String> = self.workers().into_iter().map(|(p, _)| format!("pid={p},")).collect();
        let ss = run("ss", &["-tnpH", "state", "established", "( dport = :5672 )"]);
        let ports: Vec<String> = ss
            .lines()
            .filter(|l| pids.iter().any(|p| l.contains(p.as_str())))
            .filter_map(|l| l.split_whitespace().nth(2).and_then(|a| a.rsplit_once(':')).map(|(_, p)| p.to_owned()))
            .collect();
        let list = run("rabbitmqctl", &["list_connections", "--no-table-headers", "-q", "pid", "peer_port"]);
        let mut n = 0;
        for l in list.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() == 2 && ports.iter().any(|p| p == f[1]) {
                run("rabbitmqctl", &["close_connection", f[0], "chaos"]);
                n += 1;
            }
        }
        n
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.router.take();
        let _ = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qtAc"])
            .arg(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db))
            .status();
    }
}

/// Acknowledged seqs per topic, shared with the publisher task.
type Acked = Arc<Mutex<BTreeMap<String, Vec<u64>>>>;

/// Publishes one envelope per topic per tick (a JSON batch) until `stop`; retries until acked.
async fn publisher(
    journal: SocketAddr,
    topics: Vec<String>,
    tick: Duration,
    acked: Acked,
    stop: Arc<AtomicBool>,
    pad: Arc<AtomicUsize>,
) {
    let auth = format!("Bearer {CREDENTIAL}");
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let pad = "x".repeat(pad.load(Ordering::Relaxed));
        let body = format!(
            "[{}]",
            topics
                .iter()
                .map(|t| format!(r#"{{"topic":"{t}","kind":"chaos","payload":"{n}{pad}"}}"#))
                .collect::<Vec<_>>()
                .join(",")
        );
        loop {
            let r = verifying::http(
                journal,
                "POST",
                "/v1/envelopes",
                &[("Authorization", &auth), ("Content-Type", "application/json")],
                body.as_bytes(),
            )
            .await;
            if let Ok((201, b)) = r {
                let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
                let mut a = acked.lock().unwrap();
                for e in v.as_array().unwrap() {
                    a.entry(e["topic"].as_str().unwrap().to_owned()).or_default().push(e["seq"].as_u64().unwrap());
                }
                break;
            }
            if stop.load(Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(tick).await;
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    KillWorker,
    CloseAmqp,
    KillRouter,
    SlowConsumers,
    DrainRestart,
    RestartRabbit,
    RestartPostgres,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::None => "baseline (no fault)",
            Fault::KillWorker => "SIGKILL one router worker",
            Fault::CloseAmqp => "rabbitmqctl close_connection (workers)",
            Fault::KillRouter => "SIGKILL whole router + restart",
            Fault::SlowConsumers => "slow consumers (stop reading 6 s)",
            Fault::DrainRestart => "SIGTERM drain + restart (reconnect storm)",
            Fault::RestartRabbit => "RabbitMQ stop_app/start_app",
            Fault::RestartPostgres => "PostgreSQL restart while publishing",
        }
    }
}

struct Row {
    fault: &'static str,
    published: u64,
    live: u64,
    recovered: u64,
    lost: u64,
    duplicated: u64,
    recover: Duration,
}

fn sums(clients: &[(Verifying, Vec<String>)]) -> (u64, u64) {
    clients.iter().fold((0, 0), |(l, r), (c, _)| {
        (l + c.stats.live.load(Ordering::Relaxed), r + c.stats.recovered.load(Ordering::Relaxed))
    })
}

fn heads(acked: &Acked) -> HashMap<String, u64> {
    acked.lock().unwrap().iter().map(|(t, v)| (t.clone(), v.last().copied().unwrap_or(0))).collect()
}

fn published(acked: &Acked) -> u64 {
    acked.lock().unwrap().values().map(|v| v.len() as u64).sum()
}

async fn journal_now(w: &World) -> BTreeMap<String, Vec<u64>> {
    let mut j = BTreeMap::new();
    for t in &w.topics {
        j.insert(t.clone(), verifying::journal_seqs(w.journal_addr, t, &w.token).await.unwrap());
    }
    j
}

/// Lost and duplicated, over all clients, counting journal seqs up to `upto` per topic.
fn lost_dups(
    clients: &[(Verifying, Vec<String>)],
    journal: &BTreeMap<String, Vec<u64>>,
    upto: &HashMap<String, u64>,
) -> (u64, u64) {
    let (mut lost, mut dups) = (0, 0);
    for (c, topics) in clients {
        let mine: BTreeMap<String, Vec<u64>> = topics
            .iter()
            .map(|t| {
                let cap = upto.get(t).copied().unwrap_or(0);
                (t.clone(), journal[t].iter().copied().filter(|s| *s <= cap).collect())
            })
            .collect();
        let v = verifying::verify(&c.record.lock().unwrap(), &mine);
        lost += v.lost;
        dups += v.duplicated + v.out_of_order;
    }
    (lost, dups)
}

async fn chaos(faults: &[Fault], n_clients: usize, n_slow: usize, n_topics: usize, phase: Duration) {
    let mut w = tokio::task::block_in_place(|| World::start(n_topics));
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let pad = Arc::new(AtomicUsize::new(256));
    let pubtask = tokio::spawn(publisher(
        w.journal_addr,
        w.topics.clone(),
        Duration::from_millis(20),
        acked.clone(),
        stop.clone(),
        pad.clone(),
    ));
    // Client i subscribes to 2 or 3 topics, spread over all of them.
    let mut clients: Vec<(Verifying, Vec<String>)> = (0..n_clients + n_slow)
        .map(|i| {
            let topics: Vec<String> = (0..2 + i % 2).map(|k| w.topics[(i + k) % n_topics].clone()).collect();
            let c = Verifying::spawn(Options {
                router: w.router_addr,
                path: "/ws".into(),
                journal: w.journal_addr,
                token: w.token.clone(),
                topics: topics.clone(),
            });
            (c, topics)
        })
        .collect();
    let slow: Vec<usize> = (n_clients..n_clients + n_slow).collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut rows = Vec::new();
    let (mut prev_lost, mut prev_dups) = (0, 0);
    for &f in faults {
        let p0 = published(&acked);
        let (l0, r0) = sums(&clients);
        tokio::time::sleep(phase / 3).await;
        match f {
            Fault::None => {}
            Fault::KillWorker => {
                let (pid, _) = w.workers()[0].clone();
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
            }
            Fault::CloseAmqp => {
                let n = tokio::task::block_in_place(|| w.close_worker_amqp_connections());
                assert!(n >= 1, "found no AMQP connection of this router's workers");
            }
            Fault::KillRouter => tokio::task::block_in_place(|| w.restart_router(Signal::SIGKILL)),
            Fault::DrainRestart => tokio::task::block_in_place(|| w.restart_router(Signal::SIGTERM)),
            Fault::SlowConsumers => {
                for &i in &slow {
                    clients[i].0.paused.store(true, Ordering::SeqCst);
                }
                pad.store(12 * 1024, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(6)).await;
                pad.store(256, Ordering::Relaxed);
                for &i in &slow {
                    clients[i].0.paused.store(false, Ordering::SeqCst);
                }
            }
            Fault::RestartRabbit => tokio::task::block_in_place(|| {
                run("rabbitmqctl", &["stop_app"]);
                std::thread::sleep(Duration::from_secs(3));
                run("rabbitmqctl", &["start_app"]);
            }),
            Fault::RestartPostgres => tokio::task::block_in_place(|| {
                let v = run("sh", &["-c", "ls /etc/postgresql | sort -V | tail -n1"]);
                run("pg_ctlcluster", &["--skip-systemctl-redirect", v.trim(), "main", "restart"]);
            }),
        }
        let t0 = Instant::now();
        // The target: the first batch acknowledged after the fault, on every topic.
        let before = heads(&acked);
        let mut target = before.clone();
        while target.iter().any(|(t, s)| *s <= before[t]) {
            assert!(t0.elapsed() < Duration::from_secs(60), "{}: publishing stalled", f.name());
            tokio::time::sleep(Duration::from_millis(5)).await;
            target = heads(&acked);
        }
        let deadline = t0 + Duration::from_secs(90);
        loop {
            let done =
                clients.iter().all(|(c, ts)| ts.iter().all(|t| c.last(t) >= target.get(t).copied().unwrap_or(0)));
            if done {
                break;
            }
            assert!(Instant::now() < deadline, "{}: clients did not recover in 90 s", f.name());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let recover = t0.elapsed();
        tokio::time::sleep(phase * 2 / 3).await;
        // Lost/duplicated so far: journal seqs up to what every client must have by now.
        let upto = heads(&acked);
        let end = Instant::now() + Duration::from_secs(60);
        while !clients.iter().all(|(c, ts)| ts.iter().all(|t| c.last(t) >= upto.get(t).copied().unwrap_or(0)))
            && Instant::now() < end
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let journal = journal_now(&w).await;
        let (lost, dups) = lost_dups(&clients, &journal, &upto);
        let (l1, r1) = sums(&clients);
        rows.push(Row {
            fault: f.name(),
            published: published(&acked) - p0,
            live: l1 - l0,
            recovered: r1 - r0,
            lost: lost - prev_lost,
            duplicated: dups - prev_dups,
            recover,
        });
        (prev_lost, prev_dups) = (lost, dups);
        eprintln!("chaos: {} done in {recover:?}", f.name());
    }

    stop.store(true, Ordering::SeqCst);
    pubtask.await.unwrap();
    // The end: every client reconciles once more and is checked against the whole journal.
    let journal = journal_now(&w).await;
    let acked = acked.lock().unwrap().clone();
    for (t, seqs) in &acked {
        let have: std::collections::HashSet<u64> = journal[t].iter().copied().collect();
        assert!(seqs.iter().all(|s| have.contains(s)), "an acknowledged envelope of {t} is missing from the journal");
    }
    let total = |f: fn(&verifying::Stats) -> u64| clients.iter().map(|(c, _)| f(&c.stats)).sum::<u64>();
    let (gaps, resyncs, connects) = (
        total(|s| s.gaps.load(Ordering::Relaxed)),
        total(|s| s.resyncs.load(Ordering::Relaxed)),
        total(|s| s.connects.load(Ordering::Relaxed)),
    );
    println!("\nclients saw {gaps} gap frames, {resyncs} resync frames, made {connects} connections");
    let (mut lost, mut dups, mut expected) = (0, 0, 0);
    for (c, topics) in clients.drain(..) {
        let rec = c.finish().await.unwrap();
        let mine: BTreeMap<String, Vec<u64>> = topics.iter().map(|t| (t.clone(), journal[t].clone())).collect();
        let v = verifying::verify(&rec.lock().unwrap(), &mine);
        lost += v.lost;
        dups += v.duplicated + v.out_of_order;
        expected += v.expected;
    }
    println!("\n| fault | published | delivered live | recovered | lost | duplicated | time to recover |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.2} s |",
            r.fault,
            r.published,
            r.live,
            r.recovered,
            r.lost,
            r.duplicated,
            r.recover.as_secs_f64()
        );
    }
    println!(
        "\nfinal check: {} clients ({} slow), {} topics, {expected} (client, seq) deliveries expected, lost {lost}, duplicated {dups}",
        n_clients, n_slow, n_topics
    );
    assert!(rows.iter().all(|r| r.lost == 0 && r.duplicated == 0), "a fault lost or duplicated envelopes");
    assert_eq!((lost, dups), (0, 0), "lost or duplicated at the end");
    drop(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_bounded() {
    use Fault::*;
    chaos(&[None, KillWorker, CloseAmqp, KillRouter, SlowConsumers, DrainRestart], 12, 3, 4, Duration::from_secs(6))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "make chaos: restarts the shared RabbitMQ and PostgreSQL; run alone"]
async fn chaos_full() {
    use Fault::*;
    chaos(
        &[
            None,
            KillWorker,
            CloseAmqp,
            KillRouter,
            SlowConsumers,
            DrainRestart,
            RestartRabbit,
            RestartPostgres,
            KillWorker,
        ],
        40,
        10,
        8,
        Duration::from_secs(15),
    )
    .await;
}
