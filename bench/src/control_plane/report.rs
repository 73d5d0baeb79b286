//! The control-plane bench's figures per mesh size, the targets (PASS/MISS on the
//! largest size; bytes per change compared between the smallest and the largest), and the
//! Markdown report. Serialized as the `--json` document.
//!
//! Owns: [`Figures`], [`Report`], [`targets`] and [`markdown`].

use std::fmt::Write as _;

use serde::Serialize;

use super::plan::{Plan, Scenario};
use super::scenario::Churned;
use super::tracker::percentile;

/// p50 / p99 / all of a per-proxy time, seconds from the storm's start.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Spread {
    /// Median.
    pub p50_s: Option<f64>,
    /// 99th percentile.
    pub p99_s: Option<f64>,
    /// When the last one got there (`None` if some never did).
    pub all_s: Option<f64>,
}

/// Everything measured at one mesh size.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    /// Pods.
    pub pods: usize,
    /// Services.
    pub services: usize,
    /// Simulated proxies.
    pub watchers: usize,
    /// Restart storm: time until each proxy held its certificate.
    pub certified: Spread,
    /// Restart storm: time until each proxy applied the full state.
    pub synced: Spread,
    /// Proxies whose Certify failed for good.
    pub certify_failures: usize,
    /// TokenReviews the fake API server answered.
    pub tokenreviews: u64,
    /// Restart storm: control-plane CPU seconds, wall seconds, peak RSS (MiB).
    pub storm_cp_cpu_s: Option<f64>,
    /// See `storm_cp_cpu_s`.
    pub storm_wall_s: Option<f64>,
    /// See `storm_cp_cpu_s`.
    pub storm_cp_peak_mib: Option<f64>,
    /// Protobuf bytes and messages of the full state, per proxy.
    pub full_state_bytes: Option<f64>,
    /// See `full_state_bytes`.
    pub full_state_messages: Option<f64>,
    /// Growth of one simulated proxy's RSS (a process of its own, a real `MeshState`) from
    /// holding its certificate to holding the full state.
    pub sim_state_mib: Option<f64>,
    /// A real `trellis-proxy`: time to sync, RSS after the churn, peak RSS.
    pub sidecar_sync_s: Option<f64>,
    /// See `sidecar_sync_s`.
    pub sidecar_rss_mib: Option<f64>,
    /// See `sidecar_sync_s`.
    pub sidecar_peak_mib: Option<f64>,
    /// Churn: changes made.
    pub changes: usize,
    /// Churn: change → last proxy, p50 / p99 / max (s), over changes every proxy applied.
    pub latency_p50_s: Option<f64>,
    /// See `latency_p50_s`.
    pub latency_p99_s: Option<f64>,
    /// See `latency_p50_s`.
    pub latency_max_s: Option<f64>,
    /// Changes some proxy had not applied when the run stopped waiting.
    pub changes_missing: usize,
    /// Churn: control-plane CPU seconds per second.
    pub cp_cpu_cores: Option<f64>,
    /// Churn: control-plane peak RSS and RSS at its end (MiB).
    pub cp_peak_churn_mib: Option<f64>,
    /// See `cp_peak_churn_mib`.
    pub cp_rss_mib: Option<f64>,
    /// Peak RSS of the control plane over the storm and the churn (MiB).
    pub cp_peak_run_mib: Option<f64>,
    /// Churn: protobuf bytes per change per proxy.
    pub bytes_per_change: Option<f64>,
    /// Churn: bytes the control plane wrote (TLS, HTTP/2, gRPC) per change per proxy.
    pub wire_bytes_per_change: Option<f64>,
    /// Churn: updates each proxy applied per second.
    pub updates_per_proxy_s: Option<f64>,
    /// Churn: full states sent again, updates that missed their base.
    pub resyncs: u64,
    /// See `resyncs`.
    pub misses: u64,
    /// Restart storm: Watch connections that failed or were lost (the proxy tried again).
    pub storm_reconnects: usize,
    /// Churn: Watch streams lost (the proxy reconnected and resumed).
    pub reconnects: usize,
    /// On demand instead: one unary round trip on an open channel, p50 / p99 (ms).
    pub rtt_p50_ms: Option<f64>,
    /// See `rtt_p50_ms`.
    pub rtt_p99_ms: Option<f64>,
    /// What went wrong.
    pub problems: Vec<String>,
}

