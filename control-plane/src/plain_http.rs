//! The serving loop of the control plane's small plain-HTTP/1 endpoints (metrics and probes on
//! 15014, `/status` on loopback): accept with backoff ([`trellis_listener::Acceptor`]), a 5 s
//! header deadline per connection, every connection dropped on shutdown. What each endpoint
//! answers is its own `respond` function.
//!
//! Owns: [`serve`].

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

/// How long a client has to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `respond` (given each request and the caller's address) on `listener` until
/// `shutdown`; `name` names the endpoint in logs.
pub async fn serve<F>(
    listener: TcpListener,
    name: &'static str,
    respond: F,
    shutdown: CancellationToken,
) where
    F: Fn(&Request<Incoming>, SocketAddr) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    let mut acceptor = trellis_listener::Acceptor::new(listener, name);
    while let Some((stream, peer)) = acceptor.accept(&shutdown).await {
        let respond = respond.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(
            async move {
                let svc = service_fn(move |req| {
                    let response = respond(&req, peer);
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::select! {
                    _ = conn => {}
                    () = shutdown.cancelled() => {}
                }
            }
            .instrument(info_span!("http", server = name, peer.addr = %peer)),
        );
    }
}
