//! Retention: removes the oldest envelopes of each topic beyond a count or an age.
//!
//! Role: runs inside the outbox publisher's loop, under its lease, so one process per
//! deployment prunes. Work comes in small steps (a page of topics, each topic pruned in
//! transactions of at most `retention_batch` envelopes) so appends, which wait for the same
//! write lock (SQLite) or counter row (PostgreSQL), are never held back for long.
//!
//! Invariants: a topic is pruned from its oldest seq up, and `pruned_through` records the cut,
//! which is what the API's 410 answer reads; an envelope still in the outbox is never pruned,
//! and while the outbox holds a backlog (the bus is down) retention waits.

use std::time::{Duration, Instant};

use super::store::{Lease, RetentionRule, StoreError, now_ms};
use crate::config::JournalConfig;

/// Topics looked at per step.
const PAGE: usize = 200;
/// Above this many pending envelopes, a pass is skipped: the bus is behind, and the
/// per-topic outbox check would scan a large table.
const BACKLOG_LIMIT: u64 = 10_000;

/// What retention keeps, from `[journal]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Envelopes kept per topic (0: no count limit).
    pub max_count: u64,
    /// Age beyond which envelopes are removed (zero: no age limit).
    pub max_age: Duration,
    /// Most envelopes deleted per transaction.
    pub batch: u64,
    /// Pause between two passes over every topic.
    pub interval: Duration,
}

impl RetentionPolicy {
    /// The configured policy, or `None` when nothing is ever pruned.
    pub fn from_config(cfg: &JournalConfig) -> Option<Self> {
        (cfg.retention_max_count > 0 || cfg.retention_max_age_secs > 0).then(|| Self {
            max_count: cfg.retention_max_count,
            max_age: Duration::from_secs(cfg.retention_max_age_secs),
            batch: cfg.retention_batch,
            interval: Duration::from_secs(cfg.retention_interval_secs),
        })
    }

    fn rule(&self, now_ms: u64) -> RetentionRule {
        let cutoff_ts =
            if self.max_age.is_zero() { 0 } else { now_ms.saturating_sub(self.max_age.as_millis() as u64).max(1) };
        RetentionRule { max_count: self.max_count, cutoff_ts, batch: self.batch }
    }
}

/// A retention pass in progress: where it is and when the next one starts.
#[derive(Debug)]
pub struct Retention {
    policy: RetentionPolicy,
    /// Last topic handled in the current pass ("" before the first).
    cursor: String,
    /// When the next step may run.
    next: Instant,
}

impl Retention {
    pub fn new(policy: RetentionPolicy) -> Self {
        Self { policy, cursor: String::new(), next: Instant::now() }
    }

    /// When the next step is due.
    pub fn next_due(&self) -> Instant {
        self.next
    }

    /// Runs one step: one page of topics. Returns the envelopes removed.
    pub async fn step(&mut self, lease: &mut Lease) -> Result<u64, StoreError> {
        if lease.outbox_len().await? > BACKLOG_LIMIT {
            tracing::info!("retention waits: the outbox has a backlog");
            self.finish_pass();
            return Ok(0);
        }
        let rows = lease.topics_page(&self.cursor, PAGE).await?;
        let rule = self.policy.rule(now_ms());
        let mut removed = 0;
        for row in rows.iter().filter(|r| rule.wants(r)) {
            loop {
                let n = lease.prune_topic(&row.topic, rule).await?;
                removed += n;
                if n < rule.batch {
                    break;
                }
                // Let appends that queued behind this transaction go first.
                tokio::task::yield_now().await;
            }
        }
        if removed > 0 {
            metrics::counter!(crate::metrics::JOURNAL_PRUNED).increment(removed);
        }
        match rows.last() {
            Some(last) if rows.len() == PAGE => self.cursor = last.topic.clone(),
            _ => self.finish_pass(),
        }
        Ok(removed)
    }

    fn finish_pass(&mut self) {
        self.cursor.clear();
        self.next = Instant::now() + self.policy.interval;
    }
}

#[cfg(test)]
mod tests {
    use super::super::store::{TopicRow, retention_cut};
    use super::*;

    fn row(last: u64, pruned: u64, oldest_ts: Option<u64>) -> TopicRow {
        TopicRow { topic: "t".into(), last_seq: last, pruned_through: pruned, oldest_ts }
    }

    #[test]
    fn journal_retention_rule_and_cut() {
        let p = RetentionPolicy { max_count: 10, max_age: Duration::ZERO, batch: 4, interval: Duration::from_secs(1) };
        let rule = p.rule(1_000_000);
        assert_eq!(rule.cutoff_ts, 0);
        assert!(!rule.wants(&row(10, 0, Some(1))));
        assert!(rule.wants(&row(11, 0, Some(1))));
        // By count: 25 appended, keep 10 -> cut at 15, in batches of 4 from the last cut.
        assert_eq!(retention_cut(&rule, 25, 0, None, None, None), Some(4));
        assert_eq!(retention_cut(&rule, 25, 12, None, None, None), Some(15));
        assert_eq!(retention_cut(&rule, 25, 15, None, None, None), None);
        // Never past what the outbox still holds.
        assert_eq!(retention_cut(&rule, 25, 12, None, None, Some(14)), Some(13));
        assert_eq!(retention_cut(&rule, 25, 12, None, None, Some(13)), None);

        let aged = RetentionPolicy { max_count: 0, max_age: Duration::from_secs(60), ..p };
        let rule = aged.rule(1_000_000);
        assert_eq!(rule.cutoff_ts, 940_000);
        assert!(rule.wants(&row(3, 0, Some(939_999))));
        assert!(!rule.wants(&row(3, 0, Some(940_000))));
        assert!(!rule.wants(&row(3, 3, None)));
        // The first young envelope is seq 3: cut at 2. None young in the batch: the batch.
        assert_eq!(retention_cut(&rule, 9, 0, Some(3), Some(4), None), Some(2));
        assert_eq!(retention_cut(&rule, 9, 0, None, Some(4), None), Some(4));
        assert_eq!(retention_cut(&rule, 9, 0, Some(1), Some(4), None), None);
    }
}
