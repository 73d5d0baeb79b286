//! The mesh file's `services:` section: Services in the terms of a cluster, with their
//! endpoints found the way Kubernetes finds them — by selector over the namespace's workloads
//! (named target ports resolved per workload from its `ports`), or listed by hand for a
//! Service without a selector (as a hand-made EndpointSlice would).
//!
//! ```yaml
//! services:
//!   - namespace: shop
//!     name: backend
//!     clusterIPs: [198.19.0.10]                       # IPv4 and/or IPv6
//!     ports: [{name: http, port: 80, targetPort: http}] # targetPort: a number or a port name
//!     selector: {app: backend}
//!   - namespace: shop
//!     name: external-db
//!     clusterIPs: [198.19.0.11]
//!     ports: [{name: postgres, port: 5432}]            # targetPort defaults to port
//!     endpoints:                                       # conditions default to ready
//!       - {ip: 198.18.0.99, ports: {postgres: 5432}, ready: true}
//! ```
//!
//! Owns: [`ServiceDoc`] and its resolution into a model [`Service`].

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Deserialize;

use crate::mesh::model::{MeshModel, Service, ServiceEndpoint, ServicePort, WorkloadKey};

/// A workload as Services select it: its named ports and conditions (the model does not keep
/// them; in a cluster they come from EndpointSlices).
#[derive(Debug)]
pub(super) struct SelectableWorkload {
    /// Its key in the model.
    pub key: WorkloadKey,
    /// Named container ports.
    pub ports: BTreeMap<String, u16>,
    /// Passing readiness.
    pub ready: bool,
    /// Being deleted.
    pub terminating: bool,
}

/// A Service as the file declares it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ServiceDoc {
    namespace: String,
    name: String,
    #[serde(rename = "clusterIPs")]
    cluster_ips: Vec<IpAddr>,
    ports: Vec<PortDoc>,
    #[serde(default)]
    selector: Option<BTreeMap<String, String>>,
    #[serde(default)]
    endpoints: Vec<EndpointDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PortDoc {
    #[serde(default)]
    name: String,
    port: u16,
    #[serde(default)]
    target_port: Option<TargetPort>,
}

/// A target port: a number, or the name of a container port.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum TargetPort {
    Number(u16),
    Name(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointDoc {
    ip: IpAddr,
    /// Target port per Service port name (default: the port's numeric targetPort, or its port).
    #[serde(default)]
    ports: BTreeMap<String, u16>,
    #[serde(default = "yes")]
    ready: bool,
    #[serde(default)]
    serving: Option<bool>,
    #[serde(default)]
    terminating: bool,
}

fn yes() -> bool {
    true
}

impl ServiceDoc {
    /// The Service with its endpoints, or what is wrong with the declaration.
    pub(super) fn resolve(
        self,
        model: &MeshModel,
        workloads: &[SelectableWorkload],
    ) -> Result<Service, String> {
        let label = format!("{}/{}", self.namespace, self.name);
        if self.namespace.is_empty() || self.name.is_empty() {
            return Err("namespace and name are required".into());
        }
        if self.cluster_ips.is_empty() {
            return Err(format!(
                "{label}: clusterIPs is empty (headless Services are reached by pod IP and need no entry)"
            ));
        }
        if self.selector.is_some() && !self.endpoints.is_empty() {
            return Err(format!("{label}: give a selector or endpoints, not both"));
        }
        let mut ports = Vec::with_capacity(self.ports.len());
        for p in &self.ports {
            if p.port == 0 {
                return Err(format!("{label}: port 0"));
            }
            if ports.iter().any(|q: &ServicePort| q.name == p.name) {
                return Err(format!(
                    "{label}: two ports named {:?} (name every port of a multi-port Service)",
                    p.name
                ));
            }
            let endpoints = match &self.selector {
                Some(selector) => self.selected(p, selector, model, workloads),
                None => self.listed(p)?,
            };
            ports.push(ServicePort {
                name: p.name.clone(),
                port: p.port,
                endpoints,
            });
        }
        Ok(Service {
            namespace: self.namespace,
            name: self.name,
            addresses: self.cluster_ips,
            ports,
        })
    }

    /// Endpoints of the workloads the selector picks; a workload without the named target
    /// port is left out, as Kubernetes leaves it out of the EndpointSlice.
    fn selected(
        &self,
        p: &PortDoc,
        selector: &BTreeMap<String, String>,
        model: &MeshModel,
        workloads: &[SelectableWorkload],
    ) -> Vec<ServiceEndpoint> {
        workloads
            .iter()
            .filter_map(|s| {
                let w = model.workloads.get(&s.key)?;
                let selected = w.namespace == self.namespace
                    && selector.iter().all(|(k, v)| w.labels.get(k) == Some(v));
                if !selected {
                    return None;
                }
                let target_port = match &p.target_port {
                    None => p.port,
                    Some(TargetPort::Number(n)) => *n,
                    Some(TargetPort::Name(name)) => *s.ports.get(name)?,
                };
                Some(ServiceEndpoint {
                    ip: w.ip,
                    target_port,
                    ready: s.ready && !s.terminating,
                    serving: s.ready,
                    terminating: s.terminating,
                })
            })
            .collect()
    }

    /// Endpoints listed by hand.
    fn listed(&self, p: &PortDoc) -> Result<Vec<ServiceEndpoint>, String> {
        self.endpoints
            .iter()
            .map(|e| {
                let target_port = match (e.ports.get(&p.name), &p.target_port) {
                    (Some(n), _) => *n,
                    (None, Some(TargetPort::Number(n))) => *n,
                    (None, None) => p.port,
                    (None, Some(TargetPort::Name(name))) => {
                        return Err(format!(
                            "{}/{}: endpoint {} has no port {name:?} (list it under the endpoint's ports)",
                            self.namespace, self.name, e.ip
                        ));
                    }
                };
                Ok(ServiceEndpoint {
                    ip: e.ip,
                    target_port,
                    ready: e.ready,
                    serving: e.serving.unwrap_or(e.ready),
                    terminating: e.terminating,
                })
            })
            .collect()
    }
}
