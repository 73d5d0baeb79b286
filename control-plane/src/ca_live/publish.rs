//! Keeping the published trust bundle ([`crate::ca_store::published`]) equal to the live one:
//! written when the roots change, when a meshed namespace appears, and put back within seconds
//! when someone deletes or edits a copy (logged at `warn`).
//!
//! Owns: [`run`]. Which namespaces: the control plane's own and every one labelled
//! `trellis-injection=enabled`.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams};
use kube::runtime::watcher;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::LiveCa;
use super::reconcile::{POLL, RESYNC};
use crate::ca_store::Published;
use crate::ca_store::published::{CONFIGMAP, Written, write_configmap};
use crate::metrics::Metrics;

/// How long one pass may wait for the API server before trying again later.
const PASS_TIMEOUT: Duration = Duration::from_secs(10);

/// The label that meshes a namespace.
pub const MESHED: &str = "trellis-injection=enabled";

/// Publishes the live bundle to `published` until `shutdown`.
pub async fn run(
    live: Arc<LiveCa>,
    published: Published,
    own_namespace: String,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let wake = Arc::new(Notify::new());
    let every = match &published {
        Published::Nowhere => return,
        Published::File(_) => POLL * 5,
        Published::ConfigMaps(client) => {
            let by_name = watcher::Config::default().fields(&format!("metadata.name={CONFIGMAP}"));
            let (w, s) = (&wake, &shutdown);
            crate::owned_watch::spawn(
                Api::<ConfigMap>::all(client.clone()),
                by_name,
                "published ConfigMaps",
                w.clone(),
                s.clone(),
            );
            let meshed = watcher::Config::default().labels(MESHED);
            crate::owned_watch::spawn(
                Api::<Namespace>::all(client.clone()),
                meshed,
                "meshed namespaces",
                w.clone(),
                s.clone(),
            );
            RESYNC
        }
    };
    let mut bundles = live.bundles();
    let mut last_pem = String::new();
    loop {
        let pem = bundles.borrow_and_update().to_pem();
        let ours = pem != last_pem;
        let result = match &published {
            Published::Nowhere => return,
            Published::File(path) => publish_file(&published, &pem, ours, path, &metrics),
            Published::ConfigMaps(client) => tokio::time::timeout(
                PASS_TIMEOUT,
                publish_configmaps(client, &own_namespace, &pem, ours, &metrics),
            )
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {PASS_TIMEOUT:?}"))),
        };
        match result {
            Ok(()) => last_pem = pem,
            Err(e) => warn!(error = %e, "cannot publish the trust bundle; will try again"),
        }
        let wait = if last_pem.is_empty() { POLL } else { every };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = wake.notified() => {}
            _ = bundles.changed() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Local mode: rewrites the file when it differs from `pem`.
fn publish_file(
    published: &Published,
    pem: &str,
    ours: bool,
    path: &std::path::Path,
    metrics: &Metrics,
) -> Result<(), String> {
    let current = std::fs::read_to_string(path).ok();
    if current.as_deref() == Some(pem) {
        return Ok(());
    }
    published.write_file(pem).map_err(|e| e.to_string())?;
    if ours {
        info!(file = %path.display(), "trust bundle published");
    } else {
        warn!(file = %path.display(), was = if current.is_some() { "changed" } else { "deleted" }, "published trust bundle changed under the control plane; restored");
        metrics.reconciled("published-bundle", "restored");
    }
    Ok(())
}

/// Kubernetes mode: makes every copy hold `pem`.
async fn publish_configmaps(
    client: &kube::Client,
    own_namespace: &str,
    pem: &str,
    ours: bool,
    metrics: &Metrics,
) -> Result<(), String> {
    let meshed = Api::<Namespace>::all(client.clone())
        .list(&ListParams::default().labels(MESHED))
        .await
        .map_err(|e| format!("listing namespaces labelled {MESHED}: {e}"))?;
    let mut namespaces: Vec<String> = meshed
        .items
        .into_iter()
        .filter(|ns| ns.metadata.deletion_timestamp.is_none())
        .filter_map(|ns| ns.metadata.name)
        .collect();
    namespaces.push(own_namespace.to_owned());
    namespaces.sort();
    namespaces.dedup();
    let mut failed = Vec::new();
    for ns in &namespaces {
        match write_configmap(client, ns, pem).await {
            Ok(Written::Current) => {}
            Ok(done) if ours => {
                info!(namespace = %ns, configmap = CONFIGMAP, ?done, "trust bundle published")
            }
            Ok(done) => {
                warn!(namespace = %ns, configmap = CONFIGMAP, was = if done == Written::Created { "deleted" } else { "changed" }, "published trust bundle changed under the control plane; restored");
                metrics.reconciled("published-bundle", "restored");
            }
            Err(e) => failed.push(e.to_string()),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}
