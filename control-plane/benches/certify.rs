//! Certify throughput and latency of the real control plane, end to end: local mode with a
//! join-token file of N distinct identities, clients on several TLS channels (each one HTTP/2
//! connection), one certificate per identity per run.
//!
//! Run with `cargo bench -p trellis-control-plane --bench certify`. Bounded: N requests per run
//! (default 10,000) and at most `RUN_DEADLINE` per run. Environment (all optional):
//! `TRELLIS_BENCH_IDENTITIES` (10000), `TRELLIS_BENCH_TASKS` (64), `TRELLIS_BENCH_CHANNELS`
//! (8), `TRELLIS_BENCH_RATE` (2000, the open-loop arrival rate per second),
//! `TRELLIS_BENCH_LOG=1` (install a log subscriber writing to a sink, to include the cost of
//! formatting the audit lines), `TRELLIS_BENCH_RUNS` (which runs, default
//! `closed,open,e2e,parts`; e.g. `closed` alone under `perf record`).
//!
//! Runs:
//! 1. *closed loop*: TASKS tasks send pre-made CSRs back to back: the most the server does.
//! 2. *open loop*: requests start at a fixed rate (the target load), latency measured from the
//!    moment each one was due, so a stalled server cannot hide its queue (no coordinated
//!    omission).
//! 3. *closed loop with client crypto*: each request makes its key and CSR and checks the
//!    answer (`trellis_client::IdentityClient::certify`), as a proxy does.
//!
//! Then the in-process cost of the CA's parts (CSR parse + signature check, issue), to show
//! where a request's server time goes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use tokio::sync::{Mutex, Semaphore};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use trellis_ca::{
    CaMaterial, CertificateAuthority, SpiffeId, TrustDomain, ValidatedCsr, WorkloadKey,
};
use trellis_control_plane::config::Args;
use trellis_control_plane::server::{self, Running};
use trellis_proto::identity::CertifyRequest;
use trellis_proto::identity::identity_client::IdentityClient as RawClient;

/// A run stops after this long, whatever is left.
const RUN_DEADLINE: Duration = Duration::from_secs(60);
/// Identities used to warm up (TLS sessions, allocator, caches) before any timing.
const WARMUP: usize = 512;
/// Targets from the brief.
const TARGET_RATE: f64 = 2000.0;
const TARGET_P99: Duration = Duration::from_millis(20);

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One workload: its join token, identity and a CSR made before timing.
struct Workload {
    token: MetadataValue<tonic::metadata::Ascii>,
    id: SpiffeId,
    csr: Vec<u8>,
    raw_token: String,
}

