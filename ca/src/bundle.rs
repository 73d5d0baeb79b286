//! Trust bundles: the set of root certificates a trust domain's peers are checked against.
//!
//! Owns: holding one or several roots (several during a root rotation), as DER for sending and
//! as webpki trust anchors for verifying. Reading files is the caller's job; this module takes
//! PEM or DER bytes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::TrustDomain;

/// Why a set of roots could not become a trust bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// No certificate was found in the input.
    #[error("trust bundle has no certificates")]
    Empty,
    /// The PEM framing is broken.
    #[error("trust bundle PEM is malformed: {0}")]
    Pem(String),
    /// Root number `index` (0-based) is not a parseable X.509 certificate.
    #[error("root #{index} is not a valid certificate: {reason}")]
    BadCertificate {
        /// Position of the certificate in the input.
        index: usize,
        /// What the parser said.
        reason: String,
    },
    /// Root number `index` is not a CA certificate (basicConstraints cA=true is required).
    #[error("root #{index} ({subject}) is not a CA certificate")]
    NotCa {
        /// Position of the certificate in the input.
        index: usize,
        /// Its subject, to find it.
        subject: String,
    },
}

/// The roots trusted for one trust domain. Cheap to clone relative to a handshake.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    /// The trust domain whose workloads these roots vouch for.
    trust_domain: TrustDomain,
    /// The roots as DER, in the order given, for distribution to workloads.
    roots: Vec<CertificateDer<'static>>,
    /// The same roots as webpki anchors, for verification.
    anchors: Vec<TrustAnchor<'static>>,
}

impl TrustBundle {
    /// Builds a bundle from DER roots. Each must parse and be a CA certificate.
    pub fn new(
        trust_domain: TrustDomain,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, BundleError> {
        if roots.is_empty() {
            return Err(BundleError::Empty);
        }
        let mut unique: Vec<CertificateDer<'static>> = Vec::with_capacity(roots.len());
        for root in roots {
            if !unique.iter().any(|r| r.as_ref() == root.as_ref()) {
                unique.push(root);
            }
        }
        let mut anchors = Vec::with_capacity(unique.len());
        for (index, root) in unique.iter().enumerate() {
            let bad = |reason: String| BundleError::BadCertificate { index, reason };
            let (_, cert) = X509Certificate::from_der(root).map_err(|e| bad(e.to_string()))?;
            if !cert.is_ca() {
                return Err(BundleError::NotCa {
                    index,
                    subject: cert.subject().to_string(),
                });
            }
            let anchor =
                webpki::anchor_from_trusted_cert(root).map_err(|e| bad(format!("{e:?}")))?;
            anchors.push(anchor.to_owned());
        }
        Ok(Self {
            trust_domain,
            roots: unique,
            anchors,
        })
    }

    /// Builds a bundle from PEM text holding one or more `CERTIFICATE` blocks.
    pub fn from_pem(trust_domain: TrustDomain, pem: &[u8]) -> Result<Self, BundleError> {
        Self::new(trust_domain, certs_from_pem(pem)?)
    }

    /// A new bundle with `other`'s roots added (for rotation: old and new root side by side).
    pub fn merged_with(&self, other: &[CertificateDer<'static>]) -> Result<Self, BundleError> {
        let mut roots = self.roots.clone();
        roots.extend(other.iter().cloned());
        Self::new(self.trust_domain.clone(), roots)
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The roots, as DER.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The roots as webpki trust anchors.
    pub fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    /// When the first of the roots expires (for expiry metrics and `trellis check`).
    pub fn earliest_expiry(&self) -> Option<SystemTime> {
        self.roots
            .iter()
            .filter_map(|r| X509Certificate::from_der(r).ok())
            .filter_map(|(_, c)| u64::try_from(c.validity().not_after.timestamp()).ok())
            .map(|s| UNIX_EPOCH + Duration::from_secs(s))
            .min()
    }

    /// The roots as concatenated PEM, the format of `bundle.pem` and `root-cert.pem`.
    pub fn to_pem(&self) -> String {
        self.roots.iter().map(|r| der_to_pem(r)).collect()
    }

    /// Whether `cert` is one of the roots.
    pub fn contains(&self, cert: &CertificateDer<'_>) -> bool {
        self.roots.iter().any(|r| r.as_ref() == cert.as_ref())
    }

    /// Whether both bundles hold the same roots, in any order.
    pub fn same_roots(&self, other: &TrustBundle) -> bool {
        self.roots.len() == other.roots.len() && other.roots.iter().all(|r| self.contains(r))
    }

    /// The root that `leaf` chains to through `intermediates`, by signatures and names alone
    /// (no validity or usage checks): which root a certificate of any kind — an SVID, a DNS
    /// serving certificate — depends on. `None` when it chains to none of them.
    pub fn issuing_root(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Option<&CertificateDer<'static>> {
        fn parse(der: &[u8]) -> Option<X509Certificate<'_>> {
            X509Certificate::from_der(der).ok().map(|(_, c)| c)
        }
        let signed_by = |child: &X509Certificate<'_>, parent: &X509Certificate<'_>| {
            child.issuer() == parent.subject()
                && child.verify_signature(Some(parent.public_key())).is_ok()
        };
        let mut current = parse(leaf)?;
        // A chain longer than the intermediates given cannot be built from them.
        for _ in 0..=intermediates.len() {
            if let Some(root) = self
                .roots
                .iter()
                .find(|r| parse(r).is_some_and(|r| signed_by(&current, &r)))
            {
                return Some(root);
            }
            current = intermediates
                .iter()
                .filter_map(|i| parse(i))
                .find(|i| signed_by(&current, i))?;
        }
        None
    }

    /// The roots as an operator recognises them (subject, fingerprint, expiry), in order.
    pub fn summaries(&self) -> Vec<RootSummary> {
        self.roots.iter().filter_map(RootSummary::of).collect()
    }
}

/// How an operator recognises a root: its subject, SHA-256 fingerprint and expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootSummary {
    /// The subject, as OpenSSL prints it (`O=Trellis, CN=...`).
    pub subject: String,
    /// SHA-256 of the DER, lowercase hex, the way `openssl x509 -fingerprint -sha256` shows
    /// it without colons.
    pub sha256: String,
    /// End of validity.
    pub not_after: SystemTime,
}

impl RootSummary {
    /// The summary of one DER certificate; `None` if it does not parse.
    pub fn of(der: &CertificateDer<'_>) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let not_after = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
        Some(Self {
            subject: cert.subject().to_string(),
            sha256: fingerprint(der),
            not_after: UNIX_EPOCH + Duration::from_secs(not_after),
        })
    }
}

/// SHA-256 of a certificate's DER, lowercase hex without separators.
pub fn fingerprint(der: &CertificateDer<'_>) -> String {
    ring::digest::digest(&ring::digest::SHA256, der.as_ref())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads every `CERTIFICATE` block of a PEM text.
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, BundleError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BundleError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(BundleError::Empty);
    }
    Ok(certs)
}

/// Encodes one DER certificate as PEM.
pub fn der_to_pem(der: &CertificateDer<'_>) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.as_ref()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}
