//! The proxy's admin endpoint as the CLI uses it (plain HTTP on 127.0.0.1:15000, reached
//! directly or through a port-forward): `GET /identity` and `GET /handshakes?limit=N`.
//!
//! Owns: the paths, their status codes, and what to tell the user when the proxy is not there.
//! HTTP is [`crate::http1`]; the JSON types are [`crate::admin_api`].

use bytes::Bytes;
use http::StatusCode;

use crate::admin_api::{FailedHandshakes, Handshake, HandshakesPage, Identity};
use crate::dial::Target;
use crate::http1::{Http1Client, HttpError};

/// The proxy admin's port (docs/design.md, "Ports and names").
pub const ADMIN_PORT: u16 = 15000;
/// Where a local proxy's admin endpoint listens by default.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:15000";

/// Why the admin endpoint gave no usable answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// Nothing answered, or the exchange failed.
    #[error("cannot read the proxy's admin endpoint: {error}; {hint}")]
    Unreachable {
        /// What failed (shown in the message, not as a source: it would be printed twice).
        error: HttpError,
        /// What to check.
        hint: String,
    },
    /// An answer other than 200.
    #[error(
        "the proxy's admin endpoint at {target} answered {path} with {status}: {body}; is {target} a Trellis proxy's admin address (trellis-proxy run --admin-listen, 127.0.0.1:15000 by default)?"
    )]
    Status {
        /// Where.
        target: String,
        /// The path asked for.
        path: String,
        /// The status.
        status: StatusCode,
        /// The start of the body.
        body: String,
    },
    /// A 200 whose body is not the JSON expected (is it a Trellis proxy?).
    #[error(
        "the proxy's admin endpoint at {target} answered {path} with unexpected JSON: {reason}"
    )]
    Json {
        /// Where.
        target: String,
        /// The path asked for.
        path: String,
        /// What serde said.
        reason: String,
    },
}

/// A client of one proxy's admin endpoint.
#[derive(Debug)]
pub struct AdminClient {
    /// The HTTP connection to it.
    http: Http1Client,
}

impl AdminClient {
    /// A client for the admin endpoint at `target`; nothing is opened yet.
    pub fn new(target: Target) -> Self {
        Self {
            http: Http1Client::new(target),
        }
    }

    /// `GET /identity`; `None` while the proxy has no certificate yet (it answers 503).
    pub async fn identity(&mut self) -> Result<Option<Identity>, AdminError> {
        let path = "/identity";
        let (status, body) = self.get(path).await?;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            return Ok(None);
        }
        self.parse(path, status, &body).map(Some)
    }

    /// `GET /handshakes?limit=N`: the newest `limit` connections, oldest first.
    pub async fn handshakes(&mut self, limit: u64) -> Result<Vec<Handshake>, AdminError> {
        Ok(self.handshakes_page(limit).await?.0)
    }

    /// `GET /handshakes?limit=N`: the newest `limit` connections, oldest first, and the
    /// summary of failed handshakes from outside (`None` from a proxy that has none).
    pub async fn handshakes_page(
        &mut self,
        limit: u64,
    ) -> Result<(Vec<Handshake>, Option<FailedHandshakes>), AdminError> {
        let path = format!("/handshakes?limit={limit}");
        let (status, body) = self.get(&path).await?;
        let page: HandshakesPage = self.parse(&path, status, &body)?;
        Ok(page.into_parts())
    }

    /// `GET path` answered with JSON (e.g. `/policy?from=...&port=P`).
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &mut self,
        path: &str,
    ) -> Result<T, AdminError> {
        let (status, body) = self.get(path).await?;
        self.parse(path, status, &body)
    }

    async fn get(&mut self, path: &str) -> Result<(StatusCode, Bytes), AdminError> {
        self.http
            .get(path)
            .await
            .map_err(|error| AdminError::Unreachable {
                error,
                hint: hint(self.http.target()),
            })
    }

    fn parse<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        status: StatusCode,
        body: &Bytes,
    ) -> Result<T, AdminError> {
        let target = self.http.target().to_string();
        if status != StatusCode::OK {
            let text = String::from_utf8_lossy(body);
            return Err(AdminError::Status {
                target,
                path: path.to_owned(),
                status,
                body: text.trim().chars().take(200).collect(),
            });
        }
        serde_json::from_slice(body).map_err(|e| AdminError::Json {
            target,
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }
}

/// What the user should check when the admin endpoint does not answer.
fn hint(target: &Target) -> String {
    match target {
        Target::Tcp { addr } => format!(
            "is trellis-proxy running here with its admin endpoint on {addr} (trellis-proxy run --admin-listen)? For a pod in a cluster, use `trellis inspect -n NAMESPACE POD`"
        ),
        Target::PodPort {
            namespace, name, ..
        } => format!(
            "is the proxy of {namespace}/{name} running? kubectl -n {namespace} logs {name} -c trellis-proxy"
        ),
    }
}
