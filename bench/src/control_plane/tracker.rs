//! When each churn change reached each simulated proxy: the churn registers a change (its pod's
//! address, added or deleted, and when it was made in the fake API server); a proxy that
//! applies an update carrying that workload's addition or removal reports it. A change's
//! latency is from its making to the last proxy applying it.
//!
//! Owns: [`Tracker`] and [`Stats`] (what the proxies received while recording), and the
//! pure reduction of both into figures ([`Tracker::latencies`], [`percentile`]).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

/// One change as the proxies saw it.
#[derive(Debug)]
struct Record {
    /// When it was made, µs after the tracker's start.
    made_us: u64,
    /// Proxies that applied it.
    seen: AtomicU32,
    /// The latest application, µs after `made_us`.
    last_us: AtomicU64,
}

#[derive(Debug, Default)]
struct Index {
    /// Every change, in order.
    records: Vec<Arc<Record>>,
    /// Pod address → the change that added it.
    added: HashMap<Ipv4Addr, Arc<Record>>,
    /// Pod address → the change that removed it.
    removed: HashMap<Ipv4Addr, Arc<Record>>,
}

/// The churn's changes and who has applied them.
#[derive(Debug)]
pub struct Tracker {
    /// Zero of the µs clocks.
    start: Instant,
    /// Changes, and by address.
    index: RwLock<Index>,
}

impl Default for Tracker {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            index: RwLock::default(),
        }
    }
}

/// One change reduced: how many proxies applied it, and how long the last one took (µs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reached {
    /// Proxies that applied it.
    pub proxies: u32,
    /// From its making to the last of them, µs.
    pub last_us: u64,
}

impl Tracker {
    fn now_us(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Registers a change made now: the pod at `ip` was added (or removed).
    pub fn made(&self, ip: Ipv4Addr, added: bool) {
        let record = Arc::new(Record {
            made_us: self.now_us(),
            seen: AtomicU32::new(0),
            last_us: AtomicU64::new(0),
        });
        let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
        index.records.push(record.clone());
        let by = if added {
            &mut index.added
        } else {
            &mut index.removed
        };
        by.insert(ip, record);
    }

    /// A proxy applied an update that adds (or removes) the workloads at `ips`.
    pub fn applied(&self, ips: impl Iterator<Item = Ipv4Addr>, added: bool) {
        let now = self.now_us();
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        let by = if added { &index.added } else { &index.removed };
        for ip in ips {
            if let Some(r) = by.get(&ip) {
                r.seen.fetch_add(1, Ordering::Relaxed);
                r.last_us
                    .fetch_max(now.saturating_sub(r.made_us), Ordering::Relaxed);
            }
        }
    }

    /// Every change so far, in order.
    pub fn reached(&self) -> Vec<Reached> {
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        index
            .records
            .iter()
            .map(|r| Reached {
                proxies: r.seen.load(Ordering::Relaxed),
                last_us: r.last_us.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Changes so far.
    pub fn len(&self) -> usize {
        self.index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .records
            .len()
    }
}

/// Latencies (seconds) of the changes every one of `proxies` applied, and how many changes
/// some proxy never applied.
pub fn latencies(reached: &[Reached], proxies: u32) -> (Vec<f64>, usize) {
    let mut done: Vec<f64> = reached
        .iter()
        .filter(|r| r.proxies >= proxies)
        .map(|r| r.last_us as f64 / 1e6)
        .collect();
    done.sort_by(f64::total_cmp);
    let missing = reached.len() - done.len();
    (done, missing)
}

/// The `p`-quantile (0–1) of `sorted` (nearest rank), if any.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// What the simulated proxies received while recording (the churn phase), summed.
#[derive(Debug, Default)]
pub struct Stats {
    /// Counting on.
    pub recording: AtomicBool,
    /// gRPC messages.
    pub messages: AtomicU64,
    /// Their protobuf bytes.
    pub bytes: AtomicU64,
    /// Whole updates applied.
    pub updates: AtomicU64,
    /// Full states received after the first (resyncs).
    pub resyncs: AtomicU64,
    /// Updates that did not apply on the version held.
    pub misses: AtomicU64,
}

impl Stats {
    /// Counts one message of `bytes` bytes, if recording.
    pub fn message(&self, bytes: usize) {
        if self.recording.load(Ordering::Relaxed) {
            self.messages.fetch_add(1, Ordering::Relaxed);
            self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }

    /// Counts `counter` once, if recording.
    pub fn count(&self, counter: &AtomicU64) {
        if self.recording.load(Ordering::Relaxed) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_counts_once_every_proxy_applied_it_and_its_latency_is_the_last() {
        let t = Tracker::default();
        let a: Ipv4Addr = "198.18.0.1".parse().unwrap();
        let b: Ipv4Addr = "198.18.0.2".parse().unwrap();
        t.made(a, true);
        t.made(a, false);
        t.made(b, true);
        t.applied([a].into_iter(), true);
        t.applied([a, b].into_iter(), true);
        t.applied([a].into_iter(), false);
        let reached = t.reached();
        assert_eq!(
            reached.iter().map(|r| r.proxies).collect::<Vec<_>>(),
            [2, 1, 1]
        );
        let (done, missing) = latencies(&reached, 2);
        assert_eq!((done.len(), missing), (1, 2));
        assert!(reached[0].last_us >= reached[2].last_us);
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&v, 1.0), Some(100.0));
        assert_eq!(percentile(&v[..1], 0.99), Some(1.0));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
