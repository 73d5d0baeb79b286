//! The cluster as the mesh reads it, kept up to date one watch event at a time, so that a
//! publish costs O(what changed), not O(pods): every event records the keys it touched, and
//! [`Cluster::take_change`] recomputes only those, updates the identity index for them only,
//! and hands out a model that shares every unchanged workload and Service with the last one.
//!
//! Owns: [`Cluster`] (pure: events in, models and [`Change`]s out) and [`ClusterEvent`]. A
//! re-list (a watcher restart: `Init`, `InitApply`…, `InitDone`) is buffered and applied at
//! `InitDone` as the difference from what is held, objects deleted while disconnected
//! included, so that it ends in exactly the state a full rebuild from the list gives. Two pods
//! claiming one address (a stale pod and its successor) resolve to the pod whose
//! `namespace/name` sorts first, whatever order the events came in.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service as KubeService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;
use tracing::warn;
use trellis_ca::TrustDomain;

use super::{pods, services};
use crate::mesh::crd::{AuthorizationPolicy, Policy};
use crate::mesh::model::{IdentityIndex, MeshModel, MtlsMode, Workload, WorkloadKey};
use crate::mesh::publish::Change;

/// `(namespace, name)` of an object; the namespace is empty for cluster-scoped objects.
pub type ObjectKey = (String, String);

/// One watch event of one of the five kinds the mesh reads (boxed: objects are large, and
/// queued).
#[derive(Debug)]
pub enum ClusterEvent {
    /// A Pod event.
    Pod(Box<Event<Pod>>),
    /// A Namespace event.
    Namespace(Box<Event<Namespace>>),
    /// A Service event.
    Service(Box<Event<KubeService>>),
    /// An EndpointSlice event.
    Slice(Box<Event<EndpointSlice>>),
    /// An AuthorizationPolicy event.
    Policy(Box<Event<AuthorizationPolicy>>),
}

/// The kinds, as named in [`Cluster::waiting_for`].
pub const KINDS: [&str; 5] = [
    "Pods",
    "Namespaces",
    "Services",
    "EndpointSlices",
    "AuthorizationPolicies",
];

/// The cluster's objects as the mesh reads them, the model they make, and what changed in it
/// since the last [`Cluster::take_change`].
#[derive(Debug)]
pub struct Cluster {
    /// The model as of the last [`Cluster::take_change`].
    model: MeshModel,
    /// Its workloads by identity.
    index: IdentityIndex,
    /// Meshed pods' workloads by pod.
    pods: HashMap<ObjectKey, Arc<Workload>>,
    /// The pods claiming each address (usually one).
    claims: HashMap<WorkloadKey, BTreeSet<ObjectKey>>,
    /// Services by `(namespace, name)`.
    services: HashMap<ObjectKey, KubeService>,
    /// EndpointSlices by `(namespace, name)`.
    slices: HashMap<ObjectKey, EndpointSlice>,
    /// The slices of each Service.
    owned: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// AuthorizationPolicies by `(namespace, name)`, checked.
    policies: BTreeMap<ObjectKey, Policy>,
    /// Namespaces overriding the mTLS mode.
    namespace_mtls: BTreeMap<String, MtlsMode>,
    /// Touched since the last [`Cluster::take_change`].
    dirty: Dirty,
    /// Re-lists in progress.
    relists: Relists,
    /// Kinds (bits, in [`KINDS`] order) listed in full at least once.
    listed: u8,
}

#[derive(Debug, Default)]
struct Dirty {
    workloads: BTreeSet<WorkloadKey>,
    services: BTreeSet<ObjectKey>,
    policies: bool,
    namespaces: bool,
}

#[derive(Debug, Default)]
struct Relists {
    pods: Option<Vec<Pod>>,
    namespaces: Option<Vec<Namespace>>,
    services: Option<Vec<KubeService>>,
    slices: Option<Vec<EndpointSlice>>,
    policies: Option<Vec<AuthorizationPolicy>>,
}

