use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::services::{EndpointLoad, Health};

/// `spec`: one letter per endpoint: R ready, D draining, U unavailable; endpoint i is
/// 198.18.0.(i+1):8080.
fn port(spec: &str) -> ServicePort {
    let endpoints = spec
        .chars()
        .enumerate()
        .map(|(i, c)| Endpoint {
            addr: addr(i),
            health: match c {
                'R' => Health::Ready,
                'D' => Health::Draining,
                _ => Health::Unavailable,
            },
            load: Arc::new(EndpointLoad::default()),
        })
        .collect();
    ServicePort::new(80, "http".into(), endpoints)
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::new(format!("198.18.0.{}", i + 1).parse().unwrap(), 8080)
}

/// Index of the endpoint picked, or None.
fn picked(p: &ServicePort, tried: &[usize], r1: u32, r2: u32) -> Option<usize> {
    let tried: Vec<SocketAddr> = tried.iter().map(|&i| addr(i)).collect();
    pick(p, &tried, r1, r2).map(|e| p.endpoints.iter().position(|x| x.addr == e.addr).unwrap())
}

#[test]
fn the_choice_follows_the_rules_of_health_and_retries() {
    // (endpoints, tried, r1, r2, expected)
    type Case<'a> = (&'a str, &'a [usize], u32, u32, Option<usize>);
    let cases: &[Case] = &[
        ("", &[], 0, 0, None),
        ("U", &[], 0, 0, None),
        ("UU", &[], 5, 9, None),
        ("R", &[], 7, 3, Some(0)),
        ("UR", &[], 0, 0, Some(1)),
        ("URU", &[], 99, 1, Some(1)),
        // Draining endpoints only when nothing is ready.
        ("DR", &[], 0, 0, Some(1)),
        ("DU", &[], 0, 0, Some(0)),
        ("DD", &[], 3, 0, Some(1)),
        // Tried endpoints are skipped; then draining ones are the last resort.
        ("RR", &[0], 0, 0, Some(1)),
        ("RRD", &[0, 1], 0, 0, Some(2)),
        ("RRD", &[0, 1, 2], 0, 0, None),
        ("RU", &[0], 0, 0, None),
        // Equal loads: the first of the two drawn.
        ("RRR", &[], 1, 0, Some(1)),
        ("RRR", &[], 2, 0, Some(2)),
    ];
    for (spec, tried, r1, r2, want) in cases {
        let p = port(spec);
        assert_eq!(
            picked(&p, tried, *r1, *r2),
            *want,
            "{spec:?} tried {tried:?} r=({r1},{r2})"
        );
    }
}

#[test]
fn of_the_two_drawn_the_one_with_fewer_connections_wins_then_the_faster() {
    let p = port("RRR");
    let _busy = (p.endpoints[0].load.start(), p.endpoints[0].load.start());
    let _one = p.endpoints[1].load.start();
    // r1 = 0 draws endpoint 0, r2 = 0 → offset 1 → endpoint 1: 1 connection beats 2.
    assert_eq!(picked(&p, &[], 0, 0), Some(1));
    // Endpoint 0 against endpoint 2 (offset 2): 0 connections wins.
    assert_eq!(picked(&p, &[], 0, 1), Some(2));
    // Equal connections: a clearly lower open latency wins...
    let q = port("RR");
    q.endpoints[0].load.observe_open(Duration::from_millis(5));
    q.endpoints[1].load.observe_open(Duration::from_millis(1));
    assert_eq!(picked(&q, &[], 0, 0), Some(1));
    assert_eq!(picked(&q, &[], 1, 0), Some(1));
    // ...a small difference is noise: the first drawn.
    let n = port("RR");
    n.endpoints[0].load.observe_open(Duration::from_micros(300));
    n.endpoints[1].load.observe_open(Duration::from_micros(200));
    assert_eq!(picked(&n, &[], 0, 0), Some(0));
    assert_eq!(picked(&n, &[], 1, 0), Some(1));
    // ...and so is a large ratio of tiny latencies (a pooled tunnel on a busy node).
    let t = port("RR");
    t.endpoints[0].load.observe_open(Duration::from_micros(400));
    t.endpoints[1].load.observe_open(Duration::from_micros(150));
    assert_eq!(picked(&t, &[], 0, 0), Some(0));
    assert_eq!(picked(&t, &[], 1, 0), Some(1));
}

#[test]
fn the_two_candidates_are_always_different_endpoints() {
    for n in 2..7usize {
        let p = port(&"R".repeat(n));
        // Load every endpoint but one: whoever is drawn with it must lose to it.
        let guards: Vec<_> = (1..n).map(|i| p.endpoints[i].load.start()).collect();
        let mut idle_seen = 0;
        for r1 in 0..n as u32 {
            for r2 in 0..(n as u32 - 1) {
                let a = r1 as usize % n;
                let b = (a + 1 + r2 as usize % (n - 1)) % n;
                assert_ne!(a, b);
                if picked(&p, &[], r1, r2) == Some(0) {
                    idle_seen += 1;
                }
            }
        }
        // Endpoint 0 wins every draw it is part of: 2(n-1) of the n(n-1) draws.
        assert_eq!(idle_seen, 2 * (n - 1), "n = {n}");
        drop(guards);
    }
}

#[test]
fn a_guard_counts_a_connection_until_dropped_and_the_average_moves_towards_samples() {
    let load = Arc::new(EndpointLoad::default());
    let g = load.start();
    assert_eq!(load.active(), 1);
    drop(g);
    assert_eq!(load.active(), 0);
    load.observe_open(Duration::from_micros(1000));
    assert_eq!(load.unfaded_us(), 1000);
    load.observe_open(Duration::from_micros(2000));
    assert_eq!(load.unfaded_us(), 1300);
    // Read back, it has faded by at most the time since (a fraction of a half-life here).
    assert!((1..=1300).contains(&load.open_ewma_us()));
}

#[test]
fn an_open_latency_average_fades_by_half_every_half_life_and_stays_measured() {
    use crate::services::{OPEN_LATENCY_HALF_LIFE_MS as H, faded_us};
    let table = [
        // (average µs, age ms, faded µs)
        (0, 0, 0),
        (0, 10 * H, 0),
        (5_000, 0, 5_000),
        (5_000, H, 2_500),
        (5_000, 2 * H, 1_250),
        (8_000, 3 * H, 1_000),
        (5_000, 100 * H, 1),
        (5_000, u32::MAX, 1),
    ];
    for (avg, age, want) in table {
        assert_eq!(faded_us(avg, age), want, "faded_us({avg}, {age})");
    }
}
