//! What the proxy logs and how an operator changes it: a refused connection explained at
//! `info`, and the log filter read and replaced on the admin port's `/logging`.
//!
//! Each test installs its own subscriber for its thread (`#[tokio::test]` runs every task on
//! that thread), writing JSON lines into a buffer it reads back.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trellis_telemetry::{LogBuffer, LogFormat, LogHandle, LogSettings};

const BACKEND: &str = "spiffe://cluster.local/ns/shop/sa/backend";
const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";

fn json_logs(filter: &str) -> (tracing::Dispatch, LogHandle, LogBuffer) {
    let buffer = LogBuffer::default();
    let settings = LogSettings {
        filter: filter.to_owned(),
        format: LogFormat::Json,
        ansi: false,
    };
    let (dispatch, handle) = trellis_telemetry::subscriber(&settings, buffer.clone()).unwrap();
    (dispatch, handle, buffer)
}

fn parsed(buffer: &LogBuffer) -> Vec<Value> {
    buffer
        .lines()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A loopback port nothing listens on.
fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// One HTTP/1.1 request; returns (status, body).
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let status = out.get(9..12).unwrap_or("0").parse().unwrap_or(0);
        let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
        (status, body)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_refused_connection_is_logged_at_info_with_peer_destination_and_reason() {
    let (dispatch, _, buffer) = json_logs("info");
    let _logs = trellis_telemetry::thread_default(&dispatch);
    let cp = ControlPlane::start(&[]).await;
    let nobody = closed_port();
    let backend = proxy(&cp, TOKENS[1].0, &[]).await;
    let tunnel = backend.addrs.tunnel.unwrap();
    let frontend = proxy(
        &cp,
        TOKENS[0].0,
        &[
            format!("--outbound=127.0.0.1:0={nobody}"),
            format!("--workload={nobody}={BACKEND}@{tunnel}"),
        ],
    )
    .await;
    let reply = roundtrip(frontend.addrs.explicit_outbound[0], b"hi").await;
    assert!(reply.unwrap_or_default().is_empty(), "no app, no bytes");

    let refusal = |v: &Value| v["target"] == "trellis_proxy::refusals" && v["peer.id"] == FRONTEND;
    assert!(
        eventually(Duration::from_secs(5), || parsed(&buffer)
            .iter()
            .any(refusal))
        .await,
        "no refusal line: {:#?}",
        buffer.lines()
    );
    let lines = parsed(&buffer);
    let line = lines.iter().find(|v| refusal(v)).unwrap();
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["message"], "connection refused");
    assert_eq!(line["direction"], "inbound");
    assert_eq!(line["reason"], "app_unreachable");
    assert_eq!(line["dst"], nobody.to_string());
    assert!(
        line["detail"]
            .as_str()
            .unwrap()
            .contains("application not reachable"),
        "{line}"
    );
    assert!(
        line["peer.addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    frontend.shutdown().await;
    backend.shutdown().await;
}

#[tokio::test]
async fn the_admin_port_shows_and_changes_the_log_filter() {
    let (dispatch, handle, buffer) = json_logs("info");
    let _logs = trellis_telemetry::thread_default(&dispatch);
    let cp = ControlPlane::start(&[]).await;
    let p = proxy_with_logs(
        &cp,
        TOKENS[1].0,
        &["--health-listen=127.0.0.1:0".to_owned()],
        Some(handle.clone()),
    )
    .await;
    let admin = p.addrs.admin.unwrap();

    assert_eq!(
        http(admin, "GET", "/logging", "").await,
        (200, "info\n".into())
    );
    let (status, body) = http(admin, "PUT", "/logging", "info, trellis_proxy=debug").await;
    assert_eq!((status, body.as_str()), (200, "trellis_proxy=debug,info\n"));
    assert_eq!(handle.filter().unwrap(), "trellis_proxy=debug,info");
    tracing::debug!(target: "trellis_proxy::probe", "debug is on");
    assert!(
        parsed(&buffer)
            .iter()
            .any(|v| v["message"] == "debug is on" && v["level"] == "DEBUG")
    );

    let (status, body) = http(admin, "PUT", "/logging", "loud").await;
    assert_eq!(status, 400);
    assert!(body.contains("names no level"), "{body}");
    assert_eq!(
        handle.filter().unwrap(),
        "trellis_proxy=debug,info",
        "a refused filter changes nothing"
    );

    assert_eq!(http(admin, "POST", "/logging?level=warn", "").await.0, 200);
    assert_eq!(handle.filter().unwrap(), "warn");
    assert_eq!(http(admin, "DELETE", "/logging", "").await.0, 405);
    let oversized = "info,".repeat(300);
    assert_eq!(http(admin, "PUT", "/logging", &oversized).await.0, 400);

    let health = p.addrs.health.unwrap();
    assert_eq!(
        http(health, "PUT", "/logging", "trace").await.0,
        405,
        "the pod-IP port never changes the log filter"
    );
    assert_eq!(handle.filter().unwrap(), "warn");
    p.shutdown().await;
}

#[tokio::test]
async fn without_a_subscriber_the_logging_page_says_so() {
    let cp = ControlPlane::start(&[]).await;
    let p = proxy(&cp, TOKENS[1].0, &[]).await;
    let (status, body) = http(p.addrs.admin.unwrap(), "GET", "/logging", "").await;
    assert_eq!(status, 503);
    assert!(body.contains("no log subscriber"), "{body}");
    p.shutdown().await;
}
