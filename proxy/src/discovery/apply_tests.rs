use trellis_ca::SpiffeId;
use trellis_proto::discovery::{
    PolicyRule, ServiceEndpoint as PbEndpoint, ServicePort as PbPort, TrustBundle,
};

use super::*;
use crate::route::{Route, route};

fn ip4(s: &str) -> Vec<u8> {
    s.parse::<Ipv4Addr>().unwrap().octets().to_vec()
}

fn pb_workload(ip: &str, sa: &str) -> PbWorkload {
    PbWorkload {
        ip: ip4(ip),
        port: 0,
        spiffe_id: format!("spiffe://cluster.local/ns/shop/sa/{sa}"),
        tunnel: String::new(),
    }
}

fn pb_service(name: &str, vip: &str, endpoints: &[(&str, u32, bool)]) -> PbService {
    PbService {
        name: name.into(),
        addresses: vec![ip4(vip)],
        ports: vec![PbPort {
            port: 80,
            name: "http".into(),
            endpoints: endpoints
                .iter()
                .map(|(ip, port, ready)| PbEndpoint {
                    ip: ip4(ip),
                    target_port: *port,
                    ready: *ready,
                    serving: *ready,
                    terminating: false,
                })
                .collect(),
        }],
    }
}

fn full(version: u64) -> MeshUpdate {
    MeshUpdate {
        epoch: 5,
        version,
        full: true,
        workloads: vec![
            pb_workload("198.18.0.3", "backend"),
            pb_workload("198.18.0.4", "backend"),
        ],
        services: vec![pb_service(
            "shop/backend",
            "198.19.0.10",
            &[("198.18.0.3", 8080, true), ("198.18.0.4", 8080, false)],
        )],
        inbound: Some(Inbound {
            rules: vec![PolicyRule {
                name: "shop/allow".into(),
                ports: vec![8080],
                allow: vec!["ns/shop/sa/frontend".into(), "not a pattern".into()],
                allow_unauthenticated: true,
                mode: PbMode::Enforce as i32,
            }],
            mtls_mode: PbMtls::Permissive as i32,
        }),
        trust_bundle: Some(TrustBundle {
            roots_pem: vec![root_pem(0)],
        }),
        ..MeshUpdate::default()
    }
}

/// One of two roots made once for these tests.
fn root_pem(i: usize) -> String {
    static ROOTS: std::sync::OnceLock<[String; 2]> = std::sync::OnceLock::new();
    let make = || {
        trellis_ca::CaMaterial::generate_root(&TrustDomain::default(), std::time::SystemTime::now())
            .unwrap()
            .root_cert_pem
    };
    ROOTS.get_or_init(|| [make(), make()])[i].clone()
}

fn apply_to(held: &MeshState, u: &MeshUpdate, loads: &mut Loads) -> Result<MeshState, ApplyError> {
    let td = TrustDomain::default();
    let statics: Vec<StaticWorkload> = vec![
        "198.18.0.9=spiffe://cluster.local/ns/lab/sa/fixed"
            .parse()
            .unwrap(),
    ];
    let mut identities = Identities::default();
    let mut cx = ApplyContext {
        trust_domain: &td,
        static_workloads: &statics,
        loads,
        identities: &mut identities,
    };
    apply(held, u.clone(), &mut cx)
}

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn endpoints(st: &MeshState, vip: &str) -> Vec<String> {
    let s = st.service_at(a(vip)).unwrap();
    s.port()
        .endpoints
        .iter()
        .map(|e| format!("{} {:?}", e.addr, e.health))
        .collect()
}

#[test]
fn a_full_update_replaces_the_state_and_keeps_static_workloads() {
    let mut loads = Loads::default();
    let mut held = MeshState::default();
    held.insert(
        WorkloadAddr::Ip("198.18.0.77".parse().unwrap()),
        Peer {
            id: Arc::new(SpiffeId::parse("spiffe://cluster.local/ns/old/sa/gone").unwrap()),
            tunnel: a("198.18.0.77:15008"),
        },
    );
    let st = apply_to(&held, &full(3), &mut loads).unwrap();
    assert_eq!(
        st.version,
        Version {
            epoch: 5,
            version: 3
        }
    );
    assert!(
        st.lookup(a("198.18.0.77:1")).is_none(),
        "not in the full state"
    );
    assert_eq!(
        st.lookup(a("198.18.0.3:8080")).unwrap().tunnel,
        a("198.18.0.3:15008")
    );
    assert!(
        st.lookup(a("198.18.0.9:1")).is_some(),
        "static workload kept"
    );
    assert_eq!(
        endpoints(&st, "198.19.0.10:80"),
        ["198.18.0.3:8080 Ready", "198.18.0.4:8080 Unavailable"]
    );
    assert_eq!(st.mtls_mode, Some(MtlsMode::Permissive));
    assert_eq!(
        st.policy.rules[0].allow.len(),
        1,
        "the bad pattern allows nobody"
    );
    assert!(st.policy.rules[0].allow_unauthenticated);
    assert_eq!(st.trust_bundle.as_ref().unwrap().roots().len(), 1);
    assert_eq!(loads.len(), 2);
}

