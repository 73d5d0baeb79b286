//! The Kubernetes source: reflectors over Pods, Namespaces and AuthorizationPolicies; every
//! change rebuilds the model (coalesced over a short window) and publishes it, so proxies hear
//! of a change well within a second.
//!
//! Owns: what counts as a meshed pod (annotated `trellis.dev/injected: "true"`, has an IP, not
//! finished), the namespace mTLS override (`trellis.dev/mtls` label or annotation), and the
//! rebuild loop.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use trellis_ca::TrustDomain;

use super::crd::{AuthorizationPolicy, Policy};
use super::model::{MeshModel, MtlsMode, Workload};

/// Annotation set by injection.
pub const INJECTED: &str = "trellis.dev/injected";
/// Namespace label or annotation overriding the mesh's mTLS mode.
pub const MTLS: &str = "trellis.dev/mtls";
/// Changes arriving within this window are published together.
const COALESCE: Duration = Duration::from_millis(100);
/// Tunnel port of every injected pod.
const TUNNEL_PORT: u16 = 15008;

/// Watches the cluster and publishes models on `tx` until `shutdown`.
pub async fn watch_cluster(
    client: kube::Client,
    td: TrustDomain,
    default_mtls: MtlsMode,
    tx: watch::Sender<Arc<MeshModel>>,
    shutdown: CancellationToken,
) {
    let changed = Arc::new(Notify::new());
    let (pods, pods_w) = reflector::store::<Pod>();
    let (namespaces, namespaces_w) = reflector::store::<Namespace>();
    let (policies, policies_w) = reflector::store::<AuthorizationPolicy>();
    spawn_reflector(
        Api::<Pod>::all(client.clone()),
        pods_w,
        changed.clone(),
        shutdown.clone(),
    );
    spawn_reflector(
        Api::<Namespace>::all(client.clone()),
        namespaces_w,
        changed.clone(),
        shutdown.clone(),
    );
    spawn_reflector(
        Api::<AuthorizationPolicy>::all(client),
        policies_w,
        changed.clone(),
        shutdown.clone(),
    );
    let mut version = 0u64;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = changed.notified() => {}
        }
        tokio::time::sleep(COALESCE).await;
        let mut model = build(&pods, &namespaces, &policies, &td, default_mtls);
        if tx.borrow().same_content(&model) {
            continue; // nothing the proxies see changed (e.g. a status-only update)
        }
        version += 1;
        model.version = version;
        debug!(
            version,
            workloads = model.workloads.len(),
            policies = model.policies.len(),
            "cluster model rebuilt"
        );
        tx.send_replace(Arc::new(model));
    }
}

fn spawn_reflector<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    changed: Arc<Notify>,
    shutdown: CancellationToken,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + serde::de::DeserializeOwned
        + 'static,
{
    tokio::spawn(async move {
        let kind = K::kind(&()).to_string();
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
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
    info!("watching the cluster");
}

/// Builds a model from the current contents of the stores (pure apart from reading them).
fn build(
    pods: &Store<Pod>,
    namespaces: &Store<Namespace>,
    policies: &Store<AuthorizationPolicy>,
    td: &TrustDomain,
    default_mtls: MtlsMode,
) -> MeshModel {
    let mut workloads: Vec<Workload> = pods.state().iter().filter_map(|p| workload_of(p)).collect();
    workloads.sort_by_key(|w| (w.ip, w.port));
    let mut checked = Vec::new();
    for p in policies.state() {
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
    let namespace_mtls = namespaces
        .state()
        .iter()
        .filter_map(|ns| Some((ns.metadata.name.clone()?, mtls_of(ns)?)))
        .collect();
    MeshModel {
        version: 0,
        trust_domain: td.clone(),
        workloads,
        policies: checked,
        default_mtls,
        namespace_mtls,
    }
}

/// The workload a pod stands for, if it is meshed and has an IP.
pub fn workload_of(pod: &Pod) -> Option<Workload> {
    let meta = &pod.metadata;
    let injected = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(INJECTED))
        .is_some_and(|v| v == "true");
    if !injected {
        return None;
    }
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let ip: IpAddr = status.pod_ip.as_ref()?.parse().ok()?;
    let spec = pod.spec.as_ref()?;
    Some(Workload {
        namespace: meta.namespace.clone()?,
        service_account: spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into()),
        ip,
        port: 0,
        tunnel: SocketAddr::new(ip, TUNNEL_PORT),
        labels: meta.labels.clone().unwrap_or_default(),
    })
}

fn mtls_of(ns: &Namespace) -> Option<MtlsMode> {
    let pick = |m: &Option<BTreeMap<String, String>>| m.as_ref().and_then(|m| m.get(MTLS)).cloned();
    let value = pick(&ns.metadata.annotations).or_else(|| pick(&ns.metadata.labels))?;
    match value.to_ascii_uppercase().as_str() {
        "STRICT" => Some(MtlsMode::Strict),
        "PERMISSIVE" => Some(MtlsMode::Permissive),
        other => {
            warn!(namespace = ?ns.metadata.name, value = other, "unknown trellis.dev/mtls value ignored (STRICT or PERMISSIVE)");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn only_injected_running_pods_with_an_ip_are_workloads() {
        let base = serde_json::json!({
            "metadata": {"name": "b", "namespace": "shop", "labels": {"app": "backend"},
                         "annotations": {"trellis.dev/injected": "true"}},
            "spec": {"serviceAccountName": "backend", "containers": []},
            "status": {"phase": "Running", "podIP": "198.18.0.3"}
        });
        let w = workload_of(&pod(base.clone())).unwrap();
        assert_eq!(w.service_account, "backend");
        assert_eq!(w.tunnel, "198.18.0.3:15008".parse().unwrap());
        assert_eq!(w.labels["app"], "backend");

        let mut not_injected = base.clone();
        not_injected["metadata"]["annotations"] = serde_json::json!({});
        assert!(workload_of(&pod(not_injected)).is_none());
        let mut no_ip = base.clone();
        no_ip["status"] = serde_json::json!({"phase": "Pending"});
        assert!(workload_of(&pod(no_ip)).is_none());
        let mut done = base.clone();
        done["status"]["phase"] = "Succeeded".into();
        assert!(workload_of(&pod(done)).is_none());
        let mut default_sa = base;
        default_sa["spec"] = serde_json::json!({"containers": []});
        assert_eq!(
            workload_of(&pod(default_sa)).unwrap().service_account,
            "default"
        );
    }

    #[test]
    fn namespaces_override_the_mtls_mode_by_annotation_or_label() {
        let ns = |meta: serde_json::Value| -> Namespace {
            serde_json::from_value(serde_json::json!({"metadata": meta})).unwrap()
        };
        assert_eq!(
            mtls_of(&ns(
                serde_json::json!({"name": "a", "labels": {"trellis.dev/mtls": "permissive"}})
            )),
            Some(MtlsMode::Permissive)
        );
        assert_eq!(
            mtls_of(&ns(
                serde_json::json!({"name": "a", "annotations": {"trellis.dev/mtls": "STRICT"}})
            )),
            Some(MtlsMode::Strict)
        );
        assert_eq!(
            mtls_of(&ns(
                serde_json::json!({"name": "a", "labels": {"trellis.dev/mtls": "maybe"}})
            )),
            None
        );
        assert_eq!(mtls_of(&ns(serde_json::json!({"name": "a"}))), None);
    }
}
