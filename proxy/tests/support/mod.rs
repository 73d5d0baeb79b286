//! Shared pieces for in-process proxy tests: a local-mode control plane, echo apps, and proxies
//! in explicit mode on loopback (port 0 everywhere).
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use std::sync::Arc;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use bytes::Bytes;
use h2::client::SendRequest;
use rustls_pki_types::ServerName;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use trellis_ca::tls::ExpectedServer;
use trellis_ca::{SpiffeId, TrustBundle, TrustDomain, WorkloadKey};
use trellis_client::IdentityClient;
use trellis_proxy::config::RunArgs;

/// The identity [`client_tls`] expects of the tunnel's server.
const BACKEND_ID: &str = "spiffe://cluster.local/ns/shop/sa/backend";

/// A control plane in local mode with join tokens for the given identities.
pub struct ControlPlane {
    pub dir: TempDir,
    pub running: trellis_control_plane::server::Running,
    pub root_pem: String,
}

pub const TOKENS: &[(&str, &str)] = &[
    ("frontend-token-0123456789", "ns/shop/sa/frontend"),
    ("backend-token-01234567890", "ns/shop/sa/backend"),
    ("intruder-token-0123456789", "ns/evil/sa/intruder"),
];

impl ControlPlane {
    pub async fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tokens: String = TOKENS.iter().map(|(t, id)| format!("{t} {id}\n")).collect();
        std::fs::write(dir.path().join("tokens"), tokens).unwrap();
        // Join-token files must be private: the control plane refuses others' access.
        std::fs::set_permissions(
            dir.path().join("tokens"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        for (t, _) in TOKENS {
            std::fs::write(dir.path().join(t), t).unwrap();
        }
        let state = dir.path().join("state");
        let tokens = dir.path().join("tokens");
        let mut argv = vec![
            "trellis-control-plane".to_string(),
            "--mode=local".into(),
            format!("--state-dir={}", state.display()),
            format!("--join-tokens={}", tokens.display()),
            "--listen=127.0.0.1:0".into(),
            "--metrics-listen=127.0.0.1:0".into(),
        ];
        argv.extend(extra.iter().map(|s| s.to_string()));
        let config = trellis_control_plane::config::Args::try_parse_from(argv)
            .unwrap()
            .validate()
            .unwrap();
        let running = trellis_control_plane::server::start(&config, None)
            .await
            .unwrap();
        let root_pem = running.bundle.to_pem();
        Self {
            dir,
            running,
            root_pem,
        }
    }

    pub fn token_file(&self, token: &str) -> PathBuf {
        self.dir.path().join(token)
    }
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
}

/// Starts a proxy in explicit mode with `extra` flags.
pub async fn proxy(
    cp: &ControlPlane,
    token: &str,
    extra: &[String],
) -> trellis_proxy::run::Running {
    proxy_with_logs(cp, token, extra, None).await
}

/// [`proxy`], with the handle of the log filter its admin `/logging` page controls.
pub async fn proxy_with_logs(
    cp: &ControlPlane,
    token: &str,
    extra: &[String],
    log_control: Option<trellis_telemetry::LogHandle>,
) -> trellis_proxy::run::Running {
    let running = proxy_started(cp, token, extra, log_control).await;
    assert!(
        running.ready(Duration::from_secs(10)).await,
        "proxy got no certificate"
    );
    running
}

/// [`proxy_with_logs`] without waiting for its certificate.
pub async fn proxy_started(
    cp: &ControlPlane,
    token: &str,
    extra: &[String],
    log_control: Option<trellis_telemetry::LogHandle>,
) -> trellis_proxy::run::Running {
    let mut argv = vec![
        "trellis-proxy".to_string(),
        "--mode=explicit".into(),
        format!("--control-plane={}", cp.running.grpc_addr),
        format!("--token-file={}", cp.token_file(token).display()),
        format!("--trust-bundle={}", cp.root_pem),
        "--tunnel-listen=127.0.0.1:0".into(),
        "--admin-listen=127.0.0.1:0".into(),
        "--drain=1s".into(),
    ];
    argv.extend(extra.iter().cloned());
    let mut config = Cli::try_parse_from(argv).unwrap().run.validate().unwrap();
    config.log_control = log_control;
    trellis_proxy::run::start(config).await.unwrap()
}

/// A backend proxy (identity of `TOKENS[1]`) fronting `app`, and a frontend proxy (`TOKENS[0]`)
/// with one explicit outbound listener towards `app`, told the backend has identity
/// `backend_id`. Returns (frontend, backend, the listener's address).
pub async fn pair(
    cp: &ControlPlane,
    app: SocketAddr,
    backend_id: &str,
) -> (
    trellis_proxy::run::Running,
    trellis_proxy::run::Running,
    SocketAddr,
) {
    let backend = proxy(cp, TOKENS[1].0, &[]).await;
    let tunnel = backend.addrs.tunnel.unwrap();
    let frontend = proxy(
        cp,
        TOKENS[0].0,
        &[
            format!("--outbound=127.0.0.1:0={app}"),
            format!("--workload={app}={backend_id}@{tunnel}"),
        ],
    )
    .await;
    let listen = frontend.addrs.explicit_outbound[0];
    (frontend, backend, listen)
}

/// An echo server; returns its address.
pub async fn echo_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// Sends `msg`, half-closes, reads everything back.
pub async fn roundtrip(addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(msg).await?;
        s.shutdown().await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok(out)
    })
    .await
    .map_err(|_| std::io::Error::other("timed out"))?
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

/// Bounds every wait for the proxies.
pub const WAIT: Duration = Duration::from_secs(10);

pub async fn within<F: Future>(limit: Duration, what: &str, f: F) -> F::Output {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A TLS client configuration with a fresh SVID for `token`'s identity, straight from the
/// control plane (as a proxy gets its own), expecting the backend's identity on the server.
pub async fn client_tls(cp: &ControlPlane, token: &str) -> Arc<rustls::ClientConfig> {
    let td = TrustDomain::new("cluster.local").unwrap();
    let bundle = TrustBundle::from_pem(td, cp.root_pem.as_bytes()).unwrap();
    let channel = trellis_client::connect(&cp.running.grpc_addr.to_string(), bundle, None, None)
        .await
        .unwrap();
    let key = WorkloadKey::generate().unwrap();
    let svid = within(
        WAIT,
        "a certificate",
        IdentityClient::new(channel).certify(&key, None, token, None),
    )
    .await
    .unwrap();
    let expected = ExpectedServer::Exact(SpiffeId::parse(BACKEND_ID).unwrap());
    Arc::new(svid.client_config(expected, &[b"h2"]).unwrap())
}

/// One mutual-TLS HTTP/2 connection to a tunnel listener; the task drives the connection.
pub async fn tunnel_connection(
    tunnel: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> (SendRequest<Bytes>, JoinHandle<Result<(), h2::Error>>) {
    let tcp = TcpStream::connect(tunnel).await.unwrap();
    let name = ServerName::IpAddress(tunnel.ip().into());
    let tls = within(
        WAIT,
        "the TLS handshake",
        TlsConnector::from(tls).connect(name, tcp),
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = within(WAIT, "the HTTP/2 handshake", h2::client::handshake(tls))
        .await
        .unwrap();
    (send, tokio::spawn(conn))
}
