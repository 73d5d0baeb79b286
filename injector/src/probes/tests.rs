//! The rewrite, table-driven on single probes, then on the recorded API server's pod (a
//! Deployment's nginx pod) given real-shaped probes: the patch applied, applied again,
//! reinvoked after another webhook, opted out, in both layouts.

use serde_json::{Value, json};

use super::*;
use crate::annotations::{APP_PROBES, REWRITE_APP_PROBES};
use crate::config::InjectConfig;
use crate::decide::NamespaceScope;
use crate::patch::build;

const RECORDED: &str =
    include_str!("../../../testdata/admission/admissionreview-pod-create-from-deployment.json");

fn container(value: Value) -> Container {
    serde_json::from_value(value).unwrap()
}

fn probe(value: Value) -> Probe {
    serde_json::from_value(value).unwrap()
}

#[test]
fn each_probe_gets_the_verdict_of_the_rules() {
    let app = container(json!({"name": "web", "ports": [
        {"name": "http", "containerPort": 8080}, {"name": "grpc", "containerPort": 9090}]}));
    let cases: &[(&str, Value, Verdict)] = &[
        (
            "httpGet, numeric port, timing fields not carried but the timeout",
            json!({"httpGet": {"path": "/healthz", "port": 8080}, "timeoutSeconds": 2, "periodSeconds": 5}),
            Verdict::Rewrite(
                json!({"httpGet": {"path": "/healthz", "port": 8080}, "timeoutSeconds": 2}),
            ),
        ),
        (
            "httpGet, named port resolved, scheme host and headers kept",
            json!({"httpGet": {"path": "/h", "port": "http", "scheme": "HTTPS", "host": "10.0.0.1",
                               "httpHeaders": [{"name": "Host", "value": "web"}]}}),
            Verdict::Rewrite(
                json!({"httpGet": {"path": "/h", "port": 8080, "scheme": "HTTPS", "host": "10.0.0.1",
                                                "httpHeaders": [{"name": "Host", "value": "web"}]}}),
            ),
        ),
        (
            "tcpSocket, named port",
            json!({"tcpSocket": {"port": "grpc"}, "timeoutSeconds": 1}),
            Verdict::Rewrite(json!({"tcpSocket": {"port": 9090}, "timeoutSeconds": 1})),
        ),
        (
            "grpc without a service",
            json!({"grpc": {"port": 9090}}),
            Verdict::Rewrite(json!({"grpc": {"port": 9090, "service": ""}})),
        ),
        (
            "grpc with a service",
            json!({"grpc": {"port": 9090, "service": "db"}}),
            Verdict::Rewrite(json!({"grpc": {"port": 9090, "service": "db"}})),
        ),
        (
            "a named port the container does not declare",
            json!({"httpGet": {"path": "/", "port": "metrics"}}),
            Verdict::Cannot("its port \"metrics\" is not a named port of the container".into()),
        ),
        (
            "exec runs inside the container",
            json!({"exec": {"command": ["true"]}}),
            Verdict::NotNeeded,
        ),
        (
            "already on the proxy's app-health",
            json!({"httpGet": {"path": "/app-health/web/readyz", "port": 15020}}),
            Verdict::AlreadyRewritten,
        ),
    ];
    for (name, given, expected) in cases {
        assert_eq!(verdict(&probe(given.clone()), &app), *expected, "{name}");
    }
}

#[test]
fn the_replacement_keeps_the_timing_fields_and_points_at_the_proxy() {
    let original = probe(
        json!({"tcpSocket": {"port": 8080}, "initialDelaySeconds": 3,
        "periodSeconds": 7, "timeoutSeconds": 2, "successThreshold": 1, "failureThreshold": 9,
        "terminationGracePeriodSeconds": 30}),
    );
    let r = serde_json::to_value(replacement(&original, path("web", ProbeKind::Liveness))).unwrap();
    assert_eq!(
        r,
        json!({"httpGet": {"path": "/app-health/web/livez", "port": 15020, "scheme": "HTTP"},
               "initialDelaySeconds": 3, "periodSeconds": 7, "timeoutSeconds": 2,
               "successThreshold": 1, "failureThreshold": 9, "terminationGracePeriodSeconds": 30})
    );
}

