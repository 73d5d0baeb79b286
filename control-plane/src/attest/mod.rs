//! Attestation: turning the bearer token a caller presents into the identity it may be issued.
//!
//! Owns: the [`Attestor`] kinds — Kubernetes ([`TokenReviewer`]: projected ServiceAccount
//! tokens checked by the TokenReview API) and local ([`JoinTokens`]: a token file, as SPIRE's
//! join tokens) — and the errors they report. The identity always comes from here, never from
//! the CSR; comparing the two is the CA's job.

pub mod join_token_file;
mod join_tokens;
mod tokenreview;
pub mod used_tokens;

use std::time::Duration;

pub use join_tokens::{JoinTokenError, JoinTokens};
pub use tokenreview::TokenReviewer;
use trellis_ca::SpiffeId;

/// Token audience every Trellis token carries (docs/design.md); the default of
/// `--token-audiences`, which may add others (Istio's clients send `istio-ca`).
pub const AUDIENCE: &str = "trellis-ca";

/// A caller whose token was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attested {
    /// The identity to issue.
    pub id: SpiffeId,
    /// The pod the token is bound to, when the token says so (audit; node agents' pods).
    pub pod: Option<String>,
    /// That pod's UID, when the token says so.
    pub pod_uid: Option<String>,
    /// The node of that pod, when the token says so (Kubernetes >= 1.30).
    pub node: Option<String>,
}

/// Why a caller was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// No `authorization: Bearer <token>` metadata.
    #[error("no bearer token: send `authorization: Bearer <token>` metadata")]
    MissingToken,
    /// The token was refused (invalid, expired, tampered, unknown, revoked, wrong audience).
    #[error("token refused: {0}")]
    Rejected(String),
    /// The token is valid but for none of the accepted audiences (`--token-audiences`).
    #[error(
        "token is for audiences {got:?}, none of the accepted {accepted:?} (--token-audiences)"
    )]
    WrongAudience {
        /// The audiences the review reported.
        got: Vec<String>,
        /// The audiences accepted.
        accepted: Vec<String>,
    },
    /// The token authenticates a user that is not a ServiceAccount.
    #[error(
        "token authenticates {0:?}, which is not a ServiceAccount (system:serviceaccount:<ns>:<sa>)"
    )]
    NotAServiceAccount(String),
    /// The namespace/service account do not form a valid SPIFFE ID.
    #[error("authenticated identity is not a valid SPIFFE ID: {0}")]
    InvalidIdentity(trellis_ca::SpiffeIdError),
    /// Authentication could not be performed (API server unreachable, RBAC missing).
    #[error("cannot check tokens right now: {0}")]
    Unavailable(String),
}

/// The configured kind of attestation.
#[derive(Debug)]
pub enum Attestor {
    /// Kubernetes ServiceAccount tokens via TokenReview.
    Kubernetes(TokenReviewer),
    /// Join tokens from a file (embedded mode).
    Local(JoinTokens),
}

impl Attestor {
    /// Authenticates `token` and returns the identity it proves.
    pub async fn attest(&self, token: &str) -> Result<Attested, AttestError> {
        if token.is_empty() {
            return Err(AttestError::MissingToken);
        }
        match self {
            Attestor::Kubernetes(reviewer) => reviewer.review(token).await,
            Attestor::Local(tokens) => tokens.lookup(token, std::time::SystemTime::now()),
        }
    }

    /// Whether checking `token` costs nothing but this process's time: a join-token lookup,
    /// or a token the TokenReview cache holds. Only attempts that would cost an API call need
    /// the per-source limit on failed attempts.
    pub fn is_cheap(&self, token: &str) -> bool {
        match self {
            Attestor::Kubernetes(reviewer) => reviewer.knows(token),
            Attestor::Local(_) => true,
        }
    }

    /// A label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Attestor::Kubernetes(_) => "kubernetes",
            Attestor::Local(_) => "join-token",
        }
    }
}

/// SHA-256 of a token: caches and tables key on this, so tokens are not kept in memory.
pub(crate) fn token_digest(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// How often file-backed attestors look for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);
