//! What to do about what the CA store holds now (pure): nothing, adopt it (a step of a root
//! rotation), or restore what is in use (it was deleted, damaged, or would replace a root the
//! mesh trusts).
//!
//! Owns: [`judge`] and the rule it encodes. A rotation goes: add the new root to
//! `root-cert.pem` → switch `ca-cert.pem`/`ca-key.pem` to a CA under a root already trusted →
//! (certificates roll) → remove the old root. Each step is adopted; anything that would make
//! certificates in use unverifiable at once — a signer under a root the mesh does not trust
//! yet, the removal of the root the CA still signs under, or of the root it signed under until
//! this very edit — is refused and the held material restored.

use rustls_pki_types::CertificateDer;
use trellis_ca::{CaLoadError, CaMaterial, CertificateAuthority, RootSummary};

use crate::ca_store::StoreError;

/// The decision.
#[derive(Debug)]
pub enum Verdict {
    /// The store holds the material in use.
    Unchanged,
    /// An allowed change: use it from now on.
    Adopt(Box<Adoption>),
    /// The store lost or damaged the material in use, or holds a change that would break the
    /// mesh: write the held material back (a read-only plug-in directory: keep using it).
    Restore(Damage),
}

/// An allowed change, for the log, with the CA built from it.
#[derive(Debug)]
pub struct Adoption {
    /// The CA to use.
    pub ca: CertificateAuthority,
    /// The material it was built from.
    pub material: CaMaterial,
    /// Roots that joined the bundle.
    pub added: Vec<RootSummary>,
    /// Roots that left the bundle.
    pub removed: Vec<RootSummary>,
    /// The new signing certificate's subject, when it changed.
    pub new_signer: Option<String>,
}

/// Why the held material is restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Damage {
    /// Deleted, or emptied (a Secret replaced by an empty one).
    #[error("the CA material is gone (deleted or emptied)")]
    Missing,
    /// Some of it cannot be read (a file missing, not text, a key readable by others).
    #[error("the CA material cannot be read: {0}")]
    Unreadable(String),
    /// It reads but is not a usable CA (key and certificate differ, expired, no chain).
    #[error("the CA material is not a usable CA: {0}")]
    Unusable(String),
    /// The new signing certificate chains to a root the mesh does not trust yet.
    #[error(
        "the new CA certificate chains to root {root}, which is not in the trust bundle the mesh has now: add that root to root-cert.pem first (keeping the current CA), let proxies receive it, then switch ca-cert.pem and ca-key.pem"
    )]
    UntrustedSigner {
        /// Subject and fingerprint of the root it chains to.
        root: String,
    },
    /// A root that certificates in use chain to would leave the bundle.
    #[error(
        "root {root} would leave the trust bundle while certificates in use chain to it (the CA signs under it, or did until this change): switch the CA to another root first, wait for certificates to renew, then remove it"
    )]
    RemovesRootInUse {
        /// Subject and fingerprint of that root.
        root: String,
    },
}

impl Damage {
    /// A short stable label, for the log's `what` field.
    pub fn label(&self) -> &'static str {
        match self {
            Damage::Missing => "missing",
            Damage::Unreadable(_) => "unreadable",
            Damage::Unusable(_) => "unusable",
            Damage::UntrustedSigner { .. } => "untrusted_signer",
            Damage::RemovesRootInUse { .. } => "removes_root_in_use",
        }
    }
}

/// Decides what to do about `seen` (what the store holds) given the CA in use (`held`, built
/// from `held_material`). `build` makes a CA from material the way the running one was made.
pub fn judge(
    held: &CertificateAuthority,
    held_material: &CaMaterial,
    seen: Result<Option<CaMaterial>, StoreError>,
    build: impl FnOnce(&CaMaterial) -> Result<CertificateAuthority, CaLoadError>,
) -> Verdict {
    let material = match seen {
        Err(e) => return Verdict::Restore(Damage::Unreadable(e.to_string())),
        Ok(None) => return Verdict::Restore(Damage::Missing),
        Ok(Some(m)) if m.same_as(held_material) => return Verdict::Unchanged,
        Ok(Some(m)) => m,
    };
    let ca = match build(&material) {
        Ok(ca) => ca,
        Err(e) => return Verdict::Restore(Damage::Unusable(e.to_string())),
    };
    if !held.bundle().contains(ca.signer_root()) {
        return Verdict::Restore(Damage::UntrustedSigner {
            root: describe(ca.signer_root()),
        });
    }
    let removed: Vec<&CertificateDer<'static>> = held
        .bundle()
        .roots()
        .iter()
        .filter(|r| !ca.bundle().contains(r))
        .collect();
    if let Some(in_use) = removed.iter().find(|r| **r == held.signer_root()) {
        return Verdict::Restore(Damage::RemovesRootInUse {
            root: describe(in_use),
        });
    }
    let added = ca
        .bundle()
        .roots()
        .iter()
        .filter(|r| !held.bundle().contains(r))
        .filter_map(RootSummary::of)
        .collect();
    let new_signer = (held_material.ca_cert_pem.trim() != material.ca_cert_pem.trim())
        .then(|| signer_subject(&ca))
        .flatten();
    Verdict::Adopt(Box::new(Adoption {
        ca,
        material,
        added,
        removed: removed.into_iter().filter_map(RootSummary::of).collect(),
        new_signer,
    }))
}

/// `subject (sha256 …)` of a root, for messages.
pub fn describe(root: &CertificateDer<'_>) -> String {
    match RootSummary::of(root) {
        Some(s) => format!("{} (sha256 {})", s.subject, s.sha256),
        None => "(unparseable)".to_owned(),
    }
}

/// The subject of the CA's signing certificate: the first of its chain, or its root.
fn signer_subject(ca: &CertificateAuthority) -> Option<String> {
    let signer = ca.chain().first().unwrap_or(ca.signer_root());
    RootSummary::of(signer).map(|s| s.subject)
}

#[cfg(test)]
#[path = "change_tests.rs"]
mod tests;
