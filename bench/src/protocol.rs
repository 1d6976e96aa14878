//! The line protocol between the parent (`fleet.rs`) and its holder processes (`hold.rs`).
//!
//! One line per message, plain ASCII, so a person can run `switchboard-bench hold ...` by
//! hand and type at it. Holder -> parent (stdout):
//!
//! - `armed`: tokens are minted, nothing is connected yet;
//! - `ready <secs>`: every client of this holder is connected and subscribed (`secs` since `go`);
//! - `tick n=<round> key=value ...`: absolute counters (see [`Tick`]), every `--tick-ms`
//!   from `go`; round `n` is taken at `go + n * tick`;
//! - at `stop`: `final n=... key=value ...` (a last tick, taken at `stop`), then
//!   `hist <value>:<count>,...`, the latency histogram (see [`encode_hist`]);
//! - `error <text>`: the holder failed (it exits nonzero right after).
//!
//! Parent -> holder (stdin): `go`, then `stop` (stdin EOF counts as `stop`).
//!
//! The histogram travels as its recorded buckets (highest equivalent value and count) rather
//! than hdrhistogram's V2 serializer: that needs the crate's `serialization` feature, which
//! pulls flate2, nom and base64 into the lock file for one line of text; bucket values merge
//! exactly at the histogram's precision, which is all the parent needs.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use hdrhistogram::Histogram;

/// Latency histogram bounds: 1 us to 60 s in ns, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    // The bounds are constants that satisfy low >= 1, high >= 2 * low and sigfig <= 5, the
    // only conditions under which `new_with_bounds` fails.
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("constant histogram bounds are valid")
}

/// One holder's counters at one round, or a sum over holders.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tick {
    /// The round: taken `n * tick` after `go`.
    pub n: u64,
    /// Envelope frames received, all connections, since `go`.
    pub envelopes: u64,
    /// Gap frames (slow-consumer drops) received.
    pub gaps: u64,
    /// Connections that received an envelope since they last (re)subscribed.
    pub live: u64,
    /// Connections open and subscribed (the subscribe was answered `ok`), envelope or not.
    pub subscribed: u64,
    /// Connections that received exactly the expected number of envelopes (`--expect`).
    pub complete: u64,
    /// Successful reconnects (storm).
    pub reconnects: u64,
    /// Wall-clock ns of the last envelope received (a sum takes the latest).
    pub last_ns: u64,
    /// Latency quantiles so far, us (a sum takes the worst holder: for the progress line only).
    pub p50_us: u64,
    pub p99_us: u64,
    /// CPU time (user + system) the holder used so far, ms (a sum adds them up): shows
    /// whether the holders, not the router, were the limit.
    pub cpu_ms: u64,
    /// Failed (re)connect attempts by kind (`refused`, `timeout`, `http_503`, ...).
    pub fails: BTreeMap<String, u64>,
}

impl Tick {
    pub fn to_line(&self) -> String {
        let mut s = format!(
            "tick n={} env={} gaps={} live={} sub={} complete={} rec={} last_ns={} p50={} p99={} cpu_ms={}",
            self.n,
            self.envelopes,
            self.gaps,
            self.live,
            self.subscribed,
            self.complete,
            self.reconnects,
            self.last_ns,
            self.p50_us,
            self.p99_us,
            self.cpu_ms
        );
        for (k, v) in &self.fails {
            s.push_str(&format!(" fail:{k}={v}"));
        }
        s
    }

