//! The simulated proxies: W tasks in this process, each doing what a restarting sidecar does
//! with the control plane — a new key, `Certify` with its pod's ServiceAccount token (over
//! TLS, no client certificate yet), then `Watch` over a second TLS connection presenting the
//! SVID it got: the full state, then deltas, each checked against the version held and
//! acknowledged (or reported as missed, which brings the full state again). Updates are
//! assembled with the proxy's own `Assembler`; one proxy in [`REAL_STATE_EVERY`] also applies
//! them to a real `MeshState` with the proxy's `apply`, the others keep only the version
//! (holding 2,000 full states would measure this process's memory, not the control plane's).
//!
//! Owns: one proxy's life ([`run`]), what the fleet reports ([`Progress`]), and the probe of
//! what an on-demand lookup would cost: one unary round trip on an open channel ([`rtt_probe`]).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use trellis_ca::{SpiffeId, Svid, TrustBundle, TrustDomain, WorkloadKey};
use trellis_client::{IdentityClient, connect, connect_from};
use trellis_proto::discovery::discovery_client::DiscoveryClient;
use trellis_proto::discovery::{MeshUpdate, WatchRequest};
use trellis_proxy::discovery::apply::{ApplyContext, Assembler, apply};
use trellis_proxy::services::Loads;
use trellis_proxy::state::Identities;
use trellis_proxy::state::MeshState;

use super::storm::{CertifyPath, Paths};
use super::tracker::{Stats, Tracker};

/// One proxy in this many holds a real `MeshState`.
pub const REAL_STATE_EVERY: usize = 100;
/// Largest discovery message accepted (as the proxy).
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// How long a proxy keeps retrying Certify (rate limited, unavailable).
const CERTIFY_FOR: Duration = Duration::from_secs(60);

/// What every simulated proxy shares.
#[derive(Debug)]
pub struct Shared {
    /// The control plane's gRPC address.
    pub control_plane: String,
    /// Its identity.
    pub control_plane_id: SpiffeId,
    /// The roots (bootstrap trust).
    pub bundle: TrustBundle,
    /// The trust domain.
    pub trust_domain: TrustDomain,
    /// Who applied which churn change.
    pub tracker: Arc<Tracker>,
    /// What the proxies received while recording.
    pub stats: Arc<Stats>,
    /// When the proxies (re)started, all at once.
    pub start: Instant,
}

/// One simulated proxy: its pod and token.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Pod name.
    pub pod: String,
    /// Its ServiceAccount token.
    pub token: String,
    /// Whether it applies updates to a real `MeshState`.
    pub real_state: bool,
    /// The address it connects from (its own, as a pod has: see [`source_address`]).
    pub local: Option<IpAddr>,
}

/// The loopback address simulated proxy `i` connects from: 127.1.0.1 onwards, one per proxy
/// (up to 250 × 256 of them), as every pod of a cluster has an address of its own. From one
/// address, 2,000 proxies restarting at once would meet the control plane's cap on pending
/// handshakes per source (meant for one misbehaving client), which no cluster shows it.
pub fn source_address(i: usize) -> Option<IpAddr> {
    let (high, low) = (i / 250, i % 250);
    let high = u8::try_from(high).ok()?;
    let low = u8::try_from(low + 1).ok()?;
    Some(IpAddr::V4(Ipv4Addr::new(127, 1, high, low)))
}

/// What the fleet reports, as it happens.
#[derive(Debug, Default)]
pub struct Progress {
    /// Seconds from the start until each proxy held its certificate.
    pub certified: Mutex<Vec<f64>>,
    /// Seconds from the start until each proxy applied its first full state.
    pub synced: Mutex<Vec<f64>>,
    /// Why proxies gave up (Certify refused or never answered).
    pub failures: Mutex<Vec<String>>,
    /// Why Watch streams were lost (the proxy reconnects and resumes).
    pub reconnects: Mutex<Vec<String>>,
    /// Workloads in the latest state applied by a proxy that keeps a real one.
    pub workloads_held: std::sync::atomic::AtomicUsize,
    /// Where each proxy's Certify time went.
    pub paths: Paths,
}

impl Progress {
    fn push(list: &Mutex<Vec<f64>>, since: Instant) {
        list.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(since.elapsed().as_secs_f64());
    }

    fn note(list: &Mutex<Vec<String>>, error: String) {
        list.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(error);
    }

    /// Counts of (certified, synced, failed).
    pub fn counts(&self) -> (usize, usize, usize) {
        let len = |m: &Mutex<Vec<_>>| m.lock().unwrap_or_else(PoisonError::into_inner).len();
        (
            len(&self.certified),
            len(&self.synced),
            self.failures
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len(),
        )
    }
}

