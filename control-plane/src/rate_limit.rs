//! Rate limiting of Certify: a token bucket per key — per authenticated identity (how often a
//! workload may get certificates) and per source address (how hard anyone may push tokens at
//! attestation, which in Kubernetes costs a TokenReview each).
//!
//! Owns: the pure bucket arithmetic (time is an argument, so tests need no clock) and the
//! bound on how many callers are tracked.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// At most this many callers are tracked; full buckets are forgotten first.
const MAX_TRACKED: usize = 100_000;

/// One caller's bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens left (fractional: refill is continuous).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    updated: Instant,
}

/// Token buckets by key.
#[derive(Debug)]
pub struct RateLimiter<K> {
    /// Sustained calls per second.
    rate: f64,
    /// Bucket size.
    burst: f64,
    /// The buckets.
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// `rate` calls per second sustained, `burst` at once.
    pub fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `caller` at `now`; on refusal returns how long until one is free.
    pub fn check(&self, caller: &K, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(caller) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| refill(*b, rate, burst, now).tokens < burst);
        }
        let bucket = buckets.entry(caller.clone()).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        *bucket = refill(*bucket, self.rate, self.burst, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// Gives back a token taken by [`RateLimiter::check`] for an attempt that turned out not to
    /// count (a budget of failures is taken before the attempt, so that attempts in flight at
    /// once cannot all pass, and given back when it succeeds).
    pub fn refund(&self, caller: &K, now: Instant) {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(b) = buckets.get_mut(caller) {
            let mut up = refill(*b, self.rate, self.burst, now);
            up.tokens = (up.tokens + 1.0).min(self.burst);
            *b = up;
        }
    }
}

fn refill(b: Bucket, rate: f64, burst: f64, now: Instant) -> Bucket {
    let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
    Bucket {
        tokens: (b.tokens + elapsed * rate).min(burst),
        updated: now.max(b.updated),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_ca::SpiffeId;

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::parse(&format!("spiffe://cluster.local/ns/a/sa/{sa}")).unwrap()
    }

    #[test]
    fn a_refund_gives_back_one_token_and_never_more_than_the_burst() {
        let limiter = RateLimiter::new(1.0, 2);
        let t0 = Instant::now();
        assert!(limiter.check(&id("a"), t0).is_ok());
        assert!(limiter.check(&id("a"), t0).is_ok());
        assert!(limiter.check(&id("a"), t0).is_err());
        limiter.refund(&id("a"), t0);
        assert!(limiter.check(&id("a"), t0).is_ok());
        limiter.refund(&id("a"), t0);
        limiter.refund(&id("a"), t0);
        limiter.refund(&id("a"), t0);
        assert!(limiter.check(&id("a"), t0).is_ok());
        assert!(limiter.check(&id("a"), t0).is_ok());
        assert!(
            limiter.check(&id("a"), t0).is_err(),
            "refunds beyond the burst are lost"
        );
    }

    #[test]
    fn a_caller_gets_its_burst_then_is_refused_until_the_bucket_refills() {
        let limiter = RateLimiter::new(2.0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check(&id("a"), t0).is_ok());
        }
        let wait = limiter.check(&id("a"), t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(
            limiter
                .check(&id("a"), t0 + Duration::from_millis(499))
                .is_err()
        );
        assert!(
            limiter
                .check(&id("a"), t0 + Duration::from_millis(1000))
                .is_ok()
        );
    }

    #[test]
    fn callers_do_not_share_a_bucket() {
        let limiter = RateLimiter::new(1.0, 1);
        let t0 = Instant::now();
        assert!(limiter.check(&id("a"), t0).is_ok());
        assert!(limiter.check(&id("a"), t0).is_err());
        assert!(limiter.check(&id("b"), t0).is_ok());
    }

    #[test]
    fn a_long_pause_refills_only_up_to_the_burst() {
        let limiter = RateLimiter::new(10.0, 2);
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(3600);
        assert!(limiter.check(&id("a"), t0).is_ok());
        assert!(limiter.check(&id("a"), later).is_ok());
        assert!(limiter.check(&id("a"), later).is_ok());
        assert!(limiter.check(&id("a"), later).is_err());
    }
}
