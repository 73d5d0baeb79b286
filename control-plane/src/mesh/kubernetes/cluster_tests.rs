//! [`Cluster`] against a full rebuild: table tests of single events, and random event
//! sequences (re-lists included) whose every published change must equal the difference of
//! the two full models, and whose end state must equal the full rebuild from the final store.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::json;

use super::*;
use crate::mesh::model::Workload;

fn pod(ns: &str, name: &str, ip: &str, sa: &str, app: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app},
                     "annotations": {"trellis.dev/injected": "true"}},
        "spec": {"serviceAccountName": sa, "containers": []},
        "status": {"phase": "Running", "podIP": ip}
    }))
    .unwrap()
}

/// Applies `pod(ns, name, ip, sa, app)` as a watch event.
fn apply_pod(c: &mut Cluster, ns: &str, name: &str, ip: &str, sa: &str, app: &str) {
    c.apply(ClusterEvent::Pod(Box::new(Event::Apply(pod(
        ns, name, ip, sa, app,
    )))));
}

fn service(ns: &str, name: &str, cluster_ip: &str) -> KubeService {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": cluster_ip, "ports": [{"name": "http", "port": 80}]}
    }))
    .unwrap()
}

fn slice(ns: &str, name: &str, owner: &str, ips: &[(&str, bool)]) -> EndpointSlice {
    let endpoints: Vec<_> = ips
        .iter()
        .map(|(ip, ready)| json!({"addresses": [ip], "conditions": {"ready": ready}}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns,
                     "labels": {"kubernetes.io/service-name": owner}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints
    }))
    .unwrap()
}

fn policy(ns: &str, name: &str, app: &str, allow: &str) -> AuthorizationPolicy {
    serde_json::from_value(json!({
        "apiVersion": "trellis.dev/v1alpha1", "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"matchLabels": {"app": app}}, "allow": [allow]}
    }))
    .unwrap()
}

fn namespace(name: &str, mtls: Option<&str>) -> Namespace {
    let labels = mtls.map(|m| json!({"trellis.dev/mtls": m}));
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
}

fn key(ip: &str) -> WorkloadKey {
    WorkloadKey {
        ip: ip.parse().unwrap(),
        port: 0,
    }
}

fn id(s: &str) -> trellis_ca::SpiffeId {
    trellis_ca::SpiffeId::parse(&format!("spiffe://cluster.local/{s}")).unwrap()
}

/// A cluster with every kind listed (empty).
fn listed() -> Cluster {
    let mut c = Cluster::new(TrustDomain::default(), MtlsMode::Strict);
    c.apply(ClusterEvent::Pod(Box::new(Event::InitDone)));
    c.apply(ClusterEvent::Namespace(Box::new(Event::InitDone)));
    c.apply(ClusterEvent::Service(Box::new(Event::InitDone)));
    c.apply(ClusterEvent::Slice(Box::new(Event::InitDone)));
    c.apply(ClusterEvent::Policy(Box::new(Event::InitDone)));
    c
}

fn change_of(c: &mut Cluster) -> Change {
    c.take_change()
        .map(|(_, _, change)| change)
        .unwrap_or_default()
}

#[test]
fn the_model_is_incomplete_until_every_kind_was_listed_once() {
    let mut c = Cluster::new(TrustDomain::default(), MtlsMode::Strict);
    assert_eq!(c.waiting_for(), KINDS);
    c.apply(ClusterEvent::Pod(Box::new(Event::Init)));
    c.apply(ClusterEvent::Pod(Box::new(Event::InitApply(pod(
        "a",
        "p",
        "198.18.0.1",
        "sa",
        "x",
    )))));
    c.apply(ClusterEvent::Slice(Box::new(Event::InitDone)));
    assert_eq!(
        c.waiting_for(),
        ["Pods", "Namespaces", "Services", "AuthorizationPolicies"]
    );
    // A list in progress is not in the model.
    assert!(c.take_change().is_none());
    c.apply(ClusterEvent::Pod(Box::new(Event::InitDone)));
    assert_eq!(
        change_of(&mut c).workloads,
        BTreeSet::from([key("198.18.0.1")])
    );
    assert!(!c.waiting_for().contains(&"Pods"));
}

#[test]
fn a_new_pod_is_one_change_naming_its_address_and_identity_and_a_repeat_is_none() {
    let mut c = listed();
    apply_pod(&mut c, "a", "p", "198.18.0.1", "sa", "x");
    let (model, index, change) = c.take_change().unwrap();
    assert_eq!(change.workloads, BTreeSet::from([key("198.18.0.1")]));
    assert_eq!(change.identities, BTreeSet::from([id("ns/a/sa/sa")]));
    assert_eq!(index, model.identity_index());
    apply_pod(&mut c, "a", "p", "198.18.0.1", "sa", "x");
    assert!(c.take_change().is_none());
}

