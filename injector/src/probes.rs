//! The app probe rewrite (Istio's "app probe rewrite"): kubelet's `httpGet`, `tcpSocket` and
//! `grpc` probes reach the app in plaintext from the node, which STRICT mTLS refuses. So each
//! such liveness, readiness and startup probe of an app container becomes an `httpGet` of
//! `/app-health/<container>/<livez|readyz|startupz>` on the proxy's health port (15020), with
//! the same timing fields; the original, its named port resolved against the container's
//! ports, goes to the proxy in `TRELLIS_APP_PROBES` (JSON keyed by path, Kubernetes' field
//! names), and the proxy runs it against the app on kubelet's behalf.
//!
//! - Idempotent: a probe already on 15020 at `/app-health/` is left alone, so a reinvoked
//!   webhook or a copied pod is not rewritten twice; probes added by a later webhook are
//!   rewritten on reinvocation ([`reinvocation`]) and merged into the proxy's variable.
//! - Left alone: exec probes (they run inside the container), the proxy's own probes, probes
//!   whose named port the container does not declare (with a warning: kubelet cannot resolve it
//!   either), every probe of a pod that opts out (`trellis.dev/rewrite-app-probes: "false"`).
//! - App init containers with `restartPolicy: Always` (native sidecars of the app) are
//!   rewritten only when the proxy is a native sidecar too, started before them; in the
//!   classic layout the proxy starts after them and their rewritten probes could never pass.
//!
//! Pure: a pod in, a [`Plan`] or patch operations out. Whether to inject is [`crate::decide`]'s.

use std::collections::BTreeMap;

use json_patch::{AddOperation, PatchOperation, ReplaceOperation, jsonptr::PointerBuf};
use k8s_openapi::api::core::v1::{Container, EnvVar, HTTPGetAction, PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use crate::containers::{self, HEALTH_PORT, ProxyLayout};

/// The proxy's variable with the original probes.
pub const APP_PROBES_ENV: &str = "TRELLIS_APP_PROBES";
/// Every rewritten probe's path starts with this.
pub const PATH_PREFIX: &str = "/app-health/";

/// Which probe of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProbeKind {
    /// `livenessProbe` → `livez`.
    Liveness,
    /// `readinessProbe` → `readyz`.
    Readiness,
    /// `startupProbe` → `startupz`.
    Startup,
}

impl ProbeKind {
    /// All three.
    pub const ALL: [ProbeKind; 3] = [Self::Liveness, Self::Readiness, Self::Startup];

    /// The container field.
    pub fn field(self) -> &'static str {
        match self {
            Self::Liveness => "livenessProbe",
            Self::Readiness => "readinessProbe",
            Self::Startup => "startupProbe",
        }
    }

    /// The last segment of its path on 15020.
    pub fn segment(self) -> &'static str {
        match self {
            Self::Liveness => "livez",
            Self::Readiness => "readyz",
            Self::Startup => "startupz",
        }
    }

    /// The probe of this kind in `c`.
    pub fn of(self, c: &Container) -> Option<&Probe> {
        match self {
            Self::Liveness => c.liveness_probe.as_ref(),
            Self::Readiness => c.readiness_probe.as_ref(),
            Self::Startup => c.startup_probe.as_ref(),
        }
    }
}

/// The path on 15020 that stands for `kind` of `container`.
pub fn path(container: &str, kind: ProbeKind) -> String {
    format!("{PATH_PREFIX}{container}/{}", kind.segment())
}

/// What becomes of one probe.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Moved to the proxy: the original for `TRELLIS_APP_PROBES` (named port resolved).
    Rewrite(Value),
    /// Already points at the proxy's `/app-health/`: nothing to do.
    AlreadyRewritten,
    /// Needs no rewrite (exec, or no handler).
    NotNeeded,
    /// Should be rewritten but cannot: the reason, for a warning.
    Cannot(String),
}

/// What becomes of `probe` of `container` (pure; the rules of the module's header).
pub fn verdict(probe: &Probe, container: &Container) -> Verdict {
    if let Some(h) = &probe.http_get {
        if h.port == IntOrString::Int(HEALTH_PORT)
            && h.path
                .as_deref()
                .is_some_and(|p| p.starts_with(PATH_PREFIX))
        {
            return Verdict::AlreadyRewritten;
        }
        let port = match resolve(&h.port, container) {
            Ok(p) => p,
            Err(e) => return Verdict::Cannot(e),
        };
        let original = HTTPGetAction {
            port: IntOrString::Int(port),
            ..h.clone()
        };
        return Verdict::Rewrite(with_timeout(json!({"httpGet": original}), probe));
    }
    if let Some(t) = &probe.tcp_socket {
        return match resolve(&t.port, container) {
            Ok(port) => {
                let mut tcp = json!({"port": port});
                if let Some(host) = t.host.as_deref().filter(|h| !h.is_empty()) {
                    tcp["host"] = json!(host);
                }
                Verdict::Rewrite(with_timeout(json!({"tcpSocket": tcp}), probe))
            }
            Err(e) => Verdict::Cannot(e),
        };
    }
    if let Some(g) = &probe.grpc {
        let grpc = json!({"port": g.port, "service": g.service.clone().unwrap_or_default()});
        return Verdict::Rewrite(with_timeout(json!({"grpc": grpc}), probe));
    }
    Verdict::NotNeeded
}

