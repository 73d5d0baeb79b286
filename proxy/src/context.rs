//! The handles every listener of one proxy shares: configuration, the current SVID, the mesh
//! snapshot, the connection log, metrics, the concurrency cap and the drain machinery.
//!
//! Owns: [`ProxyContext`] and the small helpers that record a connection consistently —
//! including the rule that a refusal on the tunnel port before the peer proved an identity is
//! summed in [`FailedHandshakes`], not logged one by one next to the real connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::failures::FailedHandshakes;
use crate::identity::SvidWatch;
use crate::metric_labels::LabelBounds;
use crate::metrics::{ConnLabels, DecisionLabels, Metrics, RefusalLabels};
use crate::policy::Decision;
use crate::records::{ConnRecord, Direction, HandshakeLog, TlsFacts};
use crate::refusals::{Refusal, RefusalLog};
use crate::state::StateWatch;
use crate::tunnel::admit::PodAddrs;

/// Shared by every listener and connection task.
#[derive(Debug)]
pub struct ProxyContext {
    /// Validated configuration.
    pub config: Config,
    /// The current SVID.
    pub svid: SvidWatch,
    /// The current mesh snapshot.
    pub state: StateWatch,
    /// Recent connections.
    pub log: HandshakeLog,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Caps proxied connections.
    pub conn_limit: Arc<Semaphore>,
    /// Tracks connection tasks so shutdown can wait for them to drain.
    pub tracker: TaskTracker,
    /// Cancelled when listeners must stop accepting.
    pub shutdown: CancellationToken,
    /// The proxy's own listener addresses (loop prevention).
    pub own_addrs: Vec<SocketAddr>,
    /// The app's original probes, run for kubelet on the health port.
    pub app_health: crate::probe::AppHealth,
    /// Rate-limited `info` lines for refused connections.
    pub refusals: RefusalLog,
    /// Failed handshakes from outside, summed per source and reason.
    pub failures: FailedHandshakes,
    /// The label values metrics have handed out (bounded).
    pub labels: LabelBounds,
}

/// Whether a refusal is a failed handshake from outside (summed in [`FailedHandshakes`]) rather
/// than a connection record: refused on the tunnel port before the peer proved an identity.
pub fn is_failed_handshake(direction: Direction, peer_id: Option<&str>) -> bool {
    direction == Direction::Inbound && peer_id.is_none()
}

impl ProxyContext {
    /// The addresses that are this pod, for CONNECT targets: its IP and the application host
    /// (loopback only where the application host is configured on loopback).
    pub fn pod_addrs(&self) -> PodAddrs {
        PodAddrs {
            pod_ip: self.config.pod_ip,
            app_host: self.config.app_host,
        }
    }

    /// Records a connection and counts it; returns the live record.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        direction: Direction,
        peer_addr: SocketAddr,
        peer_id: Option<String>,
        dst: Option<SocketAddr>,
        tls: Option<TlsFacts>,
        decision: &'static str,
        reason: impl Into<String>,
    ) -> Arc<ConnRecord> {
        self.count_connection(direction, tls.is_some(), peer_id.as_deref(), decision);
        self.log.push(ConnRecord::new(
            direction, peer_addr, peer_id, dst, tls, decision, reason,
        ))
    }

    /// Counts a connection in `trellis_proxy_connections_total` (peer label bounded).
    fn count_connection(
        &self,
        direction: Direction,
        tls: bool,
        peer_id: Option<&str>,
        decision: &'static str,
    ) {
        self.metrics
            .connections
            .get_or_create(&ConnLabels {
                direction: direction.label(),
                tls: if tls { "true" } else { "false" },
                peer_id: self.labels.peer(peer_id.unwrap_or_default()),
                decision,
            })
            .inc();
    }

    /// Counts an authorization decision for `peer` on target port `port` (labels bounded: a
    /// port this workload does not know is `other`).
    pub fn count_decision(&self, decision: &Decision, peer: &str, port: u16) {
        let port = self.labels.port(port, &self.state.borrow().policy);
        self.metrics
            .decisions
            .get_or_create(&DecisionLabels {
                decision: decision.label(),
                port,
                peer_id: self.labels.peer(peer),
            })
            .inc();
    }

    /// Adds the bytes `record` moved since the last report to the byte counters.
    pub fn report_bytes(&self, record: &ConnRecord) {
        let delta = |total: &AtomicU64, reported: &AtomicU64| {
            let now = total.load(Ordering::Relaxed);
            now.saturating_sub(reported.swap(now, Ordering::Relaxed))
        };
        self.metrics.add_bytes(
            record.direction.label(),
            delta(&record.bytes_sent, &record.reported_sent),
            delta(&record.bytes_received, &record.reported_received),
        );
    }

    /// Copies between `client` and `server` for the connection `record` (idle timeout from the
    /// configuration), reporting its bytes to the metrics while it lasts.
    pub async fn copy<A, B>(
        &self,
        client: A,
        server: B,
        record: &Arc<ConnRecord>,
    ) -> Result<(), crate::copy::CopyError>
    where
        A: crate::copy::Endpoint,
        B: crate::copy::Endpoint,
    {
        let report = || self.report_bytes(record);
        crate::copy::bidirectional_reporting(
            client,
            server,
            self.config.idle_timeout,
            record,
            &report,
        )
        .await
    }

    /// Marks a proxied connection closed: reports its last bytes and its duration.
    pub fn close(&self, record: &ConnRecord) {
        record.close();
        self.report_bytes(record);
        self.metrics.observe_duration(
            record.direction.label(),
            record.started.elapsed().as_secs_f64(),
        );
    }

    /// Counts a refusal by reason code (in addition to the record).
    pub fn refuse(&self, direction: Direction, reason: &'static str) {
        self.metrics
            .refusals
            .get_or_create(&RefusalLabels {
                direction: direction.label(),
                reason,
            })
            .inc();
    }

    /// A refused connection: counted under `code` (the refusal metric's reason), logged at
    /// `info` (rate limited per code, see [`crate::refusals`]) and recorded with decision
    /// `deny` and the human-readable `reason`.
    #[allow(clippy::too_many_arguments)]
    pub fn deny(
        &self,
        direction: Direction,
        code: &'static str,
        peer_addr: SocketAddr,
        peer_id: Option<String>,
        dst: Option<SocketAddr>,
        tls: Option<TlsFacts>,
        reason: impl Into<String>,
    ) {
        self.refuse(direction, code);
        let reason = reason.into();
        self.refusals.refused(&Refusal {
            direction,
            reason: code,
            peer_addr,
            peer_id: peer_id.as_deref(),
            dst,
            detail: &reason,
        });
        if is_failed_handshake(direction, peer_id.as_deref()) {
            self.count_connection(direction, tls.is_some(), None, "deny");
            self.failures.add(peer_addr.ip(), code, &reason);
            return;
        }
        self.record(direction, peer_addr, peer_id, dst, tls, "deny", reason);
    }
}
