//! The gRPC fronts of the control plane (CA, Istio CA, discovery) and the single mapping from pipeline errors to gRPC
//! statuses.
//!
//! Owns: protobuf ↔ domain conversion (protobuf types stop here), reading the bearer token and
//! the caller's address from a request, and [`to_status`].

mod discovery;
mod identity;
mod istio;

pub use discovery::{DiscoveryService, WatcherInfo, Watchers};
pub use identity::IdentityService;
pub use istio::IstioCaService;
use tonic::{Code, Status};
use trellis_ca::{CsrError, IssueError};

use crate::attest::AttestError;
use crate::certify::CertifyError;
use crate::node_agent::ImpersonationError;
use crate::tls_listener::PeerInfo;

/// The largest request message accepted (CSRs are capped at 16 KiB further in).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Maps a pipeline error to the gRPC status callers see. The message says what was wrong.
pub fn to_status(err: &CertifyError) -> Status {
    let code = match err {
        CertifyError::Attest(AttestError::Unavailable(_)) => Code::Unavailable,
        CertifyError::Attest(_) => Code::Unauthenticated,
        CertifyError::RateLimited { .. } => Code::ResourceExhausted,
        CertifyError::Impersonation(ImpersonationError::InvalidIdentity { .. }) => {
            Code::InvalidArgument
        }
        CertifyError::Impersonation(_) => Code::PermissionDenied,
        CertifyError::Csr(CsrError::IdentityMismatch { .. })
        | CertifyError::Issue(IssueError::Csr(CsrError::IdentityMismatch { .. }))
        | CertifyError::Issue(IssueError::WrongTrustDomain { .. }) => Code::PermissionDenied,
        CertifyError::Csr(_)
        | CertifyError::Issue(IssueError::Csr(_) | IssueError::Lifetime { .. }) => {
            Code::InvalidArgument
        }
        CertifyError::Issue(IssueError::IssuerExpired) => Code::FailedPrecondition,
        CertifyError::Issue(_) => Code::Internal,
    };
    Status::new(code, err.to_string())
}

/// The bearer token of a request: `authorization: Bearer <token>`.
pub(crate) fn bearer_token<T>(req: &tonic::Request<T>) -> Result<Option<String>, Status> {
    let Some(value) = req.metadata().get("authorization") else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("authorization metadata is not ASCII"))?;
    let mut parts = value.splitn(2, ' ');
    match (parts.next(), parts.next()) {
        (Some(scheme), Some(token)) if scheme.eq_ignore_ascii_case("bearer") => {
            Ok(Some(token.trim().to_owned()))
        }
        _ => Err(Status::unauthenticated(
            "authorization metadata must be `Bearer <token>`",
        )),
    }
}

/// The caller's address, as seen by the TLS listener.
pub(crate) fn peer_addr<T>(req: &tonic::Request<T>) -> Option<std::net::SocketAddr> {
    req.extensions().get::<PeerInfo>().map(|p| p.remote)
}
