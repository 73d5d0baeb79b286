//! Against the wire format: Service and EndpointSlice lists and watch streams recorded from a
//! real API server (v1.28; `testdata/services/README.md` tells the scenario).

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::*;
use crate::mesh::model::MeshModel;

const SERVICES: &str = include_str!("../../../../testdata/services/services-list.json");
const SLICES: &str = include_str!("../../../../testdata/services/endpointslices-list.json");
const SLICES_WATCH: &str = include_str!("../../../../testdata/services/endpointslices-watch.jsonl");
const SERVICES_WATCH: &str = include_str!("../../../../testdata/services/services-watch.jsonl");
const TARGETPORT_WATCH: &str =
    include_str!("../../../../testdata/services/endpointslices-watch-targetport.jsonl");

/// Objects by name, as a reflector's store holds them.
fn list<T: serde::de::DeserializeOwned>(json: &str) -> BTreeMap<String, T> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            let name = item["metadata"]["name"].as_str().unwrap().to_owned();
            (name, serde_json::from_value(item.clone()).unwrap())
        })
        .collect()
}

/// Applies watch events (ADDED / MODIFIED / DELETED) to `store`, `n` lines at most.
fn replay<T: serde::de::DeserializeOwned>(store: &mut BTreeMap<String, T>, jsonl: &str, n: usize) {
    for line in jsonl.lines().filter(|l| !l.trim().is_empty()).take(n) {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        let name = event["object"]["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_owned();
        match event["type"].as_str().unwrap() {
            "DELETED" => {
                store.remove(&name);
            }
            _ => {
                store.insert(
                    name,
                    serde_json::from_value(event["object"].clone()).unwrap(),
                );
            }
        }
    }
}

fn model(
    services: &BTreeMap<String, KubeService>,
    slices: &BTreeMap<String, EndpointSlice>,
) -> MeshModel {
    let mut m = MeshModel::default();
    for svc in services.values() {
        let name = svc.metadata.name.clone();
        let own = slices
            .values()
            .filter(|s| owner_of(s).map(|(_, n)| Some(n)) == Some(name.clone()));
        if let Some(s) = service_of(svc, own) {
            m.add_service(s);
        }
    }
    m
}

/// `ip:target ready/serving/terminating` per endpoint of `service` port `port`.
fn endpoints(m: &MeshModel, service: &str, port: u16) -> Vec<String> {
    m.services[service]
        .ports
        .iter()
        .find(|p| p.port == port)
        .unwrap()
        .endpoints
        .iter()
        .map(|e| {
            let flag = |b: bool, c: char| if b { c } else { '-' };
            format!(
                "{}:{} {}{}{}",
                e.ip,
                e.target_port,
                flag(e.ready, 'R'),
                flag(e.serving, 'S'),
                flag(e.terminating, 'T')
            )
        })
        .collect()
}

#[test]
fn the_recorded_lists_become_services_with_resolved_target_ports() {
    let m = model(&list(SERVICES), &list(SLICES));
    let names: Vec<&str> = m.services.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["shop/backend", "shop/external-db"],
        "headless and ExternalName Services are not modelled"
    );
    let backend = &m.services["shop/backend"];
    assert_eq!(
        backend.addresses,
        ["127.96.21.217".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(
        backend
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.port))
            .collect::<Vec<_>>(),
        [("http", 80), ("metrics", 9090)]
    );
    // `http` is a named targetPort: the slice resolved it to 8080.
    assert_eq!(
        endpoints(&m, "shop/backend", 80),
        [
            "198.18.0.21:8080 RS-",
            "198.18.0.22:8080 RS-",
            "198.18.0.23:8080 ---"
        ]
    );
    assert_eq!(
        endpoints(&m, "shop/backend", 9090)[0],
        "198.18.0.21:9090 RS-"
    );
    // A Service without a selector: its hand-made slice, with only `ready` set.
    assert_eq!(
        endpoints(&m, "shop/external-db", 5432),
        ["198.18.0.99:5432 RS-"]
    );
}

#[test]
fn the_recorded_watch_streams_scale_up_drain_and_remove_endpoints() {
    let services = list::<KubeService>(SERVICES);
    let mut slices = list::<EndpointSlice>(SLICES);
    let at = |slices: &BTreeMap<String, EndpointSlice>| {
        endpoints(&model(&services, slices), "shop/backend", 80)
    };
    // Events come in pairs (the Service's slice and the headless one's).
    replay(&mut slices, SLICES_WATCH, 2);
    assert_eq!(
        at(&slices),
        [
            "198.18.0.21:8080 RS-",
            "198.18.0.22:8080 RS-",
            "198.18.0.23:8080 ---",
            "198.18.0.24:8080 RS-"
        ],
        "scale to 4"
    );
    replay(&mut slices, SLICES_WATCH, 8);
    let all = at(&slices);
    assert!(
        !all.iter().any(|e| e.starts_with("198.18.0.21")),
        "the force-deleted pod is gone: {all:?}"
    );
    assert_eq!(
        all,
        [
            "198.18.0.22:8080 RS-",
            "198.18.0.23:8080 RS-",
            "198.18.0.24:8080 RS-"
        ]
    );
    // Somewhere in between, the gracefully deleted pod was terminating but still serving.
    let mut seen_terminating = false;
    let mut replayed = list::<EndpointSlice>(SLICES);
    for n in 1..=8 {
        replayed = list::<EndpointSlice>(SLICES);
        replay(&mut replayed, SLICES_WATCH, n);
        seen_terminating |= at(&replayed).contains(&"198.18.0.21:8080 -ST".to_string());
    }
    assert!(seen_terminating, "{:?}", at(&replayed));
}

#[test]
fn a_changed_target_port_reaches_the_endpoints_through_the_slice() {
    let mut services = list::<KubeService>(SERVICES);
    let mut slices = list::<EndpointSlice>(SLICES);
    replay(&mut slices, SLICES_WATCH, 8);
    replay(&mut services, SERVICES_WATCH, 1);
    replay(&mut slices, TARGETPORT_WATCH, 1);
    let m = model(&services, &slices);
    assert!(
        endpoints(&m, "shop/backend", 80)
            .iter()
            .all(|e| e.contains(":8081 ")),
        "{:?}",
        endpoints(&m, "shop/backend", 80)
    );
    replay(&mut services, SERVICES_WATCH, 2);
    replay(&mut slices, TARGETPORT_WATCH, 2);
    let m = model(&services, &slices);
    assert!(
        endpoints(&m, "shop/backend", 80)
            .iter()
            .all(|e| e.contains(":8080 "))
    );
}

#[test]
fn udp_ports_fqdn_slices_and_unallocated_services_are_left_out() {
    let svc: KubeService = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "dns", "namespace": "kube-system"},
        "spec": {"clusterIP": "198.19.0.10", "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"}
        ]}
    }))
    .unwrap();
    let fqdn: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "x", "namespace": "kube-system"},
        "addressType": "FQDN",
        "endpoints": [{"addresses": ["example.com"]}],
        "ports": [{"name": "dns-tcp", "port": 53}]
    }))
    .unwrap();
    let s = service_of(&svc, [&fqdn]).unwrap();
    assert_eq!(s.ports.len(), 1);
    assert_eq!(s.ports[0].name, "dns-tcp");
    assert!(s.ports[0].endpoints.is_empty());
    let pending: KubeService = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p", "namespace": "a"}, "spec": {"ports": [{"port": 80}]}
    }))
    .unwrap();
    assert!(service_of(&pending, []).is_none());
}
