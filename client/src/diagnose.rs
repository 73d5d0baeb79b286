//! Why a connection to the control plane failed, in words an operator can act on.
//!
//! Owns: [`ConnectFailure`] and [`classify`], which looks through an error and its sources
//! (tonic → hyper → I/O → rustls → our SPIFFE verifier) for the cause that matters, and
//! [`error_chain`], the fallback that joins the rest without repeating itself. Never shows a
//! Rust debug structure such as `Other(OtherError(UnknownIssuer { .. }))`.

use std::error::Error;
use std::fmt;
use std::io;

use tokio_rustls::rustls::{self, CertificateError, InvalidMessage};
use trellis_ca::VerifyError;
use trellis_ca::tls::UnexpectedIdentity;

/// What went wrong while connecting, sorted by what the operator can do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectFailure {
    /// The host name does not resolve.
    Unresolvable(String),
    /// Nothing listens at the address.
    Refused,
    /// The server answered, but not with TLS.
    NotTls,
    /// The server's certificate does not verify against the trust bundle (the reason).
    Untrusted(String),
    /// The server proved another identity than the one required.
    WrongIdentity(String),
    /// The server refused our TLS handshake (its alert).
    HandshakeRefused(String),
    /// Anything else: the error chain, without repetitions.
    Other(String),
}

impl fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unresolvable(host) => write!(f, "the host name {host:?} does not resolve"),
            Self::Refused => f.write_str(
                "connection refused: nothing listens there (is the control plane running, and is this its gRPC port, 15012 by default?)",
            ),
            Self::NotTls => f.write_str(
                "the server there does not speak TLS (is this the control plane's gRPC port, 15012 by default, rather than its metrics port?)",
            ),
            Self::Untrusted(reason) => write!(
                f,
                "the server's certificate is not trusted: {reason} (is the trust bundle the mesh's root-cert.pem?)"
            ),
            Self::WrongIdentity(reason) => write!(f, "{reason}"),
            Self::HandshakeRefused(alert) => {
                write!(f, "the server refused the TLS handshake ({alert})")
            }
            Self::Other(chain) => f.write_str(chain),
        }
    }
}

/// The host name that failed to resolve, carried through the connector's I/O error so that
/// [`classify`] can name it.
#[derive(Debug, thiserror::Error)]
#[error("the host name {host:?} does not resolve: {source}")]
pub struct Unresolvable {
    /// The name.
    pub host: String,
    /// The resolver's error.
    pub source: io::Error,
}

/// Finds the cause of a failed connection in `err` and its sources.
pub fn classify(err: &(dyn Error + 'static)) -> ConnectFailure {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(found) = classify_one(e) {
            return found;
        }
        next = e.source();
    }
    ConnectFailure::Other(error_chain(err))
}

fn classify_one(e: &(dyn Error + 'static)) -> Option<ConnectFailure> {
    if let Some(u) = e.downcast_ref::<Unresolvable>() {
        return Some(ConnectFailure::Unresolvable(u.host.clone()));
    }
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(from_rustls(tls));
    }
    let io = e.downcast_ref::<io::Error>()?;
    if let Some(inner) = io.get_ref() {
        // `io::Error::source` skips the wrapped error itself: look at it here.
        if let Some(found) = classify_one(inner) {
            return Some(found);
        }
    }
    (io.kind() == io::ErrorKind::ConnectionRefused).then_some(ConnectFailure::Refused)
}

fn from_rustls(err: &rustls::Error) -> ConnectFailure {
    match err {
        rustls::Error::InvalidMessage(InvalidMessage::InvalidContentType)
        | rustls::Error::InvalidMessage(InvalidMessage::UnknownProtocolVersion) => {
            ConnectFailure::NotTls
        }
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            let inner: &(dyn Error + 'static) = &*other.0;
            if let Some(wrong) = inner.downcast_ref::<UnexpectedIdentity>() {
                ConnectFailure::WrongIdentity(wrong.to_string())
            } else if let Some(verify) = inner.downcast_ref::<VerifyError>() {
                ConnectFailure::Untrusted(verify.to_string())
            } else {
                ConnectFailure::Untrusted(inner.to_string())
            }
        }
        rustls::Error::InvalidCertificate(cert) => ConnectFailure::Untrusted(match cert {
            CertificateError::Expired => "it has expired".into(),
            CertificateError::NotValidYet => "it is not valid yet (check the clocks)".into(),
            CertificateError::BadSignature => "a signature in its chain is invalid".into(),
            other => format!("{other:?}"),
        }),
        rustls::Error::AlertReceived(alert) => {
            ConnectFailure::HandshakeRefused(format!("alert {alert:?}"))
        }
        other => ConnectFailure::Other(format!("TLS: {other}")),
    }
}

