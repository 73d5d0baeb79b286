//! Watching the few Kubernetes objects the control plane owns (its CA Secret, the injector's
//! Secret, the webhook configuration, the published ConfigMaps): each event only wakes the
//! loop that owns the object, which then reads it and decides; the watch carries no state.
//!
//! Owns: [`spawn`], one watch stream per object kind with kube's default backoff.

use std::sync::Arc;

use futures_util::StreamExt;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span};

/// Watches `api` with `config` (a name or label selector) and wakes `wake` on every event
/// until `shutdown`. `what` names the object in logs.
pub fn spawn<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + serde::de::DeserializeOwned
        + 'static,
{
    tokio::spawn(
        async move {
            let stream = watcher(api, config).default_backoff();
            futures_util::pin_mut!(stream);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    next = stream.next() => match next {
                        Some(Ok(_)) => wake.notify_one(),
                        // The owner reads the object on its own schedule too; a failing watch
                        // only delays a restore by that much.
                        Some(Err(e)) => debug!(error = %e, "watch failed; retrying with backoff"),
                        None => return,
                    }
                }
            }
        }
        .instrument(info_span!("watch", object = what)),
    );
}
