//! The `AuthorizationPolicy` custom resource (`trellis.dev/v1alpha1`, namespaced) and its
//! conversion into the checked [`Policy`] the rest of the control plane uses.
//!
//! Owns: the Rust type the CRD YAML in `charts/trellis/files/` is generated from (a test fails
//! if the chart's copy drifts; the chart's `templates/crds.yaml` renders it), the OpenAPI
//! schema that lets the API server reject malformed policies, what `kubectl explain` and
//! `kubectl get` show, and the same checks done again here for policies from a mesh file.
//!
//! Names: the short name is `tauthz` ("Trellis authz"). `tap` was taken by Linkerd's
//! vocabulary (`linkerd viz tap`), and Istio's `AuthorizationPolicy` shares our kind and
//! plural, so with both installed `kubectl get authorizationpolicies` is ambiguous while
//! `kubectl get tauthz` is not. The category `trellis` makes `kubectl get trellis` list them.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use trellis_ca::{IdentityPattern, TrustDomain};

/// Which pods, which ports, which identities, and whether to enforce.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "trellis.dev",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    namespaced,
    shortname = "tauthz",
    category = "trellis",
    doc = "An allow-list of workload identities for the meshed pods it selects in its namespace. Once a pod is selected by at least one policy in enforce mode, its Trellis sidecar accepts a mesh connection only if a policy covering the target port lists the caller's SPIFFE ID (exactly, or by an ns/<ns>/sa/* or ns/<ns>/* wildcard); ports no policy covers are refused too. A policy in audit mode refuses nothing and records what it would refuse. A pod selected by no policy accepts any identity of the mesh's trust domain. Refusals appear in the sidecar's log (kubectl logs -c trellis-proxy) and in trellis inspect.",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode","description":"enforce or audit"}"#,
    printcolumn = r#"{"name":"Selector","type":"string","jsonPath":".spec.selector.matchLabels","description":"labels of the pods it applies to (empty: every pod of the namespace)"}"#,
    printcolumn = r#"{"name":"Ports","type":"string","jsonPath":".spec.ports","priority":1,"description":"target ports covered (empty: every port)"}"#,
    printcolumn = r#"{"name":"Allow","type":"string","jsonPath":".spec.allow","priority":1,"description":"identities allowed"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// Pods of the policy's namespace it applies to (all pods when empty).
    #[serde(default)]
    pub selector: PolicySelector,
    /// Target ports the policy covers; empty or absent means every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "ports_schema")]
    pub ports: Vec<u16>,
    /// Identities allowed: `spiffe://<td>/ns/<ns>/sa/<sa>`, `spiffe://<td>/ns/<ns>/sa/*`,
    /// `spiffe://<td>/ns/<ns>/*`, or the same without `spiffe://<td>/` (this trust domain).
    #[schemars(schema_with = "allow_schema")]
    pub allow: Vec<String>,
    /// `enforce` refuses everything else; `audit` only records what it would refuse.
    #[serde(default)]
    pub mode: PolicyMode,
}

/// A label selector over pods of the policy's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicySelector {
    /// Every label listed must be present with this value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

/// Enforce or audit.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    /// Refuse what is not allowed.
    #[default]
    Enforce,
    /// Record what would be refused; refuse nothing.
    Audit,
}

/// One allow-list entry as the API server checks it. Kept in step with
/// [`IdentityPattern::parse`] by the test `schema_pattern_agrees_with_the_parser`.
pub const ALLOW_PATTERN: &str = r"^(spiffe://[a-z0-9._-]+/([A-Za-z0-9._-]+/)*[A-Za-z0-9._-]+|(spiffe://[a-z0-9._-]+/)?ns/[A-Za-z0-9._-]+/(sa/([A-Za-z0-9._-]+|\*)|\*)|ns/[A-Za-z0-9._-]+/sa/[A-Za-z0-9._-]+)$";

fn ports_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": { "type": "integer", "minimum": 1, "maximum": 65535 },
        "maxItems": 64,
        "x-kubernetes-list-type": "set"
    })
}

fn allow_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": { "type": "string", "pattern": ALLOW_PATTERN, "maxLength": 2048 },
        "maxItems": 256,
        "x-kubernetes-list-type": "set"
    })
}

/// A policy whose every field has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Namespace of the policy (it selects pods of this namespace only).
    pub namespace: String,
    /// Name of the policy.
    pub name: String,
    /// Labels a pod must have.
    pub match_labels: BTreeMap<String, String>,
    /// Ports covered (empty: all).
    pub ports: Vec<u16>,
    /// Who is allowed.
    pub allow: Vec<IdentityPattern>,
    /// Enforce or audit.
    pub mode: PolicyMode,
}

/// Why a policy object is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("AuthorizationPolicy {namespace}/{name}: {reason}")]
pub struct PolicyError {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// What is wrong.
    pub reason: String,
}

impl Policy {
    /// Checks a policy object; `td` reads the short `ns/...` forms.
    pub fn from_resource(p: &AuthorizationPolicy, td: &TrustDomain) -> Result<Self, PolicyError> {
        let namespace = p.metadata.namespace.clone().unwrap_or_default();
        let name = p.metadata.name.clone().unwrap_or_default();
        let err = |reason: String| PolicyError {
            namespace: namespace.clone(),
            name: name.clone(),
            reason,
        };
        if namespace.is_empty() || name.is_empty() {
            return Err(err(
                "metadata.name and metadata.namespace are required".into()
            ));
        }
        if let Some(bad) = p.spec.ports.iter().find(|p| **p == 0) {
            return Err(err(format!("spec.ports: {bad} is not a port (1-65535)")));
        }
        let allow = p
            .spec
            .allow
            .iter()
            .enumerate()
            .map(|(i, a)| {
                IdentityPattern::parse(a, td).map_err(|e| err(format!("spec.allow[{i}]: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            namespace,
            name,
            match_labels: p.spec.selector.match_labels.clone(),
            ports: p.spec.ports.clone(),
            allow,
            mode: p.spec.mode,
        })
    }

    /// A policy with `p`'s selector that allows nobody: what an invalid policy becomes, so
    /// that a mistake never opens a workload up.
    pub fn deny_all_like(p: &AuthorizationPolicy, reason: &str) -> Self {
        Self {
            namespace: p.metadata.namespace.clone().unwrap_or_default(),
            name: format!(
                "{} (invalid: {reason})",
                p.metadata.name.clone().unwrap_or_default()
            ),
            match_labels: p.spec.selector.match_labels.clone(),
            ports: Vec::new(),
            allow: Vec::new(),
            mode: PolicyMode::Enforce,
        }
    }

    /// Whether the policy selects a pod of `namespace` with `labels`.
    pub fn selects(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.namespace == namespace
            && self
                .match_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// The CRD as YAML, as it is committed in `charts/trellis/files/authorizationpolicies.yaml`.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let header = "# Generated from control-plane/src/mesh/crd.rs by the test\n\
                  # `crd_in_the_chart_is_generated_from_the_rust_type`; do not edit by hand.\n\
                  # Regenerate: TRELLIS_REGENERATE_CRD=1 cargo test -p trellis-control-plane crd\n";
    let body = serde_saphyr::to_string(&AuthorizationPolicy::crd()).unwrap_or_default();
    format!("{header}{body}")
}

#[cfg(test)]
#[path = "crd_tests.rs"]
mod tests;
