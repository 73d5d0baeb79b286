//! A whole proxy on loopback (port 0 everywhere, 127.0.0.1 standing for the pod IP): kubelet's
//! rewritten probes on the health port reach the app; `POST /quitquitquit` on the admin port
//! drains the proxy and on no other port; `trellis-proxy wait` returns once the admin port's
//! `/ready` answers.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use trellis_proxy::wait::{WaitArgs, WaitError, wait};

/// One HTTP/1.1 request; the status and the body.
async fn call(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    let status = out.get(9..12).unwrap().parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A port that was free a moment ago (the "app" is not running yet).
async fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn probes(app_port: u16) -> String {
    format!(
        r#"--app-probes={{"/app-health/web/livez": {{"tcpSocket": {{"port": {app_port}}}}},
             "/app-health/web/readyz": {{"httpGet": {{"port": {app_port}, "path": "/"}}}}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_port_answers_the_apps_probes_with_the_apps_health() {
    let cp = ControlPlane::start(&[]).await;
    let app_port = free_port().await;
    let proxy = proxy(
        &cp,
        TOKENS[1].0,
        &[
            "--health-listen=127.0.0.1:0".into(),
            "--pod-ip=127.0.0.1".into(),
            probes(app_port),
        ],
    )
    .await;
    let health = proxy.addrs.health.unwrap();
    let admin = proxy.addrs.admin.unwrap();

    // App down: both probes fail with the reason.
    let (status, body) = call(health, "GET", "/app-health/web/livez").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(&format!("connect to 127.0.0.1:{app_port}")),
        "{body}"
    );
    assert_eq!(call(health, "GET", "/app-health/web/readyz").await.0, 503);

    // App up: they pass.
    let app = TcpListener::bind(("127.0.0.1", app_port)).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = app.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    assert_eq!(
        call(health, "GET", "/app-health/web/livez").await,
        (200, "ok: TCP connected\n".into())
    );
    assert_eq!(
        call(health, "GET", "/app-health/web/readyz").await,
        (200, "ok: HTTP 204\n".into())
    );

    // Unknown probes, other methods, and the admin port.
    assert_eq!(call(health, "GET", "/app-health/web/startupz").await.0, 404);
    assert_eq!(call(health, "GET", "/app-health/db/livez").await.0, 404);
    assert_eq!(call(health, "POST", "/app-health/web/livez").await.0, 405);
    assert_eq!(call(admin, "GET", "/app-health/web/livez").await.0, 404);
    // The proxy's own readiness is still there.
    assert_eq!(call(health, "GET", "/ready").await.0, 200);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_quitquitquit_on_the_admin_port_answers_then_drains_the_proxy() {
    let cp = ControlPlane::start(&[]).await;
    let proxy = proxy(&cp, TOKENS[1].0, &["--health-listen=127.0.0.1:0".into()]).await;
    let (admin, health) = (proxy.addrs.admin.unwrap(), proxy.addrs.health.unwrap());
    let stop = proxy.shutdown_token();

    // Not on the health port (reachable from outside the pod), not with GET.
    assert_eq!(call(health, "POST", "/quitquitquit").await.0, 405);
    assert_eq!(call(admin, "GET", "/quitquitquit").await.0, 405);
    assert!(!stop.is_cancelled());

    let (status, body) = call(admin, "POST", "/quitquitquit").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("draining"), "{body}");
    tokio::time::timeout(Duration::from_secs(5), stop.cancelled())
        .await
        .expect("the proxy starts draining after answering");
    proxy.shutdown().await;
    // Stopped accepting: the admin port is closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(admin).await.is_ok() {
        assert!(Instant::now() < deadline, "admin port still accepting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_returns_once_the_admin_port_says_ready_and_fails_naming_it_otherwise() {
    let cp = ControlPlane::start(&[]).await;
    let proxy = proxy(&cp, TOKENS[1].0, &[]).await;
    let admin = proxy.addrs.admin.unwrap();
    let args = WaitArgs {
        admin,
        timeout: Duration::from_secs(10),
    };
    tokio::task::spawn_blocking(move || wait(&args))
        .await
        .unwrap()
        .unwrap();
    proxy.shutdown().await;

    let closed: SocketAddr = format!("127.0.0.1:{}", free_port().await).parse().unwrap();
    let args = WaitArgs {
        admin: closed,
        timeout: Duration::from_millis(500),
    };
    let err = tokio::task::spawn_blocking(move || wait(&args))
        .await
        .unwrap()
        .unwrap_err();
    let WaitError::NotReady { admin, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(*admin, closed);
    assert!(
        err.to_string().contains(&format!("http://{closed}/ready")),
        "{err}"
    );
}
