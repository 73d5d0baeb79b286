//! The files the control plane writes for the injector — the serving certificate and key, and
//! the mesh's trust bundle — loaded at start and re-read when they change.
//!
//! Changes are found by polling every few seconds (`--reload-interval-seconds`) and comparing
//! a hash of the bytes read, which sees every change (a rewrite within the file system's
//! timestamp granularity, Kubernetes' atomic `..data` symlink swap of Secret and ConfigMap
//! volumes); the files are a few kilobytes. The bytes hashed are the bytes parsed, so the
//! value in use always matches what was last seen. A new certificate is published on a
//! `watch` channel that [`crate::tls::LatestCertificate`] reads at each handshake; a new
//! bundle replaces the [`InjectConfig`] the next review reads. A file that changed but does
//! not load (half-written, key and certificate out of step) is logged once and retried at
//! every tick; the last good value stays in use.

use std::{
    future::Future,
    hash::{DefaultHasher, Hash, Hasher},
    io,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rustls::sign::CertifiedKey;
use tokio::sync::watch;
use tracing::{info, warn};
use trellis_ca::{BundleError, TrustBundle, TrustDomain};

use crate::{config::InjectConfig, tls};

/// Why a watched file could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The certificate and key files do not make a serving certificate.
    #[error("{cert} and {key}: {source}")]
    Serving {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What is wrong.
        source: tls::TlsError,
    },
    /// The trust bundle file is not a bundle of CA certificates.
    #[error("trust bundle {path}: {source}")]
    Bundle {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: BundleError,
    },
}

/// The files to load and watch.
#[derive(Debug, Clone)]
pub struct Files {
    /// The serving certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// The serving key (PEM).
    pub key: PathBuf,
    /// The trust bundle (PEM, one or more CA certificates).
    pub trust_bundle: PathBuf,
    /// The trust domain the bundle's roots vouch for.
    pub trust_domain: TrustDomain,
}

/// What the files hold, as loaded.
#[derive(Debug)]
pub struct Loaded {
    /// The serving certificate and key.
    pub serving: CertifiedKey,
    /// The trust bundle, as clean PEM.
    pub trust_bundle_pem: String,
}

/// A fingerprint of bytes read, to tell whether a file changed.
type Stamp = u64;

fn stamp(parts: &[&[u8]]) -> Stamp {
    let mut hasher = DefaultHasher::new();
    parts.hash(&mut hasher);
    hasher.finish()
}

async fn read(path: &Path) -> Result<Vec<u8>, ReloadError> {
    tokio::fs::read(path)
        .await
        .map_err(|source| ReloadError::Read {
            path: path.to_owned(),
            source,
        })
}

impl Files {
    /// Reads the serving certificate chain and key, and checks they match.
    pub async fn load_serving(&self) -> Result<CertifiedKey, ReloadError> {
        self.read_serving().await.map(|(_, key)| key)
    }

    /// Reads the trust bundle, checks every root is a CA certificate, returns it as clean PEM.
    pub async fn load_trust_bundle(&self) -> Result<String, ReloadError> {
        self.read_trust_bundle().await.map(|(_, pem)| pem)
    }

    /// Loads everything, and returns the watcher that will notice changes from here on.
    pub async fn load(self) -> Result<(Loaded, Watcher), ReloadError> {
        let (serving_stamp, serving) = self.read_serving().await?;
        let (bundle_stamp, trust_bundle_pem) = self.read_trust_bundle().await?;
        let watcher = Watcher {
            files: self,
            serving: serving_stamp,
            bundle: bundle_stamp,
        };
        Ok((
            Loaded {
                serving,
                trust_bundle_pem,
            },
            watcher,
        ))
    }

    async fn serving_bytes(&self) -> Result<(Vec<u8>, Vec<u8>), ReloadError> {
        Ok((read(&self.cert).await?, read(&self.key).await?))
    }

