//! The synthetic cluster the control plane reflects: P meshed pods behind S Services (P/S pods
//! each, one Deployment, ServiceAccount and EndpointSlice per Service), S/20 namespaces with one
//! AuthorizationPolicy each, and the churn — a rolling replacement of pods, one pod event (and
//! its EndpointSlice edit) per change.
//!
//! Pods are the recorded pod of `testdata/services/pods-list.json` as the real injector
//! (`trellis_injector::patch::build`) leaves it — sidecar, init container, token volume,
//! annotations — so the objects the control plane decodes and keeps are the size of a
//! cluster's (~7 KB of JSON each).
//!
//! Owns: [`Mesh`] (names, addresses, objects) and [`Mesh::step`], the pure churn decision.

use std::collections::VecDeque;
use std::net::Ipv4Addr;

use anyhow::Context;
use serde_json::{Value, json};

use super::apiserver::{Cluster, NAMESPACES, PODS, POLICIES, SERVICES, SLICES};

/// Services per namespace.
const SERVICES_PER_NAMESPACE: usize = 20;
/// The app's container port, named `http` (Services target it by name).
pub const APP_PORT: u16 = 8080;
/// Pod addresses: 198.18.0.0/15 after this many skipped at the start.
const POD_BASE: u32 = u32::from_be_bytes([198, 18, 0, 0]);
/// Pod addresses available (the rest of the /15 stays clear).
const POD_ADDRESSES: u32 = 120_000;
/// Service ClusterIPs: from 198.19.240.0 (apart from the pods').
const VIP_BASE: u32 = u32::from_be_bytes([198, 19, 240, 0]);

/// One pod of the synthetic cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// Its name (`<service>-<n>`).
    pub name: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// A simulated proxy stands for it: churn never deletes it.
    pub pinned: bool,
}

/// One Service with its Deployment's pods, oldest first.
#[derive(Debug, Clone)]
pub struct Service {
    /// Namespace.
    pub namespace: String,
    /// Name (also the ServiceAccount and the `app` label).
    pub name: String,
    /// Its ClusterIP.
    pub vip: Ipv4Addr,
    /// Its pods, oldest first.
    pub pods: VecDeque<Pod>,
    /// Pods made so far (names the next).
    made: u32,
}

/// What one churn step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A pod was deleted.
    Deleted {
        /// Index of its Service.
        service: usize,
        /// The pod.
        pod: Pod,
    },
    /// A pod was created (running and ready).
    Added {
        /// Index of its Service.
        service: usize,
        /// The pod.
        pod: Pod,
    },
}

impl Change {
    /// The pod's address.
    pub fn ip(&self) -> Ipv4Addr {
        match self {
            Change::Deleted { pod, .. } | Change::Added { pod, .. } => pod.ip,
        }
    }
}

/// The synthetic cluster.
#[derive(Debug, Clone)]
pub struct Mesh {
    /// The Services and their pods.
    pub services: Vec<Service>,
    /// The injected pod every pod is made from.
    template: Value,
    /// Pod addresses handed out.
    next_ip: u32,
    /// The Service the last deletion hit (the next addition refills it).
    refill: Option<usize>,
}

/// The recorded pod, injected by the real injector: what a meshed pod looks like.
pub fn injected_template() -> anyhow::Result<Value> {
    let recorded: Value =
        serde_json::from_str(include_str!("../../../testdata/services/pods-list.json"))?;
    let pod = recorded["items"][0].clone();
    let typed: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod.clone())?;
    // A bundle of the usual size: one P-256 root in PEM.
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        "A".repeat(560)
    );
    let config = trellis_injector::InjectConfig::with_defaults("trellis/proxy:bench", pem, false);
    let injection = trellis_injector::patch::build(&typed, &config)
        .context("the injector refused the recorded pod")?;
    let mut injected = pod;
    json_patch::patch(&mut injected, &injection.patch).context("apply the injection patch")?;
    let meta = &mut injected["metadata"];
    meta["managedFields"] = json!([]);
    meta["ownerReferences"] = json!([]);
    Ok(injected)
}

impl Mesh {
    /// `pods` pods behind `services` Services (at least one pod each), pods from `template`.
    pub fn new(pods: usize, services: usize, template: Value) -> Self {
        let services = services.max(1);
        let mut mesh = Mesh {
            services: Vec::with_capacity(services),
            template,
            next_ip: 0,
            refill: None,
        };
        for i in 0..services {
            let namespace = format!("ns-{}", i / SERVICES_PER_NAMESPACE);
            let vip = Ipv4Addr::from(VIP_BASE + 1 + i as u32);
            mesh.services.push(Service {
                namespace,
                name: format!("svc-{i}"),
                vip,
                pods: VecDeque::new(),
                made: 0,
            });
        }
        for p in 0..pods.max(services) {
            let pod = mesh.new_pod(p % services);
            mesh.services[p % services].pods.push_back(pod);
        }
        mesh
    }

