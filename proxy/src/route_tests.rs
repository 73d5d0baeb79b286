use std::sync::Arc;

use super::*;
use crate::config::StaticWorkload;
use crate::services::{Endpoint, EndpointLoad, Health, ServiceEntry, ServicePort};

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn service(name: &str, vip: &str, port: u16, endpoints: &[&str]) -> ServiceEntry {
    ServiceEntry {
        name: name.into(),
        addresses: vec![vip.parse().unwrap()],
        ports: vec![ServicePort::new(
            port,
            String::new(),
            endpoints
                .iter()
                .map(|e| Endpoint {
                    addr: a(e),
                    health: Health::Ready,
                    load: Arc::new(EndpointLoad::default()),
                })
                .collect(),
        )],
    }
}

fn state() -> MeshState {
    let ws: Vec<StaticWorkload> = [
        "198.18.0.3=spiffe://cluster.local/ns/shop/sa/backend",
        "198.18.0.4=spiffe://cluster.local/ns/shop/sa/backend",
        "127.0.0.1:8081=spiffe://cluster.local/ns/shop/sa/local@127.0.0.1:25008",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    let mut st = MeshState::from_static(&ws);
    st.insert_service(service(
        "shop/backend",
        "198.19.0.10",
        80,
        &["198.18.0.3:8080", "198.18.0.4:8080"],
    ));
    // One meshed endpoint among unmeshed ones: still ours to balance.
    st.insert_service(service(
        "shop/mixed",
        "198.19.0.11",
        80,
        &["198.18.0.9:80", "198.18.0.3:8080"],
    ));
    st.insert_service(service(
        "shop/legacy",
        "198.19.0.12",
        80,
        &["198.18.0.9:80"],
    ));
    st.insert_service(service("shop/empty", "198.19.0.13", 80, &[]));
    st
}

#[test]
fn routing_table() {
    let own = [a("0.0.0.0:15001"), a("0.0.0.0:15006"), a("127.0.0.1:15000")];
    let st = state();
    let cases: &[(&str, Unmeshed, &str)] = &[
        (
            "198.18.0.3:8080",
            Unmeshed::Allow,
            "tunnel backend 198.18.0.3:15008",
        ),
        (
            "198.18.0.3:9999",
            Unmeshed::Deny,
            "tunnel backend 198.18.0.3:15008",
        ),
        (
            "127.0.0.1:8081",
            Unmeshed::Deny,
            "tunnel local 127.0.0.1:25008",
        ),
        ("127.0.0.1:8082", Unmeshed::Allow, "passthrough"),
        ("198.18.0.9:80", Unmeshed::Allow, "passthrough"),
        (
            "198.18.0.9:80",
            Unmeshed::Deny,
            "refuse: destination is not in the mesh",
        ),
        (
            "198.18.0.2:15001",
            Unmeshed::Allow,
            "refuse: destination is the proxy itself",
        ),
        (
            "127.0.0.1:15000",
            Unmeshed::Allow,
            "refuse: destination is the proxy itself",
        ),
        // Services.
        (
            "198.19.0.10:80",
            Unmeshed::Allow,
            "service shop/backend:80 (2)",
        ),
        (
            "198.19.0.11:80",
            Unmeshed::Deny,
            "service shop/mixed:80 (2)",
        ),
        // No endpoint meshed: kube-proxy's business.
        ("198.19.0.12:80", Unmeshed::Allow, "passthrough"),
        (
            "198.19.0.12:80",
            Unmeshed::Deny,
            "refuse: destination is not in the mesh",
        ),
        // No endpoint at all: refused by the balancer with the Service's name.
        (
            "198.19.0.13:80",
            Unmeshed::Allow,
            "service shop/empty:80 (0)",
        ),
        // Another port of a ClusterIP is not the Service.
        ("198.19.0.10:81", Unmeshed::Allow, "passthrough"),
    ];
    for (dst, unmeshed, want) in cases {
        let got = match route(a(dst), &st, &own, *unmeshed) {
            Route::Tunnel { peer, target } => {
                assert_eq!(target, a(dst));
                format!(
                    "tunnel {} {}",
                    peer.id.service_account().unwrap(),
                    peer.tunnel
                )
            }
            Route::Service(s) => format!("service {} ({})", s.name(), s.port().endpoints.len()),
            Route::Passthrough(d) => {
                assert_eq!(d, a(dst));
                "passthrough".into()
            }
            Route::Refuse(r) => format!("refuse: {r}"),
        };
        assert_eq!(&got, want, "{dst} {unmeshed:?}");
    }
}

#[test]
fn a_replaced_or_removed_service_frees_its_cluster_ips() {
    let mut st = state();
    st.insert_service(service(
        "shop/backend",
        "198.19.0.20",
        80,
        &["198.18.0.3:8080"],
    ));
    assert!(
        st.service_at(a("198.19.0.10:80")).is_none(),
        "old ClusterIP gone"
    );
    assert!(st.service_at(a("198.19.0.20:80")).is_some());
    st.remove_service("shop/backend");
    assert!(st.service_at(a("198.19.0.20:80")).is_none());
    assert_eq!(st.service_count(), 3);
}
