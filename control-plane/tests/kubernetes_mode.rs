//! The control plane in Kubernetes mode against a fake API server that replays TokenReview
//! exchanges recorded from a real one (`testdata/tokenreview`) and keeps the CA Secret:
//! every recorded verdict reaches the caller as the right gRPC status, positive reviews are
//! cached and negative ones are not, and the CA Secret is made once and then reused.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::apiserver::{FakeApiServer, exchange, exchanges};
use common::*;
use tonic::Code;
use trellis_ca::certs_from_pem;
use trellis_control_plane::ca_store::{Origin, StoreError};
use trellis_control_plane::config::Config;
use trellis_control_plane::server::{Running, StartError};

/// A control plane in Kubernetes mode talking to `api`.
struct KubePlane {
    running: Running,
    config: Config,
}

impl KubePlane {
    async fn start(api: &FakeApiServer, extra: &[&str]) -> Self {
        let config = kube_config(extra);
        let running = try_start(&config, Some(api.client()))
            .await
            .unwrap_or_else(|e| panic!("control plane does not start: {e}"));
        Self { running, config }
    }

    /// `Certify` with `token` and an anonymous CSR.
    async fn certify(&self, token: &str) -> Result<String, tonic::Status> {
        let channel = channel(&self.running, &self.config).await;
        let (_, csr) = key_and_csr(None);
        raw_certify(&channel, bearer(token).as_deref(), csr, 0)
            .await
            .map(|answer| answer.spiffe_id)
    }
}

fn kube_config(extra: &[&str]) -> Config {
    let mut flags = vec!["--mode", "kubernetes"];
    flags.extend_from_slice(extra);
    config(&flags)
}

fn token(case: &str) -> String {
    exchange(case).token().to_owned()
}

#[tokio::test]
async fn a_valid_service_account_token_gets_an_svid_for_its_service_account() {
    let api = FakeApiServer::start().await;
    let plane = KubePlane::start(&api, &[]).await;
    let channel = channel(&plane.running, &plane.config).await;
    let key = trellis_ca::WorkloadKey::generate().unwrap();
    let svid = within(
        "certify",
        trellis_client::IdentityClient::new(channel).certify(
            &key,
            Some(&id(FRONTEND)),
            &token("valid"),
            None,
        ),
    )
    .await
    .expect("a valid token is issued");
    assert_eq!(svid.id().to_string(), FRONTEND);
    assert_eq!(api.tokenreview_requests(), 1);
    stop(plane.running).await;
}

#[tokio::test]
async fn every_recorded_verdict_reaches_the_caller_as_the_right_status() {
    // Each case on its own API server and control plane, so no cache links two cases.
    let mut seen = Vec::new();
    for exchange in exchanges() {
        let api = FakeApiServer::start().await;
        let expected: Result<&str, Code> = match exchange.name.as_str() {
            "valid" | "pod-bound" => Ok(FRONTEND),
            "wrong-audience" | "tampered" | "garbage" => Err(Code::Unauthenticated),
            "pod-deleted" => {
                api.set_pod_deleted(true);
                Err(Code::Unauthenticated)
            }
            "forbidden" => {
                api.set_forbidden(true);
                Err(Code::Unavailable)
            }
            other => panic!("fixture {other} has no expectation here"),
        };
        let plane = KubePlane::start(&api, &[]).await;
        let result = plane.certify(exchange.token()).await;
        match expected {
            Ok(spiffe_id) => assert_eq!(
                result.as_deref().map_err(|s| s.message().to_owned()),
                Ok(spiffe_id),
                "{}",
                exchange.name
            ),
            Err(Code::Unavailable) => {
                assert_refused(
                    result,
                    Code::Unavailable,
                    &[
                        "may not create tokenreviews",
                        "grant it `create` on authentication.k8s.io/tokenreviews",
                        "HTTP 403",
                        exchange.error_text(),
                    ],
                );
            }
            Err(code) => {
                // The API server's own words reach the caller.
                assert_refused(result, code, &["token refused", exchange.error_text()]);
            }
        }
        assert_eq!(api.tokenreview_requests(), 1, "{}", exchange.name);
        seen.push(exchange.name.clone());
        stop(plane.running).await;
    }
    assert_eq!(
        seen,
        [
            "forbidden",
            "garbage",
            "pod-bound",
            "pod-deleted",
            "tampered",
            "valid",
            "wrong-audience"
        ]
    );
}

