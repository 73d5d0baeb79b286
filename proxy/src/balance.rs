//! Choosing the endpoint of a Service for a new connection, as a pure function: power of two
//! choices over the endpoints' connections in flight, with the moving average of tunnel open
//! latency breaking ties when one endpoint is clearly slower to open (2× and by a millisecond).
//!
//! Rules: never an endpoint that is not serving; terminating-but-serving endpoints only when no
//! endpoint is ready; endpoints already tried for this connection are skipped. Two candidates
//! are drawn at random (the caller supplies the randomness, so tests choose it) and the less
//! loaded wins — which sends fewer connections to an endpoint that holds them longer (a slow
//! one) without the herding of "always the least loaded".

use std::net::SocketAddr;

use crate::services::{Endpoint, ServicePort};

/// The endpoint for a new connection to `port`, skipping `tried`; `None` when no endpoint may
/// take it. `r1` and `r2` are random numbers.
pub fn pick<'a>(
    port: &'a ServicePort,
    tried: &[SocketAddr],
    r1: u32,
    r2: u32,
) -> Option<&'a Endpoint> {
    let tier = if port.ready.iter().any(|&i| usable(port, i, tried)) {
        &port.ready
    } else {
        &port.draining
    };
    if tried.is_empty() {
        return two_choices(port, tier, r1, r2);
    }
    // A retry: the rare path; allocation is fine here.
    let left: Vec<usize> = tier
        .iter()
        .copied()
        .filter(|&i| usable(port, i, tried))
        .collect();
    two_choices(port, &left, r1, r2)
}

fn usable(port: &ServicePort, i: usize, tried: &[SocketAddr]) -> bool {
    port.endpoints
        .get(i)
        .is_some_and(|e| !tried.contains(&e.addr))
}

/// Power of two choices among the endpoints at `candidates` (indexes into `port.endpoints`).
fn two_choices<'a>(
    port: &'a ServicePort,
    candidates: &[usize],
    r1: u32,
    r2: u32,
) -> Option<&'a Endpoint> {
    let n = candidates.len();
    let endpoint = |k: usize| candidates.get(k).and_then(|&i| port.endpoints.get(i));
    match n {
        0 => None,
        1 => endpoint(0),
        _ => {
            let a = r1 as usize % n;
            // A different second candidate: an offset of 1..n-1 from the first.
            let b = (a + 1 + r2 as usize % (n - 1)) % n;
            let (ea, eb) = (endpoint(a)?, endpoint(b)?);
            let (la, lb) = (&ea.load, &eb.load);
            let b_wins = match lb.active().cmp(&la.active()) {
                std::cmp::Ordering::Less => true,
                std::cmp::Ordering::Greater => false,
                std::cmp::Ordering::Equal => clearly_faster(lb.open_ewma_us(), la.open_ewma_us()),
            };
            Some(if b_wins { eb } else { ea })
        }
    }
}

/// Whether an average open latency of `x` µs is clearly below `y` µs: at most half and at least
/// [`NOISE_US`] less, both measured. Small differences are noise (a stream on a pooled tunnel
/// opens in tens of µs, and a busy node doubles that at random); breaking ties on them would
/// send every connection of a quiet client to whichever endpoints happened to measure fastest
/// and starve the rest.
fn clearly_faster(x: u32, y: u32) -> bool {
    x > 0 && y > 0 && x.saturating_mul(2) <= y && y - x >= NOISE_US
}

/// Differences in open latency below this (µs) never decide between two endpoints.
const NOISE_US: u32 = 1_000;

#[cfg(test)]
#[path = "balance_tests.rs"]
mod tests;
