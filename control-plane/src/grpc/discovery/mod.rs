//! `trellis.discovery.v1.Discovery/Watch`: for the calling proxy — identified by its client
//! certificate, never by the request — the full state first, then only what changed (see
//! `discovery.proto` for the protocol).
//!
//! Owns: one task per stream that follows the published [`MeshView`]s and the trust bundle,
//! reads the proxy's acknowledgements, and sends updates. A slow proxy holds at most one
//! message in its queue: while it is full the task waits, and the next update it sends covers
//! every change since the last one sent (changes coalesce; memory does not grow). A proxy that
//! reports it could not apply an update, or that fell behind the history, gets the full state.
//! Large updates are split into messages of at most [`MESSAGE_BYTES`]. What every proxy gets
//! alike is encoded once per change and shared by the streams ([`frames`]); the service itself
//! is written out in [`server`] so that those bytes reach hyper uncopied.

mod frames;
mod server;
mod watchers;
mod wire;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};
use trellis_ca::{SpiffeId, TrustBundle};
use trellis_proto::discovery::{MeshUpdate, WatchRequest};

use frames::EncodedPart;
pub use server::DiscoveryServer;
pub use watchers::{WatcherInfo, Watchers};
use wire::GlobalPart;

use crate::mesh::model::InboundView;
use crate::mesh::{MeshView, Since};
use crate::metrics::{Metrics, PushLabel};
use crate::tls_listener::PeerInfo;

/// Time a proxy has to send its first request.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a new stream waits for the source's first full read (the cluster's first list)
/// before it is refused as unavailable (the proxy retries).
pub const LIST_WAIT: Duration = Duration::from_secs(30);
/// Largest update message sent (a larger update is split).
pub const MESSAGE_BYTES: usize = 1024 * 1024;
/// Longest node name or proxy version kept (they are for display only).
const MAX_LABEL: usize = 253;

/// The discovery service.
#[derive(Debug, Clone)]
pub struct DiscoveryService {
    /// The published mesh.
    views: watch::Receiver<Arc<MeshView>>,
    /// The roots the mesh trusts.
    bundle: watch::Receiver<Arc<TrustBundle>>,
    /// Open streams.
    watchers: Arc<Watchers>,
    /// Global parts already built, shared by the streams that need the same one.
    parts: Arc<PartCache>,
    /// Ends every stream on shutdown.
    shutdown: CancellationToken,
    /// Counts pushes and resyncs (none in unit tests).
    metrics: Option<Arc<Metrics>>,
    /// Longest a new stream waits for a complete view.
    list_wait: Duration,
}

impl DiscoveryService {
    /// A service publishing `views` and `bundle`.
    pub fn new(
        views: watch::Receiver<Arc<MeshView>>,
        bundle: watch::Receiver<Arc<TrustBundle>>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            views,
            bundle,
            watchers: Arc::new(Watchers::default()),
            parts: Arc::new(PartCache::default()),
            shutdown,
            metrics: None,
            list_wait: LIST_WAIT,
        }
    }

    /// Counts pushes and resyncs in `metrics`, whose discovery gauges read these streams.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        metrics.set_watchers(self.watchers.clone());
        self.metrics = Some(metrics);
        self
    }

    /// The open streams.
    pub fn watchers(&self) -> Arc<Watchers> {
        self.watchers.clone()
    }
}

