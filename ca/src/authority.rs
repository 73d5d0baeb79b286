//! The certificate authority: a self-signed root or a plug-in intermediate, and the issuing of
//! X509-SVIDs from checked CSRs by the rules of docs/design.md.
//!
//! Owns: CA key material in memory ([`CaMaterial`], named after Istio's `cacerts` files),
//! checking it on load, and signing. Persisting the material and authenticating callers are
//! the control plane's job: [`CertificateAuthority::issue`] takes the already-authenticated
//! identity as an argument.

use std::fmt;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::bundle::{certs_from_pem, der_to_pem};
use crate::verify::{PeerRole, verify_svid};
use crate::{BundleError, CsrError, SpiffeId, TrustBundle, TrustDomain, ValidatedCsr, WorkloadKey};

/// A self-signed root lives ten years.
pub const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Default lifetime of a workload certificate.
pub const DEFAULT_SVID_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default upper bound on a requested lifetime.
pub const DEFAULT_MAX_SVID_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// NotBefore is back-dated by this much so that peers with slow clocks accept a new certificate.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// Why CA material could not be made or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaLoadError {
    /// `ca-key.pem` is not a private key we can sign with.
    #[error("ca-key.pem is not a usable private key: {0}")]
    BadKey(rcgen::Error),
    /// `ca-cert.pem` is not exactly one parseable certificate.
    #[error("ca-cert.pem: {0}")]
    BadCert(String),
    /// `ca-cert.pem` is not a CA certificate.
    #[error("ca-cert.pem ({subject}) is not a CA certificate (basicConstraints cA=true)")]
    NotCa {
        /// Subject of the offending certificate.
        subject: String,
    },
    /// The key does not belong to the certificate.
    #[error("ca-key.pem does not match the public key of ca-cert.pem")]
    KeyMismatch,
    /// `ca-cert.pem` has expired or is not valid yet.
    #[error(
        "ca-cert.pem is valid from {not_before} to {not_after} (unix seconds); it is {now} now"
    )]
    OutsideValidity {
        /// Start of validity.
        not_before: i64,
        /// End of validity.
        not_after: i64,
        /// The time it was checked at.
        now: i64,
    },
    /// `root-cert.pem` or `cert-chain.pem` is unusable.
    #[error("trust bundle: {0}")]
    Bundle(#[from] BundleError),
    /// The CA certificate does not chain to a root of `root-cert.pem`.
    #[error(
        "ca-cert.pem does not chain to root-cert.pem: a test certificate it issued was refused: {0}"
    )]
    DoesNotChain(String),
    /// Making a new root failed.
    #[error("could not create the root: {0}")]
    Generate(rcgen::Error),
}

/// Why a certificate was not issued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// The CSR was refused.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// The identity is in another trust domain than this CA's.
    #[error("identity {id} is not in this CA's trust domain {trust_domain}")]
    WrongTrustDomain {
        /// The identity asked for.
        id: SpiffeId,
        /// The CA's trust domain.
        trust_domain: TrustDomain,
    },
    /// The requested lifetime is zero or beyond the maximum.
    #[error("requested lifetime of {requested:?} is outside 1s..={max:?}")]
    Lifetime {
        /// What was asked.
        requested: Duration,
        /// The maximum this CA issues.
        max: Duration,
    },
    /// The signing certificate has expired, so nothing it signs would verify.
    #[error("the CA certificate expired; no certificate can be issued until it is replaced")]
    IssuerExpired,
    /// At the given time the signing certificate is not valid yet, and would not be before
    /// the requested certificate expired (its validity would end before it began).
    #[error(
        "the CA certificate is not valid before {issuer_not_before} (unix seconds); \
         it cannot issue at {now}"
    )]
    IssuerNotYetValid {
        /// Start of the signing certificate's validity, in seconds since the epoch.
        issuer_not_before: u64,
        /// The time issuance was asked for, in seconds since the epoch.
        now: u64,
    },
    /// Signing failed.
    #[error("signing failed: {0}")]
    Signing(rcgen::Error),
}

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
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Trellis");
        // A per-root suffix keeps subjects distinct, so that during a rotation (several roots in
        // one bundle) path building finds the right issuer and an unknown CA is reported as such.
        let serial = random_serial().map_err(CaLoadError::Generate)?;
        let suffix = hex(serial.as_ref().get(..4).unwrap_or_default());
        dn.push(
            DnType::CommonName,
            format!("Trellis root CA for {trust_domain} {suffix}"),
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
        params.not_after = to_offset(now + ROOT_LIFETIME);
        params.serial_number = Some(serial);
        let cert = params.self_signed(&key).map_err(CaLoadError::Generate)?;
        let pem = cert.pem();
        Ok(Self {
            ca_cert_pem: pem.clone(),
            ca_key_pem: key.serialize_pem(),
            cert_chain_pem: pem.clone(),
            root_cert_pem: pem,
        })
    }
}