    fn parse_serving(&self, cert: &[u8], key: &[u8]) -> Result<CertifiedKey, ReloadError> {
        tls::certified_key(cert, key).map_err(|source| ReloadError::Serving {
            cert: self.cert.clone(),
            key: self.key.clone(),
            source,
        })
    }

    fn parse_trust_bundle(&self, pem: &[u8]) -> Result<String, ReloadError> {
        TrustBundle::from_pem(self.trust_domain.clone(), pem)
            .map(|bundle| bundle.to_pem())
            .map_err(|source| ReloadError::Bundle {
                path: self.trust_bundle.clone(),
                source,
            })
    }

    async fn read_serving(&self) -> Result<(Stamp, CertifiedKey), ReloadError> {
        let (cert, key) = self.serving_bytes().await?;
        Ok((stamp(&[&cert, &key]), self.parse_serving(&cert, &key)?))
    }

    async fn read_trust_bundle(&self) -> Result<(Stamp, String), ReloadError> {
        let pem = read(&self.trust_bundle).await?;
        Ok((stamp(&[&pem]), self.parse_trust_bundle(&pem)?))
    }
}

/// Polls the files for changes; made by [`Files::load`], so it starts from what was loaded.
#[derive(Debug)]
pub struct Watcher {
    files: Files,
    serving: Stamp,
    bundle: Stamp,
}

/// One file's polling state: the bytes last used, and the last bytes that failed (so a bad
/// file is reported once, not at every tick).
struct Seen {
    used: Stamp,
    failed: Option<Stamp>,
}

impl Seen {
    /// Whether `now` differs from the bytes in use and is not already known to fail.
    fn is_new(&self, now: Stamp) -> bool {
        now != self.used && Some(now) != self.failed
    }
}

impl Watcher {
    /// Polls every `interval` until `shutdown` completes, publishing a new serving certificate
    /// on `serving` and a configuration with a new trust bundle on `config`.
    pub async fn run(
        self,
        serving: watch::Sender<Arc<CertifiedKey>>,
        config: watch::Sender<Arc<InjectConfig>>,
        interval: Duration,
        shutdown: impl Future<Output = ()>,
    ) {
        let files = self.files;
        let mut serving_seen = Seen {
            used: self.serving,
            failed: None,
        };
        let mut bundle_seen = Seen {
            used: self.bundle,
            failed: None,
        };
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = ticks.tick() => {}
            }
            match files.serving_bytes().await {
                Ok((cert, key)) => {
                    let now = stamp(&[&cert, &key]);
                    if serving_seen.is_new(now) {
                        match files.parse_serving(&cert, &key) {
                            Ok(key) => {
                                info!(cert = %files.cert.display(), "serving certificate reloaded");
                                serving.send_replace(Arc::new(key));
                                serving_seen = Seen {
                                    used: now,
                                    failed: None,
                                };
                            }
                            Err(err) => {
                                warn!(%err, "serving certificate changed but does not load; keeping the previous one");
                                serving_seen.failed = Some(now);
                            }
                        }
                    }
                }
                Err(err) => warn!(%err, "keeping the previous serving certificate"),
            }
            match read(&files.trust_bundle).await {
                Ok(pem) => {
                    let now = stamp(&[&pem]);
                    if bundle_seen.is_new(now) {
                        match files.parse_trust_bundle(&pem) {
                            Ok(pem) => {
                                info!(file = %files.trust_bundle.display(), "trust bundle reloaded");
                                config.send_modify(|config| {
                                    let mut next = InjectConfig::clone(config);
                                    next.trust_bundle_pem = pem;
                                    *config = Arc::new(next);
                                });
                                bundle_seen = Seen {
                                    used: now,
                                    failed: None,
                                };
                            }
                            Err(err) => {
                                warn!(%err, "trust bundle changed but does not load; keeping the previous one");
                                bundle_seen.failed = Some(now);
                            }
                        }
                    }
                }
                Err(err) => warn!(%err, "keeping the previous trust bundle"),
            }
        }
    }
}
