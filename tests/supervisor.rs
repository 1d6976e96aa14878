//! The supervisor with real processes and real signals: spreading, respawn, SIGTERM, SIGINT,
//! SIGHUP, PDEATHSIG, crash-loop backoff, start-up failure.
//!
//! Runs against the real worker. Which worker holds a connection is read where an operator
//! would read it: the per-worker `switchboard_connections` gauge and
//! `switchboard_connections_accepted_total` counter on the admin /metrics. Waits are for
//! observable states (the ready line, /readyz, a metric, a log event, a process gone), never
//! a bare sleep.

// Test helpers panic on failure: that is how a test fails.
#![allow(clippy::unwrap_used)]

mod supervisor_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use supervisor_support::{Router, alive, log_events, wait_until, ws_open, ws_status};
use switchboard::client::{Client, Message};
use switchboard::metrics as m;
use switchboard::wire::token::Claims;
use switchboard::wire::{ServerFrame, SigningKeyFile};

/// A per-worker sample (0 when absent).
fn of_worker(r: &Router, name: &str, w: usize) -> f64 {
    r.metric(name, &[("worker", &w.to_string())]).unwrap_or(0.0)
}

#[test]
fn connections_spread_over_both_workers_on_one_port() {
    let mut r = Router::start(2);
    assert_eq!(r.workers, 2);
    assert_ne!(r.router.port(), 0, "port 0 is resolved once, in the supervisor");
    assert_eq!(r.worker_pids().len(), 2);
    let n = 400;
    // WebSocket connections, held open: each is a session in the worker that accepted it.
    let mut held = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let (code, s) = ws_open(r.router).expect("handshake");
        assert_eq!(code, 101);
        held.push(s);
    }
    // The gauge is refreshed by each worker's once-a-second sweep.
    let open = |r: &Router| (0..2).map(|w| of_worker(r, m::CONNECTIONS, w)).sum::<f64>();
    assert!(wait_until(Duration::from_secs(3), || open(&r) == n as f64), "open connections: {}", open(&r));
    let per: BTreeMap<usize, u32> = (0..2).map(|w| (w, of_worker(&r, m::CONNECTIONS, w) as u32)).collect();
    let (a, b) = (per[&0], per[&1]);
    let skew = (a as f64 - b as f64).abs() / n as f64;
    println!("spread over 2 workers: worker 0 {a}, worker 1 {b} (skew {:.1}%)", skew * 100.0);
    assert!(a >= n / 4 && b >= n / 4, "uneven spread: {per:?}");
    // The admin endpoint sees both workers' counters.
    let accepted: f64 = (0..2).map(|w| of_worker(&r, m::CONNECTIONS_ACCEPTED, w)).sum();
    assert!(accepted >= n as f64, "accepted {accepted}");
    drop(held);
    assert_eq!(r.admin_get("/healthz").unwrap().0, 200);
    assert_eq!(r.admin_get("/readyz").unwrap().0, 200);
}

fn tcp_migrate_req() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").is_ok_and(|v| v.trim() == "1")
}

