//! Pods and Namespaces as the mesh sees them: which pods are meshed workloads (annotated
//! `trellis.dev/injected: "true"`, with an IP, not finished) and a namespace's mTLS override
//! (`trellis.dev/mtls` label or annotation); and the few fields of a pod the control plane
//! keeps ([`slim`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::{Namespace, Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tracing::warn;

use crate::mesh::model::{MtlsMode, TUNNEL_PORT, Workload};

/// Annotation set by injection.
pub const INJECTED: &str = "trellis.dev/injected";
/// Namespace label or annotation overriding the mesh's mTLS mode.
pub const MTLS: &str = "trellis.dev/mtls";

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

/// The pod reduced to what the control plane reads — [`workload_of`] (namespace, labels, the
/// injection annotation, ServiceAccount, phase, IP) and the node agents (name, uid, node) —
/// plus its resourceVersion. The reflector stores pods so: an injected pod is ~7 KB of JSON
/// and several times that as objects, and at 10,000 pods the whole objects were most of the
/// control plane's memory.
pub fn slim(pod: &mut Pod) {
    let meta = std::mem::take(&mut pod.metadata);
    let injected = meta
        .annotations
        .and_then(|mut a| a.remove_entry(INJECTED))
        .map(|entry| BTreeMap::from([entry]));
    pod.metadata = ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        resource_version: meta.resource_version,
        labels: meta.labels,
        annotations: injected,
        ..ObjectMeta::default()
    };
    pod.spec = pod.spec.take().map(|spec| PodSpec {
        service_account_name: spec.service_account_name,
        node_name: spec.node_name,
        ..PodSpec::default()
    });
    pod.status = pod.status.take().map(|status| PodStatus {
        phase: status.phase,
        pod_ip: status.pod_ip,
        ..PodStatus::default()
    });
}

pub fn mtls_of(ns: &Namespace) -> Option<MtlsMode> {
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
    fn a_slim_pod_keeps_what_the_mesh_and_node_agents_read_and_little_else() {
        let list: serde_json::Value =
            serde_json::from_str(include_str!("../../../../testdata/services/pods-list.json"))
                .unwrap();
        let items = list["items"].as_array().unwrap();
        assert!(!items.is_empty());
        for item in items {
            let full = pod(item.clone());
            let mut slimmed = full.clone();
            slim(&mut slimmed);
            assert_eq!(workload_of(&slimmed), workload_of(&full));
            let (m, s) = (&slimmed.metadata, slimmed.spec.as_ref());
            assert_eq!(m.name, full.metadata.name);
            assert_eq!(m.uid, full.metadata.uid);
            assert_eq!(m.resource_version, full.metadata.resource_version);
            let full_spec = full.spec.as_ref();
            assert_eq!(
                s.and_then(|s| s.node_name.as_ref()),
                full_spec.and_then(|s| s.node_name.as_ref())
            );
            assert_eq!(
                s.and_then(|s| s.service_account_name.as_ref()),
                full_spec.and_then(|s| s.service_account_name.as_ref())
            );
            assert!(s.is_none_or(|s| s.containers.is_empty() && s.volumes.is_none()));
            let size = |p: &Pod| serde_json::to_vec(p).unwrap().len();
            assert!(
                size(&slimmed) * 4 < size(&full),
                "{} of {} bytes kept",
                size(&slimmed),
                size(&full)
            );
        }
        let mut not_injected = pod(serde_json::json!({
            "metadata": {"name": "a", "annotations": {"other": "x"}}
        }));
        slim(&mut not_injected);
        assert_eq!(not_injected.metadata.annotations, None);
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
