//! AuthorizationPolicies end to end, on a fake network: three meshed pods — frontend, backend,
//! intruder — whose sidecars learn endpoints and policy from the control plane's discovery
//! stream only (no `--workload` flags), the control plane following a mesh file that the tests
//! rewrite while everything runs. The backend's policy `shop/backend-allow` covers port 8080.
//!
//! ```text
//!   control-plane 198.18.0.1   trellis-control-plane --mesh-file (local mode, join tokens)
//!   frontend      198.18.0.2   sidecar ns/shop/sa/frontend
//!   backend       198.18.0.3   sidecar ns/shop/sa/backend + app (HTTP 8080)
//!   intruder      198.18.0.4   sidecar ns/evil/sa/intruder
//! ```
//!
//! Needs root, python3 and the binaries built (`cargo build --workspace --bins`; or
//! `TRELLIS_BIN_DIR`). Without root each test fails, saying so; `cargo nextest run --profile
//! unprivileged` leaves them out on purpose (CONTRIBUTING.md).

mod support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use support::*;
use trellis_sandbox::app::{APP_UID, App};
use trellis_sandbox::control_plane::{ControlPlane, Identity};
use trellis_sandbox::http::{HttpResponse, http_get};
use trellis_sandbox::require_root;
use trellis_sandbox::sidecar::{Sidecar, SidecarSpec};
use trellis_sandbox::{Pod, Result, Sandbox};

const INTRUDER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 4);
const INTRUDER_ID: &str = "spiffe://cluster.local/ns/evil/sa/intruder";
const POLICY: &str = "shop/backend-allow";
const DECISIONS: &str = "trellis_proxy_authorization_decisions_total";
const UPDATES: &str = "trellis_proxy_discovery_updates_total";
const CONNECTED: &str = "trellis_proxy_discovery_connected";
/// One request's time limit: refusals come back at once, so this only bounds a hang.
const GET: Duration = Duration::from_secs(3);

/// The mesh file: the three workloads, and the backend's policy allowing `allow` on 8080 in
/// `mode` (`enforce` or `audit`).
fn mesh_yaml(mode: &str, allow: &[&str]) -> String {
    let allow: Vec<String> = allow.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "workloads:\n\
         \x20 - {{namespace: shop, serviceAccount: frontend, ip: {FRONTEND_IP}, labels: {{app: frontend}}}}\n\
         \x20 - {{namespace: shop, serviceAccount: backend, ip: {BACKEND_IP}, labels: {{app: backend}}}}\n\
         \x20 - {{namespace: evil, serviceAccount: intruder, ip: {INTRUDER_IP}, labels: {{app: intruder}}}}\n\
         policies:\n\
         \x20 - apiVersion: trellis.dev/v1alpha1\n\
         \x20   kind: AuthorizationPolicy\n\
         \x20   metadata: {{name: backend-allow, namespace: shop}}\n\
         \x20   spec: {{selector: {{matchLabels: {{app: backend}}}}, ports: [8080], allow: [{}], mode: {mode}}}\n",
        allow.join(", ")
    )
}

fn intruder_identity() -> Identity {
    Identity::new("evil", "intruder")
}

/// The running mesh; dropping it (its sandbox) stops everything and deletes the namespaces.
struct PolicyMesh {
    cp: ControlPlane,
    frontend: Pod,
    intruder: Pod,
    backend_app: App,
    sidecars: Vec<Sidecar>,
    backend_proxy: Sidecar,
    /// Last field: dropped after the handles above.
    sandbox: Sandbox,
}

impl PolicyMesh {
    /// Starts the mesh with the backend's policy in `mode` allowing `allow`, and waits until
    /// every sidecar has applied the whole mesh (so the first request meets the policy).
    fn start(mode: &str, allow: &[&str]) -> PolicyMesh {
        let started = Instant::now();
        let sandbox = Sandbox::new().expect("sandbox");
        let cp_pod = sandbox
            .add_pod("control-plane", CONTROL_PLANE_IP)
            .expect("pod");
        let frontend = sandbox.add_pod("frontend", FRONTEND_IP).expect("pod");
        let backend = sandbox.add_pod("backend", BACKEND_IP).expect("pod");
        let intruder = sandbox.add_pod("intruder", INTRUDER_IP).expect("pod");
        let identities = [frontend_identity(), backend_identity(), intruder_identity()];
        let cp = ControlPlane::start_with_mesh(
            &sandbox,
            &cp_pod,
            &identities,
            &mesh_yaml(mode, allow),
            &[],
        )
        .expect("control plane");
        let backend_app = App::start(&sandbox, &backend, "backend").expect("backend app");
        let start = |pod: &Pod, id: Identity| {
            Sidecar::start(&cp, pod, SidecarSpec::new(id)).expect("sidecar")
        };
        let backend_proxy = start(&backend, backend_identity());
        let sidecars = vec![
            start(&frontend, frontend_identity()),
            backend_proxy.clone(),
            start(&intruder, intruder_identity()),
        ];
        for s in &sidecars {
            let whole_mesh = eventually(Duration::from_secs(15), || {
                let updates = s.metric(UPDATES, &[]).ok()?;
                let dump: Value = serde_json::from_str(&s.admin_get("/config_dump").ok()?).ok()?;
                (updates >= 1.0 && dump["workloads_known"].as_u64() >= Some(3)).then_some(())
            });
            assert!(
                whole_mesh.is_some(),
                "{}: the sidecar never applied the mesh",
                s.pod().name()
            );
        }
        eprintln!(
            "policy mesh {} up in {:?} ({})",
            sandbox.id(),
            started.elapsed(),
            sandbox.dir().display()
        );
        PolicyMesh {
            cp,
            frontend,
            intruder,
            backend_app,
            sidecars,
            backend_proxy,
            sandbox,
        }
    }

    /// `GET http://198.18.0.3:8080/<path>` from `pod`, as its app (intercepted by its sidecar).
    fn get(&self, pod: &Pod, path: &str) -> Result<HttpResponse> {
        http_get(
            pod,
            &format!("http://{BACKEND_IP}:8080/{path}"),
            Some(APP_UID),
            GET,
        )
    }

    /// Whether a request from `pod` reaches the backend's app (and only then is answered 200).
    fn reaches_backend(&self, pod: &Pod, marker: &str) -> bool {
        let reached =
            matches!(self.get(pod, marker), Ok(r) if r.status == 200 && r.body.contains(marker));
        assert_eq!(
            reached,
            self.backend_app.process().stdout().contains(marker),
            "the answer and the backend app's log disagree about {marker}"
        );
        reached
    }

    /// The backend's inbound records from `peer_id`, oldest first.
    fn inbound_from(&self, peer_id: &str) -> Vec<Value> {
        let log = self
            .backend_proxy
            .handshakes()
            .expect("backend /handshakes");
        records(&log, "inbound")
            .into_iter()
            .filter(|r| r["peer_id"] == peer_id)
            .cloned()
            .collect()
    }

    /// Every process the sandbox started, by PID, and whether it still runs.
    fn pids(&self) -> Vec<(u32, bool)> {
        self.sandbox
            .processes()
            .iter()
            .map(|p| (p.pid(), p.is_running()))
            .collect()
    }
}

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
