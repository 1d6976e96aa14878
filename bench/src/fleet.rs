//! The parent's side of the holders: starts them, steps them through the protocol, sums them.
//!
//! A [`Fleet`] is P child processes of this binary (`hold.rs`), each holding a contiguous
//! share of the connections. The parent keeps the publisher (or the kill, or the RSS
//! reading) and the clock; the holders only read. Their stdout lines arrive through one
//! channel (a plain thread per holder reads its pipe), so the parent's current-thread
//! runtime handles them between its own steps ([`Fleet::drive`]).
//!
//! Failure is loud and bounded: a holder that prints `error`, exits, or goes silent for
//! [`SILENCE`] fails the whole run with its own words (its last stderr line), and every wait
//! for a protocol line has a deadline. Dropping a fleet kills what is left of it; a holder
//! whose parent dies sees stdin EOF and exits.
//!
//! Invariants: `rounds` holds only rounds every holder reported, in order of `n`; `latest`
//! is each holder's most recent tick.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use hdrhistogram::Histogram;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::protocol::{Tick, merge_hist, new_hist};

/// A holder that sends nothing for this long (ticks come every `--tick-ms`) has hung.
const SILENCE: Duration = Duration::from_secs(15);

/// What the parent tells every holder: where and how to connect (global options).
pub struct Global {
    pub addr: std::net::SocketAddr,
    pub key: std::path::PathBuf,
    pub sources: u8,
    pub concurrency: usize,
}

enum Msg {
    Line(String),
    Eof,
}

struct Kid {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The holder's last stderr line (its error, when it dies without an `error` line).
    last_err: Arc<Mutex<String>>,
    /// When it last sent anything.
    heard: Instant,
    /// It sent its histogram: EOF is expected now.
    finished: bool,
}

pub struct Fleet {
    kids: Vec<Kid>,
    rx: UnboundedReceiver<(usize, Msg)>,
    latest: Vec<Tick>,
    /// Rounds some holders reported: (how many so far, their sum).
    pending: BTreeMap<u64, (usize, Tick)>,
    /// Rounds every holder reported, summed, in order.
    pub rounds: Vec<Tick>,
    pub tick_ms: u64,
    /// When `go` was sent: round n is about `go + n * tick_ms`.
    pub go_at: Option<Instant>,
    /// For the progress line.
    label: String,
    pub conns: usize,
}

