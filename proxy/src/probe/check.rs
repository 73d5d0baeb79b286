//! Running one original probe against the app, as kubelet would have from the node: an HTTP(S)
//! GET (success: status 200–399; redirects are not followed), a TCP connect, or a
//! `grpc.health.v1.Health/Check` (success: `SERVING`). The app is reached on the pod's IP (or
//! the probe's `host`), never on loopback: a loopback-only listener stays private, and kubelet
//! would not reach it either. The proxy's own connections (UID 1337) are not intercepted.
//!
//! Owns: the dial, the exchange and the verdict, all within the probe's `timeoutSeconds`.
//! Which probe, and the answer to kubelet, is [`super::endpoint`]'s.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Endpoint, Uri};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::spec::{Action, AppProbe, Grpc, HttpGet, Scheme};

/// The `User-Agent` of HTTP probes unless the probe sets one: kubelet's prefix, so apps that
/// recognise kubelet's probes recognise these.
pub const USER_AGENT: &str = "kube-probe/trellis";

/// Why a probe failed: the short reason kubelet's prober gets in the 503's body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// The whole check did not finish within `timeoutSeconds`.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The probe's `host` has no address.
    #[error("cannot resolve host {host:?}: {reason}")]
    Resolve {
        /// The host.
        host: String,
        /// Why.
        reason: String,
    },
    /// TCP connect failed (refused: the app is not listening).
    #[error("connect to {addr}: {reason}")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// The OS error.
        reason: String,
    },
    /// The TLS handshake of an HTTPS probe failed.
    #[error("TLS with {addr}: {reason}")]
    Tls {
        /// Where.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// No HTTP answer.
    #[error("HTTP GET {addr}: {reason}")]
    Http {
        /// Where.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// An HTTP answer outside 200–399.
    #[error("HTTP status {status} from {addr}; expected 200-399")]
    Status {
        /// Where.
        addr: SocketAddr,
        /// The status.
        status: u16,
    },
    /// The gRPC call failed (not a health server, or the service is unknown).
    #[error("gRPC health check at {addr}: {reason}")]
    Grpc {
        /// Where.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The health server answered something other than `SERVING`.
    #[error("gRPC health status {status} from {addr}; expected SERVING")]
    NotServing {
        /// Where.
        addr: SocketAddr,
        /// The status's name.
        status: String,
    },
}

/// Runs `probe` against the app on `pod_ip`, within its timeout. `Ok` carries a short
/// description of the success (`HTTP 200`, `TCP connected`, `SERVING`).
pub async fn run(
    probe: &AppProbe,
    pod_ip: IpAddr,
    tls: &Arc<ClientConfig>,
) -> Result<String, CheckError> {
    let check = async {
        match &probe.action {
            Action::Http(h) => http_get(h, pod_ip, tls).await,
            Action::Tcp(t) => {
                let addr = resolve(t.host.as_deref(), pod_ip, t.port).await?;
                connect(addr).await.map(|_| "TCP connected".to_owned())
            }
            Action::Grpc(g) => grpc(g, SocketAddr::new(pod_ip, g.port), probe.timeout).await,
        }
    };
    tokio::time::timeout(probe.timeout, check)
        .await
        .map_err(|_| CheckError::Timeout(probe.timeout))?
}

async fn resolve(host: Option<&str>, pod_ip: IpAddr, port: u16) -> Result<SocketAddr, CheckError> {
    let Some(host) = host else {
        return Ok(SocketAddr::new(pod_ip, port));
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let err = |reason: String| CheckError::Resolve {
        host: host.to_owned(),
        reason,
    };
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| err(e.to_string()))?
        .next()
        .ok_or_else(|| err("no address".to_owned()))
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, CheckError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| CheckError::Connect {
            addr,
            reason: e.to_string(),
        })?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

async fn http_get(
    h: &HttpGet,
    pod_ip: IpAddr,
    tls: &Arc<ClientConfig>,
) -> Result<String, CheckError> {
    let addr = resolve(h.host.as_deref(), pod_ip, h.port).await?;
    let host = h.host.clone().unwrap_or_else(|| pod_ip.to_string());
    let req = request(h, &host);
    let tcp = connect(addr).await?;
    let status = match h.scheme {
        Scheme::Http => exchange(TokioIo::new(tcp), req).await,
        Scheme::Https => {
            // An IP sends no SNI, as kubelet's Go client does not either.
            let name = match host.parse::<IpAddr>() {
                Ok(ip) => ServerName::IpAddress(ip.into()),
                Err(_) => ServerName::try_from(host.clone()).map_err(|e| CheckError::Tls {
                    addr,
                    reason: e.to_string(),
                })?,
            };
            let stream = TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| CheckError::Tls {
                    addr,
                    reason: e.to_string(),
                })?;
            exchange(TokioIo::new(stream), req).await
        }
    }
    .map_err(|e| CheckError::Http {
        addr,
        reason: e.to_string(),
    })?;
    http_verdict(status).map_err(|status| CheckError::Status { addr, status })
}

/// Kubelet's verdict on an HTTP status: 200–399 pass (a redirect it would not follow counts
/// as success too), anything else fails.
pub fn http_verdict(status: StatusCode) -> Result<String, u16> {
    if (200..400).contains(&status.as_u16()) {
        Ok(format!("HTTP {}", status.as_u16()))
    } else {
        Err(status.as_u16())
    }
}

/// The request kubelet would send for `h` to `host` (the probe's host, or the pod IP): the
/// probe's headers, then `Host: host:port` unless they set it, `User-Agent` [`USER_AGENT`] and
/// `Accept: */*` unless they set them (an empty `Accept` removes it), and no keep-alive.
pub fn request(h: &HttpGet, host: &str) -> Request<Empty<Bytes>> {
    let mut req = Request::new(Empty::new());
    *req.uri_mut() = Uri::from(h.path.clone());
    let headers = req.headers_mut();
    for (name, value) in &h.headers {
        headers.append(name.clone(), value.clone());
    }
    if !headers.contains_key(header::HOST) {
        let authority = match host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("[{ip}]:{}", h.port),
            _ => format!("{host}:{}", h.port),
        };
        if let Ok(v) = HeaderValue::try_from(authority) {
            headers.insert(header::HOST, v);
        }
    }
    if !headers.contains_key(header::USER_AGENT) {
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    }
    match headers.get(header::ACCEPT) {
        None => {
            headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        }
        Some(v) if v.is_empty() => {
            headers.remove(header::ACCEPT);
        }
        Some(_) => {}
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    req
}

/// One HTTP/1.1 request on `io`; the answer's status (the body is not read).
async fn exchange<I>(io: I, req: Request<Empty<Bytes>>) -> Result<StatusCode, hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    let mut conn = std::pin::pin!(conn);
    let mut response = std::pin::pin!(sender.send_request(req));
    tokio::select! {
        r = &mut response => return r.map(|r| r.status()),
        c = &mut conn => c?,
    }
    // The connection ended cleanly: the response (or the error saying there is none) is ready.
    response.await.map(|r| r.status())
}

async fn grpc(g: &Grpc, addr: SocketAddr, timeout: Duration) -> Result<String, CheckError> {
    let err = |reason: String| CheckError::Grpc { addr, reason };
    let connector = tower::service_fn(move |_: Uri| async move {
        connect(addr)
            .await
            .map(TokioIo::new)
            .map_err(std::io::Error::other)
    });
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| err(e.to_string()))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_with_connector(connector)
        .await
        .map_err(|e| err(trellis_client::diagnose::error_chain(&e)))?;
    let request = HealthCheckRequest {
        service: g.service.clone(),
    };
    let answer = HealthClient::new(channel)
        .check(request)
        .await
        .map_err(|s| err(format!("{:?}: {}", s.code(), s.message())))?;
    match ServingStatus::try_from(answer.into_inner().status) {
        Ok(ServingStatus::Serving) => Ok("SERVING".to_owned()),
        Ok(other) => Err(CheckError::NotServing {
            addr,
            status: other.as_str_name().to_owned(),
        }),
        Err(_) => Err(CheckError::NotServing {
            addr,
            status: "UNKNOWN".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests;
