//! `istio.v1.auth.IstioCertificateService/CreateCertificate`, so that an Istio proxy can use the
//! Trellis CA: PEM CSR in, PEM chain out (leaf first, root last). A node agent (ambient ztunnel)
//! names the pod identity it asks for in the request's `metadata` struct, key
//! `ImpersonatedIdentity` (a string, as istiod reads it; empty means absent);
//! [`crate::node_agent`] decides.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use trellis_ca::der_to_pem;
use trellis_proto::istio::istio_certificate_service_server::IstioCertificateService;
use trellis_proto::istio::{IstioCertificateRequest, IstioCertificateResponse};

use super::{bearer_token, peer_addr, to_status};
use crate::certify::{self, Certifier};
use crate::node_agent::IMPERSONATED_IDENTITY;

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
        let mut cert_chain = vec![der_to_pem(&certified.svid.leaf)];
        cert_chain.extend(certified.svid.chain.iter().map(|c| der_to_pem(c)));
        // Istio expects the root last; with several roots (rotation) the first is the current one.
        if let Some(root) = certified.bundle.first() {
            cert_chain.push(der_to_pem(root));
        }
        Ok(Response::new(IstioCertificateResponse { cert_chain }))
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
