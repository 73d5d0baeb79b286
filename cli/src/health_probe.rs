//! Asking the control plane whether it is healthy, the way a proxy reaches it: TLS 1.3 (ALPN
//! h2) trusting only the mesh's roots and requiring the control plane's SPIFFE ID (as
//! `trellis_client::connect` does), then `grpc.health.v1.Health/Check`. The stream may be a
//! TCP connection or a port-forward to a control plane pod ([`Target`]).
//!
//! Owns: that exchange, and keeping the certificate chain the control plane presented, so
//! `trellis check` can read its intermediates' expiry.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;
use tonic::transport::{Endpoint, Uri};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use trellis_ca::tls::{ExpectedServer, SpiffeServerVerifier, client_config};
use trellis_ca::{SpiffeId, TrustBundle};

use crate::dial::Target;

/// How long connecting (stream + TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the health call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What the control plane showed.
#[derive(Debug, Clone)]
pub struct HealthReport {
    /// The certificates it presented, leaf first (verified against the bundle).
    pub chain: Vec<CertificateDer<'static>>,
    /// Its answer, as grpc.health.v1 names it (`SERVING`, `NOT_SERVING`, ...).
    pub status: String,
}

/// Why there is no report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The TLS configuration could not be built.
    #[error("TLS configuration: {0}")]
    Tls(#[from] trellis_ca::tls::TlsConfigError),
    /// The stream or the TLS handshake (with its identity check) failed.
    #[error("{0}")]
    Connect(String),
    /// Connected, but the health call failed.
    #[error("grpc.health.v1.Health/Check failed: {reason}")]
    Health {
        /// The certificates the control plane presented.
        chain: Vec<CertificateDer<'static>>,
        /// What failed.
        reason: String,
    },
}

/// Connects to the control plane at `target`, checks it presents `expected` under `bundle`,
/// and asks for the overall health (service `""`).
pub async fn probe(
    target: Target,
    bundle: TrustBundle,
    expected: SpiffeId,
) -> Result<HealthReport, ProbeError> {
    let verifier = Arc::new(SpiffeServerVerifier::new(
        bundle,
        ExpectedServer::Exact(expected),
    ));
    let tls = Arc::new(client_config(verifier, None, &[b"h2"])?);
    let presented: Arc<Mutex<Vec<CertificateDer<'static>>>> = Arc::default();
    let seen = presented.clone();
    let connector = tower::service_fn(move |_: Uri| {
        let (tls, target, seen) = (tls.clone(), target.clone(), seen.clone());
        async move {
            let io = target.dial().await.map_err(std::io::Error::other)?;
            // The name is not checked (the verifier checks the SPIFFE ID); rustls needs one.
            let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
            let stream = TlsConnector::from(tls).connect(name, io).await?;
            if let Some(certs) = stream.get_ref().1.peer_certificates() {
                *seen.lock().unwrap_or_else(PoisonError::into_inner) =
                    certs.iter().map(|c| c.clone().into_owned()).collect();
            }
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    let endpoint = Endpoint::from_static("http://trellis-control-plane")
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT);
    let channel = tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect_with_connector(connector))
        .await
        .map_err(|_| ProbeError::Connect(format!("no TLS session within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| ProbeError::Connect(trellis_client::diagnose::classify(&e).to_string()))?;
    let chain = presented
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let request = HealthCheckRequest {
        service: String::new(),
    };
    match tokio::time::timeout(CALL_TIMEOUT, HealthClient::new(channel).check(request)).await {
        Ok(Ok(response)) => {
            let status = ServingStatus::try_from(response.into_inner().status)
                .map_or_else(|_| "UNKNOWN".to_owned(), |s| s.as_str_name().to_owned());
            Ok(HealthReport { chain, status })
        }
        Ok(Err(status)) => Err(ProbeError::Health {
            chain,
            reason: format!("{:?}: {}", status.code(), status.message()),
        }),
        Err(_) => Err(ProbeError::Health {
            chain,
            reason: format!("no answer within {CALL_TIMEOUT:?}"),
        }),
    }
}
