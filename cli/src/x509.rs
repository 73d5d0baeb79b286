//! Reading what `trellis check` needs off certificates: validity ends and subjects, and the
//! summary of a PEM trust bundle (through [`trellis_ca::TrustBundle`], which also checks that
//! every root is a CA certificate).
//!
//! Owns: turning DER and PEM into the plain facts of [`crate::check::facts`].

use std::time::{Duration, UNIX_EPOCH};

use trellis_ca::{TrustBundle, TrustDomain};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::check::facts::{CertDates, RootSummary};

/// The subject and end of validity of a DER certificate; `None` if it does not parse.
pub fn dates(der: &[u8]) -> Option<CertDates> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    Some(CertDates {
        subject: cert.subject().to_string(),
        not_after: UNIX_EPOCH + Duration::from_secs(secs),
    })
}

/// The roots of a PEM bundle: how many, and when the first expires.
pub fn roots(trust_domain: &TrustDomain, pem: &[u8]) -> Result<(TrustBundle, RootSummary), String> {
    let bundle = TrustBundle::from_pem(trust_domain.clone(), pem).map_err(|e| e.to_string())?;
    let earliest_expiry = bundle
        .earliest_expiry()
        .ok_or_else(|| "no root has a readable expiry date".to_owned())?;
    let summary = RootSummary {
        roots: bundle.roots().len(),
        earliest_expiry,
    };
    Ok((bundle, summary))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;
    use trellis_ca::CaMaterial;

    #[test]
    fn a_generated_root_is_summarised_with_its_ten_year_expiry() {
        let td = TrustDomain::new("cluster.local").unwrap();
        let now = SystemTime::now();
        let material = CaMaterial::generate_root(&td, now).unwrap();
        let (bundle, summary) = roots(&td, material.root_cert_pem.as_bytes()).unwrap();
        assert_eq!(summary.roots, 1);
        let years = summary
            .earliest_expiry
            .duration_since(now)
            .unwrap()
            .as_secs()
            / (365 * 86_400);
        assert!((9..=10).contains(&years), "{years} years");
        let d = dates(&bundle.roots()[0]).unwrap();
        assert_eq!(d.not_after, summary.earliest_expiry);
        assert!(!d.subject.is_empty());
    }

    #[test]
    fn garbage_is_not_a_bundle() {
        let td = TrustDomain::new("cluster.local").unwrap();
        assert!(roots(&td, b"not pem").is_err());
        assert!(dates(b"not der").is_none());
    }
}
