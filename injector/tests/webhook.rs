//! The webhook over real HTTPS with the AdmissionReview bodies a 1.28 API server sent: the
//! returned JSON Patch applied to the pod must give a valid v1 Pod that follows the injection
//! rules; reviewing the result again must change nothing; each opt-out must hold.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a panic is the failure report"
)]

mod support;

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{Value, json};
use support::{FIXTURES, Pki, Webhook, apply, fixture_path, patch_of, review_fixture};
use trellis_injector::{InjectConfig, version};

const PROXY_IMAGE: &str = "ghcr.io/trellis-mesh/trellis-proxy:test";

fn config(native_sidecars: bool) -> InjectConfig {
    let root = Pki::new("mesh root");
    InjectConfig::with_defaults(PROXY_IMAGE, root.ca_pem(), native_sidecars)
}

/// The layout the recorded API server (1.28) gets with `--native-sidecars=auto`.
fn recorded_cluster_config() -> InjectConfig {
    let body = std::fs::read(fixture_path("apiserver-version.json")).unwrap();
    let version = version::parse(&body).unwrap();
    config(version.supports_native_sidecars())
}

fn find<'a>(list: &'a [Container], name: &str) -> &'a Container {
    list.iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn env_value<'a>(proxy: &'a Container, name: &str) -> &'a k8s_openapi::api::core::v1::EnvVar {
    proxy
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("proxy has no env {name}"))
}

