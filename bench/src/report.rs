//! Reducing the repetitions: medians per route, latency *added* over direct (paired by
//! repetition), CPU per 1,000 requests, peak RSS, connections at scale; the completeness check
//! the CI smoke relies on. The targets (Trellis ÷ HAProxy) are computed in `targets`.
//!
//! Owns: [`Report`] (also the JSON document) and [`build`]. Rendering is in `markdown`.

use serde::Serialize;

use crate::idle::{self, IdleSummary};
use crate::plan::Plan;
use crate::run::{IDLE_ROUTES, Samples};

/// Facts about the machine and the software compared.
#[derive(Debug, Clone, Serialize)]
pub struct Environment {
    /// UTC time of the run.
    pub date: String,
    /// CPU model.
    pub cpu: String,
    /// Online CPUs.
    pub cores: usize,
    /// Kernel release.
    pub kernel: String,
    /// `haproxy -v`, first line.
    pub haproxy: String,
    /// `nginx -v`.
    pub nginx: String,
    /// `git describe` of the workspace.
    pub trellis: String,
    /// When the `trellis-proxy` binary under test was written.
    pub proxy_built: String,
    /// `/proc/loadavg` (1, 5, 15 min) when the run started and when it ended: other work on
    /// the machine shows here.
    pub load_before: String,
    /// See `load_before`.
    pub load_after: String,
}

/// Medians at one rate.
#[derive(Debug, Clone, Serialize)]
pub struct RateSummary {
    /// Requests per second.
    pub rate: u32,
    /// Latency percentiles, µs (medians over repetitions): p50, p90, p99, p99.9, max.
    pub us: [Option<f64>; 5],
    /// The same minus direct's in the same repetition, µs (medians of the differences).
    pub added_us: [Option<f64>; 5],
    /// CPU time of the route's proxies together per 1,000 requests, ms.
    pub cpu_ms_per_1k: Option<f64>,
    /// Requests due / completed / failed, summed over repetitions.
    pub expected: u64,
    /// See `expected`.
    pub completed: u64,
    /// See `expected`.
    pub errors: u64,
}

/// One proxy process's medians.
#[derive(Debug, Clone, Serialize)]
pub struct ProxySummary {
    /// `client` or `server`.
    pub side: &'static str,
    /// Per rate: (rate, highest peak RSS over repetitions in MiB, median CPU ms per 1k requests).
    pub per_rate: Vec<(u32, Option<f64>, Option<f64>)>,
    /// Per rate: median context switches per request.
    pub switches_per_request: Vec<(u32, Option<f64>)>,
}

/// One route's medians.
#[derive(Debug, Clone, Serialize)]
pub struct RouteSummary {
    /// Route name.
    pub route: &'static str,
    /// Open-loop results per rate.
    pub latency: Vec<RateSummary>,
    /// New connections per second (median).
    pub conns_per_s: Option<f64>,
    /// Connect + request + response time, p50 and p99, µs (medians).
    pub conn_p50_us: Option<f64>,
    /// See `conn_p50_us`.
    pub conn_p99_us: Option<f64>,
    /// Failed new connections, summed.
    pub conn_errors: u64,
    /// Single-stream MB/s, medians.
    pub upload_mbps: Option<f64>,
    /// See `upload_mbps`.
    pub download_mbps: Option<f64>,
    /// Proxy CPU seconds per GB moved (median; none for direct).
    pub stream_cpu_s_per_gb: Option<f64>,
    /// Failed transfers.
    pub stream_errors: usize,
    /// Per proxy process.
    pub proxies: Vec<ProxySummary>,
    /// Connections at scale.
    pub idle: Option<IdleSummary>,
    /// Why connections at scale were not measured.
    pub idle_skipped: Option<String>,
}

/// One of the targets.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What is compared.
    pub name: String,
    /// Trellis's figure.
    pub trellis: Option<f64>,
    /// HAProxy's figure (the reference), if the target is relative.
    pub haproxy: Option<f64>,
    /// Trellis ÷ HAProxy.
    pub ratio: Option<f64>,
    /// The requirement, in words.
    pub requirement: String,
    /// Met or not (`None`: not measurable in this run).
    pub pass: Option<bool>,
    /// Extra words (e.g. whether a stretch goal was met).
    pub note: String,
}

