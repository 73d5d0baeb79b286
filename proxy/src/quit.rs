//! `POST /quitquitquit` on the admin port (127.0.0.1:15000 only, Istio's name): how a Job's
//! app stops its sidecar in the classic layout, where the proxy is a regular container and the
//! pod would otherwise never complete. The proxy answers, closes that connection, then drains
//! exactly as on SIGTERM and exits 0. Native sidecars need no such call: the kubelet stops
//! them once the app's containers have exited.
//!
//! Owns: the path, the method check and the hand-over from the answered request to the
//! proxy's shutdown token. Routing is [`crate::admin`]'s.

use std::time::Duration;

use http::{Method, StatusCode};
use tokio_util::sync::CancellationToken;
use tracing::info;

/// The path.
pub const PATH: &str = "/quitquitquit";
/// How long the answer may take to reach the caller before the drain starts anyway.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// What a request to [`PATH`] gets: POST is accepted (and `requested` is cancelled, so the
/// connection's task starts the drain once the answer is out); anything else is refused.
pub fn answer(method: &Method, requested: &CancellationToken) -> (StatusCode, &'static str) {
    if method == Method::POST {
        requested.cancel();
        (
            StatusCode::OK,
            "draining: the proxy stops accepting and exits\n",
        )
    } else {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "POST /quitquitquit stops the proxy\n",
        )
    }
}

/// After the connection that asked has ended (or [`FLUSH_TIMEOUT`] passed), stops the proxy
/// through `shutdown` if `requested` was cancelled.
pub async fn after_answer<F: std::future::Future>(
    connection: F,
    requested: &CancellationToken,
    shutdown: &CancellationToken,
) {
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        _ = &mut connection => {}
        () = shutdown.cancelled() => return,
        () = requested.cancelled() => {
            let _ = tokio::time::timeout(FLUSH_TIMEOUT, connection).await;
        }
    }
    if requested.is_cancelled() {
        info!("POST {PATH}: draining");
        shutdown.cancel();
    }
}
