//! A per-caller token bucket: `burst` requests at once, refilled at `per_minute`. Checked
//! before authentication, so a flood never reaches the TokenReview API.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The most callers tracked at once; past it, idle (full) buckets are dropped first, then
/// the oldest, so memory stays bounded under a spray of source addresses.
const MAX_TRACKED: usize = 65_536;

/// A rate: a sustained number of requests per minute and a burst allowance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Sustained requests per minute.
    pub per_minute: u32,
    /// Requests allowed at once from a full bucket.
    pub burst: u32,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    /// Refills for the time passed, then takes a token if there is one.
    fn try_take(&mut self, rate: Rate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        let refill = elapsed * f64::from(rate.per_minute) / 60.0;
        self.tokens = (self.tokens + refill).min(f64::from(rate.burst));
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Token buckets keyed by caller.
#[derive(Debug)]
pub struct RateLimiter<K> {
    rate: Rate,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Eq + Hash + Clone> RateLimiter<K> {
    /// A limiter allowing `rate` per key.
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `key` may make a request now (and counts it if so).
    pub fn check(&self, key: &K) -> bool {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &K, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(key) {
            self.evict(&mut buckets, now);
        }
        let rate = self.rate;
        buckets
            .entry(key.clone())
            .or_insert(Bucket {
                tokens: f64::from(rate.burst),
                updated: now,
            })
            .try_take(rate, now)
    }

    fn evict(&self, buckets: &mut HashMap<K, Bucket>, now: Instant) {
        let full_after = Duration::from_secs_f64(
            60.0 * f64::from(self.rate.burst) / f64::from(self.rate.per_minute.max(1)),
        );
        buckets.retain(|_, b| now.saturating_duration_since(b.updated) < full_after);
        if buckets.len() >= MAX_TRACKED {
            // Still full of active callers: drop the least recently seen tenth in one pass,
            // so the cost of a scan is shared by the next many new callers.
            let mut ages: Vec<Instant> = buckets.values().map(|b| b.updated).collect();
            let cut = ages.len() / 10;
            let (_, threshold, _) = ages.select_nth_unstable(cut);
            let threshold = *threshold;
            buckets.retain(|_, b| b.updated > threshold);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let limiter = RateLimiter::new(Rate {
            per_minute: 60,
            burst: 3,
        });
        let t0 = Instant::now();
        let a = "10.0.0.1";
        // (seconds after t0, allowed?)
        let steps = [
            (0.0, true),
            (0.0, true),
            (0.0, true),
            (0.0, false), // burst spent
            (0.5, false), // half a token
            (1.0, true),  // one token refilled
            (1.0, false),
            (10.0, true), // refilled to the burst cap of 3, not 9
            (10.0, true),
            (10.0, true),
            (10.0, false),
        ];
        for (i, (secs, want)) in steps.into_iter().enumerate() {
            let now = t0 + Duration::from_secs_f64(secs);
            assert_eq!(limiter.check_at(&a, now), want, "step {i} at {secs}s");
        }
        // Another caller has its own bucket.
        assert!(limiter.check_at(&"10.0.0.2", t0 + Duration::from_secs(10)));
    }

    #[test]
    fn memory_stays_bounded() {
        let limiter = RateLimiter::new(Rate {
            per_minute: 60,
            burst: 1,
        });
        let now = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 1000) {
            limiter.check_at(&i, now);
        }
        assert!(limiter.buckets.lock().unwrap().len() <= MAX_TRACKED);
    }
}