impl Figures {
    /// Empty figures for `sc`.
    pub fn new(sc: &Scenario) -> Self {
        Self {
            pods: sc.pods,
            services: sc.services,
            watchers: sc.watchers,
            ..Self::default()
        }
    }

    /// Takes in the churn phase.
    pub fn absorb_churn(&mut self, c: Churned) {
        let (done, missing) = &c.latencies;
        self.changes = c.changes;
        self.latency_p50_s = percentile(done, 0.5);
        self.latency_p99_s = percentile(done, 0.99);
        self.latency_max_s = done.last().copied();
        self.changes_missing = *missing;
        self.cp_cpu_cores = (c.cpu.1 > 0.0).then(|| c.cpu.0 / c.cpu.1);
        self.cp_peak_churn_mib = Some(c.rss.0 as f64 / 1024.0);
        self.cp_rss_mib = Some(c.rss.1 as f64 / 1024.0);
        let per = (c.changes * self.watchers) as f64;
        let (_, bytes, updates, resyncs, misses) = c.received;
        if per > 0.0 {
            self.bytes_per_change = Some(bytes as f64 / per);
            self.wire_bytes_per_change = c.written.map(|w| w as f64 / per);
        }
        if self.watchers > 0 && c.cpu.1 > 0.0 {
            self.updates_per_proxy_s = Some(updates as f64 / self.watchers as f64 / c.cpu.1);
        }
        (self.resyncs, self.misses) = (resyncs, misses);
        self.rtt_p50_ms = percentile(&c.rtt, 0.5).map(|s| s * 1e3);
        self.rtt_p99_ms = percentile(&c.rtt, 0.99).map(|s| s * 1e3);
        if *missing > 0 {
            self.problems.push(format!(
                "{missing} changes had not reached every proxy when the run stopped waiting"
            ));
        }
    }
}

/// The machine and the build.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// UTC time of the run.
    pub date: String,
    /// CPU model and online CPUs.
    pub cpu: String,
    /// See `cpu`.
    pub cores: usize,
    /// `git describe` of the workspace.
    pub trellis: String,
    /// Load averages at the start and the end.
    pub load_before: String,
    /// See `load_before`.
    pub load_after: String,
}

/// One of the targets.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What.
    pub name: String,
    /// The figure.
    pub figure: Option<f64>,
    /// Its unit.
    pub unit: &'static str,
    /// The requirement.
    pub requirement: &'static str,
    /// Met (`None`: not measured in this run).
    pub pass: Option<bool>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The machine.
    pub machine: Machine,
    /// The schedule.
    pub plan: Plan,
    /// Per mesh size, smallest first.
    pub figures: Vec<Figures>,
    /// The targets.
    pub targets: Vec<Target>,
    /// Whether every figure was measured.
    pub complete: bool,
}

fn target(
    name: String,
    figure: Option<f64>,
    unit: &'static str,
    requirement: &'static str,
    ok: impl Fn(f64) -> bool,
) -> Target {
    Target {
        name,
        pass: figure.map(&ok),
        figure,
        unit,
        requirement,
    }
}

