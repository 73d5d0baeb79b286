//! The mesh the end-to-end tests stand on, built with `trellis_sandbox`:
//!
//! ```text
//!   control-plane 198.18.0.1   trellis-control-plane (local mode, join tokens)
//!   frontend      198.18.0.2   sidecar (ns/shop/sa/frontend); the test client runs here
//!   backend       198.18.0.3   sidecar (ns/shop/sa/backend) + app (HTTP 8080, echo 9090)
//!   outsider      198.18.0.4   no sidecar (an unmeshed plaintext client), when asked for
//! ```
//!
//! plus `client.py`, the test client run in a pod as an ordinary user.

#![allow(dead_code)]

pub mod policy_mesh;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::Value;
use trellis_sandbox::app::{APP_UID, App, ECHO_PORT, HTTP_PORT};
use trellis_sandbox::control_plane::{ControlPlane, Identity};
use trellis_sandbox::http::python;
use trellis_sandbox::sidecar::{Sidecar, SidecarSpec};
use trellis_sandbox::{Cmd, Pod, Process, Sandbox};

pub const CONTROL_PLANE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const FRONTEND_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const BACKEND_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
pub const OUTSIDER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 4);

pub const FRONTEND_ID: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
pub const BACKEND_ID: &str = "spiffe://cluster.local/ns/shop/sa/backend";
pub const PAYMENTS_ID: &str = "spiffe://cluster.local/ns/shop/sa/payments";

/// The test client, written into each sandbox as `client.py`.
pub const CLIENT_PY: &str = include_str!("client.py");

pub fn frontend_identity() -> Identity {
    Identity::new("shop", "frontend")
}

pub fn backend_identity() -> Identity {
    Identity::new("shop", "backend")
}

/// What to vary between meshes.
#[derive(Debug, Clone)]
pub struct MeshSpec {
    /// Extra flags of the frontend's and the backend's `trellis-proxy run`.
    pub frontend_args: Vec<String>,
    /// See `frontend_args`.
    pub backend_args: Vec<String>,
    /// Whom the frontend's sidecar expects at the backend's address (`--workload`); `None`
    /// leaves the backend out of its mesh view.
    pub backend_id_seen_by_frontend: Option<&'static str>,
    /// Whether to add the unmeshed `outsider` pod.
    pub outsider: bool,
}

impl Default for MeshSpec {
    fn default() -> Self {
        MeshSpec {
            frontend_args: Vec::new(),
            backend_args: Vec::new(),
            backend_id_seen_by_frontend: Some(BACKEND_ID),
            outsider: false,
        }
    }
}

impl MeshSpec {
    /// Both sidecars get `args`.
    pub fn both(mut self, args: &[&str]) -> Self {
        self.frontend_args
            .extend(args.iter().map(|s| s.to_string()));
        self.backend_args.extend(args.iter().map(|s| s.to_string()));
        self
    }
}

/// The running mesh. Dropping it (its sandbox) stops everything and deletes the namespaces.
#[derive(Debug)]
pub struct Mesh {
    pub cp: ControlPlane,
    pub frontend: Pod,
    pub backend: Pod,
    pub outsider: Option<Pod>,
    pub frontend_proxy: Sidecar,
    pub backend_proxy: Sidecar,
    pub backend_app: App,
    /// Last field: dropped after the handles above (which own nothing).
    pub sandbox: Sandbox,
}

impl Mesh {
    pub fn start(spec: MeshSpec) -> Mesh {
        let started = Instant::now();
        let sandbox = Sandbox::new().expect("sandbox");
        let cp_pod = sandbox
            .add_pod("control-plane", CONTROL_PLANE_IP)
            .expect("control plane pod");
        let frontend = sandbox.add_pod("frontend", FRONTEND_IP).expect("pod");
        let backend = sandbox.add_pod("backend", BACKEND_IP).expect("pod");
        let outsider = spec
            .outsider
            .then(|| sandbox.add_pod("outsider", OUTSIDER_IP).expect("pod"));
        sandbox
            .write_file("client.py", CLIENT_PY.as_bytes(), 0o644)
            .expect("client.py");
        let cp = ControlPlane::start(
            &sandbox,
            &cp_pod,
            &[frontend_identity(), backend_identity()],
            &[],
        )
        .expect("control plane");
        let backend_app = App::start(&sandbox, &backend, "backend").expect("backend app");
        let mut backend_spec =
            SidecarSpec::new(backend_identity()).workload(FRONTEND_IP, FRONTEND_ID);
        for a in &spec.backend_args {
            backend_spec = backend_spec.arg(a.clone());
        }
        let backend_proxy = Sidecar::start(&cp, &backend, backend_spec).expect("backend sidecar");
        let frontend_proxy =
            Sidecar::start(&cp, &frontend, frontend_spec(&spec)).expect("frontend sidecar");
        eprintln!(
            "mesh {} up in {:?} ({})",
            sandbox.id(),
            started.elapsed(),
            sandbox.dir().display()
        );
        Mesh {
            cp,
            frontend,
            backend,
            outsider,
            frontend_proxy,
            backend_proxy,
            backend_app,
            sandbox,
        }
    }

