//! A small HTTP/1.1 client for plain-HTTP endpoints of Trellis (the proxy's admin port, the
//! control plane's `/ready`): `GET` within a timeout over one kept-alive connection to a
//! [`Target`], re-opened once if the server closed it in between.
//!
//! Owns: the connection and the exchange. What the paths mean, and what to tell the user when
//! they fail, is left to the callers ([`crate::admin_client`], [`crate::check`]).

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;

use crate::dial::{DialError, Target};

/// How long one request (connect included) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest response read (the proxy's handshake log at its largest is far smaller).
const MAX_BODY: usize = 16 * 1024 * 1024;

/// Why a `GET` got no response.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// No connection could be opened.
    #[error(transparent)]
    Dial(#[from] DialError),
    /// The connection broke, or the other end does not speak HTTP/1.1.
    #[error("GET {path} from {target} failed: {reason}")]
    Exchange {
        /// Where.
        target: String,
        /// The path asked for.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// No response within [`REQUEST_TIMEOUT`].
    #[error("GET {path} from {target}: no response within {REQUEST_TIMEOUT:?}")]
    Timeout {
        /// Where.
        target: String,
        /// The path asked for.
        path: String,
    },
}

/// A client of one HTTP/1.1 server.
#[derive(Debug)]
pub struct Http1Client {
    /// Where the server is.
    target: Target,
    /// The kept-alive connection, if one is open.
    conn: Option<Connection>,
}

/// One HTTP/1.1 connection: the request side and the task driving it.
#[derive(Debug)]
struct Connection {
    /// Sends requests.
    sender: SendRequest<Empty<Bytes>>,
    /// Drives the connection; aborted when the connection is dropped.
    task: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Http1Client {
    /// A client for `target`; nothing is opened yet.
    pub fn new(target: Target) -> Self {
        Self { target, conn: None }
    }

    /// Where it points.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// `GET path`: the status and the whole body.
    pub async fn get(&mut self, path: &str) -> Result<(StatusCode, Bytes), HttpError> {
        let reused = self.conn.is_some();
        match self.get_once(path).await {
            // A kept-alive connection the server closed meanwhile: one more try on a new one.
            Err(HttpError::Exchange { .. }) if reused => self.get_once(path).await,
            other => other,
        }
    }

    async fn get_once(&mut self, path: &str) -> Result<(StatusCode, Bytes), HttpError> {
        let target = self.target.to_string();
        let failed = |reason: String| HttpError::Exchange {
            target: target.clone(),
            path: path.to_owned(),
            reason,
        };
        // Taken out for the exchange and put back only if it went well: a failed or timed-out
        // connection is dropped, which stops its task.
        let open = self.conn.take().filter(|c| !c.sender.is_closed());
        let host = host_header(&self.target);
        let exchange = async {
            let mut conn = match open {
                Some(conn) => conn,
                None => connect(&self.target).await?,
            };
            conn.sender
                .ready()
                .await
                .map_err(|e| failed(e.to_string()))?;
            let request = Request::get(path)
                .header(header::HOST, host)
                .body(Empty::new())
                .map_err(|e| failed(e.to_string()))?;
            let response = conn
                .sender
                .send_request(request)
                .await
                .map_err(|e| failed(e.to_string()))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| failed(e.to_string()))?
                .to_bytes();
            Ok((conn, status, body))
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(Ok((conn, status, body))) => {
                self.conn = Some(conn);
                Ok((status, body))
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(HttpError::Timeout {
                target,
                path: path.to_owned(),
            }),
        }
    }
}

/// Opens a connection to `target` and starts driving it.
async fn connect(target: &Target) -> Result<Connection, HttpError> {
    let io = target.dial().await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| HttpError::Exchange {
            target: target.to_string(),
            path: "/".into(),
            reason: e.to_string(),
        })?;
    let task = tokio::spawn(async move {
        // Errors surface on the request side; nothing to add here.
        let _ = conn.await;
    });
    Ok(Connection { sender, task })
}

/// The `Host` header: the address for TCP targets; a pod's port is reached on its loopback.
fn host_header(target: &Target) -> String {
    match target {
        Target::Tcp { addr } => addr.clone(),
        Target::PodPort { port, .. } => format!("127.0.0.1:{port}"),
    }
}
