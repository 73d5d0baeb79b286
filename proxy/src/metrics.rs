//! The proxy's Prometheus metrics (`trellis_proxy_*`), one registry per process.
//!
//! Owns: metric names and label sets. Served by `admin`.

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
    /// Tunnel connections opened to peers (each one a TLS handshake).
    pub tunnel_connections_opened: Counter,
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
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("trellis_proxy");
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
        let tunnel_connections_opened = Counter::default();
        registry.register(
            "tunnel_connections_opened",
            "Pooled mTLS tunnel connections opened to peers",
            tunnel_connections_opened.clone(),
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
        Self {
            discovery_updates,
            discovery_version,
            discovery_connected,
            registry,
            connections,
            refusals,
            decisions,
            handshake_seconds,
            open_connections,
            tunnel_connections_opened,
            cert_expiry,
            renewals,
            control_plane_unreachable,
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
