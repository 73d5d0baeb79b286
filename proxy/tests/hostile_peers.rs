//! The tunnel port (15008) against hostile peers (issue 15, items 4 and 6): a host flooding it
//! with idle connections and stalled handshakes, an authenticated peer whose every stream is
//! refused, a port scan, a flood of failed handshakes. Loopback only; every loop is bounded.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use trellis_proxy::records::Direction;

/// Connections the flooding host keeps open.
const FLOOD: usize = 200;
/// Streams (or connections) the good peer opens during the flood.
const GOOD_PEER_CONNECTIONS: usize = 6;

fn connect_to(authority: &str) -> Request<()> {
    Request::builder()
        .method(Method::CONNECT)
        .uri(authority)
        .body(())
        .unwrap()
}

/// Opens a CONNECT stream and returns its status.
async fn status_of(send: &SendRequest<Bytes>, authority: &str) -> StatusCode {
    within(WAIT, "a CONNECT answer", async {
        let mut ready = send.clone().ready().await.unwrap();
        let (response, _stream) = ready.send_request(connect_to(authority), false).unwrap();
        response.await.unwrap().status()
    })
    .await
}

/// Keeps `FLOOD` connections from 127.0.0.2 open to `target`: every other one idle, the
/// others stalled halfway through a TLS ClientHello. Reconnects (after a pause, as a real
/// flooding host would) whenever the proxy closes one.
fn flood(target: SocketAddr, stop: &CancellationToken) {
    // A TLS record header announcing a 512-byte handshake message, then only its first bytes.
    const PARTIAL_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03];
    for i in 0..FLOOD {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let socket = TcpSocket::new_v4().unwrap();
                socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
                if let Ok(mut tcp) = socket.connect(target).await {
                    if i % 2 == 1 {
                        let _ = tcp.write_all(PARTIAL_HELLO).await;
                    }
                    let mut buf = [0u8; 256];
                    tokio::select! {
                        _ = tcp.read(&mut buf) => {}
                        () = stop.cancelled() => return,
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    () = stop.cancelled() => return,
                }
            }
        });
    }
}