/// The whole result; serialized as the `--json` document.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The machine.
    pub environment: Environment,
    /// The schedule.
    pub plan: Plan,
    /// Medians per route.
    pub routes: Vec<RouteSummary>,
    /// Targets.
    pub targets: Vec<Target>,
    /// An A/B run (`--ab`): the target rows of `trellis-b` (in `trellis`) against `trellis`
    /// (in `haproxy`); empty otherwise.
    pub ab: Vec<Target>,
    /// Every route carried traffic in every measurement and every cell has a figure.
    pub complete: bool,
    /// What makes the report incomplete.
    pub problems: Vec<String>,
    /// Worth a look, but not a failure (e.g. some requests failed).
    pub warnings: Vec<String>,
    /// Raw per-repetition results.
    pub samples: Vec<Samples>,
}

/// Median of the values (mean of the middle two for an even count); `None` if empty.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

fn percentiles_us(s: &crate::run::LatencySample) -> [f64; 5] {
    [s.p50_ns, s.p90_ns, s.p99_ns, s.p999_ns, s.max_ns].map(|v| v as f64 / 1e3)
}

fn summarize(route: &Samples, direct: &Samples, rates: &[u32]) -> RouteSummary {
    let mut latency = Vec::new();
    let mut sides: Vec<&'static str> = Vec::new();
    for s in &route.latency {
        for p in &s.proxies {
            if !sides.contains(&p.side) {
                sides.push(p.side);
            }
        }
    }
    let mut proxies: Vec<ProxySummary> = sides
        .iter()
        .map(|&side| ProxySummary {
            side,
            per_rate: vec![],
            switches_per_request: vec![],
        })
        .collect();
    for &rate in rates {
        let ok: Vec<_> = route
            .latency
            .iter()
            .filter(|s| s.rate == rate && s.completed > 0)
            .collect();
        let mut us = [None; 5];
        let mut added_us = [None; 5];
        for k in 0..5 {
            us[k] = median(ok.iter().map(|s| percentiles_us(s)[k]).collect());
            added_us[k] = median(
                ok.iter()
                    .filter_map(|s| {
                        let d = direct
                            .latency
                            .iter()
                            .find(|d| d.rate == rate && d.rep == s.rep && d.completed > 0)?;
                        Some(percentiles_us(s)[k] - percentiles_us(d)[k])
                    })
                    .collect(),
            );
        }
        let per_1k = |s: &crate::run::LatencySample, side: Option<&str>| {
            let cpu: f64 = s
                .proxies
                .iter()
                .filter(|p| side.is_none_or(|x| x == p.side))
                .map(|p| p.cpu_s)
                .sum();
            cpu * 1e3 / s.completed as f64 * 1e3
        };
        let cpu_ms_per_1k = if sides.is_empty() {
            None
        } else {
            median(ok.iter().map(|s| per_1k(s, None)).collect())
        };
        for p in &mut proxies {
            let rss = ok
                .iter()
                .flat_map(|s| s.proxies.iter().filter(|r| r.side == p.side))
                .map(|r| r.peak_rss_kib as f64 / 1024.0)
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
            let cpu = median(ok.iter().map(|s| per_1k(s, Some(p.side))).collect());
            p.per_rate.push((rate, rss, cpu));
            let switches = median(
                ok.iter()
                    .flat_map(|s| {
                        s.proxies
                            .iter()
                            .filter(|r| r.side == p.side)
                            .map(|r| r.context_switches as f64 / s.completed as f64)
                    })
                    .collect(),
            );
            p.switches_per_request.push((rate, switches));
        }
        let all: Vec<_> = route.latency.iter().filter(|s| s.rate == rate).collect();
        latency.push(RateSummary {
            rate,
            us,
            added_us,
            cpu_ms_per_1k,
            expected: all.iter().map(|s| s.expected).sum(),
            completed: all.iter().map(|s| s.completed).sum(),
            errors: all.iter().map(|s| s.errors).sum(),
        });
    }
    let ok_conns: Vec<_> = route.conns.iter().filter(|c| c.completed > 0).collect();
    RouteSummary {
        route: route.route,
        latency,
        conns_per_s: median(ok_conns.iter().map(|c| c.per_second).collect()),
        conn_p50_us: median(ok_conns.iter().map(|c| c.p50_ns as f64 / 1e3).collect()),
        conn_p99_us: median(ok_conns.iter().map(|c| c.p99_ns as f64 / 1e3).collect()),
        conn_errors: route.conns.iter().map(|c| c.errors).sum(),
        upload_mbps: median(route.streams.iter().filter_map(|s| s.upload_mbps).collect()),
        download_mbps: median(
            route
                .streams
                .iter()
                .filter_map(|s| s.download_mbps)
                .collect(),
        ),
        stream_cpu_s_per_gb: median(
            route
                .streams
                .iter()
                .filter_map(|s| s.cpu_s_per_gb)
                .collect(),
        ),
        stream_errors: route.streams.iter().filter(|s| s.error.is_some()).count(),
        proxies,
        idle: route
            .idle
            .as_ref()
            .and_then(|i| idle::summarize(i, direct.idle.as_ref())),
        idle_skipped: route.idle_skipped.clone(),
    }
}