impl DiscoveryService {
    /// Opens a Watch stream for the caller on `peer` (its verified identity, never the
    /// request's): waits for its first request, then spawns the stream's task and returns the
    /// frames it will send.
    async fn open(
        &self,
        peer: Option<PeerInfo>,
        mut requests: Streaming<WatchRequest>,
    ) -> Result<mpsc::Receiver<Bytes>, Status> {
        let peer = peer.ok_or_else(|| Status::internal("connection information missing"))?;
        let caller = peer.id.clone().ok_or_else(|| {
            Status::unauthenticated("Watch needs a client certificate (the proxy's SVID)")
        })?;
        let first = match tokio::time::timeout(FIRST_REQUEST_TIMEOUT, requests.message()).await {
            Ok(Ok(Some(first))) => first,
            Ok(Ok(None)) => {
                return Err(Status::invalid_argument(
                    "the stream ended before its first request",
                ));
            }
            Ok(Err(status)) => return Err(status),
            Err(_) => {
                return Err(Status::deadline_exceeded(
                    "no WatchRequest within 10s of opening the stream",
                ));
            }
        };
        // Held until the model is complete: a proxy must not take a near-empty mesh for the
        // truth (and then get the rest as one huge delta).
        if let Err(status) = until_complete(self.views.clone(), self.list_wait).await {
            if let Some(m) = &self.metrics {
                m.unlisted_refusals.inc();
            }
            return Err(status);
        }
        // Room for one message: its own bytes and the shared chunk.
        let (tx, rx) = mpsc::channel(2);
        let info = WatcherInfo {
            id: caller.clone(),
            node: truncated(&first.node),
            peer: peer.remote,
            proxy_version: truncated(&first.proxy_version),
            connected_at: SystemTime::now(),
            sent: (0, 0),
            acked: (first.epoch, first.version),
            resyncs: 0,
            cert: peer.cert.clone(),
            mtls: None,
        };
        let span =
            info_span!("watch", peer.id = %caller, peer.addr = %peer.remote, node = %info.node);
        let stream = WatchStream {
            caller,
            peer_ip: peer.remote.ip(),
            held: (first.epoch, first.version),
            last_inbound: None,
            last_bundle: None,
            resync: false,
            handle: self.watchers.register(info),
            parts: self.parts.clone(),
            metrics: self.metrics.clone(),
            pushed_full: false,
        };
        tokio::spawn(
            stream
                .run(
                    self.views.clone(),
                    self.bundle.clone(),
                    requests,
                    tx,
                    self.shutdown.clone(),
                )
                .instrument(span),
        );
        Ok(rx)
    }
}

/// Waits until the published view is complete (its source read in full), at most `wait`.
async fn until_complete(
    mut views: watch::Receiver<Arc<MeshView>>,
    wait: Duration,
) -> Result<(), Status> {
    let complete = views.wait_for(|v| v.waiting_for.is_empty());
    let outcome = tokio::time::timeout(wait, complete)
        .await
        .map(|r| r.is_ok());
    match outcome {
        Ok(true) => Ok(()),
        Ok(false) => Err(Status::unavailable("the control plane is shutting down")),
        Err(_) => Err(Status::unavailable(format!(
            "the control plane has not finished its first list of the cluster's {} after {}s; \
             retry later",
            views.borrow().waiting_for.join(", "),
            wait.as_secs_f32()
        ))),
    }
}

fn truncated(s: &str) -> String {
    s.chars().take(MAX_LABEL).collect()
}

/// One proxy's stream.
struct WatchStream {
    /// The proxy's identity.
    caller: SpiffeId,
    /// Its address (picks its workload among several with its identity).
    peer_ip: std::net::IpAddr,
    /// Epoch and version the proxy holds once it applied what was sent.
    held: (u64, u64),
    /// The inbound view last sent.
    last_inbound: Option<InboundView>,
    /// The bundle last sent.
    last_bundle: Option<Arc<TrustBundle>>,
    /// The proxy asked for the full state.
    resync: bool,
    /// Its entry among the open streams.
    handle: watchers::WatcherHandle,
    /// Shared global parts.
    parts: Arc<PartCache>,
    /// Counts pushes and resyncs.
    metrics: Option<Arc<Metrics>>,
    /// Whether the last update built was the full state.
    pushed_full: bool,
}

