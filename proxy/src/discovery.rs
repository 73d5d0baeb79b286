//! The discovery subscription: once the proxy holds an SVID, it opens `Watch` to the control
//! plane (presenting that SVID — the control plane identifies us by it) and turns each
//! snapshot into a new [`MeshState`], swapped in atomically. Open connections are untouched;
//! new ones see the new endpoints and policy.
//!
//! Owns: the protobuf → domain conversion and the reconnect loop. If the control plane is
//! unreachable the last state stays in force — a workload that had a policy keeps enforcing it
//! (fail closed).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use trellis_ca::{IdentityPattern, SpiffeId, TrustDomain};
use trellis_client::connect;
use trellis_proto::discovery::discovery_client::DiscoveryClient;
use trellis_proto::discovery::{
    MeshSnapshot, MtlsMode as PbMtls, PolicyMode as PbMode, WatchRequest,
};

use crate::config::{MtlsMode, StaticWorkload, WorkloadAddr};
use crate::identity::SvidWatch;
use crate::metrics::Metrics;
use crate::policy::{InboundPolicy, Rule, RuleMode};
use crate::state::{MeshState, Peer};

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
    /// Our pod name, for the control plane's logs.
    pub node: String,
}

/// Follows the control plane's snapshots until `shutdown`.
pub async fn run(
    source: DiscoverySource,
    mut svid: SvidWatch,
    state: watch::Sender<Arc<MeshState>>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
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
        match follow(&source, &current.svid, &state, &metrics, &shutdown).await {
            Ok(()) => return, // shutdown
            Err(e) => {
                metrics.discovery_connected.set(0);
                failures = failures.saturating_add(1);
                let wait = Duration::from_millis(250)
                    .saturating_mul(1 << failures.min(7))
                    .min(Duration::from_secs(15));
                warn!(error = %e, retry_in = ?wait, "discovery stream lost; the last known endpoints and policy stay in force");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

async fn follow(
    source: &DiscoverySource,
    svid: &trellis_ca::Svid,
    state: &watch::Sender<Arc<MeshState>>,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let channel = connect(
        &source.control_plane,
        svid.bundle().clone(),
        Some(source.control_plane_id.clone()),
        Some(svid),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut client = DiscoveryClient::new(channel);
    let request = WatchRequest {
        node: source.node.clone(),
    };
    let mut stream = client
        .watch(request)
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    metrics.discovery_connected.set(1);
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            m = stream.message() => m.map_err(|s| format!("{:?}: {}", s.code(), s.message()))?,
        };
        let Some(snapshot) = message else {
            return Err("the control plane closed the stream".into());
        };
        let next = to_state(&snapshot, source);
        info!(
            version = next.version,
            endpoints = next.len(),
            rules = next.policy.rules.len(),
            mtls = ?next.mtls_mode,
            "mesh snapshot applied"
        );
        metrics.discovery_updates.inc();
        state.send_replace(Arc::new(next));
    }
}

/// Converts a snapshot; entries that do not parse are skipped (an allow entry that does not
/// parse allows nobody, so a rule never becomes more permissive through bad data).
pub fn to_state(s: &MeshSnapshot, source: &DiscoverySource) -> MeshState {
    let mut state = MeshState::default();
    for e in &s.endpoints {
        let (Ok(ip), Ok(id), Ok(tunnel)) = (
            e.ip.parse::<IpAddr>(),
            SpiffeId::parse(&e.spiffe_id),
            e.tunnel.parse::<SocketAddr>(),
        ) else {
            warn!(endpoint = ?e, "discovery endpoint skipped: unparseable");
            continue;
        };
        let addr = match u16::try_from(e.port) {
            Ok(0) => WorkloadAddr::Ip(ip),
            Ok(port) => WorkloadAddr::Socket(SocketAddr::new(ip, port)),
            Err(_) => continue,
        };
        state.insert(addr, Peer { id, tunnel });
    }
    for w in &source.static_workloads {
        state.insert(
            w.addr,
            Peer {
                id: w.id.clone(),
                tunnel: w.tunnel,
            },
        );
    }
    state.policy = InboundPolicy {
        rules: s
            .rules
            .iter()
            .map(|r| Rule {
                name: r.name.clone(),
                ports: r
                    .ports
                    .iter()
                    .filter_map(|p| u16::try_from(*p).ok())
                    .collect(),
                allow: r
                    .allow
                    .iter()
                    .filter_map(|a| IdentityPattern::parse(a, &source.trust_domain).ok())
                    .collect(),
                mode: if r.mode == PbMode::Audit as i32 {
                    RuleMode::Audit
                } else {
                    RuleMode::Enforce
                },
            })
            .collect(),
    };
    state.mtls_mode = Some(if s.mtls_mode == PbMtls::Permissive as i32 {
        MtlsMode::Permissive
    } else {
        MtlsMode::Strict
    });
    state.version = s.version;
    state
}
