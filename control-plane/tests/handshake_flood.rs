//! A host that opens many TCP connections to the gRPC port and never starts a TLS handshake
//! (issue 15, item 3): it may hold only its own share of the pending-handshake slots, so valid
//! callers from another address keep getting certificates while the flood lasts.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpSocket;
use tokio_util::sync::CancellationToken;
use trellis_ca::WorkloadKey;
use trellis_client::IdentityClient;

/// Idle connections the flooding host keeps open.
const FLOOD: usize = 200;
/// Certificates the valid caller fetches during the flood.
const FETCHES: usize = 8;
/// How long one fetch (TLS handshake + Certify) may take: generous for debug builds on a busy
/// machine, and shorter than what a caller would wait behind stalled handshakes.
const FETCH_DEADLINE: Duration = Duration::from_secs(5);

/// Keeps `FLOOD` idle connections from 127.0.0.2 open to `target`, reconnecting (after a
/// short pause, as a real flooding host would) whenever the server closes one.
fn flood(target: SocketAddr, stop: CancellationToken) {
    for _ in 0..FLOOD {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let socket = TcpSocket::new_v4().expect("a socket");
                socket
                    .bind("127.0.0.2:0".parse().expect("an address"))
                    .expect("bind 127.0.0.2");
                if let Ok(mut tcp) = socket.connect(target).await {
                    let mut buf = [0u8; 64];
                    tokio::select! {
                        // Closed by the server: at once (over the cap) or at the handshake timeout.
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

fn refused_count(metrics: &str, reason: &str) -> u64 {
    let prefix = format!("trellis_control_plane_connections_refused_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_callers_get_certificates_while_one_host_floods_the_port_with_idle_connections() {
    // A total small enough that the flood alone would fill it without the per-source cap.
    let plane = LocalPlane::start(&[
        "--max-pending-handshakes=64",
        "--max-pending-handshakes-per-source=16",
    ])
    .await;
    let stop = CancellationToken::new();
    let _stop_on_drop = stop.clone().drop_guard();
    flood(plane.running.grpc_addr, stop.clone());

    // The flood is on once the server has closed some of its connections for a cap.
    let metrics_addr = plane.running.metrics_addr;
    eventually("the flood to hit a cap", || async move {
        let body = http_get(metrics_addr, "/metrics").await.body;
        match refused_count(&body, "handshakes_per_source")
            + refused_count(&body, "handshakes_total")
        {
            0 => Err("no connection refused yet".to_owned()),
            _ => Ok(()),
        }
    })
    .await;

    for fetch in 0..FETCHES {
        let outcome = tokio::time::timeout(FETCH_DEADLINE, async {
            let channel = trellis_client::connect(
                &plane.running.grpc_addr.to_string(),
                plane.running.bundle.clone(),
                Some(plane.config.own_id.clone()),
                None,
            )
            .await
            .map_err(|e| format!("connect: {e}"))?;
            let key = WorkloadKey::generate().map_err(|e| e.to_string())?;
            IdentityClient::new(channel)
                .certify(&key, None, FRONTEND_TOKEN, None)
                .await
                .map_err(|e| format!("certify: {e}"))
        })
        .await;
        match outcome {
            Ok(Ok(svid)) => assert_eq!(svid.id().to_string(), FRONTEND),
            Ok(Err(e)) => panic!("fetch {fetch} of {FETCHES} failed during the flood: {e}"),
            Err(_) => panic!("fetch {fetch} of {FETCHES} took longer than {FETCH_DEADLINE:?}"),
        }
    }
    let body = http_get(metrics_addr, "/metrics").await.body;
    assert!(refused_count(&body, "handshakes_per_source") > 0, "{body}");
    stop.cancel();
    plane.stop().await;
}
