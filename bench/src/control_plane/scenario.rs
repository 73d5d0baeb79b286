//! One mesh size, start to end: the fake cluster and the control plane; one simulated proxy
//! alone (its state's memory); W proxies restarting at once (Certify, then the full state);
//! a real sidecar syncing; then the churn, recorded; then everything stopped.
//!
//! Owns: the order of the phases and what is read when (CPU, RSS, bytes), into [`Figures`].

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use trellis_ca::{SpiffeId, TrustBundle, TrustDomain};

use super::alone;
use super::apiserver::{ApiServer, Cluster, token_for};
use super::mesh::{Change, Mesh};
use super::plan::{Plan, Scenario};
use super::processes::{self, ControlPlane};
use super::proxies::{self, Identity, Progress, REAL_STATE_EVERY, Shared, Then};
use super::report::Figures;
use super::storm;
use super::tracker::{Stats, Tracker, latencies, percentile};
use crate::procs::{self, Supervisor};
use crate::routes::Bins;

/// The control plane's identity (its default namespace and service account).
const CONTROL_PLANE_ID: &str = "spiffe://cluster.local/ns/trellis-system/sa/trellis-control-plane";

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Polls `done` every 20 ms until it holds or `limit` passes; whether it held.
async fn until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Runs `sc` and measures it.
pub async fn run(
    plan: &Plan,
    sc: &Scenario,
    bins: &Bins,
    dir: &Path,
    template: &Value,
    then: Then,
) -> anyhow::Result<Figures> {
    let mut sup = Supervisor::new(dir);
    let result = measure(plan, sc, bins, dir, template, &mut sup, then).await;
    sup.stop_all();
    result
}

