//! Two proxies in explicit mode on loopback, a real control plane, real mTLS tunnels.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::*;
use trellis_proxy::records::Direction;

const BACKEND: &str = "spiffe://cluster.local/ns/shop/sa/backend";
const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";

#[tokio::test]
async fn an_app_connection_crosses_both_sidecars_over_mutual_tls() {
    let cp = ControlPlane::start(&[]).await;
    let (frontend, backend, listen) = pair(&cp, echo_app().await, BACKEND).await;
    let reply = roundtrip(listen, b"hello through the mesh").await.unwrap();
    assert_eq!(reply, b"hello through the mesh");

    let out = frontend.ctx.log.recent(10);
    let rec = out
        .iter()
        .find(|r| r.direction == Direction::Outbound)
        .expect("outbound record");
    assert_eq!(rec.peer_id.as_deref(), Some(BACKEND));
    assert_eq!(rec.decision, "allow");
    let tls = rec.tls.as_ref().expect("outbound went over TLS");
    assert_eq!(tls.version, "TLSv1_3");
    assert_eq!(tls.alpn.as_deref(), Some("h2"));

    assert!(
        eventually(Duration::from_secs(5), || backend
            .ctx
            .log
            .recent(10)
            .iter()
            .any(|r| r.direction == Direction::Inbound
                && r.peer_id.as_deref() == Some(FRONTEND)
                && r.decision == "allow"))
        .await,
        "backend recorded the frontend's identity"
    );
    frontend.shutdown().await;
    backend.shutdown().await;
}

#[tokio::test]
async fn many_app_connections_to_one_peer_share_one_tunnel() {
    let cp = ControlPlane::start(&[]).await;
    let (frontend, backend, listen) = pair(&cp, echo_app().await, BACKEND).await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            tokio::spawn(async move { roundtrip(listen, format!("msg {i}").as_bytes()).await })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap().unwrap(), format!("msg {i}").into_bytes());
    }
    assert_eq!(
        frontend.ctx.metrics.tunnel_connections_opened.get(),
        1,
        "one TLS handshake for 20 connections"
    );
    let reused = frontend
        .ctx
        .log
        .recent(100)
        .iter()
        .filter(|r| r.tls.as_ref().is_some_and(|t| t.reused))
        .count();
    assert_eq!(reused, 19);
    assert_eq!(frontend.ctx.metrics.tunnel_connections.get(), 1, "dialed");
    assert_eq!(backend.ctx.metrics.tunnel_connections.get(), 1, "accepted");
    frontend.shutdown().await;
    assert!(
        eventually(Duration::from_secs(5), || backend
            .ctx
            .metrics
            .tunnel_connections
            .get()
            == 0)
        .await,
        "the accepted tunnel connection is counted until it closes"
    );
    backend.shutdown().await;
}

#[tokio::test]
async fn the_client_refuses_a_server_that_presents_the_wrong_identity() {
    let cp = ControlPlane::start(&[]).await;
    // Discovery claims the backend is "payments"; the backend's certificate says "backend".
    let (frontend, backend, listen) = pair(
        &cp,
        echo_app().await,
        "spiffe://cluster.local/ns/shop/sa/payments",
    )
    .await;
    let reply = roundtrip(listen, b"secret").await.unwrap_or_default();
    assert!(reply.is_empty(), "no byte may reach an impostor");
    let out = frontend.ctx.log.recent(10);
    let rec = out
        .iter()
        .find(|r| r.direction == Direction::Outbound)
        .expect("outbound record");
    assert_eq!(rec.decision, "deny");
    assert!(
        rec.reason.contains("ns/shop/sa/backend") && rec.reason.contains("ns/shop/sa/payments"),
        "{}",
        rec.reason
    );
    frontend.shutdown().await;
    backend.shutdown().await;
}

#[tokio::test]
async fn strict_refuses_plaintext_and_permissive_passes_it_and_records_it() {
    let cp = ControlPlane::start(&[]).await;
    let app = echo_app().await;
    let strict = proxy(
        &cp,
        TOKENS[1].0,
        &[
            "--inbound-listen=127.0.0.1:0".into(),
            format!("--inbound-target={app}"),
        ],
    )
    .await;
    let reply = roundtrip(strict.addrs.inbound.unwrap(), b"plain")
        .await
        .unwrap_or_default();
    assert!(reply.is_empty());
    let rec = strict.ctx.log.recent(1);
    assert_eq!(rec[0].direction, Direction::InboundPlain);
    assert_eq!(rec[0].decision, "deny");
    assert!(rec[0].reason.contains("STRICT"));

    let permissive = proxy(
        &cp,
        TOKENS[1].0,
        &[
            "--mtls-mode=permissive".into(),
            "--inbound-listen=127.0.0.1:0".into(),
            format!("--inbound-target={app}"),
        ],
    )
    .await;
    let reply = roundtrip(permissive.addrs.inbound.unwrap(), b"plain")
        .await
        .unwrap();
    assert_eq!(reply, b"plain");
    let rec = permissive.ctx.log.recent(1);
    assert_eq!(rec[0].decision, "allow");
    assert!(rec[0].tls.is_none(), "recorded as plaintext");
    strict.shutdown().await;
    permissive.shutdown().await;
}
