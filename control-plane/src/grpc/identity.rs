//! `trellis.identity.v1.Identity/Certify`.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tonic::{Request, Response, Status};
use trellis_proto::identity::identity_server::Identity;
use trellis_proto::identity::{CertifyRequest, CertifyResponse};

use super::{bearer_token, peer_addr, to_status};
use crate::certify::{self, Certifier};

/// The Trellis identity service.
#[derive(Debug, Clone)]
pub struct IdentityService {
    /// The shared pipeline.
    certifier: Arc<Certifier>,
}

impl IdentityService {
    /// A service running `certifier`.
    pub fn new(certifier: Arc<Certifier>) -> Self {
        Self { certifier }
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let token = bearer_token(&request)?;
        let peer = peer_addr(&request);
        let body = request.into_inner();
        let ttl = (body.ttl_seconds > 0).then(|| Duration::from_secs(body.ttl_seconds));
        let certified = self
            .certifier
            .certify(certify::CertifyRequest {
                token: token.as_deref(),
                csr: &body.csr,
                ttl,
                impersonate: None,
                peer,
                api: "trellis.Certify",
            })
            .await
            .map_err(|e| to_status(&e))?;
        let unix = |t: std::time::SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
                .unwrap_or(0)
        };
        Ok(Response::new(CertifyResponse {
            spiffe_id: certified.id.to_string(),
            certificate: certified.svid.leaf.to_vec(),
            intermediates: certified.svid.chain.iter().map(|c| c.to_vec()).collect(),
            trust_bundle: certified.bundle.iter().map(|c| c.to_vec()).collect(),
            not_before: unix(certified.svid.not_before),
            not_after: unix(certified.svid.not_after),
            serial: certified.svid.serial,
        }))
    }
}
