//! Gives memory back to the kernel after a burst of connections has closed. glibc returns freed
//! heap memory only from the top of a heap; the state of thousands of connections freed in
//! arbitrary order leaves the heap full of free holes that stay resident (bench/: a proxy that
//! held 10,000 connections kept ~50 MiB after they closed, against ~14 MiB for one that never
//! had them). `malloc_trim` releases the whole free pages inside the heap as well.
//!
//! Owns: [`Trigger`] (the pure decision: when the open connections fell far enough below their
//! peak), [`release`] (the one call into glibc, and the crate's only `unsafe`) and [`watch`]
//! (the task that checks every [`CHECK_EVERY`]). What is counted: application connections, and
//! tunnel connections as [`TUNNEL_WEIGHT`] each — an idle pooled tunnel connection holds ~150 KiB
//! (its TLS and HTTP/2 buffers), so 100 of them closing a minute after a burst (`--pool-idle`)
//! leave as many free holes as 3,200 application connections.

use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;

/// How often the open-connection count is looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Connections that must have closed since the peak before a trim is worth its cost (walking
/// the heap takes ~1 ms per 10 MiB on the proxy's only thread): at ~4 KiB each, 1,000
/// connections are ~4 MiB.
pub const MIN_CLOSED: i64 = 1_000;

/// A tunnel connection counts as this many application connections (bench/, 10,000
/// connections: 100 tunnel connections instead of 10 kept 14.6 MiB more after the trim).
pub const TUNNEL_WEIGHT: i64 = 32;

/// When to trim: the open connections have fallen at least [`MIN_CLOSED`] below the highest
/// count seen since the last trim (or since start).
#[derive(Debug, Default)]
pub struct Trigger {
    peak: i64,
}

impl Trigger {
    /// Records the current count; true when a trim is due (the peak then restarts from here).
    pub fn observe(&mut self, open: i64) -> bool {
        self.peak = self.peak.max(open);
        if self.peak - open >= MIN_CLOSED {
            self.peak = open;
            return true;
        }
        false
    }
}

/// Asks glibc to return every free page of its heaps to the kernel. True if it released any.
/// Elsewhere (musl, other systems) does nothing: their allocators give memory back themselves.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release() -> bool {
    // SAFETY: malloc_trim takes no pointers and touches only glibc's own free lists, under the
    // allocator's locks; it is safe to call from any thread at any time.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// See the glibc version: nothing to do here.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release() -> bool {
    false
}

/// Checks the connections open (`open` application connections, `tunnels` tunnel connections)
/// every [`CHECK_EVERY`] and trims when [`Trigger`] says so, until dropped.
pub async fn watch(open: Gauge, tunnels: Gauge) {
    let mut trigger = Trigger::default();
    let mut ticks = tokio::time::interval(CHECK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now = open.get() + TUNNEL_WEIGHT * tunnels.get();
        if trigger.observe(now) {
            let started = std::time::Instant::now();
            let released = release();
            tracing::debug!(
                open = open.get(),
                tunnels = tunnels.get(),
                released,
                ms = started.elapsed().as_secs_f64() * 1e3,
                "heap trimmed after connections closed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_is_due_once_enough_connections_closed_since_the_peak() {
        let mut t = Trigger::default();
        // (open now, trim due)
        let steps = [
            (0, false),
            (900, false),
            (10_000, false),
            (9_500, false),
            (9_001, false),
            (9_000, true), // 1,000 below the peak of 10,000
            (8_500, false),
            (8_001, false), // the peak restarted at 9,000
            (8_000, true),
            (8_000, false),
            (12_000, false),
            (500, true),
            (0, false),
        ];
        for (i, (open, due)) in steps.into_iter().enumerate() {
            assert_eq!(t.observe(open), due, "step {i}: {open} open");
        }
    }

    /// Resident set of this process in bytes.
    fn rss() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        let pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        pages * 4096
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn release_returns_the_free_holes_of_a_fragmented_heap() {
        // 64 MiB in 4 KiB blocks (one connection's share); keep one in 64 so nothing can be
        // trimmed from the heap's top, and free the rest in place.
        let mut blocks: Vec<Vec<u8>> = (0..16_384).map(|i| vec![(i % 251) as u8; 4096]).collect();
        let kept: Vec<Vec<u8>> = blocks.iter_mut().step_by(64).map(std::mem::take).collect();
        drop(blocks);
        let before = rss();
        assert!(release(), "malloc_trim released nothing");
        let after = rss();
        assert!(
            before.saturating_sub(after) > 32 << 20,
            "RSS {} → {} MiB: the free holes stayed resident",
            before >> 20,
            after >> 20
        );
        assert_eq!(kept.len(), 256);
        assert!(
            kept.iter()
                .enumerate()
                .all(|(i, b)| b[0] == ((i * 64) % 251) as u8)
        );
    }
}