/// `(namespace, name)` of `o`.
pub fn key_of<K: kube::Resource>(o: &K) -> ObjectKey {
    let meta = o.meta();
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

impl Cluster {
    /// An empty cluster (nothing listed yet) in `td`, with mesh-wide mode `default_mtls`.
    pub fn new(td: TrustDomain, default_mtls: MtlsMode) -> Cluster {
        Cluster {
            model: MeshModel {
                trust_domain: td,
                default_mtls,
                ..MeshModel::default()
            },
            index: IdentityIndex::new(),
            pods: HashMap::new(),
            claims: HashMap::new(),
            services: HashMap::new(),
            slices: HashMap::new(),
            owned: HashMap::new(),
            policies: BTreeMap::new(),
            namespace_mtls: BTreeMap::new(),
            dirty: Dirty::default(),
            relists: Relists::default(),
            listed: 0,
        }
    }

    /// The kinds not yet listed in full (empty: the model is complete).
    pub fn waiting_for(&self) -> Vec<&'static str> {
        (0..KINDS.len())
            .filter(|i| self.listed & (1 << i) == 0)
            .map(|i| KINDS[i])
            .collect()
    }

    /// Applies one event; the keys it touches are recomputed by the next
    /// [`Cluster::take_change`].
    pub fn apply(&mut self, event: ClusterEvent) {
        match event {
            ClusterEvent::Pod(e) => self.apply_kind::<Pod>(*e),
            ClusterEvent::Namespace(e) => self.apply_kind::<Namespace>(*e),
            ClusterEvent::Service(e) => self.apply_kind::<KubeService>(*e),
            ClusterEvent::Slice(e) => self.apply_kind::<EndpointSlice>(*e),
            ClusterEvent::Policy(e) => self.apply_kind::<AuthorizationPolicy>(*e),
        }
    }

    fn apply_kind<K: Kind>(&mut self, event: Event<K>) {
        match event {
            Event::Apply(o) => K::upsert(self, key_of(&o), o),
            Event::Delete(o) => K::remove(self, &key_of(&o)),
            Event::Init => *K::relist(self) = Some(Vec::new()),
            Event::InitApply(o) => K::relist(self).get_or_insert_default().push(o),
            Event::InitDone => {
                let listed = K::relist(self).take().unwrap_or_default();
                let keep: BTreeSet<ObjectKey> = listed.iter().map(key_of).collect();
                for gone in K::keys(self).into_iter().filter(|k| !keep.contains(k)) {
                    K::remove(self, &gone);
                }
                for o in listed {
                    K::upsert(self, key_of(&o), o);
                }
                self.listed |= 1 << K::BIT;
            }
        }
    }

    /// The model with every event applied so far, its identity index, and what changed since
    /// the last call (`None`: nothing). Costs O(keys touched) plus copying the maps of
    /// pointers.
    pub fn take_change(&mut self) -> Option<(MeshModel, IdentityIndex, Change)> {
        let dirty = std::mem::take(&mut self.dirty);
        let mut change = Change::default();
        for key in dirty.workloads {
            self.refresh_workload(key, &mut change);
        }
        for key in dirty.services {
            let name = format!("{}/{}", key.0, key.1);
            let new = self.services.get(&key).and_then(|svc| {
                let own = self.owned.get(&key).into_iter().flatten();
                let slices = own.filter_map(|s| self.slices.get(s));
                services::service_of(svc, slices).map(|s| Arc::new(s.normalized()))
            });
            if self.model.services.get(&name) != new.as_ref() {
                match new {
                    Some(s) => self.model.services.insert(name.clone(), s),
                    None => self.model.services.remove(&name),
                };
                change.services.insert(name);
            }
        }
        if dirty.policies {
            let mut policies: Vec<Policy> = self.policies.values().cloned().collect();
            policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
            change.inbound |= policies != self.model.policies;
            self.model.policies = policies;
        }
        if dirty.namespaces && self.namespace_mtls != self.model.namespace_mtls {
            change.inbound = true;
            self.model.namespace_mtls = self.namespace_mtls.clone();
        }
        (!change.is_empty()).then(|| (self.model.clone(), self.index.clone(), change))
    }

    /// Brings the model's workload at `key` in line with the pods claiming it.
    fn refresh_workload(&mut self, key: WorkloadKey, change: &mut Change) {
        let winner = self.claims.get(&key).and_then(|c| c.first());
        let new = winner.and_then(|pod| self.pods.get(pod)).cloned();
        let old = self.model.workloads.get(&key).cloned();
        if old == new {
            return;
        }
        let td = &self.model.trust_domain;
        change.note_workload(td, key, old.as_deref(), new.as_deref());
        if let Some(id) = old.as_ref().and_then(|w| w.id(td))
            && let Some(keys) = self.index.get_mut(&id)
        {
            keys.retain(|k| *k != key);
            if keys.is_empty() {
                self.index.remove(&id);
            }
        }
        if let Some(id) = new.as_ref().and_then(|w| w.id(td)) {
            let keys = self.index.entry(id).or_default();
            if let Err(at) = keys.binary_search(&key) {
                keys.insert(at, key);
            }
        }
        match new {
            Some(w) => self.model.workloads.insert(key, w),
            None => self.model.workloads.remove(&key),
        };
    }

    fn set_pod(&mut self, pod: ObjectKey, new: Option<Workload>) {
        let old = self.pods.get(&pod);
        if old.map(AsRef::as_ref) == new.as_ref() {
            return;
        }
        if let Some(old) = self.pods.remove(&pod) {
            let key = old.key();
            if let Some(claimants) = self.claims.get_mut(&key) {
                claimants.remove(&pod);
                if claimants.is_empty() {
                    self.claims.remove(&key);
                }
            }
            self.dirty.workloads.insert(key);
        }
        if let Some(new) = new {
            let key = new.key();
            self.claims.entry(key).or_default().insert(pod.clone());
            self.pods.insert(pod, Arc::new(new));
            self.dirty.workloads.insert(key);
        }
    }

    fn set_slice(&mut self, key: ObjectKey, new: Option<EndpointSlice>) {
        if self.slices.get(&key) == new.as_ref() {
            return;
        }
        if let Some(owner) = self
            .slices
            .remove(&key)
            .and_then(|old| services::owner_of(&old))
        {
            if let Some(own) = self.owned.get_mut(&owner) {
                own.remove(&key);
                if own.is_empty() {
                    self.owned.remove(&owner);
                }
            }
            self.dirty.services.insert(owner);
        }
        if let Some(new) = new {
            if let Some(owner) = services::owner_of(&new) {
                self.owned
                    .entry(owner.clone())
                    .or_default()
                    .insert(key.clone());
                self.dirty.services.insert(owner);
            }
            self.slices.insert(key, new);
        }
    }
}

