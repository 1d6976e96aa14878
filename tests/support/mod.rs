//! Test harness shared by the integration tests: real processes, real sockets.
//!
//! - [`Env`]: a temporary directory with a signing key, its public key file and a config file
//!   (`127.0.0.1:0`, the local bus and runtime files inside the directory). Extra TOML lines
//!   go into any section ([`Env::with`]); [`Env::token`] mints tokens with the key.
//! - [`Process`]: a `switchboard` subcommand started from the built binary with that config;
//!   [`Process::start`] waits for its `ready key=value ...` line on stdout (never a sleep) and
//!   kills the process on drop. `Process::addr("router")` is the router's address; the
//!   journal and the supervisor print the same kind of line and work the same way.
//! - [`inproc`]: a router worker started in this test's own runtime (for the bus driver,
//!   paused clocks and `Control`), with the same config.
//! - The client is `switchboard::client::Client` (raw frames, handshake by hand).
//!
//! Each integration test file uses part of this module.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use switchboard::client::{Client, Message};
use switchboard::config::Config;
use switchboard::wire::token::{self, Claims};
use switchboard::wire::{ServerFrame, SigningKeyFile};

/// How long a process may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a test waits for one expected frame.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A temporary home for one test: keys, config, runtime files.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub key: SigningKeyFile,
    sections: Vec<(String, String)>,
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("sb").tempdir().expect("tempdir");
        let key = SigningKeyFile::new("test", [7; 32]);
        std::fs::create_dir_all(dir.path().join("keys")).expect("keys dir");
        std::fs::write(dir.path().join("keys/test.pub"), key.public_text()).expect("public key");
        std::fs::write(dir.path().join("keys/test.secret"), key.to_text()).expect("secret key");
        let mut env = Self { dir, key, sections: Vec::new() };
        env.write_config();
        env
    }

    /// Adds a TOML line to `section` (`router`, `tokens`, `bus`, ...) and rewrites the file.
    pub fn with(mut self, section: &str, line: &str) -> Self {
        self.sections.push((section.to_owned(), line.to_owned()));
        self.write_config();
        self
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("switchboard.toml")
    }

    fn write_config(&mut self) {
        let lines =
            |s: &str| self.sections.iter().filter(|(n, _)| n == s).map(|(_, l)| format!("{l}\n")).collect::<String>();
        let text = format!(
            "[router]\nlisten = \"127.0.0.1:0\"\nruntime_dir = \"run\"\n{}\n[admin]\nlisten = \"127.0.0.1:0\"\n[tokens]\nkey_files = [\"keys\"]\n{}\n\
             [bus]\nlocal_dir = \"run/bus\"\n{}\n[journal]\nlisten = \"127.0.0.1:0\"\nsqlite_path = \"run/journal.sqlite\"\n{}",
            lines("router"),
            lines("tokens"),
            lines("bus"),
            lines("journal"),
        );
        std::fs::write(self.config_path(), text).expect("config");
    }

    /// The config as a process would load it.
    pub fn config(&self) -> Config {
        Config::load(&self.config_path()).expect("test config loads")
    }

    /// A token for `topics`, valid from now for `ttl` seconds.
    pub fn token(&self, topics: &[&str], ttl: u64) -> String {
        let now = now_secs();
        self.token_with(Claims {
            kid: self.key.kid.clone(),
            sub: "test-user".into(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            iat: now,
            exp: now + ttl,
            nbf: None,
        })
    }

    /// A token with exactly these claims, signed with the test key.
    pub fn token_with(&self, claims: Claims) -> String {
        token::mint(&claims, &self.key.key)
    }

    /// Starts `switchboard router` with this config.
    pub fn router(&self) -> Process {
        Process::start(&["router", "--config", &self.config_path().to_string_lossy()], self.path())
    }

    /// Runs `switchboard publish` with this config; returns its stdout.
    pub fn publish_cli(&self, topic: &str, seq: u64, json: &str) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["publish", "--config", &self.config_path().to_string_lossy()])
            .args(["--topic", topic, "--kind", "test.event", "--seq", &seq.to_string(), "--payload-json", json])
            .output()
            .expect("run publish");
        assert!(out.status.success(), "publish failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A local-bus publisher for this config (fast, in-process).
    pub fn publisher(&self) -> switchboard::bus::local::Publisher {
        switchboard::bus::local::Publisher::new(&self.config().bus.local_dir)
    }
}