/// Builds the report from the raw samples.
pub fn build(environment: Environment, plan: Plan, samples: Vec<Samples>) -> Report {
    let Some(direct) = samples.iter().find(|s| s.route == "direct") else {
        return Report {
            environment,
            plan,
            routes: vec![],
            targets: vec![],
            ab: vec![],
            complete: false,
            problems: vec!["no direct route measured".into()],
            warnings: vec![],
            samples,
        };
    };
    let routes: Vec<RouteSummary> = samples
        .iter()
        .map(|s| summarize(s, direct, &plan.rates))
        .collect();
    let (problems, warnings) = check(&routes, &plan);
    let targets = crate::targets::targets(&routes, &plan);
    let ab = crate::targets::ab(&routes, &plan);
    Report {
        ab,
        environment,
        complete: problems.is_empty(),
        problems,
        warnings,
        targets,
        routes,
        plan,
        samples,
    }
}

/// Missing figures (problems) and failed requests (warnings).
fn check(routes: &[RouteSummary], plan: &Plan) -> (Vec<String>, Vec<String>) {
    let (mut problems, mut warnings) = (vec![], vec![]);
    for skipped in &plan.skip {
        problems.push(format!("{skipped} was skipped (--skip)"));
    }
    for want in ["direct", "trellis", "trellis-service", "haproxy", "nginx"] {
        if !routes.iter().any(|r| r.route == want) {
            problems.push(format!("route {want} was not measured"));
        }
    }
    for r in routes {
        let name = r.route;
        if plan.runs("idle") && IDLE_ROUTES.contains(&name) {
            match &r.idle {
                None if r.idle_skipped.is_some() => warnings.push(format!(
                    "{name}: not measured with {} open connections: {}",
                    plan.idle.connections,
                    r.idle_skipped.as_deref().unwrap_or_default()
                )),
                None => problems.push(format!(
                    "{name}: no figures with {} open connections",
                    plan.idle.connections
                )),
                Some(i) if i.errors > 0 => warnings.push(format!(
                    "{name}: {} requests failed with {} open connections",
                    i.errors, i.connections
                )),
                Some(_) => {}
            }
        }
        for l in &r.latency {
            if l.completed == 0
                || l.us.iter().any(Option::is_none)
                || l.added_us.iter().any(Option::is_none)
            {
                problems.push(format!("{name}: no latency figures at {} req/s", l.rate));
            }
            if name != "direct" && l.cpu_ms_per_1k.is_none() {
                problems.push(format!("{name}: no CPU figure at {} req/s", l.rate));
            }
            if l.errors > 0 {
                warnings.push(format!(
                    "{name}: {} of {} requests failed at {} req/s",
                    l.errors, l.expected, l.rate
                ));
            }
        }
        if r.latency.len() != plan.rates.len() {
            problems.push(format!(
                "{name}: latency measured at {} of {} rates",
                r.latency.len(),
                plan.rates.len()
            ));
        }
        if r.conns_per_s.is_none() {
            problems.push(format!("{name}: no new connection completed"));
        }
        if r.conn_errors > 0 {
            warnings.push(format!("{name}: {} new connections failed", r.conn_errors));
        }
        if r.upload_mbps.is_none() || r.download_mbps.is_none() {
            problems.push(format!("{name}: no single-stream transfer completed"));
        } else if name != "direct" && r.stream_cpu_s_per_gb.is_none() {
            problems.push(format!(
                "{name}: no CPU reading for the single-stream transfers"
            ));
        }
        if r.stream_errors > 0 {
            warnings.push(format!(
                "{name}: {} single-stream transfers failed",
                r.stream_errors
            ));
        }
        for p in &r.proxies {
            if p.per_rate
                .iter()
                .any(|(_, rss, cpu)| rss.is_none_or(|v| v <= 0.0) || cpu.is_none())
            {
                problems.push(format!(
                    "{name}: no RSS/CPU reading for the {} proxy",
                    p.side
                ));
            }
        }
        if name != "direct" && r.proxies.len() != 2 {
            problems.push(format!("{name}: expected a client and a server proxy"));
        }
    }
    (problems, warnings)
}

/// `5000` → `5,000`.
pub fn thousands(n: u32) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(5000), "5,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }
}