/// The policy, checked; an invalid one becomes a deny-all with its selector (fail closed: the
/// pods it meant to protect admit nobody until it is fixed, rather than everyone).
pub fn checked_policy(p: &AuthorizationPolicy, td: &TrustDomain) -> Policy {
    Policy::from_resource(p, td).unwrap_or_else(|e| {
        warn!(error = %e, "invalid policy: the pods it selects admit nobody until it is fixed");
        Policy::deny_all_like(p, &e.reason)
    })
}

/// What [`Cluster`] does with each kind.
trait Kind: kube::Resource + Sized {
    /// Its bit in [`Cluster::listed`] (index in [`KINDS`]).
    const BIT: u8;
    /// Adds or replaces the object `key`.
    fn upsert(c: &mut Cluster, key: ObjectKey, o: Self);
    /// Removes the object `key` (nothing if it is not held).
    fn remove(c: &mut Cluster, key: &ObjectKey);
    /// Every object held that a re-list must account for.
    fn keys(c: &Cluster) -> Vec<ObjectKey>;
    /// Its re-list buffer.
    fn relist(c: &mut Cluster) -> &mut Option<Vec<Self>>;
}

impl Kind for Pod {
    const BIT: u8 = 0;
    fn upsert(c: &mut Cluster, key: ObjectKey, o: Self) {
        c.set_pod(key, pods::workload_of(&o));
    }
    fn remove(c: &mut Cluster, key: &ObjectKey) {
        c.set_pod(key.clone(), None);
    }
    fn keys(c: &Cluster) -> Vec<ObjectKey> {
        c.pods.keys().cloned().collect()
    }
    fn relist(c: &mut Cluster) -> &mut Option<Vec<Self>> {
        &mut c.relists.pods
    }
}

