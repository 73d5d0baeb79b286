//! The proxy's Prometheus metrics (`trellis_proxy_*`), one registry per process, next to the
//! metrics every Trellis process has (`trellis_build_info`, `process_*`, from
//! `trellis_telemetry::process_metrics`).
//!
//! Owns: metric names and label sets, and which label values exist at 0 from the start (so a
//! `rate()` alert sees 0, not "no data"): renewals by result, bytes and durations by direction,
//! and the refusal reasons alerts watch ([`ZERO_REFUSALS`]). Served by `admin`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of a connection.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    /// outbound / inbound / inbound-plain.
    pub direction: &'static str,
    /// Whether it was mutual TLS.
    pub tls: &'static str,
    /// The peer's SPIFFE ID, empty, or `other` past the bound (`metric_labels`).
    pub peer_id: String,
    /// allow / deny / would-deny.
    pub decision: &'static str,
}

/// Labels of a refusal.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// Which way.
    pub direction: &'static str,
    /// Short reason code.
    pub reason: &'static str,
}

/// Labels of an authorization decision.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// allow / deny / would-deny.
    pub decision: &'static str,
    /// The target port when this workload knows it, else `other` (`metric_labels`).
    pub port: String,
    /// The peer's SPIFFE ID, or `other` past the bound (`metric_labels`).
    pub peer_id: String,
}

/// Labels of byte counters and connection durations.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// outbound / inbound / inbound-plain.
    pub direction: &'static str,
}

/// Every direction label value.
pub const DIRECTIONS: [&str; 3] = ["outbound", "inbound", "inbound-plain"];

/// Refusals present at 0 from the start: the ones operators alert on (a policy refusal, a
/// plaintext connection to a STRICT pod).
pub const ZERO_REFUSALS: [(&str, &str); 3] = [
    ("inbound", "policy"),
    ("inbound-plain", "policy"),
    ("inbound-plain", "plaintext"),
];

/// Upper bounds of the connection duration histogram, seconds (10 ms to 1 h).
const DURATION_BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// Labels of a renewal.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// ok / error.
    pub result: &'static str,
}