/// The recorded pod (one container, `nginx`) with ports and the three kinds of probes.
fn recorded_pod_with_probes() -> Value {
    let review: Value = serde_json::from_str(RECORDED).unwrap();
    let mut pod = review["request"]["object"].clone();
    let nginx = &mut pod["spec"]["containers"][0];
    nginx["ports"] = json!([{"name": "http", "containerPort": 80, "protocol": "TCP"},
                            {"name": "grpc", "containerPort": 9090, "protocol": "TCP"}]);
    nginx["livenessProbe"] = json!({"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"},
        "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3});
    nginx["readinessProbe"] = json!({"tcpSocket": {"port": 80}, "initialDelaySeconds": 2,
        "timeoutSeconds": 1, "periodSeconds": 5, "successThreshold": 1, "failureThreshold": 3});
    nginx["startupProbe"] = json!({"grpc": {"port": 9090, "service": "nginx"},
        "timeoutSeconds": 2, "periodSeconds": 1, "successThreshold": 1, "failureThreshold": 30});
    pod
}

fn config(native: bool) -> InjectConfig {
    InjectConfig::with_defaults("proxy:1", "-----BEGIN CERTIFICATE-----\n", native)
}

/// The pod after its injection patch, and the patch's warnings.
fn inject(pod: &Value, config: &InjectConfig) -> (Value, Vec<String>) {
    let typed: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod.clone()).unwrap();
    let injection = build(&typed, config).unwrap();
    let mut doc = pod.clone();
    json_patch::patch(&mut doc, &injection.patch).unwrap();
    let _: k8s_openapi::api::core::v1::Pod = serde_json::from_value(doc.clone()).unwrap();
    (doc, injection.warnings)
}

/// The webhook's review of a CREATE of `pod`.
fn review_of(pod: &Value, config: &InjectConfig) -> crate::review::Reviewed {
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": "default", "operation": "CREATE", "userInfo": {}, "object": pod}});
    let body = serde_json::to_vec(&review).unwrap();
    crate::review::review(&body, NamespaceScope::Labelled, config).unwrap()
}

fn container_named<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod["spec"][list]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {list} {name}"))
}

