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

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Buckets by name (a key fingerprint, an address), at most `capacity` of them: when full,
/// buckets idle long enough to be full again are dropped first; a name that still finds no
/// room is not limited (an address flood must not lock out clients already known).
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
        if !buckets.contains_key(name) && buckets.len() >= self.capacity {
            let refill = Duration::from_secs_f64(self.rate.burst / self.rate.per_second);
            buckets.retain(|_, b| now.saturating_duration_since(b.last) < refill);
            if buckets.len() >= self.capacity {
                return true;
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
    fn a_full_table_drops_idle_buckets_and_never_locks_out() {
        let l = Limiter::new(
            Rate {
                per_second: 1.0,
                burst: 1.0,
            },
            2,
        );
        let t = Instant::now();
        assert!(l.allow("a", t) && l.allow("b", t));
        assert!(l.allow("c", t), "no room: not limited");
        assert!(l.allow("c", t), "still no room: still not limited");
        // After a's and b's buckets refilled they are dropped, and c gets one.
        let later = t + Duration::from_secs(2);
        assert!(l.allow("c", later));
        assert!(!l.allow("c", later), "c is limited once it has a bucket");
    }
}
