//! The admin endpoint (127.0.0.1:15000 only): `/ready` `/live` `/identity` `/handshakes`
//! `/metrics` `/config_dump` (configuration, discovery version, mTLS mode in force, workloads
//! known, the policy rules in force, Services and their endpoints),
//! `/logging` ([`crate::log_level`]), and `POST /quitquitquit` ([`crate::quit`]); and the
//! health endpoint on the pod IP (15020) for kubelet and Prometheus, which serves only `/ready`
//! `/live` `/metrics` and the app probes
//! `/app-health/...` ([`crate::probe`]). `/handshakes` is `{"connections": [...],
//! "failed_handshakes": {...}}`: the connection log and the summary of [`crate::failures`].
//!
//! Owns: routing and rendering of those pages. It reads shared state; only `/logging` (the log
//! filter) and `/quitquitquit` (the drain) change anything.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::context::ProxyContext;
use crate::{probe, quit, services};

/// Which set of pages a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// Everything (loopback only).
    Admin,
    /// Probes and metrics (pod IP).
    Health,
}

/// Serves `surface` on `listener` until shutdown.
pub async fn serve(listener: TcpListener, surface: Surface, ctx: Arc<ProxyContext>) {
    let name = match surface {
        Surface::Admin => "admin",
        Surface::Health => "health",
    };
    let mut acceptor = trellis_listener::Acceptor::new(listener, name);
    while let Some((tcp, _)) = acceptor.accept(&ctx.shutdown).await {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let ctx2 = ctx.clone();
            // Cancelled by POST /quitquitquit: the proxy drains once the answer is out.
            let quit = CancellationToken::new();
            let quit2 = quit.clone();
            let svc = service_fn(move |req| {
                let (ctx, quit) = (ctx2.clone(), quit2.clone());
                async move { Ok::<_, Infallible>(handle(req, surface, &ctx, &quit).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(tcp), svc);
            quit::after_answer(conn, &quit, &ctx.shutdown).await;
        });
    }
}

/// The pages that are not plain reads of state: `POST /quitquitquit` (admin only) and the
/// app probes (health only); everything else is [`respond`]'s.
async fn handle(
    req: Request<Incoming>,
    surface: Surface,
    ctx: &ProxyContext,
    quit_requested: &CancellationToken,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    match surface {
        Surface::Admin if path == crate::log_level::PATH => {
            crate::log_level::respond(req, ctx).await
        }
        Surface::Admin if path == quit::PATH => {
            let (status, body) = quit::answer(req.method(), quit_requested);
            let mut r = text(status, body);
            if status == StatusCode::OK {
                r.headers_mut()
                    .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
            }
            r
        }
        Surface::Health if path.starts_with(probe::PATH_PREFIX) => {
            if req.method() != Method::GET {
                return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
            }
            let (status, body) = ctx.app_health.answer(path).await.response(path);
            text(status, &body)
        }
        _ => respond(&req, surface, ctx),
    }
}

fn respond(req: &Request<Incoming>, surface: Surface, ctx: &ProxyContext) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    let ready = ctx.svid.borrow().is_some() && !ctx.shutdown.is_cancelled();
    match (surface, req.uri().path()) {
        (_, "/live") => text(StatusCode::OK, "live\n"),
        (_, "/ready") if ready => text(StatusCode::OK, "ready\n"),
        (_, "/ready") => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no certificate yet\n",
        ),
        (_, "/metrics") => {
            let mut r = text(StatusCode::OK, &ctx.metrics.render());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        (Surface::Admin, "/identity") => identity(ctx),
        (Surface::Admin, "/handshakes") => {
            let limit = query_param(req, "limit")
                .and_then(|v| v.parse().ok())
                .unwrap_or(100);
            let records = ctx.log.recent(limit);
            let connections: Vec<_> = records.iter().map(|r| &**r).collect();
            json_response(&json!({
                "connections": connections,
                "failed_handshakes": ctx.failures.summary(),
            }))
        }
        (Surface::Admin, "/config_dump") => {
            let state = ctx.state.borrow().clone();
            // Serialized from borrowed parts: a `json!` tree of every Service's endpoints was
            // larger than the mesh state itself (~13 MB at 10,000 endpoints).
            json_response(&ConfigDump {
                config: &ctx.config,
                discovery_version: json!({"epoch": state.version.epoch, "version": state.version.version}),
                mtls_mode: state.mtls_mode.or(ctx.config.mtls_mode),
                workloads_known: state.len(),
                policy_rules: state.policy.dump(),
                services: services::dump(state.services()),
            })
        }
        (Surface::Admin, "/policy") => {
            let state = ctx.state.borrow().clone();
            let mode = ctx
                .config
                .mtls_mode
                .or(state.mtls_mode)
                .unwrap_or(crate::config::MtlsMode::Strict);
            match crate::admin_policy::document(
                &state.policy,
                mode,
                &ctx.config.trust_domain,
                query_param(req, "from"),
                query_param(req, "port"),
            ) {
                Ok(doc) => json_response(&doc),
                Err(e) => text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn identity(ctx: &ProxyContext) -> Response<Full<Bytes>> {
    let Some(current) = ctx.svid.borrow().clone() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "no certificate yet\n");
    };
    let svid = &current.svid;
    let left = svid
        .not_after()
        .duration_since(SystemTime::now())
        .map_or(0, |d| d.as_secs());
    let chain: Vec<String> = svid
        .chain()
        .iter()
        .map(|c| trellis_ca::der_to_pem(c))
        .collect();
    json_response(&json!({
        "spiffe_id": svid.id().to_string(),
        "serial": svid.serial(),
        "not_before": humantime::format_rfc3339_seconds(svid.not_before()).to_string(),
        "not_after": humantime::format_rfc3339_seconds(svid.not_after()).to_string(),
        "seconds_left": left,
        "generation": current.generation,
        "chain_pem": chain,
        "trust_bundle_roots": current.trust.roots().len(),
        "trust_bundle_source": current.trust_source.label(),
        "trust_bundle": current
            .trust
            .summaries()
            .iter()
            .map(|r| json!({
                "subject": r.subject,
                "sha256": r.sha256,
                "not_after": humantime::format_rfc3339_seconds(r.not_after).to_string(),
            }))
            .collect::<Vec<_>>(),
    }))
}

fn query_param<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then_some(v)
    })
}

/// A plain-text response.
pub(crate) fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// `/config_dump`.
#[derive(serde::Serialize)]
struct ConfigDump<'a> {
    /// The configuration in force.
    config: &'a crate::config::Config,
    /// `{"epoch", "version"}` of the mesh state.
    discovery_version: serde_json::Value,
    /// The mTLS mode in force.
    mtls_mode: Option<crate::config::MtlsMode>,
    /// Workloads in the mesh state.
    workloads_known: usize,
    /// The inbound rules in force.
    policy_rules: serde_json::Value,
    /// The Services and their endpoints.
    services: Vec<services::ServiceDump<'a>>,
}

fn json_response(value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}
