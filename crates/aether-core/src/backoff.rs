//! [`Backoff`]: exponential delays with a cap and jitter, the one retry schedule of every layer
//! (the JetStream store's stale-position retries, the runtime's conflict retries, projections'
//! redeliveries).

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

/// Delays that double from `base` up to `max`, with `jitter_percent` of each randomised (so
/// competing writers spread out).
///
/// ```
/// use std::time::Duration;
/// use aether_core::Backoff;
/// let b = Backoff::new(Duration::from_millis(10), Duration::from_millis(40));
/// assert_eq!(b.delay(1), Duration::from_millis(10)); // the first retry
/// assert_eq!(b.delay(2), Duration::from_millis(20));
/// assert_eq!(b.delay(9), Duration::from_millis(40)); // capped
/// let jittered = b.jitter_percent(50).delay(2);
/// assert!(jittered >= Duration::from_millis(10) && jittered <= Duration::from_millis(20));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Backoff {
    /// The delay before the first retry.
    pub base: Duration,
    /// The cap on one delay (at least `base`).
    pub max: Duration,
    /// The share of each delay, in percent (0-100), that is random.
    pub jitter_percent: u8,
}

impl Backoff {
    /// Doubling from `base` up to `max` (raised to `base` if lower), without jitter.
    pub const fn new(base: Duration, max: Duration) -> Self {
        let max = if max.as_nanos() < base.as_nanos() {
            base
        } else {
            max
        };
        Self {
            base,
            max,
            jitter_percent: 0,
        }
    }

    /// Sets the random share of each delay, in percent (capped at 100).
    #[must_use]
    pub fn jitter_percent(mut self, percent: u8) -> Self {
        self.jitter_percent = percent.min(100);
        self
    }

    /// The delay before retry `retry` (1 for the first): `base * 2^(retry - 1)`, capped at `max`,
    /// its jittered share drawn at random (the result lies in `[full * (100 - jitter) / 100, full]`).
    pub fn delay(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(20);
        let full = self.base.saturating_mul(1u32 << doublings).min(self.max);
        let jitter_share = u128::from(self.jitter_percent.min(100));
        let fixed = full.as_nanos() * (100 - jitter_share) / 100;
        let random_span = full.as_nanos() - fixed;
        let random = if random_span == 0 {
            0
        } else {
            u128::from(RandomState::new().hash_one(retry)) % random_span
        };
        Duration::from_nanos(u64::try_from(fixed + random).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_is_capped_and_jitters_within_bounds() {
        let b =
            Backoff::new(Duration::from_millis(10), Duration::from_millis(40)).jitter_percent(50);
        for _ in 0..100 {
            let d = b.delay(2);
            assert!(d >= Duration::from_millis(10) && d <= Duration::from_millis(20));
            let d = b.delay(30);
            assert!(d >= Duration::from_millis(20) && d <= Duration::from_millis(40));
        }
        assert_eq!(
            Backoff::new(Duration::from_secs(1), Duration::ZERO).max,
            Duration::from_secs(1)
        );
        let d = b.delay(0); // treated as the first retry
        assert!(d >= Duration::from_millis(5) && d <= Duration::from_millis(10));
    }
}
