//! Discovery updates → [`MeshState`], as pure functions: assembling an update from its messages,
//! converting its protobuf entries, and applying it on top of the state held (or replacing the
//! state, for a full update). Protobuf types stop here.
//!
//! An entry that does not parse is skipped with a warning, never trusted halfway: a workload
//! without a valid identity is not dialed through the tunnel, and an allow entry that does not
//! parse allows nobody, so bad data never makes a rule more permissive.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use tracing::warn;
use trellis_ca::{IdentityPattern, TrustBundle, TrustDomain};
use trellis_proto::discovery::{
    Inbound, MeshUpdate, MtlsMode as PbMtls, PolicyMode as PbMode, Service as PbService,
    Workload as PbWorkload, WorkloadAddress,
};

use crate::config::{MtlsMode, StaticWorkload, WorkloadAddr};
use crate::policy::{InboundPolicy, Rule, RuleMode};
use crate::ports::TUNNEL;
use crate::services::{Endpoint, Health, Loads, ServiceEntry, ServicePort};
use crate::state::{Identities, MeshState, Peer, Version};

/// Most messages one update may span.
const MAX_PARTS: usize = 1024;

/// Why an update was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// A delta for another state than the one held: one was missed.
    #[error(
        "the update applies on top of version {base} of epoch {epoch}, but this proxy holds version {held_version} of epoch {held_epoch}"
    )]
    BaseMismatch {
        /// The update's epoch.
        epoch: u64,
        /// The version it applies on.
        base: u64,
        /// The epoch held.
        held_epoch: u64,
        /// The version held.
        held_version: u64,
    },
    /// The messages of one update disagree on its versions.
    #[error("a message of update {version} of epoch {epoch} names another update")]
    Interleaved {
        /// The update being assembled.
        epoch: u64,
        /// Its version.
        version: u64,
    },
    /// An update spans too many messages.
    #[error("an update spans more than {MAX_PARTS} messages")]
    TooLong,
}

/// Joins the messages of one update (all but the last have `more` set).
#[derive(Debug, Default)]
pub struct Assembler {
    /// The update so far.
    pending: Option<MeshUpdate>,
    /// Messages in it.
    parts: usize,
}

impl Assembler {
    /// Adds a message; returns the whole update once its last message arrived.
    pub fn push(&mut self, msg: MeshUpdate) -> Result<Option<MeshUpdate>, ApplyError> {
        let merged = match self.pending.take() {
            None => msg,
            Some(mut acc) => {
                if (acc.epoch, acc.version, acc.base_version)
                    != (msg.epoch, msg.version, msg.base_version)
                {
                    self.parts = 0;
                    return Err(ApplyError::Interleaved {
                        epoch: acc.epoch,
                        version: acc.version,
                    });
                }
                self.parts += 1;
                if self.parts > MAX_PARTS {
                    self.parts = 0;
                    return Err(ApplyError::TooLong);
                }
                acc.workloads.extend(msg.workloads);
                acc.removed_workloads.extend(msg.removed_workloads);
                acc.services.extend(msg.services);
                acc.removed_services.extend(msg.removed_services);
                acc.inbound = acc.inbound.or(msg.inbound);
                acc.trust_bundle = acc.trust_bundle.or(msg.trust_bundle);
                acc.more = msg.more;
                acc
            }
        };
        if merged.more {
            self.pending = Some(merged);
            Ok(None)
        } else {
            self.parts = 0;
            Ok(Some(merged))
        }
    }
}

/// What applying needs besides the update.
#[derive(Debug)]
pub struct ApplyContext<'a> {
    /// Our trust domain (short-form patterns in rules).
    pub trust_domain: &'a TrustDomain,
    /// Workloads configured by flag; they win over discovered ones at the same address.
    pub static_workloads: &'a [StaticWorkload],
    /// Endpoint loads, shared across updates.
    pub loads: &'a mut Loads,
    /// Workload identities, shared across updates.
    pub identities: &'a mut Identities,
}

