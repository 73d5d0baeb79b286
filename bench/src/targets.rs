//! The targets: Trellis against HAProxy in the same run, as ratios with PASS/MISS,
//! and in an A/B run (`--ab`) the same rows for `trellis-b` against `trellis`.
//!
//! Owns: [`targets`] and [`ab`]; `report` calls them on the routes' medians.

use crate::plan::Plan;
use crate::report::{ProxySummary, RouteSummary, Target, thousands};

/// `t ÷ h`, when both are known and `h` is positive.
fn ratio(t: Option<f64>, h: Option<f64>) -> Option<f64> {
    match (t, h) {
        (Some(t), Some(h)) if h > 0.0 => Some(t / h),
        _ => None,
    }
}

/// The targets: `trellis` against `haproxy` (none unless both were measured).
pub fn targets(routes: &[RouteSummary], plan: &Plan) -> Vec<Target> {
    let find = |n: &str| routes.iter().find(|r| r.route == n);
    let (Some(t), Some(h)) = (find("trellis"), find("haproxy")) else {
        return vec![];
    };
    compare(t, h, plan)
}

/// An A/B run's comparison: the `targets` rows with `trellis-b` (B) in the `trellis` column
/// and `trellis` (A) in the `haproxy` one, so `ratio` is B ÷ A; `pass` does not apply.
pub fn ab(routes: &[RouteSummary], plan: &Plan) -> Vec<Target> {
    let find = |n: &str| routes.iter().find(|r| r.route == n);
    let (Some(b), Some(a)) = (find("trellis-b"), find("trellis")) else {
        return vec![];
    };
    let mut rows = compare(b, a, plan);
    for row in &mut rows {
        row.pass = None;
        row.note.clear();
        row.requirement.clear();
    }
    rows.push(Target {
        name: "proxies' CPU s per GB, single stream".into(),
        trellis: b.stream_cpu_s_per_gb,
        haproxy: a.stream_cpu_s_per_gb,
        ratio: ratio(b.stream_cpu_s_per_gb, a.stream_cpu_s_per_gb),
        requirement: String::new(),
        pass: None,
        note: String::new(),
    });
    rows
}

/// The target rows of route `t` against the reference `h`.
fn compare(t: &RouteSummary, h: &RouteSummary, plan: &Plan) -> Vec<Target> {
    let mut out = Vec::new();
    let at = |r: &RouteSummary, rate: u32| r.latency.iter().find(|l| l.rate == rate).cloned();
    for &rate in &plan.rates {
        let (tl, hl) = (at(t, rate), at(h, rate));
        let tv = tl.as_ref().and_then(|l| l.added_us[2]);
        let hv = hl.as_ref().and_then(|l| l.added_us[2]);
        let r = ratio(tv, hv);
        out.push(Target {
            name: format!("added p99 latency at {} req/s (µs)", thousands(rate)),
            trellis: tv,
            haproxy: hv,
            ratio: r,
            requirement: "≤ 1.0 × HAProxy (goal 0.8)".into(),
            pass: tv.zip(hv).map(|(a, b)| a <= b),
            note: match r {
                Some(r) if r <= 0.8 => "goal 0.8 met".into(),
                Some(_) => "goal 0.8 not met".into(),
                None => String::new(),
            },
        });
    }
    let rel = |name: &str, tv: Option<f64>, hv: Option<f64>, factor: f64| {
        let r = ratio(tv, hv);
        Target {
            name: name.into(),
            trellis: tv,
            haproxy: hv,
            ratio: r,
            requirement: format!("≥ {factor} × HAProxy"),
            pass: r.map(|r| r >= factor),
            note: String::new(),
        }
    };
    out.push(rel(
        "new connections per second",
        t.conns_per_s,
        h.conns_per_s,
        5.0,
    ));
    out.push(rel(
        "single-stream throughput, upload (MB/s)",
        t.upload_mbps,
        h.upload_mbps,
        1.2,
    ));
    out.push(rel(
        "single-stream throughput, download (MB/s)",
        t.download_mbps,
        h.download_mbps,
        1.2,
    ));
    let top = plan.rates.iter().copied().max().unwrap_or(0);
    for (tp, hp) in t.proxies.iter().zip(&h.proxies) {
        let pick = |p: &ProxySummary| {
            p.per_rate
                .iter()
                .find(|(r, _, _)| *r == top)
                .and_then(|x| x.1)
        };
        let (tv, hv) = (pick(tp), pick(hp));
        out.push(Target {
            name: format!(
                "{} proxy peak RSS at {} req/s (MiB)",
                tp.side,
                thousands(top)
            ),
            trellis: tv,
            haproxy: hv,
            ratio: ratio(tv, hv),
            requirement: "≤ 15 MiB".into(),
            pass: tv.map(|v| v <= 15.0),
            note: String::new(),
        });
    }
    let idle_sides = |r: &RouteSummary| r.idle.as_ref().map(|i| i.proxies.clone());
    for (tp, hp) in idle_sides(t)
        .unwrap_or_default()
        .iter()
        .zip(idle_sides(h).unwrap_or_default().iter())
    {
        let (tv, hv) = (Some(tp.kib_per_connection), Some(hp.kib_per_connection));
        out.push(Target {
            name: format!(
                "{} proxy memory per open connection, {} open (KiB)",
                tp.side,
                thousands(plan.idle.connections as u32)
            ),
            trellis: tv,
            haproxy: hv,
            ratio: ratio(tv, hv),
            requirement: "≤ 6 KiB".into(),
            pass: tv.map(|v| v <= 6.0),
            note: String::new(),
        });
    }
    for &rate in &plan.rates {
        let tv = at(t, rate).and_then(|l| l.cpu_ms_per_1k);
        let hv = at(h, rate).and_then(|l| l.cpu_ms_per_1k);
        out.push(Target {
            name: format!(
                "CPU per 1,000 requests at {} req/s, both proxies (ms)",
                thousands(rate)
            ),
            trellis: tv,
            haproxy: hv,
            ratio: ratio(tv, hv),
            requirement: "≤ 1.0 × HAProxy".into(),
            pass: tv.zip(hv).map(|(a, b)| a <= b),
            note: String::new(),
        });
    }
    out
}
