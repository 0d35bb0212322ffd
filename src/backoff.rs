//! Exponential backoff with full jitter: the one retry schedule used wherever tether waits
//! before trying again (a session's circuit breaker cooldown, the client's reconnects).
//!
//! Attempt `n` (from 0) waits a uniformly random time in `[0, min(max, base * factor^n)]`:
//! "full jitter" from Marc Brooker's "Exponential Backoff And Jitter" (AWS Architecture Blog,
//! 2015), which spreads clients that failed together instead of letting them retry in waves.
//! Each `Backoff` has its own seeded generator (fastrand's wyrand), so a fixed seed gives a
//! fixed schedule in tests.

use std::time::Duration;

/// A retry schedule: exponential growth, capped, with full jitter and an optional attempt limit.
///
/// ```
/// use std::time::Duration;
/// use tether::Backoff;
///
/// let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10))
///     .with_max_attempts(3)
///     .with_seed(42);
/// let waits: Vec<Duration> = std::iter::from_fn(|| backoff.next_delay()).collect();
/// assert_eq!(waits.len(), 3); // then it gives up
/// assert!(waits[0] <= Duration::from_millis(100));
/// assert!(waits[2] <= Duration::from_millis(400));
/// backoff.reset();
/// assert!(backoff.next_delay().is_some());
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    factor: u32,
    max: Duration,
    max_attempts: Option<u32>,
    attempt: u32,
    rng: fastrand::Rng,
    /// Whether [`with_seed`](Self::with_seed) fixed the seed.
    seeded: bool,
}

impl Backoff {
    /// Starts at up to `base`, doubling each attempt up to `max`, with no attempt limit and a
    /// seed taken from the process's random state.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            factor: 2,
            max: max.max(base),
            max_attempts: None,
            attempt: 0,
            rng: fastrand::Rng::new(),
            seeded: false,
        }
    }

    /// Grows by `factor` each attempt instead of 2 (at least 1).
    pub fn with_factor(mut self, factor: u32) -> Self {
        self.factor = factor.max(1);
        self
    }

    /// Gives up after `n` attempts: [`next_delay`](Self::next_delay) returns `None` then.
    pub fn with_max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    /// A fixed seed, for a reproducible schedule.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = fastrand::Rng::with_seed(seed);
        self.seeded = true;
        self
    }

    /// A copy for one more user of this schedule (a client's connection task): with a seed of
    /// its own, unless [`with_seed`](Self::with_seed) fixed one, so that clients built from
    /// one configuration do not retry in lockstep.
    #[cfg(all(feature = "client", not(loom)))]
    pub(crate) fn reseeded(&self) -> Self {
        let mut copy = self.clone();
        if !self.seeded {
            copy.rng = fastrand::Rng::new();
        }
        copy
    }

    /// The wait before the next attempt, or `None` once the attempt limit is reached.
    pub fn next_delay(&mut self) -> Option<Duration> {
        if self.max_attempts.is_some_and(|m| self.attempt >= m) {
            return None;
        }
        let ceiling = self.ceiling(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Some(Duration::from_nanos(self.rng.u64(..=nanos)))
    }

    /// The upper bound of attempt `n`'s wait: `min(max, base * factor^n)`.
    pub fn ceiling(&self, n: u32) -> Duration {
        let grown = u32::try_from(u64::from(self.factor).saturating_pow(n))
            .ok()
            .and_then(|f| self.base.checked_mul(f));
        grown.map_or(self.max, |d| d.min(self.max))
    }

    /// Attempts made since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts over (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_to_the_cap_with_full_jitter() {
        let mut b =
            Backoff::new(Duration::from_millis(10), Duration::from_millis(1000)).with_seed(7);
        let ceilings: Vec<u128> = (0..9).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        let mut below_half = 0;
        for n in 0..2000u32 {
            let d = b.next_delay().unwrap();
            assert!(d <= b.ceiling(n.min(20)));
            if d < b.ceiling(n.min(20)) / 2 {
                below_half += 1;
            }
        }
        // Full jitter: about half of the waits fall in the lower half of their range.
        assert!((800..1200).contains(&below_half), "{below_half}");
    }

    #[test]
    fn a_seed_fixes_the_schedule_and_attempts_are_limited() {
        let make = || {
            Backoff::new(Duration::from_millis(5), Duration::from_secs(1))
                .with_seed(99)
                .with_max_attempts(4)
        };
        let (mut a, mut b) = (make(), make());
        let xs: Vec<_> = std::iter::from_fn(|| a.next_delay()).collect();
        let ys: Vec<_> = std::iter::from_fn(|| b.next_delay()).collect();
        assert_eq!(xs, ys);
        assert_eq!(xs.len(), 4);
        assert_eq!(a.attempts(), 4);
        a.reset();
        assert_eq!(a.attempts(), 0);
    }

    #[test]
    fn huge_attempt_counts_saturate_at_the_cap() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60)).with_factor(10);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(60));
    }
}
