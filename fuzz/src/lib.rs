//! `trellis-fuzz`: coverage-guided fuzz targets for every parser that takes input from outside
//! the process, run by AFL++ through cargo-afl on the stable toolchain (`scripts/fuzz`).
//!
//! # Layout
//!
//! | module | target(s) | what is fed, and what must hold besides "no panic" |
//! |---|---|---|
//! | [`targets::csr`] | `csr` | CSR bytes (DER or PEM) → `ValidatedCsr`; an accepted CSR is issued and its SVID verifies |
//! | [`targets::spiffe`] | `spiffe_id`, `identity_pattern` | text → `SpiffeId` / `TrustDomain` / `IdentityPattern`; each round-trips through its text |
//! | [`targets::svid_chain`] | `svid_chain` | certificate chains against a fixed bundle → `verify_svid`; the verified ID is the leaf's |
//! | [`targets::connect`] | `connect` | method, authority, peer ID → the tunnel's CONNECT admission; an admitted target is in the pod, not a proxy port |
//! | [`targets::admission`] | `admission_review` | webhook bodies → `review`; the answer carries the uid and a patch that applies to the pod |
//! | [`targets::control_plane`] | `mesh_file`, `join_tokens`, `authorization_policy` | the control plane's files and the policy resource (YAML and JSON) |
//!
//! [`Target`] names them; [`Target::harness`] does the one-time set-up (keys, bundles) before
//! the fuzzer's loop, so every execution runs only the code under test. The binary
//! (`src/main.rs`) is the AFL++ harness when built with the `afl` feature, and otherwise
//! replays files through a target (crash reproduction, the corpus test, seeding).

#![forbid(unsafe_code)]

pub mod seeds;
pub mod targets;

use std::panic::RefUnwindSafe;

/// One fuzz target's entry point: takes any bytes, panics only on a bug.
pub type Harness = Box<dyn Fn(&[u8]) + RefUnwindSafe>;

/// A fuzz target: one parser (or decision) of outside input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `trellis_ca::ValidatedCsr::parse`, then issuing and verifying what it accepts.
    Csr,
    /// `SpiffeId::parse` and `TrustDomain::new`.
    SpiffeId,
    /// `IdentityPattern::parse` and matching.
    IdentityPattern,
    /// `verify_svid` of an arbitrary chain against a fixed, valid bundle.
    SvidChain,
    /// The tunnel's CONNECT admission (`trellis_proxy::tunnel::admit`).
    Connect,
    /// The injector's AdmissionReview decode and decision.
    AdmissionReview,
    /// The control plane's mesh file (`mesh::file::parse`) and the per-proxy snapshot cut.
    MeshFile,
    /// The join-token file (`attest::join_token_file::parse`).
    JoinTokens,
    /// `AuthorizationPolicy` from YAML and JSON, then `Policy::from_resource`.
    AuthorizationPolicy,
}

impl Target {
    /// Every target, in the order `scripts/fuzz` runs them.
    pub const ALL: [Target; 9] = [
        Target::Csr,
        Target::SpiffeId,
        Target::IdentityPattern,
        Target::SvidChain,
        Target::Connect,
        Target::AdmissionReview,
        Target::MeshFile,
        Target::JoinTokens,
        Target::AuthorizationPolicy,
    ];

    /// The target's name: its command-line argument and its corpus folder.
    pub fn name(self) -> &'static str {
        match self {
            Target::Csr => "csr",
            Target::SpiffeId => "spiffe_id",
            Target::IdentityPattern => "identity_pattern",
            Target::SvidChain => "svid_chain",
            Target::Connect => "connect",
            Target::AdmissionReview => "admission_review",
            Target::MeshFile => "mesh_file",
            Target::JoinTokens => "join_tokens",
            Target::AuthorizationPolicy => "authorization_policy",
        }
    }

    /// The target called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Does the target's one-time set-up and returns the function the fuzzer calls.
    pub fn harness(self) -> anyhow::Result<Harness> {
        Ok(match self {
            Target::Csr => targets::harness(targets::csr::Csr::new()?),
            Target::SpiffeId => Box::new(targets::spiffe::spiffe_id),
            Target::IdentityPattern => Box::new(targets::spiffe::identity_pattern),
            Target::SvidChain => targets::harness(targets::svid_chain::SvidChain::load()?),
            Target::Connect => targets::harness(targets::connect::Connect::new()),
            Target::AdmissionReview => targets::harness(targets::admission::Admission::new()),
            Target::MeshFile => Box::new(targets::control_plane::mesh_file),
            Target::JoinTokens => Box::new(targets::control_plane::join_tokens),
            Target::AuthorizationPolicy => Box::new(targets::control_plane::authorization_policy),
        })
    }
}

/// Where the committed corpus of `target` lives.
pub fn corpus_dir(target: Target) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target.name())
}

/// Where fixed inputs of the harnesses (the SVID bundle) live.
pub fn fixtures_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}
