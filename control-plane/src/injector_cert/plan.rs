//! What the injector's Secret needs (pure): nothing until the renewal time, a new `ca.crt`
//! only (the roots changed), or a new certificate — because it is gone or damaged, names the
//! wrong host, is due for renewal, or was issued under a root the CA no longer signs under
//! (re-issued at once on a CA switch, so that the old root can later leave the webhook's
//! `caBundle` without the API server ever meeting a certificate it does not trust).
//!
//! Owns: [`plan`], [`Plan`] and [`Why`].

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::ByteString;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use trellis_ca::{CertificateAuthority, WorkloadKey};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Secret key of the certificate chain (leaf first).
pub const TLS_CRT: &str = "tls.crt";
/// Secret key of the private key.
pub const TLS_KEY: &str = "tls.key";
/// Secret key of the mesh's roots.
pub const CA_CRT: &str = "ca.crt";

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// It is right; look again at `renew_at` at the latest.
    Keep {
        /// Half the certificate's lifetime.
        renew_at: SystemTime,
    },
    /// Keep the certificate and key, write the current roots as `ca.crt`.
    Rebundle,
    /// Issue a new certificate (and write everything).
    Reissue(Why),
}

/// Why a new certificate is issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Why {
    /// The Secret does not exist or lacks a key.
    #[error("the Secret is missing or lacks {0}")]
    Missing(&'static str),
    /// A key's value does not parse.
    #[error("{0} does not parse")]
    Unreadable(&'static str),
    /// `tls.key` is not the key of `tls.crt`.
    #[error("tls.key does not belong to tls.crt")]
    KeyMismatch,
    /// The certificate lacks a name the API server uses.
    #[error("tls.crt does not name {0}")]
    WrongNames(String),
    /// The certificate chains to no root of the bundle.
    #[error("tls.crt chains to no root of the trust bundle")]
    Untrusted,
    /// The CA signs under another root now.
    #[error("the CA signs under another root now")]
    SignerChanged,
    /// Half its lifetime is over.
    #[error("half of its lifetime is over")]
    Renewal,
}

impl Why {
    /// Whether this means someone or something changed the Secret (logged at `warn`), as
    /// opposed to the certificate's own lifecycle (logged at `info`).
    pub fn is_damage(&self) -> bool {
        !matches!(self, Why::SignerChanged | Why::Renewal)
    }
}

/// Decides what the Secret holding `data` (`None`: no Secret) needs so that it carries a
/// certificate for `names` issued by `ca` and the roots of `ca`'s bundle.
pub fn plan(
    data: Option<&BTreeMap<String, ByteString>>,
    ca: &CertificateAuthority,
    names: &[String],
    now: SystemTime,
) -> Plan {
    match check(data, ca, names, now) {
        Err(why) => Plan::Reissue(why),
        Ok(renew_at) => {
            let bundle = ca.bundle().to_pem();
            let ca_crt = data.and_then(|d| d.get(CA_CRT)).map(|b| b.0.as_slice());
            if ca_crt == Some(bundle.as_bytes()) {
                Plan::Keep { renew_at }
            } else {
                Plan::Rebundle
            }
        }
    }
}

/// The certificate's renewal time, or why it must be replaced.
fn check(
    data: Option<&BTreeMap<String, ByteString>>,
    ca: &CertificateAuthority,
    names: &[String],
    now: SystemTime,
) -> Result<SystemTime, Why> {
    let data = data.ok_or(Why::Missing(TLS_CRT))?;
    let get = |k: &'static str| data.get(k).map(|b| b.0.as_slice()).ok_or(Why::Missing(k));
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(get(TLS_CRT)?)
        .collect::<Result<_, _>>()
        .map_err(|_| Why::Unreadable(TLS_CRT))?;
    let (leaf, intermediates) = chain.split_first().ok_or(Why::Unreadable(TLS_CRT))?;
    let key = match PrivateKeyDer::from_pem_slice(get(TLS_KEY)?) {
        Ok(PrivateKeyDer::Pkcs8(k)) => WorkloadKey::from_pkcs8_der(k.secret_pkcs8_der())
            .map_err(|_| Why::Unreadable(TLS_KEY))?,
        _ => return Err(Why::Unreadable(TLS_KEY)),
    };
    let (_, cert) = X509Certificate::from_der(leaf).map_err(|_| Why::Unreadable(TLS_CRT))?;
    if cert.public_key().raw != key.public_key_spki().as_slice() {
        return Err(Why::KeyMismatch);
    }
    let dns: Vec<&str> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(*d),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some(missing) = names.iter().find(|n| !dns.contains(&n.as_str())) {
        return Err(Why::WrongNames(missing.clone()));
    }
    let root = ca
        .bundle()
        .issuing_root(leaf, intermediates)
        .ok_or(Why::Untrusted)?;
    if root != ca.signer_root() {
        return Err(Why::SignerChanged);
    }
    let secs = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    let not_before = secs(cert.validity().not_before.timestamp());
    let not_after = secs(cert.validity().not_after.timestamp());
    let life = not_after.duration_since(not_before).unwrap_or_default();
    let renew_at = not_before + life / 2;
    if now >= renew_at {
        return Err(Why::Renewal);
    }
    Ok(renew_at)
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