#[test]
fn killed_worker_is_respawned_within_a_second_while_service_continues() {
    let mut r = Router::start(2);
    let before = r.worker_pids();
    // Clients connect back to back throughout; each failure is kept with its start time.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let client = {
        let (stop, ok, addr) = (stop.clone(), ok.clone(), r.router);
        std::thread::spawn(move || {
            let mut errors = vec![];
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                match ws_status(addr) {
                    Ok(101) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => errors.push((start, format!("{other:?}"))),
                }
            }
            errors
        })
    };
    assert!(wait_until(Duration::from_secs(5), || ok.load(Ordering::Relaxed) > 20));
    let killed_at = Instant::now();
    kill(Pid::from_raw(before[&0]), Signal::SIGKILL).unwrap();
    assert!(wait_until(Duration::from_secs(1), || !alive(before[&0])));
    // From here on its listener has left the reuseport group.
    let dead_at = Instant::now();
    let respawned = wait_until(Duration::from_secs(1), || {
        r.metric(m::WORKER_RESTARTS, &[("worker", "0")]) == Some(1.0)
            && r.metric(m::WORKER_UP, &[("worker", "0")]) == Some(1.0)
    });
    let took = killed_at.elapsed();
    assert!(respawned, "worker 0 not respawned and ready within 1 s; log:\n{}", r.logs());
    println!("worker 0 respawned and ready {} ms after SIGKILL", took.as_millis());
    assert!(wait_until(Duration::from_secs(2), || r.admin_get("/readyz").is_ok_and(|(c, _)| c == 200)));
    let after = r.worker_pids();
    assert_ne!(after[&0], before[&0]);
    assert_eq!(after[&1], before[&1], "the other worker kept running");
    // Keep the clients going a little after the respawn, then stop them.
    let mark = ok.load(Ordering::Relaxed);
    assert!(wait_until(Duration::from_secs(5), || ok.load(Ordering::Relaxed) > mark + 50));
    stop.store(true, Ordering::Relaxed);
    let errors = client.join().unwrap();
    let (in_flight, new): (Vec<_>, Vec<_>) = errors.iter().partition(|(start, _)| *start < dead_at);
    println!(
        "clients during the kill: {} ok, {} failed that were in flight when it died, {} failed after (tcp_migrate_req={})",
        ok.load(Ordering::Relaxed),
        in_flight.len(),
        new.len(),
        u8::from(tcp_migrate_req())
    );
    assert!(new.is_empty(), "new connections failed after the worker died: {new:?}");
    // Only a connection the dead worker already owned may fail: accepted but not answered
    // (EOF), or waiting in its accept queue (reset; net.ipv4.tcp_migrate_req=1, set by
    // systemd/60-switchboard.conf, migrates those to the surviving worker instead).
    assert!(
        in_flight.iter().all(|(_, e)| e.contains("ConnectionReset") || e.contains("no HTTP head")),
        "{in_flight:?}"
    );
    assert_eq!(r.metric(m::WORKER_RESTARTS, &[("worker", "1")]), Some(0.0));
}

#[test]
fn sigterm_drains_the_workers_and_exits_zero_within_the_grace() {
    let mut r = Router::start(2);
    let pids = r.children();
    let sent = Instant::now();
    r.signal(Signal::SIGTERM);
    let status = r.wait_exit(Duration::from_secs(3 + 1)).expect("exit within shutdown_grace_secs (3 s)");
    println!("SIGTERM to exit: {} ms", sent.elapsed().as_millis());
    assert_eq!(status.code(), Some(0), "{}", r.logs());
    let logs = r.logs();
    let exits = log_events(&logs, "child exited");
    for w in ["worker-0", "worker-1", "admin"] {
        let e = exits.iter().find(|e| e.get("child").map(String::as_str) == Some(w)).expect(w);
        // Exit code 0, not killed by the signal: the child handled SIGTERM itself.
        assert_eq!(e.get("exit").map(String::as_str), Some("code:0"), "{w}: {e:?}\n{logs}");
    }
    assert!(pids.keys().all(|p| !alive(*p)));
}

#[test]
fn sigint_stops_everything_now() {
    let mut r = Router::start(2);
    let pids = r.children();
    let sent = Instant::now();
    r.signal(Signal::SIGINT);
    let status = r.wait_exit(Duration::from_secs(3)).expect("exit after SIGINT");
    println!("SIGINT to exit: {} ms", sent.elapsed().as_millis());
    assert_eq!(status.code(), Some(0));
    assert!(pids.keys().all(|p| !alive(*p)));
}

fn reloads(r: &Router, w: usize) -> f64 {
    r.metric(m::CONFIG_RELOADS, &[("worker", &w.to_string()), ("result", "ok")]).unwrap_or(0.0)
}