#[test]
fn a_full_update_without_inbound_or_bundle_drops_the_old_mesh_and_keeps_the_rest() {
    let mut loads = Loads::default();
    let held = apply_to(&MeshState::default(), &full(3), &mut loads).unwrap();
    let next = MeshUpdate {
        epoch: 5,
        version: 9,
        full: true,
        workloads: vec![pb_workload("198.18.0.5", "backend")],
        ..MeshUpdate::default()
    };
    let st = apply_to(&held, &next, &mut loads).unwrap();
    assert!(
        st.lookup(a("198.18.0.3:1")).is_none(),
        "old workload dropped"
    );
    assert!(st.lookup(a("198.18.0.5:1")).is_some());
    assert!(
        st.service_at(a("198.19.0.10:80")).is_none(),
        "old Service dropped"
    );
    assert_eq!(st.service_count(), 0);
    assert_eq!(st.mtls_mode, Some(MtlsMode::Permissive), "inbound kept");
    assert_eq!(st.policy, held.policy);
    assert!(
        st.trust_bundle
            .as_ref()
            .is_some_and(|b| Arc::ptr_eq(b, held.trust_bundle.as_ref().unwrap())),
        "bundle kept"
    );
    assert_eq!(st.version.version, 9);
}

#[test]
fn the_trust_bundle_is_replaced_when_its_roots_change_and_kept_when_unusable() {
    let mut loads = Loads::default();
    let st = apply_to(&MeshState::default(), &full(1), &mut loads).unwrap();
    let first = st.trust_bundle.clone().unwrap();
    let with_bundle = |version: u64, roots_pem: Vec<String>| MeshUpdate {
        epoch: 5,
        version,
        base_version: version - 1,
        trust_bundle: Some(TrustBundle { roots_pem }),
        ..MeshUpdate::default()
    };

    // The same roots again (a resync): the same bundle, so nothing downstream rebuilds.
    let st = apply_to(&st, &with_bundle(2, vec![root_pem(0)]), &mut loads).unwrap();
    assert!(Arc::ptr_eq(st.trust_bundle.as_ref().unwrap(), &first));
    // A second root (rotation): a new bundle with both.
    let st = apply_to(
        &st,
        &with_bundle(3, vec![root_pem(0), root_pem(1)]),
        &mut loads,
    )
    .unwrap();
    assert_eq!(st.trust_bundle.as_ref().unwrap().roots().len(), 2);
    // Garbage never replaces what is held.
    let st = apply_to(&st, &with_bundle(4, vec!["junk".into()]), &mut loads).unwrap();
    assert_eq!(st.trust_bundle.as_ref().unwrap().roots().len(), 2);
    assert_eq!(st.version.version, 4, "the rest of the update applies");
    // An update without a bundle keeps it.
    let st = apply_to(
        &st,
        &MeshUpdate {
            epoch: 5,
            version: 5,
            base_version: 4,
            ..MeshUpdate::default()
        },
        &mut loads,
    )
    .unwrap();
    assert_eq!(st.trust_bundle.as_ref().unwrap().roots().len(), 2);
}

#[test]
fn a_delta_applies_on_top_of_the_version_held_and_nothing_else() {
    let mut loads = Loads::default();
    let st = apply_to(&MeshState::default(), &full(3), &mut loads).unwrap();
    let load_before = st.service_at(a("198.19.0.10:80")).unwrap().port().endpoints[0]
        .load
        .clone();
    let delta = MeshUpdate {
        epoch: 5,
        version: 4,
        base_version: 3,
        workloads: vec![pb_workload("198.18.0.5", "backend")],
        removed_workloads: vec![WorkloadAddress {
            ip: ip4("198.18.0.4"),
            port: 0,
        }],
        services: vec![pb_service(
            "shop/backend",
            "198.19.0.10",
            &[("198.18.0.3", 8080, true), ("198.18.0.5", 8080, true)],
        )],
        ..MeshUpdate::default()
    };
    let next = apply_to(&st, &delta, &mut loads).unwrap();
    assert_eq!(next.version.version, 4);
    assert!(next.lookup(a("198.18.0.4:1")).is_none());
    assert!(next.lookup(a("198.18.0.5:1")).is_some());
    assert_eq!(
        endpoints(&next, "198.19.0.10:80"),
        ["198.18.0.3:8080 Ready", "198.18.0.5:8080 Ready"]
    );
    assert_eq!(
        next.mtls_mode,
        Some(MtlsMode::Permissive),
        "no inbound in the delta: unchanged"
    );
    let load_after = next
        .service_at(a("198.19.0.10:80"))
        .unwrap()
        .port()
        .endpoints[0]
        .load
        .clone();
    assert!(
        Arc::ptr_eq(&load_before, &load_after),
        "an endpoint keeps its load across updates"
    );
    // The same delta again: it applies on 3, the state is at 4.
    let err = apply_to(&next, &delta, &mut loads).unwrap_err();
    assert!(
        matches!(
            err,
            ApplyError::BaseMismatch {
                base: 3,
                held_version: 4,
                ..
            }
        ),
        "{err}"
    );
    // A delta from another epoch.
    let other = MeshUpdate {
        epoch: 6,
        base_version: 4,
        version: 5,
        ..MeshUpdate::default()
    };
    assert!(apply_to(&next, &other, &mut loads).is_err());
    // Removing the Service frees its ClusterIP.
    let gone = MeshUpdate {
        epoch: 5,
        base_version: 4,
        version: 5,
        removed_services: vec!["shop/backend".into()],
        ..MeshUpdate::default()
    };
    let after = apply_to(&next, &gone, &mut loads).unwrap();
    assert!(after.service_at(a("198.19.0.10:80")).is_none());
    drop((load_before, load_after, next, st, after));
    loads.prune(); // each apply prunes; states held by connections keep theirs until then
    assert_eq!(loads.len(), 0, "loads of gone endpoints are forgotten");
}

