//! A verifying client: live delivery plus reconciliation through the journal, with a record
//! of everything handed to the "application", checked against the journal at the end.
//!
//! It follows the JS client (clients/js/src/client.js, sequencer.js): per topic it keeps the
//! last delivered seq; an envelope with `seq <= last` is a duplicate and dropped, `seq ==
//! last + 1` is delivered, a jump (`seq > last + 1`), a `gap`, a `resync`, an `ok` whose
//! `last_seq` is ahead, and every (re)connect make it reconcile from `last` through
//! `GET /v1/topics/{t}/envelopes?after=` (paging with `next_after`) before going on.
//! Reconciled envelopes go through the same sequencer, so nothing reaches the application
//! twice or out of order. Used by tests/chaos.rs; the bench can use it the same way.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Client, op};
use crate::wire::ServerFrame;

/// Counters shared with whoever watches the client (all monotonic).
#[derive(Debug, Default)]
pub struct Stats {
    /// Envelopes delivered from live frames.
    pub live: AtomicU64,
    /// Envelopes delivered from journal pages.
    pub recovered: AtomicU64,
    /// Frames (live or reconciled) dropped because their seq was already delivered.
    pub dropped_dups: AtomicU64,
    /// Connections made (the first one included).
    pub connects: AtomicU64,
    /// Reconciliations run (one per topic per trigger).
    pub reconciles: AtomicU64,
    /// `gap` frames seen.
    pub gaps: AtomicU64,
    /// `resync` frames seen.
    pub resyncs: AtomicU64,
}

/// What the application saw: per topic, the seqs in delivery order.
#[derive(Debug, Default)]
pub struct Record {
    pub delivered: HashMap<String, Vec<u64>>,
    last: HashMap<String, u64>,
}

impl Record {
    pub fn last(&self, topic: &str) -> u64 {
        self.last.get(topic).copied().unwrap_or(0)
    }

    /// The sequencer: delivers `seq` if it is the next one; `Err(())` on a jump.
    fn offer(&mut self, topic: &str, seq: u64) -> Result<bool, ()> {
        let last = self.last(topic);
        if seq <= last {
            return Ok(false);
        }
        if seq != last + 1 {
            return Err(());
        }
        self.last.insert(topic.to_owned(), seq);
        self.delivered.entry(topic.to_owned()).or_default().push(seq);
        Ok(true)
    }
}

/// The verdict of [`verify`] for one client.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Seqs in the journal never delivered.
    pub lost: u64,
    /// Deliveries of a seq already delivered.
    pub duplicated: u64,
    /// Deliveries out of seq order.
    pub out_of_order: u64,
    /// Seqs in the journal (summed over topics).
    pub expected: u64,
}

/// Configuration of one verifying client.
#[derive(Debug, Clone)]
pub struct Options {
    pub router: SocketAddr,
    pub path: String,
    pub journal: SocketAddr,
    pub token: String,
    pub topics: Vec<String>,
}

/// A running verifying client (a tokio task).
pub struct Verifying {
    pub stats: Arc<Stats>,
    pub record: Arc<Mutex<Record>>,
    /// While set, the client stops reading its socket (a slow consumer).
    pub paused: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    opts: Options,
}

impl Verifying {
    /// Starts the client: connects, subscribes, reconciles, and keeps at it until stopped.
    pub fn spawn(opts: Options) -> Self {
        let stats = Arc::new(Stats::default());
        let record = Arc::new(Mutex::new(Record::default()));
        let paused = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run(opts.clone(), stats.clone(), record.clone(), paused.clone(), stop.clone()));
        Self { stats, record, paused, stop, task, opts }
    }

    /// The last delivered seq of `topic`.
    pub fn last(&self, topic: &str) -> u64 {
        self.record.lock().map(|r| r.last(topic)).unwrap_or(0)
    }

    /// Stops the task, reconciles every topic one last time, and returns the record.
    pub async fn finish(self) -> io::Result<Arc<Mutex<Record>>> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        for t in &self.opts.topics {
            reconcile(&self.opts, &self.stats, &self.record, t).await?;
        }
        Ok(self.record)
    }
}

