//! Gives freed heap back to the kernel once a burst of connections has passed.
//!
//! A burst of handshakes (a reconnect storm, a deploy) holds hyper's read buffers and the
//! handshake futures of every connection in flight at once. glibc keeps that high-water mark
//! mapped after it is freed, because the long-lived session allocations made during the burst
//! are scattered through it: measured, 10,000 idle connections cost 3.0 KiB of RSS each with
//! 32 handshakes in flight and 5.0 KiB with 2,048 (bench/RESULTS.md, "idle"). `malloc_trim`
//! returns the free pages inside the heap too (madvise), not only its top.

use std::cell::Cell;

/// Connections opened plus closed that make a burst worth a trim at the next sweep.
pub const BURST: u64 = 256;
/// Under steady churn (fewer than [`BURST`] a second), trim at most this often.
pub const QUIET_TRIM_SECS: u64 = 60;

/// Counts connections opened and closed, and decides when to trim. A trim takes 0.1-3 ms for
/// 10,000 connections (the event loop stalls for it), so it follows bursts, and steady churn
/// only once a minute.
#[derive(Debug, Default)]
pub struct Trimmer {
    /// Connections opened plus closed so far.
    churn: Cell<u64>,
    /// `churn` as of the last trim.
    seen: Cell<u64>,
    /// Second of the last trim.
    at: Cell<u64>,
}

impl Trimmer {
    /// One connection opened or closed.
    pub fn note(&self) {
        self.churn.set(self.churn.get() + 1);
    }

    /// Whether to trim now (and if so, counts it as done).
    pub fn due(&self, now_secs: u64) -> bool {
        let since = self.churn.get() - self.seen.get();
        let due = since >= BURST || (since > 0 && now_secs >= self.at.get() + QUIET_TRIM_SECS);
        if due {
            self.seen.set(self.churn.get());
            self.at.set(now_secs);
        }
        due
    }
}

/// Returns free heap pages to the kernel (glibc; a no-op elsewhere).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::{BURST, QUIET_TRIM_SECS, Trimmer};

    /// A trimmer that last trimmed at second 100, having seen `churn` connections come and go.
    fn at_100(churn: u64) -> Trimmer {
        let t = Trimmer::default();
        t.at.set(100);
        (0..churn).for_each(|_| t.note());
        t
    }

    fn add(t: &Trimmer, n: u64) {
        (0..n).for_each(|_| t.note());
    }

    #[test]
    fn trims_after_a_burst_and_rarely_under_steady_churn() {
        let t = at_100(0);
        assert!(!t.due(101), "nothing happened");
        add(&t, 10);
        assert!(!t.due(102), "10 connections are not a burst");
        add(&t, BURST);
        assert!(t.due(103), "a burst");
        assert!(!t.due(104), "nothing since");
        add(&t, 10);
        assert!(!t.due(110), "steady churn, soon after a trim");
        add(&t, 10);
        assert!(t.due(103 + QUIET_TRIM_SECS), "steady churn, a minute later");
        assert!(!t.due(104 + 2 * QUIET_TRIM_SECS), "no churn: nothing to return");
    }
}
