//! Connections at scale: N application connections held open through one route at once, each
//! carrying one request every few seconds (the fleet's own requests are the latency sample).
//! Measured once per route, first in the run, while the proxies are fresh (a Trellis route's on a
//! pair of its own, which no other measurement uses afterwards): their RSS before the
//! connections open and while they are open, the difference per connection, and the latency
//! of the fleet's requests (added = route − direct).
//!
//! Owns: [`IdleSample`], [`measure`] (opening the fleet from sources spread over 127.0.0.0/8, so
//! no one source address runs out of ports) and [`IdleSummary`] (what the report shows).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout_at};

use crate::load;
use crate::procs;
use crate::routes::Route;

/// Most connections one run can open: sources are 127.1.x.y with x < 256 and 250 values of y.
pub const MAX_CONNECTIONS: usize = 256 * 250;
/// Connections opened at once while the fleet is built.
const OPEN_BATCH: usize = 32;
/// Longest the fleet may take to open.
const OPEN_LIMIT: Duration = Duration::from_secs(180);

/// What a run of the scenario does.
#[derive(Debug, Clone, Serialize)]
pub struct IdlePlan {
    /// Connections held open at once.
    pub connections: usize,
    /// Each connection sends one request this often.
    #[serde(serialize_with = "crate::plan::secs")]
    pub interval: Duration,
    /// Intervals recorded after one interval of warm-up.
    pub intervals: u32,
}

/// The fleet's requests per second at most: the generator's one thread keeps its own latency
/// well under the proxies' at this rate (at 10,000/s direct's p99 was seconds).
const MAX_FLEET_RATE: f64 = 2_000.0;

impl IdlePlan {
    /// The plan with `n` connections, the interval lengthened if the fleet would send more than
    /// [`MAX_FLEET_RATE`] requests per second.
    pub fn with_connections(self, n: usize) -> Self {
        let least = Duration::from_secs_f64(n as f64 / MAX_FLEET_RATE);
        Self {
            connections: n,
            interval: self.interval.max(least),
            ..self
        }
    }
}

/// One proxy's memory over the scenario.
#[derive(Debug, Clone, Serialize)]
pub struct IdleProxy {
    /// `client` or `server`.
    pub side: &'static str,
    /// RSS before the fleet opened (KiB).
    pub rss_before_kib: u64,
    /// Highest RSS read while the fleet was open (KiB): after the warm-up and at the end.
    pub rss_open_kib: u64,
    /// CPU seconds over the recorded window.
    pub cpu_s: f64,
}

/// One route's run of the scenario.
#[derive(Debug, Clone, Serialize)]
pub struct IdleSample {
    /// Connections opened (all of them, or the run failed).
    pub connections: usize,
    /// Seconds it took to open them (each with one request).
    pub open_s: f64,
    /// The fleet's requests: p50 and p99 (ns), completed, due, failed.
    pub p50_ns: u64,
    /// See `p50_ns`.
    pub p99_ns: u64,
    /// See `p50_ns`.
    pub completed: u64,
    /// See `p50_ns`.
    pub expected: u64,
    /// See `p50_ns`.
    pub errors: u64,
    /// The route's proxies.
    pub proxies: Vec<IdleProxy>,
    /// Why the fleet could not be opened.
    pub error: Option<String>,
}

/// The source address of connection `i`: 127.1.(i / 250).(1 + i % 250).
fn source(i: usize) -> SocketAddr {
    let (x, y) = (i / 250 % 256, 1 + i % 250);
    SocketAddrV4::new(Ipv4Addr::new(127, 1, x as u8, y as u8), 0).into()
}

/// Opens connection `i` and carries one request on it.
async fn open_one(addr: SocketAddr, i: usize, deadline: Instant) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket
        .bind(source(i))
        .with_context(|| format!("bind {}", source(i)))?;
    let mut s = timeout_at(deadline, socket.connect(addr))
        .await
        .context("connect timed out")??;
    s.set_nodelay(true)?;
    let mut buf = [0u8; 128];
    timeout_at(deadline, load::exchange(&mut s, &mut buf))
        .await
        .context("first request timed out")??;
    Ok(s)
}

