use std::net::SocketAddr;

use super::*;
use crate::mesh::model::tests::{policy, workload};
use crate::mesh::model::{Service, ServiceEndpoint, ServicePort};
use crate::mesh::{MeshModel, Publisher};

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://cluster.local/{s}")).unwrap()
}

fn bundle() -> Arc<TrustBundle> {
    let td = trellis_ca::TrustDomain::default();
    let now = SystemTime::now();
    let material = trellis_ca::CaMaterial::generate_root(&td, now).unwrap();
    let ca = trellis_ca::CertificateAuthority::load(td, &material, now).unwrap();
    Arc::new(ca.bundle().clone())
}

fn base() -> MeshModel {
    let mut m = MeshModel::default();
    m.add_workload(workload(
        "shop",
        "backend",
        "198.18.0.3",
        &[("app", "backend")],
    ));
    m.add_workload(workload(
        "shop",
        "frontend",
        "198.18.0.2",
        &[("app", "frontend")],
    ));
    m
}

fn stream(caller: &str, ip: &str, held: (u64, u64)) -> WatchStream {
    let watchers = Arc::new(Watchers::default());
    let handle = watchers.register(WatcherInfo {
        id: id(caller),
        node: "pod".into(),
        peer: SocketAddr::new(ip.parse().unwrap(), 40000),
        proxy_version: "test".into(),
        connected_at: SystemTime::now(),
        sent: (0, 0),
        acked: held,
        resyncs: 0,
        cert: None,
        mtls: None,
    });
    WatchStream {
        caller: id(caller),
        peer_ip: ip.parse().unwrap(),
        held,
        last_inbound: None,
        last_bundle: None,
        resync: false,
        handle,
        parts: Arc::new(PartCache::default()),
        metrics: None,
        pushed_full: false,
    }
}

/// The messages in `frames`, as a proxy decodes them.
fn decode(frames: Vec<Bytes>) -> Vec<MeshUpdate> {
    use prost::Message as _;
    let bytes: Vec<u8> = frames.iter().flat_map(|b| b.iter().copied()).collect();
    let mut rest = bytes.as_slice();
    let mut out = Vec::new();
    while !rest.is_empty() {
        assert_eq!(rest[0], 0, "not compressed");
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        out.push(MeshUpdate::decode(&rest[5..5 + len]).unwrap());
        rest = &rest[5 + len..];
    }
    out
}

impl WatchStream {
    fn next_messages(
        &mut self,
        view: &MeshView,
        bundle: &Arc<TrustBundle>,
        first: bool,
    ) -> Vec<MeshUpdate> {
        decode(self.next_update(view, bundle, first))
    }
}

fn ips(u: &MeshUpdate) -> Vec<String> {
    u.workloads
        .iter()
        .map(|w| {
            let octets: [u8; 4] = w.ip.as_slice().try_into().unwrap();
            std::net::Ipv4Addr::from(octets).to_string()
        })
        .collect()
}

#[test]
fn the_first_update_is_the_full_state_with_inbound_view_and_bundle() {
    let (_p, views) = Publisher::with_epoch(base(), 9);
    let mut s = stream("ns/shop/sa/backend", "198.18.0.3", (0, 0));
    let b = bundle();
    let msgs = s.next_messages(&views.borrow(), &b, true);
    assert_eq!(msgs.len(), 1);
    let u = &msgs[0];
    assert!(u.full && !u.more);
    assert_eq!((u.epoch, u.version), (9, 1));
    assert_eq!(ips(u), ["198.18.0.2", "198.18.0.3"]);
    assert!(u.inbound.is_some());
    assert_eq!(u.trust_bundle.as_ref().unwrap().roots_pem.len(), 1);
    // Nothing changed: nothing to send.
    assert!(s.next_messages(&views.borrow(), &b, false).is_empty());
}

#[test]
fn a_change_sends_only_what_changed_on_top_of_the_version_held() {
    let (p, views) = Publisher::with_epoch(base(), 9);
    let b = bundle();
    let mut s = stream("ns/shop/sa/frontend", "198.18.0.2", (0, 0));
    s.next_messages(&views.borrow(), &b, true);
    let mut m = base();
    m.add_workload(workload(
        "shop",
        "backend",
        "198.18.0.4",
        &[("app", "backend")],
    ));
    m.workloads.remove(&crate::mesh::model::WorkloadKey {
        ip: "198.18.0.3".parse().unwrap(),
        port: 0,
    });
    p.publish(m);
    let msgs = s.next_messages(&views.borrow(), &b, false);
    assert_eq!(msgs.len(), 1);
    let u = &msgs[0];
    assert!(!u.full);
    assert_eq!((u.base_version, u.version), (1, 2));
    assert_eq!(ips(u), ["198.18.0.4"]);
    assert_eq!(u.removed_workloads.len(), 1);
    assert!(
        u.inbound.is_none(),
        "the frontend's inbound view did not change"
    );
    assert!(u.trust_bundle.is_none(), "the bundle did not change");
}

