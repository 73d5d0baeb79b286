//! AuthorizationPolicies end to end, on the policy mesh of `support/policy_mesh.rs` (frontend,
//! backend, intruder; the backend's policy `shop/backend-allow` covers port 8080), whose mesh
//! file the tests rewrite while everything runs.
//!
//! Needs root, python3 and the binaries built (`cargo build --workspace --bins`; or
//! `TRELLIS_BIN_DIR`). Without root each test fails, saying so; `cargo nextest run --profile
//! unprivileged` leaves them out on purpose (CONTRIBUTING.md).

mod support;

use std::time::{Duration, Instant, SystemTime};

use support::policy_mesh::*;
use support::*;
use trellis_sandbox::require_root;

const DECISIONS: &str = "trellis_proxy_authorization_decisions_total";
const CONNECTED: &str = "trellis_proxy_discovery_connected";

#[test]
fn the_frontend_is_allowed_and_the_backend_records_its_spiffe_id() {
    require_root();
    let mesh = PolicyMesh::start("enforce", &["ns/shop/sa/frontend"]);
    let marker = marker("allowed");
    assert!(mesh.reaches_backend(&mesh.frontend, &marker));
    let from_frontend = mesh.inbound_from(FRONTEND_ID);
    let r = from_frontend
        .last()
        .expect("a record of the frontend's connection");
    assert_eq!(r["decision"], "allow", "{r:#}");
    assert_eq!(r["dst"], format!("{BACKEND_IP}:8080"), "{r:#}");
    assert_eq!(r["tls"]["version"], "TLSv1_3", "{r:#}");
    assert_eq!(
        mesh.backend_proxy
            .metric(
                DECISIONS,
                &[("decision", "allow"), ("peer_id", FRONTEND_ID)]
            )
            .unwrap(),
        1.0
    );
}

#[test]
fn an_intruder_is_refused_after_the_handshake_and_recorded_with_its_spiffe_id() {
    require_root();
    let mesh = PolicyMesh::start("enforce", &["ns/shop/sa/frontend"]);
    let marker = marker("intruder");
    assert!(
        !mesh.reaches_backend(&mesh.intruder, &marker),
        "the intruder reached the backend's app"
    );
    let refused = mesh.inbound_from(INTRUDER_ID);
    let r = refused
        .last()
        .expect("a record of the intruder's connection");
    assert_eq!(r["decision"], "deny", "{r:#}");
    // Its identity is the one its certificate proved in the mutual-TLS handshake...
    assert_eq!(r["tls"]["version"], "TLSv1_3", "{r:#}");
    assert!(
        r["peer_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with(&format!("{INTRUDER_IP}:"))),
        "{r:#}"
    );
    // ...and the reason names it and the policy that does not list it.
    let reason = r["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(INTRUDER_ID) && reason.contains(POLICY) && reason.contains("8080"),
        "{r:#}"
    );
    let denied = mesh
        .backend_proxy
        .metric(DECISIONS, &[("decision", "deny"), ("peer_id", INTRUDER_ID)])
        .unwrap();
    assert_eq!(denied, 1.0);
}

#[test]
fn a_policy_changed_at_run_time_applies_to_new_connections_within_two_seconds_without_restarts() {
    require_root();
    let mesh = PolicyMesh::start("enforce", &["ns/shop/sa/frontend"]);
    assert!(!mesh.reaches_backend(&mesh.intruder, &marker("before")));
    let pids = mesh.pids();
    assert!(pids.iter().all(|(_, running)| *running), "{pids:?}");

    // Now only the intruder: one identity in, the other out.
    mesh.cp
        .write_mesh(&mesh_yaml("enforce", &["ns/evil/sa/intruder"]))
        .expect("rewrite the mesh file");
    let written = SystemTime::now();
    let edited = Instant::now();
    let reached = eventually(Duration::from_secs(6), || {
        mesh.reaches_backend(&mesh.intruder, &marker("after"))
            .then(|| edited.elapsed())
    });
    let took = reached.expect("the intruder was never let in after the change");
    // The backend's first decision under the new policy, by the backend's own clock.
    let allowed_at = mesh
        .inbound_from(INTRUDER_ID)
        .iter()
        .find(|r| r["decision"] == "allow")
        .and_then(|r| humantime::parse_rfc3339(r["time"].as_str()?).ok())
        .expect("an allow record for the intruder");
    let applied = allowed_at.duration_since(written).unwrap_or_default();
    eprintln!(
        "new policy: first allowed {applied:?} after the edit (request returned after {took:?})"
    );
    assert!(
        applied <= Duration::from_secs(2),
        "the new policy took {applied:?} to apply"
    );
    // The frontend's new connections are refused now.
    assert!(!mesh.reaches_backend(&mesh.frontend, &marker("frontend-after")));
    let last = mesh.inbound_from(FRONTEND_ID);
    assert_eq!(
        last.last().map(|r| r["decision"].clone()),
        Some("deny".into())
    );
    // Nothing was restarted.
    assert_eq!(
        mesh.pids(),
        pids,
        "processes (pid, running) before and after"
    );
}

#[test]
fn audit_mode_lets_the_intruder_through_and_records_would_deny() {
    require_root();
    let mesh = PolicyMesh::start("audit", &["ns/shop/sa/frontend"]);
    assert!(mesh.reaches_backend(&mesh.intruder, &marker("audited")));
    let r = mesh.inbound_from(INTRUDER_ID);
    let r = r.last().expect("a record of the intruder's connection");
    assert_eq!(r["decision"], "would-deny", "{r:#}");
    let reason = r["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(INTRUDER_ID) && reason.contains(POLICY),
        "{r:#}"
    );
    // The allowed identity is a plain allow.
    assert!(mesh.reaches_backend(&mesh.frontend, &marker("frontend")));
    let f = mesh.inbound_from(FRONTEND_ID);
    assert_eq!(
        f.last().map(|r| r["decision"].clone()),
        Some("allow".into())
    );
    assert_eq!(
        mesh.backend_proxy
            .metric(
                DECISIONS,
                &[("decision", "would-deny"), ("peer_id", INTRUDER_ID)]
            )
            .unwrap(),
        1.0
    );
}

#[test]
fn with_the_control_plane_down_the_backend_keeps_enforcing_its_policy() {
    require_root();
    let mesh = PolicyMesh::start("enforce", &["ns/shop/sa/frontend"]);
    mesh.cp.stop().expect("control plane stops");
    for s in &mesh.sidecars {
        let noticed = eventually(Duration::from_secs(15), || {
            (s.metric(CONNECTED, &[]).ok()? == 0.0).then_some(())
        });
        assert!(
            noticed.is_some(),
            "{}: still connected to a stopped control plane",
            s.pod().name()
        );
    }
    // New connections, decided with the last policy the backend had.
    assert!(
        !mesh.reaches_backend(&mesh.intruder, &marker("down-intruder")),
        "the intruder got in while the control plane was down"
    );
    assert!(
        mesh.reaches_backend(&mesh.frontend, &marker("down-frontend")),
        "the frontend was shut out while the control plane was down"
    );
    let r = mesh.inbound_from(INTRUDER_ID);
    let r = r.last().expect("a record of the intruder's connection");
    assert_eq!(r["decision"], "deny", "{r:#}");
    assert!(
        r["reason"].as_str().unwrap_or_default().contains(POLICY),
        "{r:#}"
    );
}
