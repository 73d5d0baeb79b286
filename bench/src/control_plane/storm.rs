//! Where a restart storm's Certify time goes, per simulated proxy: connecting (TCP and the TLS
//! handshake, including any wait in the control plane's accept queue or for a handshake
//! place), the `Certify` call itself (TokenReview, checks, signing, and the wait for a CPU),
//! and the backoff sleeps between failed attempts; why attempts failed; and the control
//! plane's own counters after the storm (connections refused by reason, Certify refusals,
//! attestation and Certify durations).
//!
//! Owns: [`CertifyPath`] (one proxy's record), [`Paths`] (the fleet's) and the pure summary
//! [`breakdown`], and [`cp_counters`] (the lines of the metrics worth reading after a storm).

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::tracker::percentile;

/// One proxy's way to its certificate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CertifyPath {
    /// Attempts made (1 when the first succeeded).
    pub attempts: u32,
    /// Seconds spent connecting (TCP + TLS), all attempts.
    pub connect_s: f64,
    /// Seconds spent in `Certify` calls, all attempts.
    pub call_s: f64,
    /// Seconds slept between attempts.
    pub backoff_s: f64,
    /// Why attempts failed, by kind (see [`failure_kind`]).
    pub failures: Vec<&'static str>,
}

impl CertifyPath {
    /// Adds one attempt: how long it connected, how long the call took (zero when it did not
    /// connect), and why it failed, if it did.
    pub fn attempt(&mut self, connect: Duration, call: Duration, failed: Option<&str>) {
        self.attempts += 1;
        self.connect_s += connect.as_secs_f64();
        self.call_s += call.as_secs_f64();
        if let Some(e) = failed {
            self.failures.push(failure_kind(e));
        }
    }

    /// Adds a backoff sleep.
    pub fn slept(&mut self, d: Duration) {
        self.backoff_s += d.as_secs_f64();
    }
}

/// A failure's kind, from its message: a bounded label for the breakdown.
pub fn failure_kind(error: &str) -> &'static str {
    let e = error.to_ascii_lowercase();
    let table: [(&str, &'static str); 9] = [
        // Writing the handshake's end into a connection the server closed (its deadline).
        (
            "broken pipe",
            "connect: closed by the server (handshake deadline)",
        ),
        ("rate limited", "certify: rate limited"),
        ("tokenreview", "certify: TokenReview failed"),
        ("timed out", "timed out"),
        ("deadline", "timed out"),
        ("connection reset", "connect: reset (refused by a cap?)"),
        ("connection refused", "connect: refused"),
        ("tls", "connect: TLS"),
        ("cancelled", "certify: cancelled (call timeout)"),
    ];
    table
        .iter()
        .find(|(needle, _)| e.contains(needle))
        .map_or("other", |(_, kind)| kind)
}

/// Every proxy's path, as they finish.
#[derive(Debug, Default)]
pub struct Paths(Mutex<Vec<CertifyPath>>);

impl Paths {
    /// Records one proxy's path.
    pub fn push(&self, path: CertifyPath) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(path);
    }

    /// The paths so far.
    pub fn all(&self) -> Vec<CertifyPath> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Lines saying where the time went: p50 / p99 / max of each part per proxy, attempts, and
/// failures by kind (most frequent first).
pub fn breakdown(paths: &[CertifyPath]) -> Vec<String> {
    let spread = |f: fn(&CertifyPath) -> f64| {
        let mut v: Vec<f64> = paths.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        let at = |p| percentile(&v, p).unwrap_or(0.0);
        format!("{:.2} / {:.2} / {:.2}", at(0.5), at(0.99), at(1.0))
    };
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for kind in paths.iter().flat_map(|p| &p.failures) {
        *kinds.entry(kind).or_default() += 1;
    }
    let mut kinds: Vec<_> = kinds.into_iter().collect();
    kinds.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let retried = paths.iter().filter(|p| p.attempts > 1).count();
    let mut out = vec![
        format!(
            "certify paths of {} proxies (p50 / p99 / max, s):",
            paths.len()
        ),
        format!("  connecting (TCP + TLS)  {}", spread(|p| p.connect_s)),
        format!("  Certify calls           {}", spread(|p| p.call_s)),
        format!("  backoff sleeps          {}", spread(|p| p.backoff_s)),
        format!(
            "  attempts                {}  ({retried} proxies retried)",
            spread(|p| f64::from(p.attempts))
        ),
    ];
    out.extend(kinds.iter().map(|(k, n)| format!("  failed: {n} × {k}")));
    out
}