#[tokio::test]
async fn a_positive_review_is_cached_and_a_negative_one_is_not() {
    let api = FakeApiServer::start().await;
    let plane = KubePlane::start(&api, &[]).await;

    for _ in 0..2 {
        assert_eq!(plane.certify(&token("valid")).await.unwrap(), FRONTEND);
    }
    assert_eq!(
        api.tokenreview_requests(),
        1,
        "the second call within the cache TTL needs no review"
    );

    for _ in 0..2 {
        assert_refused(
            plane.certify(&token("tampered")).await,
            Code::Unauthenticated,
            &["invalid bearer token"],
        );
    }
    assert_eq!(
        api.tokenreview_requests(),
        3,
        "each refusal is a new review"
    );

    // An unavailable API server is not remembered either.
    api.set_forbidden(true);
    for _ in 0..2 {
        assert_refused(
            plane.certify(&token("pod-bound")).await,
            Code::Unavailable,
            &["tokenreviews"],
        );
    }
    assert_eq!(api.tokenreview_requests(), 5);
    api.set_forbidden(false);
    assert_eq!(plane.certify(&token("pod-bound")).await.unwrap(), FRONTEND);
    assert_eq!(api.tokenreview_requests(), 6);
    stop(plane.running).await;
}

#[tokio::test]
async fn a_deleted_pods_token_is_refused_once_the_cached_review_expires() {
    let api = FakeApiServer::start().await;
    let plane = KubePlane::start(&api, &["--token-cache-ttl", "300ms"]).await;
    assert_eq!(plane.certify(&token("pod-bound")).await.unwrap(), FRONTEND);

    api.set_pod_deleted(true);
    let pod_deleted = exchange("pod-deleted");
    eventually("the deleted pod's token is refused", || async {
        match plane.certify(&token("pod-bound")).await {
            Err(s) if s.code() == Code::Unauthenticated => {
                assert!(
                    s.message().contains(pod_deleted.error_text()),
                    "{}",
                    s.message()
                );
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(api.tokenreview_requests() >= 2);
    stop(plane.running).await;
}

#[tokio::test]
async fn with_the_cache_disabled_every_call_is_reviewed() {
    let api = FakeApiServer::start().await;
    let plane = KubePlane::start(&api, &["--token-cache-ttl", "0s"]).await;
    assert_eq!(plane.certify(&token("pod-bound")).await.unwrap(), FRONTEND);
    api.set_pod_deleted(true);
    assert_refused(
        plane.certify(&token("pod-bound")).await,
        Code::Unauthenticated,
        &["service account token has been invalidated"],
    );
    assert_eq!(api.tokenreview_requests(), 2);
    stop(plane.running).await;
}

/// The PEM of `key` in the stored Secret.
fn secret_value(api: &FakeApiServer, key: &str) -> String {
    let secret = api.secret("trellis-ca").expect("the CA Secret exists");
    let encoded = secret["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("the Secret has no {key}: {secret}"));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("Secret data is base64");
    String::from_utf8(bytes).expect("PEM text")
}

#[tokio::test]
async fn the_ca_secret_is_created_on_first_start_and_reused_on_the_next() {
    let api = FakeApiServer::start().await;
    assert!(api.secret("trellis-ca").is_none());

    let first = KubePlane::start(&api, &[]).await;
    assert_eq!(first.running.origin, Origin::Generated);
    assert_eq!(api.secret_writes("trellis-ca"), 1);
    let secret = api.secret("trellis-ca").unwrap();
    assert_eq!(secret["metadata"]["namespace"], "trellis-system");
    assert_eq!(secret["type"], "Opaque");
    for key in ["ca-cert.pem", "ca-key.pem", "cert-chain.pem"] {
        assert!(!secret_value(&api, key).is_empty(), "{key}");
    }
    let root = first.running.bundle.roots().to_vec();
    assert_eq!(
        certs_from_pem(secret_value(&api, "root-cert.pem").as_bytes()).unwrap(),
        root
    );
    stop(first.running).await;

    let second = KubePlane::start(&api, &[]).await;
    assert_eq!(second.running.origin, Origin::Loaded);
    assert_eq!(second.running.bundle.roots(), &root[..], "same root");
    assert_eq!(
        api.secret_writes("trellis-ca"),
        1,
        "the Secret was not written again"
    );
    assert_eq!(second.certify(&token("valid")).await.unwrap(), FRONTEND);
    stop(second.running).await;
}

#[tokio::test]
async fn an_empty_secret_declared_by_the_chart_is_filled_then_reused() {
    let api = FakeApiServer::start().await;
    api.put_secret("trellis-ca", None);

    let first = KubePlane::start(&api, &[]).await;
    assert_eq!(first.running.origin, Origin::Generated);
    assert_eq!(
        api.secret_writes("trellis-ca"),
        1,
        "filled with one replace"
    );
    let root = first.running.bundle.roots().to_vec();
    assert_eq!(
        certs_from_pem(secret_value(&api, "root-cert.pem").as_bytes()).unwrap(),
        root
    );
    stop(first.running).await;

    let second = KubePlane::start(&api, &[]).await;
    assert_eq!(second.running.origin, Origin::Loaded);
    assert_eq!(second.running.bundle.roots(), &root[..]);
    assert_eq!(api.secret_writes("trellis-ca"), 1);
    stop(second.running).await;
}

#[tokio::test]
async fn an_incomplete_ca_secret_stops_the_start_and_is_left_alone() {
    let api = FakeApiServer::start().await;
    let only_cert = base64::engine::general_purpose::STANDARD.encode("not used");
    api.put_secret(
        "trellis-ca",
        Some(serde_json::json!({ "ca-cert.pem": only_cert })),
    );
    let before = api.secret("trellis-ca");
    let err = try_start(&kube_config(&[]), Some(api.client()))
        .await
        .expect_err("must not start, and must not replace the root");
    assert!(
        matches!(err, StartError::Store(StoreError::Incomplete { .. })),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("Secret trellis-system/trellis-ca is incomplete")
            && message.contains("is missing"),
        "{message}"
    );
    assert_eq!(api.secret("trellis-ca"), before);
    assert_eq!(api.secret_writes("trellis-ca"), 0);
    assert_eq!(
        api.tokenreview_requests(),
        0,
        "nothing was served, so nothing was reviewed"
    );
}

#[tokio::test]
async fn an_unreachable_api_server_makes_certify_unavailable_not_unauthenticated() {
    let api = FakeApiServer::start().await;
    let plane = KubePlane::start(&api, &[]).await;
    // The API server goes away after start.
    drop(api);
    let started = std::time::Instant::now();
    assert_refused(
        plane.certify(&token("valid")).await,
        Code::Unavailable,
        &["cannot check tokens right now"],
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded by the review timeout"
    );
    stop(plane.running).await;
}

/// The items of a recorded list, as the API server listed them.
fn recorded_items(file: &str) -> Vec<serde_json::Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/services")
        .join(file);
    let bytes = std::fs::read(&path).expect("the recorded list");
    let list: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
    list["items"].as_array().expect("items").clone()
}

fn recorded_events(file: &str) -> Vec<serde_json::Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/services")
        .join(file);
    std::fs::read_to_string(&path)
        .expect("the recorded watch stream")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect()
}

/// `ip:target ready` of the endpoints of `service` port `port` a watcher holds.
fn held_endpoints(m: &common::watcher::Mirror, service: &str, port: u32) -> Vec<String> {
    let Some(s) = m.services.get(service) else {
        return Vec::new();
    };
    s.ports
        .iter()
        .filter(|p| p.port == port)
        .flat_map(|p| &p.endpoints)
        .map(|e| {
            let o: [u8; 4] = e.ip.as_slice().try_into().expect("IPv4");
            let ready = if e.ready { "ready" } else { "not-ready" };
            format!("{}:{} {ready}", std::net::Ipv4Addr::from(o), e.target_port)
        })
        .collect()
}

#[tokio::test]
async fn recorded_services_and_endpoint_slices_reach_proxies_and_follow_the_watch_stream() {
    const SERVICES: &str = "/api/v1/services";
    const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
    const PODS: &str = "/api/v1/pods";
    let api = FakeApiServer::start().await;
    for item in recorded_items("services-list.json") {
        api.collections().put(SERVICES, item);
    }
    for item in recorded_items("endpointslices-list.json") {
        api.collections().put(SLICES, item);
    }
    // The backend pods, as injected pods are: annotated by the webhook.
    for mut pod in recorded_items("pods-list.json") {
        if pod["spec"]["serviceAccountName"] == "backend" {
            pod["metadata"]["annotations"] = serde_json::json!({"trellis.dev/injected": "true"});
        }
        api.collections().put(PODS, pod);
    }
    let plane = KubePlane::start(&api, &[]).await;
    let svid =
        common::watcher::certified(&plane.running, &plane.config, &token("valid"), FRONTEND).await;
    let mut w =
        common::watcher::Watcher::open(&plane.running, &plane.config, &svid, Default::default())
            .await;
    let wanted = [
        "198.18.0.21:8080 ready",
        "198.18.0.22:8080 ready",
        "198.18.0.23:8080 not-ready",
    ];
    // The first update may come before the reflectors have listed everything.
    while held_endpoints(&w.mirror, "shop/backend", 80) != wanted {
        w.next().await;
    }
    assert_eq!(
        held_endpoints(&w.mirror, "shop/external-db", 5432),
        ["198.18.0.99:5432 ready"],
        "the selector-less Service's hand-made slice"
    );
    assert!(
        !w.mirror.services.contains_key("shop/backend-headless")
            && !w.mirror.services.contains_key("shop/docs"),
        "headless and ExternalName Services are not routed"
    );
    assert_eq!(
        w.mirror.ips(),
        ["198.18.0.21", "198.18.0.22", "198.18.0.23"],
        "the injected pods are meshed workloads"
    );

    // The recorded watch stream: scale-up, readiness, graceful and forced deletion.
    for event in recorded_events("endpointslices-watch.jsonl") {
        api.collections().replay(SLICES, &event);
    }
    let wanted = [
        "198.18.0.22:8080 ready",
        "198.18.0.23:8080 ready",
        "198.18.0.24:8080 ready",
    ];
    while held_endpoints(&w.mirror, "shop/backend", 80) != wanted {
        w.next().await;
    }
    // The targetPort edit: `http` now resolves to 8081 through the slice.
    for event in recorded_events("endpointslices-watch-targetport.jsonl")
        .iter()
        .take(1)
    {
        api.collections().replay(SLICES, event);
    }
    while !held_endpoints(&w.mirror, "shop/backend", 80)
        .iter()
        .all(|e| e.contains(":8081 "))
    {
        w.next().await;
    }
    stop(plane.running).await;
}

#[tokio::test]
async fn a_bad_token_flood_spends_a_bounded_number_of_reviews_and_known_callers_still_get_through()
{
    let api = FakeApiServer::start().await;
    let plane = KubePlane::start(&api, &["--token-cache-ttl", "60s"]).await;
    // A good caller, reviewed once before the flood (its answer is cached).
    plane.certify(&token("valid")).await.expect("issued");
    let before = api.tokenreview_requests();
    for i in 0..400 {
        let garbage = format!("eyJhbGciOiJSUzI1NiJ9.flood-{i}.sig");
        let refused = plane.certify(&garbage).await.unwrap_err();
        assert!(
            matches!(
                refused.code(),
                Code::Unauthenticated | Code::ResourceExhausted
            ),
            "{refused:?}"
        );
    }
    let reviews = api.tokenreview_requests() - before;
    // 100 at once, then 20 per second refill: far fewer than the 400 attempts.
    assert!(
        (100..250).contains(&reviews),
        "the per-source budget (100 failed attempts) bounds the TokenReviews: {reviews}"
    );
    // The cached good caller costs no review: still issued from the flooding address.
    plane
        .certify(&token("valid"))
        .await
        .expect("a token reviewed a moment ago is still issued");
    // A token never seen would cost a review: refused until the address's budget refills.
    let unseen = plane.certify(&token("pod-bound")).await.unwrap_err();
    assert_eq!(unseen.code(), Code::ResourceExhausted, "{unseen:?}");
    assert!(
        unseen.message().contains("too many failed attempts"),
        "{unseen:?}"
    );
    stop(plane.running).await;
}
