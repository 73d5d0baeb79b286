//! The inbound plaintext listener (15006): whatever iptables sends here arrived at an
//! application port directly, not through the tunnel. STRICT refuses it; PERMISSIVE passes it
//! to the application and records it as plaintext.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, info_span};

use crate::config::{Mode, MtlsMode};
use crate::context::ProxyContext;
use crate::copy;
use crate::orig_dst::original_dst;
use crate::ports::PROXY_PORTS;
use crate::records::Direction;

/// Accepts plaintext inbound connections until shutdown.
pub async fn serve(listener: TcpListener, ctx: Arc<ProxyContext>) {
    let mut acceptor = trellis_listener::Acceptor::new(listener, "inbound");
    while let Some((tcp, remote)) = acceptor.accept(&ctx.shutdown).await {
        // Explicit mode has no redirect: the listener stands for one application address.
        let dst = match (ctx.config.mode, ctx.config.inbound_target) {
            (Mode::Transparent, _) => original_dst(&tcp),
            (Mode::Explicit, Some(target)) => Ok(target),
            (Mode::Explicit, None) => Err(std::io::Error::other(
                "no --inbound-target in explicit mode",
            )),
        };
        let dst = match dst {
            Ok(d) => d,
            Err(e) => {
                ctx.deny(
                    Direction::InboundPlain,
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
        let mode = ctx
            .config
            .mtls_mode
            .or(ctx.state.borrow().mtls_mode)
            .unwrap_or(MtlsMode::Strict);
        if mode == MtlsMode::Strict {
            ctx.deny(
                Direction::InboundPlain,
                "plaintext",
                remote,
                None,
                Some(dst),
                None,
                "plaintext refused: mTLS mode is STRICT",
            );
            continue; // dropping `tcp` closes it
        }
        if PROXY_PORTS.contains(&dst.port()) && ctx.config.mode == Mode::Transparent {
            ctx.deny(
                Direction::InboundPlain,
                "proxy_port",
                remote,
                None,
                Some(dst),
                None,
                "destination is a proxy port",
            );
            continue;
        }
        let Ok(permit) = ctx.conn_limit.clone().try_acquire_owned() else {
            ctx.deny(
                Direction::InboundPlain,
                "overloaded",
                remote,
                None,
                Some(dst),
                None,
                "too many connections",
            );
            continue;
        };
        let ctx2 = ctx.clone();
        ctx.tracker.spawn(
            async move {
                let _permit = permit;
                pass_through(tcp, remote, dst, &ctx2).await;
            }
            .instrument(info_span!("inbound-plain", peer.addr = %remote, dst = %dst)),
        );
    }
}

async fn pass_through(
    client: TcpStream,
    remote: SocketAddr,
    dst: SocketAddr,
    ctx: &Arc<ProxyContext>,
) {
    let app_addr = SocketAddr::new(ctx.config.app_host, dst.port());
    let app = match TcpStream::connect(app_addr).await {
        Ok(s) => s,
        Err(e) => {
            ctx.deny(
                Direction::InboundPlain,
                "app_unreachable",
                remote,
                None,
                Some(dst),
                None,
                format!("application not reachable on {app_addr}: {e}"),
            );
            return;
        }
    };
    let record = ctx.record(
        Direction::InboundPlain,
        remote,
        None,
        Some(dst),
        None,
        "allow",
        "plaintext passed: mTLS mode is PERMISSIVE",
    );
    ctx.metrics.open_connections.inc();
    let (mut client, mut app) = (client, app);
    let res = copy::bidirectional(&mut client, &mut app, ctx.config.idle_timeout, &record).await;
    copy::reset_on_error(&res, &client);
    copy::reset_on_error(&res, &app);
    if let Err(e) = res {
        debug!(error = %e, "plaintext connection ended");
    }
    record.close();
    ctx.metrics.open_connections.dec();
}
