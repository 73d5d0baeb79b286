//! `GET /status` on a loopback-only listener (`--status-listen`, default 127.0.0.1:15015):
//! every open discovery stream — the proxy's verified identity, the serial and expiry of the
//! certificate it opened the stream with, the version sent and acknowledged, the mTLS mode
//! sent — and the control plane's own version, as JSON. `trellis status` reads it.
//!
//! Authentication is the Kubernetes API server's: the listener accepts loopback addresses only,
//! so it is reached through `kubectl port-forward` (or `trellis status`, which does the same),
//! and that needs `create pods/portforward` in the control plane's namespace — an
//! administrator's right. The metrics port is not used because it listens on every address for
//! Prometheus.
//!
//! Owns: the JSON document ([`StatusDocument`]), building it ([`document`]), the loopback rule
//! ([`check_loopback`]) and serving it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::grpc::{WatcherInfo, Watchers};
use crate::mesh::MeshView;
use crate::mesh::model::MtlsMode;

/// Why `--status-listen` was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "--status-listen {0}: expected a loopback address (127.0.0.0/8 or ::1); the status endpoint has no authentication of its own and is reached through the API server's port-forward"
)]
pub struct NotLoopback(pub SocketAddr);

/// Accepts only loopback addresses.
pub fn check_loopback(addr: SocketAddr) -> Result<SocketAddr, NotLoopback> {
    if addr.ip().is_loopback() {
        Ok(addr)
    } else {
        Err(NotLoopback(addr))
    }
}

/// `--status-listen`'s parser: a socket address on loopback.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s
        .parse()
        .map_err(|e| format!("expected host:port (like 127.0.0.1:15015): {e}"))?;
    check_loopback(addr).map_err(|e| e.to_string())
}

/// The `/status` document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusDocument {
    /// The control plane's build version.
    pub control_plane_version: String,
    /// The mesh epoch (random per start) and version now.
    pub epoch: u64,
    /// The version proxies should hold.
    pub version: u64,
    /// One entry per open discovery stream, sorted by identity then node.
    pub proxies: Vec<ProxyStatus>,
}

/// One open discovery stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyStatus {
    /// The verified SPIFFE ID.
    pub id: String,
    /// The pod name the proxy gave (not verified).
    pub node: String,
    /// The stream's source address.
    pub peer: String,
    /// The build version the proxy gave (not verified).
    pub proxy_version: String,
    /// When the stream opened, Unix seconds.
    pub connected_at: u64,
    /// Epoch and version last sent.
    pub sent: [u64; 2],
    /// Epoch and version the proxy acknowledged.
    pub acked: [u64; 2],
    /// Full states sent again.
    pub resyncs: u64,
    /// Serial of the certificate the stream was opened with (lowercase hex).
    pub cert_serial: Option<String>,
    /// Its start of validity, Unix seconds.
    pub cert_not_before: Option<u64>,
    /// Its expiry, Unix seconds.
    pub cert_not_after: Option<u64>,
    /// The mTLS mode last sent: "STRICT" or "PERMISSIVE" (none before the first update).
    pub mtls: Option<&'static str>,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Builds the document from the open streams and the mesh's current version.
pub fn document(streams: &[WatcherInfo], epoch: u64, version: u64) -> StatusDocument {
    let mut proxies: Vec<ProxyStatus> = streams
        .iter()
        .map(|w| ProxyStatus {
            id: w.id.to_string(),
            node: w.node.clone(),
            peer: w.peer.to_string(),
            proxy_version: w.proxy_version.clone(),
            connected_at: unix(w.connected_at),
            sent: [w.sent.0, w.sent.1],
            acked: [w.acked.0, w.acked.1],
            resyncs: w.resyncs,
            cert_serial: w.cert.as_ref().map(|c| c.serial.clone()),
            cert_not_before: w.cert.as_ref().map(|c| unix(c.not_before)),
            cert_not_after: w.cert.as_ref().map(|c| unix(c.not_after)),
            mtls: w.mtls.map(|m| match m {
                MtlsMode::Strict => "STRICT",
                MtlsMode::Permissive => "PERMISSIVE",
            }),
        })
        .collect();
    proxies.sort_by(|a, b| (&a.id, &a.node, &a.peer).cmp(&(&b.id, &b.node, &b.peer)));
    StatusDocument {
        control_plane_version: env!("CARGO_PKG_VERSION").to_owned(),
        epoch,
        version,
        proxies,
    }
}

/// What `/status` reads.
#[derive(Debug, Clone)]
pub struct StatusSource {
    /// Open streams.
    pub watchers: Arc<Watchers>,
    /// The published mesh.
    pub views: watch::Receiver<Arc<MeshView>>,
}

impl StatusSource {
    fn render(&self) -> String {
        let (epoch, version) = {
            let view = self.views.borrow();
            (view.epoch, view.version)
        };
        let doc = document(&self.watchers.snapshot(), epoch, version);
        serde_json::to_string(&doc).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// Serves `/status` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, source: StatusSource, shutdown: CancellationToken) {
    let respond = move |req: &Request<Incoming>, _peer| respond(req, &source);
    crate::plain_http::serve(listener, "status", respond, shutdown).await;
}

fn respond(req: &Request<Incoming>, source: &StatusSource) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/status") => (StatusCode::OK, "application/json", source.render()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;
    use crate::tls_listener::PeerCert;
    use trellis_ca::SpiffeId;

    fn stream(id: &str, node: &str, acked: u64) -> WatcherInfo {
        WatcherInfo {
            id: SpiffeId::parse(id).unwrap(),
            node: node.into(),
            peer: "198.18.0.2:40000".parse().unwrap(),
            proxy_version: "0.1.0".into(),
            connected_at: UNIX_EPOCH + Duration::from_secs(100),
            sent: (7, 5),
            acked: (7, acked),
            resyncs: 1,
            cert: Some(PeerCert {
                serial: "0a1b".into(),
                not_before: UNIX_EPOCH,
                not_after: UNIX_EPOCH + Duration::from_secs(4000),
            }),
            mtls: Some(MtlsMode::Permissive),
        }
    }

    #[test]
    fn only_loopback_addresses_may_serve_status() {
        for (addr, ok) in [
            ("127.0.0.1:15015", true),
            ("127.3.4.5:1", true),
            ("[::1]:15015", true),
            ("0.0.0.0:15015", false),
            ("[::]:15015", false),
            ("198.18.0.1:15015", false),
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(check_loopback(addr).is_ok(), ok, "{addr}");
        }
    }

    #[test]
    fn the_document_lists_every_stream_sorted_with_its_certificate_and_versions() {
        let doc = document(
            &[
                stream("spiffe://td/ns/b/sa/x", "b-1", 5),
                stream("spiffe://td/ns/a/sa/y", "a-1", 4),
            ],
            7,
            5,
        );
        assert_eq!(doc.version, 5);
        assert_eq!(doc.proxies[0].id, "spiffe://td/ns/a/sa/y");
        assert_eq!(doc.proxies[0].acked, [7, 4]);
        assert_eq!(doc.proxies[1].cert_serial.as_deref(), Some("0a1b"));
        assert_eq!(doc.proxies[1].cert_not_after, Some(4000));
        assert_eq!(doc.proxies[1].mtls, Some("PERMISSIVE"));
    }
}
