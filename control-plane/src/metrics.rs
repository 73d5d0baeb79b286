//! The control plane's Prometheus metrics and the plain-HTTP endpoint that serves them
//! (`/metrics`, plus `/ready` and `/live` for kubelet probes, which cannot speak gRPC over TLS,
//! and `/config_dump` for loopback callers only, see [`crate::config_dump`]).
//!
//! Owns: the one registry of the process and the metric names (`trellis_control_plane_*`, next
//! to `trellis_build_info` and `process_*` from `trellis_telemetry::process_metrics`), and
//! which label values exist at 0 from the start: every refusal reason of the CA
//! ([`crate::certify::REFUSAL_REASONS`]) and of the gRPC listener, both push kinds.
//! Certificate expiries are timestamps (`*_expiry_timestamp_seconds`, seconds since the epoch),
//! the same unit as the proxy's: they need no update at scrape time and alert rules compare them
//! with `time()`.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config_dump::ConfigDump;
use crate::grpc::Watchers;

/// Label set for refusals.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why the certificate was refused.
    pub reason: &'static str,
}

/// Label set for attestation latency.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// Attestation kind (`kubernetes`, `join-token`).
    pub kind: &'static str,
}

/// Label set for what the control plane did about an object it owns.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// The object: `ca`, `injector-secret`, `webhook`, `published-bundle`.
    pub object: &'static str,
    /// What was done: `restored`, `adopted`, `kept`, `renewed`.
    pub action: &'static str,
}

/// Label set for discovery pushes.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushLabel {
    /// `full` (the whole state: a new stream or a resync) or `incremental`.
    pub kind: &'static str,
}

/// Reasons the gRPC listener closes a connection before its handshake finished.
pub const CONNECTION_REFUSALS: [&str; 4] = [
    "handshakes_per_source",
    "handshakes_total",
    "handshake_timeout",
    "handshake_failed",
];

/// Every metric of the control plane.
#[derive(Debug)]
pub struct Metrics {
    /// The registry they are registered in.
    registry: Registry,
    /// Certificates issued.
    pub issued: Counter,
    /// Certificates refused, by reason.
    pub refused: Family<ReasonLabel, Counter>,
    /// Connections closed before or during their TLS handshake, by reason.
    pub connections_refused: Family<ReasonLabel, Counter>,
    /// Time spent authenticating callers.
    pub attestation: Family<KindLabel, Histogram>,
    /// Changes to owned objects found and acted on (a restore means something was damaged).
    pub reconciled: Family<ReconcileLabels, Counter>,
    /// Time to answer a certificate request, issued or refused.
    pub certify_duration: Histogram,
    /// Discovery updates sent, by kind.
    pub pushes: Family<PushLabel, Counter>,
    /// Time from building an update to its last message queued for the proxy (includes
    /// waiting for a slow proxy to take the previous one).
    pub push_duration: Histogram,
    /// Full states sent again because a proxy could not apply an update.
    pub resyncs: Counter,
    /// Watch streams refused because the source was not yet read in full (the cluster's
    /// first list) within the wait.
    pub unlisted_refusals: Counter,
    /// Roots in the trust bundle (2 during a rotation).
    roots: Gauge,
    /// When the earliest root of the bundle expires, seconds since the epoch.
    root_expiry: Gauge<f64, AtomicU64>,
    /// When the signing certificate expires, seconds since the epoch.
    issuer_expiry: Gauge<f64, AtomicU64>,
    /// Open Watch streams, read at scrape time (set once discovery exists).
    watchers: OnceLock<Arc<Watchers>>,
    /// Open Watch streams.
    connected_proxies: Gauge,
    /// Open Watch streams whose proxy has not acknowledged the last update sent.
    proxies_out_of_sync: Gauge,
}

