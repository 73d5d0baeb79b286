use std::path::Path;

use super::*;

fn td() -> TrustDomain {
    TrustDomain::default()
}

fn policy(yaml: &str) -> AuthorizationPolicy {
    serde_saphyr::from_str(yaml).unwrap()
}

#[test]
fn crd_in_the_chart_is_generated_from_the_rust_type() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/trellis/files/authorizationpolicies.yaml");
    let want = crd_yaml();
    if std::env::var_os("TRELLIS_REGENERATE_CRD").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &want).unwrap();
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} is out of date: run TRELLIS_REGENERATE_CRD=1 cargo test -p trellis-control-plane crd",
        path.display()
    );
}

#[test]
fn kubectl_shows_an_unambiguous_short_name_a_description_and_the_policy_columns() {
    let crd =
        serde_json::to_value(<AuthorizationPolicy as kube::CustomResourceExt>::crd()).unwrap();
    let names = &crd["spec"]["names"];
    assert_eq!(names["shortNames"], serde_json::json!(["tauthz"]));
    assert_eq!(names["categories"], serde_json::json!(["trellis"]));
    let version = &crd["spec"]["versions"][0];
    let description = version["schema"]["openAPIV3Schema"]["description"]
        .as_str()
        .unwrap();
    assert!(
        description.starts_with("An allow-list of workload identities"),
        "{description}"
    );
    let columns: Vec<(&str, &str)> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["jsonPath"].as_str().unwrap()))
        .collect();
    assert_eq!(
        columns,
        [
            ("Mode", ".spec.mode"),
            ("Selector", ".spec.selector.matchLabels"),
            ("Ports", ".spec.ports"),
            ("Allow", ".spec.allow"),
            ("Age", ".metadata.creationTimestamp"),
        ]
    );
}

#[test]
fn the_crd_schema_constrains_ports_allow_and_mode() {
    let crd =
        serde_json::to_value(<AuthorizationPolicy as kube::CustomResourceExt>::crd()).unwrap();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(spec["properties"]["ports"]["items"]["maximum"], 65535.0);
    assert_eq!(
        spec["properties"]["allow"]["items"]["pattern"],
        ALLOW_PATTERN
    );
    let modes = spec["properties"]["mode"]["enum"].as_array().unwrap();
    assert_eq!(modes.len(), 2);
    assert!(
        spec["required"]
            .as_array()
            .unwrap()
            .contains(&"allow".into())
    );
}

#[test]
fn schema_pattern_agrees_with_the_parser() {
    let re_ok = |s: &str| regex_lite_match(ALLOW_PATTERN, s);
    for good in [
        "spiffe://cluster.local/ns/shop/sa/frontend",
        "spiffe://cluster.local/ns/shop/sa/*",
        "spiffe://cluster.local/ns/shop/*",
        "ns/shop/sa/frontend",
        "ns/shop/sa/*",
        "ns/shop/*",
        "spiffe://example.org/workload/x",
    ] {
        assert!(re_ok(good), "schema refuses {good}");
        assert!(
            IdentityPattern::parse(good, &td()).is_ok(),
            "parser refuses {good}"
        );
    }
    for bad in [
        "",
        "*",
        "spiffe://cluster.local/*",
        "ns/*/sa/x",
        "http://x/ns/a/sa/b",
        "ns/a b/sa/c",
        "ns/shop/sa/fr*",
    ] {
        assert!(!re_ok(bad), "schema accepts {bad}");
        assert!(
            IdentityPattern::parse(bad, &td()).is_err(),
            "parser accepts {bad}"
        );
    }
}

/// The schema's pattern is checked with the same engine family the API server uses (RE2-like);
/// `regex-lite` is close enough for these anchored patterns.
fn regex_lite_match(pattern: &str, s: &str) -> bool {
    regex_lite::Regex::new(pattern).unwrap().is_match(s)
}

#[test]
fn a_policy_object_becomes_a_checked_policy() {
    let p = policy(
        "apiVersion: trellis.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: allow-fe, namespace: shop}\nspec:\n  selector: {matchLabels: {app: backend}}\n  ports: [8080]\n  allow: [ns/shop/sa/frontend]\n",
    );
    let checked = Policy::from_resource(&p, &td()).unwrap();
    assert_eq!(checked.mode, PolicyMode::Enforce, "enforce is the default");
    assert_eq!(checked.ports, [8080]);
    assert_eq!(
        checked.allow[0].to_string(),
        "spiffe://cluster.local/ns/shop/sa/frontend"
    );
    let labels = BTreeMap::from([
        ("app".to_string(), "backend".to_string()),
        ("v".into(), "2".into()),
    ]);
    assert!(checked.selects("shop", &labels));
    assert!(!checked.selects("other", &labels));
    assert!(!checked.selects("shop", &BTreeMap::new()));
}

#[test]
fn malformed_policies_are_refused_naming_the_field() {
    let p = policy(
        "apiVersion: trellis.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: shop}\nspec: {allow: [\"ns/shop/sa/fr*\"]}\n",
    );
    let err = Policy::from_resource(&p, &td()).unwrap_err().to_string();
    assert!(
        err.starts_with("AuthorizationPolicy shop/x: spec.allow[0]"),
        "{err}"
    );
    let p = policy(
        "apiVersion: trellis.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: shop}\nspec: {ports: [0], allow: []}\n",
    );
    assert!(
        Policy::from_resource(&p, &td())
            .unwrap_err()
            .to_string()
            .contains("spec.ports")
    );
    let bad_mode: Result<AuthorizationPolicy, _> = serde_saphyr::from_str(
        "apiVersion: trellis.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: shop}\nspec: {allow: [], mode: block}\n",
    );
    assert!(bad_mode.is_err());
}

#[test]
fn an_invalid_policy_becomes_deny_all_for_the_pods_it_selects() {
    let p = policy(
        "apiVersion: trellis.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: shop}\nspec: {selector: {matchLabels: {app: backend}}, allow: [\"ns/../sa/x\"]}\n",
    );
    let err = Policy::from_resource(&p, &td()).unwrap_err();
    let closed = Policy::deny_all_like(&p, &err.reason);
    assert!(closed.allow.is_empty());
    assert_eq!(closed.mode, PolicyMode::Enforce);
    let labels = BTreeMap::from([("app".to_string(), "backend".to_string())]);
    assert!(closed.selects("shop", &labels));
    assert!(closed.name.starts_with("x (invalid: "), "{}", closed.name);
}