/// Where a proxy's Watch streams run once it holds its certificate.
#[derive(Debug, Clone)]
pub enum Then {
    /// Nowhere: the proxy stops once certified (`--only certify`).
    Stop,
    /// On this runtime: the fleet's Watch streams (full states decoded, deltas applied) on
    /// threads of their own, as every pod has its own CPU — on the certifying proxies'
    /// runtime, a proxy decoding its 700 KB full state held up the TLS handshakes of
    /// proxies still certifying, in that runtime's queue, which no cluster does.
    Watch(tokio::runtime::Handle),
}

/// One proxy's life until `stop`: certify, then (see [`Then`]) watch, reconnecting and
/// resuming from the version held if the stream drops.
pub async fn run(
    me: Identity,
    shared: Arc<Shared>,
    progress: Arc<Progress>,
    stop: CancellationToken,
    then: Then,
) {
    let svid = tokio::select! {
        () = stop.cancelled() => return,
        svid = certify(&me, &shared, &progress.paths) => match svid {
            Ok(s) => s,
            Err(e) => return Progress::note(&progress.failures, format!("{}: certify: {e:#}", me.pod)),
        },
    };
    Progress::push(&progress.certified, shared.start);
    if let Then::Watch(runtime) = then {
        let _ = runtime
            .spawn(watch_until(me, svid, shared, progress, stop))
            .await;
    }
}

/// Watches as `me` with `svid` until `stop`, reconnecting with the proxy's backoff.
async fn watch_until(
    me: Identity,
    svid: Svid,
    shared: Arc<Shared>,
    progress: Arc<Progress>,
    stop: CancellationToken,
) {
    let mut held = Held::default();
    let mut first = true;
    // Failed connections since the last one that brought an update (the proxy's backoff).
    let mut failures = 0;
    while !stop.is_cancelled() {
        let before = (held.epoch, held.version);
        match watch(&me, &svid, &shared, &progress, &mut held, &mut first, &stop).await {
            Ok(()) => return,
            Err(e) => {
                Progress::note(&progress.reconnects, format!("{}: watch: {e:#}", me.pod));
                failures = if (held.epoch, held.version) == before {
                    failures + 1
                } else {
                    1
                };
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(trellis_proxy::backoff::delay(failures)) => {}
                }
            }
        }
    }
}

/// Certifies as `me`, retrying what is retryable for [`CERTIFY_FOR`] with the proxy's own
/// backoff (capped exponential, jittered); records where the time went in `paths`.
pub async fn certify(me: &Identity, shared: &Shared, paths: &Paths) -> anyhow::Result<Svid> {
    let mut path = CertifyPath::default();
    let result = certify_recorded(me, shared, &mut path).await;
    paths.push(path);
    result
}

async fn certify_recorded(
    me: &Identity,
    shared: &Shared,
    path: &mut CertifyPath,
) -> anyhow::Result<Svid> {
    let deadline = Instant::now() + CERTIFY_FOR;
    let mut failures = 0;
    loop {
        let key = WorkloadKey::generate()?;
        let connecting = Instant::now();
        let channel = connect_from(
            &shared.control_plane,
            shared.bundle.clone(),
            Some(shared.control_plane_id.clone()),
            None,
            me.local,
        )
        .await;
        let connected = connecting.elapsed();
        let calling = Instant::now();
        let result = match channel {
            Ok(c) => IdentityClient::new(c)
                .certify(&key, None, &me.token, None)
                .await
                .map_err(|e| (e.is_retryable(), e.to_string())),
            Err(e) => Err((true, e.to_string())),
        };
        path.attempt(
            connected,
            calling.elapsed(),
            result.as_ref().err().map(|(_, e)| e.as_str()),
        );
        match result {
            Ok(svid) => return Ok(svid),
            Err((true, e)) if Instant::now() < deadline => {
                tracing_retry(&e);
                failures += 1;
                let sleep = trellis_proxy::backoff::delay(failures);
                path.slept(sleep);
                tokio::time::sleep(sleep).await;
            }
            Err((_, e)) => bail!(e),
        }
    }
}

fn tracing_retry(e: &str) {
    if std::env::var_os("TRELLIS_BENCH_VERBOSE").is_some() {
        eprintln!("bench: certify retried: {e}");
    }
}

/// The version a proxy holds and, for some, the state itself.
#[derive(Debug, Default)]
struct Held {
    epoch: u64,
    version: u64,
    state: Option<(MeshState, Loads, Identities)>,
}

fn ipv4(bytes: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(bytes).ok().map(Ipv4Addr::from)
}

