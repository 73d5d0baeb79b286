//! The control plane's Prometheus metrics and the plain-HTTP endpoint that serves them
//! (`/metrics`, plus `/ready` and `/live` for kubelet probes, which cannot speak gRPC over TLS).
//!
//! Owns: the one registry of the process and the metric names (`trellis_control_plane_*`).

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

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
    /// Roots in the trust bundle (2 during a rotation).
    roots: Gauge,
    /// Seconds until the root expires (updated at scrape time).
    root_expiry: Gauge<f64, AtomicU64>,
    /// Seconds until the signing certificate expires (updated at scrape time).
    issuer_expiry: Gauge<f64, AtomicU64>,
    /// Expiry times to compute the gauges from: the earliest root's, the signer's.
    expiries: Mutex<(SystemTime, SystemTime)>,
}

impl Metrics {
    /// Registers every metric; `root_not_after` and `issuer_not_after` feed the expiry gauges.
    pub fn new(root_not_after: SystemTime, issuer_not_after: SystemTime) -> Self {
        let mut registry = Registry::with_prefix("trellis_control_plane");
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
            "root_expiry_seconds",
            "Seconds until the earliest root of the trust bundle expires",
            root_expiry.clone(),
        );
        let issuer_expiry = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "issuer_expiry_seconds",
            "Seconds until the signing (root or intermediate) certificate expires",
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
        Self {
            registry,
            issued,
            refused,
            connections_refused,
            attestation,
            reconciled,
            roots,
            root_expiry,
            issuer_expiry,
            expiries: Mutex::new((root_not_after, issuer_not_after)),
        }
    }

    /// After the CA changed: the new expiries and number of roots.
    pub fn set_ca(&self, root_not_after: SystemTime, issuer_not_after: SystemTime, roots: usize) {
        *self.expiries.lock().unwrap_or_else(PoisonError::into_inner) =
            (root_not_after, issuer_not_after);
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

    /// The text exposition, with the expiry gauges brought up to date.
    pub fn render(&self) -> String {
        let now = SystemTime::now();
        let secs = |t: SystemTime| match t.duration_since(now) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        };
        let (root, issuer) = *self.expiries.lock().unwrap_or_else(PoisonError::into_inner);
        self.root_expiry.set(secs(root));
        self.issuer_expiry.set(secs(issuer));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Serves `/metrics`, `/ready` and `/live` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let mut acceptor = trellis_listener::Acceptor::new(listener, "metrics");
    while let Some((stream, peer)) = acceptor.accept(&shutdown).await {
        let metrics = metrics.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(
            async move {
                let svc = service_fn(move |req| {
                    let metrics = metrics.clone();
                    async move { Ok::<_, std::convert::Infallible>(respond(&req, &metrics)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(5))
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::select! {
                    _ = conn => {}
                    () = shutdown.cancelled() => {}
                }
            }
            .instrument(info_span!("metrics", peer.addr = %peer)),
        );
    }
}

fn respond(req: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        ),
        (&Method::GET, "/ready" | "/live") => (StatusCode::OK, "text/plain", "ok\n".into()),
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
