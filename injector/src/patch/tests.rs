use serde_json::{Value, json};

use super::*;

fn config(native: bool) -> InjectConfig {
    InjectConfig::with_defaults("proxy:1", "-----BEGIN CERTIFICATE-----\n", native)
}

fn pod(value: Value) -> Pod {
    serde_json::from_value(value).unwrap()
}

fn minimal() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"containers": [{"name": "app", "image": "nginx"}]}
    })
}

/// Applies the patch built for `pod` and returns the resulting pod's JSON.
fn apply(pod_json: Value, native: bool) -> (Value, Patch) {
    let patch = build(&pod(pod_json.clone()), &config(native))
        .unwrap()
        .patch;
    let mut doc = pod_json;
    json_patch::patch(&mut doc, &patch).unwrap();
    // The result must still be a valid Pod.
    let _: Pod = serde_json::from_value(doc.clone()).unwrap();
    (doc, patch)
}

fn paths(patch: &Patch) -> Vec<String> {
    patch
        .0
        .iter()
        .map(|op| match op {
            PatchOperation::Add(a) => a.path.to_string(),
            other => panic!("only adds expected, got {other:?}"),
        })
        .collect()
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

#[test]
fn absent_maps_and_lists_are_created_whole() {
    let (doc, patch) = apply(minimal(), true);
    let paths = paths(&patch);
    for path in [
        "/spec/initContainers",
        "/spec/volumes",
        "/metadata/annotations",
        "/metadata/labels",
    ] {
        assert!(paths.iter().any(|p| p == path), "{path} in {paths:?}");
    }
    assert_eq!(
        doc["metadata"]["annotations"]["trellis.dev/injected"],
        "true"
    );
    assert_eq!(doc["metadata"]["labels"]["trellis.dev/mesh"], "true");
}

#[test]
fn existing_maps_get_escaped_keys() {
    let mut p = minimal();
    p["metadata"]["annotations"] = json!({"team": "a"});
    p["metadata"]["labels"] = json!({"app": "web"});
    let (doc, patch) = apply(p, true);
    let paths = paths(&patch);
    assert!(
        paths.contains(&"/metadata/annotations/trellis.dev~1injected".to_owned()),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"/metadata/labels/trellis.dev~1mesh".to_owned()),
        "{paths:?}"
    );
    assert_eq!(doc["metadata"]["annotations"]["team"], "a");
    assert_eq!(doc["metadata"]["labels"]["app"], "web");
}

#[test]
fn native_sidecar_goes_after_the_init_step_and_before_the_pods_init_containers() {
    let mut p = minimal();
    p["spec"]["initContainers"] = json!([{"name": "migrate", "image": "tool"}]);
    p["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    let (doc, _) = apply(p, true);
    assert_eq!(
        names(&doc["spec"]["initContainers"]),
        ["trellis-init", "trellis-proxy", "migrate"]
    );
    assert_eq!(names(&doc["spec"]["containers"]), ["app"]);
    assert_eq!(names(&doc["spec"]["volumes"]), ["data", "trellis-token"]);
    assert_eq!(doc["spec"]["initContainers"][1]["restartPolicy"], "Always");
    assert_eq!(
        doc["spec"]["initContainers"][1]["startupProbe"]["httpGet"]["path"],
        "/ready"
    );
    assert!(
        doc["metadata"]["annotations"]
            .get(annotations::KUBECTL_DEFAULT_CONTAINER)
            .is_none()
    );
}

#[test]
fn regular_layout_puts_the_proxy_first_and_keeps_kubectl_on_the_app() {
    let (doc, _) = apply(minimal(), false);
    assert_eq!(names(&doc["spec"]["initContainers"]), ["trellis-init"]);
    assert_eq!(names(&doc["spec"]["containers"]), ["trellis-proxy", "app"]);
    let proxy = &doc["spec"]["containers"][0];
    assert!(proxy.get("restartPolicy").is_none());
    assert_eq!(
        proxy["lifecycle"]["postStart"]["exec"]["command"],
        json!(["trellis-proxy", "wait"])
    );
    assert_eq!(
        doc["metadata"]["annotations"][annotations::KUBECTL_DEFAULT_CONTAINER],
        "app"
    );
}

#[test]
fn a_chosen_kubectl_default_container_is_kept() {
    let mut p = minimal();
    p["metadata"]["annotations"] = json!({annotations::KUBECTL_DEFAULT_CONTAINER: "sidecar"});
    let (doc, _) = apply(p, false);
    assert_eq!(
        doc["metadata"]["annotations"][annotations::KUBECTL_DEFAULT_CONTAINER],
        "sidecar"
    );
}

#[test]
fn bad_annotations_stop_the_injection_with_their_name() {
    for (key, value) in [
        (annotations::EXCLUDE_INBOUND_PORTS, "80,eighty"),
        (annotations::EXCLUDE_OUTBOUND_PORTS, "70000"),
        (annotations::PROXY_CPU, "fast"),
        (annotations::PROXY_MEMORY, "-1Gi"),
    ] {
        let mut p = minimal();
        p["metadata"]["annotations"] = json!({key: value});
        let err = build(&pod(p), &config(true)).unwrap_err();
        assert!(matches!(err, PatchError::Annotation(_)), "{key}: {err:?}");
        assert!(err.to_string().contains(key), "{err}");
    }
}

#[test]
fn names_we_add_must_be_free() {
    let mut p = minimal();
    p["spec"]["volumes"] = json!([{"name": "trellis-token", "emptyDir": {}}]);
    let err = build(&pod(p), &config(true)).unwrap_err();
    assert!(
        err.to_string().contains("volume named \"trellis-token\""),
        "{err}"
    );

    let mut p = minimal();
    p["spec"]["initContainers"] = json!([{"name": "trellis-init", "image": "x"}]);
    let err = build(&pod(p), &config(true)).unwrap_err();
    assert!(
        matches!(
            err,
            PatchError::NameTaken {
                what: "container",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_pod_without_spec_is_not_patched() {
    let mut p = minimal();
    p.as_object_mut().unwrap().remove("spec");
    assert!(matches!(
        build(&pod(p), &config(true)),
        Err(PatchError::NoSpec)
    ));
}