/// `TRELLIS_APP_PROBES` of the injected pod's proxy, parsed; `None` when it has none.
fn app_probes_env(pod: &Value) -> Option<Value> {
    let list = if pod["spec"]["containers"][0]["name"] == containers::PROXY_NAME {
        "containers"
    } else {
        "initContainers"
    };
    let proxy = container_named(pod, list, containers::PROXY_NAME);
    let var = proxy["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == APP_PROBES_ENV)?;
    Some(serde_json::from_str(var["value"].as_str().unwrap()).unwrap())
}

#[test]
fn a_recorded_pods_probes_move_to_the_proxy_in_either_layout() {
    for native in [false, true] {
        let before = recorded_pod_with_probes();
        let (after, warnings) = inject(&before, &config(native));
        assert!(warnings.is_empty(), "{warnings:?}");
        let nginx = container_named(&after, "containers", "nginx");
        let was = container_named(&before, "containers", "nginx");
        for (field, segment) in [
            ("livenessProbe", "livez"),
            ("readinessProbe", "readyz"),
            ("startupProbe", "startupz"),
        ] {
            let p = &nginx[field];
            assert_eq!(p["httpGet"]["port"], 15020, "{field}");
            assert_eq!(
                p["httpGet"]["path"],
                format!("/app-health/nginx/{segment}"),
                "{field}"
            );
            for timing in [
                "timeoutSeconds",
                "periodSeconds",
                "failureThreshold",
                "initialDelaySeconds",
            ] {
                assert_eq!(p.get(timing), was[field].get(timing), "{field}.{timing}");
            }
            assert!(
                p.get("tcpSocket").is_none() && p.get("grpc").is_none(),
                "{field}"
            );
        }
        assert_eq!(
            app_probes_env(&after).unwrap(),
            json!({
                "/app-health/nginx/livez": {"httpGet": {"path": "/healthz", "port": 80, "scheme": "HTTP"}, "timeoutSeconds": 1},
                "/app-health/nginx/readyz": {"tcpSocket": {"port": 80}, "timeoutSeconds": 1},
                "/app-health/nginx/startupz": {"grpc": {"port": 9090, "service": "nginx"}, "timeoutSeconds": 2},
            }),
            "native {native}"
        );
        assert_eq!(after["metadata"]["annotations"][APP_PROBES], "rewritten");
        // The proxy's own probes are its own.
        let list = if native {
            "initContainers"
        } else {
            "containers"
        };
        let proxy = container_named(&after, list, containers::PROXY_NAME);
        assert_eq!(proxy["readinessProbe"]["httpGet"]["path"], "/ready");
    }
}

#[test]
fn injecting_an_injected_pod_again_changes_no_probe_and_reinvocation_has_nothing_to_do() {
    let (once, _) = inject(&recorded_pod_with_probes(), &config(false));
    let spec: PodSpec = serde_json::from_value(once["spec"].clone()).unwrap();
    assert!(plan(&spec, ProxyLayout::FirstContainer).rewrites.is_empty());
    assert!(reinvocation(&spec).unwrap().is_empty());
    // Through the webhook's review: no patch for the reinvoked pod.
    let out = review_of(&once, &config(false));
    assert_eq!(out.outcome.as_str(), "already-injected");
    let answer: Value = serde_json::from_slice(&out.body).unwrap();
    assert!(answer["response"].get("patch").is_none(), "{answer}");
}

#[test]
fn plaintext_probes_are_those_left_on_the_app() {
    let before = recorded_pod_with_probes();
    let spec: PodSpec = serde_json::from_value(before["spec"].clone()).unwrap();
    assert_eq!(
        plaintext_probes(&spec),
        [
            "nginx/livenessProbe",
            "nginx/readinessProbe",
            "nginx/startupProbe"
        ]
    );
    let (after, _) = inject(&before, &config(false));
    let spec: PodSpec = serde_json::from_value(after["spec"].clone()).unwrap();
    assert!(
        plaintext_probes(&spec).is_empty(),
        "the proxy's own probes do not count"
    );
}

#[test]
fn a_probe_added_by_a_later_webhook_is_rewritten_on_reinvocation() {
    for native in [false, true] {
        let (mut pod, _) = inject(&recorded_pod_with_probes(), &config(native));
        pod["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "exporter", "image": "exporter:1", "ports": [{"name": "metrics", "containerPort": 9100}],
                         "readinessProbe": {"httpGet": {"path": "/", "port": "metrics"}, "timeoutSeconds": 3}}));
        let spec: PodSpec = serde_json::from_value(pod["spec"].clone()).unwrap();
        let ops = reinvocation(&spec).unwrap();
        json_patch::patch(&mut pod, &json_patch::Patch(ops)).unwrap();
        let exporter = container_named(&pod, "containers", "exporter");
        assert_eq!(
            exporter["readinessProbe"]["httpGet"]["path"],
            "/app-health/exporter/readyz"
        );
        assert_eq!(exporter["readinessProbe"]["timeoutSeconds"], 3);
        let env = app_probes_env(&pod).unwrap();
        assert_eq!(env.as_object().unwrap().len(), 4, "merged: {env}");
        assert_eq!(
            env["/app-health/exporter/readyz"],
            json!({"httpGet": {"path": "/", "port": 9100}, "timeoutSeconds": 3})
        );
        assert!(env.get("/app-health/nginx/livez").is_some());
        // And once more: nothing left.
        let spec: PodSpec = serde_json::from_value(pod["spec"].clone()).unwrap();
        assert!(reinvocation(&spec).unwrap().is_empty());
    }
}

