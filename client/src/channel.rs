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

/// The error and its sources, joined: tonic's transport errors hide the cause otherwise. A
/// source that only repeats the text before it is left out, and a certificate refused by our
/// verifier is told by its own message ("server presented X but Y was expected"), not by
/// rustls' debug form of it.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = describe(e);
        if !parts.last().is_some_and(|last| last.ends_with(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// One error's text; a rustls certificate error carrying one of ours is shown by ours.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    use tokio_rustls::rustls::{CertificateError, Error as TlsError};
    let tls = e.downcast_ref::<TlsError>().or_else(|| {
        e.downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<TlsError>())
    });
    match tls {
        Some(TlsError::InvalidCertificate(CertificateError::Other(other))) => {
            format!("invalid peer certificate: {}", other.0)
        }
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio_rustls::rustls::{CertificateError, Error as TlsError, OtherError};
    use trellis_ca::SpiffeId;
    use trellis_ca::tls::UnexpectedIdentity;

    use super::error_chain;

    /// An error with a message and an optional source, as transport layers nest them.
    #[derive(Debug)]
    struct Layer(&'static str, Option<std::io::Error>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_ref().map(|e| e as _)
        }
    }

    #[test]
    fn a_control_plane_with_the_wrong_identity_is_named_plainly() {
        let refused = TlsError::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
            UnexpectedIdentity {
                expected: SpiffeId::parse("spiffe://td/ns/trellis-system/sa/cp").unwrap(),
                got: SpiffeId::parse("spiffe://td/ns/mesh-system/sa/cp").unwrap(),
            },
        ))));
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, refused);
        let text = error_chain(&Layer("transport error", Some(io)));
        assert_eq!(
            text,
            "transport error: invalid peer certificate: server presented spiffe://td/ns/mesh-system/sa/cp but spiffe://td/ns/trellis-system/sa/cp was expected"
        );
    }

    #[test]
    fn other_errors_keep_their_text_and_repeats_are_dropped() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        assert_eq!(
            error_chain(&Layer("connection refused", Some(io))),
            "connection refused"
        );
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        assert_eq!(
            error_chain(&Layer("client error (Connect)", Some(io))),
            "client error (Connect): connection refused"
        );
    }
}