impl Fleet {
    /// Starts `procs` holders for `conns` connections; `hold` are the `hold` subcommand's
    /// arguments other than `--first`/`--count`/`--tick-ms`.
    pub fn spawn(
        label: &str,
        g: &Global,
        conns: usize,
        procs: usize,
        tick_ms: u64,
        hold: &[String],
    ) -> anyhow::Result<Self> {
        if conns == 0 {
            bail!("no connections to hold (--conns/--subs 0)");
        }
        let procs = procs.clamp(1, conns);
        let exe = std::env::current_exe().context("cannot find this binary to start holders")?;
        let (tx, rx) = unbounded_channel();
        let mut kids = Vec::with_capacity(procs);
        for j in 0..procs {
            let (first, upto) = (conns * j / procs, conns * (j + 1) / procs);
            let mut cmd = Command::new(&exe);
            cmd.arg("--addr")
                .arg(g.addr.to_string())
                .arg("--key")
                .arg(&g.key)
                .args(["--sources", &g.sources.to_string(), "--concurrency", &g.concurrency.to_string(), "hold"])
                .args(["--first", &first.to_string(), "--count", &(upto - first).to_string()])
                .args(["--tick-ms", &tick_ms.to_string()])
                .args(hold)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = cmd.spawn().with_context(|| format!("cannot start holder {j} ({})", exe.display()))?;
            let stdin = child.stdin.take();
            let (out, err) =
                (child.stdout.take().context("holder stdout")?, child.stderr.take().context("holder stderr")?);
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send((j, Msg::Line(line))).is_err() {
                        return;
                    }
                }
                let _ = tx.send((j, Msg::Eof));
            });
            let last_err = Arc::new(Mutex::new(String::new()));
            let keep = last_err.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    eprintln!("[holder {j}] {line}");
                    if let Ok(mut l) = keep.lock() {
                        *l = line;
                    }
                }
            });
            kids.push(Kid { child, stdin, last_err, heard: Instant::now(), finished: false });
        }
        Ok(Self {
            latest: vec![Tick::default(); procs],
            kids,
            rx,
            pending: BTreeMap::new(),
            rounds: Vec::new(),
            tick_ms: tick_ms.max(1),
            go_at: None,
            label: label.to_owned(),
            conns,
        })
    }

    pub fn procs(&self) -> usize {
        self.kids.len()
    }

    fn send_all(&mut self, cmd: &str) -> anyhow::Result<()> {
        for (j, k) in self.kids.iter_mut().enumerate() {
            let Some(stdin) = k.stdin.as_mut() else { continue };
            writeln!(stdin, "{cmd}")
                .and_then(|()| stdin.flush())
                .with_context(|| format!("holder {j}: cannot send {cmd}"))?;
        }
        Ok(())
    }

    /// Waits for every holder's `armed` (they minted their tokens).
    pub async fn armed(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.expect_all("armed", timeout).await.map(|_| ())
    }

    /// Sends `go`; the clock of the rounds starts now.
    pub fn go(&mut self) -> anyhow::Result<()> {
        self.go_at = Some(Instant::now());
        for k in &mut self.kids {
            k.heard = Instant::now();
        }
        self.send_all("go")
    }

    /// Waits for every holder's `ready` (all connected and subscribed); returns, per holder,
    /// its own seconds from `go` and when the parent read the line.
    pub async fn ready(&mut self, timeout: Duration) -> anyhow::Result<Vec<(f64, Instant)>> {
        let v = self.expect_all("ready", timeout).await?;
        Ok(v.into_iter()
            .map(|(l, at)| (l.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0.0), at))
            .collect())
    }

    /// Reads lines until every holder sent one starting with `word`.
    async fn expect_all(&mut self, word: &str, timeout: Duration) -> anyhow::Result<Vec<(String, Instant)>> {
        let mut got: Vec<Option<(String, Instant)>> = vec![None; self.kids.len()];
        let deadline = tokio::time::Instant::now() + timeout;
        while got.iter().any(Option::is_none) {
            let m = match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(m) => m,
                Err(_) => {
                    let missing: Vec<usize> = (0..got.len()).filter(|j| got[*j].is_none()).collect();
                    bail!("holder(s) {missing:?} did not say `{word}` within {} s", timeout.as_secs());
                }
            };
            let (j, msg) = m.context("every holder is gone")?;
            if let Some(line) = self.handle(j, msg)? {
                if !line.starts_with(word) {
                    bail!("holder {j} said {line:.80?}, expected `{word}`");
                }
                if got[j].is_some() {
                    bail!("holder {j} said `{word}` twice");
                }
                got[j] = Some((line, Instant::now()));
            }
        }
        Ok(got.into_iter().flatten().collect())
    }

    /// Handles one message: ticks are summed, errors and deaths fail the run, any other line
    /// is returned to the caller that waits for it.
    fn handle(&mut self, j: usize, msg: Msg) -> anyhow::Result<Option<String>> {
        self.kids[j].heard = Instant::now();
        let line = match msg {
            Msg::Eof if self.kids[j].finished => return Ok(None),
            Msg::Eof => return Err(self.death(j)),
            Msg::Line(l) => l,
        };
        if let Some(text) = line.strip_prefix("error ") {
            bail!("holder {j}: {text}");
        }
        if !line.starts_with("tick ") {
            return Ok(Some(line));
        }
        let t = Tick::parse(&line).with_context(|| format!("holder {j}"))?;
        let n = t.n;
        let e = self.pending.entry(n).or_insert_with(|| (0, Tick::default()));
        e.0 += 1;
        e.1.add(&t);
        self.latest[j] = t;
        if e.0 == self.kids.len()
            && let Some((_, sum)) = self.pending.remove(&n)
        {
            self.progress(&sum);
            self.rounds.push(sum);
        }
        Ok(None)
    }

    /// Why holder `j` ended without being asked to: its exit status and last stderr line.
    fn death(&mut self, j: usize) -> anyhow::Error {
        let k = &mut self.kids[j];
        k.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(2);
        let status = loop {
            match k.child.try_wait() {
                Ok(Some(s)) => break s.to_string(),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                Ok(None) => break "closed its output but is still running".into(),
                Err(e) => break format!("cannot be waited for ({e})"),
            }
        };
        // Give the stderr thread a moment to read the last words.
        std::thread::sleep(Duration::from_millis(50));
        let last = k.last_err.lock().map(|l| l.clone()).unwrap_or_default();
        let why = if last.is_empty() { String::new() } else { format!(": {last}") };
        anyhow!("holder {j} (pid {}) {status}{why}", k.child.id())
    }

    /// One progress line per second of rounds, on stderr.
    fn progress(&self, sum: &Tick) {
        let per_s = (1000 / self.tick_ms).max(1);
        if !sum.n.is_multiple_of(per_s) {
            return;
        }
        let before = self.rounds.iter().rev().nth(per_s as usize - 1).map_or(0, |t| t.envelopes);
        let mut line = format!(
            "[{} {:>5.1}s] delivered {} ({}/s), gaps {}, receiving {} of {}",
            self.label,
            (sum.n * self.tick_ms) as f64 / 1000.0,
            sum.envelopes,
            sum.envelopes.saturating_sub(before),
            sum.gaps,
            sum.live,
            self.conns
        );
        if sum.p99_us > 0 {
            line.push_str(&format!(", p50 {} us, p99 {} us (worst holder)", sum.p50_us, sum.p99_us));
        }
        if sum.reconnects > 0 || sum.failed() > 0 {
            line.push_str(&format!(", reconnects {}, failed attempts {:?}", sum.reconnects, sum.fails));
        }
        eprintln!("{line}");
    }

    /// The sum of every holder's latest tick.
    pub fn total(&self) -> Tick {
        let mut t = Tick::default();
        for l in &self.latest {
            t.add(l);
        }
        t
    }

    /// Runs `fut` to its end while handling the holders' lines; a failing holder fails it.
    pub async fn drive<T>(&mut self, fut: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
        tokio::pin!(fut);
        let mut check = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                r = &mut fut => return r,
                m = self.rx.recv() => {
                    let (j, msg) = m.context("every holder is gone")?;
                    if let Some(line) = self.handle(j, msg)? {
                        bail!("holder {j} said {line:.80?} out of turn");
                    }
                }
                _ = check.tick() => self.check_silence()?,
            }
        }
    }

    /// Handles lines until `done(self)` holds (checked after every message) or `timeout`
    /// passed; returns whether it held.
    pub async fn pump_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&Fleet) -> bool,
    ) -> anyhow::Result<bool> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !done(self) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => return Ok(false),
                Ok(m) => {
                    let (j, msg) = m.context("every holder is gone")?;
                    if let Some(line) = self.handle(j, msg)? {
                        bail!("holder {j} said {line:.80?} out of turn");
                    }
                    self.check_silence()?;
                }
            }
        }
        Ok(true)
    }

    pub async fn pump_for(&mut self, d: Duration) -> anyhow::Result<()> {
        self.drive(async {
            tokio::time::sleep(d).await;
            Ok(())
        })
        .await
    }

    fn check_silence(&self) -> anyhow::Result<()> {
        if self.go_at.is_none() {
            return Ok(());
        }
        for (j, k) in self.kids.iter().enumerate() {
            if !k.finished && k.heard.elapsed() > SILENCE {
                bail!("holder {j} (pid {}) sent nothing for {} s: hung?", k.child.id(), SILENCE.as_secs());
            }
        }
        Ok(())
    }

    /// Sends `stop`, collects each holder's final counters and histogram, waits for them to
    /// exit. Returns the summed final tick and the merged histogram.
    pub async fn stop(mut self) -> anyhow::Result<(Tick, Histogram<u64>)> {
        self.send_all("stop")?;
        let mut total = Tick::default();
        let mut h = new_hist();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.kids.iter().any(|k| !k.finished) {
            let Ok(m) = tokio::time::timeout_at(deadline, self.rx.recv()).await else {
                bail!("holders did not send their results within 30 s of stop");
            };
            let (j, msg) = m.context("every holder is gone")?;
            let Some(line) = self.handle(j, msg)? else { continue };
            if line.starts_with("final ") {
                total.add(&Tick::parse(&line)?);
            } else if line.starts_with("hist") {
                merge_hist(&line, &mut h).with_context(|| format!("holder {j}"))?;
                // Its EOF follows: expected from now on.
                self.kids[j].finished = true;
            } else {
                bail!("holder {j} said {line:.80?} after stop");
            }
        }
        for k in &mut self.kids {
            k.stdin = None;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (j, k) in self.kids.iter_mut().enumerate() {
            loop {
                match k.child.try_wait()? {
                    Some(s) if s.success() => break,
                    Some(s) => bail!("holder {j} {s} after stop"),
                    None if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
                    None => bail!("holder {j} (pid {}) did not exit after stop", k.child.id()),
                }
            }
        }
        Ok((total, h))
    }

    /// Round `n`'s time in seconds since `go`.
    pub fn round_secs(&self, n: u64) -> f64 {
        (n * self.tick_ms) as f64 / 1000.0
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for k in &mut self.kids {
            if let Ok(None) = k.child.try_wait() {
                let _ = k.child.kill();
                let _ = k.child.wait();
            }
        }
    }
}
