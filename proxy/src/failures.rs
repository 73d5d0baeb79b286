//! Failed handshakes from outside: connections to the tunnel port refused before the peer
//! proved an identity (TLS failures, timeouts, the handshake and connection caps). Anyone who
//! can reach the port makes as many as they like, so they are not kept one by one next to the
//! real connections (where they evicted them, issue 15): they are summed per source address
//! and reason over a window, in a store of bounded size, and `/handshakes` shows the top
//! entries beside the connection log.
//!
//! Owns: [`FailedHandshakes`] and its [`Summary`]. Which refusals count as failed handshakes
//! is `context`'s decision.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// How long a source's failures are remembered after its last one.
pub const WINDOW: Duration = Duration::from_secs(600);
/// Most (source, reason) pairs kept; past it the pair with the fewest failures is dropped.
pub const MAX_ENTRIES: usize = 256;
/// Entries shown in a summary, most failures first.
pub const TOP: usize = 20;
/// Longest detail text kept per entry.
const MAX_DETAIL: usize = 200;

/// Failures of one source for one reason.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    /// How many.
    count: u64,
    /// The first one in the window.
    first: SystemTime,
    /// The latest one.
    last: SystemTime,
    /// What the latest one said.
    detail: String,
}

/// One line of a [`Summary`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceFailures {
    /// The source address.
    pub source: IpAddr,
    /// The refusal's reason code (as in `trellis_proxy_refusals_total`).
    pub reason: &'static str,
    /// Failures in the window.
    pub count: u64,
    /// The first, RFC 3339.
    pub first: String,
    /// The latest, RFC 3339.
    pub last: String,
    /// What the latest one said.
    pub detail: String,
}

/// What `/handshakes` shows of the failures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// How far back the counts go, in seconds after each source's latest failure.
    pub window_seconds: u64,
    /// Failures counted in the window (all sources, all reasons).
    pub total: u64,
    /// (source, reason) pairs in the window.
    pub sources: usize,
    /// Pairs dropped to keep the store bounded, since the proxy started.
    pub dropped: u64,
    /// The pairs with the most failures, at most [`TOP`].
    pub top: Vec<SourceFailures>,
}

/// The store behind the summary.
#[derive(Debug, Default)]
struct Store {
    /// Per (source, reason).
    entries: HashMap<(IpAddr, &'static str), Entry>,
    /// Pairs dropped for room.
    dropped: u64,
}

impl Store {
    /// Forgets pairs whose latest failure is older than the window.
    fn expire(&mut self, now: SystemTime) {
        self.entries
            .retain(|_, e| now.duration_since(e.last).map_or(true, |age| age <= WINDOW));
    }
}

/// Failed handshakes, summed per source and reason.
#[derive(Debug, Default)]
pub struct FailedHandshakes {
    /// The store.
    store: Mutex<Store>,
}

impl FailedHandshakes {
    /// Counts a failure from `source` for `reason` now.
    pub fn add(&self, source: IpAddr, reason: &'static str, detail: &str) {
        self.add_at(source, reason, detail, SystemTime::now());
    }

    /// [`add`](Self::add) at `now`.
    pub fn add_at(&self, source: IpAddr, reason: &'static str, detail: &str, now: SystemTime) {
        let mut store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        let detail: String = detail.chars().take(MAX_DETAIL).collect();
        if let Some(e) = store.entries.get_mut(&(source, reason)) {
            e.count += 1;
            e.last = now;
            e.detail = detail;
            return;
        }
        store.expire(now);
        if store.entries.len() >= MAX_ENTRIES {
            // Room for the newcomer: drop the pair with the fewest failures (the oldest of
            // those), so a steady flood stays visible while one-off sources come and go.
            let victim = store
                .entries
                .iter()
                .min_by_key(|(_, e)| (e.count, e.last))
                .map(|(k, _)| *k);
            if let Some(k) = victim {
                store.entries.remove(&k);
                store.dropped += 1;
            }
        }
        store.entries.insert(
            (source, reason),
            Entry {
                count: 1,
                first: now,
                last: now,
                detail,
            },
        );
    }

    /// The summary now.
    pub fn summary(&self) -> Summary {
        self.summary_at(SystemTime::now())
    }

    /// The summary at `now`.
    pub fn summary_at(&self, now: SystemTime) -> Summary {
        let mut store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        store.expire(now);
        let mut top: Vec<_> = store.entries.iter().collect();
        top.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(b.1.last.cmp(&a.1.last)));
        let rfc3339 = |t: SystemTime| humantime::format_rfc3339_millis(t).to_string();
        Summary {
            window_seconds: WINDOW.as_secs(),
            total: store.entries.values().map(|e| e.count).sum(),
            sources: store.entries.len(),
            dropped: store.dropped,
            top: top
                .into_iter()
                .take(TOP)
                .map(|((source, reason), e)| SourceFailures {
                    source: *source,
                    reason,
                    count: e.count,
                    first: rfc3339(e.first),
                    last: rfc3339(e.last),
                    detail: e.detail.clone(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([198, 18, 0, last])
    }

    #[test]
    fn failures_are_summed_per_source_and_reason_most_first() {
        let store = FailedHandshakes::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for i in 0..5 {
            store.add_at(ip(1), "tls_handshake", &format!("bad {i}"), t0);
        }
        store.add_at(ip(1), "handshakes_per_source", "cap", t0);
        store.add_at(ip(2), "tls_handshake", "bad", t0);
        let s = store.summary_at(t0);
        assert_eq!((s.total, s.sources, s.dropped), (7, 3, 0));
        assert_eq!(s.top[0].source, ip(1));
        assert_eq!(s.top[0].reason, "tls_handshake");
        assert_eq!(s.top[0].count, 5);
        assert_eq!(s.top[0].detail, "bad 4");
    }

    #[test]
    fn the_store_stays_bounded_and_forgets_after_the_window() {
        let store = FailedHandshakes::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        store.add_at(ip(1), "tls_handshake", "steady", t0);
        store.add_at(ip(1), "tls_handshake", "steady", t0);
        for i in 0..(MAX_ENTRIES as u32 + 100) {
            let source = IpAddr::V4(std::net::Ipv4Addr::from(
                u32::from(std::net::Ipv4Addr::new(198, 18, 1, 0)) + i,
            ));
            store.add_at(source, "tls_handshake", "", t0);
        }
        let s = store.summary_at(t0);
        assert_eq!(s.sources, MAX_ENTRIES);
        assert_eq!(s.dropped, 101);
        assert_eq!(s.top.len(), TOP);
        assert_eq!(s.top[0].source, ip(1), "the steadiest source stays");
        let later = store.summary_at(t0 + WINDOW + Duration::from_secs(1));
        assert_eq!((later.total, later.sources), (0, 0));
    }
}
