//! A gRPC channel to the control plane over TLS 1.3 (ALPN h2), trusting only `bundle` and
//! checking that the server presents the expected SPIFFE ID (not a DNS name: the control plane
//! is known by its identity).

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::{IpAddr, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};
use trellis_ca::tls::{ExpectedServer, SpiffeServerVerifier, client_config};
use trellis_ca::{SpiffeId, Svid, TrustBundle};

use crate::diagnose::{ConnectFailure, Unresolvable, classify};

/// How long connecting (TCP + TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a channel could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The address is not `host:port`.
    #[error("control plane address {0:?} is not host:port (e.g. 127.0.0.1:15012)")]
    Address(String),
    /// The address names no port (nothing is assumed: a wrong guess fails less clearly).
    #[error("control plane address {0:?} has no port; give host:port, e.g. {0}:15012")]
    NoPort(String),
    /// The TLS configuration could not be built.
    #[error("TLS configuration: {0}")]
    Tls(#[from] trellis_ca::tls::TlsConfigError),
    /// Connecting failed.
    #[error("cannot connect to the control plane at {addr}: {failure}")]
    Connect {
        /// The address.
        addr: String,
        /// What failed (TCP, TLS, identity), in words.
        failure: ConnectFailure,
    },
}

/// Splits a control plane address into host (IPv6 without brackets) and port, refusing
/// anything but `host:port` with a non-zero port.
pub fn parse_address(addr: &str) -> Result<(String, u16), ChannelError> {
    let bad = || ChannelError::Address(addr.to_owned());
    let uri: Uri = format!("http://{addr}").parse().map_err(|_| bad())?;
    let authority = uri.authority().ok_or_else(bad)?;
    if authority.as_str() != addr || authority.as_str().contains('@') {
        return Err(bad());
    }
    // `host()` keeps an IPv6 address's brackets, and user information was refused above, so
    // what follows the host is the port, if any.
    let after_host = authority
        .as_str()
        .get(authority.host().len()..)
        .unwrap_or_default();
    let port = match after_host.strip_prefix(':') {
        None => return Err(ChannelError::NoPort(addr.to_owned())),
        Some(port) => match port.parse::<u16>() {
            Ok(0) | Err(_) => return Err(bad()),
            Ok(port) => port,
        },
    };
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

/// Connects to the control plane at `addr` (`host:port`). The server must present an SVID of
/// `bundle`; if `expected` is given, exactly that identity. `identity` is our own SVID, when we
/// have one (renewals and discovery present it).
pub async fn connect(
    addr: &str,
    bundle: TrustBundle,
    expected: Option<SpiffeId>,
    identity: Option<&Svid>,
) -> Result<Channel, ChannelError> {
    connect_from(addr, bundle, expected, identity, None).await
}

/// As [`connect`], from the local address `local` when given (port chosen by the system):
/// what lets one machine stand for many pods, each with an address of its own (the bench's
/// simulated proxies use 127.0.0.0/8 addresses as a cluster's pods use theirs).
pub async fn connect_from(
    addr: &str,
    bundle: TrustBundle,
    expected: Option<SpiffeId>,
    identity: Option<&Svid>,
    local: Option<std::net::IpAddr>,
) -> Result<Channel, ChannelError> {
    let expected = expected.map_or(ExpectedServer::AnyInTrustDomain, ExpectedServer::Exact);
    let verifier = Arc::new(SpiffeServerVerifier::new(bundle, expected));
    let client_identity = identity.map(|s| (s.chain().to_vec(), s.private_key()));
    let tls = Arc::new(client_config(verifier, client_identity, &[b"h2"])?);
    let (host, port) = parse_address(addr)?;
    let uri: Uri = format!("http://{addr}")
        .parse()
        .map_err(|_| ChannelError::Address(addr.to_owned()))?;
    let endpoint = Endpoint::from(uri)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .tcp_nodelay(true);
    let target = addr.to_owned();
    let connector = tower::service_fn(move |_: Uri| {
        let tls = tls.clone();
        let host = host.clone();
        async move {
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|source| {
                    std::io::Error::other(Unresolvable {
                        host: host.clone(),
                        source,
                    })
                })?
                .collect();
            let tcp = match local {
                None => TcpStream::connect(&addrs[..]).await?,
                Some(local) => connect_bound(local, &addrs).await?,
            };
            tcp.set_nodelay(true)?;
            // The name is not checked (the verifier checks the SPIFFE ID); rustls needs one.
            let name = ServerName::try_from(host.clone()).unwrap_or(ServerName::IpAddress(
                IpAddr::from(std::net::Ipv4Addr::LOCALHOST),
            ));
            let stream = TlsConnector::from(tls).connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| ChannelError::Connect {
            addr: target,
            failure: classify(&e),
        })
}

/// Connects from `local` to the first of `addrs` of the same family that answers.
async fn connect_bound(
    local: std::net::IpAddr,
    addrs: &[std::net::SocketAddr],
) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in addrs.iter().filter(|a| a.is_ipv4() == local.is_ipv4()) {
        let socket = if local.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(std::net::SocketAddr::new(local, 0))?;
        match socket.connect(*addr).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            format!("no address of the control plane in the family of the local address {local}"),
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_must_be_host_and_port() {
        let ok = |s: &str| parse_address(s).unwrap();
        assert_eq!(ok("127.0.0.1:15012"), ("127.0.0.1".into(), 15012));
        assert_eq!(ok("[::1]:15012"), ("::1".into(), 15012));
        assert_eq!(
            ok("trellis-control-plane.trellis-system.svc:15012"),
            ("trellis-control-plane.trellis-system.svc".into(), 15012)
        );
        let err = |s: &str| parse_address(s).unwrap_err().to_string();
        assert_eq!(
            err("127.0.0.1"),
            "control plane address \"127.0.0.1\" has no port; give host:port, e.g. 127.0.0.1:15012"
        );
        for bad in [
            "",
            "127.0.0.1:",
            "127.0.0.1:0",
            "127.0.0.1:99999",
            "http://cp:15012",
            "cp:15012/x",
            "u@cp:15012",
            ":15012",
        ] {
            assert!(
                err(bad).contains("is not host:port"),
                "{bad:?}: {}",
                err(bad)
            );
        }
    }
}
