//! The JSON Patch (RFC 6902) that injects a pod: where [`crate::containers`]' pieces go, in
//! operations that are valid against the pod exactly as the API server sent it (lists and maps
//! that may be absent are created whole, keys are JSON-Pointer escaped: `trellis.dev/injected`
//! is `trellis.dev~1injected`).
//!
//! Pure: a pod and an [`InjectConfig`] in, a patch (or why not) out. Whether to inject at all
//! is [`crate::decide`]'s call, made before this runs; which app probes move to the proxy is
//! [`crate::probes`]'.

use std::collections::BTreeMap;

use json_patch::{AddOperation, Patch, PatchOperation, jsonptr::PointerBuf};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use serde::Serialize;

use crate::{
    annotations::{self, AnnotationError, PodOverrides},
    config::InjectConfig,
    containers::{self, ProxyLayout},
    probes,
};

/// Why a pod that should be injected cannot be; it is admitted unchanged, with this as a
/// warning.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PatchError {
    /// A `trellis.dev/*` annotation has a bad value.
    #[error("trellis: pod not injected: {0}")]
    Annotation(#[from] AnnotationError),
    /// The pod has no `spec` (the API server never sends that for a CREATE).
    #[error("trellis: pod not injected: the pod has no spec")]
    NoSpec,
    /// The pod already uses a name the injection needs.
    #[error(
        "trellis: pod not injected: it already has a {what} named {name:?}, which the injection adds"
    )]
    NameTaken {
        /// `"container"` or `"volume"`.
        what: &'static str,
        /// The name.
        name: &'static str,
    },
    /// A value could not be turned into JSON (does not happen with k8s-openapi types).
    #[error("trellis: pod not injected: cannot encode the patch: {0}")]
    Encode(#[from] serde_json::Error),
}

/// What injecting one pod takes.
#[derive(Debug, Clone)]
pub struct Injection {
    /// The JSON Patch.
    pub patch: Patch,
    /// Where the proxy went.
    pub layout: ProxyLayout,
    /// Admission warnings (probes that could not be rewritten).
    pub warnings: Vec<String>,
}

/// The patch that injects `pod` with `config`.
pub fn build(pod: &Pod, config: &InjectConfig) -> Result<Injection, PatchError> {
    let spec = pod.spec.as_ref().ok_or(PatchError::NoSpec)?;
    check_names_free(spec)?;
    let overrides = PodOverrides::from_pod(pod)?;
    let layout = ProxyLayout::of(config);
    let resources = containers::resources(&config.resources, &overrides);
    let init = containers::init_container(config, &overrides, resources.clone());
    let mut proxy = containers::proxy_container(config, &overrides, resources, layout);

    // App probes first: their operations use the container indexes of the pod as sent.
    let rewrite_probes = overrides
        .rewrite_app_probes
        .unwrap_or(config.rewrite_app_probes);
    let probes = if rewrite_probes {
        probes::plan(spec, layout)
    } else {
        probes::Plan::default()
    };
    if !probes.rewrites.is_empty() {
        proxy
            .env
            .get_or_insert_with(Vec::new)
            .push(probes::env_var(&probes.originals())?);
    }
    let mut ops = probes.operations()?;

    // Init containers: the redirection first, so that even the pod's own init containers run
    // with it; then, as a native sidecar, the proxy, so they can use the mesh.
    let mut front: Vec<&Container> = vec![&init];
    if layout == ProxyLayout::NativeSidecar {
        front.push(&proxy);
    }
    match spec.init_containers.as_ref() {
        None => ops.push(add(&["spec", "initContainers"], &front)?),
        Some(_) => {
            for (index, container) in front.iter().enumerate() {
                ops.push(add_at(&["spec", "initContainers"], index, container)?);
            }
        }
    }
    if layout == ProxyLayout::FirstContainer {
        // First, so the kubelet runs its postStart hook (which waits for readiness) before it
        // starts the application's containers.
        ops.push(add_at(&["spec", "containers"], 0, &proxy)?);
    }

    let volume = containers::token_volume();
    match spec.volumes.as_ref() {
        None => ops.push(add(&["spec", "volumes"], &[volume])?),
        Some(_) => ops.push(add(&["spec", "volumes", "-"], &volume)?),
    }

    let probes_marker = if rewrite_probes {
        annotations::APP_PROBES_REWRITTEN
    } else {
        annotations::APP_PROBES_KEPT
    };
    let mut new_annotations = vec![
        (annotations::INJECTED, "true"),
        (annotations::APP_PROBES, probes_marker),
    ];
    if layout == ProxyLayout::FirstContainer
        && annotations::get(pod, annotations::KUBECTL_DEFAULT_CONTAINER).is_none()
        && let Some(app) = spec.containers.first()
    {
        new_annotations.push((annotations::KUBECTL_DEFAULT_CONTAINER, app.name.as_str()));
    }
    add_to_map(
        &mut ops,
        "annotations",
        pod.metadata.annotations.as_ref(),
        &new_annotations,
    )?;
    add_to_map(
        &mut ops,
        "labels",
        pod.metadata.labels.as_ref(),
        &[(annotations::MESH_LABEL, "true")],
    )?;

    Ok(Injection {
        patch: Patch(ops),
        layout,
        warnings: probes.warnings,
    })
}

/// Refuses a pod that already has something named like what we add (it is not ours: a pod
/// with our proxy is "already injected" and never gets here).
fn check_names_free(spec: &PodSpec) -> Result<(), PatchError> {
    let container_names = || {
        let regular = spec.containers.iter().map(|c| c.name.as_str());
        let init = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.name.as_str());
        let ephemeral = spec
            .ephemeral_containers
            .iter()
            .flatten()
            .map(|c| c.name.as_str());
        regular.chain(init).chain(ephemeral)
    };
    for name in [containers::INIT_NAME, containers::PROXY_NAME] {
        if container_names().any(|n| n == name) {
            return Err(PatchError::NameTaken {
                what: "container",
                name,
            });
        }
    }
    if spec
        .volumes
        .iter()
        .flatten()
        .any(|v| v.name == containers::TOKEN_VOLUME)
    {
        return Err(PatchError::NameTaken {
            what: "volume",
            name: containers::TOKEN_VOLUME,
        });
    }
    Ok(())
}

/// Adds `entries` under `/metadata/<map>`: the whole map when the pod has none, else one
/// `add` per key (which replaces an existing value).
fn add_to_map(
    ops: &mut Vec<PatchOperation>,
    map: &str,
    existing: Option<&BTreeMap<String, String>>,
    entries: &[(&str, &str)],
) -> Result<(), PatchError> {
    match existing {
        None => {
            let whole: BTreeMap<&str, &str> = entries.iter().copied().collect();
            ops.push(add(&["metadata", map], &whole)?);
        }
        Some(_) => {
            for (key, value) in entries {
                ops.push(add(&["metadata", map, key], value)?);
            }
        }
    }
    Ok(())
}

fn add(path: &[&str], value: &impl Serialize) -> Result<PatchOperation, PatchError> {
    Ok(PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(path.iter().copied()),
        value: serde_json::to_value(value)?,
    }))
}

fn add_at(
    list: &[&str],
    index: usize,
    value: &impl Serialize,
) -> Result<PatchOperation, PatchError> {
    let mut path = PointerBuf::from_tokens(list.iter().copied());
    path.push_back(index);
    Ok(PatchOperation::Add(AddOperation {
        path,
        value: serde_json::to_value(value)?,
    }))
}

#[cfg(test)]
mod tests;
