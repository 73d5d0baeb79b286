//! The discovery subscription: once the proxy holds an SVID, it opens `Watch` to the control
//! plane (presenting that SVID — the control plane identifies us by it), applies each update to
//! a copy of the [`MeshState`] and swaps it in atomically, then acknowledges the version. Open
//! connections are untouched; new ones see the new endpoints, Services and policy.
//!
//! Owns: the reconnect loop and the request side of the stream (first request, acks, "could not
//! apply"). Converting and applying updates is [`apply`]'s. If the control plane is unreachable
//! the last state stays in force — a workload that had a policy keeps enforcing it (fail
//! closed) — and on reconnecting the proxy says which version it holds, so it gets only what
//! changed since when the control plane still knows.

pub mod apply;

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use trellis_ca::{SpiffeId, TrustDomain};
use trellis_client::connect;
use trellis_proto::discovery::WatchRequest;
use trellis_proto::discovery::discovery_client::DiscoveryClient;

use crate::config::StaticWorkload;
use crate::identity::SvidWatch;
use crate::metrics::Metrics;
use crate::services::Loads;
use crate::state::{Identities, MeshState, Version};
use apply::{ApplyContext, Assembler};

/// Largest discovery message accepted (the control plane sends at most ~1 MiB per message;
/// one very large Service may exceed that alone).
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Where to subscribe and what to merge in.
#[derive(Debug, Clone)]
pub struct DiscoverySource {
    /// Control plane address.
    pub control_plane: String,
    /// Its identity.
    pub control_plane_id: SpiffeId,
    /// Our trust domain (short-form patterns).
    pub trust_domain: TrustDomain,
    /// Statically configured workloads; they win over discovered ones at the same address.
    pub static_workloads: Vec<StaticWorkload>,
    /// Our pod name, for the control plane's logs and status.
    pub node: String,
}

/// What applying keeps from one update to the next, across streams.
#[derive(Debug, Default)]
struct Kept {
    /// Endpoint loads.
    loads: Loads,
    /// Workload identities.
    identities: Identities,
}

/// How a stream ended.
enum Ended {
    /// Shutdown.
    Shutdown,
    /// A new SVID: the stream is reopened at once with it, so that the control plane always
    /// knows the certificate in use (`trellis status` shows its serial and expiry).
    Renewed,
    /// The stream failed; `applied` tells whether it had delivered anything (then the backoff
    /// starts over).
    Lost { error: String, applied: bool },
}

/// Follows the control plane's updates until `shutdown`.
pub async fn run(
    source: DiscoverySource,
    mut svid: SvidWatch,
    state: watch::Sender<Arc<MeshState>>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut kept = Kept::default();
    let mut failures = 0u32;
    loop {
        let current = tokio::select! {
            () = shutdown.cancelled() => return,
            c = svid.wait_for(Option::is_some) => match c {
                Ok(c) => c.clone(),
                Err(_) => return,
            },
        };
        let Some(current) = current else { continue };
        let ended = follow(
            &source, &current, &mut svid, &state, &metrics, &mut kept, &shutdown,
        )
        .await;
        match ended {
            Ended::Shutdown => return,
            Ended::Renewed => {
                metrics.discovery_connected.set(0);
                failures = 0;
                info!("new SVID: reopening the discovery stream with it");
            }
            Ended::Lost { error, applied } => {
                metrics.discovery_connected.set(0);
                failures = if applied {
                    1
                } else {
                    failures.saturating_add(1)
                };
                let wait = crate::backoff::delay(failures);
                warn!(%error, retry_in = ?wait, "discovery stream lost; the last known endpoints and policy stay in force");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Resolves once `svid` holds a certificate with another serial than `serial` (a trust bundle
/// update alone keeps the stream); never if the identity manager is gone.
async fn renewed(svid: &mut SvidWatch, serial: &str) {
    loop {
        if svid.changed().await.is_err() {
            return std::future::pending().await;
        }
        if svid
            .borrow_and_update()
            .as_ref()
            .is_some_and(|c| c.svid.serial() != serial)
        {
            return;
        }
    }
}

fn request(source: &DiscoverySource, held: Version, error: String) -> WatchRequest {
    WatchRequest {
        node: source.node.clone(),
        proxy_version: env!("CARGO_PKG_VERSION").to_owned(),
        epoch: held.epoch,
        version: held.version,
        error,
    }
}

async fn follow(
    source: &DiscoverySource,
    current: &crate::identity::CurrentSvid,
    svid: &mut SvidWatch,
    state: &watch::Sender<Arc<MeshState>>,
    metrics: &Metrics,
    kept: &mut Kept,
    shutdown: &CancellationToken,
) -> Ended {
    let lost = |error: String, applied| Ended::Lost { error, applied };
    let channel = match connect(
        &source.control_plane,
        current.trust.clone(),
        Some(source.control_plane_id.clone()),
        Some(&current.svid),
    )
    .await
    {
        Ok(c) => c,
        Err(e) => return lost(e.to_string(), false),
    };
    let mut client = DiscoveryClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let (requests, rx) = mpsc::channel(4);
    let held = state.borrow().version;
    if requests
        .send(request(source, held, String::new()))
        .await
        .is_err()
    {
        return lost("request channel closed".into(), false);
    }
    let mut stream = match client.watch(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(s) => return lost(format!("{:?}: {}", s.code(), s.message()), false),
    };
    metrics.discovery_connected.set(1);
    let mut assembler = Assembler::default();
    let mut applied = false;
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return Ended::Shutdown,
            () = renewed(svid, current.svid.serial()) => return Ended::Renewed,
            m = stream.message() => match m {
                Ok(Some(m)) => m,
                Ok(None) => return lost("the control plane closed the stream".into(), applied),
                Err(s) => return lost(format!("{:?}: {}", s.code(), s.message()), applied),
            },
        };
        let held = state.borrow().version;
        let outcome = assembler.push(message).and_then(|update| {
            let Some(update) = update else {
                return Ok(None);
            };
            let mut cx = ApplyContext {
                trust_domain: &source.trust_domain,
                static_workloads: &source.static_workloads,
                loads: &mut kept.loads,
                identities: &mut kept.identities,
            };
            let full = update.full;
            let next = apply::apply(&state.borrow(), update, &mut cx)?;
            Ok(Some((full, next)))
        });
        let answer = match outcome {
            Ok(None) => continue, // more messages of this update follow
            Ok(Some((full, next))) => {
                let version = next.version;
                if full {
                    info!(
                        epoch = version.epoch,
                        version = version.version,
                        workloads = next.len(),
                        services = next.service_count(),
                        rules = next.policy.rules.len(),
                        mtls = ?next.mtls_mode,
                        "mesh state received"
                    );
                } else {
                    debug!(
                        version = version.version,
                        workloads = next.len(),
                        services = next.service_count(),
                        "mesh update applied"
                    );
                }
                metrics.discovery_updates.inc();
                metrics
                    .discovery_version
                    .set(i64::try_from(version.version).unwrap_or(i64::MAX));
                metrics
                    .discovery_workloads
                    .set(i64::try_from(next.len()).unwrap_or(i64::MAX));
                state.send_replace(Arc::new(next));
                applied = true;
                request(source, version, String::new())
            }
            Err(e) => {
                warn!(error = %e, "discovery update not applied; asking for the full state");
                request(source, held, e.to_string())
            }
        };
        // Acknowledgements are small and the control plane reads them as they come; a full
        // queue means the stream is stuck, which the next message or error will show.
        if requests.try_send(answer).is_err() {
            debug!("acknowledgement not queued");
        }
    }
}
