//! The mesh as the control plane knows it — workloads, policies, mTLS modes — and the pure
//! function that cuts from it what one proxy must know: the endpoints it may dial and the
//! inbound rules of its own workload.
//!
//! Owns: [`MeshModel`], [`Snapshot`] and [`MeshModel::snapshot_for`]. Sources (Kubernetes, a
//! file) build models; the discovery service sends snapshots.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use trellis_ca::{SpiffeId, TrustDomain};

use super::crd::{Policy, PolicyMode};

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
    /// Its labels (policies select on them).
    pub labels: BTreeMap<String, String>,
}

impl Workload {
    /// Its SPIFFE ID in `td`, if the names are valid.
    pub fn id(&self, td: &TrustDomain) -> Option<SpiffeId> {
        SpiffeId::for_service_account(td, &self.namespace, &self.service_account).ok()
    }
}

/// Everything the control plane knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshModel {
    /// Increases with every change.
    pub version: u64,
    /// The trust domain identities are built in.
    pub trust_domain: TrustDomain,
    /// Meshed workloads.
    pub workloads: Vec<Workload>,
    /// Checked policies.
    pub policies: Vec<Policy>,
    /// Mesh-wide mTLS mode.
    pub default_mtls: MtlsMode,
    /// Per-namespace overrides.
    pub namespace_mtls: BTreeMap<String, MtlsMode>,
}

/// A dialable endpoint as sent to a proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointView {
    /// IP.
    pub ip: IpAddr,
    /// Port or 0.
    pub port: u16,
    /// Identity.
    pub id: SpiffeId,
    /// Tunnel endpoint.
    pub tunnel: SocketAddr,
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
    /// Enforce or audit.
    pub mode: PolicyMode,
}

/// What one proxy needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Model version it was cut from.
    pub version: u64,
    /// Meshed endpoints.
    pub endpoints: Vec<EndpointView>,
    /// Inbound rules of the caller's workload (empty: no policy selects it).
    pub rules: Vec<RuleView>,
    /// The caller's namespace's mTLS mode.
    pub mtls: MtlsMode,
}

impl MeshModel {
    /// Whether `other` holds the same mesh, whatever the versions.
    pub fn same_content(&self, other: &MeshModel) -> bool {
        self.trust_domain == other.trust_domain
            && self.workloads == other.workloads
            && self.policies == other.policies
            && self.default_mtls == other.default_mtls
            && self.namespace_mtls == other.namespace_mtls
    }

    /// The snapshot for the proxy that authenticated as `caller` from `peer_ip`.
    ///
    /// The caller's workload is the one with its identity at `peer_ip`; when no workload with
    /// that identity has that IP (NAT, explicit mode), every workload with that identity counts
    /// and the rules of every policy selecting any of them apply.
    pub fn snapshot_for(&self, caller: &SpiffeId, peer_ip: Option<IpAddr>) -> Snapshot {
        let td = &self.trust_domain;
        let mine: Vec<&Workload> = self
            .workloads
            .iter()
            .filter(|w| w.id(td).as_ref() == Some(caller))
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
                mode: p.mode,
            })
            .collect();
        rules.sort_by(|a, b| a.name.cmp(&b.name));
        rules.dedup();
        let endpoints = self
            .workloads
            .iter()
            .filter_map(|w| {
                Some(EndpointView {
                    ip: w.ip,
                    port: w.port,
                    id: w.id(td)?,
                    tunnel: w.tunnel,
                })
            })
            .collect();
        let mtls = caller
            .namespace()
            .and_then(|ns| self.namespace_mtls.get(ns))
            .copied()
            .unwrap_or(self.default_mtls);
        Snapshot {
            version: self.version,
            endpoints,
            rules,
            mtls,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::crd::{AuthorizationPolicy, Policy};

    fn workload(ns: &str, sa: &str, ip: &str, labels: &[(&str, &str)]) -> Workload {
        let ip: IpAddr = ip.parse().unwrap();
        Workload {
            namespace: ns.into(),
            service_account: sa.into(),
            ip,
            port: 0,
            tunnel: SocketAddr::new(ip, 15008),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn policy(ns: &str, name: &str, app: &str, allow: &str) -> Policy {
        let yaml = format!(
            "apiVersion: trellis.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{selector: {{matchLabels: {{app: {app}}}}}, ports: [8080], allow: [\"{allow}\"]}}\n"
        );
        let p: AuthorizationPolicy = serde_saphyr::from_str(&yaml).unwrap();
        Policy::from_resource(&p, &TrustDomain::default()).unwrap()
    }

    fn model() -> MeshModel {
        MeshModel {
            version: 7,
            trust_domain: TrustDomain::default(),
            workloads: vec![
                workload("shop", "frontend", "198.18.0.2", &[("app", "frontend")]),
                workload("shop", "backend", "198.18.0.3", &[("app", "backend")]),
                workload(
                    "shop",
                    "backend",
                    "198.18.0.5",
                    &[("app", "backend-canary")],
                ),
                workload("lab", "tools", "198.18.0.9", &[("app", "backend")]),
            ],
            policies: vec![
                policy("shop", "allow-fe", "backend", "ns/shop/sa/frontend"),
                policy("shop", "canary", "backend-canary", "ns/shop/sa/*"),
            ],
            default_mtls: MtlsMode::Strict,
            namespace_mtls: BTreeMap::from([("lab".to_string(), MtlsMode::Permissive)]),
        }
    }

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(&format!("spiffe://cluster.local/{s}")).unwrap()
    }

    #[test]
    fn the_caller_gets_the_rules_of_the_policies_selecting_its_pod() {
        let m = model();
        let s = m.snapshot_for(
            &id("ns/shop/sa/backend"),
            Some("198.18.0.3".parse().unwrap()),
        );
        let names: Vec<&str> = s.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["shop/allow-fe"]);
        assert_eq!(
            s.rules[0].allow,
            ["spiffe://cluster.local/ns/shop/sa/frontend"]
        );
        assert_eq!(s.version, 7);
        assert_eq!(s.endpoints.len(), 4);
        assert_eq!(s.mtls, MtlsMode::Strict);
    }

    #[test]
    fn the_ip_picks_between_pods_of_one_identity_and_without_it_all_count() {
        let m = model();
        let canary = m.snapshot_for(
            &id("ns/shop/sa/backend"),
            Some("198.18.0.5".parse().unwrap()),
        );
        assert_eq!(canary.rules.len(), 1);
        assert_eq!(canary.rules[0].name, "shop/canary");
        let unknown_ip = m.snapshot_for(
            &id("ns/shop/sa/backend"),
            Some("127.0.0.1".parse().unwrap()),
        );
        assert_eq!(unknown_ip.rules.len(), 2);
    }

    #[test]
    fn a_policy_never_selects_pods_of_another_namespace() {
        let m = model();
        let s = m.snapshot_for(&id("ns/lab/sa/tools"), None);
        assert!(
            s.rules.is_empty(),
            "lab/tools has app=backend but the policy is in shop"
        );
        assert_eq!(s.mtls, MtlsMode::Permissive, "namespace override");
    }

    #[test]
    fn an_unknown_caller_gets_endpoints_and_no_rules() {
        let m = model();
        let s = m.snapshot_for(&id("ns/shop/sa/frontend"), None);
        assert!(s.rules.is_empty());
        let backend = s
            .endpoints
            .iter()
            .find(|e| e.ip == "198.18.0.3".parse::<IpAddr>().unwrap())
            .unwrap();
        assert_eq!(backend.id, id("ns/shop/sa/backend"));
        assert_eq!(backend.tunnel, "198.18.0.3:15008".parse().unwrap());
    }
}
