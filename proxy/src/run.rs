//! Starting and stopping one proxy: bind every listener first (a taken port fails the start),
//! then start identity, listeners and the pool reaper; on shutdown stop accepting and let open
//! connections drain for the configured period.
//!
//! Owns: [`start`] and [`Running`]. Tests call [`start`] with port-0 addresses.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use trellis_ca::TrustBundle;

use crate::admin::{self, Surface};
use crate::config::{Config, Mode};
use crate::context::ProxyContext;
use crate::discovery::DiscoverySource;
use crate::identity::{IdentityManager, IdentitySource, SvidWatch};
use crate::metrics::Metrics;
use crate::probe::AppHealth;
use crate::records::HandshakeLog;
use crate::state::MeshState;
use crate::tunnel::pool::Pool;
use crate::{inbound, outbound, tunnel};

/// Why the proxy did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {reason}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        reason: String,
    },
    /// The bootstrap bundle is unusable.
    #[error("trust bundle: {0}")]
    Bundle(#[from] trellis_ca::BundleError),
}

/// Addresses the listeners actually bound (port 0 resolved).
#[derive(Debug, Clone, Default)]
pub struct BoundAddrs {
    /// Tunnel listener.
    pub tunnel: Option<SocketAddr>,
    /// Transparent outbound listener.
    pub outbound: Option<SocketAddr>,
    /// Explicit outbound listeners, in flag order.
    pub explicit_outbound: Vec<SocketAddr>,
    /// Inbound plaintext listener.
    pub inbound: Option<SocketAddr>,
    /// Admin listener.
    pub admin: Option<SocketAddr>,
    /// Health listener.
    pub health: Option<SocketAddr>,
}

/// A running proxy.
#[derive(Debug)]
pub struct Running {
    /// Where the listeners are.
    pub addrs: BoundAddrs,
    /// Shared state (tests read the log and metrics through it).
    pub ctx: Arc<ProxyContext>,
    /// The tunnel pool.
    pub pool: Arc<Pool>,
    /// Stops the identity manager and the reaper.
    background: CancellationToken,
}

impl Running {
    /// Waits until the proxy holds a certificate, for at most `timeout`.
    pub async fn ready(&self, timeout: Duration) -> bool {
        let mut rx: SvidWatch = self.ctx.svid.clone();
        tokio::time::timeout(timeout, rx.wait_for(Option::is_some))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Stops accepting; waits up to the drain period for open connections; stops everything.
    pub async fn shutdown(self) {
        self.ctx.shutdown.cancel();
        self.ctx.tracker.close();
        let drain = self.ctx.config.drain;
        if tokio::time::timeout(drain, self.ctx.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                ?drain,
                open = self.ctx.tracker.len(),
                "connections still open after the drain period; closing them"
            );
        } else {
            info!("drained");
        }
        self.background.cancel();
    }

    /// A token that stops the proxy (as SIGTERM does) when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.ctx.shutdown.clone()
    }
}

async fn bind(
    what: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), StartError> {
    let err = |e: std::io::Error| StartError::Bind {
        what,
        addr,
        reason: e.to_string(),
    };
    let listener = TcpListener::bind(addr).await.map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    Ok((listener, local))
}

/// For a listener on `0.0.0.0:port`, the IPv6 twin on `[::]:port` (IPV6_V6ONLY), so that
/// connections iptables redirects on a dual-stack pod are accepted too. `None` (with a log
/// line) where the host has no IPv6.
fn ipv6_twin(what: &'static str, v4: SocketAddr) -> Option<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    if !(v4.is_ipv4() && v4.ip().is_unspecified()) {
        return None;
    }
    let addr = SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), v4.port());
    let listen = || -> std::io::Result<TcpListener> {
        let socket = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
        socket.set_only_v6(true)?;
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        TcpListener::from_std(socket.into())
    };
    match listen() {
        Ok(l) => Some(l),
        Err(e) => {
            info!(%addr, error = %e, "no IPv6 {what} listener (IPv6 unavailable)");
            None
        }
    }
}

