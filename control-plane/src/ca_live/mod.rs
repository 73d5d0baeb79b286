//! The CA while the control plane runs: the material and [`CertificateAuthority`] in use, which
//! can change without a restart (a root rotation step, a plug-in CA's files replaced), and the
//! trust bundle derived from it.
//!
//! Owns: [`LiveCa`] — the one place the current CA is read from (certifying, the serving
//! certificate, the injector's certificate, the TLS verifier of 15012, discovery's bundle, the
//! published bundle) — and the rule of what may change ([`change`], pure) and the loop that
//! watches the store and restores or adopts what it finds ([`reconcile`]). Where the material
//! is kept is [`crate::ca_store`]'s.

pub mod change;
pub mod publish;
pub mod reconcile;
mod verifier;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use tokio::sync::watch;
use trellis_ca::{
    CaLoadError, CaMaterial, CertificateAuthority, RootSummary, TrustBundle, TrustDomain,
    fingerprint,
};
pub use verifier::LiveClientVerifier;

use crate::metrics::Metrics;

/// One consistent CA: what is stored, and what was built from it.
#[derive(Debug)]
pub struct CaState {
    /// The CA (with `--extra-root`s merged into its bundle).
    pub ca: Arc<CertificateAuthority>,
    /// The material as stored (what a restore writes back).
    pub material: CaMaterial,
    /// Counts adoptions since start (0: the CA the control plane started with).
    pub revision: u64,
}

/// The CA in use and how to build a replacement.
#[derive(Debug)]
pub struct LiveCa {
    /// The current CA.
    state: watch::Sender<Arc<CaState>>,
    /// The current bundle; changes only when the roots do.
    bundle: watch::Sender<Arc<TrustBundle>>,
    /// The trust domain every CA must serve.
    trust_domain: TrustDomain,
    /// `--max-ttl`, applied to every CA built.
    max_ttl: Duration,
    /// `--extra-root`s (read at start), merged into every CA built.
    extra_roots: Vec<CertificateDer<'static>>,
    /// For each root the CA stopped signing under: until when leaves issued under it may
    /// still be valid (switch time + the longest lifetime issued). In memory only.
    retired: Mutex<Vec<(String, SystemTime)>>,
    /// Expiry gauges follow the CA.
    metrics: Arc<Metrics>,
}

impl LiveCa {
    /// Builds the first CA from `material`.
    pub fn start(
        trust_domain: TrustDomain,
        material: CaMaterial,
        max_ttl: Duration,
        extra_roots: Vec<CertificateDer<'static>>,
        metrics: Arc<Metrics>,
        now: SystemTime,
    ) -> Result<Self, CaLoadError> {
        let ca = build(&trust_domain, &material, max_ttl, &extra_roots, now)?;
        let bundle = Arc::new(ca.bundle().clone());
        let state = Arc::new(CaState {
            ca: Arc::new(ca),
            material,
            revision: 0,
        });
        let live = Self {
            state: watch::channel(state).0,
            bundle: watch::channel(bundle).0,
            trust_domain,
            max_ttl,
            extra_roots,
            retired: Mutex::new(Vec::new()),
            metrics,
        };
        live.update_metrics();
        Ok(live)
    }

    /// The CA to issue with now.
    pub fn current(&self) -> Arc<CertificateAuthority> {
        self.state.borrow().ca.clone()
    }

    /// The current state (CA and stored material).
    pub fn state(&self) -> Arc<CaState> {
        self.state.borrow().clone()
    }

    /// Follows every change of the CA.
    pub fn subscribe(&self) -> watch::Receiver<Arc<CaState>> {
        self.state.subscribe()
    }

    /// Follows the trust bundle; wakes only when the set of roots changes.
    pub fn bundles(&self) -> watch::Receiver<Arc<TrustBundle>> {
        self.bundle.subscribe()
    }

    /// The longest lifetime this CA issues.
    pub fn max_ttl(&self) -> Duration {
        self.max_ttl
    }

    /// Builds (and checks) a CA from `material` the way the running one was built.
    pub fn build(
        &self,
        material: &CaMaterial,
        now: SystemTime,
    ) -> Result<CertificateAuthority, CaLoadError> {
        build(
            &self.trust_domain,
            material,
            self.max_ttl,
            &self.extra_roots,
            now,
        )
    }

    /// Puts `ca` (built from `material`) in use. New requests, handshakes and discovery
    /// updates see it; certificates already issued stay valid as long as their root is
    /// trusted.
    pub fn adopt(&self, material: CaMaterial, ca: CertificateAuthority, now: SystemTime) {
        let old = self.state();
        if old.ca.signer_root() != ca.signer_root() {
            let until = now + self.max_ttl;
            let mut retired = self.retired.lock().unwrap_or_else(PoisonError::into_inner);
            retired.retain(|(fp, _)| *fp != fingerprint(old.ca.signer_root()));
            retired.push((fingerprint(old.ca.signer_root()), until));
        }
        let bundle_changed = !old.ca.bundle().same_roots(ca.bundle());
        let bundle = Arc::new(ca.bundle().clone());
        self.state.send_replace(Arc::new(CaState {
            ca: Arc::new(ca),
            material,
            revision: old.revision + 1,
        }));
        if bundle_changed {
            self.bundle.send_replace(bundle);
        }
        self.update_metrics();
    }

    /// Until when leaves issued under `root` (a root this CA signed under earlier) may still
    /// be valid; `None` when no leaf under it can be valid any more as far as this process
    /// knows (it never signed under it, or long enough ago).
    pub fn still_valid_under(&self, root: &RootSummary, now: SystemTime) -> Option<SystemTime> {
        self.retired
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(fp, until)| *fp == root.sha256 && *until > now)
            .map(|(_, until)| *until)
    }

    fn update_metrics(&self) {
        let ca = self.current();
        let root_not_after = ca
            .bundle()
            .earliest_expiry()
            .unwrap_or(ca.issuer_not_after());
        self.metrics.set_ca(
            root_not_after,
            ca.issuer_not_after(),
            ca.bundle().roots().len(),
        );
    }
}

/// Loads `material` as a CA for `trust_domain` with `max_ttl` and the extra roots.
fn build(
    trust_domain: &TrustDomain,
    material: &CaMaterial,
    max_ttl: Duration,
    extra_roots: &[CertificateDer<'static>],
    now: SystemTime,
) -> Result<CertificateAuthority, CaLoadError> {
    let ca = CertificateAuthority::load(trust_domain.clone(), material, now)?.with_max_ttl(max_ttl);
    if extra_roots.is_empty() {
        return Ok(ca);
    }
    Ok(ca.with_extra_roots(extra_roots)?)
}
