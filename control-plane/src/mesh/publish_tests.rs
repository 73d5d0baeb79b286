use super::*;
use crate::mesh::model::tests::{policy, workload};
use crate::mesh::model::{Service, ServiceEndpoint, ServicePort};

fn base() -> MeshModel {
    let mut m = MeshModel::default();
    m.add_workload(workload(
        "shop",
        "backend",
        "198.18.0.3",
        &[("app", "backend")],
    ));
    m
}

fn key(ip: &str) -> WorkloadKey {
    WorkloadKey {
        ip: ip.parse().unwrap(),
        port: 0,
    }
}

fn backend_service(ips: &[&str]) -> Service {
    Service {
        namespace: "shop".into(),
        name: "backend".into(),
        addresses: vec!["198.19.0.10".parse().unwrap()],
        ports: vec![ServicePort {
            name: "http".into(),
            port: 80,
            endpoints: ips
                .iter()
                .map(|ip| ServiceEndpoint {
                    ip: ip.parse().unwrap(),
                    target_port: 8080,
                    ready: true,
                    serving: true,
                    terminating: false,
                })
                .collect(),
        }],
    }
}

#[test]
fn an_unchanged_model_publishes_nothing() {
    let (p, rx) = Publisher::with_epoch(base(), 7);
    assert!(p.publish(base()).is_none());
    assert_eq!(rx.borrow().version, 1);
    assert_eq!(rx.borrow().epoch, 7);
}

#[test]
fn a_new_workload_is_one_change_naming_its_key_and_identity() {
    let (p, rx) = Publisher::with_epoch(base(), 7);
    let mut m = base();
    m.add_workload(workload("shop", "frontend", "198.18.0.2", &[]));
    let change = p.publish(m).unwrap();
    assert_eq!(change.version, 2);
    assert_eq!(change.workloads, BTreeSet::from([key("198.18.0.2")]));
    assert_eq!(
        change
            .identities
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["spiffe://cluster.local/ns/shop/sa/frontend"]
    );
    assert!(!change.inbound);
    assert_eq!(rx.borrow().version, 2);
    assert_eq!(rx.borrow().index.len(), 2);
}

#[test]
fn a_relabelled_workload_names_its_identity_and_a_policy_edit_touches_every_inbound_view() {
    let (p, _rx) = Publisher::with_epoch(base(), 7);
    let mut relabelled = base();
    relabelled.add_workload(workload(
        "shop",
        "backend",
        "198.18.0.3",
        &[("app", "canary")],
    ));
    let change = p.publish(relabelled.clone()).unwrap();
    assert!(
        change.workloads.is_empty(),
        "labels are not sent to proxies: nothing to resend"
    );
    assert_eq!(
        change.identities.len(),
        1,
        "but its inbound view may differ"
    );
    let mut with_policy = relabelled;
    with_policy.policies = vec![policy("shop", "p", "canary", "ns/shop/sa/frontend")];
    let change = p.publish(with_policy).unwrap();
    assert!(change.inbound);
    assert!(change.workloads.is_empty());
}

#[test]
fn since_merges_every_change_after_the_version_held() {
    let (p, rx) = Publisher::with_epoch(base(), 7);
    let mut m = base();
    m.add_service(backend_service(&["198.18.0.3"]));
    p.publish(m.clone()).unwrap(); // v2: service added
    m.add_workload(workload("shop", "backend", "198.18.0.4", &[]));
    m.add_service(backend_service(&["198.18.0.3", "198.18.0.4"]));
    p.publish(m.clone()).unwrap(); // v3: workload + service changed
    m.workloads.remove(&key("198.18.0.3"));
    p.publish(m).unwrap(); // v4: workload removed
    let view = rx.borrow().clone();
    assert_eq!(view.version, 4);

    let Since::Changed(c) = view.since(7, 1) else {
        panic!("version 1 is in the history");
    };
    assert_eq!(c.version, 4);
    assert_eq!(
        c.workloads,
        BTreeSet::from([key("198.18.0.3"), key("198.18.0.4")])
    );
    assert_eq!(c.services, BTreeSet::from(["shop/backend".to_string()]));

    let Since::Changed(c) = view.since(7, 3) else {
        panic!("version 3 is in the history");
    };
    assert_eq!(c.workloads, BTreeSet::from([key("198.18.0.3")]));
    assert!(c.services.is_empty());

    assert_eq!(view.since(7, 4), Since::Nothing);
    assert_eq!(view.since(8, 3), Since::Everything, "another epoch");
    assert_eq!(view.since(7, 0), Since::Everything, "holds nothing");
    assert_eq!(view.since(7, 9), Since::Everything, "from the future");
    assert_eq!(view.resumable(), 1..=4);
}

#[test]
fn a_proxy_older_than_the_history_gets_everything() {
    let (p, rx) = Publisher::with_epoch(base(), 7);
    for i in 0..(HISTORY + 10) {
        let mut m = base();
        let last = u8::try_from(i % 200).unwrap() + 10;
        m.add_workload(workload("shop", "w", &format!("198.18.1.{last}"), &[]));
        m.add_workload(workload("shop", "v", &format!("198.18.2.{}", i / 200), &[]));
        p.publish(m);
    }
    let view = rx.borrow().clone();
    assert_eq!(view.history.len(), HISTORY);
    assert_eq!(view.since(7, 2), Since::Everything);
    assert!(matches!(view.since(7, view.version - 5), Since::Changed(_)));
    let oldest = *view.resumable().start();
    assert!(matches!(view.since(7, oldest), Since::Changed(_)));
    assert_eq!(view.since(7, oldest - 1), Since::Everything);
}
