//! Services end to end, the way a cluster does it: pods are network namespaces on one node
//! (the sandbox's bridge), the node does kube-proxy's job (iptables DNAT of the ClusterIP to a
//! ready pod) for whoever reaches it, and the apps call the Service by its ClusterIP or by its
//! name. The meshed callers' sidecars resolve the ClusterIP themselves — from the control
//! plane's Service and its endpoints — pick a ready pod and tunnel to *that pod*, so kube-proxy
//! never sees meshed traffic; an unmeshed caller goes through kube-proxy and is refused by the
//! pod's sidecar in STRICT mode. See `services_mesh/` for the layout.
//!
//! Needs root, python3, `dumpcap` and `tshark`, and the binaries built (`cargo build
//! --workspace --bins`; or `TRELLIS_BIN_DIR`). Without root each test fails, saying so;
//! `cargo nextest run --profile unprivileged` leaves them out on purpose (CONTRIBUTING.md).

mod services_mesh;
mod support;

use std::time::Duration;

use serde_json::Value;
use services_mesh::*;
use support::{FRONTEND_ID, eventually, marker, records};
use trellis_sandbox::Signal;
use trellis_sandbox::app::APP_UID;
use trellis_sandbox::capture::Capture;
use trellis_sandbox::http::{GET_TIMEOUT, http_get};
use trellis_sandbox::require_root;

#[test]
fn a_meshed_client_calling_the_service_by_name_gets_mtls_to_a_pod_and_kube_proxy_never_sees_it() {
    require_root();
    let mesh = ServiceMesh::start(&MeshSpec::default());
    let marker = marker("secret");

    let capture = Capture::start(&mesh.sandbox, "tcp").expect("capture starts");
    let reply = http_get(
        &mesh.frontend,
        &format!("http://{SERVICE_NAME}/{marker}"),
        Some(APP_UID),
        GET_TIMEOUT,
    )
    .expect("the request is answered");
    let pcap = capture.stop().expect("capture stops");

    // A backend pod's app answered (the name resolved to the ClusterIP inside the pod).
    assert_eq!(reply.status, 200, "{reply:?}");
    let answered = reply.body.split(' ').next().unwrap_or_default().to_owned();
    let backend = mesh
        .backend(&answered)
        .unwrap_or_else(|| panic!("no backend pod answered: {reply:?}"));
    assert!(reply.body.contains(&marker), "{reply:?}");

    // On the wire: nothing in clear text, nothing to the ClusterIP or to an app port; every
    // TCP segment but the control plane's is the tunnel's, and every byte on it is TLS 1.3.
    assert!(
        !pcap.contains(marker.as_bytes()).unwrap(),
        "the marker crossed the bridge in clear text: {}",
        pcap.path().display()
    );
    let other = pcap
        .fields(
            &[],
            "tcp && !(tcp.port==15008) && !(tcp.port==15012)",
            &["ip.src", "ip.dst", "tcp.dstport"],
        )
        .unwrap();
    assert!(other.is_empty(), "TCP besides the tunnel: {other:?}");
    let to_pod = pcap
        .fields(
            &[],
            &format!("ip.dst=={} && tcp.dstport==15008", backend.ip),
            &["frame.number"],
        )
        .unwrap();
    assert!(
        !to_pod.is_empty(),
        "no packet to {}:15008, the pod that answered",
        backend.ip
    );
    let not_tls = pcap
        .fields(
            &["tcp.port==15008,tls"],
            // A retransmitted segment repeats bytes already seen as TLS (tail-loss probes on a
            // busy machine); tshark does not dissect the copy.
            "tcp.port==15008 && tcp.len>0 && !tls && !tcp.analysis.retransmission \
             && !tcp.analysis.spurious_retransmission && !tcp.analysis.out_of_order",
            &["frame.number"],
        )
        .unwrap();
    assert!(not_tls.is_empty(), "non-TLS payload on 15008: {not_tls:?}");
    let hellos = pcap
        .fields(
            &["tcp.port==15008,tls"],
            "tls.handshake.type==2 && tcp.srcport==15008",
            &["tls.handshake.extensions.supported_version"],
        )
        .unwrap();
    assert!(!hellos.is_empty(), "no ServerHello from 15008");
    assert!(hellos.iter().all(|h| h == &["0x0304"]), "{hellos:?}");

    // The frontend's sidecar chose the pod for the Service and verified the pod's identity...
    let out = mesh.frontend_proxy.handshakes().unwrap();
    let out = records(&out, "outbound");
    assert!(
        out.iter().any(|r| r["reason"] == VIA_SERVICE
            && r["decision"] == "allow"
            && r["peer_id"] == BACKEND_ID
            && r["dst"] == format!("{}:{}", backend.ip, backend.http_port)
            && r["tls"]["version"] == "TLSv1_3"),
        "frontend outbound records: {out:#?}"
    );
    // ...whose sidecar let the frontend's identity in to the app port.
    let inbound = backend.proxy.handshakes().unwrap();
    assert!(
        records(&inbound, "inbound")
            .iter()
            .any(|r| r["peer_id"] == FRONTEND_ID && r["decision"] == "allow"),
        "{}'s inbound records: {inbound:#?}",
        backend.name
    );
    // kube-proxy (the node's DNAT) saw none of it.
    assert_eq!(mesh.dnat_total(), 0, "{}", mesh.iptables_save());
}

