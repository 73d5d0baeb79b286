//! `trellis-bench`: the proxy benchmark. Latency at fixed rates (open loop), new connections
//! per second, single-stream throughput, and the proxies' memory and CPU — for direct traffic,
//! a Trellis proxy pair, an HAProxy pair and an nginx pair, measured side by side in one run.
//!
//! ```sh
//! cargo run -p trellis-bench --release -- --quick            # CI smoke, under 2 minutes
//! cargo run -p trellis-bench --release -- --json bench.json --svg-dir bench-svg   # full run
//! ```
//!
//! # Layout
//! - `plan` — what a quick and a full run do (repetitions, rates, durations, bounds).
//! - `procs` — starting and stopping child processes by PID; /proc readings (RSS, CPU).
//! - `backend` — the HTTP/1.1 server and TCP sink/source the routes end at (a child process).
//! - `routes` — the four routes and the processes behind them (control plane, proxies, certs).
//! - `load` — the open-loop generator, the new-connection loop, single-stream transfers.
//! - `run` — the schedule: repetitions, routes alternating; raw samples.
//! - `idle` — connections at scale: thousands of connections held open, RSS per connection.
//! - `report` — medians, added latency, completeness; `targets` — the issue's targets and the
//!   A/B table; `markdown` and `svg` render them.
//! - `control_plane` — `trellis-bench control-plane`: the control plane at scale (its own
//!   layout in its module).

mod backend;
mod control_plane;
mod idle;
mod load;
mod markdown;
mod plan;
mod procs;
mod report;
mod routes;
mod run;
mod service_route;
mod svg;
mod targets;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use crate::plan::Plan;
use crate::procs::Supervisor;
use crate::report::Environment;