    /// Parses a `tick ...` (or `final ...`) line; unknown keys are ignored (an older parent,
    /// a newer holder).
    pub fn parse(line: &str) -> anyhow::Result<Self> {
        let mut words = line.split_whitespace();
        if !matches!(words.next(), Some("tick" | "final")) {
            bail!("not a tick line: {line:?}");
        }
        let mut t = Tick::default();
        for kv in words {
            let (k, v) = kv.split_once('=').with_context(|| format!("bad tick field {kv:?}"))?;
            let v: u64 = v.parse().with_context(|| format!("bad tick value {kv:?}"))?;
            match k {
                "n" => t.n = v,
                "env" => t.envelopes = v,
                "gaps" => t.gaps = v,
                "live" => t.live = v,
                "sub" => t.subscribed = v,
                "complete" => t.complete = v,
                "rec" => t.reconnects = v,
                "last_ns" => t.last_ns = v,
                "p50" => t.p50_us = v,
                "p99" => t.p99_us = v,
                "cpu_ms" => t.cpu_ms = v,
                _ => {
                    if let Some(kind) = k.strip_prefix("fail:") {
                        t.fails.insert(kind.to_owned(), v);
                    }
                }
            }
        }
        Ok(t)
    }

    /// Adds another holder's counters (same round).
    pub fn add(&mut self, o: &Tick) {
        self.n = self.n.max(o.n);
        self.envelopes += o.envelopes;
        self.gaps += o.gaps;
        self.live += o.live;
        self.subscribed += o.subscribed;
        self.complete += o.complete;
        self.reconnects += o.reconnects;
        self.last_ns = self.last_ns.max(o.last_ns);
        self.p50_us = self.p50_us.max(o.p50_us);
        self.p99_us = self.p99_us.max(o.p99_us);
        self.cpu_ms += o.cpu_ms;
        for (k, v) in &o.fails {
            *self.fails.entry(k.clone()).or_default() += v;
        }
    }

    pub fn failed(&self) -> u64 {
        self.fails.values().sum()
    }
}

/// `hist v:c,v:c,...` (recorded buckets only; `hist` alone when empty).
pub fn encode_hist(h: &Histogram<u64>) -> String {
    let mut s = String::from("hist ");
    for (i, v) in h.iter_recorded().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!("{}:{}", v.value_iterated_to(), v.count_at_value()));
    }
    s.trim_end().to_owned()
}

/// Adds a `hist ...` line's buckets to `into`.
pub fn merge_hist(line: &str, into: &mut Histogram<u64>) -> anyhow::Result<()> {
    let body = line.strip_prefix("hist").with_context(|| format!("not a hist line: {line:.40?}"))?.trim();
    for pair in body.split(',').filter(|p| !p.is_empty()) {
        let (v, c) = pair.split_once(':').with_context(|| format!("bad hist bucket {pair:?}"))?;
        let (v, c): (u64, u64) = (v.parse()?, c.parse()?);
        // Values were recorded into a histogram with the same bounds: in range.
        into.record_n(v.clamp(into.low(), into.high()), c)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_round_trips_and_sums() {
        let mut a = Tick {
            n: 3,
            envelopes: 10,
            live: 2,
            subscribed: 4,
            last_ns: 5,
            p99_us: 7,
            cpu_ms: 8,
            ..Default::default()
        };
        a.fails.insert("http_503".into(), 4);
        assert_eq!(Tick::parse(&a.to_line()).unwrap(), a);
        let mut b = Tick { n: 3, envelopes: 1, live: 1, last_ns: 9, p99_us: 2, ..Default::default() };
        b.fails.insert("refused".into(), 1);
        b.add(&a);
        assert_eq!((b.envelopes, b.live, b.last_ns, b.p99_us, b.failed()), (11, 3, 9, 7, 5));
    }

    #[test]
    fn hist_merges_exactly_at_its_precision() {
        let mut h = new_hist();
        for v in [1_500u64, 20_000, 20_001, 3_000_000] {
            h.record(v).unwrap();
        }
        let mut m = new_hist();
        merge_hist(&encode_hist(&h), &mut m).unwrap();
        merge_hist("hist", &mut m).unwrap();
        assert_eq!(m.len(), 4);
        for q in [0.25, 0.5, 0.75, 1.0] {
            assert_eq!(m.value_at_quantile(q), h.value_at_quantile(q));
        }
    }
}
