//! The measurement schedule: for each repetition, every measurement is taken on every route in
//! turn (the route order rotates each repetition), so slow drifts of a noisy machine hit all
//! routes alike. Raw results per repetition are kept; `report` reduces them.
//!
//! Owns: [`Samples`] and [`measure`], and reading the proxies' CPU and peak RSS around each
//! open-loop run.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::{Instant, sleep, sleep_until};

use crate::idle::{self, IdleSample};
use crate::load;
use crate::plan::Plan;
use crate::procs;
use crate::routes::Route;

/// One proxy's readings over one open-loop run.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyReading {
    /// `client` or `server`.
    pub side: &'static str,
    /// CPU seconds used during the recorded window.
    pub cpu_s: f64,
    /// Context switches of all its threads during the recorded window.
    pub context_switches: u64,
    /// Peak RSS (KiB) since the run began (reset before it when the kernel allows).
    pub peak_rss_kib: u64,
}

/// One open-loop run.
#[derive(Debug, Clone, Serialize)]
pub struct LatencySample {
    /// Repetition (0-based).
    pub rep: usize,
    /// Requests per second.
    pub rate: u32,
    /// Percentiles in nanoseconds: p50, p90, p99, p99.9, max.
    pub p50_ns: u64,
    /// See `p50_ns`.
    pub p90_ns: u64,
    /// See `p50_ns`.
    pub p99_ns: u64,
    /// See `p50_ns`.
    pub p999_ns: u64,
    /// See `p50_ns`.
    pub max_ns: u64,
    /// Requests due in the recorded window.
    pub expected: u64,
    /// Of those, completed.
    pub completed: u64,
    /// Of those, failed or never sent.
    pub errors: u64,
    /// The proxies' readings.
    pub proxies: Vec<ProxyReading>,
    /// Whether the peak RSS was reset before the run (else it is the process's lifetime peak).
    pub rss_reset: bool,
}

/// One new-connection run.
#[derive(Debug, Clone, Serialize)]
pub struct ConnSample {
    /// Repetition.
    pub rep: usize,
    /// Connections with a full exchange.
    pub completed: u64,
    /// Failed connections.
    pub errors: u64,
    /// Completed per second of wall time.
    pub per_second: f64,
    /// Connect + request + response, p50 and p99, nanoseconds.
    pub p50_ns: u64,
    /// See `p50_ns`.
    pub p99_ns: u64,
}

/// One pair of single-stream transfers.
#[derive(Debug, Clone, Serialize)]
pub struct StreamSample {
    /// Repetition.
    pub rep: usize,
    /// Generator → backend, MB/s; `None` if it failed.
    pub upload_mbps: Option<f64>,
    /// Backend → generator, MB/s.
    pub download_mbps: Option<f64>,
    /// CPU seconds of the route's proxies (all of them) per GB moved, both transfers together.
    pub cpu_s_per_gb: Option<f64>,
    /// Why a transfer failed.
    pub error: Option<String>,
}

/// Everything measured on one route.
#[derive(Debug, Serialize)]
pub struct Samples {
    /// Route name.
    pub route: &'static str,
    /// Open-loop runs.
    pub latency: Vec<LatencySample>,
    /// New-connection runs.
    pub conns: Vec<ConnSample>,
    /// Throughput runs.
    pub streams: Vec<StreamSample>,
    /// Connections at scale (routes in [`IDLE_ROUTES`] only).
    pub idle: Option<IdleSample>,
    /// Why connections at scale were not measured on this route (HAProxy beyond the
    /// open-file limit).
    pub idle_skipped: Option<String>,
    /// All recorded latencies per rate, every repetition merged (for the plots).
    #[serde(skip)]
    pub merged: BTreeMap<u32, Histogram<u64>>,
}

/// The routes the connections-at-scale scenario runs on (nginx and the Service route are
/// left out: each run opens and holds thousands of connections per route).
pub const IDLE_ROUTES: [&str; 4] = ["direct", "trellis", "trellis-b", "haproxy"];

