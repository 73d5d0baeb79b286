//! The Kubernetes source: reflectors over Pods, Namespaces, Services, EndpointSlices and
//! AuthorizationPolicies; every change rebuilds the model (coalesced over a short window) and
//! hands it to the [`Publisher`], which numbers it and works out what changed, so proxies hear
//! of a change well within a second.
//!
//! Owns: the reflectors and the rebuild loop. What a pod, a namespace or a Service means to the
//! mesh is in [`pods`] and [`services`] (pure conversions).
//!
//! RBAC: get/list/watch on pods, namespaces, services, endpointslices.discovery.k8s.io and
//! authorizationpolicies.trellis.dev (charts/trellis/templates/control-plane-rbac.yaml).

pub mod pods;
pub mod services;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service as KubeService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use trellis_ca::TrustDomain;

use super::crd::{AuthorizationPolicy, Policy};
use super::model::{MeshModel, MtlsMode};
use super::publish::Publisher;
pub use pods::{INJECTED, MTLS, workload_of};

/// Changes arriving within this window are published together.
const COALESCE: Duration = Duration::from_millis(100);

/// The reflectors' stores.
#[derive(Debug, Clone)]
struct Stores {
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    services: Store<KubeService>,
    slices: Store<EndpointSlice>,
    policies: Store<AuthorizationPolicy>,
}

/// The cluster's pods as the pod reflector of [`watch_cluster`] holds them, for other readers
/// (node agents asking for the identities of pods on their node).
#[derive(Clone)]
pub struct PodIndex(Store<Pod>);

impl std::fmt::Debug for PodIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodIndex").finish_non_exhaustive()
    }
}

impl PodIndex {
    /// The pod `namespace/name`, if the reflector holds it.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.0
            .get(&reflector::ObjectRef::new(name).within(namespace))
    }

    /// Whether some pod matches `predicate` (read under the store's lock: keep it cheap).
    pub fn any(&self, predicate: impl Fn(&Pod) -> bool) -> bool {
        self.0.find(predicate).is_some()
    }
}

/// Fills a [`PodIndex`]: given to [`watch_cluster`].
pub struct PodIndexWriter(reflector::store::Writer<Pod>);

impl std::fmt::Debug for PodIndexWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodIndexWriter").finish_non_exhaustive()
    }
}

/// An empty pod index and the writer [`watch_cluster`] fills it with.
pub fn pod_index() -> (PodIndex, PodIndexWriter) {
    let (store, writer) = reflector::store::<Pod>();
    (PodIndex(store), PodIndexWriter(writer))
}

/// Watches the cluster and publishes models through `publisher` until `shutdown`; the pods it
/// sees also fill `pods`.
pub async fn watch_cluster(
    client: kube::Client,
    td: TrustDomain,
    default_mtls: MtlsMode,
    publisher: Publisher,
    pods: PodIndexWriter,
    shutdown: CancellationToken,
) {
    let changed = Arc::new(Notify::new());
    let PodIndexWriter(pods_w) = pods;
    let pods = pods_w.as_reader();
    let (namespaces, namespaces_w) = reflector::store::<Namespace>();
    let (services, services_w) = reflector::store::<KubeService>();
    let (slices, slices_w) = reflector::store::<EndpointSlice>();
    let (policies, policies_w) = reflector::store::<AuthorizationPolicy>();
    let (n, s) = (&changed, &shutdown);
    spawn_reflector(Api::all(client.clone()), pods_w, pods::slim, n, s);
    spawn_reflector(Api::all(client.clone()), namespaces_w, trim, n, s);
    spawn_reflector(Api::all(client.clone()), services_w, trim, n, s);
    spawn_reflector(Api::all(client.clone()), slices_w, trim, n, s);
    spawn_reflector(Api::all(client), policies_w, trim, n, s);
    info!("watching the cluster");
    let stores = Stores {
        pods,
        namespaces,
        services,
        slices,
        policies,
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = changed.notified() => {}
        }
        tokio::time::sleep(COALESCE).await;
        let model = build(&stores, &td, default_mtls);
        let (workloads, services) = (model.workloads.len(), model.services.len());
        if let Some(change) = publisher.publish(model) {
            debug!(
                version = change.version,
                workloads,
                services,
                changed_workloads = change.workloads.len(),
                changed_services = change.services.len(),
                "cluster model rebuilt"
            );
        }
    }
}

/// What every store drops: the fields the mesh never reads that can be large.
fn trim<K: kube::Resource>(o: &mut K) {
    o.managed_fields_mut().clear();
    o.annotations_mut()
        .remove("kubectl.kubernetes.io/last-applied-configuration");
}

/// Reflects `api` into `writer`, reducing each object with `keep` before it is stored.
fn spawn_reflector<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    keep: fn(&mut K),
    changed: &Arc<Notify>,
    shutdown: &CancellationToken,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + serde::de::DeserializeOwned
        + 'static,
{
    let (changed, shutdown) = (changed.clone(), shutdown.clone());
    tokio::spawn(async move {
        let kind = K::kind(&()).to_string();
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            // The store keeps every object: drop what the mesh never reads.
            .modify(keep)
            .reflect(writer);
        futures_util::pin_mut!(stream);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                next = stream.next() => match next {
                    Some(Ok(_)) => changed.notify_one(),
                    Some(Err(e)) => warn!(%kind, error = %e, "watch failed; retrying with backoff"),
                    None => return,
                }
            }
        }
    });
}

/// Builds a model from the current contents of the stores (pure apart from reading them).
fn build(stores: &Stores, td: &TrustDomain, default_mtls: MtlsMode) -> MeshModel {
    let mut model = MeshModel {
        trust_domain: td.clone(),
        default_mtls,
        ..MeshModel::default()
    };
    for w in stores.pods.state().iter().filter_map(|p| workload_of(p)) {
        model.add_workload(w);
    }
    let mut slices: HashMap<(String, String), Vec<Arc<EndpointSlice>>> = HashMap::new();
    for slice in stores.slices.state() {
        if let Some(owner) = services::owner_of(&slice) {
            slices.entry(owner).or_default().push(slice);
        }
    }
    for svc in stores.services.state() {
        let key = (svc.namespace().unwrap_or_default(), svc.name_any());
        let own = slices.get(&key).into_iter().flatten().map(AsRef::as_ref);
        if let Some(s) = services::service_of(&svc, own) {
            model.add_service(s);
        }
    }
    let mut checked = Vec::new();
    for p in stores.policies.state() {
        match Policy::from_resource(&p, td) {
            Ok(p) => checked.push(p),
            Err(e) => {
                // Fail closed: the pods the broken policy meant to protect admit nobody until it
                // is fixed, rather than falling back to "no policy" (everyone in the mesh).
                warn!(error = %e, "invalid policy: the pods it selects admit nobody until it is fixed");
                checked.push(Policy::deny_all_like(&p, &e.reason));
            }
        }
    }
    checked.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    model.policies = checked;
    model.namespace_mtls = stores
        .namespaces
        .state()
        .iter()
        .filter_map(|ns| Some((ns.metadata.name.clone()?, pods::mtls_of(ns)?)))
        .collect();
    model
}