#[test]
fn sighup_reaches_every_worker_which_keeps_running() {
    let mut r = Router::start(2);
    let before = r.worker_pids();
    r.signal(Signal::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(3), || (0..2).all(|w| reloads(&r, w) == 1.0)),
        "workers did not reload; log:\n{}",
        r.logs()
    );
    assert_eq!(r.worker_pids(), before, "no worker was replaced");
    assert_eq!(ws_status(r.router).unwrap(), 101);

    // A broken config file is refused by the supervisor and not forwarded.
    let good = std::fs::read_to_string(&r.config).unwrap();
    std::fs::write(&r.config, format!("{good}\n[router]\nbogus = 1\n")).unwrap();
    r.signal(Signal::SIGHUP);
    assert!(wait_until(Duration::from_secs(3), || r.logs().contains("config file is not usable")));
    std::fs::write(&r.config, good).unwrap();
    r.signal(Signal::SIGHUP);
    assert!(wait_until(Duration::from_secs(3), || (0..2).all(|w| reloads(&r, w) >= 2.0)));
    // Exactly two reloads each: the broken file never reached them.
    assert!((0..2).all(|w| reloads(&r, w) == 2.0));
    assert_eq!(r.worker_pids(), before);
    assert_eq!(r.admin_get("/readyz").unwrap().0, 200);
}

/// A token for `topics` signed by `key`, valid for an hour.
fn token(key: &SigningKeyFile, topics: &[&str]) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = Claims {
        kid: key.kid.clone(),
        sub: "sighup-test".into(),
        topics: topics.iter().map(|t| (*t).to_owned()).collect(),
        iat: now,
        exp: now + 3600,
        nbf: None,
    };
    switchboard::wire::token::mint(&claims, &key.key)
}

/// The next data or close frame, within 10 s.
async fn next_frame(c: &mut Client) -> Message {
    tokio::time::timeout(Duration::from_secs(10), c.next()).await.expect("a frame in time").expect("a frame")
}

/// Subscribes; the answer's error code, or None for `ok`.
async fn subscribe(c: &mut Client, id: u32, topic: &str, token: &str) -> Option<String> {
    c.subscribe(id, topic, token).await.unwrap();
    let m = next_frame(c).await;
    match m.frame() {
        Some(ServerFrame::Ok { id: got, .. }) if got == id => None,
        Some(ServerFrame::Error { id: got, code, .. }) if got == id => Some(code.to_owned()),
        other => panic!("expected ok or error for {id}, got {other:?}"),
    }
}