/// Takes every measurement `plan.repetitions` times on every route; connections at scale once
/// per route, on its pair in `idle` if it has one there (same name), else on the route itself.
pub async fn measure(plan: &Plan, routes: &[Route], idle: &[Route]) -> Vec<Samples> {
    let mut all: Vec<Samples> = routes
        .iter()
        .map(|r| Samples {
            route: r.name,
            latency: vec![],
            conns: vec![],
            streams: vec![],
            idle: None,
            idle_skipped: None,
            merged: BTreeMap::new(),
        })
        .collect();
    let n = routes.len();
    let idle_runs = routes
        .iter()
        .enumerate()
        .filter(|(_, r)| plan.runs("idle") && IDLE_ROUTES.contains(&r.name));
    for (i, route) in idle_runs {
        let most = procs::haproxy_connections().saturating_sub(plan.connections);
        if route.name == "haproxy" && plan.idle.connections > most {
            let why = format!(
                "HAProxy holds two descriptors per connection: the open-file limit ({}) allows {most}",
                procs::open_files_limit()
            );
            eprintln!(
                "bench: {} open connections haproxy: not measured ({why})",
                plan.idle.connections
            );
            all[i].idle_skipped = Some(why);
            continue;
        }
        let own = idle.iter().find(|r| r.name == route.name).unwrap_or(route);
        let s = idle::measure(&plan.idle, own).await;
        let rss: Vec<String> = s
            .proxies
            .iter()
            .map(|p| {
                format!(
                    "{} {:.1} → {:.1} MiB",
                    p.side,
                    p.rss_before_kib as f64 / 1024.0,
                    p.rss_open_kib as f64 / 1024.0
                )
            })
            .collect();
        eprintln!(
            "bench: {} open connections {:<9} opened in {:.1} s  p99 {:>8.1} µs  errors {}  {}{}",
            plan.idle.connections,
            route.name,
            s.open_s,
            s.p99_ns as f64 / 1e3,
            s.errors,
            rss.join(", "),
            s.error
                .as_deref()
                .map(|e| format!("  ({e})"))
                .unwrap_or_default()
        );
        all[i].idle = Some(s);
        // The fleet's sockets close when it is dropped; give the proxies time to see them go.
        sleep(plan.settle.max(Duration::from_secs(1))).await;
    }
    for rep in 0..plan.repetitions {
        let order: Vec<usize> = (0..n).map(|i| (i + rep) % n).collect();
        let rates: &[u32] = if plan.runs("latency") {
            &plan.rates
        } else {
            &[]
        };
        for &rate in rates {
            for &i in &order {
                let s = latency_once(plan, &routes[i], rate, rep).await;
                eprintln!(
                    "bench: rep {}/{} {:>5} req/s {:<8} p50 {:>7.1} µs  p99 {:>8.1} µs  errors {}",
                    rep + 1,
                    plan.repetitions,
                    rate,
                    routes[i].name,
                    s.0.p50_ns as f64 / 1e3,
                    s.0.p99_ns as f64 / 1e3,
                    s.0.errors
                );
                all[i].latency.push(s.0);
                let merged = all[i].merged.entry(rate).or_insert_with(load::histogram);
                let _ = merged.add(&s.1);
                sleep(plan.settle).await;
            }
        }
        for &i in order.iter().filter(|_| plan.runs("connections")) {
            let r = load::connection_rate(
                routes[i].http,
                plan.conn_concurrency,
                plan.conn_duration,
                plan.conn_max,
            )
            .await;
            let per_second = r.completed as f64 / r.elapsed.as_secs_f64().max(1e-9);
            eprintln!(
                "bench: rep {}/{} new connections {:<8} {:>8.0}/s  errors {}",
                rep + 1,
                plan.repetitions,
                routes[i].name,
                per_second,
                r.errors
            );
            all[i].conns.push(ConnSample {
                rep,
                completed: r.completed,
                errors: r.errors,
                per_second,
                p50_ns: r.hist.value_at_quantile(0.5),
                p99_ns: r.hist.value_at_quantile(0.99),
            });
            sleep(plan.settle).await;
        }
        for &i in order.iter().filter(|_| plan.runs("throughput")) {
            let trees: Vec<Vec<u32>> = routes[i]
                .proxies
                .iter()
                .map(|p| procs::tree(p.pid))
                .collect();
            let cpu = || trees.iter().map(|t| procs::cpu_seconds(t)).sum::<f64>();
            let cpu0 = cpu();
            let up = load::upload(routes[i].stream, plan.stream_bytes, plan.stream_limit).await;
            sleep(plan.settle).await;
            let down = load::download(routes[i].stream, plan.stream_bytes, plan.stream_limit).await;
            let moved_gb = 2.0 * plan.stream_bytes as f64 / 1e9;
            let cpu_s_per_gb = (!trees.is_empty() && up.is_ok() && down.is_ok())
                .then(|| (cpu() - cpu0).max(0.0) / moved_gb);
            let error = [up.as_ref().err(), down.as_ref().err()]
                .into_iter()
                .flatten()
                .map(|e| format!("{e:#}"))
                .next();
            eprintln!(
                "bench: rep {}/{} single stream {:<8} up {:>7.0} MB/s  down {:>7.0} MB/s{}",
                rep + 1,
                plan.repetitions,
                routes[i].name,
                up.as_ref().copied().unwrap_or(0.0),
                down.as_ref().copied().unwrap_or(0.0),
                error
                    .as_deref()
                    .map(|e| format!("  ({e})"))
                    .unwrap_or_default()
            );
            all[i].streams.push(StreamSample {
                rep,
                upload_mbps: up.ok(),
                download_mbps: down.ok(),
                cpu_s_per_gb,
                error,
            });
            sleep(plan.settle).await;
        }
    }
    all
}