async fn watch(
    me: &Identity,
    svid: &Svid,
    shared: &Shared,
    progress: &Progress,
    held: &mut Held,
    first: &mut bool,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let channel = connect_from(
        &shared.control_plane,
        svid.bundle().clone(),
        Some(shared.control_plane_id.clone()),
        Some(svid),
        me.local,
    )
    .await?;
    let (requests, rx) = mpsc::channel(4);
    let ask = |held: &Held, error: String| WatchRequest {
        node: me.pod.clone(),
        proxy_version: "trellis-bench".into(),
        epoch: held.epoch,
        version: held.version,
        error,
    };
    requests.send(ask(held, String::new())).await?;
    let mut stream = DiscoveryClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .watch(ReceiverStream::new(rx))
        .await
        .context("Watch refused")?
        .into_inner();
    if me.real_state && held.state.is_none() {
        held.state = Some((
            MeshState::default(),
            Loads::default(),
            Identities::default(),
        ));
    }
    let mut assembler = Assembler::default();
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            m = stream.message() => m?.context("the control plane ended the stream")?,
        };
        shared.stats.message(message.encoded_len());
        let Some(update) = assembler.push(message)? else {
            continue;
        };
        let error = match on_update(update, shared, progress, held, first) {
            Ok(()) => String::new(),
            Err(e) => e,
        };
        // As the proxy: acknowledgements are small; a full queue means the stream is stuck.
        let _ = requests.try_send(ask(held, error));
    }
}

/// Checks and applies one whole update; `Err` says why it does not apply (a resync follows).
fn on_update(
    update: MeshUpdate,
    shared: &Shared,
    progress: &Progress,
    held: &mut Held,
    first: &mut bool,
) -> Result<(), String> {
    if !update.full && (update.epoch, update.base_version) != (held.epoch, held.version) {
        shared.stats.count(&shared.stats.misses);
        return Err(format!(
            "update on {}/{} but holding {}/{}",
            update.epoch, update.base_version, held.epoch, held.version
        ));
    }
    if update.full {
        if std::mem::take(first) {
            Progress::push(&progress.synced, shared.start);
        } else {
            shared.stats.count(&shared.stats.resyncs);
        }
    } else {
        let added = update.workloads.iter().filter_map(|w| ipv4(&w.ip));
        shared.tracker.applied(added, true);
        let removed = update.removed_workloads.iter().filter_map(|w| ipv4(&w.ip));
        shared.tracker.applied(removed, false);
    }
    let applied = (update.epoch, update.version);
    if let Some((state, loads, identities)) = held.state.as_mut() {
        let mut cx = ApplyContext {
            trust_domain: &shared.trust_domain,
            static_workloads: &[],
            loads,
            identities,
        };
        *state = apply(state, update, &mut cx).map_err(|e| e.to_string())?;
        progress
            .workloads_held
            .store(state.len(), Ordering::Relaxed);
    }
    (held.epoch, held.version) = applied;
    shared.stats.count(&shared.stats.updates);
    Ok(())
}

/// Round trips of a unary call (`grpc.health.v1.Health/Check`) on one open channel, every
/// `every`, until `stop`: what resolving a destination on demand would add to a first
/// connection. Seconds, in order.
pub async fn rtt_probe(shared: Arc<Shared>, every: Duration, stop: CancellationToken) -> Vec<f64> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let Ok(channel) = connect(
        &shared.control_plane,
        shared.bundle.clone(),
        Some(shared.control_plane_id.clone()),
        None,
    )
    .await
    else {
        return Vec::new();
    };
    let mut client = HealthClient::new(channel);
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            () = stop.cancelled() => return out,
            _ = tick.tick() => {}
        }
        let started = Instant::now();
        let call = client.check(HealthCheckRequest::default());
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(5), call).await {
            out.push(started.elapsed().as_secs_f64());
        }
    }
}

/// Whether every started proxy has failed or synced (or, when `watching` is false, been
/// certified): `done + failed >= total`.
pub fn settled(progress: &Progress, total: usize, watching: bool) -> bool {
    let (certified, synced, failed) = progress.counts();
    let done = if watching { synced } else { certified };
    done + failed >= total
}

/// Stats readout: (messages, bytes, updates, resyncs, misses).
pub fn totals(stats: &Stats) -> (u64, u64, u64, u64, u64) {
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    (
        get(&stats.messages),
        get(&stats.bytes),
        get(&stats.updates),
        get(&stats.resyncs),
        get(&stats.misses),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_storm_settles_when_every_proxy_synced_or_certified_as_asked_or_failed() {
        let progress = Progress::default();
        let at = |list: &Mutex<Vec<f64>>, n: usize| list.lock().unwrap().resize(n, 1.0);
        at(&progress.certified, 3);
        at(&progress.synced, 1);
        progress.failures.lock().unwrap().push("gave up".into());
        for (total, watching, want) in [
            (4, false, true),
            (5, false, false),
            (2, true, true),
            (3, true, false),
        ] {
            assert_eq!(
                settled(&progress, total, watching),
                want,
                "{total} {watching}"
            );
        }
    }

    #[test]
    fn every_simulated_proxy_connects_from_a_loopback_address_of_its_own() {
        for (i, want) in [
            (0, Some("127.1.0.1")),
            (249, Some("127.1.0.250")),
            (250, Some("127.1.1.1")),
            (1999, Some("127.1.7.250")),
            (250 * 256 - 1, Some("127.1.255.250")),
            (250 * 256, None),
        ] {
            let want = want.map(|a| a.parse::<IpAddr>().unwrap());
            assert_eq!(source_address(i), want, "proxy {i}");
        }
    }
}
