use super::*;

/// Pods as `(namespace, name, uid, service account, node)`.
struct Pods(
    Vec<(
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
    )>,
);

fn td() -> TrustDomain {
    TrustDomain::new("cluster.local").unwrap()
}

fn sa(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::for_service_account(&td(), ns, sa).unwrap()
}

impl NodePods for Pods {
    fn pod(&self, namespace: &str, name: &str) -> Option<PodFacts> {
        let (ns, _, uid, account, node) =
            self.0.iter().find(|p| p.0 == namespace && p.1 == name)?;
        Some(PodFacts {
            uid: uid.to_string(),
            id: sa(ns, account),
            node: Some(node.to_string()).filter(|n| !n.is_empty()),
        })
    }

    fn runs_on(&self, node: &str, id: &SpiffeId) -> bool {
        self.0
            .iter()
            .any(|(ns, _, _, account, n)| *n == node && sa(ns, account) == *id)
    }
}

fn cluster() -> Pods {
    Pods(vec![
        ("istio-system", "ztunnel-a", "uid-za", "ztunnel", "node-a"),
        ("istio-system", "ztunnel-b", "uid-zb", "ztunnel", "node-b"),
        ("istio-system", "ztunnel-x", "uid-zx", "ztunnel", ""),
        ("shop", "web-1", "uid-w1", "frontend", "node-a"),
        ("shop", "db-1", "uid-d1", "backend", "node-b"),
    ])
}

/// A caller authenticated as `ns/sa`, its token bound to `pod` (name, uid) and maybe a node.
fn caller(ns: &str, account: &str, pod: Option<(&str, &str)>, node: Option<&str>) -> Attested {
    Attested {
        id: sa(ns, account),
        pod: pod.map(|(name, _)| name.to_owned()),
        pod_uid: pod.map(|(_, uid)| uid.to_owned()),
        node: node.map(str::to_owned),
    }
}

#[test]
fn only_node_agents_get_identities_of_pods_on_their_own_node() {
    let agents = [sa("istio-system", "ztunnel")];
    let ztunnel_a = caller(
        "istio-system",
        "ztunnel",
        Some(("ztunnel-a", "uid-za")),
        None,
    );
    let frontend = "spiffe://cluster.local/ns/shop/sa/frontend";
    let backend = "spiffe://cluster.local/ns/shop/sa/backend";
    let cases: Vec<(&str, Attested, &str, Result<&str, &str>)> = vec![
        (
            "a node agent gets a pod of its node",
            ztunnel_a.clone(),
            frontend,
            Ok(frontend),
        ),
        (
            "the node given in the token must agree with the pod's",
            caller(
                "istio-system",
                "ztunnel",
                Some(("ztunnel-a", "uid-za")),
                Some("node-a"),
            ),
            frontend,
            Ok(frontend),
        ),
        (
            "a pod of another node is refused",
            ztunnel_a.clone(),
            backend,
            Err("impersonation_not_on_node"),
        ),
        (
            "an identity no pod runs as is refused",
            ztunnel_a.clone(),
            "spiffe://cluster.local/ns/shop/sa/nobody",
            Err("impersonation_not_on_node"),
        ),
        (
            "a workload is not a node agent",
            caller("shop", "frontend", Some(("web-1", "uid-w1")), None),
            frontend,
            Err("impersonation_not_node_agent"),
        ),
        (
            "a node agent of another namespace is not one",
            caller(
                "kube-system",
                "ztunnel",
                Some(("ztunnel-a", "uid-za")),
                None,
            ),
            frontend,
            Err("impersonation_not_node_agent"),
        ),
        (
            "a token bound to no pod gives no node",
            caller("istio-system", "ztunnel", None, None),
            frontend,
            Err("impersonation_not_pod_bound"),
        ),
        (
            "a re-created pod of the same name is not the caller",
            caller(
                "istio-system",
                "ztunnel",
                Some(("ztunnel-a", "uid-old")),
                None,
            ),
            frontend,
            Err("impersonation_caller_pod_unknown"),
        ),
        (
            "an unknown pod is not the caller",
            caller(
                "istio-system",
                "ztunnel",
                Some(("ztunnel-z", "uid-zz")),
                None,
            ),
            frontend,
            Err("impersonation_caller_pod_unknown"),
        ),
        (
            "a node in the token that differs from the pod's is refused",
            caller(
                "istio-system",
                "ztunnel",
                Some(("ztunnel-a", "uid-za")),
                Some("node-b"),
            ),
            frontend,
            Err("impersonation_caller_pod_unknown"),
        ),
        (
            "a node agent pod not scheduled yet has no node",
            caller(
                "istio-system",
                "ztunnel",
                Some(("ztunnel-x", "uid-zx")),
                None,
            ),
            frontend,
            Err("impersonation_caller_pod_unknown"),
        ),
        (
            "another trust domain is refused",
            ztunnel_a.clone(),
            "spiffe://other.example/ns/shop/sa/frontend",
            Err("impersonation_invalid_identity"),
        ),
        (
            "a SPIFFE ID that is not ns/sa is refused",
            ztunnel_a.clone(),
            "spiffe://cluster.local/workload/frontend",
            Err("impersonation_invalid_identity"),
        ),
        (
            "garbage is refused",
            ztunnel_a,
            "frontend",
            Err("impersonation_invalid_identity"),
        ),
    ];
    for (case, who, requested, want) in cases {
        let got = decide(&who, requested, &td(), &agents, &cluster());
        match (got, want) {
            (Ok(id), Ok(want)) => assert_eq!(id.to_string(), want, "{case}"),
            (Err(e), Err(reason)) => assert_eq!(e.reason(), reason, "{case}: {e}"),
            (got, want) => panic!("{case}: got {got:?}, expected {want:?}"),
        }
    }
}

#[test]
fn refusals_name_the_rule_that_refused() {
    let agents = [sa("istio-system", "ztunnel")];
    let workload = caller("shop", "frontend", Some(("web-1", "uid-w1")), None);
    let requested = "spiffe://cluster.local/ns/shop/sa/backend";
    let err = decide(&workload, requested, &td(), &agents, &cluster()).unwrap_err();
    assert!(err.to_string().contains("--node-agents"), "{err}");
    let ztunnel = caller(
        "istio-system",
        "ztunnel",
        Some(("ztunnel-a", "uid-za")),
        None,
    );
    let err = decide(&ztunnel, requested, &td(), &agents, &cluster()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no pod on node \"node-a\" (the node agent's) runs as spiffe://cluster.local/ns/shop/sa/backend"
    );
}

#[test]
fn with_no_node_agents_configured_nobody_impersonates() {
    let ztunnel = caller(
        "istio-system",
        "ztunnel",
        Some(("ztunnel-a", "uid-za")),
        None,
    );
    let requested = "spiffe://cluster.local/ns/shop/sa/frontend";
    let err = decide(&ztunnel, requested, &td(), &[], &cluster()).unwrap_err();
    assert_eq!(err.reason(), "impersonation_not_node_agent");
}
