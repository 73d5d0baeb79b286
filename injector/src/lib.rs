//! `trellis-injector`: the mutating admission webhook that puts pods in the mesh. For each Pod
//! CREATE the API server sends, it decides whether the pod is meshed and answers with a JSON
//! Patch that adds the `trellis-proxy init` init container (iptables), the `trellis-proxy`
//! sidecar and its projected ServiceAccount token. It never blocks a pod: when it cannot
//! inject, it allows the pod unchanged with a warning.
//!
//! # Layout
//!
//! | module | owns | I/O |
//! |---|---|---|
//! | [`config`] | flags/env (clap), validation, defaults, [`InjectConfig`] | none |
//! | [`quantity`] | Kubernetes resource quantities, validated | none |
//! | [`annotations`] | the `trellis.dev/*` pod annotations, parsed | none |
//! | [`decide`] | inject or not, and why ([`Decision`]) | none |
//! | [`containers`] | the init container, the proxy container, the token volume | none |
//! | [`patch`] | the JSON Patch that puts them in the pod | none |
//! | [`probes`] | the app probe rewrite: HTTP/TCP/gRPC probes → the proxy's 15020 `/app-health/` | none |
//! | [`review`] | AdmissionReview in → AdmissionReview out (or a [`ReviewError`]) | none |
//! | [`version`] | the API server's `/version`: native sidecars from 1.29 | none |
//! | [`tls`] | serving certificate from PEM, always-newest resolver, rustls config | none |
//! | [`reload`] | loading and polling the certificate, key and trust bundle files | files |
//! | [`apiserver`] | `GET /version` from the API server at start | network |
//! | [`server`] | HTTPS server: routes, limits, timeouts, drain | network |
//!
//! # Which pods: two webhooks, told apart by path
//!
//! An AdmissionReview does not carry the namespace's labels, and looking them up would put an
//! API call (or a namespace cache, its RBAC and its staleness) on every pod creation. Instead
//! the chart registers two webhooks on the same service, and the path says which matched:
//!
//! - `POST /inject`: `namespaceSelector: trellis-injection=enabled`. Pods are injected unless
//!   annotated `trellis.dev/inject: "disabled"` ([`NamespaceScope::Labelled`]).
//! - `POST /inject-opt-in`: `namespaceSelector: trellis-injection NotIn [enabled]` (and not
//!   `kube-system` or the control plane's namespace). Only pods annotated
//!   `trellis.dev/inject: "enabled"` are injected ([`NamespaceScope::OptInOnly`]). An
//!   `objectSelector` cannot match annotations, so this webhook sees every pod of those
//!   namespaces; the chart may narrow it with a `matchConditions` CEL expression on the
//!   annotation (GA in 1.30) and should give it `failurePolicy: Ignore`.
//!
//! The decision then needs only the review and the path ([`decide::decide`]); the control
//! plane's namespace is refused by name as well, whatever the selectors say. Both webhooks
//! should use `reinvocationPolicy: IfNeeded`: a reinvoked call sees `trellis.dev/injected`
//! and answers without a patch, except to rewrite app probes a later webhook added
//! ([`probes::reinvocation`]).
//!
//! # Where the proxy goes
//!
//! With native sidecars (Kubernetes ≥ 1.29, read from the API server's `/version` at start,
//! or forced by `--native-sidecars=on|off`) the proxy is an init container with
//! `restartPolicy: Always` and a startup probe on `/ready`, after `trellis-init` and before
//! the pod's own init containers. Otherwise it is the first regular container with a
//! `postStart` hook running `trellis-proxy wait`, which holds the kubelet from starting the
//! application until the proxy is ready (Istio's `holdApplicationUntilProxyStarts`).
//!
//! # Certificates
//!
//! The serving certificate and key are PEM files (`--tls-cert-file`, `--tls-key-file`) that
//! the control plane writes (or a Secret mounts), re-read when they change; the trust bundle
//! handed to proxies is a PEM file too (`--trust-bundle-file`). The chart puts the CA of the
//! serving certificate in the webhooks' `caBundle` (chart work, not this crate).

#![forbid(unsafe_code)]

pub mod annotations;
pub mod apiserver;
pub mod config;
pub mod containers;
pub mod decide;
pub mod patch;
pub mod probes;
pub mod quantity;
pub mod reload;
pub mod review;
pub mod server;
pub mod tls;
pub mod version;

pub use config::{Config, InjectConfig};
pub use decide::{Decision, NamespaceScope};
pub use review::{ReviewError, Reviewed};
