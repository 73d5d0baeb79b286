//! What a run does: repetitions, rates, durations and bounds, for `--quick` and the full run.
//!
//! Owns: [`Plan`]. The numbers are chosen so the quick run (with its setup) stays under two
//! minutes on a 2-core machine, and the full run records 8,000 requests per repetition at the
//! lower rate (80,000 in all) and 40,000 at the higher.

use std::time::Duration;

use serde::Serialize;

use crate::idle::IdlePlan;

/// The schedule of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// `quick` or `full`.
    pub mode: &'static str,
    /// Repetitions of every measurement, routes alternating within each.
    pub repetitions: usize,
    /// Open-loop request rates (requests per second).
    pub rates: Vec<u32>,
    /// Keep-alive connections the open-loop load is spread over.
    pub connections: usize,
    /// Load before recording starts (excluded).
    #[serde(serialize_with = "secs")]
    pub warmup: Duration,
    /// Recorded load per rate and repetition.
    #[serde(serialize_with = "secs")]
    pub measure: Duration,
    /// New-connection loop: concurrent workers.
    pub conn_concurrency: usize,
    /// New-connection loop: wall time.
    #[serde(serialize_with = "secs")]
    pub conn_duration: Duration,
    /// New-connection loop: most connections tried.
    pub conn_max: u64,
    /// Bytes per single-stream transfer (each direction).
    pub stream_bytes: u64,
    /// Longest a transfer may take.
    #[serde(serialize_with = "secs")]
    pub stream_limit: Duration,
    /// Pause between measurements, so TIME_WAIT sockets and proxy buffers settle.
    #[serde(serialize_with = "secs")]
    pub settle: Duration,
    /// Connections at scale (`idle`), once per route before the repetitions.
    pub idle: IdlePlan,
    /// Measurements left out (`idle`, `latency`, `connections`, `throughput`), for profiling one of
    /// them; a report with any left out is incomplete.
    pub skip: Vec<String>,
}

pub(crate) fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Plan {
    /// Whether `measurement` is to be taken.
    pub fn runs(&self, measurement: &str) -> bool {
        !self.skip.iter().any(|s| s == measurement)
    }

    /// The CI smoke: about a minute of load.
    pub fn quick() -> Self {
        Self {
            mode: "quick",
            repetitions: 3,
            rates: vec![1_000, 5_000],
            connections: 64,
            warmup: Duration::from_millis(300),
            measure: Duration::from_millis(1_500),
            conn_concurrency: 32,
            conn_duration: Duration::from_millis(1_000),
            conn_max: 30_000,
            stream_bytes: 128 << 20,
            stream_limit: Duration::from_secs(15),
            settle: Duration::from_millis(100),
            idle: IdlePlan {
                connections: 200,
                interval: Duration::from_secs(1),
                intervals: 2,
            },
            skip: vec![],
        }
    }

    /// The documented run: about 15 minutes. Many shorter repetitions rather than a few long
    /// ones: on a shared machine a burst of other work then spoils one repetition of one route,
    /// and the median drops it.
    pub fn full() -> Self {
        Self {
            mode: "full",
            repetitions: 10,
            rates: vec![1_000, 5_000],
            connections: 64,
            warmup: Duration::from_secs(1),
            measure: Duration::from_secs(8),
            conn_concurrency: 32,
            conn_duration: Duration::from_secs(3),
            conn_max: 100_000,
            stream_bytes: 512 << 20,
            stream_limit: Duration::from_secs(60),
            settle: Duration::from_millis(500),
            idle: IdlePlan {
                connections: 10_000,
                interval: Duration::from_secs(5),
                intervals: 2,
            },
            skip: vec![],
        }
    }
}
