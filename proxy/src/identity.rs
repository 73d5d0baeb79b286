//! The proxy's own identity: a key made in memory, an SVID from the control plane, renewal at
//! half its lifetime (with jitter) and capped exponential backoff on failure.
//!
//! Owns: [`IdentityManager`] and [`CurrentSvid`] (the SVID plus the TLS configurations built
//! from it, cached). New SVIDs are published through a `watch` channel: listeners and the pool
//! take the current one for *new* connections; open connections keep theirs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use rustls::{ClientConfig, ServerConfig};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use trellis_ca::tls::{ExpectedServer, TlsConfigError};
use trellis_ca::{SpiffeId, Svid, TrustBundle, WorkloadKey};
use trellis_client::{IdentityClient, connect};

use crate::metrics::{Metrics, ResultLabels};

/// ALPN of the tunnel.
pub const ALPN_H2: &[u8] = b"h2";

/// The current SVID and TLS configurations made from it.
#[derive(Debug)]
pub struct CurrentSvid {
    /// The SVID.
    pub svid: Svid,
    /// Increases with every new SVID; pooled connections of older generations take no new streams.
    pub generation: u64,
    /// The tunnel server's configuration (requires client SVIDs).
    server: Arc<ServerConfig>,
    /// Client configurations by the identity they expect of the server.
    clients: Mutex<HashMap<SpiffeId, Arc<ClientConfig>>>,
}

impl CurrentSvid {
    /// Builds the configurations for `svid`.
    pub fn new(svid: Svid, generation: u64) -> Result<Self, TlsConfigError> {
        let server = Arc::new(svid.server_config(&[ALPN_H2])?);
        Ok(Self {
            svid,
            generation,
            server,
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// The tunnel server configuration.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// A client configuration that accepts only `peer` as the server.
    pub fn client_config(&self, peer: &SpiffeId) -> Result<Arc<ClientConfig>, TlsConfigError> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = clients.get(peer) {
            return Ok(c.clone());
        }
        let config = Arc::new(
            self.svid
                .client_config(ExpectedServer::Exact(peer.clone()), &[ALPN_H2])?,
        );
        clients.insert(peer.clone(), config.clone());
        Ok(config)
    }
}

/// Readers of the current SVID (`None` until the first one arrives).
pub type SvidWatch = watch::Receiver<Option<Arc<CurrentSvid>>>;

/// Where and how to get certificates.
#[derive(Debug, Clone)]
pub struct IdentitySource {
    /// Control plane address.
    pub control_plane: String,
    /// The identity it must present.
    pub control_plane_id: SpiffeId,
    /// The token file (re-read at every request: projected tokens rotate).
    pub token_file: std::path::PathBuf,
    /// Roots to trust for the control plane until it gives us a bundle.
    pub bootstrap_bundle: TrustBundle,
    /// The identity to ask for, if known.
    pub expected_id: Option<SpiffeId>,
    /// Requested lifetime.
    pub ttl: Option<Duration>,
}

/// Fetches and renews the SVID.
#[derive(Debug)]
pub struct IdentityManager {
    /// Where to get certificates.
    source: IdentitySource,
    /// Publishes new SVIDs.
    tx: watch::Sender<Option<Arc<CurrentSvid>>>,
    /// Renewal metrics.
    metrics: Arc<Metrics>,
}

impl IdentityManager {
    /// A manager and the watch its SVIDs are published on.
    pub fn new(source: IdentitySource, metrics: Arc<Metrics>) -> (Self, SvidWatch) {
        let (tx, rx) = watch::channel(None);
        (
            Self {
                source,
                tx,
                metrics,
            },
            rx,
        )
    }

    /// Gets the first SVID, then renews until `shutdown`. Never gives up: while the control
    /// plane is unreachable the current SVID keeps serving until it expires.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut generation = 0u64;
        let mut failures = 0u32;
        // When the current SVID arrived: its lifetime is counted from here, not from its
        // NotBefore, which the CA back-dates (5 min) for clock skew — counted from there, a
        // certificate of a few minutes would be due at once, and renewed in a loop.
        let mut installed_at = SystemTime::now();
        // The delay before the next attempt after a failure (drawn once, so the log is true).
        let mut retry_in = Duration::ZERO;
        loop {
            let current = self.tx.borrow().clone();
            let wait = match &current {
                None if failures == 0 => Duration::ZERO,
                Some(c) if failures == 0 => {
                    let start = installed_at.max(c.svid.not_before());
                    let life = c.svid.not_after().duration_since(start).unwrap_or_default();
                    let renew_at = start + life.mul_f64(0.5 - 0.1 * fastrand::f64());
                    renew_at
                        .duration_since(SystemTime::now())
                        .unwrap_or(Duration::ZERO)
                }
                _ => retry_in,
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            match self.fetch(current.as_deref().map(|c| &c.svid)).await {
                Ok(svid) => {
                    generation += 1;
                    failures = 0;
                    installed_at = SystemTime::now();
                    self.metrics
                        .renewals
                        .get_or_create(&ResultLabels { result: "ok" })
                        .inc();
                    self.metrics.control_plane_unreachable.set(0);
                    self.metrics.cert_expiry.set(unix_secs(svid.not_after()));
                    info!(
                        id = %svid.id(),
                        serial = svid.serial(),
                        not_after = %humantime::format_rfc3339_seconds(svid.not_after()),
                        generation,
                        "certificate installed"
                    );
                    match CurrentSvid::new(svid, generation) {
                        Ok(c) => {
                            self.tx.send_replace(Some(Arc::new(c)));
                        }
                        Err(e) => {
                            warn!(error = %e, "certificate unusable for TLS; keeping the current one")
                        }
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    retry_in = crate::backoff::delay(failures);
                    self.metrics
                        .renewals
                        .get_or_create(&ResultLabels { result: "error" })
                        .inc();
                    self.metrics.control_plane_unreachable.set(1);
                    let left = current
                        .as_ref()
                        .and_then(|c| c.svid.not_after().duration_since(SystemTime::now()).ok());
                    warn!(
                        error = %e,
                        attempt = failures,
                        ?retry_in,
                        current_valid_for = ?left,
                        "certificate request failed; serving with the current certificate while it lasts"
                    );
                }
            }
        }
    }

    async fn fetch(&self, current: Option<&Svid>) -> Result<Svid, String> {
        let src = &self.source;
        let token = std::fs::read_to_string(&src.token_file)
            .map_err(|e| format!("cannot read token file {}: {e}", src.token_file.display()))?;
        if token.trim().is_empty() {
            return Err(format!(
                "token file {} is empty; it must hold the bearer token (the projected ServiceAccount token, or a join token)",
                src.token_file.display()
            ));
        }
        let bundle = current.map_or_else(|| src.bootstrap_bundle.clone(), |s| s.bundle().clone());
        // An expired certificate would make the control plane refuse the TLS handshake (a
        // client certificate that is presented must be valid), and no renewal could ever
        // succeed again after an outage longer than its lifetime: the token alone suffices.
        let client_cert = current.filter(|s| s.not_after() > SystemTime::now());
        let channel = connect(
            &src.control_plane,
            bundle,
            Some(src.control_plane_id.clone()),
            client_cert,
        )
        .await
        .map_err(|e| e.to_string())?;
        let key = WorkloadKey::generate().map_err(|e| e.to_string())?;
        let expected = src.expected_id.as_ref().or(current.map(Svid::id));
        IdentityClient::new(channel)
            .certify(&key, expected, token.trim(), src.ttl)
            .await
            .map_err(|e| e.to_string())
    }
}

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
