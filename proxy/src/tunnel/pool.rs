//! The client side of the tunnel: a pool of mutual-TLS HTTP/2 connections, keyed by peer
//! (identity + tunnel address). An application connection costs one CONNECT stream on a pooled
//! connection; a TLS handshake is paid only when no pooled connection has room.
//!
//! Owns: [`Pool`] — dialing (TCP, TLS 1.3 expecting the peer's SPIFFE ID, ALPN h2), stream
//! limits per connection, retiring connections made with an older certificate, idle expiry.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::{Instrument, debug, info_span};

use super::read_ahead::ReadAhead;
use super::stream::H2Stream;
use super::{
    CONNECTION_WINDOW, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE, REASON_HEADER, STREAM_WINDOW,
    keepalive,
};
use crate::context::ProxyContext;
use crate::identity::ALPN_H2;
use crate::records::TlsFacts;
use crate::state::Peer;

/// Time to connect and finish the TLS handshake with a peer.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for the peer to answer a CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why no stream to the peer could be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TunnelError {
    /// We have no certificate yet.
    #[error("the proxy has no certificate yet")]
    NotReady,
    /// TCP connect to the peer failed.
    #[error("cannot reach peer tunnel {addr}: {reason}")]
    Dial {
        /// The tunnel address.
        addr: SocketAddr,
        /// What failed.
        reason: String,
    },
    /// The TLS handshake failed (including: the peer is not who discovery says).
    #[error("TLS with {addr} failed: {reason}")]
    Tls {
        /// The tunnel address.
        addr: SocketAddr,
        /// rustls's reason.
        reason: String,
    },
    /// The peer refused the CONNECT.
    #[error("peer refused CONNECT to {target}: {status} {reason}")]
    Refused {
        /// The target.
        target: SocketAddr,
        /// HTTP status.
        status: StatusCode,
        /// The peer's stated reason.
        reason: String,
    },
    /// HTTP/2 failed.
    #[error("HTTP/2 to {addr}: {reason}")]
    Http {
        /// The tunnel address.
        addr: SocketAddr,
        /// What failed.
        reason: String,
    },
}

/// One pooled connection.
#[derive(Debug)]
struct Pooled {
    /// Opens streams.
    sender: SendRequest<Bytes>,
    /// Set by the connection's task when the connection has ended.
    closed: Arc<AtomicBool>,
    /// The SVID generation it was made with.
    generation: u64,
    /// Streams open on it now.
    active: Arc<AtomicUsize>,
    /// Milliseconds since the pool's epoch of the last stream opened or closed.
    last_used: Arc<AtomicU64>,
    /// The handshake's facts.
    tls: TlsFacts,
}

/// Decrements a connection's stream count when the application connection ends.
#[derive(Debug)]
pub struct StreamGuard {
    /// The counter.
    active: Arc<AtomicUsize>,
    /// Stamped on drop.
    last_used: Arc<AtomicU64>,
    /// Reference point.
    epoch: Instant,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
        self.last_used
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// An open CONNECT stream.
#[derive(Debug)]
pub struct Stream {
    /// Bytes to and from the peer's application.
    pub io: H2Stream,
    /// Keeps the connection's stream count right.
    pub guard: StreamGuard,
    /// TLS facts of the connection it rides on (`reused` set when no handshake was needed).
    pub tls: TlsFacts,
}

/// Pooled tunnel connections.
#[derive(Debug)]
pub struct Pool {
    /// Per-peer lists; the async lock makes concurrent first requests share one handshake.
    peers: Mutex<HashMap<Peer, Arc<tokio::sync::Mutex<Vec<Pooled>>>>>,
    /// Reference point for `last_used`.
    epoch: Instant,
}

impl Default for Pool {
    fn default() -> Self {
        Self::new()
    }
}

impl Pool {
    /// An empty pool.
    pub fn new() -> Self {
        Self {
            peers: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
        }
    }

    /// Opens a CONNECT stream to `target` through `peer`.
    pub async fn open(
        &self,
        ctx: &Arc<ProxyContext>,
        peer: &Peer,
        target: SocketAddr,
    ) -> Result<Stream, TunnelError> {
        let current = ctx.svid.borrow().clone().ok_or(TunnelError::NotReady)?;
        let slot = {
            let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
            peers.entry(peer.clone()).or_default().clone()
        };
        let (sender, guard, mut tls) = {
            let mut conns = slot.lock().await;
            conns.retain(|c| !c.closed.load(Ordering::Acquire));
            let max = ctx.config.pool_max_streams;
            let found = conns.iter().position(|c| {
                c.generation == current.generation && c.active.load(Ordering::Acquire) < max
            });
            let (index, reused) = match found {
                Some(i) => (i, true),
                None => {
                    conns.push(dial(ctx, &current, peer).await?);
                    (conns.len() - 1, false)
                }
            };
            // `index` came from `position` or points at the element just pushed.
            let pooled = &conns[index];
            pooled.active.fetch_add(1, Ordering::AcqRel);
            let guard = StreamGuard {
                active: pooled.active.clone(),
                last_used: pooled.last_used.clone(),
                epoch: self.epoch,
            };
            let mut tls = pooled.tls.clone();
            tls.reused = reused;
            (pooled.sender.clone(), guard, tls)
        };
        if tls.reused {
            tls.handshake_ms = 0.0;
        }
        let http_err = |e: h2::Error| TunnelError::Http {
            addr: peer.tunnel,
            reason: e.to_string(),
        };
        let request = Request::builder()
            .method(Method::CONNECT)
            .uri(target.to_string())
            .body(())
            .map_err(|e| TunnelError::Http {
                addr: peer.tunnel,
                reason: e.to_string(),
            })?;
        let (response, send) = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let mut ready = sender.ready().await.map_err(http_err)?;
            let (response, send) = ready.send_request(request, false).map_err(http_err)?;
            Ok((response.await.map_err(http_err)?, send))
        })
        .await
        .map_err(|_| TunnelError::Http {
            addr: peer.tunnel,
            reason: "no answer to CONNECT within 10s".into(),
        })??;
        if response.status() != StatusCode::OK {
            let reason = response
                .headers()
                .get(REASON_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            return Err(TunnelError::Refused {
                target,
                status: response.status(),
                reason,
            });
        }
        Ok(Stream {
            io: H2Stream::new(send, response.into_body()),
            guard,
            tls,
        })
    }

