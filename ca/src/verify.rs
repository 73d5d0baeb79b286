//! Verification of a presented X509-SVID: the chain up to a root of the trust bundle (webpki),
//! the validity period, and the SPIFFE rules that webpki does not know about.
//!
//! Owns: the pure decision "is this chain a valid SVID of this trust domain, and whose?".
//! The rustls glue that calls it during a handshake lives in [`crate::tls`]; authorization of
//! the identity it returns belongs to the proxy's policy module.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{SpiffeId, SpiffeIdError, TrustBundle, TrustDomain};

/// Which end of a TLS connection presented the certificate: it must carry the matching EKU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRole {
    /// The peer is a TLS server (we are the client): EKU serverAuth is required.
    Server,
    /// The peer is a TLS client (we are the server): EKU clientAuth is required.
    Client,
}

/// Why a presented certificate is not accepted as an SVID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The peer presented no certificate.
    #[error("peer presented no certificate")]
    NoCertificate,
    /// The leaf is not a parseable X.509 certificate.
    #[error("peer certificate does not parse: {0}")]
    Malformed(String),
    /// The leaf or a certificate of its chain has expired.
    #[error("peer certificate expired at {not_after} (unix seconds)")]
    Expired {
        /// The leaf's notAfter, in seconds since the epoch.
        not_after: u64,
    },
    /// The leaf is not valid yet.
    #[error("peer certificate is not valid before {not_before} (unix seconds)")]
    NotYetValid {
        /// The leaf's notBefore, in seconds since the epoch.
        not_before: u64,
    },
    /// No path leads from the leaf to a root of the trust bundle (self-signed, other CA...).
    #[error("peer certificate is not issued by any root of the trust bundle for {trust_domain}")]
    UnknownIssuer {
        /// The trust domain whose bundle was used.
        trust_domain: TrustDomain,
    },
    /// A signature in the chain is wrong.
    #[error("a signature in the peer's chain is invalid")]
    BadSignature,
    /// The leaf is a CA certificate (cA=true).
    #[error("peer presented a CA certificate as its leaf")]
    LeafIsCa,
    /// The leaf lacks the EKU for its role.
    #[error("peer certificate lacks the extended key usage {0} needed for its role")]
    MissingEku(&'static str),
    /// The leaf has no URI SAN.
    #[error("peer certificate has no SPIFFE ID (no URI SAN)")]
    NoSpiffeId,
    /// The leaf has more than one URI SAN.
    #[error("peer certificate has {0} URI SANs; an SVID has exactly one")]
    SeveralUriSans(usize),
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("peer certificate URI SAN is not a valid SPIFFE ID: {0}")]
    NotSpiffe(SpiffeIdError),
    /// The SPIFFE ID belongs to another trust domain.
    #[error("peer identity {id} is not in trust domain {expected}")]
    TrustDomainMismatch {
        /// The identity the peer presented.
        id: SpiffeId,
        /// The trust domain we accept.
        expected: TrustDomain,
    },
    /// The chain failed path validation for another reason.
    #[error("peer certificate chain is invalid: {0}")]
    Chain(String),
}

/// The outcome of a successful verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSvid {
    /// The peer's identity.
    pub id: SpiffeId,
    /// When the leaf expires.
    pub not_after: SystemTime,
}

/// Verifies `leaf` (with `intermediates`) as an SVID of `bundle`'s trust domain at `now`.
pub fn verify_svid(
    bundle: &TrustBundle,
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    role: PeerRole,
) -> Result<VerifiedSvid, VerifyError> {
    let (_, cert) =
        X509Certificate::from_der(leaf).map_err(|e| VerifyError::Malformed(e.to_string()))?;
    if cert.is_ca() {
        return Err(VerifyError::LeafIsCa);
    }
    let ee = EndEntityCert::try_from(leaf).map_err(|e| VerifyError::Malformed(format!("{e:?}")))?;
    let usage = match role {
        PeerRole::Server => KeyUsage::server_auth(),
        PeerRole::Client => KeyUsage::client_auth(),
    };
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        bundle.anchors(),
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map_err(|e| map_webpki_error(e, &cert, bundle, role))?;
    let id = spiffe_id_of(&cert)?;
    if id.trust_domain() != bundle.trust_domain() {
        return Err(VerifyError::TrustDomainMismatch {
            id,
            expected: bundle.trust_domain().clone(),
        });
    }
    Ok(VerifiedSvid {
        id,
        not_after: to_system_time(cert.validity().not_after.timestamp()),
    })
}

/// Reads the SPIFFE ID of a certificate that has already been verified (for example by
/// rustls with our verifiers): exactly one URI SAN, a valid SPIFFE ID.
pub fn peer_spiffe_id(leaf: &CertificateDer<'_>) -> Result<SpiffeId, VerifyError> {
    let (_, cert) =
        X509Certificate::from_der(leaf).map_err(|e| VerifyError::Malformed(e.to_string()))?;
    spiffe_id_of(&cert)
}

fn spiffe_id_of(cert: &X509Certificate<'_>) -> Result<SpiffeId, VerifyError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| VerifyError::Malformed(format!("subjectAltName: {e}")))?;
    let uris: Vec<&str> = san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    match uris.as_slice() {
        [] => Err(VerifyError::NoSpiffeId),
        [uri] => SpiffeId::parse(uri).map_err(VerifyError::NotSpiffe),
        more => Err(VerifyError::SeveralUriSans(more.len())),
    }
}

fn map_webpki_error(
    err: webpki::Error,
    leaf: &X509Certificate<'_>,
    bundle: &TrustBundle,
    role: PeerRole,
) -> VerifyError {
    use webpki::Error as E;
    match err {
        E::CertExpired { .. } => VerifyError::Expired {
            not_after: u64::try_from(leaf.validity().not_after.timestamp()).unwrap_or(0),
        },
        E::CertNotValidYet { .. } => VerifyError::NotYetValid {
            not_before: u64::try_from(leaf.validity().not_before.timestamp()).unwrap_or(0),
        },
        E::UnknownIssuer => VerifyError::UnknownIssuer {
            trust_domain: bundle.trust_domain().clone(),
        },
        E::InvalidSignatureForPublicKey
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_)
        | E::UnsupportedSignatureAlgorithmContext(_) => VerifyError::BadSignature,
        E::CaUsedAsEndEntity => VerifyError::LeafIsCa,
        E::RequiredEkuNotFoundContext(_) => VerifyError::MissingEku(match role {
            PeerRole::Server => "serverAuth",
            PeerRole::Client => "clientAuth",
        }),
        other => VerifyError::Chain(format!("{other:?}")),
    }
}

fn to_system_time(unix_seconds: i64) -> SystemTime {
    u64::try_from(unix_seconds)
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
        .unwrap_or(UNIX_EPOCH)
}
