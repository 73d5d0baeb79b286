use super::*;
use crate::mesh::model::WorkloadKey;

const GOOD: &str = r#"
mtls: STRICT
namespaces:
  lab: {mtls: PERMISSIVE}
workloads:
  - {namespace: shop, serviceAccount: backend, ip: 198.18.0.3, labels: {app: backend}, ports: {http: 8080}}
  - {namespace: shop, serviceAccount: backend, ip: 198.18.0.4, labels: {app: backend}, ports: {http: 8081}, ready: false}
  - {namespace: shop, serviceAccount: backend, ip: 198.18.0.5, labels: {app: backend}, terminating: true, ports: {http: 8080}}
  - {namespace: shop, serviceAccount: frontend, ip: 127.0.0.1, port: 18081, tunnel: "127.0.0.1:25008"}
services:
  - namespace: shop
    name: backend
    clusterIPs: [198.19.0.10, "fd00::10"]
    ports: [{name: http, port: 80, targetPort: http}, {name: admin, port: 9000}]
    selector: {app: backend}
  - namespace: shop
    name: external-db
    clusterIPs: [198.19.0.11]
    ports: [{name: postgres, port: 5432}]
    endpoints:
      - {ip: 198.18.0.99}
      - {ip: 198.18.0.98, ports: {postgres: 6432}, ready: false}
policies:
  - apiVersion: trellis.dev/v1alpha1
    kind: AuthorizationPolicy
    metadata: {name: allow-frontend, namespace: shop}
    spec: {selector: {matchLabels: {app: backend}}, ports: [8080], allow: [ns/shop/sa/frontend], mode: audit}
"#;

fn td() -> TrustDomain {
    TrustDomain::default()
}

fn endpoints(m: &MeshModel, service: &str, port: u16) -> Vec<String> {
    m.services[service]
        .ports
        .iter()
        .find(|p| p.port == port)
        .unwrap()
        .endpoints
        .iter()
        .map(|e| {
            format!(
                "{} {}{}{}",
                e.addr(),
                u8::from(e.ready),
                u8::from(e.serving),
                u8::from(e.terminating)
            )
        })
        .collect()
}

#[test]
fn a_mesh_file_becomes_a_model() {
    let m = parse(GOOD, Path::new("mesh.yaml"), &td()).unwrap();
    assert_eq!(m.workloads.len(), 4);
    let backend = WorkloadKey {
        ip: "198.18.0.3".parse().unwrap(),
        port: 0,
    };
    assert_eq!(
        m.workloads[&backend].tunnel,
        "198.18.0.3:15008".parse().unwrap()
    );
    let local = WorkloadKey {
        ip: "127.0.0.1".parse().unwrap(),
        port: 18081,
    };
    assert_eq!(
        m.workloads[&local].tunnel,
        "127.0.0.1:25008".parse().unwrap()
    );
    assert_eq!(m.policies[0].mode, super::super::crd::PolicyMode::Audit);
    assert_eq!(m.namespace_mtls["lab"], MtlsMode::Permissive);
}

#[test]
fn services_select_workloads_and_resolve_named_target_ports_per_workload() {
    let m = parse(GOOD, Path::new("mesh.yaml"), &td()).unwrap();
    assert_eq!(m.services["shop/backend"].addresses.len(), 2);
    assert_eq!(
        endpoints(&m, "shop/backend", 80),
        [
            "198.18.0.3:8080 110",
            "198.18.0.4:8081 000",
            "198.18.0.5:8080 011"
        ],
        "named port per workload; not ready; terminating but serving"
    );
    // No targetPort: the port itself, on every selected workload.
    assert_eq!(endpoints(&m, "shop/backend", 9000).len(), 3);
    assert_eq!(
        endpoints(&m, "shop/external-db", 5432),
        ["198.18.0.98:6432 000", "198.18.0.99:5432 110"]
    );
}