/// A WebSocket connection stays open across SIGHUP and still receives; a token signed with
/// a key added before the SIGHUP is accepted afterwards; a key removed is refused for new
/// subscribes after the next one.
#[test]
fn sighup_keeps_connections_and_a_new_key_works() {
    let k1 = SigningKeyFile::new("k1", [7; 32]); // the one in config_text
    let k2 = SigningKeyFile::new("k2", [9; 32]);
    let r = Router::start(2);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // Connections on both workers (the port hash spreads them), each subscribed with k1.
        let mut held = vec![];
        for _ in 0..8 {
            let mut c = Client::connect(r.router, "/ws").await.unwrap();
            assert_eq!(subscribe(&mut c, 1, "news", &token(&k1, &["news"])).await, None);
            held.push(c);
        }
        let before_k2 = {
            let mut c = Client::connect(r.router, "/ws").await.unwrap();
            subscribe(&mut c, 1, "news", &token(&k2, &["news"])).await
        };
        assert_eq!(before_k2.as_deref(), Some("token_unknown_kid"));

        // Add k2 in a key file, SIGHUP, wait for every worker's reload.
        let keys = r.dir.path().join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        std::fs::write(keys.join("k2.pub"), k2.public_text()).unwrap();
        let text = std::fs::read_to_string(&r.config).unwrap();
        let with_k2 = text.replace("key_files = []", &format!("key_files = [\"{}\"]", keys.display()));
        assert_ne!(with_k2, text);
        std::fs::write(&r.config, &with_k2).unwrap();
        r.signal(Signal::SIGHUP);
        assert!(
            wait_until(Duration::from_secs(3), || (0..2).all(|w| reloads(&r, w) == 1.0)),
            "workers did not reload; log:\n{}",
            r.logs()
        );

        // Every held connection is still open and still receives.
        let mut bus = switchboard::bus::local::Publisher::new(&r.dir.path().join("bus"));
        let e = switchboard::wire::EnvelopeRef { topic: "news", seq: 1, id: "e1", ts: 0, kind: "test", payload: b"1" };
        let routed = switchboard::bus::Routed { topic: "news".into(), seq: 1, frame: bytes::Bytes::from(e.encode()) };
        assert_eq!(bus.publish_counted(&[routed]).await.unwrap(), 2, "both workers took the envelope");
        for c in &mut held {
            let m = next_frame(c).await;
            assert!(matches!(m.frame(), Some(ServerFrame::Envelope(e)) if e.seq == 1), "{m:?}");
        }
        // A new connection with a k2 token is acknowledged (on whichever worker).
        for _ in 0..4 {
            let mut c = Client::connect(r.router, "/ws").await.unwrap();
            assert_eq!(subscribe(&mut c, 2, "news", &token(&k2, &["news"])).await, None);
        }

        // Remove k1 (the inline key): new subscribes with k1 are refused.
        let k1_line = k1.public_text();
        let without_k1 = with_k2.replace(&format!("\"{}\"", k1_line.trim()), "");
        assert_ne!(without_k1, with_k2);
        std::fs::write(&r.config, &without_k1).unwrap();
        r.signal(Signal::SIGHUP);
        assert!(wait_until(Duration::from_secs(3), || (0..2).all(|w| reloads(&r, w) == 2.0)), "{}", r.logs());
        for _ in 0..4 {
            let mut c = Client::connect(r.router, "/ws").await.unwrap();
            let refused = subscribe(&mut c, 3, "news", &token(&k1, &["news"])).await;
            assert_eq!(refused.as_deref(), Some("token_unknown_kid"));
        }
        // The held connections stayed through both reloads: each answers a ping.
        for c in &mut held {
            c.send(&switchboard::wire::ClientFrame::Ping { id: 9 }).await.unwrap();
            let m = next_frame(c).await;
            assert!(matches!(m.frame(), Some(ServerFrame::Pong { id: 9 })), "{m:?}");
        }
    });
}

#[test]
fn sigkill_of_the_supervisor_takes_every_child_down() {
    let mut r = Router::start(2);
    let kids = r.children();
    assert_eq!(kids.len(), 3, "{kids:?}");
    r.signal(Signal::SIGKILL);
    r.wait_exit(Duration::from_secs(2)).expect("supervisor killed");
    // PDEATHSIG is SIGTERM: workers drain (drain_window_secs = 1) and exit.
    let gone = wait_until(Duration::from_secs(5), || kids.keys().all(|p| !alive(*p)));
    let left: Vec<_> = kids.iter().filter(|(p, _)| alive(**p)).collect();
    assert!(gone, "children outlived the supervisor: {left:?}");
}

/// Makes worker `i`'s metrics and bus socket paths impossible to bind (a non-empty
/// directory stands where the socket goes), so that worker fails at start.
fn obstruct_worker(dir: &Path, i: usize) {
    for sub in ["run/metrics", "bus"] {
        let p = dir.join(sub).join(format!("worker-{i}.sock"));
        let _ = std::fs::remove_file(&p);
        std::fs::create_dir_all(p.join("in-the-way")).unwrap();
    }
}

fn respawn_delays(logs: &str, child: &str) -> Vec<u64> {
    log_events(logs, "child exited; respawning")
        .iter()
        .filter(|e| e.get("child").map(String::as_str) == Some(child))
        .filter_map(|e| e.get("respawn_in_ms")?.parse().ok())
        .collect()
}

