//! Naming a pod the way kubectl does: `NAME`, `pod/NAME`, `deploy/NAME` (a ready pod of the
//! Deployment) or `-l SELECTOR` (a ready pod matching it), resolved to one pod name.
//!
//! Owns: parsing those forms ([`PodRef::parse`], pure) and resolving them through the API
//! server ([`resolve`]).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;

use crate::kube_access::{Fetched, KubeError, fetch, fetch_value, is_ready};

/// A pod as the user named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodRef {
    /// `NAME` or `pod/NAME`.
    Pod(String),
    /// `deploy/NAME`: a ready pod of that Deployment.
    Deployment(String),
    /// `-l SELECTOR`: a ready pod matching it.
    Selector(String),
}

/// Why a pod reference was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{0:?}: expected NAME, pod/NAME or deploy/NAME (or -l SELECTOR), with NAME a Kubernetes name"
)]
pub struct BadPodRef(pub String);

impl PodRef {
    /// Parses `NAME`, `pod/NAME` (also `po/`, `pods/`) or `deploy/NAME` (also `deployment/`,
    /// `deployments/`).
    pub fn parse(s: &str) -> Result<Self, BadPodRef> {
        let bad = || BadPodRef(s.to_owned());
        let (kind, name) = match s.split_once('/') {
            Some((kind, name)) => (Some(kind), name),
            None => (None, s),
        };
        let valid = !name.is_empty()
            && name.len() <= 253
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !valid {
            return Err(bad());
        }
        match kind {
            None | Some("pod" | "po" | "pods") => Ok(Self::Pod(name.to_owned())),
            Some("deploy" | "deployment" | "deployments") => Ok(Self::Deployment(name.to_owned())),
            Some(_) => Err(bad()),
        }
    }
}

/// The name of the pod `r` names in `pods`' namespace.
pub async fn resolve(pods: &Api<Pod>, namespace: &str, r: &PodRef) -> Result<String, KubeError> {
    let selector = match r {
        PodRef::Pod(name) => return Ok(name.clone()),
        PodRef::Selector(s) => s.clone(),
        PodRef::Deployment(name) => {
            let deployments: Api<Deployment> =
                Api::namespaced(pods.clone().into_client(), namespace);
            let deployment = match fetch(deployments.get_opt(name)).await {
                Fetched::Found(d) => d,
                Fetched::Missing => {
                    return Err(KubeError::Api(format!(
                        "deployment {namespace}/{name} not found"
                    )));
                }
                Fetched::Denied(m) | Fetched::Failed(m) => return Err(KubeError::Api(m)),
            };
            let labels = deployment
                .spec
                .and_then(|s| s.selector.match_labels)
                .unwrap_or_default();
            if labels.is_empty() {
                return Err(KubeError::Api(format!(
                    "deployment {namespace}/{name} selects its pods without matchLabels; name a pod instead"
                )));
            }
            labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        }
    };
    let list = match fetch_value(pods.list(&ListParams::default().labels(&selector))).await {
        Fetched::Found(list) => list.items,
        Fetched::Missing => Vec::new(),
        Fetched::Denied(m) | Fetched::Failed(m) => return Err(KubeError::Api(m)),
    };
    list.iter()
        .find(|p| is_ready(p))
        .or(list.first())
        .and_then(|p| p.metadata.name.clone())
        .ok_or_else(|| KubeError::Api(format!("no pod in {namespace} matches {selector}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_are_named_as_kubectl_names_them() {
        for (input, want) in [
            ("web-1", Ok(PodRef::Pod("web-1".into()))),
            ("pod/web-1", Ok(PodRef::Pod("web-1".into()))),
            ("po/web-1", Ok(PodRef::Pod("web-1".into()))),
            ("deploy/web", Ok(PodRef::Deployment("web".into()))),
            ("deployment/web", Ok(PodRef::Deployment("web".into()))),
            ("svc/web", Err(BadPodRef("svc/web".into()))),
            ("pod/", Err(BadPodRef("pod/".into()))),
            ("Web", Err(BadPodRef("Web".into()))),
            ("a/b/c", Err(BadPodRef("a/b/c".into()))),
        ] {
            assert_eq!(PodRef::parse(input), want, "{input}");
        }
    }
}