impl WatchStream {
    async fn run(
        mut self,
        mut views: watch::Receiver<Arc<MeshView>>,
        mut bundles: watch::Receiver<Arc<TrustBundle>>,
        mut requests: Streaming<WatchRequest>,
        tx: mpsc::Sender<Bytes>,
        shutdown: CancellationToken,
    ) {
        let mut first = true;
        loop {
            let view = views.borrow_and_update().clone();
            let bundle = bundles.borrow_and_update().clone();
            let started = Instant::now();
            let frames = self.next_update(&view, &bundle, first);
            first = false;
            let pushed = !frames.is_empty();
            for frame in frames {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    sent = tx.send(frame) => if sent.is_err() { return },
                }
            }
            if let (true, Some(m)) = (pushed, &self.metrics) {
                let kind = if self.pushed_full {
                    "full"
                } else {
                    "incremental"
                };
                m.pushes.get_or_create(&PushLabel { kind }).inc();
                m.push_duration.observe(started.elapsed().as_secs_f64());
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tx.closed() => return,
                changed = views.changed() => if changed.is_err() { return },
                changed = bundles.changed() => if changed.is_err() { return },
                request = requests.message() => match request {
                    Ok(Some(r)) => self.on_request(&r),
                    Ok(None) => return,
                    Err(e) => {
                        debug!(error = %e, "watch stream ended");
                        return;
                    }
                },
            }
        }
    }

    fn on_request(&mut self, r: &WatchRequest) {
        if r.error.is_empty() {
            self.handle.update(|i| i.acked = (r.epoch, r.version));
        } else {
            warn!(
                error = %truncated(&r.error),
                held = ?(r.epoch, r.version),
                "the proxy could not apply an update; sending the full state"
            );
            self.resync = true;
            self.handle.update(|i| i.resyncs += 1);
            if let Some(m) = &self.metrics {
                m.resyncs.inc();
            }
        }
    }

    /// The frames (buffers of gRPC messages, in order) that bring the proxy from what it holds
    /// to `view` and `bundle`; empty when it is current. The first update of a stream always
    /// carries the inbound view and bundle; later ones carry them when they changed.
    fn next_update(
        &mut self,
        view: &MeshView,
        bundle: &Arc<TrustBundle>,
        first: bool,
    ) -> Vec<Bytes> {
        let since = if std::mem::take(&mut self.resync) {
            Since::Everything
        } else {
            view.since(self.held.0, self.held.1)
        };
        let inbound_may_differ = match &since {
            Since::Nothing => false,
            Since::Everything => true,
            Since::Changed(c) => c.inbound || c.identities.contains(&self.caller),
        };
        let inbound = (first || inbound_may_differ)
            .then(|| {
                view.model
                    .inbound_for(&view.index, &self.caller, Some(self.peer_ip))
            })
            .filter(|v| first || self.last_inbound.as_ref() != Some(v));
        let bundle_changed = self
            .last_bundle
            .as_ref()
            .is_none_or(|last| last.roots() != bundle.roots());
        if since == Since::Nothing && inbound.is_none() && !bundle_changed && !first {
            return Vec::new();
        }
        // Sent even when it carries nothing for this proxy (a change elsewhere): the version
        // moves on, so every proxy's acknowledged version says exactly what it holds.
        let global = self.parts.get(view, &since, self.held.1);
        self.pushed_full = global.full;
        let mut head = MeshUpdate {
            epoch: view.epoch,
            version: view.version,
            base_version: self.held.1,
            full: global.full,
            inbound: inbound.as_ref().map(wire::inbound),
            trust_bundle: bundle_changed.then(|| wire::bundle(bundle)),
            ..MeshUpdate::default()
        };
        let mut out = Vec::with_capacity(global.chunks.len() * 2);
        for (i, chunk) in global.chunks.iter().enumerate() {
            head.more = i + 1 < global.chunks.len();
            out.extend(frames::frame(&head, chunk));
            // Only the first message says `full` and carries the proxy's own parts.
            (head.full, head.inbound, head.trust_bundle) = (false, None, None);
        }
        if matches!(since, Since::Everything) && !first {
            info!(version = view.version, "sending the full state again");
        }
        if let Some(v) = inbound {
            let mtls = v.mtls;
            self.handle.update(|i| i.mtls = Some(mtls));
            self.last_inbound = Some(v);
        }
        self.last_bundle = Some(bundle.clone());
        self.held = (view.epoch, view.version);
        self.handle.update(|i| i.sent = (view.epoch, view.version));
        out
    }
}

/// Global parts recently built and encoded, by (epoch, base version, version); base 0 is the
/// full state. Most streams are at the same version, so each part is built and encoded once
/// per change, not once per stream.
#[derive(Debug, Default)]
struct PartCache {
    /// A few recent parts.
    entries: Mutex<VecDeque<(PartKey, Arc<EncodedPart>)>>,
}

/// (epoch, base version or 0 for the full state, version).
type PartKey = (u64, u64, u64);

impl PartCache {
    /// Parts kept.
    const SIZE: usize = 4;

    /// The part for a proxy at version `held` of `view`'s epoch, given `since`.
    fn get(&self, view: &MeshView, since: &Since, held: u64) -> Arc<EncodedPart> {
        let base = match since {
            Since::Nothing => return Arc::new(EncodedPart::encode(&GlobalPart::default(), 0)),
            Since::Everything => 0,
            Since::Changed(_) => held,
        };
        let key = (view.epoch, base, view.version);
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, part)) = entries.iter().find(|(k, _)| *k == key) {
            return part.clone();
        }
        let part = Arc::new(EncodedPart::encode(
            &GlobalPart::of(&view.model, since),
            MESSAGE_BYTES,
        ));
        entries.push_back((key, part.clone()));
        if entries.len() > Self::SIZE {
            entries.pop_front();
        }
        part
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