#[test]
fn a_slow_proxy_gets_one_update_covering_every_change_it_missed() {
    let (p, views) = Publisher::with_epoch(base(), 9);
    let b = bundle();
    let mut s = stream("ns/shop/sa/frontend", "198.18.0.2", (0, 0));
    s.next_messages(&views.borrow(), &b, true);
    let mut m = base();
    for last in 10..15 {
        m.add_workload(workload("shop", "w", &format!("198.18.0.{last}"), &[]));
        p.publish(m.clone());
    }
    let msgs = s.next_messages(&views.borrow(), &b, false);
    assert_eq!(msgs.len(), 1);
    assert_eq!((msgs[0].base_version, msgs[0].version), (1, 6));
    assert_eq!(msgs[0].workloads.len(), 5);
}

#[test]
fn policy_edits_reach_the_selected_proxy_only_when_its_view_changes() {
    let (p, views) = Publisher::with_epoch(base(), 9);
    let b = bundle();
    let mut backend = stream("ns/shop/sa/backend", "198.18.0.3", (0, 0));
    let mut frontend = stream("ns/shop/sa/frontend", "198.18.0.2", (0, 0));
    backend.next_messages(&views.borrow(), &b, true);
    frontend.next_messages(&views.borrow(), &b, true);
    let mut m = base();
    m.policies = vec![policy("shop", "allow-fe", "backend", "ns/shop/sa/frontend")];
    p.publish(m);
    let to_backend = backend.next_messages(&views.borrow(), &b, false);
    assert_eq!(to_backend.len(), 1);
    let inbound = to_backend[0].inbound.as_ref().unwrap();
    assert_eq!(inbound.rules[0].name, "shop/allow-fe");
    assert!(!inbound.rules[0].allow_unauthenticated);
    // The `unauthenticated` entry travels as its own field, not as an identity.
    let mut m = base();
    m.policies = vec![policy("shop", "allow-fe", "backend", "unauthenticated")];
    p.publish(m);
    let to_backend = backend.next_messages(&views.borrow(), &b, false);
    let inbound = to_backend[0].inbound.as_ref().unwrap();
    assert!(inbound.rules[0].allow_unauthenticated);
    assert!(inbound.rules[0].allow.is_empty(), "{inbound:?}");
    let to_frontend = frontend.next_messages(&views.borrow(), &b, false);
    assert_eq!(to_frontend.len(), 1, "the version moves on for everyone");
    assert!(
        to_frontend[0].inbound.is_none() && to_frontend[0].workloads.is_empty(),
        "no policy selects the frontend: nothing else to send it"
    );
    assert!(
        frontend
            .next_messages(&views.borrow(), &b, false)
            .is_empty()
    );
}

#[test]
fn a_proxy_that_could_not_apply_an_update_gets_the_full_state() {
    let (_p, views) = Publisher::with_epoch(base(), 9);
    let b = bundle();
    let mut s = stream("ns/shop/sa/frontend", "198.18.0.2", (0, 0));
    s.next_messages(&views.borrow(), &b, true);
    s.on_request(&WatchRequest {
        epoch: 9,
        version: 0,
        error: "update applies on version 1 but I hold 0".into(),
        ..WatchRequest::default()
    });
    let msgs = s.next_messages(&views.borrow(), &b, false);
    assert!(msgs[0].full);
    assert_eq!(ips(&msgs[0]).len(), 2);
}

#[test]
fn a_reconnecting_proxy_of_the_same_epoch_resumes_and_of_another_gets_everything() {
    let (p, views) = Publisher::with_epoch(base(), 9);
    let b = bundle();
    let mut m = base();
    m.add_workload(workload("shop", "w", "198.18.0.20", &[]));
    p.publish(m);
    let mut resumed = stream("ns/shop/sa/frontend", "198.18.0.2", (9, 1));
    let msgs = resumed.next_messages(&views.borrow(), &b, true);
    assert!(!msgs[0].full);
    assert_eq!(ips(&msgs[0]), ["198.18.0.20"]);
    assert!(
        msgs[0].inbound.is_some() && msgs[0].trust_bundle.is_some(),
        "a new stream always restates the inbound view and bundle"
    );
    let mut other_epoch = stream("ns/shop/sa/frontend", "198.18.0.2", (8, 2));
    assert!(other_epoch.next_messages(&views.borrow(), &b, true)[0].full);
}

