//! `Certify`: send a CSR for our in-memory key with a bearer token; check the answer (the leaf
//! verifies against the bundle it came with, carries our key, names the identity we asked for)
//! before handing back a [`Svid`].

use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use trellis_ca::{SpiffeId, Svid, SvidError, TrustBundle, WorkloadKey};
use trellis_proto::identity::CertifyRequest;
use trellis_proto::identity::identity_client::IdentityClient as RawClient;

/// Why no SVID was obtained.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertifyError {
    /// The CSR could not be built.
    #[error("cannot build the CSR: {0}")]
    Csr(#[from] trellis_ca::WorkloadKeyError),
    /// The token cannot be sent as metadata.
    #[error("the token contains characters that cannot be sent as gRPC metadata")]
    TokenEncoding,
    /// The control plane refused (the status says why).
    #[error("control plane refused: {code:?}: {message}")]
    Refused {
        /// gRPC status code.
        code: Code,
        /// The control plane's message.
        message: String,
    },
    /// The answer is malformed.
    #[error("control plane answer is malformed: {0}")]
    Malformed(String),
    /// The certificate in the answer is not usable.
    #[error(transparent)]
    Svid(#[from] SvidError),
}

impl CertifyError {
    /// Whether trying again later may help (the control plane is down or overloaded, or the
    /// call timed out — tonic reports its own call timeout as `Cancelled`), as opposed to a
    /// refusal that will repeat (bad token, wrong identity).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            CertifyError::Refused {
                code: Code::Unavailable
                    | Code::Cancelled
                    | Code::ResourceExhausted
                    | Code::DeadlineExceeded
                    | Code::Internal
                    | Code::Unknown
                    | Code::Aborted,
                ..
            }
        )
    }
}

/// A client of the identity service.
#[derive(Debug, Clone)]
pub struct IdentityClient {
    /// The generated client on a TLS channel.
    inner: RawClient<Channel>,
}

impl IdentityClient {
    /// A client on `channel` (see [`crate::connect`]).
    pub fn new(channel: Channel) -> Self {
        Self {
            inner: RawClient::new(channel),
        }
    }

    /// Asks for an SVID for `key`. `expected` is put in the CSR and checked in the answer; with
    /// `None` the CSR names no identity and the control plane's choice (from the token) is
    /// taken. `ttl` of `None` asks for the default lifetime.
    pub async fn certify(
        &mut self,
        key: &WorkloadKey,
        expected: Option<&SpiffeId>,
        token: &str,
        ttl: Option<Duration>,
    ) -> Result<Svid, CertifyError> {
        let csr = match expected {
            Some(id) => key.csr(id)?.as_ref().to_vec(),
            None => key.anonymous_csr()?.as_ref().to_vec(),
        };
        let mut request = tonic::Request::new(CertifyRequest {
            csr,
            ttl_seconds: ttl.map_or(0, |d| d.as_secs()),
        });
        let value: MetadataValue<_> = format!("Bearer {token}")
            .parse()
            .map_err(|_| CertifyError::TokenEncoding)?;
        request.metadata_mut().insert("authorization", value);
        let response = self
            .inner
            .certify(request)
            .await
            .map_err(|s| CertifyError::Refused {
                code: s.code(),
                message: s.message().to_owned(),
            })?
            .into_inner();
        let id = SpiffeId::parse(&response.spiffe_id)
            .map_err(|e| CertifyError::Malformed(format!("spiffe_id: {e}")))?;
        if let Some(expected) = expected.filter(|e| **e != id) {
            return Err(CertifyError::Malformed(format!(
                "asked for {expected}, answer names {id}"
            )));
        }
        let roots: Vec<CertificateDer<'static>> = response
            .trust_bundle
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        let bundle = TrustBundle::new(id.trust_domain().clone(), roots)
            .map_err(|e| CertifyError::Malformed(format!("trust_bundle: {e}")))?;
        let intermediates = response
            .intermediates
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        Ok(Svid::new(
            key,
            CertificateDer::from(response.certificate),
            intermediates,
            bundle,
            Some(&id),
            SystemTime::now(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overload_and_timeouts_are_retried_and_refusals_are_not() {
        let refused = |code| CertifyError::Refused {
            code,
            message: String::new(),
        };
        for (code, retry) in [
            (Code::Unavailable, true),
            (Code::Cancelled, true),
            (Code::ResourceExhausted, true),
            (Code::DeadlineExceeded, true),
            (Code::Internal, true),
            (Code::Unknown, true),
            (Code::Aborted, true),
            (Code::Unauthenticated, false),
            (Code::PermissionDenied, false),
            (Code::InvalidArgument, false),
            (Code::FailedPrecondition, false),
        ] {
            assert_eq!(refused(code).is_retryable(), retry, "{code:?}");
        }
        assert!(!CertifyError::Malformed("x".into()).is_retryable());
    }
}
