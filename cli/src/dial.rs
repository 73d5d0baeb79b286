//! Where a command's bytes go: straight to a TCP address on this machine, or to a port of a pod
//! through the Kubernetes API server (port-forward, as `kubectl port-forward` does, which also
//! reaches ports bound to the pod's loopback such as the proxy admin's 15000).
//!
//! Owns: [`Target`] and opening one stream to it. What is spoken over the stream (HTTP/1.1 to
//! the proxy admin, TLS + gRPC to the control plane) is left to the callers.

use std::fmt;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// How long opening a stream may take (TCP connect, or the API server's upgrade).
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// A byte stream, whatever carries it.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A boxed [`Io`].
pub type BoxIo = Box<dyn Io>;

/// Something to open streams to.
#[derive(Clone)]
pub enum Target {
    /// A `host:port` reached directly.
    Tcp {
        /// `host:port`.
        addr: String,
    },
    /// A port of a pod, through the API server.
    PodPort {
        /// The pods of the pod's namespace (boxed: a client is large, a TCP address small).
        pods: Box<Api<Pod>>,
        /// The pod's namespace (for messages).
        namespace: String,
        /// The pod's name.
        name: String,
        /// The port inside the pod.
        port: u16,
    },
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string())
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp { addr } => f.write_str(addr),
            Target::PodPort {
                namespace,
                name,
                port,
                ..
            } => write!(f, "pod {namespace}/{name} port {port}"),
        }
    }
}

/// Why no stream could be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// TCP connect failed (refused, unreachable, bad address).
    #[error("cannot connect to {target}: {reason}")]
    Connect {
        /// Where to.
        target: String,
        /// The OS's or resolver's words.
        reason: String,
    },
    /// The API server refused or failed the port-forward.
    #[error("cannot port-forward to {target} through the API server: {reason}")]
    PortForward {
        /// Where to.
        target: String,
        /// The API server's words.
        reason: String,
    },
    /// Nothing answered within [`DIAL_TIMEOUT`].
    #[error("no answer from {target} within {DIAL_TIMEOUT:?}")]
    Timeout {
        /// Where to.
        target: String,
    },
}

impl Target {
    /// A direct TCP target.
    pub fn tcp(addr: impl Into<String>) -> Self {
        Target::Tcp { addr: addr.into() }
    }

    /// Opens one stream, within [`DIAL_TIMEOUT`].
    pub async fn dial(&self) -> Result<BoxIo, DialError> {
        let target = self.to_string();
        let opened = tokio::time::timeout(DIAL_TIMEOUT, async {
            match self {
                Target::Tcp { addr } => {
                    let tcp = TcpStream::connect(addr.as_str()).await.map_err(|e| {
                        DialError::Connect {
                            target: target.clone(),
                            reason: e.to_string(),
                        }
                    })?;
                    // Small request/response exchanges: do not wait for Nagle.
                    let _ = tcp.set_nodelay(true);
                    Ok(Box::new(tcp) as BoxIo)
                }
                Target::PodPort {
                    pods, name, port, ..
                } => {
                    let failed = |reason: String| DialError::PortForward {
                        target: target.clone(),
                        reason,
                    };
                    let mut forwarder = pods
                        .portforward(name, &[*port])
                        .await
                        .map_err(|e| failed(crate::kube_access::describe(&e)))?;
                    let stream = forwarder
                        .take_stream(*port)
                        .ok_or_else(|| failed("the API server opened no stream".into()))?;
                    // The forwarder's task keeps running for as long as the stream is used.
                    Ok(Box::new(stream) as BoxIo)
                }
            }
        })
        .await;
        opened.unwrap_or_else(|_| {
            Err(DialError::Timeout {
                target: target.clone(),
            })
        })
    }
}

/// A clap value parser for `host:port` flags: refuses a missing port before anything is
/// dialled, instead of failing later with "invalid socket address".
pub fn host_port(s: &str) -> Result<String, String> {
    match trellis_client::parse_address(s) {
        Ok(_) => Ok(s.to_owned()),
        Err(trellis_client::ChannelError::NoPort(_)) => Err(format!(
            "{s:?} has no port; give host:port, e.g. {s}:15012 for a control plane or {s}:15000 for a proxy's admin endpoint"
        )),
        Err(_) => Err(format!("{s:?} is not host:port")),
    }
}
