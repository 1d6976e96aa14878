//! Gives freed heap back to the kernel once a burst of connections has passed.
//!
//! A burst of handshakes (a reconnect storm, a deploy) holds hyper's read buffers and the
//! handshake futures of every connection in flight at once. glibc keeps that high-water mark
//! mapped after it is freed, because the long-lived session allocations made during the burst
//! are scattered through it: measured, 10,000 idle connections cost 3.0 KiB of RSS each with
//! 32 handshakes in flight and 5.0 KiB with 2,048 (bench/RESULTS.md, "idle"). `malloc_trim`
//! returns the free pages inside the heap too (madvise), not only its top.

/// Connections opened plus closed that make a burst worth a trim at the next sweep.
pub const BURST: u64 = 256;
/// Under steady churn (fewer than [`BURST`] a second), trim at most this often.
pub const QUIET_TRIM_SECS: u64 = 60;

/// Decides when to trim. A trim takes 0.1-3 ms for 10,000 connections (the event loop stalls
/// for it), so it follows bursts, and steady churn only once a minute.
#[derive(Debug, Default)]
pub struct Trimmer {
    /// Connections opened plus closed, as of the last trim.
    seen: u64,
    /// Second of the last trim.
    at: u64,
}

impl Trimmer {
    /// Whether to trim now, given the running count of opens plus closes and the clock.
    pub fn due(&mut self, churn: u64, now_secs: u64) -> bool {
        let since = churn - self.seen;
        let due = since >= BURST || (since > 0 && now_secs >= self.at + QUIET_TRIM_SECS);
        if due {
            self.seen = churn;
            self.at = now_secs;
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

    #[test]
    fn trims_after_a_burst_and_rarely_under_steady_churn() {
        let mut t = Trimmer { seen: 0, at: 100 };
        assert!(!t.due(0, 101), "nothing happened");
        assert!(!t.due(10, 102), "10 connections are not a burst");
        assert!(t.due(BURST + 10, 103), "a burst");
        assert!(!t.due(BURST + 10, 104), "nothing since");
        assert!(!t.due(BURST + 20, 110), "steady churn, soon after a trim");
        assert!(t.due(BURST + 30, 103 + QUIET_TRIM_SECS), "steady churn, a minute later");
        assert!(!t.due(BURST + 30, 104 + 2 * QUIET_TRIM_SECS), "no churn: nothing to return");
    }
}
