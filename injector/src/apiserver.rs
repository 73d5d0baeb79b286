//! Asks the Kubernetes API server for its version (`GET /version`), once at start, to choose
//! the proxy's layout when `--native-sidecars=auto`. The only call the injector makes to the
//! API server; a small HTTPS client (rustls, *ring*) rather than a full Kubernetes client.
//!
//! In a pod the address comes from `KUBERNETES_SERVICE_HOST`/`_PORT`, the CA and the token
//! from the ServiceAccount mount. `/version` is readable by every authenticated user (and
//! anonymous ones on most clusters); the token is sent when present. Parsing the document is
//! [`crate::version`]'s job.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::{Instrument, debug, debug_span};

use crate::{
    tls,
    version::{self, KubeVersion, VersionError},
};

/// The ServiceAccount mount of every pod.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Largest `/version` body read.
const MAX_BODY: usize = 64 * 1024;

/// Why the API server's version could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiServerError {
    /// Not running in a pod: the service environment variable is missing.
    #[error("{0} is not set; not running in a Kubernetes pod (use --native-sidecars=on or off)")]
    NotInCluster(&'static str),
    /// A ServiceAccount file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The CA file holds no usable certificate.
    #[error("API server CA: {0}")]
    Ca(String),
    /// The host is neither an IP address nor a DNS name.
    #[error("API server host {0:?} is not a valid server name")]
    Host(String),
    /// TCP connection or TLS handshake failed.
    #[error("cannot connect to the API server at {address}: {source}")]
    Connect {
        /// `host:port`.
        address: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("GET /version from the API server failed: {0}")]
    Http(String),
    /// The API server answered, but not 200.
    #[error("GET /version from the API server answered {0}")]
    Status(StatusCode),
    /// No answer in time.
    #[error("the API server did not answer GET /version within {0:?}")]
    Timeout(Duration),
    /// The answer is not a version document.
    #[error(transparent)]
    Version(#[from] VersionError),
}

/// How to reach the API server.
#[derive(Debug, Clone)]
pub struct ApiServer {
    host: String,
    port: u16,
    tls: Arc<ClientConfig>,
    token: Option<String>,
}

impl ApiServer {
    /// The API server as seen from a pod: the service's environment and ServiceAccount files.
    pub fn in_cluster() -> Result<Self, ApiServerError> {
        let host = env("KUBERNETES_SERVICE_HOST")?;
        let port = env("KUBERNETES_SERVICE_PORT")?
            .parse()
            .map_err(|_| ApiServerError::NotInCluster("a numeric KUBERNETES_SERVICE_PORT"))?;
        let dir = Path::new(SERVICE_ACCOUNT_DIR);
        let ca = read(&dir.join("ca.crt"))?;
        let token = std::fs::read_to_string(dir.join("token"))
            .ok()
            .map(|t| t.trim().to_owned());
        Self::new(host, port, &ca, token)
    }

    /// The API server at `host:port`, whose certificate chains to `ca_pem`, called with the
    /// bearer `token` if any.
    pub fn new(
        host: String,
        port: u16,
        ca_pem: &[u8],
        token: Option<String>,
    ) -> Result<Self, ApiServerError> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| ApiServerError::Ca(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| ApiServerError::Ca(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(ApiServerError::Ca("no CERTIFICATE block found".to_owned()));
        }
        let tls = ClientConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ApiServerError::Ca(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            host,
            port,
            tls: Arc::new(tls),
            token,
        })
    }

    /// `GET /version`, parsed, within `limit` for the whole exchange.
    pub async fn version(&self, limit: Duration) -> Result<KubeVersion, ApiServerError> {
        let span = debug_span!("apiserver", host = %self.host, port = self.port);
        tokio::time::timeout(limit, self.fetch_version().instrument(span))
            .await
            .map_err(|_| ApiServerError::Timeout(limit))?
    }

    async fn fetch_version(&self) -> Result<KubeVersion, ApiServerError> {
        let address = format!("{}:{}", self.host, self.port);
        let connect_error = |source| ApiServerError::Connect {
            address: address.clone(),
            source,
        };
        let server_name = match self.host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(self.host.clone())
                .map_err(|_| ApiServerError::Host(self.host.clone()))?,
        };
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(connect_error)?;
        let stream = TlsConnector::from(Arc::clone(&self.tls))
            .connect(server_name, tcp)
            .await
            .map_err(connect_error)?;
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ApiServerError::Http(e.to_string()))?;
        // The connection task ends when `sender` is dropped at the end of this function, or
        // with the timeout around it.
        let driver = tokio::spawn(
            async move {
                if let Err(err) = conn.await {
                    debug!(%err, "API server connection ended with an error");
                }
            }
            .in_current_span(),
        );

        let mut request = Request::get("/version")
            .header(header::HOST, address.as_str())
            .header(header::ACCEPT, "application/json");
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| ApiServerError::Http(e.to_string()))?;
        let result = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| ApiServerError::Http(e.to_string()))?;
            if response.status() != StatusCode::OK {
                return Err(ApiServerError::Status(response.status()));
            }
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| ApiServerError::Http(e.to_string()))?
                .to_bytes();
            Ok(version::parse(&body)?)
        }
        .await;
        drop(sender);
        driver.abort();
        result
    }
}

fn env(name: &'static str) -> Result<String, ApiServerError> {
    std::env::var(name).map_err(|_| ApiServerError::NotInCluster(name))
}

fn read(path: &Path) -> Result<Vec<u8>, ApiServerError> {
    std::fs::read(path).map_err(|source| ApiServerError::Read {
        path: path.to_owned(),
        source,
    })
}
