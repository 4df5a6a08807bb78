//! A keyed GCRA (generic cell rate algorithm) limiter: per key, one
//! "theoretical arrival time", so each check is a map lookup and two
//! additions. Equivalent to a token bucket of `quota` requests refilled
//! evenly over `window`, and gives exactly what the IETF `RateLimit`
//! headers report: the quota left and the time until it is whole again.
//! Written here rather than taken from `governor` (9 more crates, and its
//! remaining-capacity report needs a middleware of its own).

use std::{
    collections::HashMap,
    hash::Hash,
    sync::Mutex,
    time::{Duration, Instant},
};

/// `quota` requests per `window`, with bursts of up to `quota`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Requests per window.
    pub quota: u32,
    /// The window.
    pub window: Duration,
}

impl Quota {
    /// `quota` requests per minute.
    pub const fn per_minute(quota: u32) -> Self {
        Self {
            quota,
            window: Duration::from_secs(60),
        }
    }

    /// The time one request uses up.
    fn interval(self) -> Duration {
        self.window / self.quota.max(1)
    }
}

/// What one check decided, with what the `RateLimit` headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go ahead (it was counted if so).
    pub allowed: bool,
    /// Requests left right now.
    pub remaining: u32,
    /// Until the quota is whole again.
    pub reset: Duration,
    /// When refused: until one request would be allowed.
    pub retry_after: Duration,
}

/// The most keys a limiter holds before it forgets the idle ones early.
const MAX_KEYS: usize = 100_000;

/// One quota applied per key.
#[derive(Debug)]
pub struct Limiter<K> {
    quota: Quota,
    arrivals: Mutex<HashMap<K, Instant>>,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    /// A limiter of `quota` per key.
    pub fn new(quota: Quota) -> Self {
        Self {
            quota,
            arrivals: Mutex::new(HashMap::new()),
        }
    }

    /// The quota each key gets.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// Counts a request of `key` at `now` if the quota allows it.
    pub fn check(&self, key: &K, now: Instant) -> Decision {
        self.decide(key, now, true)
    }

    /// Whether a request of `key` would be allowed, without counting it
    /// (for limits that count only failures).
    pub fn peek(&self, key: &K, now: Instant) -> Decision {
        self.decide(key, now, false)
    }

    fn decide(&self, key: &K, now: Instant, count: bool) -> Decision {
        let interval = self.quota.interval();
        let capacity = interval * self.quota.quota;
        let mut arrivals = self
            .arrivals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tat = arrivals.get(key).copied().unwrap_or(now).max(now);
        let next = tat + interval;
        // Allowed while the new arrival time stays within one full quota
        // of now.
        let allowed = next.saturating_duration_since(now) <= capacity;
        if !allowed {
            return Decision {
                allowed,
                remaining: 0,
                reset: tat.saturating_duration_since(now),
                retry_after: next.saturating_duration_since(now) - capacity,
            };
        }
        let after = if count { next } else { tat };
        if count {
            if arrivals.len() >= MAX_KEYS && !arrivals.contains_key(key) {
                arrivals.retain(|_, at| *at > now);
            }
            arrivals.insert(key.clone(), next);
        }
        let used = after.saturating_duration_since(now);
        let left = capacity.saturating_sub(used);
        Decision {
            allowed,
            remaining: u32::try_from(left.as_nanos() / interval.as_nanos().max(1))
                .unwrap_or(u32::MAX),
            reset: used,
            retry_after: Duration::ZERO,
        }
    }

    /// Forgets keys whose quota is whole again (they behave as new), so
    /// memory follows the active keys; run once a minute.
    pub fn forget_idle(&self, now: Instant) {
        self.arrivals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|_, at| *at > now);
    }

    /// Keys held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.arrivals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn quota(n: u32, secs: u64) -> Quota {
        Quota {
            quota: n,
            window: Duration::from_secs(secs),
        }
    }

    #[test]
    fn a_burst_of_the_quota_passes_then_one_per_interval() {
        let limiter = Limiter::new(quota(5, 10));
        let start = Instant::now();
        let remaining: Vec<u32> = (0..5)
            .map(|_| limiter.check(&"k", start))
            .map(|d| {
                assert!(d.allowed);
                d.remaining
            })
            .collect();
        assert_eq!(remaining, [4, 3, 2, 1, 0]);
        let refused = limiter.check(&"k", start);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Duration::from_secs(2));
        assert_eq!(refused.reset, Duration::from_secs(10));
        // Another key has its own quota.
        assert!(limiter.check(&"other", start).allowed);
        // One interval later, exactly one more.
        let later = start + Duration::from_secs(2);
        assert!(limiter.check(&"k", later).allowed);
        assert!(!limiter.check(&"k", later).allowed);
    }

    #[test]
    fn peek_does_not_count_and_idle_keys_are_forgotten() {
        let limiter = Limiter::new(quota(2, 60));
        let now = Instant::now();
        for _ in 0..10 {
            assert!(limiter.peek(&1, now).allowed);
        }
        assert_eq!(limiter.len(), 0);
        limiter.check(&1, now);
        limiter.check(&2, now);
        limiter.forget_idle(now + Duration::from_secs(29));
        assert_eq!(limiter.len(), 2, "not yet whole");
        limiter.forget_idle(now + Duration::from_secs(31));
        assert_eq!(limiter.len(), 0);
    }

    proptest! {
        /// Over any sequence of arrivals, no window of the quota's length
        /// lets through more than the quota plus what refills in it.
        #[test]
        fn never_more_than_the_quota_per_window(
            quota_n in 1u32..50,
            gaps in proptest::collection::vec(0u64..400, 1..300),
        ) {
            let q = quota(quota_n, 10);
            let limiter = Limiter::new(q);
            let start = Instant::now();
            let mut at = start;
            let mut allowed = Vec::new();
            for gap in gaps {
                at += Duration::from_millis(gap);
                let decision = limiter.check(&0, at);
                if decision.allowed {
                    allowed.push(at);
                } else {
                    prop_assert!(decision.retry_after > Duration::ZERO);
                }
            }
            for (i, first) in allowed.iter().enumerate() {
                let within = allowed[i..]
                    .iter()
                    .take_while(|t| t.duration_since(*first) < q.window)
                    .count();
                prop_assert!(within <= 2 * quota_n as usize, "{within} in one window");
            }
        }
    }
}
