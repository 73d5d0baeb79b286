//! `trellis-bench control-plane`: the control plane at scale, on one machine. A real control
//! plane (release build, gRPC over TLS) runs in `--mode kubernetes` against a fake API server
//! in this process that serves a synthetic cluster of P meshed pods behind S Services; W
//! simulated proxies in this process certify (TokenReview through the fake) and hold real
//! Watch streams with their own client certificates, acknowledging every update; the cluster
//! then churns at R pod changes per second.
//!
//! ```sh
//! cargo run -p trellis-bench --release -- control-plane --quick          # CI smoke, seconds
//! cargo run -p trellis-bench --release -- control-plane --json cp.json   # P = 1,000 and 10,000
//! ```
//!
//! # Layout
//! - `plan` — the mesh sizes, proxies and churn of a quick and a full run.
//! - `apiserver` — the fake Kubernetes API server: list/watch, TokenReview, the CA Secret.
//! - `mesh` — the synthetic cluster's objects and the churn (pure).
//! - `processes` — the control plane under test and one real sidecar.
//! - `proxies` — the simulated proxies: Certify, Watch, acknowledge, apply.
//! - `alone` — one simulated proxy in a process of its own: its memory for the mesh state.
//! - `tracker` — which proxy applied which change when; what they received.
//! - `scenario` — one mesh size, phase by phase.
//! - `storm` — where a restart storm's Certify time goes.
//! - `report` — figures, targets, Markdown.

mod alone;
mod apiserver;
mod mesh;
mod plan;
mod processes;
mod proxies;
mod report;
mod scenario;
mod storm;
mod tracker;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::routes::Bins;
pub use alone::{ProbeArgs, main as probe_main};
use plan::{Plan, Scenario};

/// Flags of `trellis-bench control-plane`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Short run (CI smoke): one small mesh, seconds of churn.
    #[arg(long)]
    quick: bool,
    /// Mesh sizes instead of the plan's, as `pods,services,watchers` (repeat the flag for
    /// several), e.g. `--mesh 10000,1000,2000`.
    #[arg(long = "mesh", value_parser = parse_scenario)]
    meshes: Vec<Scenario>,
    /// Pod changes per second instead of the plan's.
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds of churn instead of the plan's.
    #[arg(long)]
    churn_seconds: Option<u64>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Directory holding trellis-proxy and trellis-control-plane (default: target/release,
    /// built first when run through cargo).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Do not run `cargo build --release` for the binaries under test.
    #[arg(long)]
    no_build: bool,
    /// Keep the run's directory (logs, kubeconfig) and print its path.
    #[arg(long)]
    keep_dir: bool,
    /// Run only this phase: `storm` (W proxies restarting at once, after one proxy alone has
    /// synced; no real sidecar, no churn), with where the Certify time went on stderr; `certify`: the same,
    /// the proxies stopping once certified (no Watch).
    #[arg(long, value_parser = ["storm", "certify"])]
    only: Option<String>,
    /// One more flag for the control plane under test (repeat for several), e.g.
    /// `--control-plane-arg=--handshake-timeout=10s`.
    #[arg(long = "control-plane-arg", allow_hyphen_values = true)]
    control_plane_args: Vec<String>,
}

fn parse_scenario(text: &str) -> Result<Scenario, String> {
    let parts: Vec<usize> = text
        .split(',')
        .map(|p| p.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{text:?}: {e}; expected pods,services,watchers"))?;
    match parts.as_slice() {
        &[pods, services, watchers] if pods >= 2 && services >= 1 && watchers >= 1 => {
            Ok(Scenario {
                pods,
                services,
                watchers,
            })
        }
        _ => Err(format!(
            "{text:?}: expected pods,services,watchers (pods ≥ 2, the others ≥ 1)"
        )),
    }
}

/// Runs the bench; `Ok(false)` when the report is incomplete.
pub fn main(args: &Args) -> anyhow::Result<bool> {
    let mut plan = if args.quick {
        Plan::quick()
    } else {
        Plan::full()
    };
    if !args.meshes.is_empty() {
        plan.scenarios.clone_from(&args.meshes);
        plan.scenarios.sort_by_key(|s| s.pods);
    }
    if let Some(rate) = args.rate.filter(|r| *r > 0.0) {
        plan.rate = rate;
    }
    plan.storm_only = args.only.is_some();
    plan.certify_only = args.only.as_deref() == Some("certify");
    plan.control_plane_args.clone_from(&args.control_plane_args);
    if let Some(s) = args.churn_seconds {
        plan.churn = Duration::from_secs(s.max(1));
    }
    let bins = Bins::in_dir(&crate::bin_dir(args.bin_dir.as_deref(), args.no_build)?)?;
    // W proxies hold two connections each while they start (the control plane inherits it).
    crate::procs::raise_open_files();
    let dir = tempfile::Builder::new()
        .prefix("trellis-bench-cp-")
        .tempdir()?;
    let load_before = crate::loadavg();
    let template = mesh::injected_template()?;
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()?;
    // The simulated proxies' Watch streams (see `proxies::Then`).
    let watching = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .thread_name("watching")
        .enable_all()
        .build()?;
    let mut figures = Vec::new();
    let outcome = rt.block_on(async {
        for sc in &plan.scenarios {
            eprintln!(
                "bench: control plane with P={} S={} W={}, R={}/s for {:?}",
                sc.pods, sc.services, sc.watchers, plan.rate, plan.churn
            );
            let then = if plan.certify_only {
                proxies::Then::Stop
            } else {
                proxies::Then::Watch(watching.handle().clone())
            };
            let run = scenario::run(&plan, sc, &bins, dir.path(), &template, then);
            let f = tokio::select! {
                f = run => f?,
                () = crate::interrupted() => anyhow::bail!("interrupted"),
            };
            figures.push(f);
        }
        anyhow::Ok(())
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    watching.shutdown_timeout(Duration::from_secs(2));
    if args.keep_dir {
        eprintln!("bench: run directory kept: {}", dir.keep().display());
    }
    outcome?;
    let report = report::Report {
        machine: report::Machine {
            date: crate::first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            cpu: crate::cpu_model(),
            cores,
            trellis: crate::first_line(
                "git",
                &[
                    "-C",
                    concat!(env!("CARGO_MANIFEST_DIR"), "/.."),
                    "describe",
                    "--always",
                    "--dirty",
                ],
            ),
            load_before,
            load_after: crate::loadavg(),
        },
        targets: report::targets(&figures),
        complete: figures
            .iter()
            .all(|f| f.problems.is_empty() && f.latency_p99_s.is_some()),
        figures,
        plan,
    };
    print!("{}", report::markdown(&report));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("--json {}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(report.complete)
}
