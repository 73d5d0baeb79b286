//! Webhook latency as the API server sees it: the real injector over real HTTPS on 127.0.0.1,
//! AdmissionReviews from the recorded fixtures sent back to back on one keep-alive connection
//! (as the API server reuses its connections), and, separately, on a fresh TLS connection each.
//! Bounded in count and time. Prints p50/p90/p99/max; the target is p99 under 2 ms.
//!
//!   cargo bench -p trellis-injector --bench webhook_latency

#![allow(clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use support::{Pki, SERVER_NAME, Webhook, review_fixture};
use trellis_injector::InjectConfig;

const REQUESTS: usize = 3000;
const FRESH_CONNECTIONS: usize = 300;
const TIME_LIMIT: Duration = Duration::from_secs(60);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(i).copied().unwrap_or_default()
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<34} n={:<5} p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        samples.len(),
        ms(percentile(&samples, 0.50)),
        ms(percentile(&samples, 0.90)),
        ms(percentile(&samples, 0.99)),
        ms(samples.last().copied().unwrap_or_default()),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let root = Pki::new("mesh root");
    let config = InjectConfig::with_defaults(
        "ghcr.io/trellis-mesh/trellis-proxy:bench",
        root.ca_pem(),
        true,
    );
    let webhook = Webhook::start(config).await;
    let bodies: Vec<Bytes> = [
        "admissionreview-pod-create.json",
        "admissionreview-pod-create-from-deployment.json",
        "admissionreview-pod-create-dryrun.json",
    ]
    .iter()
    .map(|f| Bytes::from(serde_json::to_vec(&review_fixture(f)).unwrap()))
    .collect();

    let request = |body: Bytes| {
        Request::builder()
            .method(Method::POST)
            .uri("/inject?timeout=10s")
            .header("host", SERVER_NAME)
            .header("content-type", "application/json")
            .body(Full::new(body))
            .unwrap()
    };

    // One keep-alive connection, like the API server's.
    let stream = webhook.connect().await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let started = Instant::now();
    let mut keepalive = Vec::with_capacity(REQUESTS);
    for i in 0..REQUESTS {
        if started.elapsed() > TIME_LIMIT {
            break;
        }
        let body = bodies[i % bodies.len()].clone();
        let t = Instant::now();
        sender.ready().await.unwrap();
        let response = sender.send_request(request(body)).await.unwrap();
        assert!(response.status().is_success());
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        keepalive.push(t.elapsed());
        assert!(
            bytes.windows(7).any(|w| w == b"\"patch\""),
            "review was not patched"
        );
    }
    // Warm-up excluded: the first 100.
    report(
        "keep-alive connection (warm)",
        keepalive.split_off(100.min(keepalive.len())),
    );

    let started = Instant::now();
    let mut fresh = Vec::with_capacity(FRESH_CONNECTIONS);
    for i in 0..FRESH_CONNECTIONS {
        if started.elapsed() > TIME_LIMIT {
            break;
        }
        let t = Instant::now();
        let (status, _) = webhook
            .request(Method::POST, "/inject", bodies[i % bodies.len()].to_vec())
            .await;
        assert!(status.is_success());
        fresh.push(t.elapsed());
    }
    report("fresh TLS connection per review", fresh);
    webhook.shutdown().await;
}