async fn run(o: Options, stats: Arc<Stats>, rec: Arc<Mutex<Record>>, paused: Arc<AtomicBool>, stop: Arc<AtomicBool>) {
    let mut backoff = Duration::from_millis(50);
    while !stop.load(Ordering::SeqCst) {
        match session(&o, &stats, &rec, &paused, &stop).await {
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(error = %e, "verifying client: session ended; reconnecting");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// One connection: subscribe, reconcile, then live until an error (reconnect) or stop (Ok).
async fn session(
    o: &Options,
    stats: &Stats,
    rec: &Mutex<Record>,
    paused: &AtomicBool,
    stop: &AtomicBool,
) -> io::Result<()> {
    let mut c = tokio::time::timeout(Duration::from_secs(5), Client::connect(o.router, &o.path))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
        .map_err(|e| io::Error::other(e.to_string()))?;
    stats.connects.fetch_add(1, Ordering::Relaxed);
    let ids: HashMap<u32, &str> = o.topics.iter().enumerate().map(|(i, t)| (i as u32 + 1, t.as_str())).collect();
    for (id, t) in &ids {
        c.subscribe(*id, t, &o.token).await?;
    }
    // Every reconnect: reconcile each topic from its last delivered seq (after subscribing,
    // so nothing falls between the page and the live stream).
    let mut pending: Vec<String> = o.topics.clone();
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        for t in std::mem::take(&mut pending) {
            reconcile(o, stats, rec, &t).await?;
        }
        if paused.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let m = match tokio::time::timeout(Duration::from_millis(200), c.next()).await {
            Err(_) => continue,
            Ok(m) => m?,
        };
        if m.op == op::CLOSE {
            return Err(io::Error::new(io::ErrorKind::ConnectionReset, format!("closed {:?}", m.close_code())));
        }
        match m.frame() {
            Some(ServerFrame::Envelope(e)) => {
                let r = rec.lock().map_err(|_| io::Error::other("poisoned"))?.offer(e.topic, e.seq);
                match r {
                    Ok(true) => _ = stats.live.fetch_add(1, Ordering::Relaxed),
                    Ok(false) => _ = stats.dropped_dups.fetch_add(1, Ordering::Relaxed),
                    Err(()) => {
                        // A jump: fetch what is missing (the page includes this one).
                        reconcile(o, stats, rec, e.topic).await?;
                    }
                }
            }
            Some(ServerFrame::Ok { id, last_seq: Some(s) }) => {
                if let Some(t) = ids.get(&id)
                    && s > rec.lock().map(|r| r.last(t)).unwrap_or(0)
                {
                    pending.push((*t).to_owned());
                }
            }
            Some(ServerFrame::Gap { topic, .. }) => {
                stats.gaps.fetch_add(1, Ordering::Relaxed);
                pending.push(topic.to_owned());
            }
            Some(ServerFrame::Resync { topics }) => {
                stats.resyncs.fetch_add(1, Ordering::Relaxed);
                pending.extend(topics.iter().map(|t| (*t).to_owned()));
            }
            Some(ServerFrame::Unsubscribed { topic, code }) => {
                return Err(io::Error::other(format!("unsubscribed from {topic}: {code}")));
            }
            Some(ServerFrame::Error { code, message, .. }) => {
                return Err(io::Error::other(format!("error {code}: {message}")));
            }
            _ => {}
        }
    }
}

/// Reconciles `topic` from the last delivered seq to the journal's head.
pub async fn reconcile(o: &Options, stats: &Stats, rec: &Mutex<Record>, topic: &str) -> io::Result<()> {
    stats.reconciles.fetch_add(1, Ordering::Relaxed);
    let mut after = rec.lock().map(|r| r.last(topic)).unwrap_or(0);
    loop {
        let page = fetch_page(o.journal, topic, after, &o.token).await?;
        {
            let mut r = rec.lock().map_err(|_| io::Error::other("poisoned"))?;
            for seq in &page.seqs {
                match r.offer(topic, *seq) {
                    Ok(true) => _ = stats.recovered.fetch_add(1, Ordering::Relaxed),
                    Ok(false) => _ = stats.dropped_dups.fetch_add(1, Ordering::Relaxed),
                    // A hole in the journal itself (retention): skip to it, as the JS client
                    // does on `gone`; counted as lost by verify().
                    Err(()) => {
                        r.last.insert(topic.to_owned(), *seq - 1);
                        let _ = r.offer(topic, *seq);
                    }
                }
            }
        }
        if !page.more || page.next_after <= after {
            return Ok(());
        }
        after = page.next_after;
    }
}

/// One page of `GET /v1/topics/{t}/envelopes`: the seqs, `more`, `next_after`.
#[derive(Debug, Default)]
pub struct Page {
    pub seqs: Vec<u64>,
    pub more: bool,
    pub next_after: u64,
}

#[derive(serde::Deserialize)]
struct RawPage {
    envelopes: Vec<(u8, String, u64, String, u64, String, serde_bytes::ByteBuf)>,
    more: bool,
    next_after: u64,
}

/// Percent-encodes a topic for a path segment.
pub fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One raw HTTP/1.0 request; returns (status, body). Bounded by a 10 s timeout.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<(u16, Vec<u8>)> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await?;
        let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n", body.len());
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let mut out = req.into_bytes();
        out.extend_from_slice(body);
        s.write_all(&out).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        let end = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no response head"))?;
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no status"))?;
        Ok((status, buf[end + 4..].to_vec()))
    };
    tokio::time::timeout(Duration::from_secs(10), fut).await.map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

/// Fetches one page after `after` (MessagePack).
pub async fn fetch_page(journal: SocketAddr, topic: &str, after: u64, token: &str) -> io::Result<Page> {
    let path = format!("/v1/topics/{}/envelopes?after={after}", encode_segment(topic));
    let auth = format!("Bearer {token}");
    let (status, body) =
        http(journal, "GET", &path, &[("Authorization", &auth), ("Accept", "application/msgpack")], b"").await?;
    if status != 200 {
        return Err(io::Error::other(format!("reconcile {topic}: HTTP {status}: {}", String::from_utf8_lossy(&body))));
    }
    let p: RawPage = rmp_serde::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(Page { seqs: p.envelopes.iter().map(|e| e.2).collect(), more: p.more, next_after: p.next_after })
}

/// Every seq the journal holds for `topic`, in order.
pub async fn journal_seqs(journal: SocketAddr, topic: &str, token: &str) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let p = fetch_page(journal, topic, after, token).await?;
        out.extend(&p.seqs);
        if !p.more || p.next_after <= after {
            return Ok(out);
        }
        after = p.next_after;
    }
}

