//! Services and EndpointSlices (`discovery.k8s.io/v1`) as the mesh sees them: every ClusterIP
//! × TCP port → the endpoints behind it, with the target port resolved per endpoint and the
//! endpoint's conditions.
//!
//! Owns: [`service_of`], a pure conversion. What it follows from the API's contract:
//! - EndpointSlices belong to a Service by the label `kubernetes.io/service-name`, in its
//!   namespace; this also covers the hand-made slices of Services without a selector.
//! - A slice port belongs to the Service port of the same name (both empty for a Service with
//!   one unnamed port); its number is the resolved target port for that slice's endpoints, so
//!   two pods that map a named port to different numbers land in different slices and resolve
//!   differently.
//! - Conditions: `ready` absent means ready; `serving` absent means as `ready`; `terminating`
//!   absent means not terminating.
//! - Headless (`clusterIP: None`) and ExternalName Services have no ClusterIP: not modelled
//!   (clients reach headless endpoints by pod IP, which discovery already knows).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service as KubeService;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::mesh::model::{Service, ServiceEndpoint, ServicePort};

/// The label naming the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// `(namespace, service name)` of the Service `slice` belongs to, if it says.
pub fn owner_of(slice: &EndpointSlice) -> Option<(String, String)> {
    let ns = slice.metadata.namespace.clone()?;
    let name = slice
        .metadata
        .labels
        .as_ref()?
        .get(SERVICE_NAME_LABEL)?
        .clone();
    Some((ns, name))
}

/// The Service as the mesh models it, with the endpoints of `slices` (the slices that belong
/// to it; see [`owner_of`]); `None` for Services without a ClusterIP or a name.
pub fn service_of<'a>(
    svc: &KubeService,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> Option<Service> {
    let namespace = svc.metadata.namespace.clone()?;
    let name = svc.metadata.name.clone()?;
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let addresses: Vec<IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    if addresses.is_empty() {
        return None; // headless, or not allocated yet
    }
    // Target port number per slice port name, per endpoint, from every slice.
    let mut endpoints: BTreeMap<String, Vec<ServiceEndpoint>> = BTreeMap::new();
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue; // FQDN slices name hosts, not addresses
        }
        for port in slice.ports.iter().flatten() {
            if !is_tcp(port.protocol.as_deref()) {
                continue;
            }
            let Some(target_port) = port.port.and_then(|p| u16::try_from(p).ok()) else {
                continue;
            };
            let list = endpoints
                .entry(port.name.clone().unwrap_or_default())
                .or_default();
            for ep in &slice.endpoints {
                let c = ep.conditions.as_ref();
                let ready = c.and_then(|c| c.ready).unwrap_or(true);
                let serving = c.and_then(|c| c.serving).unwrap_or(ready);
                let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
                for ip in ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                    list.push(ServiceEndpoint {
                        ip,
                        target_port,
                        ready,
                        serving,
                        terminating,
                    });
                }
            }
        }
    }
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| is_tcp(p.protocol.as_deref()))
        .filter_map(|p| {
            let port_name = p.name.clone().unwrap_or_default();
            Some(ServicePort {
                port: u16::try_from(p.port).ok().filter(|p| *p != 0)?,
                endpoints: endpoints.get(&port_name).cloned().unwrap_or_default(),
                name: port_name,
            })
        })
        .collect();
    Some(Service {
        namespace,
        name,
        addresses,
        ports,
    })
}

fn is_tcp(protocol: Option<&str>) -> bool {
    protocol.is_none_or(|p| p == "TCP")
}

#[cfg(test)]
#[path = "services_tests.rs"]
mod tests;