    fn new_pod(&mut self, service: usize) -> Pod {
        let ip = Ipv4Addr::from(POD_BASE + 1 + self.next_ip % POD_ADDRESSES);
        self.next_ip += 1;
        let s = &mut self.services[service];
        s.made += 1;
        Pod {
            name: format!("{}-{}", s.name, s.made - 1),
            ip,
            pinned: false,
        }
    }

    /// Identities for `n` simulated proxies: pods pinned round-robin over the Services, at most
    /// half of each Service's (churn replaces the others), taken in turn when there are fewer
    /// pinned pods than proxies (several proxies then share a pod's identity). Each is
    /// (namespace, service account, pod name); empty when no pod can be pinned.
    pub fn pin(&mut self, n: usize) -> Vec<(String, String, String)> {
        let mut pinned = Vec::new();
        let most = self
            .services
            .iter()
            .map(|s| s.pods.len() / 2)
            .max()
            .unwrap_or(0);
        'rounds: for round in 0..most {
            for s in &mut self.services {
                if round < s.pods.len() / 2 {
                    s.pods[round].pinned = true;
                    pinned.push((
                        s.namespace.clone(),
                        s.name.clone(),
                        s.pods[round].name.clone(),
                    ));
                    if pinned.len() == n {
                        break 'rounds;
                    }
                }
            }
        }
        if pinned.is_empty() {
            return pinned;
        }
        (0..n).map(|j| pinned[j % pinned.len()].clone()).collect()
    }

    /// Pods in all.
    pub fn pod_count(&self) -> usize {
        self.services.iter().map(|s| s.pods.len()).sum()
    }

    /// The next churn step (`n` counts steps): even steps delete the oldest unpinned pod of a
    /// Service (chosen by `pick` among those with one), odd steps add a pod to that Service —
    /// a rolling replacement that keeps P constant.
    pub fn step(&mut self, n: u64, pick: impl FnOnce(usize) -> usize) -> Option<Change> {
        if n % 2 == 1
            && let Some(service) = self.refill.take()
        {
            let pod = self.new_pod(service);
            self.services[service].pods.push_back(pod.clone());
            return Some(Change::Added { service, pod });
        }
        let candidates: Vec<usize> = (0..self.services.len())
            .filter(|&i| self.services[i].pods.iter().any(|p| !p.pinned))
            .collect();
        let service = *candidates.get(pick(candidates.len().max(1)) % candidates.len().max(1))?;
        let pods = &mut self.services[service].pods;
        let at = pods.iter().position(|p| !p.pinned)?;
        let pod = pods.remove(at)?;
        self.refill = Some(service);
        Some(Change::Deleted { service, pod })
    }

    /// Puts every object into `cluster` (before the control plane starts).
    pub fn load_into(&self, cluster: &Cluster) {
        let mut namespaces: Vec<&str> =
            self.services.iter().map(|s| s.namespace.as_str()).collect();
        namespaces.dedup();
        for ns in &namespaces {
            cluster.put(
                NAMESPACES,
                json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "labels": {"trellis-injection": "enabled"}}}),
            );
        }
        for (i, s) in self.services.iter().enumerate() {
            cluster.put(SERVICES, self.service_object(i));
            for pod in &s.pods {
                cluster.put(PODS, self.pod_object(i, pod));
            }
            cluster.put(SLICES, self.slice_object(i));
            if i % SERVICES_PER_NAMESPACE == 0 {
                cluster.put(POLICIES, policy_object(s));
            }
        }
    }

    /// Applies `change` to `cluster`: the pod event, then its Service's EndpointSlice.
    pub fn apply(&self, change: &Change, cluster: &Cluster) {
        match change {
            Change::Deleted { service, pod } => {
                cluster.delete(PODS, &self.services[*service].namespace, &pod.name);
                cluster.put(SLICES, self.slice_object(*service));
            }
            Change::Added { service, pod } => {
                cluster.put(PODS, self.pod_object(*service, pod));
                cluster.put(SLICES, self.slice_object(*service));
            }
        }
    }

    fn pod_object(&self, service: usize, pod: &Pod) -> Value {
        let s = &self.services[service];
        let mut o = self.template.clone();
        let meta = &mut o["metadata"];
        meta["name"] = json!(pod.name);
        meta["namespace"] = json!(s.namespace);
        meta["generateName"] = json!(format!("{}-", s.name));
        meta["uid"] = json!(uid(u32::from(pod.ip)));
        meta["labels"] = json!({"app": s.name, "pod-template-hash": "7fd89b78b7"});
        o["spec"]["serviceAccountName"] = json!(s.name);
        o["spec"]["serviceAccount"] = json!(s.name);
        let status = &mut o["status"];
        status["phase"] = json!("Running");
        status["podIP"] = json!(pod.ip.to_string());
        status["podIPs"] = json!([{"ip": pod.ip.to_string()}]);
        o
    }

    fn service_object(&self, service: usize) -> Value {
        let s = &self.services[service];
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": s.name, "namespace": s.namespace, "uid": uid(u32::from(s.vip))},
            "spec": {"type": "ClusterIP", "clusterIP": s.vip.to_string(), "clusterIPs": [s.vip.to_string()],
                     "selector": {"app": s.name}, "ipFamilies": ["IPv4"],
                     "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http"}]}})
    }

    fn slice_object(&self, service: usize) -> Value {
        let s = &self.services[service];
        let endpoints: Vec<Value> = s
            .pods
            .iter()
            .map(|p| {
                json!({"addresses": [p.ip.to_string()],
                    "conditions": {"ready": true, "serving": true, "terminating": false},
                    "targetRef": {"kind": "Pod", "namespace": s.namespace, "name": p.name, "uid": uid(u32::from(p.ip))},
                    "nodeName": "node-a", "zone": "zone-a"})
            })
            .collect();
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{}-x7k2p", s.name), "namespace": s.namespace,
                "labels": {"kubernetes.io/service-name": s.name,
                           "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": s.name,
                                     "uid": uid(u32::from(s.vip)), "controller": true}]},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "http", "protocol": "TCP", "port": APP_PORT}]})
    }
}