/// `trellis_proxy_refusals_total{direction="inbound",reason=...}` of a proxy.
fn refusals(proxy: &trellis_proxy::run::Running, reason: &str) -> u64 {
    let needle =
        format!("trellis_proxy_refusals_total{{direction=\"inbound\",reason=\"{reason}\"}} ");
    proxy
        .ctx
        .metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_and_stalled_handshakes_does_not_keep_a_good_peer_from_its_streams()
 {
    let cp = ControlPlane::start(&[]).await;
    let app = echo_app().await;
    // A total small enough that the flood alone would fill it without the per-source caps.
    let backend = proxy(
        &cp,
        TOKENS[1].0,
        &[
            "--tunnel-max-handshakes=64".into(),
            "--tunnel-max-handshakes-per-source=16".into(),
            "--tunnel-handshake-timeout=2s".into(),
        ],
    )
    .await;
    let tunnel = backend.addrs.tunnel.unwrap();
    let tls = client_tls(&cp, TOKENS[0].0).await;
    let stop = CancellationToken::new();
    let _stop_on_drop = stop.clone().drop_guard();
    flood(tunnel, &stop);
    assert!(
        eventually(WAIT, || {
            refusals(&backend, "handshakes_per_source") + refusals(&backend, "handshakes_total") > 0
        })
        .await,
        "the flood never reached a cap"
    );

    // The good peer (127.0.0.1) keeps getting new connections and streams through the flood.
    for _ in 0..GOOD_PEER_CONNECTIONS {
        let (send, _driver) = tunnel_connection(tunnel, tls.clone()).await;
        assert_eq!(status_of(&send, &app.to_string()).await, StatusCode::OK);
    }
    let summary = backend.ctx.failures.summary();
    assert!(
        summary
            .top
            .iter()
            .any(|s| s.source.to_string() == "127.0.0.2" && s.reason == "handshakes_per_source"),
        "{summary:#?}"
    );
    stop.cancel();
    backend.shutdown().await;
}

#[tokio::test]
async fn a_peer_whose_every_stream_is_refused_has_its_connection_closed() {
    let cp = ControlPlane::start(&[]).await;
    let app = echo_app().await;
    let backend = proxy(&cp, TOKENS[1].0, &["--tunnel-max-refused-streams=5".into()]).await;
    let tunnel = backend.addrs.tunnel.unwrap();
    let tls = client_tls(&cp, TOKENS[0].0).await;
    let (send, driver) = tunnel_connection(tunnel, tls).await;
    // Four refused, then an admitted one: the count starts again.
    for _ in 0..4 {
        assert_eq!(
            status_of(&send, "198.18.0.99:80").await,
            StatusCode::FORBIDDEN
        );
    }
    assert_eq!(status_of(&send, &app.to_string()).await, StatusCode::OK);
    for _ in 0..4 {
        assert_eq!(
            status_of(&send, "198.18.0.99:80").await,
            StatusCode::FORBIDDEN
        );
    }
    assert!(
        !driver.is_finished(),
        "four refusals in a row are not enough"
    );
    assert_eq!(refusals(&backend, "refused_streams"), 0);
    // The fifth in a row closes the connection (its answer may or may not get out first).
    let fifth = within(WAIT, "the fifth CONNECT", async {
        let mut ready = send.clone().ready().await.unwrap();
        let (response, _stream) = ready
            .send_request(connect_to("198.18.0.99:80"), false)
            .unwrap();
        response.await.map(|r| r.status())
    })
    .await;
    assert!(
        matches!(fifth, Ok(StatusCode::FORBIDDEN) | Err(_)),
        "{fifth:?}"
    );
    let _ = within(WAIT, "the proxy to close the connection", driver).await;
    assert_eq!(refusals(&backend, "refused_streams"), 1);
    backend.shutdown().await;
}

fn mesh_file(path: &Path, app: SocketAddr) {
    let text = format!(
        "workloads:\n  - {{namespace: shop, serviceAccount: backend, ip: 127.0.0.1, port: {port}, labels: {{app: backend}}}}\n\
         policies:\n  - apiVersion: trellis.dev/v1alpha1\n    kind: AuthorizationPolicy\n    metadata: {{name: backend-allow, namespace: shop}}\n    spec: {{selector: {{matchLabels: {{app: backend}}}}, ports: [{port}], allow: [\"ns/shop/sa/frontend\"]}}\n",
        port = app.port()
    );
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_of_five_thousand_ports_keeps_metrics_small() {
    let app = echo_app().await;
    let dir = tempfile::tempdir().unwrap();
    let mesh = dir.path().join("mesh.yaml");
    mesh_file(&mesh, app);
    let cp = ControlPlane::start(&[&format!("--mesh-file={}", mesh.display())]).await;
    let backend = proxy(
        &cp,
        TOKENS[1].0,
        &["--tunnel-max-refused-streams=100000".into()],
    )
    .await;
    assert!(
        eventually(WAIT, || !backend.ctx.state.borrow().policy.rules.is_empty()).await,
        "backend never received its policy"
    );
    let tunnel = backend.addrs.tunnel.unwrap();
    // One allowed and one denied connection, so every series the scan could touch exists.
    let (good, _g) = tunnel_connection(tunnel, client_tls(&cp, TOKENS[0].0).await).await;
    assert_eq!(status_of(&good, &app.to_string()).await, StatusCode::OK);
    let (scanner, _s) = tunnel_connection(tunnel, client_tls(&cp, TOKENS[2].0).await).await;
    assert_eq!(
        status_of(&scanner, "127.0.0.1:1").await,
        StatusCode::FORBIDDEN
    );
    let before = backend.ctx.metrics.render().len();

    let ports: Vec<u16> = (2..=5001).filter(|p| *p != app.port()).collect();
    for chunk in ports.chunks(100) {
        let statuses = join_all(chunk.iter().map(|p| {
            let scanner = &scanner;
            async move { status_of(scanner, &format!("127.0.0.1:{p}")).await }
        }))
        .await;
        assert!(
            statuses.iter().all(|s| *s == StatusCode::FORBIDDEN),
            "{statuses:?}"
        );
    }
    let metrics = backend.ctx.metrics.render();
    assert!(
        metrics.len() <= before + 1024,
        "/metrics grew from {before} to {} bytes over a 5,000-port scan",
        metrics.len()
    );
    assert!(
        metrics.contains(&format!("port=\"{}\"", app.port())),
        "{metrics}"
    );
    assert!(metrics.contains("port=\"other\""), "{metrics}");
    backend.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_failed_handshakes_leave_the_connection_log_alone_and_show_as_a_summary() {
    let cp = ControlPlane::start(&[]).await;
    let app = echo_app().await;
    let backend = proxy(&cp, TOKENS[1].0, &["--handshake-log=100".into()]).await;
    let tunnel = backend.addrs.tunnel.unwrap();
    let (send, _driver) = tunnel_connection(tunnel, client_tls(&cp, TOKENS[0].0).await).await;
    assert_eq!(status_of(&send, &app.to_string()).await, StatusCode::OK);

    // 1,000 connections that are not TLS, 10 at a time (under the per-source handshake cap).
    for _ in 0..100 {
        join_all((0..10).map(|_| async {
            let mut tcp = TcpStream::connect(tunnel).await.unwrap();
            let _ = tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
            let mut sink = Vec::new();
            let _ = within(WAIT, "the proxy to close", tcp.read_to_end(&mut sink)).await;
        }))
        .await;
    }

    let log = backend.ctx.log.recent(100);
    assert!(
        log.iter().any(|r| r.direction == Direction::Inbound
            && r.decision == "allow"
            && r.peer_id.as_deref() == Some("spiffe://cluster.local/ns/shop/sa/frontend")),
        "the real connection was evicted: {log:#?}"
    );
    // The admin page shows both.
    let admin = backend.addrs.admin.unwrap();
    let mut tcp = TcpStream::connect(admin).await.unwrap();
    tcp.write_all(b"GET /handshakes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    within(WAIT, "/handshakes", tcp.read_to_string(&mut raw))
        .await
        .unwrap();
    let body: serde_json::Value =
        serde_json::from_str(raw.split_once("\r\n\r\n").unwrap().1).unwrap();
    let failed = &body["failed_handshakes"];
    assert_eq!(failed["total"], 1000, "{failed:#}");
    assert_eq!(failed["top"][0]["source"], "127.0.0.1");
    assert_eq!(failed["top"][0]["reason"], "tls_handshake");
    assert_eq!(failed["top"][0]["count"], 1000);
    let connections = body["connections"].as_array().unwrap();
    assert!(
        connections.iter().any(|c| c["decision"] == "allow"),
        "{connections:#?}"
    );
    backend.shutdown().await;
}
