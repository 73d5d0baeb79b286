//! The log line of a refused connection, so that `kubectl logs -c trellis-proxy` explains a
//! reset: every refusal the proxy makes ([`crate::context::ProxyContext::deny`]) is logged at
//! `info` under the target `trellis_proxy::refusals`, with `direction`, `peer.addr`, `peer.id`,
//! `dst`, `reason` (the stable code the refusal metric counts) and `detail` (the sentence
//! `/handshakes` shows).
//!
//! A port scan or a client retrying in a loop must not flood the log, so lines are rate
//! limited **per reason** by a token bucket ([`RefusalLimiter`], pure): up to [`BURST`] lines at
//! once, then [`PER_SECOND`] a second. A refusal that finds its bucket empty is still counted
//! (`trellis_proxy_refusals_total`) and recorded (`/handshakes`), only not logged; every
//! [`SUMMARY_EVERY`] a line per reason says how many were left out. One noisy reason never
//! silences another.
//!
//! Owns: [`RefusalLimiter`], [`RefusalLog`] and the summary task. Counting and recording the
//! refusal stay with `context`, `metrics` and `records`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::records::Direction;

/// Lines a reason may log at once.
pub const BURST: u32 = 20;
/// Lines per second a reason may log once its burst is spent.
pub const PER_SECOND: f64 = 1.0;
/// How often the left-out lines are summed up.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// One token bucket per reason code (pure: the caller passes the time).
#[derive(Debug)]
pub struct RefusalLimiter {
    burst: f64,
    per_second: f64,
    buckets: HashMap<&'static str, Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    left_out: u64,
}

impl RefusalLimiter {
    /// A limiter allowing `burst` lines at once and `per_second` after that, per reason.
    pub fn new(burst: u32, per_second: f64) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            per_second: per_second.max(0.0),
            buckets: HashMap::new(),
        }
    }

    /// Whether a refusal for `reason` at `now` gets its log line. The reason codes are the
    /// proxy's own constants, so the map stays small whatever the traffic.
    pub fn admit(&mut self, reason: &'static str, now: Instant) -> bool {
        let (burst, rate) = (self.burst, self.per_second);
        let bucket = self.buckets.entry(reason).or_insert(Bucket {
            tokens: burst,
            refilled: now,
            left_out: 0,
        });
        let since = now.saturating_duration_since(bucket.refilled);
        bucket.tokens = (bucket.tokens + since.as_secs_f64() * rate).min(burst);
        bucket.refilled = bucket.refilled.max(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            bucket.left_out += 1;
            false
        }
    }

    /// The reasons whose lines were left out since the last call, with how many (sorted by
    /// reason); their counts start again from zero.
    pub fn take_left_out(&mut self) -> Vec<(&'static str, u64)> {
        let mut out: Vec<_> = self
            .buckets
            .iter_mut()
            .filter(|(_, b)| b.left_out > 0)
            .map(|(reason, b)| (*reason, std::mem::take(&mut b.left_out)))
            .collect();
        out.sort_unstable();
        out
    }
}

/// What is known about one refused connection.
#[derive(Debug, Clone, Copy)]
pub struct Refusal<'a> {
    /// Which way it went.
    pub direction: Direction,
    /// The stable reason code (the metric's `reason` label).
    pub reason: &'static str,
    /// The other end's address.
    pub peer_addr: SocketAddr,
    /// The other end's SPIFFE ID, when it presented one.
    pub peer_id: Option<&'a str>,
    /// Where it was going, when known.
    pub dst: Option<SocketAddr>,
    /// The human-readable explanation.
    pub detail: &'a str,
}

/// The rate-limited refusal log of one proxy.
#[derive(Debug)]
pub struct RefusalLog {
    limiter: Mutex<RefusalLimiter>,
}

impl Default for RefusalLog {
    fn default() -> Self {
        Self {
            limiter: Mutex::new(RefusalLimiter::new(BURST, PER_SECOND)),
        }
    }
}

impl RefusalLog {
    /// Logs `refusal` at `info` unless its reason has spent its lines.
    pub fn refused(&self, refusal: &Refusal<'_>) {
        if !tracing::enabled!(tracing::Level::INFO) {
            return;
        }
        let admitted = self
            .limiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(refusal.reason, Instant::now());
        if admitted {
            tracing::info!(
                direction = refusal.direction.label(),
                peer.addr = %refusal.peer_addr,
                peer.id = refusal.peer_id.unwrap_or("none"),
                dst = refusal.dst.map_or_else(|| "unknown".to_owned(), |d| d.to_string()),
                reason = refusal.reason,
                detail = refusal.detail,
                "connection refused"
            );
        }
    }

    /// Logs one line per reason whose lines were left out since the last summary.
    pub fn summarise(&self) {
        let left_out = self
            .limiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take_left_out();
        for (reason, count) in left_out {
            tracing::info!(
                reason,
                not_logged = count,
                "{count} more refusals ({reason}) were counted but not logged (rate limit); see /handshakes and trellis_proxy_refusals_total"
            );
        }
    }

    /// Sums up left-out lines every [`SUMMARY_EVERY`] until `stop`, and once more then.
    pub async fn run_summaries(&self, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(SUMMARY_EVERY) => self.summarise(),
            }
        }
        self.summarise();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_logged_then_one_line_per_second_per_reason() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut limiter = RefusalLimiter::new(3, 1.0);
        // (reason, time in ms, logged?)
        let steps: &[(&'static str, u64, bool)] = &[
            ("policy", 0, true),
            ("policy", 0, true),
            ("policy", 1, true),
            ("policy", 2, false),   // burst spent
            ("plaintext", 2, true), // another reason has its own bucket
            ("policy", 500, false),
            ("policy", 1_002, true), // one token back after a second
            ("policy", 1_003, false),
            ("policy", 60_000, true), // refilled, but never above the burst
            ("policy", 60_000, true),
            ("policy", 60_000, true),
            ("policy", 60_000, false),
            ("policy", 59_000, false), // time going backwards refills nothing
        ];
        for (i, (reason, ms, logged)) in steps.iter().enumerate() {
            assert_eq!(
                limiter.admit(reason, at(*ms)),
                *logged,
                "step {i}: {reason} at {ms} ms"
            );
        }
        assert_eq!(limiter.take_left_out(), [("policy", 5)]);
        assert_eq!(
            limiter.take_left_out(),
            [],
            "counts start again after a summary"
        );
    }

    #[test]
    fn a_scan_of_many_ports_logs_at_most_the_burst_and_the_rate() {
        let t0 = Instant::now();
        let mut limiter = RefusalLimiter::new(BURST, PER_SECOND);
        // 10,000 refusals over 10 seconds, as a port scan would make.
        let logged = (0..10_000u64)
            .filter(|i| limiter.admit("plaintext", t0 + Duration::from_millis(i / 1_000 * 1_000)))
            .count();
        assert_eq!(logged, BURST as usize + 9);
        assert_eq!(
            limiter.take_left_out(),
            [("plaintext", 10_000 - logged as u64)]
        );
    }
}