/// Starts a proxy with `config`.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let bundle = TrustBundle::from_pem(config.trust_domain.clone(), &config.trust_bundle_pem)?;

    // Bind everything before starting anything.
    let (tunnel_l, tunnel_a) = bind("tunnel", config.tunnel_listen).await?;
    let mut addrs = BoundAddrs {
        tunnel: Some(tunnel_a),
        ..BoundAddrs::default()
    };
    let mut outbound_ls = Vec::new();
    match config.mode {
        Mode::Transparent => {
            let (l, a) = bind("outbound", config.outbound_listen).await?;
            addrs.outbound = Some(a);
            outbound_ls.push((l, None));
            if let Some(l6) = ipv6_twin("outbound", config.outbound_listen) {
                outbound_ls.push((l6, None));
            }
        }
        Mode::Explicit => {
            for e in &config.explicit_outbound {
                let (l, a) = bind("explicit outbound", e.listen).await?;
                addrs.explicit_outbound.push(a);
                outbound_ls.push((l, Some(e.dest)));
            }
        }
    }
    let mut inbound_ls = Vec::new();
    if config.mode == Mode::Transparent || config.inbound_target.is_some() {
        let (l, a) = bind("inbound", config.inbound_listen).await?;
        addrs.inbound = Some(a);
        inbound_ls.push(l);
        if config.mode == Mode::Transparent {
            inbound_ls.extend(ipv6_twin("inbound", config.inbound_listen));
        }
    }
    let (admin_l, admin_a) = bind("admin", config.admin_listen).await?;
    addrs.admin = Some(admin_a);
    let health_l = match config.health_listen {
        Some(h) => {
            let (l, a) = bind("health", h).await?;
            addrs.health = Some(a);
            Some(l)
        }
        None => None,
    };

    let metrics = Arc::new(Metrics::new());
    let source = IdentitySource {
        control_plane: config.control_plane.clone(),
        control_plane_id: config.control_plane_id.clone(),
        token_file: config.token_file.clone(),
        bootstrap_bundle: bundle,
        expected_id: config.expected_id.clone(),
        ttl: config.cert_ttl.map(Duration::from_secs),
    };
    let (manager, svid_rx) = IdentityManager::new(source, metrics.clone());
    let (state_tx, state_rx) = watch::channel(Arc::new(MeshState::from_static(&config.workloads)));
    let discovery_source = config.discovery.then(|| DiscoverySource {
        control_plane: config.control_plane.clone(),
        control_plane_id: config.control_plane_id.clone(),
        trust_domain: config.trust_domain.clone(),
        static_workloads: config.workloads.clone(),
        node: config.pod_name.clone().unwrap_or_default(),
    });
    let mut own_addrs: Vec<SocketAddr> = [
        addrs.tunnel,
        addrs.outbound,
        addrs.inbound,
        addrs.admin,
        addrs.health,
    ]
    .into_iter()
    .flatten()
    .collect();
    own_addrs.extend(&addrs.explicit_outbound);
    // Probes reach the app where kubelet would have: the pod's IP.
    let app_health = AppHealth::new(
        config.app_probes.clone(),
        config.pod_ip.unwrap_or(config.app_host),
    );
    let ctx = Arc::new(ProxyContext {
        app_health,
        log: HandshakeLog::new(config.handshake_log),
        conn_limit: Arc::new(Semaphore::new(config.max_connections)),
        config,
        svid: svid_rx,
        state: state_rx,
        metrics,
        tracker: TaskTracker::new(),
        shutdown: CancellationToken::new(),
        own_addrs,
        refusals: crate::refusals::RefusalLog::default(),
        failures: crate::failures::FailedHandshakes::default(),
        labels: crate::metric_labels::LabelBounds::default(),
    });
    let background = CancellationToken::new();
    let pool = Arc::new(Pool::new());

    tokio::spawn(manager.run(ctx.state.clone(), background.clone()));
    match discovery_source {
        Some(source) => {
            tokio::spawn(crate::discovery::run(
                source,
                ctx.svid.clone(),
                state_tx,
                ctx.metrics.clone(),
                background.clone(),
            ));
        }
        None => {
            // Keep the sender alive: receivers treat a closed channel as "no more updates".
            tokio::spawn({
                let bg = background.clone();
                async move {
                    bg.cancelled().await;
                    drop(state_tx);
                }
            });
        }
    }
    tokio::spawn(tunnel::server::serve(tunnel_l, ctx.clone()));
    for (l, fixed) in outbound_ls {
        tokio::spawn(outbound::serve(l, fixed, ctx.clone(), pool.clone()));
    }
    for l in inbound_ls {
        tokio::spawn(inbound::serve(l, ctx.clone()));
    }
    tokio::spawn(admin::serve(admin_l, Surface::Admin, ctx.clone()));
    if let Some(l) = health_l {
        tokio::spawn(admin::serve(l, Surface::Health, ctx.clone()));
    }
    spawn_reaper(ctx.clone(), pool.clone(), background.clone());
    tokio::spawn({
        let (ctx, stop) = (ctx.clone(), background.clone());
        async move { ctx.refusals.run_summaries(stop).await }
    });
    tokio::spawn({
        let open = ctx.metrics.open_connections.clone();
        let tunnels = ctx.metrics.tunnel_connections.clone();
        let stop = background.clone();
        async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = crate::heap_trim::watch(open, tunnels) => {}
            }
        }
    });
    info!(?addrs, mode = ?ctx.config.mode, "proxy listening");
    Ok(Running {
        addrs,
        ctx,
        pool,
        background,
    })
}

fn spawn_reaper(ctx: Arc<ProxyContext>, pool: Arc<Pool>, stop: CancellationToken) {
    tokio::spawn(async move {
        let every =
            (ctx.config.pool_idle / 2).clamp(Duration::from_millis(200), Duration::from_secs(30));
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let generation = ctx.svid.borrow().as_ref().map_or(0, |c| c.generation);
            pool.reap(generation, ctx.config.pool_idle);
        }
    });
}