#[test]
fn a_crash_looping_worker_is_respawned_ever_more_slowly() {
    let mut r = Router::start(2);
    obstruct_worker(r.dir.path(), 0);
    let pids = r.worker_pids();
    kill(Pid::from_raw(pids[&0]), Signal::SIGKILL).unwrap();
    // The schedule is 0, 0.1, 0.5, 1, 2, 5 s: six deaths take about 3.6 s.
    assert!(
        wait_until(Duration::from_secs(10), || respawn_delays(&r.logs(), "worker-0").len() >= 6),
        "log:\n{}",
        r.logs()
    );
    let delays = respawn_delays(&r.logs(), "worker-0");
    println!("respawn delays of worker 0 (ms): {delays:?}");
    assert_eq!(&delays[..6], [0, 100, 500, 1000, 2000, 5000]);
    // Meanwhile the other worker serves (it accepts every one of 20 connections), and the
    // host is not ready.
    let accepted_1 = of_worker(&r, m::CONNECTIONS_ACCEPTED, 1);
    assert!((0..20).all(|_| ws_status(r.router).is_ok_and(|c| c == 101)));
    assert_eq!(of_worker(&r, m::CONNECTIONS_ACCEPTED, 1), accepted_1 + 20.0);
    assert_eq!(r.admin_get("/readyz").unwrap().0, 503);
    assert_eq!(r.metric(m::WORKER_UP, &[("worker", "0")]), Some(0.0));
    assert_eq!(r.worker_pids().get(&1), Some(&pids[&1]));
    // Clear the obstacle: the next respawn (within 5 s) comes up and the host is ready again.
    for sub in ["run/metrics", "bus"] {
        std::fs::remove_dir_all(r.dir.path().join(sub).join("worker-0.sock")).unwrap();
    }
    assert!(wait_until(Duration::from_secs(8), || r.admin_get("/readyz").is_ok_and(|(c, _)| c == 200)));
}