/// Every metric of the proxy.
#[derive(Debug)]
pub struct Metrics {
    /// The registry.
    registry: Registry,
    /// Connections by direction, TLS, peer identity and decision.
    pub connections: Family<ConnLabels, Counter>,
    /// Refusals by reason.
    pub refusals: Family<RefusalLabels, Counter>,
    /// Authorization decisions by outcome, port and peer.
    pub decisions: Family<DecisionLabels, Counter>,
    /// TLS handshake latency (tunnel connections, both sides).
    pub handshake_seconds: Histogram,
    /// Open proxied connections.
    pub open_connections: Gauge,
    /// Tunnel connections open now, dialed and accepted.
    pub tunnel_connections: Gauge,
    /// Tunnel connections opened to peers (each one a TLS handshake).
    pub tunnel_connections_opened: Counter,
    /// Bytes from the connection's client towards its server, by direction (reported at each
    /// idle check of a connection and when it closes; the same count as `bytes_sent` in
    /// `/handshakes`).
    pub sent_bytes: Family<DirectionLabel, Counter>,
    /// Bytes from the server back to the client, by direction (reported likewise).
    pub received_bytes: Family<DirectionLabel, Counter>,
    /// How long proxied connections stayed open, by direction.
    pub connection_duration: Family<DirectionLabel, Histogram>,
    /// Expiry of the current certificate, seconds since the epoch.
    pub cert_expiry: Gauge<f64, AtomicU64>,
    /// Certificate renewals by result.
    pub renewals: Family<ResultLabels, Counter>,
    /// 1 while the control plane cannot be reached for renewal.
    pub control_plane_unreachable: Gauge,
    /// Discovery snapshots applied.
    pub discovery_updates: Counter,
    /// Version of the mesh state applied last.
    pub discovery_version: Gauge,
    /// 1 while the discovery stream is up.
    pub discovery_connected: Gauge,
    /// Workloads in the mesh state applied last.
    pub discovery_workloads: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut root = Registry::default();
        trellis_telemetry::process_metrics::register(&mut root, "proxy", env!("CARGO_PKG_VERSION"));
        let registry = root.sub_registry_with_prefix("trellis_proxy");
        let connections = Family::<ConnLabels, Counter>::default();
        registry.register("connections", "Connections handled", connections.clone());
        let refusals = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "refusals",
            "Connections refused, by reason",
            refusals.clone(),
        );
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "authorization_decisions",
            "Inbound authorization decisions by decision, port and peer identity",
            decisions.clone(),
        );
        let handshake_seconds = Histogram::new([
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
        ]);
        registry.register(
            "tls_handshake_seconds",
            "mTLS handshake latency on the tunnel",
            handshake_seconds.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Proxied connections open now",
            open_connections.clone(),
        );
        let tunnel_connections = Gauge::default();
        registry.register(
            "tunnel_connections",
            "mTLS tunnel connections open now, dialed to peers and accepted from them",
            tunnel_connections.clone(),
        );
        let tunnel_connections_opened = Counter::default();
        registry.register(
            "tunnel_connections_opened",
            "Pooled mTLS tunnel connections opened to peers",
            tunnel_connections_opened.clone(),
        );
        let sent_bytes = Family::<DirectionLabel, Counter>::default();
        registry.register(
            "sent_bytes",
            "Bytes proxied from the connection's client to its server, by direction (reported every 30 s at most while it lasts)",
            sent_bytes.clone(),
        );
        let received_bytes = Family::<DirectionLabel, Counter>::default();
        registry.register(
            "received_bytes",
            "Bytes proxied from the server back to the connection's client, by direction (reported every 30 s at most while it lasts)",
            received_bytes.clone(),
        );
        let connection_duration = Family::<DirectionLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(DURATION_BUCKETS)
        });
        registry.register(
            "connection_duration_seconds",
            "How long proxied connections stayed open, by direction",
            connection_duration.clone(),
        );
        let cert_expiry = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When the current workload certificate expires",
            cert_expiry.clone(),
        );
        let renewals = Family::<ResultLabels, Counter>::default();
        registry.register(
            "certificate_renewals",
            "Certificate requests by result",
            renewals.clone(),
        );
        let control_plane_unreachable = Gauge::default();
        registry.register(
            "control_plane_unreachable",
            "1 while the control plane cannot be reached for renewal",
            control_plane_unreachable.clone(),
        );
        let discovery_updates = Counter::default();
        registry.register(
            "discovery_updates",
            "Discovery updates applied",
            discovery_updates.clone(),
        );
        let discovery_version = Gauge::default();
        registry.register(
            "discovery_version",
            "Version of the control plane's mesh state this proxy applied last",
            discovery_version.clone(),
        );
        let discovery_connected = Gauge::default();
        registry.register(
            "discovery_connected",
            "1 while the discovery stream is up",
            discovery_connected.clone(),
        );
        let discovery_workloads = Gauge::default();
        registry.register(
            "discovery_workloads",
            "Workloads in the mesh state this proxy applied last",
            discovery_workloads.clone(),
        );
        for direction in DIRECTIONS {
            let label = DirectionLabel { direction };
            drop(sent_bytes.get_or_create(&label));
            drop(received_bytes.get_or_create(&label));
            drop(connection_duration.get_or_create(&label));
        }
        for result in ["ok", "error"] {
            drop(renewals.get_or_create(&ResultLabels { result }));
        }
        for (direction, reason) in ZERO_REFUSALS {
            drop(refusals.get_or_create(&RefusalLabels { direction, reason }));
        }
        Self {
            registry: root,
            sent_bytes,
            received_bytes,
            connection_duration,
            discovery_updates,
            discovery_version,
            discovery_connected,
            discovery_workloads,
            connections,
            refusals,
            decisions,
            handshake_seconds,
            open_connections,
            tunnel_connections,
            tunnel_connections_opened,
            cert_expiry,
            renewals,
            control_plane_unreachable,
        }
    }

    /// Counts bytes a connection moved each way.
    pub fn add_bytes(&self, direction: &'static str, sent: u64, received: u64) {
        let label = DirectionLabel { direction };
        if sent > 0 {
            self.sent_bytes.get_or_create(&label).inc_by(sent);
        }
        if received > 0 {
            self.received_bytes.get_or_create(&label).inc_by(received);
        }
    }

    /// Records how long a connection that just closed stayed open.
    pub fn observe_duration(&self, direction: &'static str, open_for: f64) {
        self.connection_duration
            .get_or_create(&DirectionLabel { direction })
            .observe(open_for);
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Counts itself in a gauge while it lives.
#[derive(Debug)]
pub struct Counted(Gauge);

impl Counted {
    /// Adds one to `gauge` until dropped.
    pub fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}
