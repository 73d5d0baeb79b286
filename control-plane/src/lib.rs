//! `trellis-control-plane`: the mesh's root of trust — a SPIFFE certificate authority served
//! over gRPC+TLS on port 15012.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | flags (each also an env var), defaults, validation before anything is bound |
//! | [`ca_store`] | durable CA state: a 0600 directory or a Secret; plug-in `cacerts`; the published bundle; never a silent new root |
//! | [`ca_live`] | the CA in use, changed without a restart: rotation steps adopted, damage to the store undone, the bundle published |
//! | [`owned_watch`] | watches of the objects the control plane owns, waking the loop that keeps each |
//! | [`attest`] | who is calling: TokenReview for ServiceAccount tokens, or a join-token file |
//! | [`certify`] | the pipeline: authenticate → rate-limit → check CSR → issue → count → audit |
//! | [`injector_cert`] | Kubernetes mode: the webhook's DNS serving certificate (Secret) and the webhook caBundle |
//! | [`mesh`] | the mesh model (workloads, AuthorizationPolicies, mTLS modes) from the cluster or a file, cut per proxy |
//! | [`node_agent`] | node agents (ztunnel) asking for identities of pods on their node: istiod's rule, pure |
//! | [`rate_limit`] | per-caller token buckets |
//! | [`grpc`] | the gRPC fronts (Trellis `Certify`, Istio `CreateCertificate`, discovery `Watch`) and error → status mapping |
//! | [`tls_listener`] | concurrent TLS handshakes feeding tonic, with the caller's address and SPIFFE ID |
//! | [`serving_cert`] | the control plane's own SVID, renewed at half-life |
//! | [`metrics`] | the Prometheus registry and the `/metrics` `/ready` `/live` `/config_dump` endpoint (15014) |
//! | [`config_dump`] | `/config_dump` (loopback callers only): flags, the CA's public side, the mesh published, open Watch streams |
//! | [`status`] | `GET /status` on loopback (port-forwarded): every discovery stream, its certificate and versions |
//! | [`plain_http`] | the serving loop shared by the plain-HTTP endpoints (metrics, status) |
//! | [`server`] | start-up order, listeners, graceful shutdown |
//!
//! One request: `tls_listener` accepts → tonic routes to `grpc::IdentityService` → the bearer
//! token and CSR go to `certify::Certifier`, which asks `attest` who the caller is and has the
//! `trellis_ca::CertificateAuthority` issue for *that* identity → `grpc::to_status` maps any
//! refusal.

#![forbid(unsafe_code)]

pub mod attest;
pub mod ca_live;
pub mod ca_store;
pub mod certify;
pub mod config;
pub mod config_dump;
pub mod grpc;
pub mod injector_cert;
pub mod mesh;
pub mod metrics;
pub mod node_agent;
pub mod owned_watch;
pub mod plain_http;
pub mod rate_limit;
pub mod server;
pub mod serving_cert;
pub mod status;
pub mod tls_listener;
