//! `csr`: the bytes a workload sends to `Certify` (DER, or PEM from Istio-style clients), as
//! the control plane reads them. What `ValidatedCsr` accepts must be issuable, and the SVID
//! issued over it must verify as the authenticated identity.

use std::time::{Duration, SystemTime};

use rustls_pki_types::UnixTime;
use trellis_ca::{
    CaMaterial, CertificateAuthority, PeerRole, SpiffeId, TrustDomain, ValidatedCsr, verify_svid,
};

/// The identity authentication established, when the CSR names none (or another).
const AUTHENTICATED: &str = "spiffe://cluster.local/ns/shop/sa/frontend";

/// A CA made once, before the fuzzer's loop.
#[derive(Debug)]
pub struct Csr {
    /// Issues for accepted CSRs.
    ca: CertificateAuthority,
    /// The time everything happens at.
    now: SystemTime,
    /// The caller's identity.
    authenticated: SpiffeId,
}

impl Csr {
    /// Makes the CA (a fresh root: the CSR path does not depend on its key).
    pub fn new() -> anyhow::Result<Self> {
        let td = TrustDomain::default();
        let now = SystemTime::now();
        let material = CaMaterial::generate_root(&td, now)?;
        Ok(Self {
            ca: CertificateAuthority::load(td, &material, now)?,
            now,
            authenticated: SpiffeId::parse(AUTHENTICATED)?,
        })
    }
}

impl super::Stateful for Csr {
    fn run(&self, data: &[u8]) {
        let Ok(csr) = ValidatedCsr::parse(data) else {
            return;
        };
        assert!(data.len() <= trellis_ca::csr::MAX_CSR_BYTES);
        // The caller is whoever the CSR asks to be, when that is a valid identity of ours:
        // the identity check passes and the issuing path runs.
        let authenticated = csr
            .requested_identity()
            .filter(|id| id.trust_domain() == self.ca.trust_domain())
            .unwrap_or(&self.authenticated)
            .clone();
        if csr
            .requested_identity()
            .is_some_and(|r| r != &authenticated)
        {
            assert!(csr.check_identity(&authenticated).is_err());
            return;
        }
        csr.check_identity(&authenticated)
            .expect("a CSR asking for the caller's identity, or none, passes");
        let Ok(issued) = self
            .ca
            .issue(&csr, &authenticated, Duration::from_secs(3600), self.now)
        else {
            return;
        };
        let now = UnixTime::since_unix_epoch(
            self.now
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        );
        for role in [PeerRole::Client, PeerRole::Server] {
            let verified = verify_svid(self.ca.bundle(), &issued.leaf, &issued.chain, now, role)
                .unwrap_or_else(|e| panic!("an SVID issued over an accepted CSR fails: {e}"));
            assert_eq!(verified.id, authenticated);
        }
    }
}
