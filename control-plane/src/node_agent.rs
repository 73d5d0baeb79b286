//! Node agents asking for the identities of the pods they serve, as Istio's ambient ztunnel
//! does: it authenticates as itself and names the pod's identity in the `ImpersonatedIdentity`
//! field of `CreateCertificate`'s metadata. istiod's rule (its `NodeAuthorizer`) is kept:
//!
//! 1. the caller's identity is one of the configured node agents (`--node-agents`; istiod's
//!    `CA_TRUSTED_NODE_ACCOUNTS`);
//! 2. the caller's token is bound to a pod, and that pod is known with the same UID and service
//!    account (a re-created pod of the same name is not the caller);
//! 3. some pod on the caller's node runs as the requested identity.
//!
//! Owns: [`NodeAgents`], [`decide`] (pure, over a [`NodePods`] view) and
//! [`ImpersonationError`], whose messages name the rule that refused. Without the metadata
//! nothing changes: the identity comes from authentication.

use k8s_openapi::api::core::v1::Pod;
use trellis_ca::{SpiffeId, SpiffeIdError, TrustDomain};

use crate::attest::Attested;
use crate::mesh::kubernetes::PodIndex;

/// The key of the request metadata naming the identity asked for (Istio's name).
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// Why a node agent may not have the identity it asked for. Every message names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ImpersonationError {
    /// The `ImpersonatedIdentity` value is not a SPIFFE ID of this trust domain.
    #[error("ImpersonatedIdentity {value:?} is not a SPIFFE ID of this trust domain: {reason}")]
    InvalidIdentity {
        /// The value sent.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Rule 1: the caller is not a configured node agent.
    #[error(
        "{caller} may not ask for other identities: only node agents (--node-agents) may send ImpersonatedIdentity"
    )]
    NotANodeAgent {
        /// The authenticated caller.
        caller: SpiffeId,
    },
    /// Rule 2: the caller's token names no pod (not a pod-bound projected token, or local mode).
    #[error(
        "{caller} is a node agent, but its token is not bound to a pod, so its node is unknown; \
         use a projected ServiceAccount token of the node agent's pod"
    )]
    NotPodBound {
        /// The authenticated caller.
        caller: SpiffeId,
    },
    /// Rule 2: the caller's pod is not known as the token describes it (not found yet, or
    /// re-created with another UID); the caller may retry.
    #[error("the node agent's pod {pod} is not known with {expected}; retry once it is running")]
    CallerPodUnknown {
        /// `namespace/name` of the pod the token is bound to.
        pod: String,
        /// What the token says about it (UID, service account).
        expected: String,
    },
    /// Rule 3: no pod on the caller's node runs as the requested identity.
    #[error("no pod on node {node:?} (the node agent's) runs as {requested}")]
    NotOnNode {
        /// The identity asked for.
        requested: SpiffeId,
        /// The caller's node.
        node: String,
    },
}

impl ImpersonationError {
    /// A short stable label for the refusal metric.
    pub fn reason(&self) -> &'static str {
        match self {
            ImpersonationError::InvalidIdentity { .. } => "impersonation_invalid_identity",
            ImpersonationError::NotANodeAgent { .. } => "impersonation_not_node_agent",
            ImpersonationError::NotPodBound { .. } => "impersonation_not_pod_bound",
            ImpersonationError::CallerPodUnknown { .. } => "impersonation_caller_pod_unknown",
            ImpersonationError::NotOnNode { .. } => "impersonation_not_on_node",
        }
    }
}

/// What the decision needs to know about one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFacts {
    /// Its UID.
    pub uid: String,
    /// The SPIFFE ID it runs as (namespace + service account).
    pub id: SpiffeId,
    /// The node it is scheduled on, if any.
    pub node: Option<String>,
}

/// A view of the cluster's pods.
pub trait NodePods {
    /// The pod `namespace/name`, if known.
    fn pod(&self, namespace: &str, name: &str) -> Option<PodFacts>;
    /// Whether a pod that is not finished runs as `id` on `node`.
    fn runs_on(&self, node: &str, id: &SpiffeId) -> bool;
}

/// The identities allowed to ask for others (`--node-agents`), and the pods they may ask for.
#[derive(Debug, Clone)]
pub struct NodeAgents {
    /// The node agents' identities; empty: nobody may impersonate.
    agents: Vec<SpiffeId>,
    /// Requested identities must be of this trust domain.
    trust_domain: TrustDomain,
    /// The cluster's pods (Kubernetes mode only).
    pods: Option<PodIndex>,
}

