//! A small mesh on loopback for the CLI's tests, in this process: a control plane in local
//! mode with a mesh file (the backend allows only the frontend), a backend proxy in front of an
//! echo app, and two client proxies in explicit mode, the frontend and an intruder.
//! Port 0 everywhere; no root needed.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use trellis_proxy::config::RunArgs;

pub const BACKEND: &str = "spiffe://cluster.local/ns/shop/sa/backend";
pub const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
pub const INTRUDER: &str = "spiffe://cluster.local/ns/evil/sa/intruder";
pub const CONTROL_PLANE: &str = "spiffe://cluster.local/ns/trellis-system/sa/trellis-control-plane";

pub const TOKENS: &[(&str, &str)] = &[
    ("frontend-token-0123456789", "ns/shop/sa/frontend"),
    ("backend-token-01234567890", "ns/shop/sa/backend"),
    ("intruder-token-0123456789", "ns/evil/sa/intruder"),
];

/// A control plane in local mode, two clients (frontend allowed, intruder refused by policy)
/// and a backend proxy in front of an echo app; all stopped on drop of the runtime.
pub struct Mesh {
    pub dir: TempDir,
    pub cp: trellis_control_plane::server::Running,
    pub backend: trellis_proxy::run::Running,
    pub frontend: trellis_proxy::run::Running,
    pub intruder: trellis_proxy::run::Running,
}

impl Mesh {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let app = echo_app().await;
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
        let mesh_file = dir.path().join("mesh.yaml");
        std::fs::write(
            &mesh_file,
            format!(
                "workloads:\n  - {{namespace: shop, serviceAccount: backend, ip: 127.0.0.1, port: {port}, labels: {{app: backend}}}}\n\
                 policies:\n  - apiVersion: trellis.dev/v1alpha1\n    kind: AuthorizationPolicy\n    metadata: {{name: backend-allow, namespace: shop}}\n    spec: {{selector: {{matchLabels: {{app: backend}}}}, ports: [{port}], allow: [\"ns/shop/sa/frontend\"], mode: enforce}}\n",
                port = app.port()
            ),
        )
        .unwrap();
        let argv = [
            "trellis-control-plane".to_owned(),
            "--mode=local".into(),
            format!("--state-dir={}", dir.path().join("state").display()),
            format!("--join-tokens={}", dir.path().join("tokens").display()),
            format!("--mesh-file={}", mesh_file.display()),
            "--listen=127.0.0.1:0".into(),
            "--metrics-listen=127.0.0.1:0".into(),
            "--status-listen=127.0.0.1:0".into(),
        ];
        let config = trellis_control_plane::config::Args::try_parse_from(argv)
            .unwrap()
            .validate()
            .unwrap();
        let cp = trellis_control_plane::server::start(&config, None)
            .await
            .unwrap();
        std::fs::write(dir.path().join("root-cert.pem"), cp.bundle.to_pem()).unwrap();

        let backend = proxy(&cp, dir.path(), TOKENS[1].0, &["--pod-name=backend".into()]).await;
        let tunnel = backend.addrs.tunnel.unwrap();
        let client_flags = |pod: &str| {
            [
                format!("--outbound=127.0.0.1:0={app}"),
                format!("--workload={app}={BACKEND}@{tunnel}"),
                format!("--pod-name={pod}"),
            ]
        };
        let frontend = proxy(&cp, dir.path(), TOKENS[0].0, &client_flags("frontend")).await;
        let intruder = proxy(&cp, dir.path(), TOKENS[2].0, &client_flags("intruder")).await;
        // The backend enforces its policy once discovery delivered it.
        assert!(
            eventually(|| !backend.ctx.state.borrow().policy.rules.is_empty()).await,
            "the backend never received its policy"
        );
        Self {
            dir,
            cp,
            backend,
            frontend,
            intruder,
        }
    }

    pub fn root_pem(&self) -> PathBuf {
        self.dir.path().join("root-cert.pem")
    }
}

#[derive(Parser)]
struct ProxyCli {
    #[command(flatten)]
    run: RunArgs,
}

async fn proxy(
    cp: &trellis_control_plane::server::Running,
    dir: &Path,
    token: &str,
    extra: &[String],
) -> trellis_proxy::run::Running {
    let mut argv = vec![
        "trellis-proxy".to_owned(),
        "--mode=explicit".into(),
        format!("--control-plane={}", cp.grpc_addr),
        format!("--token-file={}", dir.join(token).display()),
        format!("--trust-bundle={}", cp.bundle.to_pem()),
        "--tunnel-listen=127.0.0.1:0".into(),
        "--admin-listen=127.0.0.1:0".into(),
        "--drain=1s".into(),
    ];
    argv.extend(extra.iter().cloned());
    let config = ProxyCli::try_parse_from(argv)
        .unwrap()
        .run
        .validate()
        .unwrap();
    let running = trellis_proxy::run::start(config).await.unwrap();
    assert!(
        running.ready(Duration::from_secs(10)).await,
        "proxy got no certificate"
    );
    running
}

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

/// Sends `msg`, half-closes, reads what comes back (nothing when refused).
pub async fn roundtrip(addr: SocketAddr, msg: &[u8]) -> Vec<u8> {
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(msg).await.ok()?;
        s.shutdown().await.ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        Some(out)
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_default()
}

pub async fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

/// A loopback port nothing listens on.
pub async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

impl Mesh {
    /// Sends one message through the frontend (allowed) and one through the intruder
    /// (refused), and waits until the backend recorded both.
    pub async fn one_allowed_one_refused(&self) {
        let via = |p: &trellis_proxy::run::Running| p.addrs.explicit_outbound[0];
        assert_eq!(roundtrip(via(&self.frontend), b"hello").await, b"hello");
        assert!(roundtrip(via(&self.intruder), b"hello").await.is_empty());
        assert!(
            eventually(|| {
                let log = self.backend.ctx.log.recent(100);
                let inbound_from = |id: &str| {
                    log.iter().any(|r| {
                        r.direction == trellis_proxy::records::Direction::Inbound
                            && r.peer_id.as_deref() == Some(id)
                    })
                };
                inbound_from(FRONTEND) && inbound_from(INTRUDER)
            })
            .await,
            "the backend recorded both connections"
        );
    }

    /// Stops everything.
    pub async fn stop(self) {
        self.frontend.shutdown().await;
        self.intruder.shutdown().await;
        self.backend.shutdown().await;
        self.cp.shutdown(Duration::from_secs(1)).await;
    }
}
