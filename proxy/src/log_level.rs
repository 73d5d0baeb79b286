//! `/logging` on the admin port (127.0.0.1:15000 only): the log filter of the running proxy,
//! read and changed without a restart, like Linkerd's `/proxy-log-level` and ztunnel's
//! `/logging`.
//!
//! ```text
//! curl localhost:15000/logging                                   # shows: info
//! curl -X PUT --data 'info,trellis_proxy=debug' localhost:15000/logging
//! curl -X POST 'localhost:15000/logging?level=debug'
//! ```
//!
//! Owns: the page. Checking the filter and swapping it is `trellis_telemetry`'s job; the new
//! filter lasts until the proxy restarts (the pod's `TRELLIS_LOG` then applies again).

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use trellis_telemetry::filter::MAX_FILTER_LEN;

use crate::admin::text;
use crate::context::ProxyContext;

/// The path of the page.
pub const PATH: &str = "/logging";

/// How long a client may take to send the new filter.
const BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers one request to [`PATH`].
pub async fn respond(req: Request<Incoming>, ctx: &ProxyContext) -> Response<Full<Bytes>> {
    let Some(control) = &ctx.config.log_control else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "this proxy installed no log subscriber; its filter cannot be read or changed\n",
        );
    };
    match *req.method() {
        Method::GET => match control.filter() {
            Ok(filter) => text(StatusCode::OK, &format!("{filter}\n")),
            Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, &format!("{e}\n")),
        },
        Method::PUT | Method::POST => {
            let wanted = match wanted_filter(req).await {
                Ok(w) => w,
                Err(message) => return text(StatusCode::BAD_REQUEST, &format!("{message}\n")),
            };
            match control.set(&wanted) {
                Ok(filter) => {
                    tracing::info!(%filter, "log filter changed through the admin port");
                    text(StatusCode::OK, &format!("{filter}\n"))
                }
                Err(e) => text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
            }
        }
        _ => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "GET shows the log filter; PUT or POST (body, or ?level=) replaces it\n",
        ),
    }
}

/// The filter a PUT/POST asks for: `?level=` when given, else the body (at most
/// [`MAX_FILTER_LEN`] bytes, within [`BODY_TIMEOUT`]).
async fn wanted_filter(req: Request<Incoming>) -> Result<String, String> {
    if let Some(level) = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("level="))
            .map(str::to_owned)
    }) {
        return Ok(level);
    }
    let body = Limited::new(req.into_body(), MAX_FILTER_LEN);
    let collected = tokio::time::timeout(BODY_TIMEOUT, body.collect())
        .await
        .map_err(|_| format!("the body did not arrive within {BODY_TIMEOUT:?}"))?
        .map_err(|e| {
            format!(
                "cannot read the body ({e}); expected a filter of at most {MAX_FILTER_LEN} bytes"
            )
        })?;
    String::from_utf8(collected.to_bytes().to_vec()).map_err(|_| {
        "the body is not UTF-8; expected a filter such as info,trellis_proxy=debug".into()
    })
}