#[test]
fn a_worker_that_cannot_start_fails_the_start_with_exit_1() {
    let started = Instant::now();
    let (status, logs) = match Router::start_with(2, "", &[], |dir| obstruct_worker(dir, 1)) {
        Ok(_) => panic!("the router became ready with a worker that cannot start"),
        Err(e) => e,
    };
    assert_eq!(status.code(), Some(1), "{logs}");
    assert!(logs.contains("worker-1 failed 3 times before the router was ever ready"), "{logs}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_worker_stuck_in_its_drain_is_killed_after_the_grace() {
    let mut r = Router::start(2);
    let pids = r.worker_pids();
    // Worker 0 cannot act on SIGTERM: it is stopped.
    kill(Pid::from_raw(pids[&0]), Signal::SIGSTOP).unwrap();
    let sent = Instant::now();
    r.signal(Signal::SIGTERM);
    // While draining the host is alive but not ready.
    assert!(wait_until(Duration::from_secs(2), || r
        .admin_get("/readyz")
        .is_ok_and(|(c, b)| c == 503 && b.contains("stopping"))));
    assert_eq!(r.admin_get("/healthz").unwrap().0, 200);
    let status = r.wait_exit(Duration::from_secs(3 + 2)).expect("exit after the 3 s grace");
    let took = sent.elapsed();
    println!("stuck worker: supervisor exited {} ms after SIGTERM (grace 3 s)", took.as_millis());
    assert_eq!(status.code(), Some(0));
    assert!(took >= Duration::from_secs(3), "exited before the grace: {took:?}");
    let logs = r.logs();
    assert!(logs.contains("grace period over: SIGKILL"), "{logs}");
    let exits = log_events(&logs, "child exited");
    let w0 = exits.iter().find(|e| e.get("child").map(String::as_str) == Some("worker-0")).expect("worker-0 exit");
    assert_eq!(w0.get("exit").map(String::as_str), Some("signal:SIGKILL"), "{logs}");
    assert!(!alive(pids[&0]) && !alive(pids[&1]));
}

#[test]
fn a_port_held_by_another_router_is_refused() {
    let first = Router::start(1);
    let port = first.router.port();
    let taken = format!("listen = \"127.0.0.1:{port}\"\n");
    // The second router's [router] listen replaces port 0 with the first one's port.
    let result = Router::start_with(1, "", &[], |dir| {
        let cfg = dir.join("switchboard.toml");
        let text = std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("listen = \"127.0.0.1:0\"\nworkers", &format!("{taken}workers"));
        std::fs::write(cfg, text).unwrap();
    });
    let (status, logs) = match result {
        Ok(_) => panic!("a second router started on port {port}, sharing the first one's traffic"),
        Err(e) => e,
    };
    assert_eq!(status.code(), Some(1), "{logs}");
    assert!(logs.contains("another router"), "{logs}");
    assert_eq!(ws_status(first.router).unwrap(), 101);
}

/// Datagrams the supervisor sent to `NOTIFY_SOCKET`, as text.
fn notifications(sock: &std::os::unix::net::UnixDatagram) -> Vec<String> {
    let mut out = vec![];
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.recv(&mut buf) {
        out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    out
}

#[test]
fn systemd_hears_ready_reloading_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut r = Router::start_with(2, "", &[("NOTIFY_SOCKET", &path)], |_| {}).unwrap();
    let mut seen = vec![];
    assert!(wait_until(Duration::from_secs(3), || {
        seen.extend(notifications(&sock));
        seen.iter().any(|m| m.contains("READY=1"))
    }));
    let ready = seen.iter().find(|m| m.contains("READY=1")).unwrap();
    assert!(ready.contains("STATUS=2/2 workers up, 0 restarts"), "{seen:?}");
    r.signal(Signal::SIGHUP);
    let mut after = vec![];
    assert!(wait_until(Duration::from_secs(3), || {
        after.extend(notifications(&sock));
        after.iter().any(|m| m.contains("READY=1"))
    }));
    let reloading = after.iter().position(|m| m.contains("RELOADING=1")).expect("RELOADING=1");
    assert!(after[reloading].contains("MONOTONIC_USEC="), "{after:?}");
    assert!(after.iter().position(|m| m.contains("READY=1")).unwrap() > reloading);
    r.signal(Signal::SIGTERM);
    let mut last = vec![];
    assert!(wait_until(Duration::from_secs(3), || {
        last.extend(notifications(&sock));
        last.iter().any(|m| m.contains("STOPPING=1"))
    }));
    assert_eq!(r.wait_exit(Duration::from_secs(4)).and_then(|s| s.code()), Some(0));
    println!("notifications: {seen:?} then {after:?} then {last:?}");
}

/// A field of /proc/<pid>/status, e.g. `Cpus_allowed_list`.
fn proc_status(pid: i32, field: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines().find_map(|l| l.strip_prefix(&format!("{field}:"))).unwrap_or_default().trim().to_owned()
}

#[test]
fn workers_are_pinned_and_inherit_the_raised_fd_limit() {
    let cpus = proc_status(std::process::id() as i32, "Cpus_allowed_list");
    let mut r = Router::start_with(2, "pin_cpus = true", &[], |_| {}).unwrap();
    let pids = r.worker_pids();
    let pinned: Vec<String> = (0..2).map(|w| proc_status(pids[&w], "Cpus_allowed_list")).collect();
    println!("test may run on CPUs {cpus}; workers pinned to {pinned:?}");
    for p in &pinned {
        assert!(p.parse::<usize>().is_ok(), "worker not pinned to one CPU: {p}");
    }
    if std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) >= 2 {
        assert_ne!(pinned[0], pinned[1], "two workers on one CPU while two are available");
    }
    // RLIMIT_NOFILE: soft raised to hard in the supervisor, inherited by every worker.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", pids[&0])).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let nums: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(nums[0], nums[1], "{line}");
}