impl Kind for Namespace {
    const BIT: u8 = 1;
    fn upsert(c: &mut Cluster, key: ObjectKey, o: Self) {
        let new = pods::mtls_of(&o);
        let old = match new {
            Some(mode) => c.namespace_mtls.insert(key.1, mode),
            None => c.namespace_mtls.remove(&key.1),
        };
        c.dirty.namespaces |= old != new;
    }
    fn remove(c: &mut Cluster, key: &ObjectKey) {
        c.dirty.namespaces |= c.namespace_mtls.remove(&key.1).is_some();
    }
    fn keys(c: &Cluster) -> Vec<ObjectKey> {
        let named = |n: &String| (String::new(), n.clone());
        c.namespace_mtls.keys().map(named).collect()
    }
    fn relist(c: &mut Cluster) -> &mut Option<Vec<Self>> {
        &mut c.relists.namespaces
    }
}

impl Kind for KubeService {
    const BIT: u8 = 2;
    fn upsert(c: &mut Cluster, key: ObjectKey, o: Self) {
        if c.services.get(&key) != Some(&o) {
            c.services.insert(key.clone(), o);
            c.dirty.services.insert(key);
        }
    }
    fn remove(c: &mut Cluster, key: &ObjectKey) {
        if c.services.remove(key).is_some() {
            c.dirty.services.insert(key.clone());
        }
    }
    fn keys(c: &Cluster) -> Vec<ObjectKey> {
        c.services.keys().cloned().collect()
    }
    fn relist(c: &mut Cluster) -> &mut Option<Vec<Self>> {
        &mut c.relists.services
    }
}

impl Kind for EndpointSlice {
    const BIT: u8 = 3;
    fn upsert(c: &mut Cluster, key: ObjectKey, o: Self) {
        c.set_slice(key, Some(o));
    }
    fn remove(c: &mut Cluster, key: &ObjectKey) {
        c.set_slice(key.clone(), None);
    }
    fn keys(c: &Cluster) -> Vec<ObjectKey> {
        c.slices.keys().cloned().collect()
    }
    fn relist(c: &mut Cluster) -> &mut Option<Vec<Self>> {
        &mut c.relists.slices
    }
}

impl Kind for AuthorizationPolicy {
    const BIT: u8 = 4;
    fn upsert(c: &mut Cluster, key: ObjectKey, o: Self) {
        let checked = checked_policy(&o, &c.model.trust_domain);
        if c.policies.get(&key) != Some(&checked) {
            c.policies.insert(key, checked);
            c.dirty.policies = true;
        }
    }
    fn remove(c: &mut Cluster, key: &ObjectKey) {
        c.dirty.policies |= c.policies.remove(key).is_some();
    }
    fn keys(c: &Cluster) -> Vec<ObjectKey> {
        c.policies.keys().cloned().collect()
    }
    fn relist(c: &mut Cluster) -> &mut Option<Vec<Self>> {
        &mut c.relists.policies
    }
}

#[cfg(test)]
#[path = "cluster_tests.rs"]
mod tests;