#[test]
fn a_pod_that_opts_out_keeps_its_probes_and_says_so() {
    let mut pod = recorded_pod_with_probes();
    pod["metadata"]["annotations"] = json!({REWRITE_APP_PROBES: "false"});
    let (after, _) = inject(&pod, &config(true));
    assert_eq!(
        container_named(&after, "containers", "nginx"),
        container_named(&pod, "containers", "nginx")
    );
    assert!(app_probes_env(&after).is_none());
    assert_eq!(after["metadata"]["annotations"][APP_PROBES], "kept");
    let spec: PodSpec = serde_json::from_value(after["spec"].clone()).unwrap();
    // Kept probes stay kept when the webhook is reinvoked.
    let out = review_of(&after, &config(true));
    assert_eq!(out.outcome.as_str(), "already-injected");
    assert!(
        !plan(&spec, ProxyLayout::NativeSidecar).rewrites.is_empty(),
        "still rewritable"
    );

    // The injector's default off, the pod asks for it.
    let mut off = config(true);
    off.rewrite_app_probes = false;
    let (after, _) = inject(&recorded_pod_with_probes(), &off);
    assert!(app_probes_env(&after).is_none());
    assert_eq!(after["metadata"]["annotations"][APP_PROBES], "kept");
    let mut asks = recorded_pod_with_probes();
    asks["metadata"]["annotations"] = json!({REWRITE_APP_PROBES: "true"});
    let (after, _) = inject(&asks, &off);
    assert_eq!(
        app_probes_env(&after).unwrap().as_object().unwrap().len(),
        3
    );
}

#[test]
fn an_unresolvable_named_port_is_left_alone_with_a_warning() {
    let mut pod = recorded_pod_with_probes();
    pod["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = json!("admin");
    let (after, warnings) = inject(&pod, &config(true));
    assert_eq!(
        warnings,
        [
            "trellis: livenessProbe of container \"nginx\" not rewritten to the proxy: its port \"admin\" is not a named port of the container"
        ]
    );
    let nginx = container_named(&after, "containers", "nginx");
    assert_eq!(nginx["livenessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(nginx["readinessProbe"]["httpGet"]["port"], 15020);
    assert!(
        app_probes_env(&after)
            .unwrap()
            .get("/app-health/nginx/livez")
            .is_none()
    );
}

#[test]
fn the_apps_native_sidecars_are_rewritten_only_behind_a_native_proxy() {
    let mut pod = recorded_pod_with_probes();
    pod["spec"]["initContainers"] = json!([
        {"name": "migrate", "image": "tool", "readinessProbe": {"tcpSocket": {"port": 5432}}},
        {"name": "log-shipper", "image": "shipper", "restartPolicy": "Always",
         "startupProbe": {"httpGet": {"path": "/up", "port": 2020}}}
    ]);
    let (native, _) = inject(&pod, &config(true));
    let shipper = container_named(&native, "initContainers", "log-shipper");
    assert_eq!(
        shipper["startupProbe"]["httpGet"]["path"],
        "/app-health/log-shipper/startupz"
    );
    // A plain init container has no probes that run: untouched (the API server rejects them).
    let migrate = container_named(&native, "initContainers", "migrate");
    assert_eq!(migrate["readinessProbe"]["tcpSocket"]["port"], 5432);
    assert!(
        app_probes_env(&native)
            .unwrap()
            .get("/app-health/log-shipper/startupz")
            .is_some()
    );

    let (classic, _) = inject(&pod, &config(false));
    let shipper = container_named(&classic, "initContainers", "log-shipper");
    assert_eq!(shipper["startupProbe"]["httpGet"]["port"], 2020);
    assert!(
        app_probes_env(&classic)
            .unwrap()
            .get("/app-health/log-shipper/startupz")
            .is_none()
    );
}

#[test]
fn a_host_network_pod_is_not_injected_so_its_probes_stay() {
    let mut pod = recorded_pod_with_probes();
    pod["spec"]["hostNetwork"] = json!(true);
    let out = review_of(&pod, &config(true));
    assert_eq!(out.outcome.as_str(), "host-network");
    let answer: Value = serde_json::from_slice(&out.body).unwrap();
    assert!(answer["response"].get("patch").is_none());
}
