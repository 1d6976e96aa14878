//! Test harness for the supervisor's tests: starts the real `switchboard router` on port 0
//! (router and admin) in a temporary directory, waits for its `ready` line (not a sleep),
//! and reads the admin endpoint and the process tree.
//!
//! Kept apart from `tests/support` (the worker engineer's harness) so the two do not clash.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use switchboard::router::admin::merge;

/// A running router and the directory it lives in.
pub struct Router {
    child: Child,
    pub router: SocketAddr,
    pub admin: SocketAddr,
    pub workers: usize,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    log: PathBuf,
    /// Every child pid seen, so Drop can make sure none is left.
    seen: Vec<i32>,
}

/// The config the tests run with: everything on loopback port 0, short drain and grace.
pub fn config_text(dir: &Path, workers: usize, extra: &str) -> String {
    let key = switchboard::wire::SigningKeyFile::new("k1", [7; 32]).public_text();
    format!(
        "[router]\nlisten = \"127.0.0.1:0\"\nworkers = {workers}\ndrain_window_secs = 1\nshutdown_grace_secs = 3\n\
         runtime_dir = \"{run}\"\n{extra}\n[tokens]\nkey_files = []\nkeys = [\"{key}\"]\n\
         [bus]\nkind = \"local\"\nlocal_dir = \"{bus}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        run = dir.join("run").display(),
        bus = dir.join("bus").display(),
        key = key.trim(),
    )
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_switchboard")
}

impl Router {
    pub fn start(workers: usize) -> Router {
        Self::start_with(workers, "", &[], |_| {}).expect("router did not become ready")
    }

    /// Starts a router with extra `[router]` lines and environment; `prepare` runs on the
    /// directory before the start. Err holds the exit status and the log when the router
    /// exits instead of becoming ready.
    pub fn start_with(
        workers: usize,
        extra_router_toml: &str,
        env: &[(&str, &Path)],
        prepare: impl FnOnce(&Path),
    ) -> Result<Router, (ExitStatus, String)> {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("switchboard.toml");
        std::fs::write(&config, config_text(dir.path(), workers, extra_router_toml)).expect("write config");
        prepare(dir.path());
        let log = dir.path().join("router.log");
        let mut child = Command::new(bin())
            .args(["router", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("NOTIFY_SOCKET")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn switchboard");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(line) if line.starts_with("ready ") => {
                    let field = |k: &str| {
                        line.split_whitespace().find_map(|f| f.strip_prefix(k)).map(str::to_owned).expect(&line)
                    };
                    let router = Router {
                        router: field("router=").parse().expect("router addr"),
                        admin: field("admin=").parse().expect("admin addr"),
                        workers: field("workers=").parse().expect("workers"),
                        child,
                        dir,
                        config,
                        log,
                        seen: vec![],
                    };
                    let mut router = router;
                    router.seen = router.children().keys().copied().collect();
                    return Ok(router);
                }
                Ok(_) => {}
                Err(_) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        let text = strip_ansi(&std::fs::read_to_string(&log).unwrap_or_default());
                        return Err((status, text));
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        panic!(
                            "no ready line within 30 s; log:\n{}",
                            std::fs::read_to_string(&log).unwrap_or_default()
                        );
                    }
                }
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid()), sig).expect("kill supervisor");
    }

    /// The supervisor's log so far, without colours.
    pub fn logs(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// Live children of the supervisor: pid -> process name (`sb-worker-N`, `sb-admin`).
    pub fn children(&mut self) -> BTreeMap<i32, String> {
        let kids = children_of(self.pid());
        self.seen.extend(kids.keys().copied());
        kids
    }

    /// Worker index -> pid.
    pub fn worker_pids(&mut self) -> BTreeMap<usize, i32> {
        self.children()
            .into_iter()
            .filter_map(|(pid, name)| name.strip_prefix("sb-worker-").and_then(|i| i.parse().ok()).map(|i| (i, pid)))
            .collect()
    }

    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_get(self.router, path)
    }

    pub fn admin_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_get(self.admin, path)
    }

    /// The admin endpoint's `/metrics`, parsed (it must be valid).
    pub fn metrics(&self) -> Vec<merge::Family> {
        let (code, text) = self.admin_get("/metrics").expect("GET /metrics");
        assert_eq!(code, 200, "{text}");
        merge::parse(&text).unwrap_or_else(|e| panic!("/metrics is not valid: {e}\n{text}"))
    }

    /// One sample's value, found by name and labels (a subset of the sample's labels).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        sample(&self.metrics(), name, labels)
    }

    /// Waits for the supervisor to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.children();
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in &self.seen {
            if alive(*pid) {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
        }
    }
}

pub fn sample(families: &[merge::Family], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    families
        .iter()
        .flat_map(|f| &f.samples)
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(v)))
        .map(merge::Sample::number)
}

/// Polls `f` every 10 ms until it holds or `timeout` passes; true when it held.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

/// Live (non-zombie) children of `parent`: pid -> name (from /proc/<pid>/comm).
pub fn children_of(parent: i32) -> BTreeMap<i32, String> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return out };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let mut f = rest.split_whitespace();
        let (state, ppid) = (f.next(), f.next().and_then(|p| p.parse::<i32>().ok()));
        if ppid == Some(parent) && state != Some("Z") {
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            out.insert(pid, name.trim().to_owned());
        }
    }
    out
}

/// One HTTP/1.1 GET with `Connection: close`: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("no HTTP head in {text:?}")))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad status line {head:?}")))?;
    Ok((code, body.to_owned()))
}

pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `key=value` fields of the log lines containing `message`.
pub fn log_events(logs: &str, message: &str) -> Vec<BTreeMap<String, String>> {
    logs.lines()
        .filter(|l| l.contains(message))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|f| f.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
                .collect()
        })
        .collect()
}

/// A WebSocket handshake on the router's endpoint (`/ws`), by hand: the HTTP status of the
/// answer and the open stream (a 101 leaves the connection to the worker that accepted it).
/// Errors read like [`http_get`]'s (`ConnectionReset`, `no HTTP head`).
pub fn ws_open(addr: SocketAddr) -> std::io::Result<(u16, TcpStream)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(switchboard::client::request(&addr.to_string(), "/ws", "").as_bytes())?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            let text = String::from_utf8_lossy(&head).into_owned();
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("no HTTP head in {text:?}")));
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad status line {text:?}")))?;
    Ok((code, s))
}

/// A WebSocket handshake, then the connection is dropped: the status code.
pub fn ws_status(addr: SocketAddr) -> std::io::Result<u16> {
    ws_open(addr).map(|(code, _)| code)
}
