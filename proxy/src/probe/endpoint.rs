//! The answer to kubelet's rewritten probes on the health port (pod IP:15020):
//! `GET /app-health/<container>/<livez|readyz|startupz>` runs the original probe against the
//! app and answers 200 when it passes, 503 with the reason when it fails, 404 when the pod has
//! no such probe. At most [`MAX_CONCURRENT`] probes run at once; beyond that the answer is 503
//! at once (kubelet retries at the next period). A probe whose result changes is logged once.
//!
//! Owns: [`AppHealth`]. The HTTP server around it is [`crate::admin`]'s.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use http::StatusCode;
use rustls::ClientConfig;
use tokio::sync::Semaphore;
use tracing::info;

use super::check;
use super::spec::{AppProbe, AppProbes, ProbeKey};

/// Most app probes running at once.
pub const MAX_CONCURRENT: usize = 32;

/// What kubelet gets for one path (pure: the status and body of each outcome).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The original probe passed.
    Passed(String),
    /// It failed, for this reason.
    Failed(String),
    /// No probe at this path.
    Unknown,
    /// Too many probes running.
    Busy,
}

impl Answer {
    /// Status and body for kubelet.
    pub fn response(&self, path: &str) -> (StatusCode, String) {
        match self {
            Self::Passed(what) => (StatusCode::OK, format!("ok: {what}\n")),
            Self::Failed(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("app probe failed: {why}\n"),
            ),
            Self::Unknown => (
                StatusCode::NOT_FOUND,
                format!("no app probe at {path}; the injector wrote none for it\n"),
            ),
            Self::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "busy: too many app probes running at once\n".to_owned(),
            ),
        }
    }
}

/// The pod's app probes and what running them needs.
#[derive(Debug)]
pub struct AppHealth {
    /// The originals, by path.
    probes: AppProbes,
    /// Where the app is: the pod's IP.
    pod_ip: IpAddr,
    /// TLS for HTTPS probes (no certificate verification, as kubelet).
    tls: Arc<ClientConfig>,
    /// Caps probes running at once.
    permits: Semaphore,
    /// The last result of each probe, to log changes only.
    last: Mutex<HashMap<ProbeKey, bool>>,
}

impl AppHealth {
    /// Serves `probes` against the app on `pod_ip`.
    pub fn new(probes: AppProbes, pod_ip: IpAddr) -> Self {
        Self::with_limit(probes, pod_ip, MAX_CONCURRENT)
    }

    /// As [`AppHealth::new`], with at most `limit` probes at once.
    pub fn with_limit(probes: AppProbes, pod_ip: IpAddr, limit: usize) -> Self {
        AppHealth {
            probes,
            pod_ip,
            tls: super::dangerous_tls::dangerous_probe_client(),
            permits: Semaphore::new(limit),
            last: Mutex::default(),
        }
    }

    /// The probe at `path`, if there is one.
    pub fn lookup(&self, path: &str) -> Option<(ProbeKey, &AppProbe)> {
        let key = ProbeKey::from_path(path)?;
        let probe = self.probes.get(&key)?;
        Some((key, probe))
    }

    /// Runs the probe at `path` and says what kubelet gets.
    pub async fn answer(&self, path: &str) -> Answer {
        let Some((key, probe)) = self.lookup(path) else {
            return Answer::Unknown;
        };
        let Ok(_permit) = self.permits.try_acquire() else {
            return Answer::Busy;
        };
        let result = check::run(probe, self.pod_ip, &self.tls).await;
        let passed = result.is_ok();
        let changed = self
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.clone(), passed)
            != Some(passed);
        match result {
            Ok(what) => {
                if changed {
                    info!(probe = %key, %probe, result = %what, "app probe passes");
                }
                Answer::Passed(what)
            }
            Err(e) => {
                if changed {
                    info!(probe = %key, %probe, reason = %e, "app probe fails");
                }
                Answer::Failed(e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tokio::net::TcpListener;

    use super::*;

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn probes(port: u16) -> AppProbes {
        super::super::spec::parse(&format!(
            r#"{{"/app-health/web/livez": {{"tcpSocket": {{"port": {port}}}}},
                "/app-health/web/readyz": {{"httpGet": {{"port": {port}, "path": "/"}}, "timeoutSeconds": 1}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn each_answer_has_its_status() {
        let cases = [
            (Answer::Passed("HTTP 200".into()), 200, "ok: HTTP 200"),
            (
                Answer::Failed("connect refused".into()),
                503,
                "app probe failed: connect refused",
            ),
            (Answer::Unknown, 404, "no app probe at /p"),
            (Answer::Busy, 503, "busy"),
        ];
        for (answer, status, body) in cases {
            let (s, b) = answer.response("/p");
            assert_eq!(s.as_u16(), status, "{answer:?}");
            assert!(b.starts_with(body), "{answer:?}: {b}");
        }
    }

    #[tokio::test]
    async fn known_paths_run_their_probe_and_others_are_unknown() {
        let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let health = AppHealth::new(probes(port), LOCAL);
        assert_eq!(
            health.answer("/app-health/web/livez").await,
            Answer::Passed("TCP connected".into())
        );
        assert_eq!(
            health.answer("/app-health/web/startupz").await,
            Answer::Unknown
        );
        assert_eq!(health.answer("/app-health/db/livez").await, Answer::Unknown);
        assert_eq!(health.answer("/ready").await, Answer::Unknown);
        drop(listener);
        assert!(matches!(
            health.answer("/app-health/web/livez").await,
            Answer::Failed(why) if why.contains("connect to 127.0.0.1")
        ));
    }

    #[tokio::test]
    async fn probes_beyond_the_limit_are_answered_busy_at_once() {
        // An app that accepts and never answers: the HTTP probe holds its permit.
        let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let health = Arc::new(AppHealth::with_limit(probes(port), LOCAL, 1));
        let first = tokio::spawn({
            let health = health.clone();
            async move { health.answer("/app-health/web/readyz").await }
        });
        let (_held, _) = listener.accept().await.unwrap();
        assert_eq!(health.answer("/app-health/web/livez").await, Answer::Busy);
        assert!(matches!(first.await.unwrap(), Answer::Failed(why) if why.contains("no answer")));
        assert!(matches!(
            health.answer("/app-health/web/livez").await,
            Answer::Passed(_)
        ));
    }
}
