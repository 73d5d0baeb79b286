//! CA key material as files: Istio's `cacerts` layout, making a new self-signed root, and
//! making an intermediate under a root (for plug-in CAs and for rotating to a new intermediate).
//!
//! Owns: [`CaMaterial`] and how new material is generated. Checking that material can sign is
//! [`crate::CertificateAuthority::load`]'s job; storing it is the caller's.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};

use x509_parser::prelude::{FromDer, X509Certificate};

use crate::authority::{ROOT_LIFETIME, back_dated, hex, random_serial, to_offset};
use crate::{CaLoadError, TrustDomain, certs_from_pem};

/// CA key material in the layout of Istio's `cacerts` Secret.
#[derive(Clone)]
pub struct CaMaterial {
    /// `ca-cert.pem`: the certificate that signs workload certificates (root or intermediate).
    pub ca_cert_pem: String,
    /// `ca-key.pem`: its private key (PKCS#8 PEM). Secret: never log it.
    pub ca_key_pem: String,
    /// `cert-chain.pem`: `ca-cert.pem` and the intermediates above it (may also hold the root).
    pub cert_chain_pem: String,
    /// `root-cert.pem`: one or more roots; several during a rotation.
    pub root_cert_pem: String,
}

impl fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaMaterial")
            .field("ca_cert_pem", &self.ca_cert_pem.len())
            .field("ca_key_pem", &"[redacted]")
            .field("cert_chain_pem", &self.cert_chain_pem.len())
            .field("root_cert_pem", &self.root_cert_pem.len())
            .finish()
    }
}

impl CaMaterial {
    /// Makes a new self-signed ECDSA P-256 root for `trust_domain`, valid ten years from `now`.
    pub fn generate_root(trust_domain: &TrustDomain, now: SystemTime) -> Result<Self, CaLoadError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CaLoadError::Generate)?;
        let params = ca_params(trust_domain, "root CA", now, ROOT_LIFETIME)?;
        let cert = params.self_signed(&key).map_err(CaLoadError::Generate)?;
        let pem = cert.pem();
        Ok(Self {
            ca_cert_pem: pem.clone(),
            ca_key_pem: key.serialize_pem(),
            cert_chain_pem: pem.clone(),
            root_cert_pem: pem,
        })
    }

    /// Makes a new intermediate CA signed by this material's signing certificate, valid for
    /// `lifetime` from `now` (never past its issuer). The result signs with the intermediate,
    /// chains through this material's chain, and trusts the same roots.
    pub fn generate_intermediate(
        &self,
        trust_domain: &TrustDomain,
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<Self, CaLoadError> {
        let issuer_key = KeyPair::from_pem(&self.ca_key_pem).map_err(CaLoadError::BadKey)?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca_cert_pem, issuer_key)
            .map_err(|e| CaLoadError::BadCert(e.to_string()))?;
        let issuer_not_after = certs_from_pem(self.ca_cert_pem.as_bytes())?
            .first()
            .and_then(|c| X509Certificate::from_der(c).ok())
            .and_then(|(_, c)| u64::try_from(c.validity().not_after.timestamp()).ok())
            .map(|s| UNIX_EPOCH + Duration::from_secs(s))
            .ok_or_else(|| CaLoadError::BadCert("no validity in ca-cert.pem".into()))?;
        let lifetime = lifetime.min(issuer_not_after.duration_since(now).unwrap_or_default());
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CaLoadError::Generate)?;
        let mut params = ca_params(trust_domain, "intermediate CA", now, lifetime)?;
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(CaLoadError::Generate)?;
        let pem = cert.pem();
        let above = if self.cert_chain_pem.trim().is_empty() {
            self.ca_cert_pem.clone()
        } else {
            self.cert_chain_pem.clone()
        };
        Ok(Self {
            ca_cert_pem: pem.clone(),
            ca_key_pem: key.serialize_pem(),
            cert_chain_pem: format!("{pem}{above}"),
            root_cert_pem: self.root_cert_pem.clone(),
        })
    }

    /// Whether `other` holds the same files (surrounding whitespace aside).
    pub fn same_as(&self, other: &CaMaterial) -> bool {
        let pairs = [
            (&self.ca_cert_pem, &other.ca_cert_pem),
            (&self.ca_key_pem, &other.ca_key_pem),
            (&self.cert_chain_pem, &other.cert_chain_pem),
            (&self.root_cert_pem, &other.root_cert_pem),
        ];
        pairs.iter().all(|(a, b)| a.trim() == b.trim())
    }
}

/// The parameters of a CA certificate for `trust_domain`: `cA=true`, keyCertSign, the trust
/// domain as URI SAN, a subject with a random suffix.
fn ca_params(
    trust_domain: &TrustDomain,
    what: &str,
    now: SystemTime,
    lifetime: Duration,
) -> Result<CertificateParams, CaLoadError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Trellis");
    // A per-certificate suffix keeps subjects distinct, so that during a rotation (several
    // roots in one bundle) path building finds the right issuer and an unknown CA is reported
    // as such.
    let serial = random_serial().map_err(CaLoadError::Generate)?;
    let suffix = hex(serial.as_ref().get(..4).unwrap_or_default());
    dn.push(
        DnType::CommonName,
        format!("Trellis {what} for {trust_domain} {suffix}"),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let uri = trust_domain
        .id_string()
        .try_into()
        .map_err(CaLoadError::Generate)?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.not_before = to_offset(back_dated(now));
    params.not_after = to_offset(now + lifetime);
    params.serial_number = Some(serial);
    Ok(params)
}
