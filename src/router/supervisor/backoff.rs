//! Crash-loop backoff: how long the supervisor waits before respawning a child that died.
//!
//! One [`Backoff`] per child slot, owned by the supervisor. The clock is injected (every call
//! takes `now`), so the schedule is tested without sleeping.
//!
//! Invariant: `failures` counts the deaths since the child last stayed up for
//! [`Backoff::STABLE_AFTER`]; the delay is the schedule's entry at that count, capped at the
//! last entry.

use std::time::{Duration, Instant};

/// Respawn delays for one child slot.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// Deaths in a row, each after less than `STABLE_AFTER` of uptime.
    failures: u32,
}

impl Backoff {
    /// The delay before the n-th respawn in a row (the first is immediate).
    pub const SCHEDULE: [Duration; 6] = [
        Duration::ZERO,
        Duration::from_millis(100),
        Duration::from_millis(500),
        Duration::from_secs(1),
        Duration::from_secs(2),
        Duration::from_secs(5),
    ];
    /// A child that stayed up this long is healthy again: its next death respawns at once.
    pub const STABLE_AFTER: Duration = Duration::from_secs(30);

    pub fn new() -> Self {
        Self { failures: 0 }
    }

    /// A child started at `started` died at `now`: the delay before it is respawned.
    pub fn on_exit(&mut self, started: Instant, now: Instant) -> Duration {
        if now.saturating_duration_since(started) >= Self::STABLE_AFTER {
            self.failures = 0;
        }
        let i = (self.failures as usize).min(Self::SCHEDULE.len() - 1);
        self.failures = self.failures.saturating_add(1);
        Self::SCHEDULE[i]
    }

    /// Deaths in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn crash_loop_slows_down_then_caps() {
        let t0 = Instant::now();
        let mut b = Backoff::new();
        let mut now = t0;
        let mut delays = vec![];
        for _ in 0..8 {
            // Each respawned child dies 10 ms after it started.
            let started = now;
            now = started + MS(10);
            let d = b.on_exit(started, now);
            delays.push(d.as_millis());
            now += d;
        }
        assert_eq!(delays, [0, 100, 500, 1000, 2000, 5000, 5000, 5000]);
        assert_eq!(b.failures(), 8);
    }

    #[test]
    fn staying_up_resets_the_schedule() {
        let t0 = Instant::now();
        let mut b = Backoff::new();
        assert_eq!(b.on_exit(t0, t0 + MS(1)), Duration::ZERO);
        assert_eq!(b.on_exit(t0, t0 + MS(2)), MS(100));
        assert_eq!(b.on_exit(t0, t0 + MS(3)), MS(500));
        // Up for just under the threshold: still a crash loop.
        let s = t0 + MS(10);
        assert_eq!(b.on_exit(s, s + Backoff::STABLE_AFTER - MS(1)), MS(1000));
        // Up for the threshold: healthy again, the next death respawns at once.
        let s = t0 + Duration::from_secs(100);
        assert_eq!(b.on_exit(s, s + Backoff::STABLE_AFTER), Duration::ZERO);
        let s2 = s + Backoff::STABLE_AFTER;
        assert_eq!(b.on_exit(s2, s2 + MS(5)), MS(100));
    }
}