/// Compares what the application saw with the journal: every seq exactly once, in order.
pub fn verify(record: &Record, journal: &BTreeMap<String, Vec<u64>>) -> Verdict {
    let mut v = Verdict::default();
    for (topic, want) in journal {
        v.expected += want.len() as u64;
        let got = record.delivered.get(topic).map(Vec::as_slice).unwrap_or(&[]);
        let mut seen = std::collections::HashSet::new();
        let mut prev = 0;
        for s in got {
            if !seen.insert(*s) {
                v.duplicated += 1;
            }
            if *s <= prev {
                v.out_of_order += 1;
            }
            prev = *s;
        }
        v.lost += want.iter().filter(|s| !seen.contains(s)).count() as u64;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequencer_delivers_in_order_once_and_flags_jumps() {
        let mut r = Record::default();
        assert_eq!(r.offer("a", 1), Ok(true));
        assert_eq!(r.offer("a", 1), Ok(false));
        assert_eq!(r.offer("a", 3), Err(()));
        assert_eq!(r.offer("a", 2), Ok(true));
        assert_eq!(r.offer("a", 3), Ok(true));
        let j: BTreeMap<String, Vec<u64>> = [("a".to_owned(), vec![1, 2, 3, 4])].into();
        assert_eq!(verify(&r, &j), Verdict { lost: 1, duplicated: 0, out_of_order: 0, expected: 4 });
    }
}