/// Benchmarks the Trellis proxy pair against direct traffic, HAProxy and nginx on 127.0.0.1.
///
/// Prints a Markdown report on stdout (progress on stderr). Exits 1 if the run failed and 2 if
/// the report is incomplete (a route carried no traffic in some measurement).
#[derive(Debug, Parser)]
#[command(name = "trellis-bench", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    /// Short run (CI smoke): fewer repetitions, shorter measurements; under 2 minutes.
    #[arg(long)]
    quick: bool,
    /// Override the number of repetitions.
    #[arg(long)]
    repetitions: Option<usize>,
    /// Also write the report (with raw per-repetition samples) as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also write one latency-by-percentile SVG per rate into this directory.
    #[arg(long)]
    svg_dir: Option<PathBuf>,
    /// Directory holding trellis-proxy, trellis-control-plane and trellis (default: the
    /// workspace's target/release, built first with cargo when run through cargo).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Do not run `cargo build --release` for the binaries under test.
    #[arg(long)]
    no_build: bool,
    /// Only these routes (comma-separated: direct, trellis, haproxy, nginx), for profiling;
    /// the report is then incomplete.
    #[arg(long, value_delimiter = ',')]
    routes: Vec<String>,
    /// Leave out these measurements (idle, latency, connections, throughput), for profiling;
    /// the report is then incomplete.
    #[arg(long, value_delimiter = ',', value_parser = ["idle", "latency", "connections", "throughput"])]
    skip: Vec<String>,
    /// Connections held open at once in the connections-at-scale measurement (default: quick
    /// 200, full 10,000).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=idle::MAX_CONNECTIONS as i64))]
    idle_connections: Option<u32>,
    /// An extra argument for every Trellis proxy (repeatable), e.g.
    /// `--proxy-arg=--pool-max-streams=200`.
    #[arg(long = "proxy-arg", allow_hyphen_values = true)]
    proxy_args: Vec<String>,
    /// A/B run: start a second Trellis pair, route `trellis-b`, whose proxies also get these
    /// arguments (whitespace-separated, e.g. `--ab "--worker-threads=2"`); it alternates with
    /// `trellis` within every repetition and the report compares the two.
    #[arg(long, allow_hyphen_values = true)]
    ab: Option<String>,
    /// Keep the run's directory (configs, certificates, logs) and print its path.
    #[arg(long)]
    keep_dir: bool,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// The control plane at scale: P pods, S Services, W watching proxies, R changes per
    /// second, in Kubernetes mode against a fake API server (see bench/README.md).
    ControlPlane(control_plane::Args),
    /// One simulated proxy measuring its own memory (started by `control-plane`).
    #[command(hide = true)]
    ControlPlaneProxy(control_plane::ProbeArgs),
    /// The backend process (started by the bench itself).
    #[command(hide = true)]
    Backend {
        /// HTTP listener.
        #[arg(long)]
        http: SocketAddr,
        /// Sink/source listener.
        #[arg(long)]
        stream: SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match &cli.command {
        Some(Sub::Backend { http, stream }) => {
            return match backend::run(*http, *stream) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("backend: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Sub::ControlPlane(args)) => control_plane::main(args),
        Some(Sub::ControlPlaneProxy(args)) => control_plane::probe_main(args),
        None => bench(&cli),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("trellis-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the benchmark; `Ok(false)` if the report is incomplete.
fn bench(cli: &Cli) -> anyhow::Result<bool> {
    let mut plan = if cli.quick {
        Plan::quick()
    } else {
        Plan::full()
    };
    plan.skip.clone_from(&cli.skip);
    if let Some(n) = cli.idle_connections {
        plan.idle = plan.idle.with_connections(n as usize);
    }
    // The fleet, the latency connections and the bench's own sockets all hold descriptors.
    procs::raise_open_files();
    if let Some(n) = cli.repetitions {
        plan.repetitions = n.max(1);
    }
    let bin_dir = bin_dir(cli.bin_dir.as_deref(), cli.no_build)?;
    let bins = routes::Bins::in_dir(&bin_dir)?;
    for tool in ["haproxy", "nginx"] {
        if Command::new(routes::tool(tool)).arg("-v").output().is_err() {
            bail!(
                "{tool} not found: run bench/setup (installs haproxy, nginx-light, libnginx-mod-stream)"
            );
        }
    }
    let dir = tempfile::Builder::new()
        .prefix("trellis-bench-")
        .tempdir()?;
    let mut environment = environment(&bins);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let samples = rt.block_on(async {
        let mut sup = Supervisor::new(dir.path());
        let work = async {
            let started = std::time::Instant::now();
            // The proxies' connection cap (10,000 by default) must leave room for the fleet;
            // --proxy-arg comes after this and can still set it.
            let cap = format!(
                "--max-connections={}",
                plan.idle.connections.max(9_000) + 1_000
            );
            let args = routes::TrellisArgs {
                common: std::iter::once(cap)
                    .chain(cli.proxy_args.iter().cloned())
                    .collect(),
                b: cli
                    .ab
                    .as_deref()
                    .map(|b| b.split_whitespace().map(str::to_owned).collect()),
            };
            let max_conns = plan.idle.connections + 1_000;
            let up = routes::start(
                &mut sup,
                dir.path(),
                &bins,
                &args,
                max_conns,
                plan.runs("idle"),
            )
            .await?;
            let (mut routes, idle) = (up.routes, up.idle);
            if !cli.routes.is_empty() {
                routes.retain(|r| {
                    r.name == "direct"
                        || (r.name == "trellis-b" && cli.ab.is_some())
                        || cli.routes.iter().any(|n| n == r.name)
                });
            }
            eprintln!(
                "bench: {} routes up in {:.1?}; {} run",
                routes.len(),
                started.elapsed(),
                plan.mode
            );
            anyhow::Ok(run::measure(&plan, &routes, &idle).await)
        };
        let result = tokio::select! {
            r = work => r,
            () = interrupted() => Err(anyhow::anyhow!("interrupted")),
        };
        sup.stop_all();
        result
    });
    if cli.keep_dir {
        let kept = dir.keep();
        eprintln!("bench: run directory kept: {}", kept.display());
    }
    let samples = samples?;
    environment.load_after = loadavg();
    let report = report::build(environment, plan, samples);
    print!("{}", markdown::render(&report));
    if let Some(dir) = &cli.svg_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("--svg-dir {}", dir.display()))?;
        for &rate in &report.plan.rates {
            let series: Vec<(&str, &hdrhistogram::Histogram<u64>)> = report
                .samples
                .iter()
                .filter_map(|s| Some((s.route, s.merged.get(&rate)?)))
                .collect();
            let title = format!(
                "Latency by percentile at {} req/s, {} keep-alive connections (all repetitions)",
                report::thousands(rate),
                report.plan.connections
            );
            let path = dir.join(format!("latency-{rate}rps.svg"));
            std::fs::write(&path, svg::percentile_plot(&title, &series))
                .with_context(|| format!("write {}", path.display()))?;
            eprintln!("bench: wrote {}", path.display());
        }
    }
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("--json {}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    if !report.complete {
        eprintln!(
            "trellis-bench: report incomplete: {}",
            report.problems.join("; ")
        );
    }
    Ok(report.complete)
}

/// Where the binaries under test are: `given`, or the workspace's target/release (built first
/// unless `no_build`).
fn bin_dir(given: Option<&Path>, no_build: bool) -> anyhow::Result<PathBuf> {
    if let Some(d) = given {
        return Ok(d.to_owned());
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/trellis-bench → target/release
    let target = exe
        .parent()
        .and_then(Path::parent)
        .context("cannot locate target/")?;
    if !no_build {
        build_binaries()?;
    }
    Ok(target.join("release"))
}

/// Builds the binaries under test when the bench runs through cargo (which sets `CARGO`).
fn build_binaries() -> anyhow::Result<()> {
    let Some(cargo) = std::env::var_os("CARGO") else {
        return Ok(());
    };
    eprintln!(
        "bench: cargo build --release --locked -p trellis-proxy -p trellis-control-plane -p trellis"
    );
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "trellis-proxy",
            "-p",
            "trellis-control-plane",
            "-p",
            "trellis",
        ])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .status()
        .context("run cargo build")?;
    if !status.success() {
        bail!("cargo build of the binaries under test failed ({status})");
    }
    Ok(())
}

async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The CPU model from /proc/cpuinfo.
fn cpu_model() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "unknown CPU".into(), |(_, m)| m.trim().to_owned())
}

fn environment(bins: &routes::Bins) -> Environment {
    let cpu = cpu_model();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    Environment {
        date: first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        cpu,
        cores: std::thread::available_parallelism().map_or(0, usize::from),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        haproxy: first_line(&routes::tool("haproxy").to_string_lossy(), &["-v"])
            .split(" - ")
            .next()
            .unwrap_or_default()
            .to_owned(),
        nginx: first_line(&routes::tool("nginx").to_string_lossy(), &["-v"])
            .replace("nginx version: ", ""),
        trellis: first_line("git", &["-C", root, "describe", "--always", "--dirty"]),
        // With --no-build or --bin-dir the binary may be older than the tree: say when it was built.
        proxy_built: first_line(
            "date",
            &[
                "-u",
                "-r",
                &bins.proxy.to_string_lossy(),
                "+%Y-%m-%d %H:%M UTC",
            ],
        ),
        load_before: loadavg(),
        load_after: String::new(),
    }
}
