//! The mesh as the control plane knows it — workloads, Services, policies, mTLS modes — and the
//! pure function that cuts from it what one proxy must know about its own workload: the inbound
//! rules that select it and its namespace's mTLS mode.
//!
//! Owns: [`MeshModel`] and its parts, and [`MeshModel::inbound_for`]. Sources (Kubernetes, a
//! file) build models; [`super::publish`] versions them and works out what changed; the
//! discovery service sends it.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use trellis_ca::{SpiffeId, TrustDomain};

use super::crd::{Policy, PolicyMode};

/// Tunnel port of every meshed pod.
pub const TUNNEL_PORT: u16 = 15008;

/// STRICT or PERMISSIVE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    /// Only mutual TLS reaches application ports.
    #[default]
    Strict,
    /// Plaintext is passed through (and recorded).
    Permissive,
}

/// Where a workload is reached: every port of an IP (a pod), or one IP:port (explicit mode on
/// a shared loopback IP). The key of [`MeshModel::workloads`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadKey {
    /// The IP.
    pub ip: IpAddr,
    /// 0: every port of `ip`; otherwise only this port.
    pub port: u16,
}

/// A meshed workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Its namespace.
    pub namespace: String,
    /// Its service account.
    pub service_account: String,
    /// Its IP.
    pub ip: IpAddr,
    /// 0: every port of `ip`; otherwise only this port (explicit mode on shared loopback).
    pub port: u16,
    /// Its tunnel endpoint.
    pub tunnel: SocketAddr,
    /// Its labels (policies and, in a mesh file, Services select on them).
    pub labels: BTreeMap<String, String>,
}

impl Workload {
    /// Its SPIFFE ID in `td`, if the names are valid.
    pub fn id(&self, td: &TrustDomain) -> Option<SpiffeId> {
        SpiffeId::for_service_account(td, &self.namespace, &self.service_account).ok()
    }

    /// Its key in [`MeshModel::workloads`].
    pub fn key(&self) -> WorkloadKey {
        WorkloadKey {
            ip: self.ip,
            port: self.port,
        }
    }
}

/// A Service with at least one ClusterIP: what a client may connect to, and who stands behind
/// it. Headless and ExternalName Services are not modelled: clients reach headless endpoints
/// by pod IP, and ExternalName is DNS only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Every ClusterIP (IPv4 and IPv6).
    pub addresses: Vec<IpAddr>,
    /// Its TCP ports, each with its endpoints.
    pub ports: Vec<ServicePort>,
}

impl Service {
    /// `namespace/name`: the key of [`MeshModel::services`].
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The Service with its endpoints sorted, so that equal Services compare equal whatever
    /// order their source listed endpoints in, and an address listed twice (two slices during
    /// a rollout) kept once, in its most ready state; its addresses sorted and deduplicated.
    pub fn normalized(mut self) -> Service {
        for p in &mut self.ports {
            p.endpoints
                .sort_by_key(|e| (e.ip, e.target_port, !e.ready, !e.serving, e.terminating));
            p.endpoints.dedup_by_key(|e| (e.ip, e.target_port));
        }
        self.addresses.sort();
        self.addresses.dedup();
        self
    }
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// The port's name ("" when the Service has one unnamed port).
    pub name: String,
    /// The port clients connect to.
    pub port: u16,
    /// The endpoints behind it, sorted by address (sources deliver them in any order).
    pub endpoints: Vec<ServiceEndpoint>,
}

/// One endpoint of a Service port, with the target port resolved for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceEndpoint {
    /// The pod's IP.
    pub ip: IpAddr,
    /// The port on that pod (a named target port resolved for this endpoint).
    pub target_port: u16,
    /// EndpointSlice `ready`.
    pub ready: bool,
    /// EndpointSlice `serving` (ready, whether or not terminating).
    pub serving: bool,
    /// EndpointSlice `terminating`.
    pub terminating: bool,
}

impl ServiceEndpoint {
    /// The address the client's proxy connects to (through the tunnel when meshed).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.target_port)
    }
}