/// A loaded, checked certificate authority that issues SVIDs for one trust domain.
pub struct CertificateAuthority {
    /// The trust domain every issued identity must belong to.
    trust_domain: TrustDomain,
    /// Signs certificates; holds the CA key.
    issuer: Issuer<'static, KeyPair>,
    /// The certificates sent after the leaf: the signing certificate unless it is a root,
    /// then the intermediates above it. Never the root itself.
    chain: Vec<CertificateDer<'static>>,
    /// The roots workloads trust.
    bundle: TrustBundle,
    /// Validity of the signing certificate; leaves never outlive it.
    issuer_not_before: SystemTime,
    /// See `issuer_not_before`.
    issuer_not_after: SystemTime,
    /// Longest lifetime a caller may ask for.
    max_ttl: Duration,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("chain_len", &self.chain.len())
            .field("roots", &self.bundle.roots().len())
            .field("issuer_not_after", &self.issuer_not_after)
            .field("max_ttl", &self.max_ttl)
            .finish_non_exhaustive()
    }
}

/// A freshly issued X509-SVID.
#[derive(Debug, Clone)]
pub struct IssuedSvid {
    /// The leaf certificate.
    pub leaf: CertificateDer<'static>,
    /// Intermediates to send after the leaf (empty when the CA is a root).
    pub chain: Vec<CertificateDer<'static>>,
    /// The serial number, lowercase hex, for audit logs.
    pub serial: String,
    /// Start of validity (back-dated for clock skew).
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl IssuedSvid {
    /// Leaf then chain, as concatenated PEM (`svid.pem`).
    pub fn chain_pem(&self) -> String {
        std::iter::once(&self.leaf)
            .chain(self.chain.iter())
            .map(|c| der_to_pem(c))
            .collect()
    }
}

impl CertificateAuthority {
    /// Loads and checks CA material: key matches certificate, certificate is a CA and valid
    /// at `now`, and a certificate it issues verifies against `root-cert.pem`.
    pub fn load(
        trust_domain: TrustDomain,
        material: &CaMaterial,
        now: SystemTime,
    ) -> Result<Self, CaLoadError> {
        let key = KeyPair::from_pem(&material.ca_key_pem).map_err(CaLoadError::BadKey)?;
        let ca_cert = match certs_from_pem(material.ca_cert_pem.as_bytes()) {
            Ok(certs) if certs.len() == 1 => certs.into_iter().next(),
            Ok(certs) => {
                return Err(CaLoadError::BadCert(format!(
                    "holds {} certificates; exactly one is expected",
                    certs.len()
                )));
            }
            Err(e) => return Err(CaLoadError::BadCert(e.to_string())),
        }
        .ok_or_else(|| CaLoadError::BadCert("no certificate".into()))?;
        let (issuer_not_before, issuer_not_after) = check_ca_cert(&ca_cert, &key, now)?;
        let bundle =
            TrustBundle::from_pem(trust_domain.clone(), material.root_cert_pem.as_bytes())?;
        let chain = build_chain(&ca_cert, &material.cert_chain_pem, &bundle)?;
        let issuer = Issuer::from_ca_cert_der(&ca_cert, key)
            .map_err(|e| CaLoadError::BadCert(e.to_string()))?;
        let ca = Self {
            trust_domain,
            issuer,
            chain,
            bundle,
            issuer_not_before,
            issuer_not_after,
            max_ttl: DEFAULT_MAX_SVID_TTL,
        };
        ca.self_test(now)?;
        Ok(ca)
    }

