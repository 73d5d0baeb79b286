//! The control plane's own serving certificate: an SVID for its own SPIFFE ID, issued by its own
//! CA at start and renewed at half its lifetime, swapped in without dropping connections.
//!
//! Owns: [`ServingCert`], a rustls certificate resolver, and the renewal task.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use trellis_ca::{CertificateAuthority, SpiffeId, ValidatedCsr, WorkloadKey};

use crate::ca_live::LiveCa;

/// Lifetime of the serving certificate.
const SERVING_TTL: Duration = Duration::from_secs(24 * 3600);

/// Why the serving certificate could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot issue the control plane's serving certificate: {0}")]
pub struct ServingCertError(String);

/// The current serving certificate, readable by rustls on every handshake.
#[derive(Debug)]
pub struct ServingCert {
    /// The certificate and key in use.
    current: RwLock<Arc<CertifiedKey>>,
    /// When the current certificate expires.
    not_after: RwLock<SystemTime>,
}

impl ServingCert {
    /// Issues the first certificate for `id`.
    pub fn issue(ca: &CertificateAuthority, id: &SpiffeId) -> Result<Self, ServingCertError> {
        let (key, not_after) = make(ca, id)?;
        Ok(Self {
            current: RwLock::new(Arc::new(key)),
            not_after: RwLock::new(not_after),
        })
    }

    /// Renews at half the lifetime, and at once whenever the CA changes (a rotation step: the
    /// certificate must chain to a root the mesh keeps), until `shutdown`.
    pub fn spawn_renewal(
        self: &Arc<Self>,
        live: Arc<LiveCa>,
        id: SpiffeId,
        shutdown: CancellationToken,
    ) {
        let this = self.clone();
        let mut cas = live.subscribe();
        tokio::spawn(async move {
            loop {
                let wait = SERVING_TTL / 2;
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                    changed = cas.changed() => if changed.is_err() { return },
                }
                let ca = cas.borrow_and_update().ca.clone();
                match make(&ca, &id) {
                    Ok((key, not_after)) => {
                        *this.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
                        *this.not_after.write().unwrap_or_else(|e| e.into_inner()) = not_after;
                        info!(id = %id, "serving certificate renewed");
                    }
                    Err(e) => {
                        warn!(error = %e, "serving certificate renewal failed; keeping the current one")
                    }
                }
            }
        });
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn make(
    ca: &CertificateAuthority,
    id: &SpiffeId,
) -> Result<(CertifiedKey, SystemTime), ServingCertError> {
    let err = |e: &dyn std::fmt::Display| ServingCertError(e.to_string());
    let key = WorkloadKey::generate().map_err(|e| err(&e))?;
    let csr = key.csr(id).map_err(|e| err(&e))?;
    let csr = ValidatedCsr::parse(&csr).map_err(|e| err(&e))?;
    let ttl = SERVING_TTL.min(ca.max_ttl());
    let svid = ca
        .issue(&csr, id, ttl, SystemTime::now())
        .map_err(|e| err(&e))?;
    let mut chain = vec![svid.leaf.clone()];
    chain.extend(svid.chain.iter().cloned());
    let provider = trellis_ca::tls::provider();
    let certified =
        CertifiedKey::from_der(chain, key.private_key_der(), &provider).map_err(|e| err(&e))?;
    Ok((certified, svid.not_after))
}