/// Every rule of the issue, checked on the patched pod against the pod as sent.
fn assert_injected(before: &Value, after: &Pod, config: &InjectConfig) {
    let before: Pod = serde_json::from_value(before["request"]["object"].clone()).unwrap();
    let spec = after.spec.as_ref().unwrap();
    let inits = spec.init_containers.as_deref().unwrap();

    // The init step: first, root, NET_ADMIN + NET_RAW only, nothing else.
    assert_eq!(inits[0].name, "trellis-init");
    let init = &inits[0];
    assert_eq!(
        init.command.as_deref(),
        Some(&["trellis-proxy".to_owned()][..])
    );
    assert_eq!(init.args.as_ref().unwrap()[0], "init");
    let sc = init.security_context.as_ref().unwrap();
    let caps = sc.capabilities.as_ref().unwrap();
    let mut added = caps.add.clone().unwrap();
    added.sort();
    assert_eq!(added, ["NET_ADMIN", "NET_RAW"]);
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    assert_eq!(sc.run_as_user, Some(0));
    assert_eq!(sc.run_as_non_root, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_ne!(sc.privileged, Some(true));

    // The proxy, in the layout the cluster supports.
    let proxy = if config.native_sidecars {
        assert_eq!(inits[1].name, "trellis-proxy");
        assert!(spec.containers.iter().all(|c| c.name != "trellis-proxy"));
        let proxy = &inits[1];
        assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
        let startup = proxy
            .startup_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(startup.path.as_deref(), Some("/ready"));
        assert_eq!(
            startup.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(15020)
        );
        proxy
    } else {
        assert_eq!(
            inits.len(),
            before
                .spec
                .as_ref()
                .unwrap()
                .init_containers
                .as_ref()
                .map_or(0, Vec::len)
                + 1
        );
        let proxy = &spec.containers[0];
        assert_eq!(proxy.name, "trellis-proxy");
        assert_eq!(proxy.restart_policy, None);
        let hook = proxy
            .lifecycle
            .as_ref()
            .unwrap()
            .post_start
            .as_ref()
            .unwrap();
        assert_eq!(
            hook.exec.as_ref().unwrap().command.as_deref(),
            Some(&["trellis-proxy".to_owned(), "wait".to_owned()][..])
        );
        proxy
    };
    assert_eq!(proxy.image.as_deref(), Some(PROXY_IMAGE));
    assert_eq!(proxy.args.as_deref(), Some(&["run".to_owned()][..]));
    let sc = proxy.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, Some(1337));
    assert_eq!(sc.run_as_group, Some(1337));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_owned()][..])
    );
    assert_eq!(sc.capabilities.as_ref().unwrap().add, None);
    assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    let ports: Vec<i32> = proxy
        .ports
        .iter()
        .flatten()
        .map(|p| p.container_port)
        .collect();
    assert_eq!(ports, [15008, 15020]);
    let ready = proxy
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(ready.path.as_deref(), Some("/ready"));
    let requests = proxy.resources.as_ref().unwrap().requests.as_ref().unwrap();
    assert_eq!(requests["cpu"].0, "100m");
    assert_eq!(requests["memory"].0, "128Mi");

    // Environment: the contract of ARCHITECTURE.md.
    for (name, field) in [
        ("TRELLIS_POD_NAME", "metadata.name"),
        ("TRELLIS_POD_NAMESPACE", "metadata.namespace"),
        ("TRELLIS_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        ("TRELLIS_POD_IP", "status.podIP"),
    ] {
        let from = env_value(proxy, name).value_from.as_ref().unwrap();
        assert_eq!(from.field_ref.as_ref().unwrap().field_path, field, "{name}");
    }
    assert_eq!(
        env_value(proxy, "TRELLIS_TRUST_BUNDLE").value.as_deref(),
        Some(config.trust_bundle_pem.as_str())
    );
    assert_eq!(
        env_value(proxy, "TRELLIS_TRUST_DOMAIN").value.as_deref(),
        Some("cluster.local")
    );
    assert_eq!(
        env_value(proxy, "TRELLIS_CONTROL_PLANE").value.as_deref(),
        Some("trellis-control-plane.trellis-system.svc:15012")
    );
    assert_eq!(
        env_value(proxy, "TRELLIS_CONTROL_PLANE_ID")
            .value
            .as_deref(),
        Some("spiffe://cluster.local/ns/trellis-system/sa/trellis-control-plane")
    );
    assert_eq!(
        env_value(proxy, "TRELLIS_LOG").value.as_deref(),
        Some("info")
    );
    assert_eq!(
        env_value(proxy, "TRELLIS_LOG_FORMAT").value.as_deref(),
        Some("text")
    );
    assert_eq!(
        env_value(proxy, "TRELLIS_TOKEN_FILE").value.as_deref(),
        Some("/var/run/secrets/trellis/tokens/trellis-token")
    );

    // The token for the CA: projected, audience trellis-ca, mounted read-only.
    let mount = proxy
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "trellis-token")
        .unwrap();
    assert_eq!(mount.mount_path, "/var/run/secrets/trellis/tokens");
    assert_eq!(mount.read_only, Some(true));
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "trellis-token")
        .unwrap();
    let sources = volume.projected.as_ref().unwrap().sources.as_ref().unwrap();
    let token = sources[0].service_account_token.as_ref().unwrap();
    assert_eq!(token.audience.as_deref(), Some("trellis-ca"));
    assert_eq!(token.expiration_seconds, Some(3600));
    assert_eq!(token.path, "trellis-token");

    // Marked, and everything that was there is still there, untouched.
    let annotations = after.metadata.annotations.as_ref().unwrap();
    assert_eq!(annotations["trellis.dev/injected"], "true");
    for (key, value) in before.metadata.annotations.iter().flatten() {
        assert_eq!(&annotations[key], value);
    }
    assert_eq!(
        after.metadata.labels.as_ref().unwrap()["trellis.dev/mesh"],
        "true"
    );
    let before_spec = before.spec.as_ref().unwrap();
    let apps: Vec<&Container> = spec
        .containers
        .iter()
        .filter(|c| c.name != "trellis-proxy")
        .collect();
    assert_eq!(
        apps,
        before_spec.containers.iter().collect::<Vec<_>>(),
        "app containers untouched"
    );
    for v in before_spec.volumes.iter().flatten() {
        assert!(
            spec.volumes.iter().flatten().any(|w| w == v),
            "volume {} kept",
            v.name
        );
    }
    assert_eq!(spec.service_account_name, before_spec.service_account_name);
}