/// Opens `n` connections to `addr`, `OPEN_BATCH` at a time.
async fn open_fleet(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<TcpStream>> {
    let deadline = Instant::now() + OPEN_LIMIT;
    let mut conns = Vec::with_capacity(n);
    for start in (0..n).step_by(OPEN_BATCH) {
        let mut batch = JoinSet::new();
        for i in start..(start + OPEN_BATCH).min(n) {
            batch.spawn(open_one(addr, i, deadline));
        }
        while let Some(r) = batch.join_next().await {
            let s = r.context("opening task failed")?;
            conns.push(s.with_context(|| format!("after {} connections", conns.len()))?);
        }
    }
    Ok(conns)
}

/// Runs the scenario on `route`.
pub async fn measure(plan: &IdlePlan, route: &Route) -> IdleSample {
    let trees: Vec<(&'static str, Vec<u32>)> = route
        .proxies
        .iter()
        .map(|p| (p.side, procs::tree(p.pid)))
        .collect();
    let rss = || -> Vec<u64> { trees.iter().map(|(_, t)| procs::rss_kib(t)).collect() };
    let before = rss();
    let mut sample = IdleSample {
        connections: 0,
        open_s: 0.0,
        p50_ns: 0,
        p99_ns: 0,
        completed: 0,
        expected: 0,
        errors: 0,
        proxies: vec![],
        error: None,
    };
    let opened = std::time::Instant::now();
    let conns = match open_fleet(route.http, plan.connections).await {
        Ok(c) => c,
        Err(e) => {
            sample.error = Some(format!("{e:#}"));
            return sample;
        }
    };
    sample.connections = conns.len();
    sample.open_s = opened.elapsed().as_secs_f64();
    // Request i is due at start + i / rate on connection i mod N: every connection once per
    // interval, spread evenly over it.
    let rate = ((plan.connections as f64 / plan.interval.as_secs_f64()).round() as u32).max(1);
    let start = Instant::now() + Duration::from_millis(20);
    let measure = plan.interval * plan.intervals;
    let window = start + plan.interval;
    let cpu = || -> Vec<f64> { trees.iter().map(|(_, t)| procs::cpu_seconds(t)).collect() };
    let (run, (warm_rss, cpu0)) = tokio::join!(
        load::latency(
            conns,
            rate,
            start,
            plan.interval,
            measure,
            Duration::from_secs(5)
        ),
        async {
            sleep_until(window).await;
            (rss(), cpu())
        }
    );
    let (end_rss, cpu1) = (rss(), cpu());
    sample.p50_ns = run.hist.value_at_quantile(0.5);
    sample.p99_ns = run.hist.value_at_quantile(0.99);
    sample.completed = run.hist.len();
    sample.expected = run.expected;
    sample.errors = run.errors;
    sample.proxies = trees
        .iter()
        .enumerate()
        .map(|(k, (side, _))| IdleProxy {
            side,
            rss_before_kib: before[k],
            rss_open_kib: warm_rss[k].max(end_rss[k]),
            cpu_s: (cpu1[k] - cpu0[k]).max(0.0),
        })
        .collect();
    sample
}

/// One proxy's figures in the report.
#[derive(Debug, Clone, Serialize)]
pub struct IdleProxySummary {
    /// `client` or `server`.
    pub side: &'static str,
    /// RSS before the fleet opened, MiB.
    pub rss_before_mib: f64,
    /// RSS while it was open, MiB.
    pub rss_open_mib: f64,
    /// (open − before) ÷ connections, KiB.
    pub kib_per_connection: f64,
}

/// One route's figures in the report.
#[derive(Debug, Clone, Serialize)]
pub struct IdleSummary {
    /// Connections held open.
    pub connections: usize,
    /// The fleet's requests, p50 and p99 (µs), and p99 minus direct's.
    pub p50_us: f64,
    /// See `p50_us`.
    pub p99_us: f64,
    /// See `p50_us`; `None` for direct itself or when direct has no figure.
    pub added_p99_us: Option<f64>,
    /// Failed requests of the recorded window.
    pub errors: u64,
    /// Per proxy.
    pub proxies: Vec<IdleProxySummary>,
}

/// The report's figures for `route` (`direct`: the reference for added latency).
pub fn summarize(route: &IdleSample, direct: Option<&IdleSample>) -> Option<IdleSummary> {
    if route.connections == 0 || route.completed == 0 {
        return None;
    }
    let us = |ns: u64| ns as f64 / 1e3;
    let mib = |kib: u64| kib as f64 / 1024.0;
    Some(IdleSummary {
        connections: route.connections,
        p50_us: us(route.p50_ns),
        p99_us: us(route.p99_ns),
        added_p99_us: direct
            .filter(|d| d.completed > 0 && !std::ptr::eq(*d, route))
            .map(|d| us(route.p99_ns) - us(d.p99_ns)),
        errors: route.errors,
        proxies: route
            .proxies
            .iter()
            .map(|p| IdleProxySummary {
                side: p.side,
                rss_before_mib: mib(p.rss_before_kib),
                rss_open_mib: mib(p.rss_open_kib),
                kib_per_connection: p.rss_open_kib.saturating_sub(p.rss_before_kib) as f64
                    / route.connections as f64,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_distinct_loopback_addresses_up_to_the_maximum() {
        let all: std::collections::BTreeSet<SocketAddr> =
            (0..MAX_CONNECTIONS).map(source).collect();
        assert_eq!(all.len(), MAX_CONNECTIONS);
        for a in [source(0), source(MAX_CONNECTIONS - 1)] {
            let SocketAddr::V4(v4) = a else {
                panic!("{a} is not IPv4")
            };
            assert_eq!(v4.ip().octets()[..2], [127, 1], "{a}");
            assert_ne!(v4.ip().octets()[3], 0, "{a}");
            assert_ne!(v4.ip().octets()[3], 255, "{a}");
        }
    }

    #[test]
    fn a_larger_fleet_gets_a_longer_interval_so_its_rate_stays_bounded() {
        let quick = IdlePlan {
            connections: 200,
            interval: Duration::from_secs(1),
            intervals: 2,
        };
        let cases = [(200, 1.0), (2_000, 1.0), (10_000, 5.0), (20_000, 10.0)];
        for (n, secs) in cases {
            let p = quick.clone().with_connections(n);
            assert_eq!(p.connections, n);
            assert_eq!(p.interval, Duration::from_secs_f64(secs), "{n} connections");
            assert_eq!(p.intervals, 2);
        }
    }

    #[test]
    fn memory_per_connection_is_the_growth_divided_by_the_connections() {
        let sample = IdleSample {
            connections: 1000,
            open_s: 1.0,
            p50_ns: 200_000,
            p99_ns: 900_000,
            completed: 2000,
            expected: 2000,
            errors: 0,
            proxies: vec![IdleProxy {
                side: "client",
                rss_before_kib: 8 * 1024,
                rss_open_kib: 8 * 1024 + 6000,
                cpu_s: 0.1,
            }],
            error: None,
        };
        let direct = IdleSample {
            p99_ns: 100_000,
            proxies: vec![],
            ..sample.clone()
        };
        let s = summarize(&sample, Some(&direct)).unwrap();
        assert_eq!(s.proxies[0].kib_per_connection, 6.0);
        assert_eq!(s.added_p99_us, Some(800.0));
        assert_eq!(
            summarize(&direct, Some(&direct)).unwrap().added_p99_us,
            None
        );
        let failed = IdleSample {
            connections: 0,
            ..sample
        };
        assert!(summarize(&failed, Some(&direct)).is_none());
    }
}