fn with_timeout(mut action: Value, probe: &Probe) -> Value {
    if let Some(t) = probe.timeout_seconds {
        action["timeoutSeconds"] = json!(t);
    }
    action
}

/// A probe port as kubelet resolves it: a number, or the name of one of the container's ports.
fn resolve(port: &IntOrString, container: &Container) -> Result<i32, String> {
    match port {
        IntOrString::Int(p) => Ok(*p),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port)
            .ok_or_else(|| format!("its port {name:?} is not a named port of the container")),
    }
}

/// `probe` as the proxy's health port serves it: the same timing fields, an `httpGet` of `path`
/// on 15020.
pub fn replacement(probe: &Probe, path: String) -> Probe {
    Probe {
        exec: None,
        tcp_socket: None,
        grpc: None,
        http_get: Some(HTTPGetAction {
            path: Some(path),
            port: IntOrString::Int(HEALTH_PORT),
            scheme: Some("HTTP".to_owned()),
            host: None,
            http_headers: None,
        }),
        ..probe.clone()
    }
}

/// Which list of the pod spec a container is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum List {
    /// `spec.containers`.
    Containers,
    /// `spec.initContainers`.
    InitContainers,
}

impl List {
    /// Its field name (a JSON Pointer token).
    pub fn field(self) -> &'static str {
        match self {
            Self::Containers => "containers",
            Self::InitContainers => "initContainers",
        }
    }
}

/// One probe moved to the proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct Rewrite {
    /// Where its container is.
    pub list: List,
    /// Its container's index in that list (of the pod as sent).
    pub index: usize,
    /// Which probe.
    pub kind: ProbeKind,
    /// Its path on 15020.
    pub path: String,
    /// The original, for `TRELLIS_APP_PROBES`.
    pub original: Value,
    /// What replaces it.
    pub replacement: Probe,
}

/// What the rewrite does to a pod.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// The probes moved to the proxy.
    pub rewrites: Vec<Rewrite>,
    /// Admission warnings for probes that should move but cannot.
    pub warnings: Vec<String>,
}

impl Plan {
    /// The originals keyed by path: the value of `TRELLIS_APP_PROBES`.
    pub fn originals(&self) -> BTreeMap<String, Value> {
        self.rewrites
            .iter()
            .map(|r| (r.path.clone(), r.original.clone()))
            .collect()
    }

    /// The operations that put each replacement in place (valid against the pod as sent).
    pub fn operations(&self) -> Result<Vec<PatchOperation>, serde_json::Error> {
        self.rewrites
            .iter()
            .map(|r| {
                let index = r.index.to_string();
                let tokens = ["spec", r.list.field(), index.as_str(), r.kind.field()];
                Ok(PatchOperation::Add(AddOperation {
                    path: PointerBuf::from_tokens(tokens),
                    value: serde_json::to_value(&r.replacement)?,
                }))
            })
            .collect()
    }
}

/// Which probes of `spec` move to the proxy, with the proxy in `layout`. The proxy's own
/// container (by name) is never touched.
pub fn plan(spec: &PodSpec, layout: ProxyLayout) -> Plan {
    let mut plan = Plan::default();
    let regular = spec.containers.iter().map(|c| (List::Containers, c));
    // Native sidecars of the app, only when ours starts before them.
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|_| layout == ProxyLayout::NativeSidecar)
        .map(|c| (List::InitContainers, c));
    let mut indexes: BTreeMap<&'static str, usize> = BTreeMap::new();
    for (list, c) in regular.chain(init) {
        let slot = indexes.entry(list.field()).or_default();
        let index = *slot;
        *slot += 1;
        if c.name == containers::PROXY_NAME
            || (list == List::InitContainers && c.restart_policy.as_deref() != Some("Always"))
        {
            continue;
        }
        for kind in ProbeKind::ALL {
            let Some(probe) = kind.of(c) else { continue };
            match verdict(probe, c) {
                Verdict::Rewrite(original) => {
                    let path = path(&c.name, kind);
                    plan.rewrites.push(Rewrite {
                        list,
                        index,
                        kind,
                        replacement: replacement(probe, path.clone()),
                        path,
                        original,
                    });
                }
                Verdict::Cannot(why) => plan.warnings.push(format!(
                    "trellis: {} of container {:?} not rewritten to the proxy: {why}",
                    kind.field(),
                    c.name
                )),
                Verdict::AlreadyRewritten | Verdict::NotNeeded => {}
            }
        }
    }
    plan
}

