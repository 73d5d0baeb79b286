//! The workload side of issuance: a P-256 key pair made in memory and a CSR for a SPIFFE ID.
//!
//! Owns: key generation and CSR encoding. The private key never leaves this type except as
//! the rustls [`PrivateKeyDer`] that the proxy's TLS configuration needs; its `Debug` output
//! never shows it. Sending the CSR is the proxy's job.

use std::fmt;

use rcgen::{
    CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType,
};
use rustls_pki_types::{CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::SpiffeId;

/// Why a key or CSR could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkloadKeyError {
    /// The system random number generator or the signer failed.
    #[error("could not generate an ECDSA P-256 key: {0}")]
    KeyGeneration(rcgen::Error),
    /// The SPIFFE ID could not be encoded as a URI SAN, or signing the CSR failed.
    #[error("could not build a CSR for {id}: {source}")]
    Csr {
        /// The identity the CSR was for.
        id: SpiffeId,
        /// What rcgen reported.
        source: rcgen::Error,
    },
    /// A PKCS#8 key given from outside could not be read.
    #[error("the private key is not a PKCS#8 ECDSA P-256 key: {0}")]
    BadKey(rcgen::Error),
}

/// A workload's private key (ECDSA P-256), made in memory.
pub struct WorkloadKey {
    /// The key pair; zeroized on drop by rcgen's `zeroize` feature.
    key: KeyPair,
}

impl WorkloadKey {
    /// Generates a fresh ECDSA P-256 key.
    pub fn generate() -> Result<Self, WorkloadKeyError> {
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map(|key| Self { key })
            .map_err(WorkloadKeyError::KeyGeneration)
    }

    /// Loads a key from PKCS#8 DER (used by tests and the `svid fetch` tool's output round-trip).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, WorkloadKeyError> {
        let pkcs8 = PrivatePkcs8KeyDer::from(der);
        KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &PKCS_ECDSA_P256_SHA256)
            .map(|key| Self { key })
            .map_err(WorkloadKeyError::BadKey)
    }

    /// Builds a DER CSR that asks for `id` as its only URI SAN, with an empty subject.
    pub fn csr(
        &self,
        id: &SpiffeId,
    ) -> Result<CertificateSigningRequestDer<'static>, WorkloadKeyError> {
        let err = |source| WorkloadKeyError::Csr {
            id: id.clone(),
            source,
        };
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let uri = id.to_string().try_into().map_err(err)?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        let csr = params.serialize_request(&self.key).map_err(err)?;
        Ok(csr.into())
    }

    /// Builds a DER CSR naming no identity (the CA takes the one the caller authenticated as:
    /// `trellis svid fetch` with a join token does not know its identity in advance).
    pub fn anonymous_csr(&self) -> Result<CertificateSigningRequestDer<'static>, WorkloadKeyError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .serialize_request(&self.key)
            .map(Into::into)
            .map_err(WorkloadKeyError::KeyGeneration)
    }

    /// The private key as PKCS#8 DER for rustls. Handle with care: never log or persist it
    /// except where the user asked for a key file (mode 0600).
    pub fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }

    /// The private key as PEM, for `svid.key` files.
    pub fn private_key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The key pair, for signing certificates over it inside this crate.
    pub(crate) fn key_pair(&self) -> &KeyPair {
        &self.key
    }

    /// The DER SubjectPublicKeyInfo, to check that an issued certificate carries this key.
    pub fn public_key_spki(&self) -> Vec<u8> {
        self.key.subject_public_key_info()
    }
}

impl fmt::Debug for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadKey")
            .field("algorithm", &"ECDSA P-256")
            .field("key", &"[redacted]")
            .finish()
    }
}