#[test]
fn through_the_service_the_policy_lets_the_frontend_in_and_refuses_the_intruder_by_identity() {
    require_root();
    let mesh = ServiceMesh::start(&MeshSpec {
        intruder: true,
        ..MeshSpec::default()
    });
    let allowed = mesh.get(&mesh.frontend, CLUSTER_URL, &marker("frontend"));
    assert!(
        matches!(&allowed, Ok(r) if r.status == 200),
        "the frontend was not let in: {allowed:?}"
    );

    let intruder = mesh.intruder.as_ref().expect("intruder pod");
    let marker = marker("intruder");
    let refused = mesh.get(intruder, CLUSTER_URL, &marker);
    assert!(
        !matches!(&refused, Ok(r) if r.status == 200),
        "the intruder got in: {refused:?}"
    );
    // The intruder's sidecar picked a pod for the Service and reached its sidecar over mTLS;
    // a refusal by policy is not retried on another pod (the policy is the same everywhere).
    let denials: Vec<(String, Value)> = mesh
        .backends
        .iter()
        .flat_map(|b| {
            let log = b.proxy.handshakes().unwrap();
            records(&log, "inbound")
                .into_iter()
                .filter(|r| r["peer_id"] == INTRUDER_ID)
                .map(|r| (b.name.clone(), r.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(denials.len(), 1, "{denials:#?}");
    let (pod, r) = &denials[0];
    assert_eq!(r["decision"], "deny", "{pod}: {r:#}");
    assert_eq!(r["tls"]["version"], "TLSv1_3", "{pod}: {r:#}");
    let reason = r["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(POLICY) && reason.contains(INTRUDER_ID),
        "the refusal names the policy and the identity: {r:#}"
    );
    let out = mesh.intruder_proxy.as_ref().unwrap().handshakes().unwrap();
    let out = records(&out, "outbound");
    assert!(
        out.iter().any(|r| r["decision"] == "deny"
            && r["reason"]
                .as_str()
                .is_some_and(|s| s.starts_with(VIA_SERVICE))),
        "intruder outbound records: {out:#?}"
    );
    for b in &mesh.backends {
        assert!(!b.app.process().stdout().contains(&marker), "{}", b.name);
    }
    assert_eq!(mesh.dnat_total(), 0, "{}", mesh.iptables_save());
}

#[test]
fn three_pods_share_new_connections_and_a_pod_that_is_not_ready_gets_none() {
    require_root();
    let mesh = ServiceMesh::start(&MeshSpec::default());
    let spread = mesh.calls(CLUSTER_URL, 60, 4);
    assert_eq!(spread.failures, 0, "{spread:?}");
    for b in &mesh.backends {
        assert!(spread.count(&b.name) > 0, "{} got none: {spread:?}", b.name);
    }

    // backend-3 fails its readiness probe: the endpoint stays, not ready.
    mesh.set_ready("backend-3", false);
    mesh.wait_for_ready_endpoints(2);
    let spread = mesh.calls(CLUSTER_URL, 40, 4);
    assert_eq!(spread.failures, 0, "{spread:?}");
    assert_eq!(spread.count("backend-3"), 0, "{spread:?}");
    assert_eq!(spread.count("backend-1") + spread.count("backend-2"), 40);
    assert_eq!(mesh.dnat_total(), 0, "{}", mesh.iptables_save());
}

#[test]
fn deleting_a_pod_mid_traffic_sends_new_connections_to_the_others_with_no_failure() {
    require_root();
    let mesh = ServiceMesh::start(&MeshSpec::default());
    // Four callers, new connections one after another, bounded in count and time.
    let load = mesh.spawn_calls(CLUSTER_URL, 600, 30, 4);
    let doomed = mesh.backend("backend-3").unwrap();
    let reached = eventually(Duration::from_secs(20), || {
        (doomed.app.process().stdout().matches("GET /call-").count() >= 5).then_some(())
    });
    assert!(reached.is_some(), "backend-3 never got traffic");

    // Deleted as a cluster does it: the endpoint leaves the EndpointSlice while kubelet's
    // SIGTERM reaches the pod's containers. The app keeps accepting for a moment (as apps behind
    // a Service do, or a preStop sleep), then refuses new connections and answers the ones it
    // has; the sidecar drains. A caller that still picks backend-3 meanwhile fails before any
    // byte is sent and tries another pod.
    mesh.remove_backend("backend-3");
    for p in [doomed.app.process(), doomed.proxy.process()] {
        p.signal(Signal::Term).expect("SIGTERM");
    }
    for p in [doomed.app.process(), doomed.proxy.process()] {
        p.wait(Duration::from_secs(10))
            .expect("the pod's process exits");
    }
    let calls = Calls::of(&client_output(&load, Duration::from_secs(60)));
    assert_eq!(calls.failures, 0, "{calls:?}");
    assert!(calls.count("backend-3") >= 5, "{calls:?}");
    let after = calls.after_last("backend-3");
    assert!(
        after >= 10,
        "only {after} connections after backend-3's last: {calls:?}"
    );
    // The frontend's sidecar now balances over the two pods left.
    mesh.wait_for_ready_endpoints(2);
    let spread = mesh.calls(CLUSTER_URL, 20, 2);
    assert_eq!(
        (spread.failures, spread.count("backend-3")),
        (0, 0),
        "{spread:?}"
    );
}

#[test]
fn an_unmeshed_client_reaches_a_pod_through_kube_proxy_and_is_refused_in_strict_mode() {
    require_root();
    let mesh = ServiceMesh::start(&MeshSpec {
        outsider: true,
        ..MeshSpec::default()
    });
    let outsider = mesh.outsider.as_ref().expect("outsider pod");
    let marker = marker("plaintext");
    let answer = mesh.get(outsider, CLUSTER_URL, &marker);
    assert!(
        !matches!(&answer, Ok(r) if r.status == 200),
        "plaintext got through: {answer:?}"
    );
    // kube-proxy DNAT'd it to a pod, whose sidecar refused the plaintext.
    let counts = mesh.dnat_counts();
    assert_eq!(counts.total, 1, "{}", mesh.iptables_save());
    let (endpoint, _) = counts.by_endpoint.iter().find(|(_, n)| **n == 1).unwrap();
    let pod = mesh
        .backends
        .iter()
        .find(|b| b.ip == *endpoint.ip())
        .expect("the DNAT'd pod");
    let log = pod.proxy.handshakes().unwrap();
    let plain = records(&log, "inbound-plain");
    assert!(
        plain.iter().any(|r| r["decision"] == "deny"
            && r["reason"]
                .as_str()
                .is_some_and(|s| s.contains("STRICT"))
            // Masqueraded by the node, as kube-proxy does.
            && r["peer_addr"]
                .as_str()
                .is_some_and(|a| a.starts_with(&format!("{}:", trellis_sandbox::NODE_IP)))),
        "{}'s records: {plain:#?}",
        pod.name
    );
    for b in &mesh.backends {
        assert!(!b.app.process().stdout().contains(&marker), "{}", b.name);
    }
}

#[test]
fn a_named_target_port_reaches_the_port_each_pod_gives_that_name() {
    require_root();
    let mesh = ServiceMesh::start(&MeshSpec {
        http_ports: vec![8080, 8081],
        ..MeshSpec::default()
    });
    let spread = mesh.calls(CLUSTER_URL, 30, 3);
    assert_eq!(spread.failures, 0, "{spread:?}");
    for b in &mesh.backends {
        assert!(spread.count(&b.name) > 0, "{} got none: {spread:?}", b.name);
        // Its sidecar was asked for the pod's own number for `http`.
        let log = b.proxy.handshakes().unwrap();
        let dst = format!("{}:{}", b.ip, b.http_port);
        assert!(
            records(&log, "inbound")
                .iter()
                .any(|r| r["dst"] == dst && r["decision"] == "allow"),
            "{}: no CONNECT to {dst}: {log:#?}",
            b.name
        );
    }
    assert_eq!(mesh.dnat_total(), 0, "{}", mesh.iptables_save());
}
