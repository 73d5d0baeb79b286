//! The Kubernetes source: watches over Pods, Namespaces, Services, EndpointSlices and
//! AuthorizationPolicies whose events are applied one by one to the [`Cluster`]; changes within
//! a short window are published together, the [`Cluster`] saying what they changed, so that a
//! publish costs O(what changed) and proxies hear of a change well within a second.
//!
//! Owns: the watches and the publish loop. What a pod, a namespace or a Service means to the
//! mesh is in [`pods`] and [`services`] (pure conversions); the incremental model in
//! [`cluster`].
//!
//! RBAC: get/list/watch on pods, namespaces, services, endpointslices.discovery.k8s.io and
//! authorizationpolicies.trellis.dev (charts/trellis/templates/control-plane-rbac.yaml).

pub mod cluster;
pub mod pods;
pub mod services;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use trellis_ca::TrustDomain;

use super::model::MtlsMode;
use super::publish::Publisher;
use cluster::{Cluster, ClusterEvent};
pub use pods::{INJECTED, MTLS, workload_of};

/// Events queued from the watches to the publish loop (a full queue holds the watches back).
const EVENTS: usize = 1024;

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
/// sees also fill `pods`. Until every kind has been listed once the published views say what
/// is missing ([`Publisher::set_waiting_for`]), and discovery holds proxies back.
pub async fn watch_cluster(
    client: kube::Client,
    td: TrustDomain,
    default_mtls: MtlsMode,
    debounce: Duration,
    publisher: Publisher,
    pods: PodIndexWriter,
    shutdown: CancellationToken,
) {
    let (tx, mut events) = mpsc::channel(EVENTS);
    let PodIndexWriter(pods_w) = pods;
    let s = &shutdown;
    let pods = watch_kind(Api::all(client.clone()), pods::slim).reflect(pods_w);
    forward(pods, |e| ClusterEvent::Pod(Box::new(e)), &tx, s);
    let namespaces = watch_kind(Api::all(client.clone()), trim);
    forward(namespaces, |e| ClusterEvent::Namespace(Box::new(e)), &tx, s);
    let services = watch_kind(Api::all(client.clone()), trim);
    forward(services, |e| ClusterEvent::Service(Box::new(e)), &tx, s);
    let slices = watch_kind(Api::all(client.clone()), trim);
    forward(slices, |e| ClusterEvent::Slice(Box::new(e)), &tx, s);
    forward(
        watch_kind(Api::all(client), trim),
        |e| ClusterEvent::Policy(Box::new(e)),
        &tx,
        s,
    );
    drop(tx);
    info!("watching the cluster");
    let mut cluster = Cluster::new(td, default_mtls);
    publisher.set_waiting_for(cluster.waiting_for());
    loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => return,
            event = events.recv() => event,
        };
        let Some(first) = first else { return };
        cluster.apply(first);
        let window = tokio::time::sleep(debounce);
        tokio::pin!(window);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = &mut window => break,
                event = events.recv() => match event {
                    Some(event) => cluster.apply(event),
                    None => return,
                },
            }
        }
        let started = Instant::now();
        if let Some((model, index, change)) = cluster.take_change() {
            let (workloads, services) = (model.workloads.len(), model.services.len());
            if let Some(change) = publisher.publish_change(model, index, change) {
                debug!(
                    version = change.version,
                    workloads,
                    services,
                    changed_workloads = change.workloads.len(),
                    changed_services = change.services.len(),
                    took_us = started.elapsed().as_micros(),
                    "cluster model published"
                );
            }
        }
        publisher.set_waiting_for(cluster.waiting_for());
    }
}

/// What every kind drops: the fields the mesh never reads that can be large.
fn trim<K: kube::Resource>(o: &mut K) {
    o.managed_fields_mut().clear();
    o.annotations_mut()
        .remove("kubectl.kubernetes.io/last-applied-configuration");
}

/// The watch events of `api`, each object reduced with `keep`.
fn watch_kind<K>(
    api: Api<K>,
    keep: fn(&mut K),
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + serde::de::DeserializeOwned
        + 'static,
{
    watcher(api, watcher::Config::default())
        .default_backoff()
        // The model keeps objects: drop what the mesh never reads.
        .modify(keep)
}

/// Sends the events of `stream` (as `wrap` makes them) to the publish loop until `shutdown`.
fn forward<K, S>(
    stream: S,
    wrap: fn(watcher::Event<K>) -> ClusterEvent,
    tx: &mpsc::Sender<ClusterEvent>,
    shutdown: &CancellationToken,
) where
    K: kube::Resource<DynamicType = ()> + Send + 'static,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    let (tx, shutdown) = (tx.clone(), shutdown.clone());
    tokio::spawn(async move {
        let kind = K::kind(&()).to_string();
        futures_util::pin_mut!(stream);
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return,
                next = stream.next() => next,
            };
            match next {
                Some(Ok(event)) => {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        sent = tx.send(wrap(event)) => if sent.is_err() { return },
                    }
                }
                Some(Err(e)) => warn!(%kind, error = %e, "watch failed; retrying with backoff"),
                None => return,
            }
        }
    });
}
