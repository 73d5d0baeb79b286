//! The tunnel listener (15008): terminate mutual TLS (the client must present an SVID of our
//! trust bundle), then serve HTTP/2 CONNECT streams. Each stream is checked — method, authority,
//! a target inside this pod, not a proxy port, authorization of the peer for that port — and
//! then joined to a fresh TCP connection to the application. A bad stream gets an HTTP error
//! status on that stream only; the tunnel and its other streams carry on.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, info_span};

use super::{REASON_HEADER, parse_authority};
use crate::context::ProxyContext;
use crate::copy;
use crate::metrics::DecisionLabels;
use crate::ports::PROXY_PORTS;
use crate::records::{Direction, TlsFacts};

/// Time a client has to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to connect to the application.
const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Flow-control windows: large enough that one stream can fill a fast link.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// See [`STREAM_WINDOW`].
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// Facts about an authenticated tunnel connection, shared by its streams.
#[derive(Debug)]
struct TunnelPeer {
    /// The peer proxy's address.
    addr: SocketAddr,
    /// Its verified SPIFFE ID.
    id: trellis_ca::SpiffeId,
    /// The TLS session's facts.
    tls: TlsFacts,
    /// Set once a stream has been recorded: later streams rode an established tunnel.
    used: std::sync::atomic::AtomicBool,
}

impl TunnelPeer {
    /// The TLS facts for the next stream's record (`reused` after the first).
    fn facts(&self) -> TlsFacts {
        let mut facts = self.tls.clone();
        if self.used.swap(true, std::sync::atomic::Ordering::AcqRel) {
            facts.reused = true;
            facts.handshake_ms = 0.0;
        }
        facts
    }
}

/// Accepts tunnel connections until shutdown.
pub async fn serve(listener: TcpListener, ctx: Arc<ProxyContext>) {
    loop {
        let (tcp, remote) = tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => { debug!(error = %e, "tunnel accept failed"); continue; }
            },
        };
        let ctx2 = ctx.clone();
        ctx.tracker.spawn(
            handle_connection(tcp, remote, ctx2)
                .instrument(info_span!("tunnel", peer.addr = %remote)),
        );
    }
}

async fn handle_connection(tcp: TcpStream, remote: SocketAddr, ctx: Arc<ProxyContext>) {
    let _ = tcp.set_nodelay(true);
    let Some(current) = ctx.svid.borrow().clone() else {
        ctx.refuse(Direction::Inbound, "not_ready");
        ctx.record(
            Direction::Inbound,
            remote,
            None,
            None,
            None,
            "deny",
            "proxy has no certificate yet",
        );
        return;
    };
    let started = Instant::now();
    let acceptor = TlsAcceptor::from(current.server_config());
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            ctx.refuse(Direction::Inbound, "tls_handshake");
            ctx.record(
                Direction::Inbound,
                remote,
                None,
                None,
                None,
                "deny",
                format!("TLS handshake failed: {e}"),
            );
            return;
        }
        Err(_) => {
            ctx.refuse(Direction::Inbound, "tls_handshake");
            ctx.record(
                Direction::Inbound,
                remote,
                None,
                None,
                None,
                "deny",
                "TLS handshake timed out",
            );
            return;
        }
    };
    let facts = TlsFacts::from_conn(tls.get_ref().1, started);
    ctx.metrics
        .handshake_seconds
        .observe(facts.handshake_ms / 1000.0);
    let id = match tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(trellis_ca::peer_spiffe_id)
    {
        Some(Ok(id)) => id,
        // The verifier refuses clients without a valid SVID, so this is unreachable in practice;
        // refuse rather than assume.
        other => {
            let reason = format!("client identity unreadable: {other:?}");
            ctx.record(
                Direction::Inbound,
                remote,
                None,
                None,
                Some(facts),
                "deny",
                reason,
            );
            return;
        }
    };
    let peer = Arc::new(TunnelPeer {
        addr: remote,
        id,
        tls: facts,
        used: std::sync::atomic::AtomicBool::new(false),
    });
    let ctx2 = ctx.clone();
    let service = service_fn(move |req| {
        let ctx = ctx2.clone();
        let peer = peer.clone();
        async move { Ok::<_, Infallible>(handle_stream(req, &peer, &ctx).await) }
    });
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(1000)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20))
        .serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => if let Err(e) = res { debug!(error = %e, "tunnel connection ended") },
        () = ctx.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