/// The state after `update` on top of `held`. The update is consumed as it is applied: each
/// entry is freed once converted, so the new state's allocations reuse its memory instead of
/// adding to it (at 10,000 workloads the decoded full state is ~3 MB).
pub fn apply(
    held: &MeshState,
    mut update: MeshUpdate,
    cx: &mut ApplyContext<'_>,
) -> Result<MeshState, ApplyError> {
    let mut next = if update.full {
        held.without_mesh()
    } else {
        if (update.epoch, update.base_version) != (held.version.epoch, held.version.version) {
            return Err(ApplyError::BaseMismatch {
                epoch: update.epoch,
                base: update.base_version,
                held_epoch: held.version.epoch,
                held_version: held.version.version,
            });
        }
        held.clone()
    };
    for r in &update.removed_workloads {
        if let Some(addr) = workload_addr(r) {
            next.remove(addr);
        }
    }
    for w in std::mem::take(&mut update.workloads) {
        match workload(&w, cx.identities) {
            Some((addr, peer)) => next.insert(addr, peer),
            None => warn!(workload = ?w, "discovery workload skipped: unparseable"),
        }
    }
    for name in &update.removed_services {
        next.remove_service(name);
    }
    for s in std::mem::take(&mut update.services) {
        match service(&s, cx.loads) {
            Some(entry) => next.insert_service(entry),
            None => warn!(service = %s.name, "discovery Service skipped: unparseable"),
        }
    }
    cx.loads.prune();
    cx.identities.prune();
    for w in cx.static_workloads {
        next.insert(
            w.addr,
            Peer {
                id: Arc::new(w.id.clone()),
                tunnel: w.tunnel,
            },
        );
    }
    if let Some(inbound) = &update.inbound {
        let (policy, mode) = inbound_of(inbound, cx.trust_domain);
        next.policy = policy;
        next.mtls_mode = Some(mode);
    }
    if let Some(bundle) = &update.trust_bundle {
        let pem = bundle.roots_pem.concat();
        match TrustBundle::from_pem(cx.trust_domain.clone(), pem.as_bytes()) {
            Ok(b)
                if next
                    .trust_bundle
                    .as_ref()
                    .is_some_and(|held| held.same_roots(&b)) => {}
            Ok(b) => next.trust_bundle = Some(Arc::new(b)),
            // Never trust a bundle halfway; the one held stays in force.
            Err(e) => warn!(error = %e, "discovery trust bundle skipped: unusable"),
        }
    }
    next.version = Version {
        epoch: update.epoch,
        version: update.version,
    };
    Ok(next)
}

/// An IP from 4 or 16 bytes.
fn ip(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| Ipv4Addr::from(b).into()),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| Ipv6Addr::from(b).into()),
        _ => None,
    }
}

fn addr_of(ip_bytes: &[u8], port: u32) -> Option<WorkloadAddr> {
    let ip = ip(ip_bytes)?;
    match u16::try_from(port).ok()? {
        0 => Some(WorkloadAddr::Ip(ip)),
        port => Some(WorkloadAddr::Socket(SocketAddr::new(ip, port))),
    }
}

fn workload_addr(w: &WorkloadAddress) -> Option<WorkloadAddr> {
    addr_of(&w.ip, w.port)
}

fn workload(w: &PbWorkload, identities: &mut Identities) -> Option<(WorkloadAddr, Peer)> {
    let addr = addr_of(&w.ip, w.port)?;
    let id = identities.of(&w.spiffe_id)?;
    let tunnel = if w.tunnel.is_empty() {
        let ip = match addr {
            WorkloadAddr::Ip(ip) => ip,
            WorkloadAddr::Socket(s) => s.ip(),
        };
        SocketAddr::new(ip, TUNNEL)
    } else {
        w.tunnel.parse().ok()?
    };
    Some((addr, Peer { id, tunnel }))
}

fn service(s: &PbService, loads: &mut Loads) -> Option<ServiceEntry> {
    if s.name.is_empty() {
        return None;
    }
    let addresses = s
        .addresses
        .iter()
        .map(|a| ip(a))
        .collect::<Option<Vec<_>>>()?;
    let mut ports = Vec::with_capacity(s.ports.len());
    for p in &s.ports {
        let port = u16::try_from(p.port).ok().filter(|p| *p != 0)?;
        let mut endpoints = Vec::with_capacity(p.endpoints.len());
        for e in &p.endpoints {
            let (Some(ip), Some(target)) = (ip(&e.ip), u16::try_from(e.target_port).ok()) else {
                warn!(service = %s.name, "discovery endpoint skipped: unparseable");
                continue;
            };
            let addr = SocketAddr::new(ip, target);
            endpoints.push(Endpoint {
                addr,
                health: Health::from_conditions(e.ready, e.serving, e.terminating),
                load: loads.of(addr),
            });
        }
        ports.push(ServicePort::new(port, p.name.clone(), endpoints));
    }
    Some(ServiceEntry {
        name: s.name.clone(),
        addresses,
        ports,
    })
}

fn inbound_of(i: &Inbound, td: &TrustDomain) -> (InboundPolicy, MtlsMode) {
    let policy = InboundPolicy {
        rules: i
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
                    .filter_map(|a| IdentityPattern::parse(a, td).ok())
                    .collect(),
                allow_unauthenticated: r.allow_unauthenticated,
                mode: if r.mode == PbMode::Audit as i32 {
                    RuleMode::Audit
                } else {
                    RuleMode::Enforce
                },
            })
            .collect(),
    };
    let mode = if i.mtls_mode == PbMtls::Permissive as i32 {
        MtlsMode::Permissive
    } else {
        MtlsMode::Strict
    };
    (policy, mode)
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
