//! Domain → protobuf for discovery: workloads, Services, the inbound view and the trust bundle
//! as `trellis.discovery.v1` messages, and the global part of an update (what every proxy gets
//! alike) for a [`Since`] answer. Protobuf types stop at this module and its parent.

use std::net::IpAddr;

use trellis_ca::TrustBundle;
use trellis_proto::discovery::{
    Inbound, MtlsMode as PbMtls, PolicyMode as PbMode, PolicyRule, Service as PbService,
    ServiceEndpoint as PbEndpoint, ServicePort as PbPort, TrustBundle as PbBundle,
    Workload as PbWorkload, WorkloadAddress,
};

use crate::mesh::crd::PolicyMode;
use crate::mesh::model::{InboundView, MeshModel, Service, TUNNEL_PORT, Workload};
use crate::mesh::{MtlsMode, Since};

/// What every proxy gets alike in one update: workloads and Services added, changed or gone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GlobalPart {
    /// Replaces everything the proxy holds.
    pub full: bool,
    /// Added or changed workloads.
    pub workloads: Vec<PbWorkload>,
    /// Workloads gone.
    pub removed_workloads: Vec<WorkloadAddress>,
    /// Added or changed Services.
    pub services: Vec<PbService>,
    /// Services gone.
    pub removed_services: Vec<String>,
}

impl GlobalPart {
    /// The workloads and Services a proxy needs after `since`, read from `model`.
    pub fn of(model: &MeshModel, since: &Since) -> GlobalPart {
        match since {
            Since::Nothing => GlobalPart::default(),
            Since::Everything => GlobalPart {
                full: true,
                workloads: model
                    .workloads
                    .values()
                    .filter_map(|w| workload(model, w))
                    .collect(),
                services: model.services.values().map(|s| service(s)).collect(),
                ..GlobalPart::default()
            },
            Since::Changed(change) => {
                let mut part = GlobalPart::default();
                for key in &change.workloads {
                    match model.workloads.get(key).and_then(|w| workload(model, w)) {
                        Some(w) => part.workloads.push(w),
                        None => part.removed_workloads.push(WorkloadAddress {
                            ip: ip_bytes(key.ip),
                            port: u32::from(key.port),
                        }),
                    }
                }
                for key in &change.services {
                    match model.services.get(key) {
                        Some(s) => part.services.push(service(s)),
                        None => part.removed_services.push(key.clone()),
                    }
                }
                part
            }
        }
    }
}

/// An IP as 4 or 16 bytes.
pub fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// A workload, or `None` when its names do not form a SPIFFE ID (sources refuse those).
fn workload(model: &MeshModel, w: &Workload) -> Option<PbWorkload> {
    let id = w.id(&model.trust_domain)?;
    let default_tunnel = w.tunnel.ip() == w.ip && w.tunnel.port() == TUNNEL_PORT;
    Some(PbWorkload {
        ip: ip_bytes(w.ip),
        port: u32::from(w.port),
        spiffe_id: id.to_string(),
        tunnel: if default_tunnel {
            String::new()
        } else {
            w.tunnel.to_string()
        },
    })
}

fn service(s: &Service) -> PbService {
    PbService {
        name: s.key(),
        addresses: s.addresses.iter().map(|ip| ip_bytes(*ip)).collect(),
        ports: s
            .ports
            .iter()
            .map(|p| PbPort {
                port: u32::from(p.port),
                name: p.name.clone(),
                endpoints: p
                    .endpoints
                    .iter()
                    .map(|e| PbEndpoint {
                        ip: ip_bytes(e.ip),
                        target_port: u32::from(e.target_port),
                        ready: e.ready,
                        serving: e.serving,
                        terminating: e.terminating,
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The inbound view as sent.
pub fn inbound(v: &InboundView) -> Inbound {
    Inbound {
        rules: v
            .rules
            .iter()
            .map(|r| PolicyRule {
                name: r.name.clone(),
                ports: r.ports.iter().map(|p| u32::from(*p)).collect(),
                allow: r.allow.clone(),
                allow_unauthenticated: r.allow_unauthenticated,
                mode: match r.mode {
                    PolicyMode::Enforce => PbMode::Enforce,
                    PolicyMode::Audit => PbMode::Audit,
                } as i32,
            })
            .collect(),
        mtls_mode: match v.mtls {
            MtlsMode::Strict => PbMtls::Strict,
            MtlsMode::Permissive => PbMtls::Permissive,
        } as i32,
    }
}

/// The trust bundle as sent.
pub fn bundle(b: &TrustBundle) -> PbBundle {
    PbBundle {
        roots_pem: b.roots().iter().map(trellis_ca::der_to_pem).collect(),
    }
}
