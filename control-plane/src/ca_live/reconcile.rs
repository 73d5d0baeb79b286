//! Watching the CA store while the control plane runs: whatever happens to it — deleted,
//! emptied, edited by hand, files replaced — is judged by [`super::change::judge`] within
//! seconds and either adopted (a rotation step) or undone (the held material written back;
//! a read-only plug-in directory is left as it is and the held CA stays in use).
//!
//! Owns: [`run`] and the three ways of looking: a Secret (watched, and read again every
//! [`RESYNC`]), our own state directory and a plug-in `cacerts` directory (read every
//! [`POLL`]; acted on once two reads agree, so that files replaced one after the other — or a
//! kubelet volume update — are judged whole).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kube::runtime::watcher;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use trellis_ca::CaMaterial;

use super::LiveCa;
use super::change::{Adoption, Damage, Verdict, judge};
use crate::ca_store::{DirStore, SecretStore, StoreError};
use crate::metrics::Metrics;

/// How often a directory is read.
pub const POLL: Duration = Duration::from_secs(1);
/// How often a watched Secret is read anyway (a watch can miss its end).
pub const RESYNC: Duration = Duration::from_secs(30);

/// Where the CA material in use came from, and so where to look for changes.
#[derive(Debug)]
pub enum Source {
    /// Our own state directory (local mode): restored when damaged.
    Dir(DirStore),
    /// Our own Secret (Kubernetes mode): restored when damaged.
    Secret(Box<SecretStore>),
    /// A plug-in `cacerts` directory: read only; changes are adopted or ignored.
    PlugIn(DirStore),
}

impl Source {
    fn location(&self) -> String {
        match self {
            Source::Dir(d) | Source::PlugIn(d) => d.path().display().to_string(),
            Source::Secret(s) => s.location(),
        }
    }

    async fn load(&self) -> Result<Option<CaMaterial>, StoreError> {
        match self {
            Source::Dir(d) | Source::PlugIn(d) => d.load(),
            Source::Secret(s) => s.load().await,
        }
    }

    async fn restore(&self, material: &CaMaterial) -> Result<bool, StoreError> {
        match self {
            Source::Dir(d) => d.restore(material).map(|()| true),
            Source::Secret(s) => s.restore(material).await.map(|()| true),
            Source::PlugIn(_) => Ok(false),
        }
    }
}

/// Watches `source` and keeps `live` and the store in agreement until `shutdown`.
pub async fn run(
    live: Arc<LiveCa>,
    source: Source,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let wake = Arc::new(Notify::new());
    let every = match &source {
        Source::Secret(s) => {
            spawn_secret_watch(s, wake.clone(), shutdown.clone());
            RESYNC
        }
        Source::Dir(_) | Source::PlugIn(_) => POLL,
    };
    let settle = !matches!(source, Source::Secret(_));
    let mut looker = Looker {
        live,
        source,
        metrics,
        previous: None,
        last_kept: None,
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = wake.notified() => {}
            () = tokio::time::sleep(every) => {}
        }
        looker.look(settle).await;
    }
}

/// One look at the store and what to do about it.
struct Looker {
    /// The CA in use.
    live: Arc<LiveCa>,
    /// Where to look.
    source: Source,
    /// Counts what was done.
    metrics: Arc<Metrics>,
    /// What the previous look read (a directory is judged once two looks agree).
    previous: Option<Result<Option<CaMaterial>, String>>,
    /// A plug-in change already refused (logged once, not every second).
    last_kept: Option<CaMaterial>,
}

impl Looker {
    async fn look(&mut self, settle: bool) {
        let seen = self.source.load().await;
        if settle {
            let now = summary(&seen);
            let stable = self.previous.as_ref().is_some_and(|p| same(p, &now));
            self.previous = Some(now);
            if !stable {
                return;
            }
        }
        if let Err(StoreError::Kubernetes { reason, .. }) = &seen {
            // The API server is unreachable or refused: nothing is known about the Secret.
            warn!(location = %self.source.location(), %reason, "cannot read the CA store; will look again");
            return;
        }
        let state = self.live.state();
        let now = SystemTime::now();
        let seen_material = seen.as_ref().ok().and_then(Clone::clone);
        let verdict = judge(&state.ca, &state.material, seen, |m| {
            self.live.build(m, now)
        });
        match verdict {
            Verdict::Unchanged => self.last_kept = None,
            Verdict::Adopt(a) => self.adopt(*a, now),
            Verdict::Restore(d) => self.restore(&d, &state.material, seen_material).await,
        }
    }

    fn adopt(&mut self, a: Adoption, now: SystemTime) {
        let location = self.source.location();
        let added: Vec<String> = a.added.iter().map(|r| r.subject.clone()).collect();
        let removed: Vec<String> = a.removed.iter().map(|r| r.subject.clone()).collect();
        for r in &a.removed {
            if let Some(until) = self.live.still_valid_under(r, now) {
                warn!(
                    root = %r.subject,
                    sha256 = %r.sha256,
                    until = %humantime::format_rfc3339_seconds(until),
                    "a root leaves the trust bundle while certificates issued under it may still be valid; proxies holding one are refused by their peers until they renew (they renew at once)"
                );
            }
        }
        info!(
            %location,
            ?added,
            ?removed,
            new_signer = a.new_signer.as_deref().unwrap_or(""),
            "CA store changed; adopting it"
        );
        self.live.adopt(a.material, a.ca, now);
        self.metrics.reconciled("ca", "adopted");
        self.last_kept = None;
    }

    async fn restore(&mut self, d: &Damage, held: &CaMaterial, seen: Option<CaMaterial>) {
        let location = self.source.location();
        match self.source.restore(held).await {
            Ok(true) => {
                warn!(%location, what = d.label(), reason = %d, "CA store changed under the control plane; restored the CA in use (the root is unchanged)");
                self.metrics.reconciled("ca", "restored");
                self.previous = None;
            }
            Ok(false) => {
                let repeated = match (&self.last_kept, &seen) {
                    (Some(k), Some(s)) => k.same_as(s),
                    _ => false,
                };
                if !repeated {
                    warn!(%location, what = d.label(), reason = %d, "plug-in CA files changed; not adopted, the CA in use stays");
                    self.metrics.reconciled("ca", "kept");
                }
                self.last_kept = seen;
            }
            Err(e) => {
                warn!(%location, what = d.label(), reason = %d, error = %e, "CA store changed under the control plane and could not be restored; will try again")
            }
        }
    }
}

/// A comparable digest of one read.
fn summary(seen: &Result<Option<CaMaterial>, StoreError>) -> Result<Option<CaMaterial>, String> {
    match seen {
        Ok(m) => Ok(m.clone()),
        Err(e) => Err(e.to_string()),
    }
}

fn same(a: &Result<Option<CaMaterial>, String>, b: &Result<Option<CaMaterial>, String>) -> bool {
    match (a, b) {
        (Ok(Some(x)), Ok(Some(y))) => x.same_as(y),
        (Ok(None), Ok(None)) => true,
        (Err(x), Err(y)) => x == y,
        _ => false,
    }
}

/// Wakes `wake` on every event of the Secret (by name: RBAC allows nothing wider).
fn spawn_secret_watch(store: &SecretStore, wake: Arc<Notify>, shutdown: CancellationToken) {
    let api = store.api().clone();
    let config = watcher::Config::default().fields(&format!("metadata.name={}", store.name()));
    crate::owned_watch::spawn(api, config, "CA Secret", wake, shutdown);
}