#[test]
fn bad_entries_are_skipped_not_trusted() {
    let mut loads = Loads::default();
    let mut u = full(1);
    u.workloads.push(PbWorkload {
        ip: vec![1, 2, 3],
        ..pb_workload("198.18.0.6", "x")
    });
    u.workloads.push(PbWorkload {
        spiffe_id: "not-spiffe".into(),
        ..pb_workload("198.18.0.7", "x")
    });
    let mut bad_service = pb_service("shop/bad", "198.19.0.11", &[]);
    bad_service.addresses.push(vec![9; 5]);
    u.services.push(bad_service);
    let st = apply_to(&MeshState::default(), &u, &mut loads).unwrap();
    assert!(st.lookup(a("198.18.0.7:80")).is_none());
    assert!(st.service_at(a("198.19.0.11:80")).is_none());
    assert_eq!(st.len(), 3);
}

#[test]
fn an_update_split_over_messages_is_applied_once_whole() {
    let mut asm = Assembler::default();
    let mut first = full(2);
    first.more = true;
    let second = MeshUpdate {
        epoch: 5,
        version: 2,
        more: false,
        workloads: vec![pb_workload("198.18.0.8", "late")],
        ..MeshUpdate::default()
    };
    assert_eq!(asm.push(first.clone()).unwrap(), None);
    let whole = asm.push(second).unwrap().unwrap();
    assert!(whole.full && !whole.more);
    assert_eq!(whole.workloads.len(), 3);
    assert!(whole.inbound.is_some());
    // A message of another update in the middle is an error, and the assembler starts over.
    assert_eq!(asm.push(first).unwrap(), None);
    let stray = MeshUpdate {
        epoch: 5,
        version: 3,
        ..MeshUpdate::default()
    };
    assert!(matches!(
        asm.push(stray),
        Err(ApplyError::Interleaved { .. })
    ));
    assert!(asm.push(full(4)).unwrap().is_some());
}

#[test]
fn after_an_update_the_service_ip_routes_to_the_service() {
    let mut loads = Loads::default();
    let st = apply_to(&MeshState::default(), &full(1), &mut loads).unwrap();
    let own = [a("0.0.0.0:15001")];
    match route(
        a("198.19.0.10:80"),
        &st,
        &own,
        crate::config::Unmeshed::Allow,
    ) {
        Route::Service(s) => assert_eq!(s.name(), "shop/backend:80"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn workloads_of_one_service_account_share_one_identity_across_updates_until_none_holds_it() {
    let td = TrustDomain::default();
    let mut loads = Loads::default();
    let mut identities = Identities::default();
    let mut cx = ApplyContext {
        trust_domain: &td,
        static_workloads: &[],
        loads: &mut loads,
        identities: &mut identities,
    };
    let first = apply(&MeshState::default(), full(1), &mut cx).unwrap();
    let delta = MeshUpdate {
        epoch: 5,
        version: 2,
        base_version: 1,
        workloads: vec![
            pb_workload("198.18.0.5", "backend"),
            pb_workload("198.18.0.6", "db"),
        ],
        ..MeshUpdate::default()
    };
    let second = apply(&first, delta, &mut cx).unwrap();
    let id = |st: &MeshState, ip: &str| st.lookup(a(&format!("{ip}:1"))).unwrap().id.clone();
    assert!(Arc::ptr_eq(
        &id(&second, "198.18.0.3"),
        &id(&second, "198.18.0.5")
    ));
    assert!(!Arc::ptr_eq(
        &id(&second, "198.18.0.3"),
        &id(&second, "198.18.0.6")
    ));
    assert_eq!(
        id(&second, "198.18.0.6").to_string(),
        "spiffe://cluster.local/ns/shop/sa/db"
    );
    assert_eq!(cx.identities.len(), 2);
    // Once no snapshot holds `db`, the next update forgets it.
    drop((first, second));
    let only_backend = apply(&MeshState::default(), full(3), &mut cx).unwrap();
    assert_eq!(cx.identities.len(), 1);
    assert_eq!(only_backend.len(), 2);
}