fn decision_labels(
    d: &crate::policy::Decision,
    peer: &trellis_ca::SpiffeId,
    port: u16,
) -> DecisionLabels {
    DecisionLabels {
        decision: d.label(),
        port,
        peer_id: peer.to_string(),
    }
}

fn refusal(status: StatusCode, reason: &str) -> Response<Empty<Bytes>> {
    let mut r = Response::new(Empty::new());
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(reason) {
        r.headers_mut().insert(REASON_HEADER, v);
    }
    r
}

async fn handle_stream(
    mut req: Request<Incoming>,
    peer: &Arc<TunnelPeer>,
    ctx: &Arc<ProxyContext>,
) -> Response<Empty<Bytes>> {
    let record_deny = |dst: Option<SocketAddr>, code: &'static str, reason: &str| {
        ctx.refuse(Direction::Inbound, code);
        ctx.record(
            Direction::Inbound,
            peer.addr,
            Some(peer.id.to_string()),
            dst,
            Some(peer.facts()),
            "deny",
            reason,
        );
    };
    if req.method() != Method::CONNECT {
        record_deny(None, "not_connect", "only CONNECT is served on the tunnel");
        return refusal(
            StatusCode::METHOD_NOT_ALLOWED,
            "only CONNECT is served on the tunnel",
        );
    }
    let target = match parse_authority(req.uri().authority()) {
        Ok(t) => t,
        Err(reason) => {
            record_deny(None, "bad_authority", &reason);
            return refusal(StatusCode::BAD_REQUEST, &reason);
        }
    };
    if !ctx.is_local(target.ip()) {
        let reason = format!("target {target} is outside this pod");
        record_deny(Some(target), "target_outside_pod", &reason);
        return refusal(StatusCode::FORBIDDEN, &reason);
    }
    if PROXY_PORTS.contains(&target.port()) {
        let reason = format!("port {} belongs to the proxy", target.port());
        record_deny(Some(target), "proxy_port", &reason);
        return refusal(StatusCode::FORBIDDEN, &reason);
    }
    let decision =
        ctx.state
            .borrow()
            .policy
            .authorize(&peer.id, target.port(), &ctx.config.trust_domain);
    if !decision.admits() {
        ctx.metrics
            .decisions
            .get_or_create(&decision_labels(&decision, &peer.id, target.port()))
            .inc();
        record_deny(Some(target), "policy", decision.reason());
        return refusal(StatusCode::FORBIDDEN, decision.reason());
    }
    let Ok(permit) = ctx.conn_limit.clone().try_acquire_owned() else {
        record_deny(Some(target), "overloaded", "too many connections");
        return refusal(StatusCode::SERVICE_UNAVAILABLE, "too many connections");
    };
    let app_addr = SocketAddr::new(ctx.config.app_host, target.port());
    let app = match tokio::time::timeout(APP_CONNECT_TIMEOUT, TcpStream::connect(app_addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let reason = format!("application not reachable on {app_addr}: {e}");
            record_deny(Some(target), "app_unreachable", &reason);
            return refusal(StatusCode::SERVICE_UNAVAILABLE, &reason);
        }
        Err(_) => {
            let reason = format!("application on {app_addr} did not accept within 5s");
            record_deny(Some(target), "app_unreachable", &reason);
            return refusal(StatusCode::GATEWAY_TIMEOUT, &reason);
        }
    };
    let _ = app.set_nodelay(true);
    ctx.metrics
        .decisions
        .get_or_create(&decision_labels(&decision, &peer.id, target.port()))
        .inc();
    let record = ctx.record(
        Direction::Inbound,
        peer.addr,
        Some(peer.id.to_string()),
        Some(target),
        Some(peer.facts()),
        decision.label(),
        decision.reason(),
    );
    let upgrade = hyper::upgrade::on(&mut req);
    let ctx2 = ctx.clone();
    ctx.tracker.spawn(
        async move {
            let _permit = permit;
            ctx2.metrics.open_connections.inc();
            match upgrade.await {
                Ok(upgraded) => {
                    if let Err(e) = copy::bidirectional(
                        TokioIo::new(upgraded),
                        app,
                        ctx2.config.idle_timeout,
                        &record,
                    )
                    .await
                    {
                        debug!(error = %e, "inbound stream ended");
                    }
                }
                Err(e) => debug!(error = %e, "CONNECT upgrade failed"),
            }
            record.close();
            ctx2.metrics.open_connections.dec();
        }
        .instrument(info_span!("inbound", peer.id = %peer.id, dst = %target)),
    );
    Response::new(Empty::new())
}
