//! The webhook's HTTP surface over real HTTPS: malformed reviews are refused with 400 and a
//! Kubernetes `Status` that says what is wrong (and the server keeps serving), limits hold,
//! routes answer, shutdown drains.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a panic is the failure report"
)]

mod support;

use http::{Method, StatusCode};
use serde_json::{Value, json};
use support::{FIXTURES, Pki, Webhook, review_fixture};
use trellis_injector::{InjectConfig, server::Limits};

fn config() -> InjectConfig {
    InjectConfig::with_defaults("trellis-proxy:test", Pki::new("root").ca_pem(), true)
}

async fn refused(webhook: &Webhook, body: Vec<u8>) -> String {
    let (status, body) = webhook.request(Method::POST, "/inject", body).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let status: Value = serde_json::from_slice(&body).expect("a Status body");
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["apiVersion"], "v1");
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["code"], 400);
    assert_eq!(status["reason"], "BadRequest");
    status["message"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn malformed_reviews_are_refused_with_400_and_a_clear_message() {
    let webhook = Webhook::start(config()).await;
    let good = review_fixture(FIXTURES[0]);

    let message = refused(&webhook, b"this is not json".to_vec()).await;
    assert!(message.contains("not JSON"), "{message}");

    let mut wrong_kind = good.clone();
    wrong_kind["kind"] = json!("ConversionReview");
    let message = refused(&webhook, serde_json::to_vec(&wrong_kind).unwrap()).await;
    assert!(
        message.contains("expected kind \"AdmissionReview\""),
        "{message}"
    );
    assert!(message.contains("ConversionReview"), "{message}");

    let mut old_version = good.clone();
    old_version["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let message = refused(&webhook, serde_json::to_vec(&old_version).unwrap()).await;
    assert!(message.contains("admission.k8s.io/v1beta1"), "{message}");

    let mut no_request = good.clone();
    no_request.as_object_mut().unwrap().remove("request");
    let message = refused(&webhook, serde_json::to_vec(&no_request).unwrap()).await;
    assert!(message.contains("no \"request\""), "{message}");

    let mut no_object = good.clone();
    no_object["request"]["object"] = Value::Null;
    let message = refused(&webhook, serde_json::to_vec(&no_object).unwrap()).await;
    assert!(message.contains("no \"object\""), "{message}");

    let mut bad_pod = good.clone();
    bad_pod["request"]["object"]["spec"]["containers"] = json!("not a list");
    let message = refused(&webhook, serde_json::to_vec(&bad_pod).unwrap()).await;
    assert!(message.contains("not a valid v1 Pod"), "{message}");
    assert!(
        message.contains("04c71672-5fa4-4cd2-aa95-7c6b72bd85f9"),
        "names the request: {message}"
    );

    let mut bad_request = good.clone();
    bad_request["request"]["uid"] = json!(42);
    let message = refused(&webhook, serde_json::to_vec(&bad_request).unwrap()).await;
    assert!(message.contains("\"request\" is malformed"), "{message}");

    // Nothing above hurt the server.
    let response = webhook.review("/inject", &good).await;
    assert!(response.get("patch").is_some());
    webhook.shutdown().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_with_413() {
    let limits = Limits {
        max_body_bytes: 1024,
        ..Limits::default()
    };
    let webhook = Webhook::start_with(config(), limits).await;
    let (status, body) = webhook
        .request(Method::POST, "/inject", vec![b' '; 4096])
        .await;
    assert_eq!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(String::from_utf8_lossy(&body).contains("larger than 1024 bytes"));
}

#[tokio::test]
async fn health_config_and_unknown_routes_answer() {
    let webhook = Webhook::start(config()).await;
    let (status, body) = webhook.request(Method::GET, "/healthz", Vec::new()).await;
    assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"ok\n"[..]));

    let (status, body) = webhook
        .request(Method::GET, "/config_dump", Vec::new())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["test"],
        true
    );

    let (status, _) = webhook.request(Method::GET, "/inject", Vec::new()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    let (status, body) = webhook
        .request(Method::POST, "/mutate", b"{}".to_vec())
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&body).contains("/inject"));
}

#[tokio::test]
async fn the_api_servers_timeout_query_is_ignored() {
    let webhook = Webhook::start(config()).await;
    let review = review_fixture(FIXTURES[1]);
    let response = webhook.review("/inject?timeout=10s", &review).await;
    assert!(response.get("patch").is_some());
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_stops_accepting() {
    let webhook = Webhook::start(config()).await;
    let addr = webhook.addr;
    // An idle kept-alive connection must not hold shutdown up.
    let _idle = webhook.connect().await;
    tokio::time::timeout(std::time::Duration::from_secs(5), webhook.shutdown())
        .await
        .expect("shutdown does not wait for idle connections");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}