#[test]
fn a_relabelled_pod_changes_its_identity_s_view_not_the_workloads() {
    let mut c = listed();
    apply_pod(&mut c, "a", "p", "198.18.0.1", "sa", "x");
    c.take_change();
    apply_pod(&mut c, "a", "p", "198.18.0.1", "sa", "y");
    let change = change_of(&mut c);
    assert!(change.workloads.is_empty());
    assert_eq!(change.identities, BTreeSet::from([id("ns/a/sa/sa")]));
}

#[test]
fn an_address_reused_by_a_new_pod_ends_with_the_live_pod_in_either_order() {
    // The old pod's deletion arrives before or after its successor's add, in one window or
    // across two: the model ends with the successor either way.
    fn old() -> Pod {
        pod("a", "old", "198.18.0.1", "old-sa", "x")
    }
    fn new() -> Pod {
        pod("a", "new", "198.18.0.1", "new-sa", "x")
    }
    type Make = fn() -> Event<Pod>;
    let orders: [(&str, [Make; 2]); 2] = [
        (
            "delete, then add",
            [|| Event::Delete(old()), || Event::Apply(new())],
        ),
        (
            "add, then delete",
            [|| Event::Apply(new()), || Event::Delete(old())],
        ),
    ];
    for (name, events) in orders {
        for publish_between in [false, true] {
            let mut c = listed();
            c.apply(ClusterEvent::Pod(Box::new(Event::Apply(old()))));
            c.take_change();
            for e in &events {
                c.apply(ClusterEvent::Pod(Box::new(e())));
                if publish_between {
                    c.take_change();
                }
            }
            c.take_change();
            let w = &c.model.workloads[&key("198.18.0.1")];
            assert_eq!(
                w.service_account, "new-sa",
                "{name}, publish between: {publish_between}"
            );
            assert_eq!(c.index.get(&id("ns/a/sa/old-sa")), None, "{name}");
            assert_eq!(c.index, c.model.identity_index(), "{name}");
        }
    }
}

#[test]
fn a_relist_removes_what_was_deleted_while_disconnected_and_changes_only_the_difference() {
    let mut c = listed();
    for (name, ip) in [
        ("p1", "198.18.0.1"),
        ("p2", "198.18.0.2"),
        ("p3", "198.18.0.3"),
    ] {
        apply_pod(&mut c, "a", name, ip, "sa", "x");
    }
    c.take_change();
    // Reconnected: p2 was deleted, p3 moved to a new label, p4 is new; p1 is unchanged.
    c.apply(ClusterEvent::Pod(Box::new(Event::Init)));
    for p in [
        pod("a", "p1", "198.18.0.1", "sa", "x"),
        pod("a", "p3", "198.18.0.3", "sa", "y"),
        pod("a", "p4", "198.18.0.4", "sa", "x"),
    ] {
        c.apply(ClusterEvent::Pod(Box::new(Event::InitApply(p))));
    }
    assert!(c.take_change().is_none(), "nothing moves before InitDone");
    c.apply(ClusterEvent::Pod(Box::new(Event::InitDone)));
    let change = change_of(&mut c);
    assert_eq!(
        change.workloads,
        BTreeSet::from([key("198.18.0.2"), key("198.18.0.4")])
    );
    let held: Vec<IpAddr> = c.model.workloads.keys().map(|k| k.ip).collect();
    assert_eq!(held.len(), 3);
    assert_eq!(c.model.workloads[&key("198.18.0.3")].labels["app"], "y");
}

#[test]
fn a_slice_change_recomputes_its_service_only_and_a_moved_slice_both() {
    let mut c = listed();
    c.apply(ClusterEvent::Service(Box::new(Event::Apply(service(
        "a",
        "s1",
        "198.19.0.1",
    )))));
    c.apply(ClusterEvent::Service(Box::new(Event::Apply(service(
        "a",
        "s2",
        "198.19.0.2",
    )))));
    c.apply(ClusterEvent::Slice(Box::new(Event::Apply(slice(
        "a",
        "x",
        "s1",
        &[("198.18.0.1", true)],
    )))));
    let change = change_of(&mut c);
    assert_eq!(
        change.services,
        BTreeSet::from(["a/s1".into(), "a/s2".into()])
    );
    c.apply(ClusterEvent::Slice(Box::new(Event::Apply(slice(
        "a",
        "x",
        "s1",
        &[("198.18.0.1", false)],
    )))));
    assert_eq!(change_of(&mut c).services, BTreeSet::from(["a/s1".into()]));
    c.apply(ClusterEvent::Slice(Box::new(Event::Apply(slice(
        "a",
        "x",
        "s2",
        &[("198.18.0.1", false)],
    )))));
    assert_eq!(
        change_of(&mut c).services,
        BTreeSet::from(["a/s1".into(), "a/s2".into()])
    );
    assert!(c.model.services["a/s1"].ports[0].endpoints.is_empty());
    assert_eq!(c.model.services["a/s2"].ports[0].endpoints.len(), 1);
}