/// One open-loop run on `route`, with the proxies' CPU over the recorded window and their peak
/// RSS over the whole run.
async fn latency_once(
    plan: &Plan,
    route: &Route,
    rate: u32,
    rep: usize,
) -> (LatencySample, Histogram<u64>) {
    let trees: Vec<(&'static str, Vec<u32>)> = route
        .proxies
        .iter()
        .map(|p| (p.side, procs::tree(p.pid)))
        .collect();
    let rss_reset = trees.iter().all(|(_, t)| procs::reset_peak_rss(t));
    let cpu = || -> Vec<(f64, u64)> {
        trees
            .iter()
            .map(|(_, t)| (procs::cpu_seconds(t), procs::context_switches(t)))
            .collect()
    };
    let expected = (f64::from(rate) * plan.measure.as_secs_f64()).round() as u64;
    let mut sample = LatencySample {
        rep,
        rate,
        p50_ns: 0,
        p90_ns: 0,
        p99_ns: 0,
        p999_ns: 0,
        max_ns: 0,
        expected,
        completed: 0,
        errors: expected,
        proxies: vec![],
        rss_reset,
    };
    let conns =
        match load::open_connections(route.http, plan.connections, Duration::from_secs(10)).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!(
                    "bench: {}: cannot open {} connections: {e:#}",
                    route.name, plan.connections
                );
                return (sample, load::histogram());
            }
        };
    let start = Instant::now() + Duration::from_millis(20);
    let window = start + plan.warmup;
    let (run, cpu0) = tokio::join!(
        load::latency(
            conns,
            rate,
            start,
            plan.warmup,
            plan.measure,
            Duration::from_secs(5)
        ),
        async {
            sleep_until(window).await;
            cpu()
        }
    );
    let cpu1 = cpu();
    let h = &run.hist;
    sample.p50_ns = h.value_at_quantile(0.5);
    sample.p90_ns = h.value_at_quantile(0.9);
    sample.p99_ns = h.value_at_quantile(0.99);
    sample.p999_ns = h.value_at_quantile(0.999);
    sample.max_ns = h.max();
    sample.expected = run.expected;
    sample.completed = h.len();
    sample.errors = run.errors;
    sample.proxies = trees
        .iter()
        .zip(cpu0.iter().zip(&cpu1))
        .map(|((side, tree), (a, b))| ProxyReading {
            side,
            cpu_s: (b.0 - a.0).max(0.0),
            context_switches: b.1.saturating_sub(a.1),
            peak_rss_kib: procs::peak_rss_kib(tree),
        })
        .collect();
    (sample, run.hist)
}