/// A policy in `s`'s namespace: only that namespace's identities reach `s`'s pods on the app
/// port.
fn policy_object(s: &Service) -> Value {
    json!({"apiVersion": "trellis.dev/v1alpha1", "kind": "AuthorizationPolicy",
        "metadata": {"name": format!("allow-{}", s.name), "namespace": s.namespace},
        "spec": {"selector": {"matchLabels": {"app": s.name}}, "ports": [APP_PORT],
                 "allow": [format!("ns/{}/sa/*", s.namespace)]}})
}

fn uid(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh(pods: usize, services: usize) -> Mesh {
        Mesh::new(
            pods,
            services,
            json!({"metadata": {}, "spec": {}, "status": {}}),
        )
    }

    #[test]
    fn pods_are_spread_over_the_services_with_distinct_addresses() {
        let m = mesh(100, 10);
        assert_eq!(m.pod_count(), 100);
        assert!(m.services.iter().all(|s| s.pods.len() == 10));
        let mut ips: Vec<Ipv4Addr> = m
            .services
            .iter()
            .flat_map(|s| s.pods.iter().map(|p| p.ip))
            .collect();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 100);
        assert_eq!(m.services[0].namespace, "ns-0");
    }

    #[test]
    fn churn_replaces_the_oldest_unpinned_pod_and_keeps_the_pod_count() {
        let mut m = mesh(6, 2);
        let pinned = m.pin(1);
        assert_eq!(
            pinned,
            [("ns-0".to_owned(), "svc-0".to_owned(), "svc-0-0".to_owned())]
        );
        // More proxies than pinnable pods share identities; half of each Service stays free.
        let mut crowded = mesh(8, 2);
        let names: Vec<String> = crowded.pin(5).into_iter().map(|(_, _, p)| p).collect();
        assert_eq!(
            names,
            ["svc-0-0", "svc-1-0", "svc-0-1", "svc-1-1", "svc-0-0"]
        );
        let deleted = m.step(0, |_| 0).unwrap();
        assert!(matches!(&deleted, Change::Deleted { service: 0, pod } if pod.name == "svc-0-1"));
        assert_eq!(m.pod_count(), 5);
        let added = m.step(1, |_| 0).unwrap();
        assert!(matches!(&added, Change::Added { service: 0, pod } if pod.name == "svc-0-3"));
        assert_ne!(added.ip(), deleted.ip());
        assert_eq!(m.pod_count(), 6);
        // The pinned pod is never chosen.
        for n in 2..40 {
            let c = m.step(n, |k| n as usize % k).unwrap();
            if let Change::Deleted { pod, .. } = c {
                assert_ne!(pod.name, "svc-0-0");
            }
        }
    }

    #[test]
    fn the_injected_template_is_a_meshed_pod_of_realistic_size() {
        let t = injected_template().unwrap();
        assert_eq!(t["metadata"]["annotations"]["trellis.dev/injected"], "true");
        let m = Mesh::new(1, 1, t);
        let pod = m.pod_object(0, &m.services[0].pods[0]);
        let len = pod.to_string().len();
        assert!(len > 5_000, "{len} bytes");
        let typed: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod).unwrap();
        assert_eq!(typed.status.unwrap().pod_ip.as_deref(), Some("198.18.0.1"));
    }
}
