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

/// How long connecting (TCP + TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a channel could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The address is not `host:port`.
    #[error("control plane address {0:?} is not host:port")]
    Address(String),
    /// The TLS configuration could not be built.
    #[error("TLS configuration: {0}")]
    Tls(#[from] trellis_ca::tls::TlsConfigError),
    /// Connecting failed.
    #[error("cannot connect to the control plane at {addr}: {reason}")]
    Connect {
        /// The address.
        addr: String,
        /// What failed (TCP, TLS, identity).
        reason: String,
    },
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
    let expected = expected.map_or(ExpectedServer::AnyInTrustDomain, ExpectedServer::Exact);
    let verifier = Arc::new(SpiffeServerVerifier::new(bundle, expected));
    let client_identity = identity.map(|s| (s.chain().to_vec(), s.private_key()));
    let tls = Arc::new(client_config(verifier, client_identity, &[b"h2"])?);
    let uri: Uri = format!("http://{addr}")
        .parse()
        .map_err(|_| ChannelError::Address(addr.to_owned()))?;
    let host = uri
        .host()
        .ok_or_else(|| ChannelError::Address(addr.to_owned()))?
        .to_owned();
    let endpoint = Endpoint::from(uri)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .tcp_nodelay(true);
    let target = addr.to_owned();
    let connector = tower::service_fn(move |uri: Uri| {
        let tls = tls.clone();
        let host = host.clone();
        async move {
            let port = uri.port_u16().unwrap_or(15012);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
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
            reason: error_chain(&e),
        })
}

/// The error and its sources, joined: tonic's transport errors hide the cause otherwise.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