#[test]
fn policies_and_namespace_modes_change_every_inbound_view_and_a_bad_policy_denies() {
    let mut c = listed();
    c.apply(ClusterEvent::Policy(Box::new(Event::Apply(policy(
        "a",
        "p",
        "x",
        "not-an-id",
    )))));
    let change = change_of(&mut c);
    assert!(change.inbound);
    assert!(c.model.policies[0].allow.is_empty() && c.model.policies[0].name.contains("invalid"));
    c.apply(ClusterEvent::Namespace(Box::new(Event::Apply(namespace(
        "a",
        Some("PERMISSIVE"),
    )))));
    assert!(change_of(&mut c).inbound);
    c.apply(ClusterEvent::Namespace(Box::new(Event::Apply(namespace(
        "a",
        Some("PERMISSIVE"),
    )))));
    assert!(c.take_change().is_none());
    c.apply(ClusterEvent::Namespace(Box::new(Event::Delete(namespace(
        "a",
        Some("PERMISSIVE"),
    )))));
    assert!(change_of(&mut c).inbound);
    assert!(c.model.namespace_mtls.is_empty());
}

/// The store a reflector would hold for one kind: the reference the [`Cluster`] must match.
struct Store<K> {
    held: BTreeMap<ObjectKey, K>,
    relist: Option<BTreeMap<ObjectKey, K>>,
}

impl<K: kube::Resource + Clone> Store<K> {
    fn new() -> Self {
        Store {
            held: BTreeMap::new(),
            relist: None,
        }
    }

    fn apply(&mut self, e: &Event<K>) {
        match e {
            Event::Apply(o) => drop(self.held.insert(key_of(o), o.clone())),
            Event::Delete(o) => drop(self.held.remove(&key_of(o))),
            Event::Init => self.relist = Some(BTreeMap::new()),
            Event::InitApply(o) => {
                let buffer = self.relist.get_or_insert_default();
                buffer.insert(key_of(o), o.clone());
            }
            Event::InitDone => self.held = self.relist.take().unwrap_or_default(),
        }
    }
}

/// The full rebuild: the model the final stores make, computed from scratch.
fn rebuild(
    pods: &Store<Pod>,
    namespaces: &Store<Namespace>,
    kube_services: &Store<KubeService>,
    slices: &Store<EndpointSlice>,
    policies: &Store<AuthorizationPolicy>,
) -> MeshModel {
    let td = TrustDomain::default();
    let mut m = MeshModel {
        trust_domain: td.clone(),
        default_mtls: MtlsMode::Strict,
        ..MeshModel::default()
    };
    // Pods in name order: the first to claim an address keeps it.
    for w in pods.held.values().filter_map(pods::workload_of) {
        if !m.workloads.contains_key(&w.key()) {
            m.add_workload(w);
        }
    }
    for (key, svc) in &kube_services.held {
        let own = slices
            .held
            .values()
            .filter(|s| services::owner_of(s).as_ref() == Some(key));
        if let Some(s) = services::service_of(svc, own) {
            m.add_service(s);
        }
    }
    let mut checked: Vec<Policy> = policies
        .held
        .values()
        .map(|p| checked_policy(p, &td))
        .collect();
    checked.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    m.policies = checked;
    m.namespace_mtls = namespaces
        .held
        .values()
        .filter_map(|ns| Some((ns.metadata.name.clone()?, pods::mtls_of(ns)?)))
        .collect();
    m
}

/// A random object of each kind from a small universe, so that names and addresses collide.
struct Universe(fastrand::Rng);

