//! What `trellis check` gathers before it judges anything: plain data, no I/O handles, so the
//! rules in [`super::rules`] are pure functions and their tests build facts by hand.

use std::time::SystemTime;

use crate::kube_access::Fetched;

/// The subject and end of validity of one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertDates {
    /// Its subject, to name it.
    pub subject: String,
    /// When it expires.
    pub not_after: SystemTime,
}

/// A trust bundle's roots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootSummary {
    /// How many roots (more than one during a rotation).
    pub roots: usize,
    /// When the first of them expires.
    pub earliest_expiry: SystemTime,
}

/// What talking to the control plane's gRPC port (TLS, then `grpc.health.v1.Health/Check`)
/// showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeFacts {
    /// Not tried, because something it needs is missing (no bundle, no running pod).
    Skipped(String),
    /// TCP, or the TLS handshake (including the identity check), failed.
    ConnectFailed(String),
    /// Connected and verified, but the health call failed.
    HealthFailed {
        /// The identity the control plane presented.
        peer_id: String,
        /// What failed.
        reason: String,
    },
    /// The control plane answered.
    Answered(Probe),
}

/// A control plane that answered the health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The SPIFFE ID it presented (verified against the bundle and the expected identity).
    pub peer_id: String,
    /// The health status, as grpc.health.v1 names it (`SERVING`, `NOT_SERVING`, ...).
    pub status: String,
    /// When its serving certificate expires.
    pub leaf_not_after: Option<SystemTime>,
    /// The intermediates it presented between its leaf and the roots (none when the root
    /// signs directly).
    pub intermediates: Vec<CertDates>,
}

/// A Deployment's rollout state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentFacts {
    /// `spec.replicas`.
    pub desired: i32,
    /// `status.availableReplicas`.
    pub available: i32,
}

/// The AuthorizationPolicy CRD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrdFacts {
    /// Whether its `Established` condition is true (the API server serves it).
    pub established: bool,
}

/// The MutatingWebhookConfiguration's webhooks and their `caBundle`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookFacts {
    /// Webhook name and its `caBundle` (PEM; empty when unset).
    pub webhooks: Vec<(String, Vec<u8>)>,
}

/// The injector's serving Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFacts {
    /// `ca.crt` (PEM), if the key is there.
    pub ca_crt: Option<Vec<u8>>,
}

/// The controller of a pod, to say what to restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Kind of the controlling owner reference (`ReplicaSet`, `StatefulSet`, ...).
    pub kind: String,
    /// Its name.
    pub name: String,
}

/// A pod that should carry the mesh but does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its controller, if any.
    pub owner: Option<Owner>,
    /// Its `pod-template-hash` label (Deployments' pods have one; it ends the ReplicaSet's
    /// name).
    pub template_hash: Option<String>,
}

/// A meshed pod in a STRICT namespace whose app probes kubelet sends straight to the app, in
/// plaintext: the proxy refuses them and the pod never becomes ready (or is restarted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaintextProbes {
    /// The pod.
    pub pod: PodRef,
    /// Its probes, as `container/livenessProbe`.
    pub probes: Vec<String>,
    /// Its `trellis.dev/app-probes` annotation: `kept` (rewriting was off), `rewritten` (some
    /// could not be), none (injected before probes were rewritten).
    pub marker: Option<String>,
}

/// Everything `trellis check` learns from a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterFacts {
    /// The API server's version, or why it could not be reached.
    pub api: Result<String, String>,
    /// The control plane's namespace.
    pub namespace: String,
    /// `authorizationpolicies.trellis.dev`.
    pub crd: Fetched<CrdFacts>,
    /// Deployment `trellis-control-plane`.
    pub control_plane: Fetched<DeploymentFacts>,
    /// Deployment `trellis-injector`.
    pub injector: Fetched<DeploymentFacts>,
    /// MutatingWebhookConfiguration `trellis-injector`.
    pub webhook: Fetched<WebhookFacts>,
    /// Secret `trellis-injector-tls`.
    pub injector_secret: Fetched<SecretFacts>,
    /// The mesh roots (read from the caBundle, else from the Secret's `ca.crt`), with where
    /// they were read; `None` when neither was available.
    pub roots: Option<(String, Result<RootSummary, String>)>,
    /// The control plane's gRPC health, through a port-forward to one of its pods.
    pub probe: ProbeFacts,
    /// Namespaces labelled `trellis-injection=enabled`.
    pub namespaces: Fetched<Vec<String>>,
    /// Pods in those namespaces that the injector would mesh but that are not meshed.
    pub uninjected: Fetched<Vec<PodRef>>,
    /// Meshed pods in STRICT namespaces with app probes that are not rewritten.
    pub plaintext_probes: Fetched<Vec<PlaintextProbes>>,
}

/// Everything `trellis check --local` learns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFacts {
    /// The control plane's gRPC address.
    pub addr: String,
    /// The `--trust-bundle` file's name.
    pub bundle_file: String,
    /// Its roots, or why it is unusable.
    pub roots: Result<RootSummary, String>,
    /// The control plane's gRPC health.
    pub probe: ProbeFacts,
    /// `--metrics ADDR`: the address and what `GET /ready` answered (status code, or why
    /// there was no answer).
    pub ready: Option<(String, Result<u16, String>)>,
}