impl Metrics {
    /// Registers every metric; `root_not_after` and `issuer_not_after` feed the expiry gauges.
    pub fn new(root_not_after: SystemTime, issuer_not_after: SystemTime) -> Self {
        let mut root = Registry::default();
        trellis_telemetry::process_metrics::register(
            &mut root,
            "control-plane",
            env!("CARGO_PKG_VERSION"),
        );
        let registry = root.sub_registry_with_prefix("trellis_control_plane");
        let issued = Counter::default();
        registry.register(
            "certificates_issued",
            "Workload certificates issued",
            issued.clone(),
        );
        let refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "certificates_refused",
            "Certificate requests refused, by reason",
            refused.clone(),
        );
        let connections_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections to the gRPC port closed before their TLS handshake finished, by reason \
             (handshakes_per_source, handshakes_total, handshake_timeout, handshake_failed)",
            connections_refused.clone(),
        );
        let attestation = Family::<KindLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
            ])
        });
        registry.register(
            "attestation_duration_seconds",
            "Time to authenticate a caller's token",
            attestation.clone(),
        );
        let root_expiry = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "root_expiry_timestamp_seconds",
            "When the earliest root of the trust bundle expires, seconds since the epoch",
            root_expiry.clone(),
        );
        let issuer_expiry = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "issuer_expiry_timestamp_seconds",
            "When the signing (root or intermediate) certificate expires, seconds since the epoch",
            issuer_expiry.clone(),
        );
        let reconciled = Family::<ReconcileLabels, Counter>::default();
        registry.register(
            "reconciled",
            "Changes to objects the control plane owns (CA store, injector Secret, webhook caBundle, published bundle) and what was done",
            reconciled.clone(),
        );
        let roots = Gauge::default();
        registry.register(
            "trust_bundle_roots",
            "Roots in the trust bundle proxies receive",
            roots.clone(),
        );
        let certify_duration =
            Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0]);
        registry.register(
            "certify_duration_seconds",
            "Time to answer a certificate request (attestation, checks, signing), issued or refused",
            certify_duration.clone(),
        );
        let discovery = registry.sub_registry_with_prefix("discovery");
        let connected_proxies = Gauge::default();
        discovery.register(
            "connected_proxies",
            "Proxies with an open discovery Watch stream",
            connected_proxies.clone(),
        );
        let proxies_out_of_sync = Gauge::default();
        discovery.register(
            "proxies_out_of_sync",
            "Watch streams whose proxy has not acknowledged the last update sent to it",
            proxies_out_of_sync.clone(),
        );
        let pushes = Family::<PushLabel, Counter>::default();
        discovery.register(
            "pushes",
            "Updates sent to proxies, by kind (full, incremental)",
            pushes.clone(),
        );
        let push_duration =
            Histogram::new([0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]);
        discovery.register(
            "push_duration_seconds",
            "Time from building an update to its last message queued for the proxy",
            push_duration.clone(),
        );
        let resyncs = Counter::default();
        discovery.register(
            "resyncs",
            "Full states sent again because a proxy reported it could not apply an update",
            resyncs.clone(),
        );
        let unlisted_refusals = Counter::default();
        discovery.register(
            "unlisted_refusals",
            "Watch streams refused because the cluster had not been listed in full within the wait",
            unlisted_refusals.clone(),
        );
        for reason in crate::certify::REFUSAL_REASONS {
            drop(refused.get_or_create(&ReasonLabel { reason }));
        }
        for reason in CONNECTION_REFUSALS {
            drop(connections_refused.get_or_create(&ReasonLabel { reason }));
        }
        for kind in ["full", "incremental"] {
            drop(pushes.get_or_create(&PushLabel { kind }));
        }
        root_expiry.set(epoch_seconds(root_not_after));
        issuer_expiry.set(epoch_seconds(issuer_not_after));
        Self {
            registry: root,
            certify_duration,
            pushes,
            push_duration,
            resyncs,
            unlisted_refusals,
            watchers: OnceLock::new(),
            connected_proxies,
            proxies_out_of_sync,
            issued,
            refused,
            connections_refused,
            attestation,
            reconciled,
            roots,
            root_expiry,
            issuer_expiry,
        }
    }

    /// The open Watch streams, for the discovery gauges (once; later calls are ignored).
    pub fn set_watchers(&self, watchers: Arc<Watchers>) {
        let _ = self.watchers.set(watchers);
    }

    /// After the CA changed: the new expiries and number of roots.
    pub fn set_ca(&self, root_not_after: SystemTime, issuer_not_after: SystemTime, roots: usize) {
        self.root_expiry.set(epoch_seconds(root_not_after));
        self.issuer_expiry.set(epoch_seconds(issuer_not_after));
        self.roots.set(i64::try_from(roots).unwrap_or(i64::MAX));
    }

    /// Counts an action on an owned object.
    pub fn reconciled(&self, object: &'static str, action: &'static str) {
        self.reconciled
            .get_or_create(&ReconcileLabels { object, action })
            .inc();
    }

    /// Counts a refusal.
    pub fn refuse(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Counts a connection closed before its TLS handshake finished.
    pub fn refuse_connection(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Records how long an attestation took.
    pub fn observe_attestation(&self, kind: &'static str, took: Duration) {
        self.attestation
            .get_or_create(&KindLabel { kind })
            .observe(took.as_secs_f64());
    }

    /// The text exposition, with the discovery gauges brought up to date.
    pub fn render(&self) -> String {
        if let Some(watchers) = self.watchers.get() {
            let streams = watchers.snapshot();
            let behind = streams.iter().filter(|w| w.acked != w.sent).count();
            self.connected_proxies
                .set(i64::try_from(streams.len()).unwrap_or(i64::MAX));
            self.proxies_out_of_sync
                .set(i64::try_from(behind).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Seconds since the epoch (negative before it, which no certificate is).
pub fn epoch_seconds(t: SystemTime) -> f64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Serves `/metrics`, `/ready`, `/live` and (to loopback callers) `/config_dump` on
/// `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    dump: Arc<ConfigDump>,
    shutdown: CancellationToken,
) {
    let respond = move |req: &Request<Incoming>, peer| respond(req, &metrics, &dump, peer);
    crate::plain_http::serve(listener, "metrics", respond, shutdown).await;
}

/// Whether a caller at `peer` may read `/config_dump`: only from inside the pod.
pub fn may_dump(peer: SocketAddr) -> bool {
    match peer.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback(),
        std::net::IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

fn respond(
    req: &Request<Incoming>,
    metrics: &Metrics,
    dump: &ConfigDump,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        ),
        (&Method::GET, "/ready" | "/live") => (StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/config_dump") if may_dump(peer) => (
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&dump.render()).unwrap_or_default(),
        ),
        (&Method::GET, "/config_dump") => (
            StatusCode::FORBIDDEN,
            "text/plain",
            "/config_dump is served to loopback callers only (kubectl port-forward)\n".into(),
        ),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    response
}

/// Binds the metrics listener (separate so start-up fails before anything is served).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_callers_may_read_the_config_dump() {
        let table = [
            ("127.0.0.1:5000", true),
            ("127.9.9.9:5000", true),
            ("[::1]:5000", true),
            ("[::ffff:127.0.0.1]:5000", true),
            ("198.18.0.5:5000", false),
            ("[2001:db8::1]:5000", false),
            ("0.0.0.0:5000", false),
        ];
        for (addr, want) in table {
            assert_eq!(may_dump(addr.parse().unwrap()), want, "{addr}");
        }
    }

    #[test]
    fn expiry_gauges_are_timestamps_in_seconds_since_the_epoch() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let metrics = Metrics::new(at, at + Duration::from_secs(10));
        let text = metrics.render();
        assert!(
            text.contains("trellis_control_plane_root_expiry_timestamp_seconds 1900000000"),
            "{text}"
        );
        assert!(
            text.contains("trellis_control_plane_issuer_expiry_timestamp_seconds 1900000010"),
            "{text}"
        );
    }
}
