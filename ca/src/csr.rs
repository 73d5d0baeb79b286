//! The CA side of a certificate signing request: parse, check the signature, check the key,
//! and refuse anything that asks for more than a workload certificate.
//!
//! Owns: turning untrusted CSR bytes into a [`ValidatedCsr`] ("parse, don't validate").
//! It does not decide the identity: that comes from authentication, and
//! [`ValidatedCsr::check_identity`] only refuses a CSR that asks for a different one.

use rcgen::{
    PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_RSA_SHA256, PublicKeyData,
    SignatureAlgorithm,
};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use crate::{SpiffeId, SpiffeIdError};

/// The largest CSR we read. An RSA-4096 CSR is under 2 KiB; anything far larger is hostile.
pub const MAX_CSR_BYTES: usize = 16 * 1024;
/// The smallest RSA modulus we accept (NIST SP 800-131A).
const MIN_RSA_BITS: usize = 2048;
/// The largest RSA modulus we accept: larger keys only cost the CA time.
const MAX_RSA_BITS: usize = 8192;

/// Why a CSR was refused. Every variant says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    /// The CSR is larger than [`MAX_CSR_BYTES`].
    #[error("CSR is {0} bytes; at most 16384 are accepted")]
    TooLarge(usize),
    /// The bytes are not a DER PKCS#10 request (or PEM of one).
    #[error("CSR is not a valid PKCS#10 request: {0}")]
    Malformed(String),
    /// There are bytes after the DER request.
    #[error("CSR has {0} trailing bytes after the request")]
    TrailingData(usize),
    /// The request's self-signature does not verify with its own public key.
    #[error("CSR signature does not verify with the CSR's public key")]
    BadSignature,
    /// The key is of a type we do not issue for.
    #[error(
        "CSR key type {0} is not supported; use ECDSA P-256 (preferred), P-384 or RSA 2048-8192"
    )]
    UnsupportedKey(String),
    /// An RSA key with a modulus outside 2048..=8192 bits.
    #[error("CSR has an RSA key of {0} bits; 2048 to 8192 bits are accepted")]
    WeakKey(usize),
    /// The request asks for `cA=true` or for certificate/CRL signing key usage.
    #[error("CSR asks for CA powers ({0}); workload certificates can never sign certificates")]
    AsksForCaPowers(&'static str),
    /// The request carries more than one URI SAN.
    #[error("CSR has {0} URI SANs; at most one SPIFFE ID may be requested")]
    SeveralUris(usize),
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("CSR URI SAN is not a valid SPIFFE ID: {0}")]
    NotSpiffe(SpiffeIdError),
    /// The CSR asks for an identity other than the authenticated one.
    #[error("CSR asks for {requested} but the caller is authenticated as {authenticated}")]
    IdentityMismatch {
        /// What the CSR asked for.
        requested: SpiffeId,
        /// What authentication established.
        authenticated: SpiffeId,
    },
}

/// The public key of a checked CSR, in the form rcgen signs over.
#[derive(Debug, Clone)]
pub struct CsrPublicKey {
    /// The contents of the SubjectPublicKeyInfo BIT STRING.
    raw: Vec<u8>,
    /// Tells rcgen which SPKI algorithm identifier to write.
    alg: &'static SignatureAlgorithm,
}

impl PublicKeyData for CsrPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

/// A CSR whose signature, key and extensions have been checked.
#[derive(Debug, Clone)]
pub struct ValidatedCsr {
    /// The key the certificate will certify.
    public_key: CsrPublicKey,
    /// The SPIFFE ID the CSR asks for, if it names one.
    requested: Option<SpiffeId>,
}