    /// Replaces the frontend's sidecar with one started from `spec`.
    pub fn restart_frontend_proxy(&mut self, spec: &MeshSpec) {
        self.frontend_proxy.stop().expect("frontend sidecar stops");
        self.frontend_proxy = Sidecar::start(&self.cp, &self.frontend, frontend_spec(spec))
            .expect("frontend sidecar");
    }

    /// Replaces the backend's sidecar with one with `args`.
    pub fn restart_backend_proxy(&mut self, args: &[&str]) {
        self.backend_proxy.stop().expect("backend sidecar stops");
        let mut spec = SidecarSpec::new(backend_identity()).workload(FRONTEND_IP, FRONTEND_ID);
        for a in args {
            spec = spec.arg(*a);
        }
        self.backend_proxy =
            Sidecar::start(&self.cp, &self.backend, spec).expect("backend sidecar");
    }

    /// Runs `client.py ARGS` in `pod` as the app user, to completion; its JSON answer.
    pub fn client(&self, pod: &Pod, args: &[&str]) -> Value {
        let out = pod
            .exec_ok(&self.client_cmd(args).timeout(Duration::from_secs(60)))
            .expect("client.py runs");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("client.py answer {out:?}: {e}"))
    }

    /// Starts `client.py ARGS` in `pod` as the app user, in the background.
    pub fn spawn_client(&self, pod: &Pod, args: &[&str]) -> Process {
        pod.spawn(&self.client_cmd(args)).expect("client.py starts")
    }

    /// `load` from the frontend to the backend's app for `seconds`.
    pub fn spawn_load(&self, seconds: u32) -> Process {
        let (http, echo, secs) = (
            HTTP_PORT.to_string(),
            ECHO_PORT.to_string(),
            seconds.to_string(),
        );
        let host = BACKEND_IP.to_string();
        self.spawn_client(&self.frontend, &["load", &host, &http, &echo, &secs])
    }

    fn client_cmd(&self, args: &[&str]) -> Cmd {
        Cmd::new(python())
            .arg(self.sandbox.dir().join("client.py"))
            .args(args)
            .uid(Some(APP_UID))
    }
}

fn frontend_spec(spec: &MeshSpec) -> SidecarSpec {
    let mut s = SidecarSpec::new(frontend_identity());
    if let Some(id) = spec.backend_id_seen_by_frontend {
        s = s.workload(BACKEND_IP, id);
    }
    for a in &spec.frontend_args {
        s = s.arg(a.clone());
    }
    s
}

/// The JSON a background `client.py` printed, once it exits (at most `timeout`).
pub fn client_result(process: &Process, timeout: Duration) -> Value {
    let status = process.wait(timeout).expect("client.py finishes");
    let out = process.stdout();
    assert!(
        status.success(),
        "client.py failed ({status}): {out} {}",
        process.stderr()
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("client.py answer {out:?}: {e}"))
}

/// Polls `f` every 100 ms until it returns `Some`, for at most `timeout`.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A marker no packet contains by chance.
pub fn marker(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("trellis-{what}-{}-{nanos:09}", std::process::id())
}

/// The records of `handshakes` going `direction` (`outbound`, `inbound`, `inbound-plain`).
pub fn records<'a>(handshakes: &'a [Value], direction: &str) -> Vec<&'a Value> {
    handshakes
        .iter()
        .filter(|r| r["direction"] == direction)
        .collect()
}
