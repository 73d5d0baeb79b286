//! The webhook's HTTPS server: accepts connections on an injected listener, terminates TLS,
//! serves HTTP/1.1, and turns each request into a call to [`crate::review`] or a small status
//! page. Errors become responses here, in one place: a malformed review is HTTP 400 with a
//! Kubernetes `Status` body (the API server shows its message), never a 500.
//!
//! | route | what |
//! |---|---|
//! | `POST /inject` | review for namespaces labelled `trellis-injection=enabled` |
//! | `POST /inject-opt-in` | review for every other namespace (opt-in pods only) |
//! | `GET /healthz` | `ok` while the server accepts connections |
//! | `GET /config_dump` | the effective configuration as JSON (nothing secret in it) |
//!
//! Every network wait has a limit ([`Limits`]): TLS handshake, request head, request body;
//! concurrent connections are capped; shutdown stops accepting, lets in-flight requests
//! finish for [`Limits::drain`], then drops what is left.

use std::{convert::Infallible, future::Future, io, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use rustls::ServerConfig;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, watch},
    task::JoinSet,
};
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::{config::InjectConfig, decide::NamespaceScope, review};

/// Path of the webhook for labelled namespaces.
pub const INJECT_PATH: &str = "/inject";
/// Path of the webhook for opt-in pods in other namespaces.
pub const INJECT_OPT_IN_PATH: &str = "/inject-opt-in";

/// The limits that keep one slow or greedy client from holding the server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body read. The API server caps requests at 3 MiB; a review is the pod
    /// plus a little.
    pub max_body_bytes: usize,
    /// Time for the TLS handshake.
    pub handshake: Duration,
    /// Time for a request's head, and between requests on a kept-alive connection.
    pub header_read: Duration,
    /// Time for a request's body.
    pub body_read: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// How long shutdown waits for in-flight requests.
    pub drain: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 3 * 1024 * 1024,
            handshake: Duration::from_secs(10),
            header_read: Duration::from_secs(30),
            body_read: Duration::from_secs(10),
            max_connections: 256,
            drain: Duration::from_secs(10),
        }
    }
}

/// What the request handlers share.
#[derive(Debug)]
pub struct State {
    /// The current injection settings; replaced when the trust bundle changes.
    pub config: watch::Receiver<Arc<InjectConfig>>,
    /// The body of `GET /config_dump`, made once at start.
    pub config_dump: Bytes,
    /// Timeouts and caps.
    pub limits: Limits,
}

/// Serves the webhook on `listener` until `shutdown` completes, then drains.
pub async fn run(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    state: Arc<State>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let permits = Arc::new(Semaphore::new(state.limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_closed) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let span = info_span!("conn", peer.addr = %peer);
        connections.spawn(
            serve_connection(
                tcp,
                acceptor.clone(),
                Arc::clone(&state),
                stop_rx.clone(),
                permit,
            )
            .instrument(span),
        );
    }
    info!(
        connections = connections.len(),
        "webhook stopping: draining connections"
    );
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(state.limits.drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            left = connections.len(),
            "drain deadline passed; closing remaining connections"
        );
        connections.shutdown().await;
    }
}

async fn serve_connection(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let tls = match tokio::time::timeout(state.limits.handshake, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => {
            debug!(%err, "TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!("TLS handshake timed out");
            return;
        }
    };
    let handler_state = Arc::clone(&state);
    let service = service_fn(move |req| handle(req, Arc::clone(&handler_state)));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(state.limits.header_read)
        .serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = async { let _ = stop.wait_for(|stop| *stop).await; } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = result {
        debug!(%err, "connection ended with an error");
    }
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = match (req.method(), req.uri().path()) {
        (&Method::POST, INJECT_PATH) => admit(req, NamespaceScope::Labelled, &state).await,
        (&Method::POST, INJECT_OPT_IN_PATH) => admit(req, NamespaceScope::OptInOnly, &state).await,
        (&Method::GET, "/healthz") => {
            respond(StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n"))
        }
        (&Method::GET, "/config_dump") => respond(
            StatusCode::OK,
            "application/json",
            state.config_dump.clone(),
        ),
        (method, path @ (INJECT_PATH | INJECT_OPT_IN_PATH | "/healthz" | "/config_dump")) => {
            failure(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{method} is not allowed on {path}"),
            )
        }
        (_, path) => failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!(
                "no route {path}; the webhook serves POST {INJECT_PATH} and POST {INJECT_OPT_IN_PATH}"
            ),
        ),
    };
    Ok(response)
}

async fn admit(
    req: Request<Incoming>,
    scope: NamespaceScope,
    state: &State,
) -> Response<Full<Bytes>> {
    let limits = &state.limits;
    let body = Limited::new(req.into_body(), limits.max_body_bytes).collect();
    let body = match tokio::time::timeout(limits.body_read, body).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(err)) if err.downcast_ref::<LengthLimitError>().is_some() => {
            return failure(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                format!(
                    "request body is larger than {} bytes",
                    limits.max_body_bytes
                ),
            );
        }
        Ok(Err(err)) => {
            return failure(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("cannot read the request body: {err}"),
            );
        }
        Err(_) => {
            return failure(
                StatusCode::REQUEST_TIMEOUT,
                "Timeout",
                format!("request body not received within {:?}", limits.body_read),
            );
        }
    };
    let config = Arc::clone(&state.config.borrow());
    match review::review(&body, scope, &config) {
        Ok(reviewed) => {
            info!(
                uid = %reviewed.uid,
                namespace = %reviewed.namespace,
                pod = %reviewed.pod,
                decision = reviewed.outcome.as_str(),
                dry_run = reviewed.dry_run,
                warnings = ?reviewed.warnings,
                "admission review"
            );
            respond(
                StatusCode::OK,
                "application/json",
                Bytes::from(reviewed.body),
            )
        }
        Err(err) => {
            warn!(%err, "malformed admission review refused");
            failure(StatusCode::BAD_REQUEST, "BadRequest", err.to_string())
        }
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// An error answer with a Kubernetes `Status` body, which the API server's client decodes
/// and shows (`failed calling webhook …: <message>`).
fn failure(status: StatusCode, reason: &str, message: String) -> Response<Full<Bytes>> {
    let body = Status {
        code: Some(i32::from(status.as_u16())),
        message: Some(message),
        reason: Some(reason.to_owned()),
        status: Some("Failure".to_owned()),
        ..Status::default()
    };
    let body = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
    respond(status, "application/json", Bytes::from(body))
}

/// Binds the webhook's listener (kept separate from [`run`] so tests bind port 0).
pub async fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(address).await
}
