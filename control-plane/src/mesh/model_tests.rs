use super::*;
use crate::mesh::crd::{AuthorizationPolicy, Policy};

pub(crate) fn workload(ns: &str, sa: &str, ip: &str, labels: &[(&str, &str)]) -> Workload {
    let ip: IpAddr = ip.parse().unwrap();
    Workload {
        namespace: ns.into(),
        service_account: sa.into(),
        ip,
        port: 0,
        tunnel: SocketAddr::new(ip, TUNNEL_PORT),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

pub(crate) fn policy(ns: &str, name: &str, app: &str, allow: &str) -> Policy {
    let yaml = format!(
        "apiVersion: trellis.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{selector: {{matchLabels: {{app: {app}}}}}, ports: [8080], allow: [\"{allow}\"]}}\n"
    );
    let p: AuthorizationPolicy = serde_saphyr::from_str(&yaml).unwrap();
    Policy::from_resource(&p, &TrustDomain::default()).unwrap()
}

fn model() -> MeshModel {
    let mut m = MeshModel {
        trust_domain: TrustDomain::default(),
        policies: vec![
            policy("shop", "allow-fe", "backend", "ns/shop/sa/frontend"),
            policy("shop", "canary", "backend-canary", "ns/shop/sa/*"),
        ],
        default_mtls: MtlsMode::Strict,
        namespace_mtls: BTreeMap::from([("lab".to_string(), MtlsMode::Permissive)]),
        ..MeshModel::default()
    };
    for w in [
        workload("shop", "frontend", "198.18.0.2", &[("app", "frontend")]),
        workload("shop", "backend", "198.18.0.3", &[("app", "backend")]),
        workload(
            "shop",
            "backend",
            "198.18.0.5",
            &[("app", "backend-canary")],
        ),
        workload("lab", "tools", "198.18.0.9", &[("app", "backend")]),
    ] {
        m.add_workload(w);
    }
    m
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://cluster.local/{s}")).unwrap()
}

fn inbound(m: &MeshModel, caller: &str, ip: Option<&str>) -> InboundView {
    m.inbound_for(
        &m.identity_index(),
        &id(caller),
        ip.map(|i| i.parse().unwrap()),
    )
}

#[test]
fn the_caller_gets_the_rules_of_the_policies_selecting_its_pod() {
    let m = model();
    let v = inbound(&m, "ns/shop/sa/backend", Some("198.18.0.3"));
    let names: Vec<&str> = v.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["shop/allow-fe"]);
    assert_eq!(
        v.rules[0].allow,
        ["spiffe://cluster.local/ns/shop/sa/frontend"]
    );
    assert_eq!(v.mtls, MtlsMode::Strict);
}

#[test]
fn the_ip_picks_between_pods_of_one_identity_and_without_it_all_count() {
    let m = model();
    let canary = inbound(&m, "ns/shop/sa/backend", Some("198.18.0.5"));
    assert_eq!(canary.rules.len(), 1);
    assert_eq!(canary.rules[0].name, "shop/canary");
    let unknown_ip = inbound(&m, "ns/shop/sa/backend", Some("127.0.0.1"));
    assert_eq!(unknown_ip.rules.len(), 2);
}

#[test]
fn a_policy_never_selects_pods_of_another_namespace() {
    let m = model();
    let v = inbound(&m, "ns/lab/sa/tools", None);
    assert!(
        v.rules.is_empty(),
        "lab/tools has app=backend but the policy is in shop"
    );
    assert_eq!(v.mtls, MtlsMode::Permissive, "namespace override");
}

#[test]
fn an_unknown_caller_gets_no_rules_and_the_mesh_default() {
    let m = model();
    let v = inbound(&m, "ns/elsewhere/sa/x", None);
    assert!(v.rules.is_empty());
    assert_eq!(v.mtls, MtlsMode::Strict);
}

#[test]
fn services_compare_equal_whatever_the_order_of_their_endpoints() {
    let ep = |ip: &str, ready| ServiceEndpoint {
        ip: ip.parse().unwrap(),
        target_port: 8080,
        ready,
        serving: ready,
        terminating: false,
    };
    let service = |eps: Vec<ServiceEndpoint>| Service {
        namespace: "shop".into(),
        name: "backend".into(),
        addresses: vec!["198.19.0.10".parse().unwrap()],
        ports: vec![ServicePort {
            name: "http".into(),
            port: 80,
            endpoints: eps,
        }],
    };
    let (mut a, mut b) = (MeshModel::default(), MeshModel::default());
    a.add_service(service(vec![
        ep("198.18.0.22", true),
        ep("198.18.0.21", false),
    ]));
    b.add_service(service(vec![
        ep("198.18.0.21", false),
        ep("198.18.0.22", true),
    ]));
    assert_eq!(a, b);
    assert!(a.services.contains_key("shop/backend"));
}