/// The lines of a Prometheus text exposition a storm is read by: refused connections and
/// Certify refusals (non-zero only), and the sums and counts of the Certify and attestation
/// durations.
pub fn cp_counters(exposition: &str) -> Vec<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let refused = l.contains("refused") && !l.ends_with(" 0");
            let timing = (l.contains("certify_duration") || l.contains("attestation_duration"))
                && (l.contains("_sum") || l.contains("_count"));
            refused || timing
        })
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_named_by_kind_from_their_message() {
        for (message, kind) in [
            (
                "control plane refused: Unavailable: spiffe://x is rate limited; retry in 1s",
                "certify: rate limited",
            ),
            (
                "control plane refused: Unavailable: cannot check tokens right now: TokenReview timed out after 5s",
                "certify: TokenReview failed",
            ),
            (
                "cannot connect to the control plane at 127.0.0.1:1: connection reset by peer",
                "connect: reset (refused by a cap?)",
            ),
            ("transport error: connection refused", "connect: refused"),
            (
                "cannot connect to the control plane at 127.0.0.1:1: connection error: Broken pipe (os error 32)",
                "connect: closed by the server (handshake deadline)",
            ),
            (
                "control plane refused: Cancelled: Timeout expired",
                "certify: cancelled (call timeout)",
            ),
            ("something else", "other"),
        ] {
            assert_eq!(failure_kind(message), kind, "{message}");
        }
    }

    #[test]
    fn the_breakdown_counts_attempts_and_failures_most_frequent_first() {
        let mut slow = CertifyPath::default();
        slow.attempt(
            Duration::from_secs(3),
            Duration::ZERO,
            Some("connection reset"),
        );
        slow.slept(Duration::from_secs(1));
        slow.attempt(Duration::from_secs(1), Duration::ZERO, Some("rate limited"));
        slow.attempt(
            Duration::from_secs(1),
            Duration::ZERO,
            Some("connection reset"),
        );
        slow.attempt(Duration::from_secs(1), Duration::from_secs(2), None);
        let mut fast = CertifyPath::default();
        fast.attempt(Duration::from_millis(10), Duration::from_millis(20), None);
        let lines = breakdown(&[fast, slow]);
        assert_eq!(lines[0], "certify paths of 2 proxies (p50 / p99 / max, s):");
        assert!(lines[1].ends_with("0.01 / 6.00 / 6.00"), "{}", lines[1]);
        assert!(lines[4].contains("(1 proxies retried)"), "{}", lines[4]);
        assert_eq!(lines[5], "  failed: 2 × connect: reset (refused by a cap?)");
        assert_eq!(lines[6], "  failed: 1 × certify: rate limited");
    }

    #[test]
    fn only_refusals_that_happened_and_duration_totals_are_read_from_the_metrics() {
        let text = "# HELP x\n\
            trellis_control_plane_connections_refused_total{reason=\"handshakes_total\"} 12\n\
            trellis_control_plane_connections_refused_total{reason=\"handshake_timeout\"} 0\n\
            trellis_control_plane_certify_duration_seconds_sum 3.5\n\
            trellis_control_plane_certify_duration_seconds_bucket{le=\"0.1\"} 3\n\
            trellis_control_plane_certify_duration_seconds_count 9\n\
            trellis_control_plane_issued_total 9\n";
        assert_eq!(
            cp_counters(text),
            [
                "trellis_control_plane_connections_refused_total{reason=\"handshakes_total\"} 12",
                "trellis_control_plane_certify_duration_seconds_sum 3.5",
                "trellis_control_plane_certify_duration_seconds_count 9",
            ]
        );
    }
}
