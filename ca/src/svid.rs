//! A workload's current identity document: its X509-SVID (leaf + chain), private key, and the
//! trust bundle it came with — and the TLS configurations built from them.
//!
//! Owns: [`Svid`], checked on construction (the leaf carries our key, verifies against the
//! bundle, and names the identity we expect). Fetching and renewing it is the caller's job.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::tls::{
    ExpectedServer, SpiffeClientVerifier, SpiffeServerVerifier, TlsConfigError, client_config,
    server_config,
};
use crate::verify::{PeerRole, VerifyError, verify_svid};
use crate::{SpiffeId, TrustBundle, WorkloadKey};

/// Why an issued certificate is not usable as our SVID.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SvidError {
    /// The leaf does not verify against the bundle.
    #[error("issued certificate does not verify: {0}")]
    Verify(#[from] VerifyError),
    /// The leaf certifies a different key than ours.
    #[error("issued certificate is for a different public key than the one we sent")]
    WrongKey,
    /// The leaf names a different identity than expected.
    #[error("issued certificate is for {got}, expected {expected}")]
    WrongIdentity {
        /// What we expected.
        expected: SpiffeId,
        /// What the certificate says.
        got: SpiffeId,
    },
}

/// An X509-SVID with its key and bundle.
#[derive(Clone)]
pub struct Svid {
    /// The identity the leaf carries.
    id: SpiffeId,
    /// Leaf first, then intermediates.
    chain: Vec<CertificateDer<'static>>,
    /// The private key (PKCS#8 DER). Never logged.
    key: Arc<PrivateKeyDer<'static>>,
    /// Roots to verify peers with.
    bundle: TrustBundle,
    /// Start of validity.
    not_before: SystemTime,
    /// End of validity.
    not_after: SystemTime,
    /// Serial number, lowercase hex.
    serial: String,
}

impl fmt::Debug for Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Svid")
            .field("id", &self.id.to_string())
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .field("chain_len", &self.chain.len())
            .field("key", &"[redacted]")
            .finish()
    }
}

impl Svid {
    /// Checks an issued leaf (+ intermediates) against `key`, `bundle` and, if given, the
    /// identity we asked for, at `now`.
    pub fn new(
        key: &WorkloadKey,
        leaf: CertificateDer<'static>,
        intermediates: Vec<CertificateDer<'static>>,
        bundle: TrustBundle,
        expected: Option<&SpiffeId>,
        now: SystemTime,
    ) -> Result<Self, SvidError> {
        let unix = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
        let verified = verify_svid(&bundle, &leaf, &intermediates, unix, PeerRole::Client)?;
        if let Some(expected) = expected.filter(|e| **e != verified.id) {
            return Err(SvidError::WrongIdentity {
                expected: expected.clone(),
                got: verified.id,
            });
        }
        let (_, cert) = X509Certificate::from_der(&leaf)
            .map_err(|e| SvidError::Verify(VerifyError::Malformed(e.to_string())))?;
        if cert.public_key().raw != key.public_key_spki().as_slice() {
            return Err(SvidError::WrongKey);
        }
        let secs = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
        let not_before = secs(cert.validity().not_before.timestamp());
        let serial = cert.raw_serial_as_string().replace(':', "");
        let mut chain = vec![leaf];
        chain.extend(intermediates);
        Ok(Self {
            id: verified.id,
            chain,
            key: Arc::new(key.private_key_der()),
            bundle,
            not_before,
            not_after: verified.not_after,
            serial,
        })
    }

    /// The identity.
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }
    /// Leaf first, then intermediates.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }
    /// The trust bundle.
    pub fn bundle(&self) -> &TrustBundle {
        &self.bundle
    }
    /// Start of validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }
    /// End of validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
    /// Serial number, lowercase hex.
    pub fn serial(&self) -> &str {
        &self.serial
    }
    /// The private key, for writing `svid.key` (mode 0600) or building TLS configs.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    /// The point at which to renew: `fraction` (e.g. 0.5) of the way through the lifetime.
    pub fn renew_at(&self, fraction: f64) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life.mul_f64(fraction.clamp(0.0, 1.0))
    }

    /// Whether this SVID's leaf still verifies under `bundle` at `now` (after the mesh's roots
    /// changed: a leaf whose root left the bundle is refused by every peer).
    pub fn verifies_under(&self, bundle: &TrustBundle, now: SystemTime) -> Result<(), VerifyError> {
        let unix = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
        let (leaf, intermediates) = self.chain.split_first().ok_or(VerifyError::NoCertificate)?;
        verify_svid(bundle, leaf, intermediates, unix, PeerRole::Client).map(|_| ())
    }

    /// A TLS 1.3 server config presenting this SVID and requiring client SVIDs of the bundle.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<ServerConfig, TlsConfigError> {
        self.server_config_trusting(&self.bundle, alpn)
    }

    /// Like [`Self::server_config`], but checking clients against `bundle` (the mesh's current
    /// roots, which may have changed since this SVID was issued).
    pub fn server_config_trusting(
        &self,
        bundle: &TrustBundle,
        alpn: &[&[u8]],
    ) -> Result<ServerConfig, TlsConfigError> {
        server_config(
            self.chain.clone(),
            self.private_key(),
            Arc::new(SpiffeClientVerifier::mandatory(bundle.clone())),
            alpn,
        )
    }

    /// A TLS 1.3 client config presenting this SVID and expecting `expected` on the server.
    pub fn client_config(
        &self,
        expected: ExpectedServer,
        alpn: &[&[u8]],
    ) -> Result<ClientConfig, TlsConfigError> {
        self.client_config_trusting(&self.bundle, expected, alpn)
    }

    /// Like [`Self::client_config`], but checking the server against `bundle`.
    pub fn client_config_trusting(
        &self,
        bundle: &TrustBundle,
        expected: ExpectedServer,
        alpn: &[&[u8]],
    ) -> Result<ClientConfig, TlsConfigError> {
        client_config(
            Arc::new(SpiffeServerVerifier::new(bundle.clone(), expected)),
            Some((self.chain.clone(), self.private_key())),
            alpn,
        )
    }
}
