//! The outbound listener (15001, or explicit listeners): learn where the application meant to
//! connect, route it (pure decision in [`crate::route`]), then tunnel it to the peer, balance
//! it over a Service's endpoints ([`crate::balance`]), pass it through, or refuse it —
//! recording each connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, info, info_span};

use crate::balance;
use crate::config::Mode;
use crate::context::ProxyContext;
use crate::copy;
use crate::orig_dst::original_dst;
use crate::records::Direction;
use crate::route::{Route, ServiceRoute, route};
use crate::state::{MeshState, Peer};
use crate::tunnel::pool::{Pool, Stream, TunnelError};

/// Time to connect to an unmeshed destination.
const PASSTHROUGH_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Endpoints of a Service tried for one connection before it is refused.
const ENDPOINT_ATTEMPTS: usize = 3;
/// What a failed attempt counts as in an endpoint's open-latency average, at least: enough to
/// make the balancer prefer the others for a while.
const FAILED_OPEN_PENALTY: Duration = Duration::from_secs(1);

/// Accepts outbound connections until shutdown. `fixed_dst` is the destination of an explicit
/// listener; `None` means read it from the socket (transparent mode).
pub async fn serve(
    listener: TcpListener,
    fixed_dst: Option<SocketAddr>,
    ctx: Arc<ProxyContext>,
    pool: Arc<Pool>,
) {
    let mut acceptor = trellis_listener::Acceptor::new(listener, "outbound");
    while let Some((tcp, remote)) = acceptor.accept(&ctx.shutdown).await {
        let dst = match fixed_dst {
            Some(d) => Ok(d),
            None if ctx.config.mode == Mode::Transparent => original_dst(&tcp),
            None => Err(std::io::Error::other("no destination configured")),
        };
        let dst = match dst {
            Ok(d) => d,
            Err(e) => {
                ctx.deny(
                    Direction::Outbound,
                    "no_original_dst",
                    remote,
                    None,
                    None,
                    None,
                    format!("original destination unknown: {e}"),
                );
                continue;
            }
        };
        let Ok(permit) = ctx.conn_limit.clone().try_acquire_owned() else {
            ctx.deny(
                Direction::Outbound,
                "overloaded",
                remote,
                None,
                Some(dst),
                None,
                "too many connections",
            );
            continue;
        };
        let (ctx2, pool) = (ctx.clone(), pool.clone());
        ctx.tracker.spawn(
            async move {
                let _permit = permit;
                handle(tcp, remote, dst, &ctx2, &pool).await;
            }
            .instrument(info_span!("outbound", peer.addr = %remote, dst = %dst)),
        );
    }
}

async fn handle(
    app: TcpStream,
    remote: SocketAddr,
    dst: SocketAddr,
    ctx: &Arc<ProxyContext>,
    pool: &Pool,
) {
    let _ = app.set_nodelay(true);
    let state = ctx.state.borrow().clone();
    match route(dst, &state, &ctx.own_addrs, ctx.config.unmeshed) {
        // Boxed: opening may dial (TLS + HTTP/2 handshakes, a large future); the task that then
        // lives as long as the connection should not carry that state's size.
        Route::Tunnel { peer, target } => match Box::pin(pool.open(ctx, &peer, target)).await {
            Ok(stream) => carry_tunnel(app, ctx, &peer, target, stream, String::new()).await,
            Err(e) => ctx.deny(
                Direction::Outbound,
                "tunnel",
                peer.tunnel,
                Some(peer.id.to_string()),
                Some(target),
                None,
                e.to_string(),
            ),
        },
        Route::Service(service) => {
            Box::pin(to_service(app, remote, dst, &state, &service, ctx, pool)).await;
        }
        Route::Passthrough(dst) => match connect_plain(dst).await {
            Ok(server) => {
                let reason = "passthrough: destination is not in the mesh";
                carry_plain(app, server, remote, dst, ctx, reason.into()).await;
            }
            Err(reason) => {
                ctx.record(
                    Direction::Outbound,
                    remote,
                    None,
                    Some(dst),
                    None,
                    "deny",
                    reason,
                );
            }
        },
        Route::Refuse(reason) => {
            ctx.deny(
                Direction::Outbound,
                "route",
                remote,
                None,
                Some(dst),
                None,
                reason,
            );
        }
    }
}

