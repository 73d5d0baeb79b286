//! The tunnel listener (15008): terminate mutual TLS (the client must present an SVID of our
//! trust bundle), then serve HTTP/2 CONNECT streams. Each stream is checked — method, authority,
//! a target inside this pod, not a proxy port, authorization of the peer for that port — and
//! then joined to a fresh TCP connection to the application. A bad stream gets an HTTP error
//! status on that stream only; the tunnel and its other streams carry on — until
//! `--tunnel-max-refused-streams` in a row were refused, when the connection is closed.
//! Connections and handshakes are capped per source and in total ([`super::limits`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{Request, Response, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, info_span};
use trellis_listener::{Gate, Ticket};

use super::admit::admit_connect;
use super::limits::{Phase, StreamRefusals, refusal_code};
use super::read_ahead::ReadAhead;
use super::stream::H2Stream;
use super::{
    CONNECTION_WINDOW, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE, REASON_HEADER, STREAM_WINDOW,
    keepalive,
};
use crate::context::ProxyContext;
use crate::copy;
use crate::records::{Direction, TlsFacts};

/// Time to connect to the application.
const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Streams one tunnel connection may have open at once.
const MAX_CONCURRENT_STREAMS: u32 = 1000;

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
    /// Refused streams in a row.
    refusals: StreamRefusals,
    /// Woken when too many streams in a row were refused: the connection is closed.
    too_many_refused: tokio::sync::Notify,
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

/// Accepts tunnel connections until shutdown; a connection over a cap is refused (closed,
/// counted, summed among the failed handshakes).
pub async fn serve(listener: TcpListener, ctx: Arc<ProxyContext>) {
    let limits = ctx.config.tunnel_limits;
    let connections = Gate::new(limits.connection_caps());
    let handshakes = Gate::new(limits.handshake_caps());
    let mut acceptor = trellis_listener::Acceptor::new(listener, "tunnel");
    while let Some((tcp, remote)) = acceptor.accept(&ctx.shutdown).await {
        let tickets = connections
            .enter(remote.ip())
            .map_err(|r| (Phase::Connection, r))
            .and_then(|c| {
                let h = handshakes
                    .enter(remote.ip())
                    .map_err(|r| (Phase::Handshake, r))?;
                Ok((c, h))
            });
        let (connection, handshake) = match tickets {
            Ok(tickets) => tickets,
            Err((phase, refusal)) => {
                let code = refusal_code(phase, refusal);
                ctx.deny(
                    Direction::Inbound,
                    code,
                    remote,
                    None,
                    None,
                    None,
                    refusal.to_string(),
                );
                continue;
            }
        };
        let ctx2 = ctx.clone();
        ctx.tracker.spawn(
            async move {
                let _connection = connection;
                handle_connection(tcp, remote, ctx2, handshake).await;
            }
            .instrument(info_span!("tunnel", peer.addr = %remote)),
        );
    }
}

