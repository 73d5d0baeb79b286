//! Services end to end on loopback: a control plane whose mesh file declares a Service in front
//! of three backends (each with its own sidecar), and a frontend sidecar whose application
//! connects to the Service's ClusterIP. The frontend's proxy picks the endpoint itself and
//! tunnels to that backend's sidecar; kube-proxy is never involved (the ClusterIP exists
//! nowhere: it only works if the proxy resolves it).

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use trellis_proxy::records::Direction;

/// The Service's ClusterIP:port (nothing listens there).
const VIP: &str = "198.19.0.10:80";

/// An app that answers `<name>:` followed by what it read; stops when the handle is aborted.
async fn named_app(name: &'static str) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut input = Vec::new();
                let _ = s.read_to_end(&mut input).await;
                let _ = s.write_all(format!("{name}:").as_bytes()).await;
                let _ = s.write_all(&input).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, task)
}

struct Backend {
    name: &'static str,
    app: SocketAddr,
    app_task: JoinHandle<()>,
    proxy: trellis_proxy::run::Running,
    ready: bool,
}

fn write_mesh(path: &Path, backends: &[Backend]) {
    let mut text = String::from("workloads:\n");
    for b in backends {
        text.push_str(&format!(
            "  - {{namespace: shop, serviceAccount: backend, ip: 127.0.0.1, port: {port}, tunnel: \"{tunnel}\", labels: {{app: backend}}, ports: {{http: {port}}}, ready: {ready}}}\n",
            port = b.app.port(),
            tunnel = b.proxy.addrs.tunnel.unwrap(),
            ready = b.ready,
        ));
    }
    text.push_str(
        "services:\n  - {namespace: shop, name: backend, clusterIPs: [198.19.0.10], selector: {app: backend}, ports: [{name: http, port: 80, targetPort: http}]}\n",
    );
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

struct Mesh {
    _cp: ControlPlane,
    mesh: PathBuf,
    backends: Vec<Backend>,
    frontend: trellis_proxy::run::Running,
    /// Where the frontend's app connects for the Service.
    listen: SocketAddr,
}

impl Mesh {
    async fn start(ready: [bool; 3]) -> Mesh {
        let dir = tempfile::tempdir().unwrap().keep();
        let mesh = dir.join("mesh.yaml");
        std::fs::write(&mesh, "workloads: []\n").unwrap();
        let cp = ControlPlane::start(&[&format!("--mesh-file={}", mesh.display())]).await;
        let mut backends = Vec::new();
        for (name, ready) in ["b1", "b2", "b3"].into_iter().zip(ready) {
            let (app, app_task) = named_app(name).await;
            let proxy = proxy(&cp, TOKENS[1].0, &[]).await;
            backends.push(Backend {
                name,
                app,
                app_task,
                proxy,
                ready,
            });
        }
        write_mesh(&mesh, &backends);
        let frontend = proxy(&cp, TOKENS[0].0, &[format!("--outbound=127.0.0.1:0={VIP}")]).await;
        let listen = frontend.addrs.explicit_outbound[0];
        let m = Mesh {
            _cp: cp,
            mesh,
            backends,
            frontend,
            listen,
        };
        m.wait_for_endpoints(ready.iter().filter(|r| **r).count())
            .await;
        m
    }

    /// Waits until the frontend holds the Service with `ready` ready endpoints.
    async fn wait_for_endpoints(&self, ready: usize) {
        let vip: SocketAddr = VIP.parse().unwrap();
        let state = self.frontend.ctx.state.clone();
        assert!(
            eventually(Duration::from_secs(10), || {
                state
                    .borrow()
                    .service_at(vip)
                    .is_some_and(|s| s.port().ready.len() == ready)
            })
            .await,
            "the frontend never held the Service with {ready} ready endpoints"
        );
    }

    /// Makes `n` connections through the Service; counts answers per backend name, and
    /// failures under "failed".
    async fn spread(&self, n: usize) -> BTreeMap<String, usize> {
        let mut seen = BTreeMap::new();
        for i in 0..n {
            let answer = match roundtrip(self.listen, format!("hello {i}").as_bytes()).await {
                Ok(a) => String::from_utf8_lossy(&a).into_owned(),
                Err(_) => String::new(),
            };
            let who = match answer.split_once(':') {
                Some((name, rest)) if rest == format!("hello {i}") => name.to_owned(),
                _ => "failed".to_owned(),
            };
            *seen.entry(who).or_insert(0) += 1;
        }
        seen
    }
}

#[tokio::test]
async fn connections_to_a_cluster_ip_are_spread_over_the_ready_endpoints_through_the_tunnel() {
    let m = Mesh::start([true, true, true]).await;
    let seen = m.spread(60).await;
    assert_eq!(seen.get("failed"), None, "{seen:?}");
    // Every ready endpoint takes some. (Not an even share: on a busy machine one slow tunnel
    // open makes an endpoint lose ties for about a second — `services::faded_us`.)
    for b in &m.backends {
        assert!(
            seen.get(b.name).copied().unwrap_or(0) >= 1,
            "{} got none of 60 connections: {seen:?}",
            b.name
        );
    }
    // Each went through the tunnel to the chosen backend, verified as the backend identity.
    let records = m.frontend.ctx.log.recent(100);
    let via: Vec<_> = records
        .iter()
        .filter(|r| r.direction == Direction::Outbound)
        .collect();
    assert!(via.iter().all(|r| r.decision == "allow"
        && r.tls.is_some()
        && r.peer_id.as_deref() == Some("spiffe://cluster.local/ns/shop/sa/backend")
        && r.reason == "via Service shop/backend:80"));
    for b in &m.backends {
        let inbound = b.proxy.ctx.log.recent(100);
        assert!(
            inbound.iter().any(|r| r.direction == Direction::Inbound
                && r.dst == Some(b.app)
                && r.peer_id.as_deref() == Some("spiffe://cluster.local/ns/shop/sa/frontend")),
            "{}'s sidecar saw no CONNECT to its app",
            b.name
        );
    }
}

#[tokio::test]
async fn a_not_ready_endpoint_gets_no_connection() {
    let m = Mesh::start([true, false, true]).await;
    let seen = m.spread(30).await;
    assert_eq!(seen.get("b2"), None, "{seen:?}");
    assert_eq!(seen.get("failed"), None, "{seen:?}");
    assert_eq!(seen.values().sum::<usize>(), 30);
}

#[tokio::test]
async fn an_endpoint_whose_app_is_gone_is_retried_on_another_with_no_failed_connection() {
    let m = Mesh::start([true, true, true]).await;
    // b3's app stops; discovery still lists it (as right after a pod dies).
    m.backends[2].app_task.abort();
    let seen = m.spread(40).await;
    assert_eq!(seen.get("failed"), None, "{seen:?}");
    assert_eq!(seen.get("b3"), None, "{seen:?}");
    let records = m.frontend.ctx.log.recent(200);
    assert!(
        records.iter().all(|r| r.decision == "allow"),
        "no connection was refused"
    );
}

#[tokio::test]
async fn endpoints_removed_from_the_service_get_no_new_connection() {
    let mut m = Mesh::start([true, true, true]).await;
    m.backends[0].ready = false;
    m.backends[1].ready = false;
    write_mesh(&m.mesh, &m.backends);
    m.wait_for_endpoints(1).await;
    let seen = m.spread(20).await;
    assert_eq!(seen.get("b3"), Some(&20), "{seen:?}");
}

#[tokio::test]
async fn with_no_ready_endpoint_the_connection_is_refused_and_the_record_names_the_service() {
    let m = Mesh::start([false, false, false]).await;
    let answer = roundtrip(m.listen, b"hello").await.unwrap_or_default();
    assert!(answer.is_empty(), "{answer:?}");
    let state = m.frontend.ctx.clone();
    assert!(
        eventually(Duration::from_secs(5), || state.log.recent(10).iter().any(
            |r| { r.decision == "deny" && r.reason == "no ready endpoint for shop/backend:80" }
        ))
        .await,
        "{:?}",
        m.frontend.ctx.log.recent(10)
    );
}