/// An envelope frame as the journal would encode it (payload: the seq as text).
pub fn envelope(topic: &str, seq: u64, payload: &[u8]) -> switchboard::bus::Routed {
    let id = format!("e{seq}");
    let e = switchboard::wire::EnvelopeRef { topic, seq, id: &id, ts: 0, kind: "test", payload };
    switchboard::bus::Routed { topic: topic.to_owned(), seq, frame: bytes::Bytes::from(e.encode()) }
}

/// A running `switchboard` process; killed on drop.
pub struct Process {
    pub child: Child,
    /// The `key=value` pairs of its ready line.
    pub ready: HashMap<String, String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Process {
    /// Spawns the binary with `args` in `cwd` and waits for a `ready ...` line on stdout.
    pub fn start(args: &[&str], cwd: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(args)
            .current_dir(cwd)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn switchboard");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let err = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[switchboard] {line}");
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = std::time::Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("ready ") => {
                    let ready = line
                        .split_whitespace()
                        .skip(1)
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect();
                    return Self { child, ready, stderr };
                }
                Ok(_) => continue,
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    panic!("switchboard {args:?} printed no ready line (exit {status:?}): {}", stderr_text(&stderr));
                }
            }
        }
    }

    /// The address printed as `name=<ip:port>`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.ready.get(name).and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("no {name}= in the ready line"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory, in KiB (Linux).
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// What the process logged so far.
    pub fn stderr(&self) -> String {
        stderr_text(&self.stderr)
    }

    /// Sends a signal and waits (up to `limit`) for the exit status.
    pub fn signal_and_wait(&mut self, sig: nix::sys::signal::Signal, limit: Duration) -> Option<i32> {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig);
        let end = std::time::Instant::now() + limit;
        while std::time::Instant::now() < end {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

fn stderr_text(s: &std::sync::Mutex<String>) -> String {
    s.lock().map(|s| s.clone()).unwrap_or_default()
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Connects a client to the router's WebSocket endpoint.
pub async fn connect(addr: SocketAddr) -> Client {
    Client::connect(addr, "/ws").await.expect("connect")
}

/// The next data or close frame, within [`FRAME_TIMEOUT`].
pub async fn next(c: &mut Client) -> Message {
    tokio::time::timeout(FRAME_TIMEOUT, c.next()).await.expect("a frame in time").expect("a frame")
}

/// Subscribes and expects `ok` with the same id; returns its last_seq.
pub async fn subscribe_ok(c: &mut Client, id: u32, topic: &str, token: &str) -> Option<u64> {
    c.subscribe(id, topic, token).await.expect("send subscribe");
    let m = next(c).await;
    match m.frame() {
        Some(ServerFrame::Ok { id: got, last_seq }) if got == id => last_seq,
        other => panic!("expected ok for {id}, got {other:?} ({m:?})"),
    }
}

/// Expects an error frame; returns its (id, code).
pub async fn expect_error(c: &mut Client) -> (u32, String) {
    let m = next(c).await;
    match m.frame() {
        Some(ServerFrame::Error { id, code, .. }) => (id, code.to_owned()),
        other => panic!("expected an error frame, got {other:?} ({m:?})"),
    }
}

/// Reads until a close frame; returns its code (frames before it are skipped).
pub async fn expect_close(c: &mut Client) -> u16 {
    loop {
        let m = next(c).await;
        if m.op == switchboard::client::op::CLOSE {
            return m.close_code().unwrap_or(1005);
        }
    }
}

/// A worker started in the calling test's runtime (call inside a `LocalSet`).
pub mod inproc {
    use switchboard::router::worker::{self, Control, Running};
    use tokio::sync::mpsc;

    use super::Env;

    /// Starts a worker with `env`'s config; returns it and its control channel.
    pub async fn start(env: &Env) -> (Running, mpsc::Sender<Control>, mpsc::Receiver<Control>) {
        let cfg = env.config();
        let keys = cfg.tokens.load_keys().expect("keys");
        let listener = switchboard::router::listener::bind(cfg.router.listen).expect("bind");
        let running = worker::start(cfg, keys, 0, listener).await.expect("worker starts");
        let (tx, rx) = mpsc::channel(8);
        (running, tx, rx)
    }
}
