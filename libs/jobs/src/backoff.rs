//! How long a failed job waits before its next attempt.

use std::{
    hash::{BuildHasher as _, Hasher as _},
    time::Duration,
};

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
pub fn with_jitter(delay: Duration) -> Duration {
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
    use super::*;

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