fn main() -> anyhow::Result<()> {
    let identities = env_or("TRELLIS_BENCH_IDENTITIES", 10_000);
    let tasks = env_or("TRELLIS_BENCH_TASKS", 64);
    let channels = env_or("TRELLIS_BENCH_CHANNELS", 8).max(1);
    let rate = env_or("TRELLIS_BENCH_RATE", 2000) as f64;
    if std::env::var("TRELLIS_BENCH_LOG").is_ok_and(|v| v == "1") {
        tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_writer(std::io::sink)
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    println!(
        "certify bench: {identities} identities, {tasks} tasks over {channels} TLS channels, \
         {} cores, tokio workers = cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    runtime.block_on(bench(identities, tasks, channels, rate))
}

async fn bench(identities: usize, tasks: usize, channels: usize, rate: f64) -> anyhow::Result<()> {
    let dir = tempfile::TempDir::new()?;
    let td = TrustDomain::default();

    // Join tokens for the warm-up and the measured identities.
    let total = WARMUP + identities;
    let mut file = String::with_capacity(total * 64);
    let names: Vec<String> = (0..total)
        .map(|i| {
            if i < WARMUP {
                format!("warmup-{i}")
            } else {
                format!("w{}", i - WARMUP)
            }
        })
        .collect();
    for (i, name) in names.iter().enumerate() {
        file.push_str(&format!("bench-token-{i:020} ns/bench/sa/{name}\n"));
    }
    let tokens_path = dir.path().join("join-tokens");
    std::fs::write(&tokens_path, file)?;
    // Join-token files must be private: the control plane refuses others' access.
    std::fs::set_permissions(
        &tokens_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;

    // Keys and CSRs, made before anything is timed.
    let started = Instant::now();
    let mut workloads = Vec::with_capacity(total);
    for (i, name) in names.iter().enumerate() {
        let id = SpiffeId::for_service_account(&td, "bench", name)?;
        let key = WorkloadKey::generate()?;
        let csr = key.csr(&id)?.as_ref().to_vec();
        let raw_token = format!("bench-token-{i:020}");
        workloads.push(Workload {
            token: format!("Bearer {raw_token}").parse()?,
            id,
            csr,
            raw_token,
        });
    }
    let keygen = started.elapsed();
    println!(
        "client side: {total} P-256 keys + CSRs made in {:.2} s ({:.0}/s on one core), not timed below",
        keygen.as_secs_f64(),
        total as f64 / keygen.as_secs_f64()
    );
    let workloads = Arc::new(workloads);

    let state = dir.path().join("state");
    let config = Args::try_parse_from([
        "trellis-control-plane",
        "--mode",
        "local",
        "--state-dir",
        state.to_str().context("UTF-8 path")?,
        "--join-tokens",
        tokens_path.to_str().context("UTF-8 path")?,
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--rate-limit-per-second",
        "1000",
        "--rate-limit-burst",
        "1000",
    ])?
    .validate()?;
    let running = server::start(&config, None).await?;
    let mut pool = Vec::with_capacity(channels);
    for _ in 0..channels {
        pool.push(
            tokio::time::timeout(
                Duration::from_secs(10),
                trellis_client::connect(
                    &running.grpc_addr.to_string(),
                    running.bundle.clone(),
                    Some(config.own_id.clone()),
                    None,
                ),
            )
            .await
            .context("connect timed out")??,
        );
    }
    let pool = Arc::new(pool);

    let warm = closed_loop(&pool, &workloads, 0..WARMUP, tasks).await?;
    println!("warm-up: {} certificates", warm.ok);

    let runs =
        std::env::var("TRELLIS_BENCH_RUNS").unwrap_or_else(|_| "closed,open,e2e,parts".into());
    let wanted = |run: &str| runs.split(',').any(|r| r.trim() == run);
    let measured = WARMUP..total;
    let mut closed = None;
    if wanted("closed") {
        let report = closed_loop(&pool, &workloads, measured.clone(), tasks).await?;
        report.print(&format!("closed loop, {tasks} tasks, pre-made CSRs"));
        closed = Some(report);
    }
    let mut open = None;
    if wanted("open") {
        let report = open_loop(&pool, &workloads, measured.clone(), rate).await?;
        report.print(&format!("open loop at {rate:.0}/s, pre-made CSRs"));
        open = Some(report);
    }
    if wanted("e2e") {
        let report =
            closed_loop_with_client_crypto(&running, &config.own_id, &workloads, measured, tasks)
                .await?;
        report.print(&format!(
            "closed loop, {tasks} tasks, key + CSR + answer check per request"
        ));
    }
    within_targets(closed.as_ref(), open.as_ref());

    running.shutdown(Duration::from_secs(5)).await;
    if wanted("parts") {
        parts(&workloads[WARMUP..])?;
    }
    Ok(())
}

/// What one run measured.
struct Report {
    ok: usize,
    failed: usize,
    first_error: Option<String>,
    elapsed: Duration,
    latency_us: Histogram<u64>,
}

impl Report {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            ok: 0,
            failed: 0,
            first_error: None,
            elapsed: Duration::ZERO,
            latency_us: Histogram::new_with_bounds(1, 120_000_000, 3)?,
        })
    }

    fn merge(&mut self, other: Report) -> anyhow::Result<()> {
        self.ok += other.ok;
        self.failed += other.failed;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latency_us.add(other.latency_us)?;
        Ok(())
    }

    fn record(&mut self, latency: Duration, result: Result<(), String>) {
        let _ = self.latency_us.record(
            u64::try_from(latency.as_micros())
                .unwrap_or(u64::MAX)
                .max(1),
        );
        match result {
            Ok(()) => self.ok += 1,
            Err(e) => {
                self.failed += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    fn ms(&self, quantile: f64) -> f64 {
        self.latency_us.value_at_quantile(quantile) as f64 / 1000.0
    }

    fn print(&self, title: &str) {
        println!("\n{title}");
        println!(
            "  {} issued, {} failed in {:.3} s = {:.0} certificates/s",
            self.ok,
            self.failed,
            self.elapsed.as_secs_f64(),
            self.rate()
        );
        println!(
            "  latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  mean {:.2}",
            self.ms(0.5),
            self.ms(0.9),
            self.ms(0.99),
            self.ms(0.999),
            self.latency_us.max() as f64 / 1000.0,
            self.latency_us.mean() / 1000.0
        );
        if let Some(e) = &self.first_error {
            println!("  first error: {e}");
        }
    }
}

fn within_targets(closed: Option<&Report>, open: Option<&Report>) {
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    if let Some(closed) = closed {
        println!(
            "\ntarget >= {TARGET_RATE:.0}/s: {} ({:.0}/s, closed loop)",
            verdict(closed.rate() >= TARGET_RATE),
            closed.rate()
        );
    }
    if let Some(open) = open {
        let p99 = Duration::from_micros(open.latency_us.value_at_quantile(0.99));
        println!(
            "target p99 < {TARGET_P99:?} at {TARGET_RATE:.0}/s: {} ({:.2} ms, open loop at {:.0}/s)",
            verdict(p99 < TARGET_P99),
            p99.as_secs_f64() * 1000.0,
            open.rate()
        );
    }
}

async fn certify_once(channel: &Channel, w: &Workload) -> Result<(), String> {
    let mut request = tonic::Request::new(CertifyRequest {
        csr: w.csr.clone(),
        ttl_seconds: 0,
    });
    request
        .metadata_mut()
        .insert("authorization", w.token.clone());
    match RawClient::new(channel.clone()).certify(request).await {
        Ok(answer) if answer.get_ref().spiffe_id == w.id.to_string() => Ok(()),
        Ok(answer) => Err(format!("issued for {}", answer.get_ref().spiffe_id)),
        Err(status) => Err(format!("{:?}: {}", status.code(), status.message())),
    }
}

/// `tasks` tasks take the next identity of `range` and certify it, until none is left.
async fn closed_loop(
    pool: &Arc<Vec<Channel>>,
    workloads: &Arc<Vec<Workload>>,
    range: std::ops::Range<usize>,
    tasks: usize,
) -> anyhow::Result<Report> {
    let next = Arc::new(AtomicUsize::new(range.start));
    let deadline = Instant::now() + RUN_DEADLINE;
    let started = Instant::now();
    let mut handles = Vec::with_capacity(tasks);
    for t in 0..tasks {
        let (pool, workloads, next, end) =
            (pool.clone(), workloads.clone(), next.clone(), range.end);
        handles.push(tokio::spawn(async move {
            let mut report = Report::new()?;
            let channel = &pool[t % pool.len()];
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end || Instant::now() > deadline {
                    break;
                }
                let sent = Instant::now();
                let result = certify_once(channel, &workloads[i]).await;
                report.record(sent.elapsed(), result);
            }
            anyhow::Ok(report)
        }));
    }
    let mut total = Report::new()?;
    for handle in handles {
        total.merge(handle.await??)?;
    }
    total.elapsed = started.elapsed();
    if total.ok + total.failed < range.len() {
        println!("  (stopped at the {RUN_DEADLINE:?} deadline)");
    }
    Ok(total)
}

/// Requests start at `rate` per second whatever the answers do; latency counts from the
/// moment a request was due. At most 4096 are in flight (the bench's own bound).
async fn open_loop(
    pool: &Arc<Vec<Channel>>,
    workloads: &Arc<Vec<Workload>>,
    range: std::ops::Range<usize>,
    rate: f64,
) -> anyhow::Result<Report> {
    let report = Arc::new(Mutex::new(Report::new()?));
    let in_flight = Arc::new(Semaphore::new(4096));
    let start = tokio::time::Instant::now() + Duration::from_millis(10);
    let deadline = Instant::now() + RUN_DEADLINE;
    let mut handles = Vec::with_capacity(range.len());
    for (n, i) in range.clone().enumerate() {
        let due = start + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(due).await;
        if Instant::now() > deadline {
            println!("  (stopped at the {RUN_DEADLINE:?} deadline)");
            break;
        }
        let permit = in_flight.clone().acquire_owned().await?;
        let (pool, workloads, report) = (pool.clone(), workloads.clone(), report.clone());
        handles.push(tokio::spawn(async move {
            let result = certify_once(&pool[n % pool.len()], &workloads[i]).await;
            let latency = due.elapsed();
            drop(permit);
            report.lock().await.record(latency, result);
        }));
    }
    for handle in handles {
        handle.await?;
    }
    let elapsed = start.elapsed();
    let Ok(report) = Arc::try_unwrap(report) else {
        bail!("a request task outlived the run");
    };
    let mut report = report.into_inner();
    report.elapsed = elapsed;
    Ok(report)
}

/// Like [`closed_loop`], but each request makes a new key and CSR and checks the answer, as a
/// proxy does (`trellis_client::IdentityClient::certify`); one channel per task group.
async fn closed_loop_with_client_crypto(
    running: &Running,
    own_id: &SpiffeId,
    workloads: &Arc<Vec<Workload>>,
    range: std::ops::Range<usize>,
    tasks: usize,
) -> anyhow::Result<Report> {
    let channels = env_or("TRELLIS_BENCH_CHANNELS", 8).max(1);
    let mut pool = Vec::new();
    for _ in 0..channels {
        pool.push(
            trellis_client::connect(
                &running.grpc_addr.to_string(),
                running.bundle.clone(),
                Some(own_id.clone()),
                None,
            )
            .await?,
        );
    }
    let next = Arc::new(AtomicUsize::new(range.start));
    let deadline = Instant::now() + RUN_DEADLINE;
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let mut client = trellis_client::IdentityClient::new(pool[t % pool.len()].clone());
        let (workloads, next, end) = (workloads.clone(), next.clone(), range.end);
        handles.push(tokio::spawn(async move {
            let mut report = Report::new()?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end || Instant::now() > deadline {
                    break;
                }
                let w = &workloads[i];
                let sent = Instant::now();
                let result = match WorkloadKey::generate() {
                    Ok(key) => client
                        .certify(&key, Some(&w.id), &w.raw_token, None)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                report.record(sent.elapsed(), result);
            }
            anyhow::Ok(report)
        }));
    }
    let mut total = Report::new()?;
    for handle in handles {
        total.merge(handle.await??)?;
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

/// Single-threaded cost of the CA's steps, on this machine.
fn parts(workloads: &[Workload]) -> anyhow::Result<()> {
    let now = SystemTime::now();
    let td = TrustDomain::default();
    let ca = CertificateAuthority::load(td.clone(), &CaMaterial::generate_root(&td, now)?, now)?;
    let sample = &workloads[..workloads.len().min(2000)];
    let n = sample.len() as f64;

    let t = Instant::now();
    let parsed: Vec<ValidatedCsr> = sample
        .iter()
        .map(|w| ValidatedCsr::parse(&w.csr))
        .collect::<Result<_, _>>()?;
    let parse = t.elapsed().as_secs_f64() / n;

    let t = Instant::now();
    for (csr, w) in parsed.iter().zip(sample) {
        std::hint::black_box(ca.issue(csr, &w.id, Duration::from_secs(86_400), now)?);
    }
    let issue = t.elapsed().as_secs_f64() / n;

    let t = Instant::now();
    for w in sample {
        std::hint::black_box(ring::digest::digest(
            &ring::digest::SHA256,
            w.raw_token.as_bytes(),
        ));
    }
    let digest = t.elapsed().as_secs_f64() / n;

    println!(
        "\nin-process cost per certificate (one core, {} samples):",
        sample.len()
    );
    println!("  join-token digest (SHA-256)     {:>8.1} µs", digest * 1e6);
    println!("  CSR parse + signature check     {:>8.1} µs", parse * 1e6);
    println!("  issue (build + ECDSA sign)      {:>8.1} µs", issue * 1e6);
    println!(
        "  => CA work alone caps one core at {:.0} certificates/s",
        1.0 / (parse + issue + digest)
    );
    Ok(())
}