async fn handle_connection(
    tcp: TcpStream,
    remote: SocketAddr,
    ctx: Arc<ProxyContext>,
    handshake: Ticket,
) {
    let timeout = ctx.config.tunnel_limits.handshake_timeout;
    let _ = tcp.set_nodelay(true);
    let Some(current) = ctx.svid.borrow().clone() else {
        ctx.deny(
            Direction::Inbound,
            "not_ready",
            remote,
            None,
            None,
            None,
            "proxy has no certificate yet",
        );
        return;
    };
    let started = Instant::now();
    let acceptor = TlsAcceptor::from(current.server_config());
    let mut tls = match tokio::time::timeout(timeout, acceptor.accept(ReadAhead::new(tcp))).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            ctx.deny(
                Direction::Inbound,
                "tls_handshake",
                remote,
                None,
                None,
                None,
                format!("TLS handshake failed: {e}"),
            );
            return;
        }
        Err(_) => {
            ctx.deny(
                Direction::Inbound,
                "tls_handshake",
                remote,
                None,
                None,
                None,
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
        refusals: StreamRefusals::new(ctx.config.tunnel_limits.refused_streams),
        too_many_refused: tokio::sync::Notify::new(),
    });
    tls.get_mut().0.enable();
    tls.get_mut()
        .1
        .set_buffer_limit(Some(super::TLS_SEND_BUFFER));
    let mut conn = match tokio::time::timeout(
        timeout,
        h2::server::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_header_list_size(MAX_HEADER_LIST_SIZE)
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .handshake::<_, Bytes>(tls),
    )
    .await
    {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            debug!(error = %e, "HTTP/2 handshake on the tunnel failed");
            return;
        }
        Err(_) => {
            debug!("HTTP/2 handshake on the tunnel timed out");
            return;
        }
    };
    drop(handshake);
    let _open = crate::metrics::Counted::new(&ctx.metrics.tunnel_connections);
    let pings = conn.ping_pong();
    let dead = async move {
        match pings {
            Some(p) => keepalive(p).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(dead);
    let mut draining = false;
    let mut closing = false;
    // Accepting also drives the connection: every stream's frames move while this loop runs.
    loop {
        let accepted = tokio::select! {
            accepted = conn.accept() => accepted,
            () = &mut dead => {
                debug!("tunnel peer did not answer a PING; connection dropped");
                return;
            }
            () = peer.too_many_refused.notified(), if !closing => {
                closing = true;
                let limit = ctx.config.tunnel_limits.refused_streams;
                ctx.deny(
                    Direction::Inbound,
                    "refused_streams",
                    remote,
                    Some(peer.id.to_string()),
                    None,
                    Some(peer.facts()),
                    format!("tunnel connection closed: {limit} CONNECT streams in a row were refused"),
                );
                conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                continue;
            }
            () = ctx.shutdown.cancelled(), if !draining => {
                draining = true;
                conn.graceful_shutdown();
                continue;
            }
        };
        match accepted {
            None => return,
            Some(Err(e)) => {
                debug!(error = %e, "tunnel connection ended");
                return;
            }
            Some(Ok(_)) if closing => {}
            Some(Ok((req, respond))) => {
                let ctx2 = ctx.clone();
                let peer = peer.clone();
                ctx.tracker
                    .spawn(async move { handle_stream(req, respond, &peer, &ctx2).await });
            }
        }
    }
}

fn refusal(status: StatusCode, reason: &str) -> Response<()> {
    let mut r = Response::new(());
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(reason) {
        r.headers_mut().insert(REASON_HEADER, v);
    }
    r
}

/// Checks one CONNECT stream and, if it passes, joins it to the application; otherwise answers
/// with the refusal's status and reason.
async fn handle_stream(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    peer: &Arc<TunnelPeer>,
    ctx: &Arc<ProxyContext>,
) {
    let refused = match admit(&req, peer, ctx).await {
        Ok((app, permit, record, target)) => {
            peer.refusals.admitted();
            let send = match respond.send_response(Response::new(()), false) {
                Ok(send) => send,
                Err(e) => {
                    debug!(error = %e, "CONNECT answer failed");
                    ctx.close(&record);
                    return;
                }
            };
            let _permit = permit;
            let tunnel = H2Stream::new(send, req.into_body());
            ctx.metrics.open_connections.inc();
            let mut app = app;
            let res = ctx
                .copy(tunnel, &mut app, &record)
                .instrument(info_span!("inbound", peer.id = %peer.id, dst = %target))
                .await;
            copy::reset_on_error(&res, &app);
            if let Err(e) = res {
                debug!(error = %e, "inbound stream ended");
            }
            ctx.close(&record);
            ctx.metrics.open_connections.dec();
            return;
        }
        Err(refused) => refused,
    };
    let _ = respond.send_response(refused, true);
    if peer.refusals.refused() {
        peer.too_many_refused.notify_one();
    }
}

/// What an admitted stream gets: the application connection, its share of the connection
/// limit, its record, its target.
type Admitted = (
    TcpStream,
    tokio::sync::OwnedSemaphorePermit,
    Arc<crate::records::ConnRecord>,
    SocketAddr,
);

/// Runs the checks on one CONNECT and connects to the application; a refusal is the response
/// to send back (already counted and recorded).
async fn admit(
    req: &Request<RecvStream>,
    peer: &Arc<TunnelPeer>,
    ctx: &Arc<ProxyContext>,
) -> Result<Admitted, Response<()>> {
    let record_deny = |dst: Option<SocketAddr>, code: &'static str, reason: &str| {
        ctx.deny(
            Direction::Inbound,
            code,
            peer.addr,
            Some(peer.id.to_string()),
            dst,
            Some(peer.facts()),
            reason,
        );
    };
    let admitted = admit_connect(
        req.method(),
        req.uri().authority(),
        &ctx.pod_addrs(),
        &ctx.state.borrow().policy,
        &peer.id,
        &ctx.config.trust_domain,
    );
    let (target, decision) = match admitted {
        Ok(admitted) => admitted,
        Err(refused) => {
            if let Some(decision) = &refused.decision {
                let port = refused.target.map_or(0, |t| t.port());
                ctx.count_decision(decision, &peer.id.to_string(), port);
            }
            record_deny(refused.target, refused.code, &refused.reason);
            return Err(refusal(refused.status, &refused.reason));
        }
    };
    let Ok(permit) = ctx.conn_limit.clone().try_acquire_owned() else {
        record_deny(Some(target), "overloaded", "too many connections");
        return Err(refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many connections",
        ));
    };
    let app_addr = SocketAddr::new(ctx.config.app_host, target.port());
    let app = match tokio::time::timeout(APP_CONNECT_TIMEOUT, TcpStream::connect(app_addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let reason = format!("application not reachable on {app_addr}: {e}");
            record_deny(Some(target), "app_unreachable", &reason);
            return Err(refusal(StatusCode::SERVICE_UNAVAILABLE, &reason));
        }
        Err(_) => {
            let reason = format!("application on {app_addr} did not accept within 5s");
            record_deny(Some(target), "app_unreachable", &reason);
            return Err(refusal(StatusCode::GATEWAY_TIMEOUT, &reason));
        }
    };
    let _ = app.set_nodelay(true);
    ctx.labels.served(target.port());
    ctx.count_decision(&decision, &peer.id.to_string(), target.port());
    let record = ctx.record(
        Direction::Inbound,
        peer.addr,
        Some(peer.id.to_string()),
        Some(target),
        Some(peer.facts()),
        decision.label(),
        decision.reason(),
    );
    Ok((app, permit, record, target))
}