    /// Sets the longest lifetime callers may request (default seven days).
    pub fn with_max_ttl(mut self, max_ttl: Duration) -> Self {
        self.max_ttl = max_ttl;
        self
    }

    /// Adds extra roots to the bundle handed to workloads (root rotation).
    pub fn with_extra_roots(
        mut self,
        roots: &[CertificateDer<'static>],
    ) -> Result<Self, BundleError> {
        self.bundle = self.bundle.merged_with(roots)?;
        Ok(self)
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The trust bundle workloads should use.
    pub fn bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    /// When the signing certificate expires.
    pub fn issuer_not_after(&self) -> SystemTime {
        self.issuer_not_after
    }

    /// The longest lifetime callers may request.
    pub fn max_ttl(&self) -> Duration {
        self.max_ttl
    }

    /// Issues an X509-SVID for `identity` (established by the caller's authentication) over
    /// the key of `csr`, valid for `ttl` from `now` but never past the issuer's expiry.
    pub fn issue(
        &self,
        csr: &ValidatedCsr,
        identity: &SpiffeId,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<IssuedSvid, IssueError> {
        if identity.trust_domain() != &self.trust_domain {
            return Err(IssueError::WrongTrustDomain {
                id: identity.clone(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        csr.check_identity(identity)?;
        let uri = identity
            .to_string()
            .try_into()
            .map_err(IssueError::Signing)?;
        self.sign_leaf(
            vec![SanType::URI(uri)],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            csr.public_key(),
            ttl,
            now,
        )
    }

    /// Issues a TLS *server* certificate with DNS names (not a SPIFFE identity) for `key`: the
    /// admission webhook's serving certificate, which the Kubernetes API server checks by name.
    pub fn issue_dns_server(
        &self,
        key: &WorkloadKey,
        dns_names: &[String],
        ttl: Duration,
        now: SystemTime,
    ) -> Result<IssuedSvid, IssueError> {
        let sans = dns_names
            .iter()
            .map(|n| {
                n.clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(IssueError::Signing)
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.sign_leaf(
            sans,
            vec![ExtendedKeyUsagePurpose::ServerAuth],
            key.key_pair(),
            ttl,
            now,
        )
    }

    /// Signs a leaf (`cA=false`, KeyUsage digitalSignature) with the given SANs and EKUs over
    /// `public_key`, valid for `ttl` from `now` (back-dated for skew) but never past the issuer.
    pub(crate) fn sign_leaf(
        &self,
        sans: Vec<SanType>,
        ekus: Vec<ExtendedKeyUsagePurpose>,
        public_key: &impl PublicKeyData,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<IssuedSvid, IssueError> {
        if ttl < Duration::from_secs(1) || ttl > self.max_ttl {
            return Err(IssueError::Lifetime {
                requested: ttl,
                max: self.max_ttl,
            });
        }
        let not_after = (now + ttl).min(self.issuer_not_after);
        if not_after <= now {
            return Err(IssueError::IssuerExpired);
        }
        let not_before = back_dated(now).max(self.issuer_not_before);
        if not_after <= not_before {
            return Err(IssueError::IssuerNotYetValid {
                issuer_not_before: unix_secs(self.issuer_not_before),
                now: unix_secs(now),
            });
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = ekus;
        params.use_authority_key_identifier_extension = true;
        params.not_before = to_offset(not_before);
        params.not_after = to_offset(not_after);
        let serial = random_serial().map_err(IssueError::Signing)?;
        let serial_hex = hex(serial.as_ref());
        params.serial_number = Some(serial);
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(IssueError::Signing)?;
        Ok(IssuedSvid {
            leaf: cert.der().clone(),
            chain: self.chain.clone(),
            serial: serial_hex,
            not_before,
            not_after,
        })
    }

    /// Issues a certificate for a throw-away key and verifies it against the bundle, so a CA
    /// that cannot produce verifiable certificates fails at load rather than in production.
    fn self_test(&self, now: SystemTime) -> Result<(), CaLoadError> {
        let fail = |e: String| CaLoadError::DoesNotChain(e);
        let key = WorkloadKey::generate().map_err(|e| fail(e.to_string()))?;
        let id = SpiffeId::for_service_account(&self.trust_domain, "trellis-self-test", "ca")
            .map_err(|e| fail(e.to_string()))?;
        let csr_der = key.csr(&id).map_err(|e| fail(e.to_string()))?;
        let csr = ValidatedCsr::parse(&csr_der).map_err(|e| fail(e.to_string()))?;
        let ttl = Duration::from_secs(60);
        let svid = self
            .issue(&csr, &id, ttl, now)
            .map_err(|e| fail(e.to_string()))?;
        let unix = UnixTime::since_unix_epoch(
            now.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        );
        verify_svid(
            &self.bundle,
            &svid.leaf,
            &svid.chain,
            unix,
            PeerRole::Client,
        )
        .map_err(|e| fail(e.to_string()))?;
        Ok(())
    }
}

/// Checks the signing certificate and returns its validity window.
fn check_ca_cert(
    ca_cert: &CertificateDer<'_>,
    key: &KeyPair,
    now: SystemTime,
) -> Result<(SystemTime, SystemTime), CaLoadError> {
    let (_, cert) =
        X509Certificate::from_der(ca_cert).map_err(|e| CaLoadError::BadCert(e.to_string()))?;
    if !cert.is_ca() {
        return Err(CaLoadError::NotCa {
            subject: cert.subject().to_string(),
        });
    }
    if cert.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(CaLoadError::KeyMismatch);
    }
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    let now_s = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    if now_s < not_before || now_s >= not_after {
        return Err(CaLoadError::OutsideValidity {
            not_before,
            not_after,
            now: now_s,
        });
    }
    Ok((from_unix(not_before), from_unix(not_after)))
}

/// The certificates to send after a leaf: `ca_cert` (unless it is itself a root), then the
/// intermediates of `cert-chain.pem`, leaving out duplicates and roots.
fn build_chain(
    ca_cert: &CertificateDer<'static>,
    cert_chain_pem: &str,
    bundle: &TrustBundle,
) -> Result<Vec<CertificateDer<'static>>, CaLoadError> {
    let is_root = |c: &CertificateDer<'_>| bundle.roots().iter().any(|r| r.as_ref() == c.as_ref());
    let mut chain = Vec::new();
    if !is_root(ca_cert) {
        chain.push(ca_cert.clone());
    }
    if !cert_chain_pem.trim().is_empty() {
        for cert in certs_from_pem(cert_chain_pem.as_bytes())? {
            if !is_root(&cert) && !chain.iter().any(|c| c.as_ref() == cert.as_ref()) {
                chain.push(cert);
            }
        }
    }
    Ok(chain)
}

/// A random positive 128-bit serial number (RFC 5280 allows up to 20 octets).
fn random_serial() -> Result<SerialNumber, rcgen::Error> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| rcgen::Error::RingUnspecified)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40; // positive, and never a short (leading-zero) encoding
    Ok(SerialNumber::from_slice(&bytes))
}

fn back_dated(now: SystemTime) -> SystemTime {
    now.checked_sub(CLOCK_SKEW)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn to_offset(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn from_unix(secs: i64) -> SystemTime {
    u64::try_from(secs)
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}
