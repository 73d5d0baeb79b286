//! rustls glue: certificate verifiers that apply [`crate::verify`] during a handshake, and
//! builders for the mesh's TLS configurations (TLS 1.3 only, *ring* provider).
//!
//! Owns: [`SpiffeServerVerifier`] (a client checking the server it dialled), and
//! [`SpiffeClientVerifier`] (a server checking its client). rustls does not check URI SANs,
//! so, like ztunnel's `tls/workload.rs`, these wrap webpki and add the SPIFFE rules. After a
//! handshake, [`crate::peer_spiffe_id`] reads the peer's identity back from the connection.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::verify::{PeerRole, VerifyError, verify_svid};
use crate::{SpiffeId, TrustBundle};

/// The one crypto provider of Trellis: *ring*, with its default cipher suites.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Which server identities a client accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpectedServer {
    /// Exactly this SPIFFE ID (the identity discovery says lives at the dialled address).
    Exact(SpiffeId),
    /// Any identity of the bundle's trust domain (for the control plane's own clients
    /// before they know better, and for tests).
    AnyInTrustDomain,
}

/// A rustls server-certificate verifier for SPIFFE peers.
pub struct SpiffeServerVerifier {
    /// Roots of the trust domain.
    bundle: TrustBundle,
    /// Which identity the server must present.
    expected: ExpectedServer,
    /// Signature algorithms for the handshake signature.
    algs: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    /// A verifier accepting servers of `bundle` that present `expected`.
    pub fn new(bundle: TrustBundle, expected: ExpectedServer) -> Self {
        Self {
            bundle,
            expected,
            algs: provider().signature_verification_algorithms,
        }
    }
}

impl fmt::Debug for SpiffeServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeServerVerifier")
            .field("trust_domain", self.bundle.trust_domain())
            .field("expected", &self.expected)
            .finish()
    }
}

/// The server presented a valid SVID, but not the one expected at that address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("server presented {got} but {expected} was expected")]
pub struct UnexpectedIdentity {
    /// The identity that was required.
    pub expected: SpiffeId,
    /// The identity the server presented.
    pub got: SpiffeId,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let svid = verify_svid(
            &self.bundle,
            end_entity,
            intermediates,
            now,
            PeerRole::Server,
        )
        .map_err(to_rustls)?;
        match &self.expected {
            ExpectedServer::Exact(want) if *want != svid.id => {
                Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    OtherError(Arc::new(UnexpectedIdentity {
                        expected: want.clone(),
                        got: svid.id,
                    })),
                )))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// A rustls client-certificate verifier for SPIFFE peers: any valid SVID of the trust domain
/// passes; *who* may connect is decided afterwards by policy.
pub struct SpiffeClientVerifier {
    /// Roots of the trust domain.
    bundle: TrustBundle,
    /// Whether a client without a certificate is refused during the handshake.
    mandatory: bool,
    /// Signature algorithms for the handshake signature.
    algs: WebPkiSupportedAlgorithms,
}

impl SpiffeClientVerifier {
    /// A verifier that requires every client to present an SVID of `bundle`.
    pub fn mandatory(bundle: TrustBundle) -> Self {
        Self {
            bundle,
            mandatory: true,
            algs: provider().signature_verification_algorithms,
        }
    }

    /// A verifier that asks for an SVID but also lets clients without one finish the
    /// handshake (the control plane: workloads without a certificate yet call Certify).
    /// A certificate that *is* presented must still be valid.
    pub fn optional(bundle: TrustBundle) -> Self {
        Self {
            mandatory: false,
            ..Self::mandatory(bundle)
        }
    }
}

impl fmt::Debug for SpiffeClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeClientVerifier")
            .field("trust_domain", self.bundle.trust_domain())
            .field("mandatory", &self.mandatory)
            .finish()
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        verify_svid(
            &self.bundle,
            end_entity,
            intermediates,
            now,
            PeerRole::Client,
        )
        .map_err(to_rustls)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Maps our verification errors to rustls's, keeping ours inside `Other` where rustls has no
/// exact equivalent so that callers can downcast for the precise reason.
fn to_rustls(err: VerifyError) -> rustls::Error {
    let cert_err = match err {
        VerifyError::Expired { .. } => CertificateError::Expired,
        VerifyError::NotYetValid { .. } => CertificateError::NotValidYet,
        VerifyError::BadSignature => CertificateError::BadSignature,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(cert_err)
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// rustls refused the certificate/key pair or the protocol versions.
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A TLS 1.3-only server configuration presenting `chain` (leaf first) and checking clients
/// with `verifier`.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    verifier: Arc<dyn ClientCertVerifier>,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsConfigError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A TLS 1.3-only client configuration checking servers with `verifier` and, if given,
/// presenting `identity` (chain leaf first, and key) as its client certificate.
pub fn client_config(
    verifier: Arc<dyn ServerCertVerifier>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: &[&[u8]],
) -> Result<ClientConfig, TlsConfigError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}