impl Universe {
    fn pick<'a>(&mut self, of: &[&'a str]) -> &'a str {
        of[self.0.usize(..of.len())]
    }
    fn ip(&mut self) -> String {
        format!("198.18.0.{}", self.0.u8(1..5))
    }
    fn pod(&mut self) -> Pod {
        let (ns, name) = (
            self.pick(&["a", "b"]),
            self.pick(&["p1", "p2", "p3", "p4", "p5"]),
        );
        let ip = self.ip();
        let mut p = pod(
            ns,
            name,
            &ip,
            self.pick(&["s", "t"]),
            self.pick(&["x", "y"]),
        );
        match self.0.u8(..10) {
            0 => p.status.as_mut().unwrap().phase = Some("Succeeded".into()),
            1 => drop(p.metadata.annotations.take()),
            _ => {}
        }
        p
    }
    fn service(&mut self) -> KubeService {
        let name = self.pick(&["s1", "s2", "s3"]);
        let ip = if self.0.u8(..8) == 0 {
            "None"
        } else {
            "198.19.0.1"
        };
        service("a", name, ip)
    }
    fn slice(&mut self) -> EndpointSlice {
        let (name, owner) = (
            self.pick(&["x1", "x2", "x3", "x4"]),
            self.pick(&["s1", "s2", "s3"]),
        );
        let ips: Vec<(String, bool)> = (0..self.0.usize(..3))
            .map(|_| (self.ip(), self.0.bool()))
            .collect();
        let refs: Vec<(&str, bool)> = ips.iter().map(|(ip, r)| (ip.as_str(), *r)).collect();
        slice("a", name, owner, &refs)
    }
    fn policy(&mut self) -> AuthorizationPolicy {
        let allow = self.pick(&["ns/a/sa/s", "ns/b/*", "bogus"]);
        policy(
            self.pick(&["a", "b"]),
            self.pick(&["q1", "q2"]),
            self.pick(&["x", "y"]),
            allow,
        )
    }
    fn namespace(&mut self) -> Namespace {
        namespace(
            self.pick(&["a", "b"]),
            [None, Some("PERMISSIVE"), Some("STRICT")][self.0.usize(..3)],
        )
    }

    /// Makes the next event of a kind and applies it to its store and to `c`.
    fn step<K: kube::Resource + Clone>(
        &mut self,
        store: &mut Store<K>,
        make: fn(&mut Self) -> K,
        wrap: fn(Box<Event<K>>) -> ClusterEvent,
        c: &mut Cluster,
    ) {
        let e = self.event(store.relist.is_some(), make);
        store.apply(&e);
        c.apply(wrap(Box::new(e)));
    }

    /// The next event of a kind, given whether that kind is re-listing.
    fn event<K>(&mut self, relisting: bool, make: fn(&mut Self) -> K) -> Event<K> {
        match (relisting, self.0.u8(..10)) {
            (true, 0..=2) => Event::InitDone,
            (true, _) => Event::InitApply(make(self)),
            (false, 0) => Event::Init,
            (false, 1..=3) => Event::Delete(make(self)),
            (false, _) => Event::Apply(make(self)),
        }
    }
}

#[test]
fn random_event_sequences_publish_exact_changes_and_end_as_a_full_rebuild() {
    for seed in 0..300 {
        let mut u = Universe(fastrand::Rng::with_seed(seed));
        let mut c = listed();
        let (mut pods, mut namespaces, mut kube_services, mut slices, mut policies) = (
            Store::new(),
            Store::new(),
            Store::new(),
            Store::new(),
            Store::new(),
        );
        let mut published = MeshModel {
            trust_domain: TrustDomain::default(),
            ..MeshModel::default()
        };
        for step in 0..80 {
            match u.0.u8(..5) {
                0 => u.step(&mut pods, Universe::pod, ClusterEvent::Pod, &mut c),
                1 => u.step(
                    &mut namespaces,
                    Universe::namespace,
                    ClusterEvent::Namespace,
                    &mut c,
                ),
                2 => u.step(
                    &mut kube_services,
                    Universe::service,
                    ClusterEvent::Service,
                    &mut c,
                ),
                3 => u.step(&mut slices, Universe::slice, ClusterEvent::Slice, &mut c),
                _ => u.step(
                    &mut policies,
                    Universe::policy,
                    ClusterEvent::Policy,
                    &mut c,
                ),
            }
            if u.0.u8(..3) > 0 && step != 79 {
                continue;
            }
            let full = rebuild(&pods, &namespaces, &kube_services, &slices, &policies);
            let expected = Change::between(&published, &full);
            match c.take_change() {
                Some((model, index, change)) => {
                    assert_eq!(change, expected, "seed {seed} step {step}");
                    assert_eq!(model, full, "seed {seed} step {step}");
                    assert_eq!(index, full.identity_index(), "seed {seed} step {step}");
                    published = model;
                }
                None => assert!(expected.is_empty(), "seed {seed} step {step}: {expected:?}"),
            }
        }
        assert_eq!(c.model, published, "seed {seed}");
    }
}

#[test]
fn a_published_model_shares_the_workloads_it_did_not_change() {
    let mut c = listed();
    apply_pod(&mut c, "a", "p1", "198.18.0.1", "s", "x");
    let (first, _, _) = c.take_change().unwrap();
    apply_pod(&mut c, "a", "p2", "198.18.0.2", "s", "x");
    let (second, _, _) = c.take_change().unwrap();
    let k = key("198.18.0.1");
    assert!(Arc::ptr_eq(&first.workloads[&k], &second.workloads[&k]));
    let _: &Workload = &second.workloads[&key("198.18.0.2")];
}