/// The targets, on the largest mesh (bytes per change: largest ÷ smallest).
pub fn targets(figures: &[Figures]) -> Vec<Target> {
    let (Some(small), Some(large)) = (figures.first(), figures.last()) else {
        return Vec::new();
    };
    let at = |what: &str| {
        format!(
            "{what} (P = {}, W = {})",
            thousands(large.pods),
            thousands(large.watchers)
        )
    };
    let mut out = vec![
        target(
            at("change → all proxies, p99"),
            large.latency_p99_s,
            "s",
            "≤ 1 s",
            |v| v <= 1.0,
        ),
        target(
            at("control-plane CPU during churn"),
            large.cp_cpu_cores,
            "cores",
            "≤ 0.5 core",
            |v| v <= 0.5,
        ),
        target(
            at("control-plane peak RSS (restart storm and churn)"),
            large.cp_peak_run_mib,
            "MiB",
            "≤ 300 MiB",
            |v| v <= 300.0,
        ),
        target(
            at("all proxies restarting at once hold certificates"),
            large.certified.all_s,
            "s",
            "≤ 5 s",
            |v| v <= 5.0,
        ),
        target(
            format!(
                "real sidecar RSS with P = {} in its state",
                thousands(large.pods)
            ),
            large.sidecar_peak_mib,
            "MiB",
            "≤ 15 MiB (peak)",
            |v| v <= 15.0,
        ),
        target(
            format!("real sidecar RSS at P = {}", thousands(small.pods)),
            small.sidecar_rss_mib,
            "MiB",
            "< 10 MiB",
            |v| v < 10.0,
        ),
    ];
    if figures.len() > 1 {
        let ratio = large
            .bytes_per_change
            .zip(small.bytes_per_change)
            .map(|(l, s)| l / s);
        out.push(target(
            format!(
                "bytes per change per proxy, P = {} ÷ P = {}",
                thousands(large.pods),
                thousands(small.pods)
            ),
            ratio,
            "×",
            "independent of P (≤ 1.2×)",
            |v| v <= 1.2,
        ));
    }
    out
}

/// `12345` → `12,345`.
pub fn thousands(n: usize) -> String {
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

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "—".into(), |v| format!("{v:.digits$}"))
}

