//! `trellis-ca`: the identity library of Trellis. No network or file I/O of its own.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`spiffe`] | [`SpiffeId`] and [`TrustDomain`]: parsing by the SPIFFE spec, `ns/<ns>/sa/<sa>` |
//! | [`workload`] | the workload's in-memory P-256 key and its CSR |
//! | [`csr`] | the CA side of a CSR: signature, key type, no CA powers, requested identity |
//! | [`authority`] | [`CertificateAuthority`]: root or plug-in intermediate (Istio `cacerts`), issuing |
//! | [`server_names`] | [`ServerNames`]: DNS names and IPs beside a SPIFFE ID on a serving certificate |
//! | [`svid`] | [`Svid`]: a workload's checked leaf + chain + key + bundle, and its TLS configs |
//! | [`pattern`] | allow-list entries: exact IDs, `ns/<ns>/sa/*` and `ns/<ns>/*` wildcards |
//! | [`bundle`] | [`TrustBundle`]: one or several roots, for rotation |
//! | [`verify`] | chain + validity + SPIFFE checks of a presented SVID (pure) |
//! | [`tls`] | rustls verifiers built on [`verify`] and TLS 1.3 config builders (*ring*) |
//!
//! The flow: a proxy makes a [`WorkloadKey`] and a CSR; the control plane authenticates the
//! caller, parses the CSR into a [`ValidatedCsr`] and calls [`CertificateAuthority::issue`]
//! with the *authenticated* identity; peers check each other's SVIDs with the [`tls`]
//! verifiers and read the identity back with [`peer_spiffe_id`].

#![forbid(unsafe_code)]

pub mod authority;
pub mod bundle;
pub mod csr;
pub mod pattern;
pub mod server_names;
pub mod spiffe;
pub mod svid;
pub mod tls;
pub mod verify;
pub mod workload;

pub use authority::{CaLoadError, CaMaterial, CertificateAuthority, IssueError, IssuedSvid};
pub use bundle::{BundleError, TrustBundle, certs_from_pem, der_to_pem};
pub use csr::{CsrError, ValidatedCsr};
pub use pattern::{IdentityPattern, PatternError};
pub use server_names::{ServerNameError, ServerNames};
pub use spiffe::{SpiffeId, SpiffeIdError, TrustDomain};
pub use svid::{Svid, SvidError};
pub use verify::{PeerRole, VerifiedSvid, VerifyError, peer_spiffe_id, verify_svid};
pub use workload::{WorkloadKey, WorkloadKeyError};