async fn measure(
    plan: &Plan,
    sc: &Scenario,
    bins: &Bins,
    dir: &Path,
    template: &Value,
    sup: &mut Supervisor,
    then: Then,
) -> anyhow::Result<Figures> {
    let mut f = Figures::new(sc);
    let cluster = Arc::new(Cluster::default());
    let mut mesh = Mesh::new(sc.pods, sc.services, template.clone());
    let pinned = mesh.pin(sc.watchers + 2);
    if pinned.len() < sc.watchers + 2 {
        bail!(
            "a mesh of {} pods has no pod a proxy could stand for",
            sc.pods
        );
    }
    mesh.load_into(&cluster);
    let api = ApiServer::start(cluster.clone()).await?;
    let name = format!("control-plane-{}", sc.pods);
    let cp = processes::start_control_plane(sup, dir, bins, &api, &name, &plan.control_plane_args)
        .await?;
    let td = TrustDomain::default();
    let shared = Arc::new(Shared {
        control_plane: cp.grpc.to_string(),
        control_plane_id: SpiffeId::parse(CONTROL_PLANE_ID)?,
        bundle: TrustBundle::from_pem(td.clone(), cp.root_pem.as_bytes())?,
        trust_domain: td,
        tracker: Arc::new(Tracker::default()),
        stats: Arc::new(Stats::default()),
        start: Instant::now(),
    });
    let identity = |i: usize, real_state: bool| {
        let (ns, sa, pod) = &pinned[i];
        Identity {
            pod: pod.clone(),
            token: token_for(ns, sa, pod),
            real_state,
            local: proxies::source_address(i),
        }
    };

    // 1. One proxy alone, in a process of its own, with a real state: how much it grows by it.
    // Also with --only storm: the storm then starts, as in the full run, once the control plane
    // has listed the cluster (at P = 10,000 its first lists otherwise overlap the storm).
    {
        let grown = alone::measure(
            sup,
            dir,
            &shared,
            &cp.root_pem,
            &identity(sc.watchers, true),
            mesh.pod_count(),
            &format!("proxy-alone-{}", sc.pods),
        )
        .await?;
        f.sim_state_mib = Some(mib(grown));
    }

    // 2. W proxies restarting at once: Certify, then Watch and the full state.
    procs::reset_peak_rss(&[cp.pid]);
    let cpu0 = procs::cpu_seconds(&[cp.pid]);
    let progress = Arc::new(Progress::default());
    let stop = CancellationToken::new();
    let shared = Arc::new(Shared {
        start: Instant::now(),
        ..clone_shared(&shared)
    });
    shared.stats.recording.store(true, Ordering::Relaxed);
    let mut fleet = Vec::with_capacity(sc.watchers);
    for i in 0..sc.watchers {
        let me = identity(i, i % REAL_STATE_EVERY == 0);
        fleet.push(tokio::spawn(proxies::run(
            me,
            shared.clone(),
            progress.clone(),
            stop.clone(),
            then.clone(),
        )));
    }
    let settled = until(plan.storm_limit, || {
        proxies::settled(&progress, sc.watchers, !plan.certify_only)
    })
    .await;
    shared.stats.recording.store(false, Ordering::Relaxed);
    let storm_wall = shared.start.elapsed().as_secs_f64();
    f.storm_cp_cpu_s = Some(procs::cpu_seconds(&[cp.pid]) - cpu0);
    f.storm_cp_peak_mib = Some(mib(procs::peak_rss_kib(&[cp.pid])));
    f.storm_wall_s = Some(storm_wall);
    let (messages, bytes, ..) = proxies::totals(&shared.stats);
    f.full_state_bytes = Some(bytes as f64 / sc.watchers as f64);
    f.full_state_messages = Some(messages as f64 / sc.watchers as f64);
    {
        let certified = sorted(&progress.certified);
        let synced = sorted(&progress.synced);
        f.certified = summary(&certified, sc.watchers);
        f.synced = summary(&synced, sc.watchers);
        f.certify_failures = progress.counts().2;
    }
    if let Some(first) = first_of(&progress.failures) {
        f.problems.push(format!(
            "{} proxies gave up on Certify; the first: {first}",
            f.certify_failures
        ));
    }
    f.storm_reconnects = len_of(&progress.reconnects);
    if !settled {
        f.problems.push(format!(
            "restart storm: {} of {} proxies synced within {:?}",
            progress.counts().1,
            sc.watchers,
            plan.storm_limit
        ));
    }
    eprintln!(
        "bench: P={} W={}: certified {:?}, synced {:?} (all, s)",
        sc.pods, sc.watchers, f.certified.all_s, f.synced.all_s
    );
    let counters = cp.metrics_text().await.map(|t| storm::cp_counters(&t));
    for line in storm::breakdown(&progress.paths.all())
        .into_iter()
        .chain(counters.unwrap_or_else(|e| vec![format!("control-plane metrics: {e:#}")]))
    {
        eprintln!("bench: {line}");
    }
    if plan.storm_only {
        stop.cancel();
        for task in fleet {
            let _ = task.await;
        }
        return Ok(f);
    }

    // 3. A real sidecar joins and syncs.
    let sidecar_name = format!("sidecar-{}", sc.pods);
    let sidecar =
        processes::start_sidecar(sup, dir, bins, &cp, &pinned[sc.watchers + 1], &sidecar_name)?;
    let took = sidecar
        .wait_for(
            sup,
            &sidecar_name,
            mesh.pod_count(),
            Duration::from_secs(60),
        )
        .await?;
    f.sidecar_sync_s = Some(took.as_secs_f64());

    // 4. The churn, recorded.
    let churned = churn(plan, &mut mesh, &cluster, &cp, &shared, &progress).await?;
    f.absorb_churn(churned);
    f.sidecar_rss_mib = Some(mib(procs::rss_kib(&[sidecar.pid])));
    f.sidecar_peak_mib = Some(mib(procs::peak_rss_kib(&[sidecar.pid])));
    f.cp_peak_run_mib = match (f.storm_cp_peak_mib, f.cp_peak_churn_mib) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    f.reconnects = len_of(&progress.reconnects) - f.storm_reconnects;
    if f.reconnects > 0
        && let Some(first) = first_of(&progress.reconnects)
    {
        f.problems
            .push(format!("a Watch stream was lost during the churn: {first}"));
    }
    f.tokenreviews = api.cluster.reviews();
    stop.cancel();
    for task in fleet {
        let _ = task.await;
    }
    sup.check_alive(&name)
        .context("the control plane died during the run")?;
    Ok(f)
}

type Totals = (u64, u64, u64, u64, u64);

fn minus(a: Totals, b: Totals) -> Totals {
    (a.0 - b.0, a.1 - b.1, a.2 - b.2, a.3 - b.3, a.4 - b.4)
}

