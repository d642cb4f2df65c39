//! Token-bucket rate limits, per key and per address, in memory (each node limits what it
//! sees; the limits bound one node's work, not a global quota).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A rate: `per_second` sustained, bursts up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Requests per second, sustained.
    pub per_second: f64,
    /// Requests allowed at once after a quiet period.
    pub burst: f64,
}

/// The bucket names share when the table is full (no real name has this form).
const OVERFLOW: &str = "\0overflow";

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Buckets by name (a key fingerprint, an address), at most `capacity` of them: when full,
/// buckets idle long enough to be full again are dropped first; names that still find no room
/// share one overflow bucket (a flood of new names is limited together, and clients already
/// known keep their own buckets).
#[derive(Debug)]
pub(crate) struct Limiter {
    rate: Rate,
    capacity: usize,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    /// A limiter at `rate` over at most `capacity` names.
    pub(crate) fn new(rate: Rate, capacity: usize) -> Self {
        Limiter {
            rate,
            capacity,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `name` at `now`: `false` when its bucket is empty.
    pub(crate) fn allow(&self, name: &str, now: Instant) -> bool {
        if self.rate.per_second <= 0.0 {
            return true;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let mut name = name;
        if !buckets.contains_key(name) && buckets.len() >= self.capacity {
            let refill = Duration::from_secs_f64(self.rate.burst / self.rate.per_second);
            buckets.retain(|_, b| now.saturating_duration_since(b.last) < refill);
            if buckets.len() >= self.capacity {
                name = OVERFLOW;
            }
        }
        let bucket = buckets.entry(name.to_owned()).or_insert(Bucket {
            tokens: self.rate.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate.per_second).min(self.rate.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_the_rate() {
        let l = Limiter::new(
            Rate {
                per_second: 10.0,
                burst: 3.0,
            },
            10,
        );
        let t = Instant::now();
        assert!(l.allow("a", t) && l.allow("a", t) && l.allow("a", t));
        assert!(!l.allow("a", t), "the burst is spent");
        assert!(l.allow("b", t), "another name has its own bucket");
        assert!(
            l.allow("a", t + Duration::from_millis(100)),
            "one token per 100 ms"
        );
        assert!(!l.allow("a", t + Duration::from_millis(100)));
    }

    #[test]
    fn a_full_table_drops_idle_buckets_and_new_names_share_one() {
        let l = Limiter::new(
            Rate {
                per_second: 1.0,
                burst: 1.0,
            },
            2,
        );
        let t = Instant::now();
        assert!(l.allow("a", t) && l.allow("b", t));
        // The table is full: c takes the last place ... (the overflow bucket)
        assert!(l.allow("c", t));
        assert!(
            !l.allow("d", t),
            "d shares c's overflow bucket, which is spent"
        );
        // After the buckets refilled they are dropped, and d gets one of its own.
        let later = t + Duration::from_secs(2);
        assert!(l.allow("d", later));
        assert!(!l.allow("d", later), "d is limited by its own bucket");
    }
}
