//! `svid_chain`: the certificate chain a peer presents in a TLS handshake, verified against a
//! fixed, valid trust bundle at a fixed time (`fixtures/svid-root.pem`, `fixtures/svid-now`,
//! written by `trellis-fuzz seed`), as `trellis_ca::tls`'s verifiers do.
//!
//! Input: the chain as records of a 2-byte big-endian length and that many bytes of DER; the
//! first is the leaf, up to four more are intermediates (a TLS peer sends a list the same way).

use std::time::Duration;

use anyhow::Context;
use rustls_pki_types::{CertificateDer, UnixTime};
use trellis_ca::{PeerRole, TrustBundle, TrustDomain, peer_spiffe_id, verify_svid};

/// Intermediates beyond the leaf that are read (rustls passes what the peer sent; webpki's
/// path building bounds its own work).
const MAX_INTERMEDIATES: usize = 4;

/// The bundle and the time, loaded once.
#[derive(Debug)]
pub struct SvidChain {
    /// The roots every chain is verified against.
    bundle: TrustBundle,
    /// The fixed time (inside the seeds' validity).
    now: UnixTime,
}

impl SvidChain {
    /// Reads the fixtures.
    pub fn load() -> anyhow::Result<Self> {
        let dir = crate::fixtures_dir();
        let pem = std::fs::read(dir.join("svid-root.pem")).context("fixtures/svid-root.pem")?;
        let now: u64 = std::fs::read_to_string(dir.join("svid-now"))
            .context("fixtures/svid-now")?
            .trim()
            .parse()
            .context("fixtures/svid-now holds unix seconds")?;
        Ok(Self {
            bundle: TrustBundle::from_pem(TrustDomain::default(), &pem)?,
            now: UnixTime::since_unix_epoch(Duration::from_secs(now)),
        })
    }
}

impl super::Stateful for SvidChain {
    fn run(&self, data: &[u8]) {
        let mut certs = split_chain(data).into_iter().map(CertificateDer::from);
        let Some(leaf) = certs.next() else { return };
        let intermediates: Vec<CertificateDer<'_>> = certs.take(MAX_INTERMEDIATES).collect();
        for role in [PeerRole::Client, PeerRole::Server] {
            if let Ok(verified) = verify_svid(&self.bundle, &leaf, &intermediates, self.now, role) {
                assert_eq!(
                    peer_spiffe_id(&leaf).as_ref(),
                    Ok(&verified.id),
                    "the verified identity is the leaf's"
                );
                assert_eq!(verified.id.trust_domain(), self.bundle.trust_domain());
            }
        }
        let _ = peer_spiffe_id(&leaf);
    }
}

/// Splits length-prefixed records; a truncated last record is taken as it is.
pub fn split_chain(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let [hi, lo, rest @ ..] = data {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(rest.len());
        let (cert, tail) = rest.split_at(len);
        out.push(cert);
        data = tail;
    }
    out
}

/// The inverse of [`split_chain`], for seeds.
pub fn join_chain(certs: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for cert in certs {
        let len = u16::try_from(cert.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(cert.get(..usize::from(len)).unwrap_or(cert));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_split_back_into_the_certificates_they_were_joined_from() {
        let certs: [&[u8]; 3] = [b"leaf", b"", b"intermediate"];
        assert_eq!(split_chain(&join_chain(&certs)), certs);
        assert_eq!(split_chain(&[0, 9, 1, 2]), [&[1u8, 2][..]]);
        assert!(split_chain(&[7]).is_empty());
    }
}
