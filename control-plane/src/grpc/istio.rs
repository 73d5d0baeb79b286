//! `istio.v1.auth.IstioCertificateService/CreateCertificate`, so that an Istio proxy can use the
//! Trellis CA: PEM CSR in, PEM chain out — the leaf, each intermediate, then every root the mesh
//! trusts. A node agent (ambient ztunnel) names the pod identity it asks for in the request's
//! `metadata` struct, key `ImpersonatedIdentity` (a string, as istiod reads it; empty means
//! absent); [`crate::node_agent`] decides.
//!
//! Owns: the response layout. Istio clients read the *last* element as the roots and the ones
//! before it as the chain (ztunnel's `WorkloadCertificate::new` parses every certificate of the
//! last element as a root; istio-agent takes the last element as its root PEM), so all roots go
//! together in the last element — the root the leaf chains to first, for clients that read only
//! one — and a root rotation reaches Istio clients too: during it they trust old and new root.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use trellis_ca::der_to_pem;
use trellis_proto::istio::istio_certificate_service_server::IstioCertificateService;
use trellis_proto::istio::{IstioCertificateRequest, IstioCertificateResponse};

use super::{bearer_token, peer_addr, to_status};
use crate::certify::{self, Certified, Certifier};
use crate::node_agent::IMPERSONATED_IDENTITY;

/// `[leaf, intermediates…, roots]`: one PEM certificate per element, except the last, which
/// holds every root (the leaf's first).
pub fn cert_chain(certified: &Certified) -> Vec<String> {
    let mut chain = vec![der_to_pem(&certified.svid.leaf)];
    chain.extend(certified.svid.chain.iter().map(|c| der_to_pem(c)));
    let roots: String = certified.bundle.iter().map(|r| der_to_pem(r)).collect();
    if !roots.is_empty() {
        chain.push(roots);
    }
    chain
}

/// The Istio-compatible CA service.
#[derive(Debug, Clone)]
pub struct IstioCaService {
    /// The shared pipeline.
    certifier: Arc<Certifier>,
}

impl IstioCaService {
    /// A service running `certifier`.
    pub fn new(certifier: Arc<Certifier>) -> Self {
        Self { certifier }
    }
}

#[tonic::async_trait]
impl IstioCertificateService for IstioCaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let token = bearer_token(&request)?;
        let peer = peer_addr(&request);
        let body = request.into_inner();
        let impersonate = impersonated_identity(body.metadata.as_ref())?;
        // Istio sends <= 0 for "default".
        let ttl = u64::try_from(body.validity_duration)
            .ok()
            .filter(|s| *s > 0)
            .map(Duration::from_secs);
        let certified = self
            .certifier
            .certify(certify::CertifyRequest {
                token: token.as_deref(),
                csr: body.csr.as_bytes(),
                ttl,
                impersonate: impersonate.as_deref(),
                peer,
                api: "istio.CreateCertificate",
            })
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: cert_chain(&certified),
        }))
    }
}

/// The `ImpersonatedIdentity` string of a request's metadata; `None` when absent or empty (as
/// istiod reads it). Any other kind of value is refused rather than ignored.
fn impersonated_identity(metadata: Option<&prost_types::Struct>) -> Result<Option<String>, Status> {
    use prost_types::value::Kind;
    let Some(value) = metadata.and_then(|m| m.fields.get(IMPERSONATED_IDENTITY)) else {
        return Ok(None);
    };
    match &value.kind {
        Some(Kind::StringValue(id)) if id.is_empty() => Ok(None),
        Some(Kind::StringValue(id)) => Ok(Some(id.clone())),
        Some(Kind::NullValue(_)) | None => Ok(None),
        Some(_) => Err(Status::invalid_argument(format!(
            "metadata {IMPERSONATED_IDENTITY} must be a string (a SPIFFE ID)"
        ))),
    }
}