/// One row of the figures table: its label and how a mesh size's cell reads.
type Row = (&'static str, fn(&Figures) -> String);

/// The report as Markdown.
pub fn markdown(r: &Report) -> String {
    let mut out = String::new();
    let m = &r.machine;
    let _ = writeln!(out, "# trellis-bench control-plane ({} run)\n", r.plan.mode);
    let _ = writeln!(
        out,
        "{} · {} × {} · trellis {} · load average {} → {} · R = {}/s for {} s\n",
        m.date,
        m.cores,
        m.cpu,
        m.trellis,
        m.load_before,
        m.load_after,
        r.plan.rate,
        r.plan.churn.as_secs()
    );
    let _ = writeln!(
        out,
        "## Targets\n\n| target | figure | requirement | |\n|---|---:|---|---|"
    );
    for t in &r.targets {
        let verdict = match t.pass {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "—",
        };
        let _ = writeln!(
            out,
            "| {} | {} {} | {} | {verdict} |",
            t.name,
            num(t.figure, 2),
            t.unit,
            t.requirement
        );
    }
    let _ = write!(out, "\n## Figures\n\n| | ");
    let head: Vec<String> = r
        .figures
        .iter()
        .map(|f| {
            format!(
                "P = {}, S = {}, W = {}",
                thousands(f.pods),
                thousands(f.services),
                thousands(f.watchers)
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "{} |\n|---|{}",
        head.join(" | "),
        "---:|".repeat(head.len())
    );
    let rows: &[Row] = &[
        (
            "restart storm: all hold certificates (p50 / p99 / all)",
            |f| spread(&f.certified),
        ),
        (
            "restart storm: all hold the full state (p50 / p99 / all)",
            |f| spread(&f.synced),
        ),
        ("restart storm: control-plane CPU s / wall s", |f| {
            format!("{} / {}", num(f.storm_cp_cpu_s, 1), num(f.storm_wall_s, 1))
        }),
        ("restart storm: control-plane peak RSS", |f| {
            format!("{} MiB", num(f.storm_cp_peak_mib, 0))
        }),
        ("full state per proxy (protobuf, messages)", |f| {
            format!(
                "{} KB, {}",
                num(f.full_state_bytes.map(|b| b / 1e3), 0),
                num(f.full_state_messages, 1)
            )
        }),
        ("change → last proxy p50 / p99 / max", |f| {
            format!(
                "{} / {} / {} s",
                num(f.latency_p50_s, 3),
                num(f.latency_p99_s, 3),
                num(f.latency_max_s, 3)
            )
        }),
        ("changes (not reached by all)", |f| {
            format!("{} ({})", f.changes, f.changes_missing)
        }),
        ("control-plane CPU during churn", |f| {
            format!("{} cores", num(f.cp_cpu_cores, 3))
        }),
        (
            "control-plane RSS end of churn / peak churn / peak run",
            |f| {
                format!(
                    "{} / {} / {} MiB",
                    num(f.cp_rss_mib, 0),
                    num(f.cp_peak_churn_mib, 0),
                    num(f.cp_peak_run_mib, 0)
                )
            },
        ),
        ("bytes per change per proxy (protobuf)", |f| {
            num(f.bytes_per_change, 0)
        }),
        (
            "bytes per change per proxy (written by the control plane)",
            |f| num(f.wire_bytes_per_change, 0),
        ),
        ("updates per proxy per second", |f| {
            num(f.updates_per_proxy_s, 2)
        }),
        ("churn: resyncs / missed bases / lost streams", |f| {
            format!("{} / {} / {}", f.resyncs, f.misses, f.reconnects)
        }),
        ("restart storm: Watch connections retried", |f| {
            f.storm_reconnects.to_string()
        }),
        (
            "simulated proxy (own process): RSS growth for the mesh state",
            |f| format!("{} MiB", num(f.sim_state_mib, 1)),
        ),
        ("real sidecar: time to sync", |f| {
            format!("{} s", num(f.sidecar_sync_s, 2))
        }),
        ("real sidecar: RSS after churn / peak", |f| {
            format!(
                "{} / {} MiB",
                num(f.sidecar_rss_mib, 1),
                num(f.sidecar_peak_mib, 1)
            )
        }),
        ("on demand instead: one round trip (p50 / p99)", |f| {
            format!("{} / {} ms", num(f.rtt_p50_ms, 2), num(f.rtt_p99_ms, 2))
        }),
        ("TokenReviews answered", |f| f.tokenreviews.to_string()),
        ("certify failures", |f| f.certify_failures.to_string()),
        ("problems", |f| {
            if f.problems.is_empty() {
                "none".into()
            } else {
                f.problems.join("; ")
            }
        }),
    ];
    for (label, cell) in rows.iter().copied() {
        let cells: Vec<String> = r.figures.iter().map(cell).collect();
        let _ = writeln!(out, "| {label} | {} |", cells.join(" | "));
    }
    out
}

fn spread(s: &Spread) -> String {
    format!(
        "{} / {} / {} s",
        num(s.p50_s, 2),
        num(s.p99_s, 2),
        num(s.all_s, 2)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(pods: usize, bytes: f64) -> Figures {
        Figures {
            pods,
            watchers: 2_000,
            bytes_per_change: Some(bytes),
            latency_p99_s: Some(0.4),
            ..Figures::default()
        }
    }

    #[test]
    fn targets_judge_the_largest_mesh_and_compare_bytes_per_change_across_sizes() {
        let t = targets(&[figures(1_000, 300.0), figures(10_000, 330.0)]);
        let by = |prefix: &str| t.iter().find(|t| t.name.starts_with(prefix)).unwrap();
        assert_eq!(by("change → all").pass, Some(true));
        assert_eq!(by("bytes per change").figure, Some(1.1));
        assert_eq!(by("bytes per change").pass, Some(true));
        assert_eq!(
            by("control-plane CPU").pass,
            None,
            "not measured is not a pass"
        );
        let grown = targets(&[figures(1_000, 300.0), figures(10_000, 3_000.0)]);
        assert_eq!(grown.last().unwrap().pass, Some(false));
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(10_000), "10,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
