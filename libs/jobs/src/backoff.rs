//! How long to wait before trying again: [`Backoff`], the one exponential
//! backoff of the workspace (job types, the engine's own retries of its
//! store, the apps' retries of their dependencies, the launcher's
//! restarts), and [`default_backoff`], the engine's curve for job attempts.

use std::{
    hash::{BuildHasher as _, Hasher as _},
    time::Duration,
};

/// `first`, then `factor` times longer per attempt, never above `max`,
/// plus up to 10% jitter (unless turned off) so failures that happened
/// together do not retry in lockstep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    first: Duration,
    factor: f64,
    max: Duration,
    jitter: bool,
}

impl Backoff {
    /// Doubling from `first` up to `max`, with jitter.
    pub const fn exponential(first: Duration, max: Duration) -> Self {
        Self {
            first,
            factor: 2.0,
            max,
            jitter: true,
        }
    }

    /// Grows by `factor` per attempt instead of doubling.
    pub const fn with_factor(mut self, factor: f64) -> Self {
        self.factor = factor;
        self
    }

    /// Exact delays, for a single waiter (nothing to spread out).
    pub const fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    /// The wait before retry `attempt` (1 is the first retry; 0 counts as 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let max = self.max.as_secs_f64();
        let seconds = (self.first.as_secs_f64() * self.factor.powi(exponent)).min(max);
        let delay = Duration::from_secs_f64(if seconds.is_finite() { seconds } else { max });
        if self.jitter {
            with_jitter(delay).min(self.max.max(delay))
        } else {
            delay
        }
    }
}

/// Exponential backoff with jitter, Oban's curve: `attempt^4 + 15s`, plus
/// up to 10% jitter so a burst of failures does not retry in lockstep.
/// Capped at one day.
pub fn default_backoff(attempt: i32) -> Duration {
    let attempt = f64::from(attempt.clamp(1, 100));
    with_jitter(Duration::from_secs_f64(
        (attempt.powi(4) + 15.0).min(86_400.0),
    ))
}

/// `delay` plus up to 10% at random, for job types with their own curve.
pub(crate) fn with_jitter(delay: Duration) -> Duration {
    delay.mul_f64(1.0 + 0.1 * unit_random())
}

/// A number in [0, 1) from the standard library's randomly keyed hasher:
/// enough for jitter without a random-number crate.
fn unit_random() -> f64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Each delay is the exponential value capped at `max`, and jitter
        /// only ever adds up to 10% without passing `max`.
        #[test]
        fn delays_grow_by_the_factor_and_stay_capped(
            first_ms in 1u64..5_000,
            max_ms in 1u64..600_000,
            factor in 1.0f64..8.0,
            attempt in 0u32..200,
        ) {
            let (first, max) = (Duration::from_millis(first_ms), Duration::from_millis(max_ms));
            let exact = Backoff::exponential(first, max).with_factor(factor).without_jitter();
            let expected = (first.as_secs_f64() * factor.powi(attempt.saturating_sub(1) as i32))
                .min(max.as_secs_f64());
            let delay = exact.delay(attempt).as_secs_f64();
            prop_assert!((delay - expected).abs() <= 1e-9 * expected.max(1.0), "{delay} vs {expected}");
            prop_assert!(exact.delay(attempt + 1) >= exact.delay(attempt));
            let jittered = Backoff::exponential(first, max).with_factor(factor).delay(attempt);
            prop_assert!(jittered.as_secs_f64() >= delay - 1e-9);
            prop_assert!(jittered.as_secs_f64() <= (delay * 1.1).min(max.as_secs_f64().max(delay)) + 1e-9);
        }
    }

    #[test]
    fn backoff_grows_with_attempts_within_jitter() {
        for attempt in 1..=20 {
            let base = (f64::from(attempt).powi(4) + 15.0).min(86_400.0);
            let delay = default_backoff(attempt).as_secs_f64();
            assert!(
                delay >= base && delay <= base * 1.1,
                "attempt {attempt}: {delay}"
            );
        }
    }

    #[test]
    fn jitter_varies() {
        let delays: std::collections::HashSet<_> =
            (0..20).map(|_| default_backoff(3).as_micros()).collect();
        assert!(delays.len() > 1);
    }
}
