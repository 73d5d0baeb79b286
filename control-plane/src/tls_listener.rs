//! The TLS side of the gRPC listener: accepts TCP connections (backing off when accepting
//! fails), runs TLS handshakes concurrently — at most [`HandshakeLimits::per_source`] pending
//! from one source and [`HandshakeLimits::total`] in all, each within
//! [`HandshakeLimits::timeout`], so that a host holding idle connections cannot keep others
//! from their certificates — and hands tonic streams that carry the caller's address and, if
//! it showed one, its verified SPIFFE ID. A connection over the total (a fleet restarting at
//! once) waits for a place, up to [`HandshakeLimits::total`] of them, within its handshake
//! deadline, rather than being closed into its backoff; one over its source's cap is closed at
//! once. Connections closed before their handshake finished are counted
//! (`trellis_control_plane_connections_refused_total{reason}`).
//!
//! Owns: [`PeerInfo`], [`HandshakeLimits`] and [`incoming`]. It does not decide anything about
//! the caller.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tracing::debug;
use trellis_ca::SpiffeId;
use trellis_listener::{CapRefusal, Caps, Entry, Gate};

use crate::metrics::Metrics;

/// How many TLS handshakes may be pending, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeLimits {
    /// Pending from one source address (an IPv6 /64).
    pub per_source: usize,
    /// Pending from everyone.
    pub total: usize,
    /// How long a client has to finish its handshake.
    pub timeout: Duration,
}

impl HandshakeLimits {
    /// The limits the flags set.
    pub fn from_args(args: &crate::config::Args) -> Self {
        Self {
            per_source: args.max_pending_handshakes_per_source,
            total: args.max_pending_handshakes,
            timeout: args.handshake_timeout,
        }
    }
}

/// What tonic request handlers learn about the connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The caller's address.
    pub remote: SocketAddr,
    /// The caller's SPIFFE ID, when it presented a valid client certificate.
    pub id: Option<SpiffeId>,
    /// Serial and expiry of that certificate (for status; the handshake verified it).
    pub cert: Option<PeerCert>,
}

/// The serial and expiry of a verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    /// Serial number, lowercase hex (as `trellis_ca::Svid::serial`).
    pub serial: String,
    /// Start of validity.
    pub not_before: std::time::SystemTime,
    /// End of validity.
    pub not_after: std::time::SystemTime,
}

impl PeerCert {
    /// Reads them from a DER certificate; `None` if it does not parse.
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let time = |t: x509_parser::time::ASN1Time| {
            u64::try_from(t.timestamp())
                .ok()
                .map(|secs| std::time::UNIX_EPOCH + Duration::from_secs(secs))
        };
        Some(Self {
            serial: cert.raw_serial_as_string().replace(':', ""),
            not_before: time(cert.validity().not_before)?,
            not_after: time(cert.validity().not_after)?,
        })
    }
}

/// A server-side TLS stream that tells tonic who is on the other end.
#[derive(Debug)]
pub struct PeerStream {
    /// The TLS stream.
    inner: TlsStream<TcpStream>,
    /// Who is on the other end.
    info: PeerInfo,
}

impl Connected for PeerStream {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts connections on `listener` and yields those whose handshake succeeded, until
/// `shutdown` is cancelled. A connection over its source's cap, or over the total with as many
/// waiting already, is closed at once; one over the total waits for a place within its
/// handshake deadline.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    limits: HandshakeLimits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> ReceiverStream<io::Result<PeerStream>> {
    let (tx, rx) = mpsc::channel(256);
    let pending = Gate::new(Caps {
        per_source: limits.per_source,
        total: limits.total,
    });
    let mut accepting = trellis_listener::Acceptor::new(listener, "grpc");
    tokio::spawn(async move {
        while let Some((tcp, remote)) = accepting.accept(&shutdown).await {
            // As many may wait for a place as may hold one.
            let entry = match pending.admit(remote.ip(), limits.total) {
                Ok(entry) => entry,
                Err(refusal) => {
                    metrics.refuse_connection(match refusal {
                        CapRefusal::PerSource(_) => "handshakes_per_source",
                        _ => "handshakes_total",
                    });
                    debug!(peer.addr = %remote, error = %refusal, "connection closed before its handshake");
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let (tx, metrics) = (tx.clone(), metrics.clone());
            tokio::spawn(async move {
                // One deadline for the wait for a place and the handshake.
                let deadline = tokio::time::Instant::now() + limits.timeout;
                let ticket = match entry {
                    Entry::Now(ticket) => ticket,
                    Entry::Wait(waiter) => {
                        match tokio::time::timeout_at(deadline, waiter.place()).await {
                            Ok(ticket) => ticket,
                            Err(_) => {
                                metrics.refuse_connection("handshakes_total");
                                debug!(peer.addr = %remote, "no handshake place free within the deadline");
                                return;
                            }
                        }
                    }
                };
                let handshake = tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await;
                drop(ticket);
                match handshake {
                    Ok(Ok(tls)) => {
                        let leaf = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|certs| certs.first());
                        let id = leaf.and_then(|leaf| trellis_ca::peer_spiffe_id(leaf).ok());
                        let cert = leaf.and_then(|leaf| PeerCert::from_der(leaf));
                        let info = PeerInfo { remote, id, cert };
                        let _ = tx.send(Ok(PeerStream { inner: tls, info })).await;
                    }
                    Ok(Err(e)) => {
                        metrics.refuse_connection("handshake_failed");
                        debug!(peer.addr = %remote, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        metrics.refuse_connection("handshake_timeout");
                        debug!(peer.addr = %remote, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