impl NodeAgents {
    /// Node agents `agents`, deciding over `pods` (`None` in local mode: every request with
    /// `ImpersonatedIdentity` is then refused by rule 1 or 2).
    pub fn new(agents: Vec<SpiffeId>, trust_domain: TrustDomain, pods: Option<PodIndex>) -> Self {
        Self {
            agents,
            trust_domain,
            pods,
        }
    }

    /// The identity `caller` may have a certificate for when it asks for `requested`.
    pub fn authorize(
        &self,
        caller: &Attested,
        requested: &str,
    ) -> Result<SpiffeId, ImpersonationError> {
        let td = &self.trust_domain;
        match &self.pods {
            Some(index) => decide(
                caller,
                requested,
                td,
                &self.agents,
                &ClusterPods { index, td },
            ),
            None => decide(caller, requested, td, &self.agents, &NoPods),
        }
    }
}

/// The reflector's pods, read as [`PodFacts`] of one trust domain.
struct ClusterPods<'a> {
    /// The pods.
    index: &'a PodIndex,
    /// Their identities' trust domain.
    td: &'a TrustDomain,
}

/// No pods known (local mode).
struct NoPods;

impl NodePods for NoPods {
    fn pod(&self, _: &str, _: &str) -> Option<PodFacts> {
        None
    }
    fn runs_on(&self, _: &str, _: &SpiffeId) -> bool {
        false
    }
}

/// istiod's rule, in its order: may `caller` have a certificate for `requested`?
pub fn decide(
    caller: &Attested,
    requested: &str,
    td: &TrustDomain,
    agents: &[SpiffeId],
    pods: &impl NodePods,
) -> Result<SpiffeId, ImpersonationError> {
    if !agents.contains(&caller.id) {
        return Err(ImpersonationError::NotANodeAgent {
            caller: caller.id.clone(),
        });
    }
    let invalid = |reason: String| ImpersonationError::InvalidIdentity {
        value: requested.to_owned(),
        reason,
    };
    let requested =
        SpiffeId::parse(requested).map_err(|e: SpiffeIdError| invalid(e.to_string()))?;
    if requested.trust_domain() != td || requested.service_account().is_none() {
        return Err(invalid(format!(
            "expected spiffe://{td}/ns/<namespace>/sa/<service account>"
        )));
    }
    let (Some(namespace), Some(name)) = (caller.id.namespace(), caller.pod.as_deref()) else {
        return Err(ImpersonationError::NotPodBound {
            caller: caller.id.clone(),
        });
    };
    let uid = caller.pod_uid.as_deref().unwrap_or_default();
    let unknown = || ImpersonationError::CallerPodUnknown {
        pod: format!("{namespace}/{name}"),
        expected: format!("uid {uid:?} running as {}", caller.id),
    };
    let pod = pods.pod(namespace, name).ok_or_else(unknown)?;
    if pod.uid != uid || pod.id != caller.id {
        return Err(unknown());
    }
    // The node the API server put in the token (Kubernetes >= 1.30) must agree with the pod's.
    let node = match (pod.node, caller.node.as_deref()) {
        (Some(node), None) => node,
        (Some(node), Some(bound)) if node == bound => node,
        _ => return Err(unknown()),
    };
    if !pods.runs_on(&node, &requested) {
        return Err(ImpersonationError::NotOnNode { requested, node });
    }
    Ok(requested)
}

/// The facts of a pod object, if it names a valid identity.
fn facts_of(pod: &Pod, td: &TrustDomain) -> Option<PodFacts> {
    let namespace = pod.metadata.namespace.as_deref()?;
    let spec = pod.spec.as_ref()?;
    let sa = spec.service_account_name.as_deref().unwrap_or("default");
    Some(PodFacts {
        uid: pod.metadata.uid.clone()?,
        id: SpiffeId::for_service_account(td, namespace, sa).ok()?,
        node: spec.node_name.clone().filter(|n| !n.is_empty()),
    })
}

/// Whether the pod has finished (it needs no certificate any more).
fn finished(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded" | "Failed"))
}

impl NodePods for ClusterPods<'_> {
    fn pod(&self, namespace: &str, name: &str) -> Option<PodFacts> {
        let pod = self.index.get(namespace, name)?;
        facts_of(&pod, self.td)
    }

    fn runs_on(&self, node: &str, id: &SpiffeId) -> bool {
        self.index.any(|pod| {
            pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)
                && !finished(pod)
                && facts_of(pod, self.td).is_some_and(|f| &f.id == id)
        })
    }
}

#[cfg(test)]
#[path = "node_agent_tests.rs"]
mod tests;