fn clone_shared(s: &Shared) -> Shared {
    Shared {
        control_plane: s.control_plane.clone(),
        control_plane_id: s.control_plane_id.clone(),
        bundle: s.bundle.clone(),
        trust_domain: s.trust_domain.clone(),
        tracker: s.tracker.clone(),
        stats: Arc::new(Stats::default()),
        start: s.start,
    }
}

fn len_of(list: &std::sync::Mutex<Vec<String>>) -> usize {
    list.lock().map(|l| l.len()).unwrap_or(0)
}

fn first_of(list: &std::sync::Mutex<Vec<String>>) -> Option<String> {
    list.lock().ok().and_then(|l| l.first().cloned())
}

fn sorted(list: &std::sync::Mutex<Vec<f64>>) -> Vec<f64> {
    let mut v = list.lock().map(|l| l.clone()).unwrap_or_default();
    v.sort_by(f64::total_cmp);
    v
}

/// p50, p99 and the last (only when every one of `total` is in).
fn summary(sorted: &[f64], total: usize) -> super::report::Spread {
    super::report::Spread {
        p50_s: percentile(sorted, 0.5),
        p99_s: percentile(sorted, 0.99),
        all_s: (sorted.len() >= total)
            .then(|| sorted.last().copied())
            .flatten(),
    }
}

/// What the churn phase measured.
#[derive(Debug)]
pub struct Churned {
    /// Changes made.
    pub changes: usize,
    /// Latencies of changes every proxy applied (s, sorted), and how many some proxy did not.
    pub latencies: (Vec<f64>, usize),
    /// Control-plane CPU seconds and wall seconds over the phase.
    pub cpu: (f64, f64),
    /// Control-plane peak RSS during the phase, and RSS at its end (KiB).
    pub rss: (u64, u64),
    /// What the proxies received (messages, bytes, updates, resyncs, misses).
    pub received: Totals,
    /// Bytes the control plane wrote.
    pub written: Option<u64>,
    /// Round trips of a unary call on an open channel (s, sorted).
    pub rtt: Vec<f64>,
}

async fn churn(
    plan: &Plan,
    mesh: &mut Mesh,
    cluster: &Cluster,
    cp: &ControlPlane,
    shared: &Arc<Shared>,
    progress: &Progress,
) -> anyhow::Result<Churned> {
    let synced = progress.counts().1 as u32;
    procs::reset_peak_rss(&[cp.pid]);
    let cpu0 = procs::cpu_seconds(&[cp.pid]);
    let written0 = procs::written_bytes(cp.pid);
    let stop_probe = CancellationToken::new();
    let probe = tokio::spawn(proxies::rtt_probe(
        shared.clone(),
        Duration::from_millis(100),
        stop_probe.clone(),
    ));
    let received0 = proxies::totals(&shared.stats);
    shared.stats.recording.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let steps = (plan.rate * plan.churn.as_secs_f64()).round() as u64;
    for n in 0..steps {
        let due = started + Duration::from_secs_f64(n as f64 / plan.rate);
        tokio::time::sleep_until(due.into()).await;
        let Some(change) = mesh.step(n, |k| fastrand::usize(0..k)) else {
            bail!("the churn found no pod to replace");
        };
        shared
            .tracker
            .made(change.ip(), matches!(change, Change::Added { .. }));
        mesh.apply(&change, cluster);
    }
    let tracker = shared.tracker.clone();
    until(plan.drain_limit, || {
        tracker.reached().iter().all(|r| r.proxies >= synced)
    })
    .await;
    shared.stats.recording.store(false, Ordering::Relaxed);
    let wall = started.elapsed().as_secs_f64();
    let cpu = procs::cpu_seconds(&[cp.pid]) - cpu0;
    stop_probe.cancel();
    let mut rtt = probe.await.unwrap_or_default();
    rtt.sort_by(f64::total_cmp);
    Ok(Churned {
        changes: tracker.len(),
        latencies: latencies(&tracker.reached(), synced),
        cpu: (cpu, wall),
        rss: (procs::peak_rss_kib(&[cp.pid]), procs::rss_kib(&[cp.pid])),
        received: minus(proxies::totals(&shared.stats), received0),
        written: procs::written_bytes(cp.pid)
            .zip(written0)
            .map(|(b, a)| b - a),
        rtt,
    })
}