impl ValidatedCsr {
    /// Parses and checks a CSR given as DER, or as PEM (`-----BEGIN CERTIFICATE REQUEST-----`).
    pub fn parse(input: &[u8]) -> Result<Self, CsrError> {
        if input.len() > MAX_CSR_BYTES {
            return Err(CsrError::TooLarge(input.len()));
        }
        let pem_der;
        let der = if input.starts_with(b"-----BEGIN") {
            pem_der = pem_to_der(input)?;
            &pem_der[..]
        } else {
            input
        };
        let (rest, csr) = X509CertificationRequest::from_der(der)
            .map_err(|e| CsrError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CsrError::TrailingData(rest.len()));
        }
        // The key is checked before the signature: *ring* cannot verify signatures by keys we
        // refuse anyway (RSA < 2048 bits, P-521), and those must be reported as what they are
        // (`WeakKey`, `UnsupportedKey`), not as `BadSignature`.
        let public_key = check_key(&csr)?;
        csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
        let requested = check_extensions(&csr)?;
        Ok(Self {
            public_key,
            requested,
        })
    }

    /// The SPIFFE ID the CSR asks for, if any.
    pub fn requested_identity(&self) -> Option<&SpiffeId> {
        self.requested.as_ref()
    }

    /// Refuses the CSR if it asks for an identity other than `authenticated`. A CSR that names
    /// no identity is fine: the identity always comes from authentication.
    pub fn check_identity(&self, authenticated: &SpiffeId) -> Result<(), CsrError> {
        match &self.requested {
            Some(requested) if requested != authenticated => Err(CsrError::IdentityMismatch {
                requested: requested.clone(),
                authenticated: authenticated.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// The key to certify.
    pub fn public_key(&self) -> &CsrPublicKey {
        &self.public_key
    }
}

fn pem_to_der(input: &[u8]) -> Result<Vec<u8>, CsrError> {
    use rustls_pki_types::CertificateSigningRequestDer;
    use rustls_pki_types::pem::PemObject;
    CertificateSigningRequestDer::from_pem_slice(input)
        .map(|der| der.as_ref().to_vec())
        .map_err(|e| CsrError::Malformed(format!("PEM: {e}")))
}

fn check_key(csr: &X509CertificationRequest<'_>) -> Result<CsrPublicKey, CsrError> {
    let spki = &csr.certification_request_info.subject_pki;
    let raw = spki.subject_public_key.data.to_vec();
    let alg_oid = &spki.algorithm.algorithm;
    let alg: &'static SignatureAlgorithm = if *alg_oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| CsrError::UnsupportedKey("EC key without a named curve".into()))?;
        if curve == OID_EC_P256 {
            &PKCS_ECDSA_P256_SHA256
        } else if curve == OID_NIST_EC_P384 {
            &PKCS_ECDSA_P384_SHA384
        } else {
            return Err(CsrError::UnsupportedKey(format!("EC curve {curve}")));
        }
    } else if *alg_oid == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => return Err(CsrError::Malformed("RSA public key does not parse".into())),
        };
        if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
            return Err(CsrError::WeakKey(bits));
        }
        &PKCS_RSA_SHA256
    } else {
        return Err(CsrError::UnsupportedKey(alg_oid.to_id_string()));
    };
    Ok(CsrPublicKey { raw, alg })
}

fn check_extensions(csr: &X509CertificationRequest<'_>) -> Result<Option<SpiffeId>, CsrError> {
    let mut uris = Vec::new();
    for ext in csr.requested_extensions().into_iter().flatten() {
        match ext {
            ParsedExtension::BasicConstraints(bc) if bc.ca => {
                return Err(CsrError::AsksForCaPowers("basicConstraints cA=true"));
            }
            ParsedExtension::KeyUsage(ku) if ku.key_cert_sign() => {
                return Err(CsrError::AsksForCaPowers("keyUsage keyCertSign"));
            }
            ParsedExtension::KeyUsage(ku) if ku.crl_sign() => {
                return Err(CsrError::AsksForCaPowers("keyUsage cRLSign"));
            }
            ParsedExtension::SubjectAlternativeName(san) => {
                uris.extend(san.general_names.iter().filter_map(|name| match name {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                }));
            }
            // Other requested extensions (DNS SANs, EKUs, ...) are never copied into the
            // certificate, so they cannot widen what it allows.
            _ => {}
        }
    }
    match uris.as_slice() {
        [] => Ok(None),
        [uri] => SpiffeId::parse(uri).map(Some).map_err(CsrError::NotSpiffe),
        more => Err(CsrError::SeveralUris(more.len())),
    }
}

#[cfg(test)]
#[path = "csr_tests.rs"]
mod tests;