/// A connection to a Service: pick an endpoint, reach it (through the tunnel when meshed), and
/// if that fails before any byte was sent, try another — at most [`ENDPOINT_ATTEMPTS`].
async fn to_service(
    app: TcpStream,
    remote: SocketAddr,
    dst: SocketAddr,
    state: &MeshState,
    service: &ServiceRoute,
    ctx: &Arc<ProxyContext>,
    pool: &Pool,
) {
    let name = service.name();
    let port = service.port();
    let mut tried = Vec::new();
    let mut failures = Vec::new();
    while tried.len() < ENDPOINT_ATTEMPTS {
        let Some(ep) = balance::pick(port, &tried, fastrand::u32(..), fastrand::u32(..)) else {
            break;
        };
        tried.push(ep.addr);
        let _counted = ep.load.start();
        let started = Instant::now();
        let failure = match state.lookup(ep.addr) {
            Some(peer) => match pool.open(ctx, peer, ep.addr).await {
                Ok(stream) => {
                    // A new tunnel's handshake says nothing about the endpoint's speed.
                    if stream.tls.reused {
                        ep.load.observe_open(started.elapsed());
                    }
                    let reason = format!("via Service {name}");
                    carry_tunnel(app, ctx, peer, ep.addr, stream, reason).await;
                    return;
                }
                Err(e) if !worth_another_endpoint(&e) => {
                    ctx.deny(
                        Direction::Outbound,
                        "tunnel",
                        peer.tunnel,
                        Some(peer.id.to_string()),
                        Some(ep.addr),
                        None,
                        format!("via Service {name}: {e}"),
                    );
                    return;
                }
                Err(e) => e.to_string(),
            },
            None => match connect_plain(ep.addr).await {
                Ok(server) => {
                    let reason = format!(
                        "passthrough: endpoint {} of Service {name} is not in the mesh",
                        ep.addr
                    );
                    carry_plain(app, server, remote, ep.addr, ctx, reason).await;
                    return;
                }
                Err(reason) => reason,
            },
        };
        ep.load
            .observe_open(started.elapsed().max(FAILED_OPEN_PENALTY));
        info!(service = %name, endpoint = %ep.addr, error = %failure, "endpoint failed before any byte was sent; trying another");
        failures.push(format!("{}: {failure}", ep.addr));
    }
    let reason = if tried.is_empty() {
        format!("no ready endpoint for {name}")
    } else {
        format!(
            "no endpoint of {name} could be reached ({})",
            failures.join("; ")
        )
    };
    ctx.deny(
        Direction::Outbound,
        "no_endpoint",
        remote,
        None,
        Some(dst),
        None,
        reason,
    );
}

/// Whether a failure to open a stream to one endpoint may not happen with another: not when
/// the peer's policy refused us (it refuses us everywhere) or we have no certificate.
fn worth_another_endpoint(e: &TunnelError) -> bool {
    match e {
        TunnelError::NotReady => false,
        TunnelError::Refused { status, .. } => *status != http::StatusCode::FORBIDDEN,
        _ => true,
    }
}

/// Carries `app` over an open tunnel stream to `peer`, recording the connection.
async fn carry_tunnel(
    app: TcpStream,
    ctx: &Arc<ProxyContext>,
    peer: &Peer,
    target: SocketAddr,
    stream: Stream,
    reason: String,
) {
    let record = ctx.record(
        Direction::Outbound,
        peer.tunnel,
        Some(peer.id.to_string()),
        Some(target),
        Some(stream.tls.clone()),
        "allow",
        reason,
    );
    ctx.metrics.open_connections.inc();
    let mut app = app;
    let res = ctx.copy(&mut app, stream.io, &record).await;
    copy::reset_on_error(&res, &app);
    if let Err(e) = res {
        debug!(error = %e, "outbound connection ended");
    }
    drop(stream.guard);
    ctx.close(&record);
    ctx.metrics.open_connections.dec();
}

/// Connects to `dst` in plain TCP; the error says why not.
async fn connect_plain(dst: SocketAddr) -> Result<TcpStream, String> {
    match tokio::time::timeout(PASSTHROUGH_CONNECT_TIMEOUT, TcpStream::connect(dst)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(format!("cannot connect to {dst}: {e}")),
        Err(_) => Err(format!("connect to {dst} timed out")),
    }
}

/// Carries `app` to `server` in plain TCP, recording the connection with `reason`.
async fn carry_plain(
    app: TcpStream,
    server: TcpStream,
    remote: SocketAddr,
    dst: SocketAddr,
    ctx: &Arc<ProxyContext>,
    reason: String,
) {
    let record = ctx.record(
        Direction::Outbound,
        remote,
        None,
        Some(dst),
        None,
        "allow",
        reason,
    );
    ctx.metrics.open_connections.inc();
    let (mut app, mut server) = (app, server);
    let res = ctx.copy(&mut app, &mut server, &record).await;
    copy::reset_on_error(&res, &app);
    copy::reset_on_error(&res, &server);
    if let Err(e) = res {
        debug!(error = %e, "passthrough connection ended");
    }
    ctx.close(&record);
    ctx.metrics.open_connections.dec();
}