/// The probes of `spec`'s app containers (and of the app's native sidecars) that kubelet sends
/// straight to the app, in plaintext, as `container/field`: what STRICT mTLS refuses. Empty for
/// a pod whose probes were all rewritten (or are exec probes).
pub fn plaintext_probes(spec: &PodSpec) -> Vec<String> {
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    spec.containers
        .iter()
        .chain(sidecars)
        .filter(|c| c.name != containers::PROXY_NAME)
        .flat_map(|c| {
            ProbeKind::ALL.into_iter().filter_map(move |kind| {
                let plaintext = matches!(
                    verdict(kind.of(c)?, c),
                    Verdict::Rewrite(_) | Verdict::Cannot(_)
                );
                plaintext.then(|| format!("{}/{}", c.name, kind.field()))
            })
        })
        .collect()
}

/// The proxy's `TRELLIS_APP_PROBES` variable for `originals`.
pub fn env_var(originals: &BTreeMap<String, Value>) -> Result<EnvVar, serde_json::Error> {
    Ok(EnvVar {
        name: APP_PROBES_ENV.to_owned(),
        value: Some(serde_json::to_string(originals)?),
        value_from: None,
    })
}

/// Why a reinvocation cannot rewrite.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReinvocationError {
    /// The proxy's variable is not the JSON object this module writes.
    #[error(
        "trellis: app probes added since injection not rewritten: the proxy's {APP_PROBES_ENV} is not a JSON object ({0})"
    )]
    BadVariable(String),
    /// A value could not be turned into JSON (does not happen with k8s-openapi types).
    #[error("trellis: cannot encode the probe patch: {0}")]
    Encode(#[from] serde_json::Error),
}

/// For an already injected pod whose probes were rewritten at injection: the operations that
/// rewrite probes added since (by a later webhook) and merge their originals into the proxy's
/// variable. Empty when there is nothing new. (Probes that cannot be rewritten were warned
/// about at injection.)
pub fn reinvocation(spec: &PodSpec) -> Result<Vec<PatchOperation>, ReinvocationError> {
    let found = spec
        .init_containers
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, c)| (List::InitContainers, i, c))
        .chain(
            spec.containers
                .iter()
                .enumerate()
                .map(|(i, c)| (List::Containers, i, c)),
        )
        .find(|(_, _, c)| c.name == containers::PROXY_NAME);
    let Some((list, index, proxy)) = found else {
        return Ok(Vec::new());
    };
    let layout = match list {
        List::InitContainers => ProxyLayout::NativeSidecar,
        List::Containers => ProxyLayout::FirstContainer,
    };
    let plan = plan(spec, layout);
    if plan.rewrites.is_empty() {
        return Ok(Vec::new());
    }
    let env = proxy.env.as_deref().unwrap_or_default();
    let existing = env.iter().position(|e| e.name == APP_PROBES_ENV);
    let mut merged: BTreeMap<String, Value> =
        match existing.and_then(|j| env.get(j)?.value.as_deref()) {
            None | Some("") => BTreeMap::new(),
            Some(text) => serde_json::from_str(text)
                .map_err(|e| ReinvocationError::BadVariable(e.to_string()))?,
        };
    merged.extend(plan.originals());
    let var = env_var(&merged)?;
    let mut ops = plan.operations()?;
    let index = index.to_string();
    let env_path = ["spec", list.field(), index.as_str(), "env"];
    ops.push(match (existing, proxy.env.is_some()) {
        // An array index: `add` would insert, so the entry is replaced.
        (Some(j), _) => PatchOperation::Replace(ReplaceOperation {
            path: PointerBuf::from_tokens(env_path.iter().copied().chain([j.to_string().as_str()])),
            value: serde_json::to_value(&var)?,
        }),
        (None, true) => PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(env_path.iter().copied().chain(["-"])),
            value: serde_json::to_value(&var)?,
        }),
        (None, false) => PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(env_path),
            value: serde_json::to_value([&var])?,
        }),
    });
    Ok(ops)
}

#[cfg(test)]
mod tests;
