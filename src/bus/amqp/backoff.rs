//! Reconnect delays: exponential with full jitter, capped.
//!
//! Used by a worker's consumer between connection attempts. Full jitter (a uniform delay in
//! `[0, min(cap, base * 2^attempt)]`) spreads the reconnects of every worker on every host
//! after a broker restart, instead of having them all arrive in waves. Pure: the randomness is
//! passed in, so the bounds are tested without a clock or an RNG.
//!
//! Invariant: every delay is at most `cap`; the ceiling doubles per attempt until it reaches
//! `cap` and never overflows, however many attempts fail.

use std::time::Duration;

/// First ceiling: the first retry after a loss waits at most this long.
pub const BASE: Duration = Duration::from_millis(100);
/// Longest wait between two attempts.
pub const CAP: Duration = Duration::from_secs(10);

/// The state of one reconnect sequence.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    /// Failed attempts since the last [`Backoff::reset`].
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(BASE, CAP)
    }
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap, attempt: 0 }
    }

    /// The ceiling of the next delay: `min(cap, base * 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        // 2^31 * base is far beyond any cap; saturate instead of overflowing.
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next delay, given `random`, a uniform sample over all of `u64`; advances the attempt.
    pub fn next_delay(&mut self, random: u64) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        // Scale in u128 (both factors below 2^64, so no overflow): random = u64::MAX gives the
        // ceiling itself. Ceilings beyond 2^64 ns (584 years) are clipped there.
        let ceiling_ns = ceiling.as_nanos().min(u64::MAX as u128);
        Duration::from_nanos((ceiling_ns * random as u128 / u64::MAX as u128) as u64)
    }

    /// The next delay with randomness from the OS (falls back to the ceiling's half when the
    /// OS has none, which only loses the jitter).
    pub fn next_random(&mut self) -> Duration {
        self.next_delay(getrandom::u64().unwrap_or(u64::MAX / 2))
    }

    /// Starts over after a connection that stayed up.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_then_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let ceilings: Vec<u64> = (0..10)
            .map(|_| {
                let c = b.ceiling().as_millis() as u64;
                b.next_delay(0);
                c
            })
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]);
    }

    #[test]
    fn full_jitter_spans_zero_to_ceiling() {
        let mut b = Backoff::default();
        assert_eq!(b.clone().next_delay(0), Duration::ZERO);
        assert_eq!(b.clone().next_delay(u64::MAX), BASE);
        let half = b.clone().next_delay(u64::MAX / 2);
        assert!(half <= BASE / 2 && half >= BASE / 2 - Duration::from_nanos(1), "{half:?}");
        for _ in 0..5 {
            b.next_delay(1);
        }
        // attempt 5: ceiling 3.2 s
        assert_eq!(b.clone().next_delay(u64::MAX), Duration::from_millis(3200));
        let quarter = b.clone().next_delay(u64::MAX / 4);
        assert!(quarter.abs_diff(Duration::from_millis(800)) <= Duration::from_nanos(1), "{quarter:?}");
    }

    #[test]
    fn never_above_cap_or_overflowing() {
        let mut b = Backoff::default();
        for i in 0..10_000u64 {
            let d = b.next_delay(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            assert!(d <= CAP, "{d:?} at attempt {}", b.attempt());
        }
        assert_eq!(b.ceiling(), CAP);
        let mut huge = Backoff::new(Duration::from_secs(u64::MAX / 4), Duration::MAX);
        for _ in 0..100 {
            huge.next_delay(u64::MAX);
        }
        assert_eq!(huge.ceiling(), Duration::MAX, "saturates instead of overflowing");
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::default();
        for _ in 0..20 {
            b.next_delay(7);
        }
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert_eq!(b.ceiling(), BASE);
        let d = b.next_random();
        assert!(d <= BASE);
    }
}
