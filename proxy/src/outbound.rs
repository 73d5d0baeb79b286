//! The outbound listener (15001, or explicit listeners): learn where the application meant to
//! connect, route it (pure decision in [`crate::route`]), then tunnel it to the peer, pass it
//! through, or refuse it — recording each connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, info_span};

use crate::config::Mode;
use crate::context::ProxyContext;
use crate::copy;
use crate::orig_dst::original_dst;
use crate::records::Direction;
use crate::route::{Route, route};
use crate::tunnel::pool::Pool;

/// Time to connect to an unmeshed destination.
const PASSTHROUGH_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts outbound connections until shutdown. `fixed_dst` is the destination of an explicit
/// listener; `None` means read it from the socket (transparent mode).
pub async fn serve(
    listener: TcpListener,
    fixed_dst: Option<SocketAddr>,
    ctx: Arc<ProxyContext>,
    pool: Arc<Pool>,
) {
    loop {
        let (tcp, remote) = tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => { debug!(error = %e, "outbound accept failed"); continue; }
            },
        };
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
            Ok(stream) => {
                let record = ctx.record(
                    Direction::Outbound,
                    peer.tunnel,
                    Some(peer.id.to_string()),
                    Some(target),
                    Some(stream.tls.clone()),
                    "allow",
                    "",
                );
                ctx.metrics.open_connections.inc();
                let mut app = app;
                let res =
                    copy::bidirectional(&mut app, stream.io, ctx.config.idle_timeout, &record)
                        .await;
                copy::reset_on_error(&res, &app);
                if let Err(e) = res {
                    debug!(error = %e, "outbound connection ended");
                }
                drop(stream.guard);
                record.close();
                ctx.metrics.open_connections.dec();
            }
            Err(e) => {
                ctx.deny(
                    Direction::Outbound,
                    "tunnel",
                    peer.tunnel,
                    Some(peer.id.to_string()),
                    Some(target),
                    None,
                    e.to_string(),
                );
            }
        },
        Route::Passthrough(dst) => {
            let server =
                match tokio::time::timeout(PASSTHROUGH_CONNECT_TIMEOUT, TcpStream::connect(dst))
                    .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        ctx.record(
                            Direction::Outbound,
                            remote,
                            None,
                            Some(dst),
                            None,
                            "deny",
                            format!("cannot connect to {dst}: {e}"),
                        );
                        return;
                    }
                    Err(_) => {
                        ctx.record(
                            Direction::Outbound,
                            remote,
                            None,
                            Some(dst),
                            None,
                            "deny",
                            format!("connect to {dst} timed out"),
                        );
                        return;
                    }
                };
            let _ = server.set_nodelay(true);
            let record = ctx.record(
                Direction::Outbound,
                remote,
                None,
                Some(dst),
                None,
                "allow",
                "passthrough: destination is not in the mesh",
            );
            ctx.metrics.open_connections.inc();
            let (mut app, mut server) = (app, server);
            let res =
                copy::bidirectional(&mut app, &mut server, ctx.config.idle_timeout, &record).await;
            copy::reset_on_error(&res, &app);
            copy::reset_on_error(&res, &server);
            if let Err(e) = res {
                debug!(error = %e, "passthrough connection ended");
            }
            record.close();
            ctx.metrics.open_connections.dec();
        }
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