/// Everything the control plane knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshModel {
    /// The trust domain identities are built in.
    pub trust_domain: TrustDomain,
    /// Meshed workloads by address (shared by consecutive versions: a version that changes
    /// one workload copies the map of pointers, not the workloads).
    pub workloads: BTreeMap<WorkloadKey, Arc<Workload>>,
    /// Services by `namespace/name` (shared likewise).
    pub services: BTreeMap<String, Arc<Service>>,
    /// Checked policies, sorted by namespace and name.
    pub policies: Vec<Policy>,
    /// Mesh-wide mTLS mode.
    pub default_mtls: MtlsMode,
    /// Per-namespace overrides.
    pub namespace_mtls: BTreeMap<String, MtlsMode>,
}

/// One inbound rule as sent to a proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleView {
    /// `namespace/name` of the policy.
    pub name: String,
    /// Ports (empty: all).
    pub ports: Vec<u16>,
    /// Allowed identities, full-form patterns.
    pub allow: Vec<String>,
    /// Whether callers without an identity are allowed too.
    pub allow_unauthenticated: bool,
    /// Enforce or audit.
    pub mode: PolicyMode,
}

/// What one proxy needs about its own workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundView {
    /// Inbound rules of the caller's workload (empty: no policy selects it).
    pub rules: Vec<RuleView>,
    /// The caller's namespace's mTLS mode.
    pub mtls: MtlsMode,
}

/// Workload keys by the identity they run as: finds a caller's workloads without a scan.
pub type IdentityIndex = HashMap<SpiffeId, Vec<WorkloadKey>>;

impl MeshModel {
    /// Adds (or replaces) a workload.
    pub fn add_workload(&mut self, w: Workload) {
        self.workloads.insert(w.key(), Arc::new(w));
    }

    /// Adds (or replaces) a Service, [`Service::normalized`].
    pub fn add_service(&mut self, s: Service) {
        let s = s.normalized();
        self.services.insert(s.key(), Arc::new(s));
    }

    /// The workloads of each identity.
    pub fn identity_index(&self) -> IdentityIndex {
        let mut index: IdentityIndex = HashMap::new();
        for (key, w) in &self.workloads {
            if let Some(id) = w.id(&self.trust_domain) {
                index.entry(id).or_default().push(*key);
            }
        }
        index
    }

    /// The inbound view for the proxy that authenticated as `caller` from `peer_ip`.
    ///
    /// The caller's workload is the one with its identity at `peer_ip`; when no workload with
    /// that identity has that IP (NAT, explicit mode), every workload with that identity counts
    /// and the rules of every policy selecting any of them apply.
    pub fn inbound_for(
        &self,
        index: &IdentityIndex,
        caller: &SpiffeId,
        peer_ip: Option<IpAddr>,
    ) -> InboundView {
        let mine: Vec<&Workload> = index
            .get(caller)
            .into_iter()
            .flatten()
            .filter_map(|k| self.workloads.get(k).map(AsRef::as_ref))
            .collect();
        let at_ip: Vec<&Workload> = mine
            .iter()
            .copied()
            .filter(|w| Some(w.ip) == peer_ip)
            .collect();
        let selected = if at_ip.is_empty() { mine } else { at_ip };
        let mut rules: Vec<RuleView> = self
            .policies
            .iter()
            .filter(|p| selected.iter().any(|w| p.selects(&w.namespace, &w.labels)))
            .map(|p| RuleView {
                name: format!("{}/{}", p.namespace, p.name),
                ports: p.ports.clone(),
                allow: p.allow.iter().map(ToString::to_string).collect(),
                allow_unauthenticated: p.allow_unauthenticated,
                mode: p.mode,
            })
            .collect();
        rules.sort_by(|a, b| a.name.cmp(&b.name));
        rules.dedup();
        let mtls = caller
            .namespace()
            .and_then(|ns| self.namespace_mtls.get(ns))
            .copied()
            .unwrap_or(self.default_mtls);
        InboundView { rules, mtls }
    }
}

#[cfg(test)]
#[path = "model_tests.rs"]
pub(crate) mod tests;