#[test]
fn a_large_update_is_split_and_only_its_last_message_ends_it() {
    let mut m = MeshModel::default();
    for i in 0..3000u32 {
        m.add_workload(workload(
            "shop",
            &format!("sa{i}"),
            &format!("198.18.{}.{}", i / 250, i % 250 + 1),
            &[],
        ));
    }
    let endpoints = (0..200)
        .map(|i| ServiceEndpoint {
            ip: format!("198.18.1.{i}").parse().unwrap(),
            target_port: 8080,
            ready: true,
            serving: true,
            terminating: false,
        })
        .collect();
    m.add_service(Service {
        namespace: "shop".into(),
        name: "big".into(),
        addresses: vec!["198.19.0.1".parse().unwrap()],
        ports: vec![ServicePort {
            name: String::new(),
            port: 80,
            endpoints,
        }],
    });
    let part = GlobalPart::of(&m, &Since::Everything);
    let encoded = EncodedPart::encode(&part, 32 * 1024);
    assert!(encoded.chunks.len() > 3, "{} chunks", encoded.chunks.len());
    assert!(encoded.full);
    assert!(encoded.chunks.iter().all(|c| c.len() <= 32 * 1024));
    let parts: Vec<MeshUpdate> = encoded
        .chunks
        .iter()
        .map(|c| prost::Message::decode(c.clone()).unwrap())
        .collect();
    let total: usize = parts.iter().map(|p| p.workloads.len()).sum();
    assert_eq!(total, 3000);
    assert_eq!(parts.iter().map(|p| p.services.len()).sum::<usize>(), 1);

    for i in 3000..25_000u32 {
        m.add_workload(workload(
            "shop",
            &format!("sa{i}"),
            &format!("198.18.{}.{}", i / 250, i % 250 + 1),
            &[],
        ));
    }
    let (_p, views) = Publisher::with_epoch(m, 9);
    let mut s = stream("ns/shop/sa/sa1", "198.18.0.2", (0, 0));
    let msgs = s.next_messages(&views.borrow(), &bundle(), true);
    assert!(msgs.len() > 1, "25,000 workloads in one message");
    assert!(msgs[..msgs.len() - 1].iter().all(|m| m.more));
    assert!(!msgs[msgs.len() - 1].more);
    assert!(msgs.iter().all(|m| m.version == 1 && m.epoch == 9));
    assert!(msgs[0].inbound.is_some() && msgs[1..].iter().all(|m| m.inbound.is_none()));
    assert!(
        msgs[0].full && msgs[1..].iter().all(|m| !m.full),
        "only the first says full"
    );
    assert_eq!(
        msgs.iter().map(|m| m.workloads.len()).sum::<usize>(),
        25_000
    );
}

#[tokio::test]
async fn a_new_stream_is_held_until_the_source_was_read_in_full_then_gets_all_of_it() {
    use futures_util::FutureExt as _;
    let (p, views) = Publisher::with_epoch(MeshModel::default(), 9);
    p.set_waiting_for(vec!["Pods", "Services"]);
    let mut held = Box::pin(until_complete(views.clone(), Duration::from_secs(600)));
    assert!((&mut held).now_or_never().is_none(), "not held");
    p.publish(base());
    p.set_waiting_for(vec!["Services"]);
    assert!(
        (&mut held).now_or_never().is_none(),
        "released before every kind was listed"
    );
    p.set_waiting_for(Vec::new());
    held.await.unwrap();
    let mut s = stream("ns/shop/sa/frontend", "198.18.0.2", (0, 0));
    let msgs = s.next_messages(&views.borrow(), &bundle(), true);
    assert!(msgs[0].full);
    assert_eq!(ips(&msgs[0]), ["198.18.0.2", "198.18.0.3"]);
}

#[tokio::test]
async fn a_stream_held_too_long_is_refused_naming_what_was_not_listed() {
    let (p, views) = Publisher::with_epoch(MeshModel::default(), 9);
    p.set_waiting_for(vec!["AuthorizationPolicies"]);
    let status = until_complete(views, Duration::from_millis(1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status.message().contains("AuthorizationPolicies"),
        "{status:?}"
    );
}