#[test]
fn bad_files_say_what_and_where() {
    let w = "workloads:\n  - {namespace: shop, serviceAccount: b, ip: 198.18.0.3}\n";
    let cases = [
        ("workloads: [{namespace: shop}]".to_string(), "serviceAccount"),
        (
            "workloads: [{namespace: shop, serviceAccount: b, ip: not-an-ip}]".into(),
            "ip",
        ),
        (
            "workloads: [{namespace: 'a/b', serviceAccount: b, ip: 198.18.0.1}]".into(),
            "workloads[0]",
        ),
        (
            format!("{w}  - {{namespace: shop, serviceAccount: c, ip: 198.18.0.3}}"),
            "workloads[1]: 198.18.0.3 is already",
        ),
        ("mtls: SOMETIMES".into(), "SOMETIMES"),
        ("surprise: 1".into(), "surprise"),
        (
            "policies: [{apiVersion: trellis.dev/v1alpha1, kind: AuthorizationPolicy, metadata: {name: p, namespace: shop}, spec: {allow: ['ns/*/sa/x']}}]".into(),
            "policies[0]",
        ),
        ("workloads: [".into(), "mesh.yaml"),
        (
            "services: [{namespace: shop, name: s, clusterIPs: [], ports: [{port: 80}]}]".into(),
            "services[0]: shop/s: clusterIPs is empty",
        ),
        (
            "services: [{namespace: shop, name: s, clusterIPs: [198.19.0.1], ports: [{port: 80}], selector: {a: b}, endpoints: [{ip: 198.18.0.9}]}]".into(),
            "not both",
        ),
        (
            "services: [{namespace: shop, name: s, clusterIPs: [198.19.0.1], ports: [{port: 80}, {port: 81}]}]".into(),
            "two ports named",
        ),
        (
            "services: [{namespace: shop, name: s, clusterIPs: [198.19.0.1], ports: [{name: h, port: 80, targetPort: h}], endpoints: [{ip: 198.18.0.9}]}]".into(),
            "endpoint 198.18.0.9 has no port \"h\"",
        ),
        (
            "services: [{namespace: shop, name: s, clusterIPs: [198.19.0.1], ports: [{port: 80}]}, {namespace: shop, name: s, clusterIPs: [198.19.0.2], ports: [{port: 80}]}]".into(),
            "services[1]: shop/s is declared twice",
        ),
        (
            "services: [{namespace: shop, name: s, clusterIPs: [198.19.0.1], ports: [{port: 70000}]}]".into(),
            "invalid u16",
        ),
    ];
    for (text, want) in cases {
        let err = parse(&text, Path::new("mesh.yaml"), &td())
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{text:?}: {err}");
    }
}

#[test]
fn a_file_of_ten_thousand_workloads_is_within_the_parser_budget() {
    let mut text = String::from("workloads:\n");
    for i in 0..30_000u32 {
        text.push_str(&format!(
            "  - {{namespace: ns{}, serviceAccount: sa{}, ip: 198.18.{}.{}, labels: {{app: a{}}}}}\n",
            i % 50,
            i % 1000,
            i / 250,
            i % 250 + 1,
            i % 1000
        ));
    }
    let m = parse(&text, Path::new("big.yaml"), &td()).unwrap();
    assert_eq!(m.workloads.len(), 30_000);
}

#[tokio::test]
async fn a_changed_file_is_republished_and_a_broken_one_keeps_the_last_good_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, GOOD).unwrap();
    let (publisher, rx) = Publisher::with_epoch(MeshModel::default(), 1);
    let stop = CancellationToken::new();
    tokio::spawn(watch_file(path.clone(), td(), publisher, stop.clone()));
    let wait = |v: u64| {
        let mut rx = rx.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|m| m.version >= v))
                .await
                .is_ok()
        }
    };
    assert!(wait(2).await);
    assert_eq!(rx.borrow().model.policies.len(), 1);
    std::fs::write(&path, GOOD.replace("mode: audit", "mode: enforce")).unwrap();
    assert!(wait(3).await);
    std::fs::write(&path, "workloads: [").unwrap();
    tokio::time::sleep(POLL * 4).await; // give the watcher several polls to (not) publish
    assert_eq!(rx.borrow().version, 3, "a broken file publishes nothing");
    assert_eq!(rx.borrow().model.policies.len(), 1);
    stop.cancel();
}