#[tokio::test]
async fn each_recorded_review_is_injected_into_a_valid_pod() {
    let config = recorded_cluster_config();
    assert!(!config.native_sidecars, "the recorded API server is 1.28");
    let webhook = Webhook::start(config.clone()).await;
    for name in FIXTURES {
        let review = review_fixture(name);
        let response = webhook.review("/inject", &review).await;
        let patch = patch_of(&response).unwrap_or_else(|| panic!("{name}: no patch: {response}"));
        let (_, pod) = apply(&review, &patch);
        assert_injected(&review, &pod, &config);
        assert!(response.get("warnings").is_none(), "{name}: {response}");
    }
    webhook.shutdown().await;
}

#[tokio::test]
async fn clusters_from_1_29_get_a_native_sidecar() {
    let config = config(true);
    let webhook = Webhook::start(config.clone()).await;
    for name in FIXTURES {
        let review = review_fixture(name);
        let patch = patch_of(&webhook.review("/inject", &review).await).unwrap();
        let (_, pod) = apply(&review, &patch);
        assert_injected(&review, &pod, &config);
    }
}

#[tokio::test]
async fn annotation_keys_are_escaped_and_absent_maps_created() {
    let webhook = Webhook::start(config(true)).await;
    // The bare pod has no annotations: the whole map is added.
    let bare = webhook
        .review("/inject", &review_fixture(FIXTURES[0]))
        .await;
    let paths = |patch: json_patch::Patch| -> Vec<String> {
        serde_json::to_value(&patch)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|op| op["path"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(paths(patch_of(&bare).unwrap()).contains(&"/metadata/annotations".to_owned()));
    // The dry-run pod has annotations: one escaped key is added.
    let annotated = webhook
        .review("/inject", &review_fixture(FIXTURES[2]))
        .await;
    assert!(
        paths(patch_of(&annotated).unwrap())
            .contains(&"/metadata/annotations/trellis.dev~1injected".to_owned())
    );
}

#[tokio::test]
async fn an_injected_pod_reviewed_again_gets_no_patch() {
    let webhook = Webhook::start(recorded_cluster_config()).await;
    for name in FIXTURES {
        let mut review = review_fixture(name);
        let patch = patch_of(&webhook.review("/inject", &review).await).unwrap();
        let (patched, _) = apply(&review, &patch);
        review["request"]["object"] = patched;
        let again = webhook.review("/inject", &review).await;
        assert!(patch_of(&again).is_none(), "{name}: {again}");
        assert!(again.get("warnings").is_none(), "{name}: {again}");
    }
}

#[tokio::test]
async fn dry_run_reviews_are_answered_like_any_other() {
    let config = config(false);
    let webhook = Webhook::start(config.clone()).await;
    let review = review_fixture("admissionreview-pod-create-dryrun.json");
    assert_eq!(review["request"]["dryRun"], true);
    let response = webhook.review("/inject", &review).await;
    assert_eq!(response["uid"], "7e939fc0-d4f4-4988-bce7-553edf82757c");
    let (_, pod) = apply(&review, &patch_of(&response).unwrap());
    assert_injected(&review, &pod, &config);
}

fn with_annotations(mut review: Value, annotations: Value) -> Value {
    review["request"]["object"]["metadata"]["annotations"] = annotations;
    review
}

#[tokio::test]
async fn a_pod_that_opts_out_is_left_alone() {
    let webhook = Webhook::start(config(true)).await;
    let review = with_annotations(
        review_fixture(FIXTURES[0]),
        json!({"trellis.dev/inject": "disabled"}),
    );
    for path in ["/inject", "/inject-opt-in"] {
        let response = webhook.review(path, &review).await;
        assert!(patch_of(&response).is_none(), "{path}: {response}");
        assert!(response.get("warnings").is_none(), "{path}: {response}");
    }
}

#[tokio::test]
async fn a_host_network_pod_is_allowed_with_a_warning() {
    let webhook = Webhook::start(config(true)).await;
    let mut review = review_fixture(FIXTURES[1]);
    review["request"]["object"]["spec"]["hostNetwork"] = json!(true);
    let response = webhook.review("/inject", &review).await;
    assert!(patch_of(&response).is_none(), "{response}");
    assert!(
        response["warnings"][0]
            .as_str()
            .unwrap()
            .contains("hostNetwork"),
        "{response}"
    );
}

#[tokio::test]
async fn the_control_plane_namespace_is_never_injected() {
    let webhook = Webhook::start(config(true)).await;
    let mut review = with_annotations(
        review_fixture(FIXTURES[0]),
        json!({"trellis.dev/inject": "enabled"}),
    );
    review["request"]["namespace"] = json!("trellis-system");
    review["request"]["object"]["metadata"]["namespace"] = json!("trellis-system");
    for path in ["/inject", "/inject-opt-in"] {
        let response = webhook.review(path, &review).await;
        assert!(patch_of(&response).is_none(), "{path}: {response}");
        assert!(
            response["warnings"][0]
                .as_str()
                .unwrap()
                .contains("control plane"),
            "{response}"
        );
    }
}

#[tokio::test]
async fn an_unlabelled_namespace_injects_only_pods_that_opt_in() {
    let config = config(true);
    let webhook = Webhook::start(config.clone()).await;
    let plain = review_fixture(FIXTURES[1]);
    let response = webhook.review("/inject-opt-in", &plain).await;
    assert!(patch_of(&response).is_none(), "{response}");
    assert!(response.get("warnings").is_none(), "{response}");

    let opted_in = with_annotations(plain, json!({"trellis.dev/inject": "enabled"}));
    let patch = patch_of(&webhook.review("/inject-opt-in", &opted_in).await).unwrap();
    let (_, pod) = apply(&opted_in, &patch);
    assert_injected(&opted_in, &pod, &config);
}

#[tokio::test]
async fn bad_annotations_allow_the_pod_uninjected_with_a_warning() {
    let webhook = Webhook::start(config(true)).await;
    for (key, value) in [
        ("trellis.dev/exclude-inbound-ports", "8080,http"),
        ("trellis.dev/exclude-outbound-ports", "99999"),
        ("trellis.dev/proxy-cpu", "a lot"),
        ("trellis.dev/proxy-memory", "12XB"),
        ("trellis.dev/log-level", "verbose"),
        ("trellis.dev/exclude-outbound-cidrs", "10.0.0.0/40"),
    ] {
        let review = with_annotations(review_fixture(FIXTURES[0]), json!({key: value}));
        let response = webhook.review("/inject", &review).await;
        assert!(patch_of(&response).is_none(), "{key}: {response}");
        let warning = response["warnings"][0].as_str().unwrap();
        assert!(warning.contains(key), "{warning}");
    }
}

#[tokio::test]
async fn pod_annotations_set_exclusions_and_resources() {
    let webhook = Webhook::start(config(true)).await;
    let review = with_annotations(
        review_fixture(FIXTURES[0]),
        json!({
            "trellis.dev/exclude-inbound-ports": "9090, 9091",
            "trellis.dev/exclude-outbound-ports": "5432",
            "trellis.dev/exclude-outbound-cidrs": "198.18.0.0/15",
            "trellis.dev/proxy-cpu": "250m",
            "trellis.dev/proxy-memory": "256Mi",
            "trellis.dev/log-level": "info,trellis_proxy=debug",
        }),
    );
    let (_, pod) = apply(
        &review,
        &patch_of(&webhook.review("/inject", &review).await).unwrap(),
    );
    let spec = pod.spec.unwrap();
    let inits = spec.init_containers.unwrap();
    let args = find(&inits, "trellis-init").args.clone().unwrap();
    assert_eq!(
        args,
        [
            "init",
            "--proxy-uid",
            "1337",
            "--proxy-gid",
            "1337",
            "--exclude-inbound-ports",
            "9090,9091",
            "--exclude-outbound-ports",
            "5432",
            "--exclude-outbound-cidrs",
            "198.18.0.0/15"
        ]
    );
    let requests = find(&inits, "trellis-proxy")
        .resources
        .clone()
        .unwrap()
        .requests
        .unwrap();
    assert_eq!(requests["cpu"].0, "250m");
    assert_eq!(requests["memory"].0, "256Mi");
    assert_eq!(
        env_value(find(&inits, "trellis-proxy"), "TRELLIS_LOG")
            .value
            .as_deref(),
        Some("info,trellis_proxy=debug")
    );
}