    /// Drops connections with no open stream that are closed, made with an old certificate,
    /// or unused for `idle`.
    pub fn reap(&self, current_generation: u64, idle: Duration) {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        let idle_ms = idle.as_millis() as u64;
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        peers.retain(|_, slot| {
            let Ok(mut conns) = slot.try_lock() else {
                return true; // being dialed or used right now
            };
            conns.retain(|c| {
                let active = c.active.load(Ordering::Acquire);
                let idle_for = now_ms.saturating_sub(c.last_used.load(Ordering::Relaxed));
                let stale = c.generation != current_generation || idle_for >= idle_ms;
                !c.closed.load(Ordering::Acquire) && (active > 0 || !stale)
            });
            !conns.is_empty()
        });
    }

    /// Pooled connections per peer (for tests and `/config_dump`).
    pub fn connection_count(&self) -> usize {
        let peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        peers
            .values()
            .map(|slot| slot.try_lock().map_or(0, |c| c.len()))
            .sum()
    }
}

async fn dial(
    ctx: &Arc<ProxyContext>,
    current: &crate::identity::CurrentSvid,
    peer: &Peer,
) -> Result<Pooled, TunnelError> {
    let addr = peer.tunnel;
    let started = Instant::now();
    let tcp = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| TunnelError::Dial {
            addr,
            reason: "timed out".into(),
        })?
        .map_err(|e| TunnelError::Dial {
            addr,
            reason: e.to_string(),
        })?;
    let _ = tcp.set_nodelay(true);
    let config = current
        .client_config(&peer.id)
        .map_err(|e| TunnelError::Tls {
            addr,
            reason: e.to_string(),
        })?;
    // The verifier checks the SPIFFE ID, not this name; rustls still needs one for SNI.
    let name = ServerName::IpAddress(addr.ip().into());
    let mut tls = tokio::time::timeout(
        DIAL_TIMEOUT,
        TlsConnector::from(config).connect(name, ReadAhead::new(tcp)),
    )
    .await
    .map_err(|_| TunnelError::Tls {
        addr,
        reason: "handshake timed out".into(),
    })?
    .map_err(|e| TunnelError::Tls {
        addr,
        reason: e.to_string(),
    })?;
    let facts = TlsFacts::from_conn(tls.get_ref().1, started);
    if tls.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
        return Err(TunnelError::Tls {
            addr,
            reason: "peer did not negotiate ALPN h2".into(),
        });
    }
    ctx.metrics
        .handshake_seconds
        .observe(facts.handshake_ms / 1000.0);
    ctx.metrics.tunnel_connections_opened.inc();
    tls.get_mut().0.enable();
    tls.get_mut()
        .1
        .set_buffer_limit(Some(super::TLS_SEND_BUFFER));
    let (sender, mut conn) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .enable_push(false)
        .handshake::<_, Bytes>(tls)
        .await
        .map_err(|e| TunnelError::Http {
            addr,
            reason: e.to_string(),
        })?;
    let closed = Arc::new(AtomicBool::new(false));
    let closed2 = closed.clone();
    let pings = conn.ping_pong();
    let open = crate::metrics::Counted::new(&ctx.metrics.tunnel_connections);
    tokio::spawn(
        async move {
            let _open = open;
            let dead = async move {
                match pings {
                    Some(p) => keepalive(p).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                res = &mut conn => if let Err(e) = res {
                    debug!(error = %e, "tunnel connection closed");
                },
                () = dead => debug!("tunnel peer did not answer a PING; connection dropped"),
            }
            closed2.store(true, Ordering::Release);
        }
        .instrument(info_span!("tunnel-client", peer.id = %peer.id, peer.addr = %addr)),
    );
    Ok(Pooled {
        sender,
        closed,
        generation: current.generation,
        active: Arc::new(AtomicUsize::new(0)),
        last_used: Arc::new(AtomicU64::new(0)),
        tls: facts,
    })
}