/// The error and its sources joined by `: `, leaving out tonic's bare "transport error" and
/// any text the previous part already ends with (wrappers often repeat their cause).
pub fn error_chain(err: &dyn Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        let repeated = parts.iter().any(|p| p.contains(&text));
        if text != "transport error" && !text.is_empty() && !repeated {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::OtherError;
    use trellis_ca::{SpiffeId, TrustDomain};

    use super::*;

    /// An error wrapping `source`, the way tonic and hyper wrap their causes.
    #[derive(Debug)]
    struct Wrapper(&'static str, Box<dyn Error + Send + Sync>);

    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.1)
        }
    }

    fn wrapped(inner: impl Error + Send + Sync + 'static) -> Wrapper {
        Wrapper(
            "transport error",
            Box::new(Wrapper("connect failed", Box::new(inner))),
        )
    }

    fn tls_io(err: rustls::Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, err)
    }

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn each_cause_is_found_under_the_wrappers_and_said_in_words() {
        let unknown_issuer = VerifyError::UnknownIssuer {
            trust_domain: TrustDomain::default(),
        };
        let wrong = UnexpectedIdentity {
            expected: id("spiffe://cluster.local/ns/trellis-system/sa/trellis-control-plane"),
            got: id("spiffe://cluster.local/ns/shop/sa/frontend"),
        };
        let cases: Vec<(Wrapper, ConnectFailure, &str)> = vec![
            (
                wrapped(io::Error::from(io::ErrorKind::ConnectionRefused)),
                ConnectFailure::Refused,
                "nothing listens there",
            ),
            (
                wrapped(io::Error::other(Unresolvable {
                    host: "cp.invalid".into(),
                    source: io::Error::other("failed to lookup address information"),
                })),
                ConnectFailure::Unresolvable("cp.invalid".into()),
                "\"cp.invalid\" does not resolve",
            ),
            (
                wrapped(tls_io(rustls::Error::InvalidMessage(
                    InvalidMessage::InvalidContentType,
                ))),
                ConnectFailure::NotTls,
                "does not speak TLS",
            ),
            (
                wrapped(tls_io(rustls::Error::InvalidCertificate(
                    CertificateError::Other(OtherError(Arc::new(unknown_issuer))),
                ))),
                ConnectFailure::Untrusted(
                    "peer certificate is not issued by any root of the trust bundle for cluster.local"
                        .into(),
                ),
                "is the trust bundle the mesh's root-cert.pem?",
            ),
            (
                wrapped(tls_io(rustls::Error::InvalidCertificate(
                    CertificateError::Other(OtherError(Arc::new(wrong))),
                ))),
                ConnectFailure::WrongIdentity(
                    "server presented spiffe://cluster.local/ns/shop/sa/frontend but spiffe://cluster.local/ns/trellis-system/sa/trellis-control-plane was expected".into(),
                ),
                "server presented",
            ),
            (
                wrapped(tls_io(rustls::Error::InvalidCertificate(
                    CertificateError::Expired,
                ))),
                ConnectFailure::Untrusted("it has expired".into()),
                "not trusted: it has expired",
            ),
            (
                wrapped(io::Error::other("something odd")),
                ConnectFailure::Other("connect failed: something odd".into()),
                "connect failed: something odd",
            ),
        ];
        for (err, want, text) in cases {
            let got = classify(&err);
            assert_eq!(got, want);
            let shown = got.to_string();
            assert!(shown.contains(text), "{shown:?} lacks {text:?}");
            assert!(
                !shown.contains("OtherError") && !shown.contains(" { "),
                "{shown}"
            );
        }
    }

    #[test]
    fn a_chain_that_repeats_its_cause_is_shown_once() {
        let inner = io::Error::other("Connection refused (os error 111)");
        let err = Wrapper(
            "transport error",
            Box::new(Wrapper(
                "Connection refused (os error 111)",
                Box::new(inner),
            )),
        );
        assert_eq!(error_chain(&err), "Connection refused (os error 111)");
    }
}
