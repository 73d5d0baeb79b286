//! The policy mesh of `e2e_policy.rs` and `e2e_describe.rs`: three meshed pods — frontend,
//! backend, intruder — whose sidecars learn endpoints and policy from the control plane's
//! discovery stream only (no `--workload` flags), the control plane following a mesh file that
//! the tests may rewrite while everything runs. The backend's policy `shop/backend-allow`
//! covers port 8080.
//!
//! ```text
//!   control-plane 198.18.0.1   trellis-control-plane --mesh-file (local mode, join tokens)
//!   frontend      198.18.0.2   sidecar ns/shop/sa/frontend
//!   backend       198.18.0.3   sidecar ns/shop/sa/backend + app (HTTP 8080)
//!   intruder      198.18.0.4   sidecar ns/evil/sa/intruder
//! ```

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::Value;
use trellis_sandbox::app::{APP_UID, App};
use trellis_sandbox::control_plane::{ControlPlane, Identity};
use trellis_sandbox::http::{HttpResponse, http_get};
use trellis_sandbox::sidecar::{Sidecar, SidecarSpec};
use trellis_sandbox::{Pod, Result, Sandbox};

use super::*;

pub const INTRUDER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 4);
pub const INTRUDER_ID: &str = "spiffe://cluster.local/ns/evil/sa/intruder";
pub const POLICY: &str = "shop/backend-allow";
const UPDATES: &str = "trellis_proxy_discovery_updates_total";
/// One request's time limit: refusals come back at once, so this only bounds a hang.
const GET: Duration = Duration::from_secs(3);

/// The mesh file: the three workloads, and the backend's policy allowing `allow` on 8080 in
/// `mode` (`enforce` or `audit`).
pub fn mesh_yaml(mode: &str, allow: &[&str]) -> String {
    mesh_yaml_with("", &[8080], mode, allow)
}

/// As [`mesh_yaml`], with `header` (top-level settings such as `mtls: PERMISSIVE\n`) first
/// and the policy covering `ports`.
pub fn mesh_yaml_with(header: &str, ports: &[u16], mode: &str, allow: &[&str]) -> String {
    let allow: Vec<String> = allow.iter().map(|a| format!("\"{a}\"")).collect();
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!(
        "{header}workloads:\n\
         \x20 - {{namespace: shop, serviceAccount: frontend, ip: {FRONTEND_IP}, labels: {{app: frontend}}}}\n\
         \x20 - {{namespace: shop, serviceAccount: backend, ip: {BACKEND_IP}, labels: {{app: backend}}}}\n\
         \x20 - {{namespace: evil, serviceAccount: intruder, ip: {INTRUDER_IP}, labels: {{app: intruder}}}}\n\
         policies:\n\
         \x20 - apiVersion: trellis.dev/v1alpha1\n\
         \x20   kind: AuthorizationPolicy\n\
         \x20   metadata: {{name: backend-allow, namespace: shop}}\n\
         \x20   spec: {{selector: {{matchLabels: {{app: backend}}}}, ports: [{}], allow: [{}], mode: {mode}}}\n",
        ports.join(", "),
        allow.join(", ")
    )
}

pub fn intruder_identity() -> Identity {
    Identity::new("evil", "intruder")
}

/// The running mesh; dropping it (its sandbox) stops everything and deletes the namespaces.
pub struct PolicyMesh {
    pub cp: ControlPlane,
    pub frontend: Pod,
    pub backend: Pod,
    pub intruder: Pod,
    pub backend_app: App,
    pub sidecars: Vec<Sidecar>,
    pub backend_proxy: Sidecar,
    /// Last field: dropped after the handles above.
    pub sandbox: Sandbox,
}

impl PolicyMesh {
    /// Starts the mesh with the backend's policy in `mode` allowing `allow`, and waits until
    /// every sidecar has applied the whole mesh (so the first request meets the policy).
    pub fn start(mode: &str, allow: &[&str]) -> PolicyMesh {
        Self::start_with(&mesh_yaml(mode, allow))
    }

    /// As [`PolicyMesh::start`], the control plane following `mesh_yaml` (three workloads as
    /// [`mesh_yaml_with`] writes them).
    pub fn start_with(mesh_yaml: &str) -> PolicyMesh {
        let started = Instant::now();
        let sandbox = Sandbox::new().expect("sandbox");
        let cp_pod = sandbox
            .add_pod("control-plane", CONTROL_PLANE_IP)
            .expect("pod");
        let frontend = sandbox.add_pod("frontend", FRONTEND_IP).expect("pod");
        let backend = sandbox.add_pod("backend", BACKEND_IP).expect("pod");
        let intruder = sandbox.add_pod("intruder", INTRUDER_IP).expect("pod");
        let identities = [frontend_identity(), backend_identity(), intruder_identity()];
        let cp = ControlPlane::start_with_mesh(&sandbox, &cp_pod, &identities, mesh_yaml, &[])
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
            backend,
            intruder,
            backend_app,
            sidecars,
            backend_proxy,
            sandbox,
        }
    }

    /// `GET http://198.18.0.3:8080/<path>` from `pod`, as its app (intercepted by its sidecar).
    pub fn get(&self, pod: &Pod, path: &str) -> Result<HttpResponse> {
        http_get(
            pod,
            &format!("http://{BACKEND_IP}:8080/{path}"),
            Some(APP_UID),
            GET,
        )
    }

    /// Whether a request from `pod` reaches the backend's app (and only then is answered 200).
    pub fn reaches_backend(&self, pod: &Pod, marker: &str) -> bool {
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
    pub fn inbound_from(&self, peer_id: &str) -> Vec<Value> {
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
    pub fn pids(&self) -> Vec<(u32, bool)> {
        self.sandbox
            .processes()
            .iter()
            .map(|p| (p.pid(), p.is_running()))
            .collect()
    }
}
