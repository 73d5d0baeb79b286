//! The mesh `e2e_services.rs` stands on, built with `trellis_sandbox`: a Service in front of
//! backend pods, meshed callers, an unmeshed one, and the node doing kube-proxy's job.
//!
//! ```text
//!   control-plane 198.18.0.1     trellis-control-plane --mesh-file (local mode, join tokens)
//!   frontend      198.18.0.2     sidecar ns/shop/sa/frontend
//!   intruder      198.18.0.4     sidecar ns/evil/sa/intruder (when asked for)
//!   outsider      198.18.0.5     no sidecar: an unmeshed client (when asked for)
//!   backend-N     198.18.0.1N    sidecar ns/shop/sa/backend + app "backend-N" (HTTP on its `http` port)
//!   node          198.18.0.254   kube-proxy: 198.19.0.10:80 → every ready backend's podIP:http
//!
//!   Service shop/backend  198.19.0.10:80 → targetPort http (named: each pod says its number)
//!                         names backend.shop and backend.shop.svc.cluster.local in every pod
//!   Policy shop/backend-allow: only ns/shop/sa/frontend on the backends' http ports; STRICT
//! ```
//!
//! The sidecars learn everything from the control plane's discovery stream (no `--workload`
//! flags). What the mesh file says of the backends, the node's kube-proxy rules say too, as a
//! cluster's EndpointSlice controller and kube-proxy would: [`ServiceMesh::set_ready`] and
//! [`ServiceMesh::remove_backend`] change both. Uses `crate::support` (declare it next to this).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;
use trellis_sandbox::app::{APP_UID, App};
use trellis_sandbox::control_plane::{ControlPlane, Identity};
use trellis_sandbox::http::{HttpResponse, python};
use trellis_sandbox::sidecar::{Sidecar, SidecarSpec};
use trellis_sandbox::{Cmd, DnatCounts, Pod, Process, Result, Sandbox, Service};

use crate::support::{
    CLIENT_PY, CONTROL_PLANE_IP, FRONTEND_IP, backend_identity, eventually, frontend_identity,
};

pub use crate::support::BACKEND_ID;

/// The Service's ClusterIP.
pub const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
/// `namespace/name`, as kube-proxy's rules and the sidecars' records name it.
pub const SERVICE: &str = "shop/backend";
/// The Service port.
pub const SERVICE_PORT: u16 = 80;
/// A name of the Service that resolves in every pod.
pub const SERVICE_NAME: &str = "backend.shop";
/// The Service by its ClusterIP.
pub const CLUSTER_URL: &str = "http://198.19.0.10";
/// The reason a caller's sidecar records for a connection it balanced over the Service.
pub const VIA_SERVICE: &str = "via Service shop/backend:80";
/// The backends' AuthorizationPolicy.
pub const POLICY: &str = "shop/backend-allow";
/// The intruder's identity.
pub const INTRUDER_ID: &str = "spiffe://cluster.local/ns/evil/sa/intruder";
pub const INTRUDER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 4);
pub const OUTSIDER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 5);
const UPDATES: &str = "trellis_proxy_discovery_updates_total";
/// How long sidecars may take to apply a change of the mesh file.
const APPLY_TIMEOUT: Duration = Duration::from_secs(15);

/// What to vary between meshes.
#[derive(Debug, Clone)]
pub struct MeshSpec {
    /// One backend pod per entry: the number its `http` port has (its app serves there).
    pub http_ports: Vec<u16>,
    /// Whether to add the intruder (meshed, refused by the policy).
    pub intruder: bool,
    /// Whether to add the outsider (no sidecar).
    pub outsider: bool,
}

impl Default for MeshSpec {
    fn default() -> Self {
        MeshSpec {
            http_ports: vec![8080; 3],
            intruder: false,
            outsider: false,
        }
    }
}

/// One backend pod.
#[derive(Debug)]
pub struct Backend {
    /// `backend-N`: its pod's name, and the name its app answers with.
    pub name: String,
    /// Its pod IP.
    pub ip: Ipv4Addr,
    /// What its `http` port is.
    pub http_port: u16,
    pub pod: Pod,
    pub app: App,
    pub proxy: Sidecar,
}

/// What the cluster says of one backend pod: whether it exists, whether it is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Listed {
    present: bool,
    ready: bool,
}

/// The running mesh; dropping it (its sandbox) stops everything and deletes the namespaces.
#[derive(Debug)]
pub struct ServiceMesh {
    pub cp: ControlPlane,
    pub frontend: Pod,
    pub frontend_proxy: Sidecar,
    pub intruder: Option<Pod>,
    pub intruder_proxy: Option<Sidecar>,
    pub outsider: Option<Pod>,
    pub backends: Vec<Backend>,
    /// Whether the intruder is in the mesh file.
    with_intruder: bool,
    /// What the mesh file and kube-proxy say of each backend, by name.
    listed: Mutex<BTreeMap<String, Listed>>,
    /// Last field: dropped after the handles above (which own nothing).
    pub sandbox: Sandbox,
}

impl ServiceMesh {
    /// Starts the mesh and waits until every sidecar has applied it: the callers hold the
    /// Service with every backend ready, the backends their policy.
    pub fn start(spec: &MeshSpec) -> ServiceMesh {
        let started = Instant::now();
        let sandbox = Sandbox::new().expect("sandbox");
        let cp_pod = sandbox
            .add_pod("control-plane", CONTROL_PLANE_IP)
            .expect("pod");
        let frontend = sandbox.add_pod("frontend", FRONTEND_IP).expect("pod");
        let intruder = spec
            .intruder
            .then(|| sandbox.add_pod("intruder", INTRUDER_IP).expect("pod"));
        let outsider = spec
            .outsider
            .then(|| sandbox.add_pod("outsider", OUTSIDER_IP).expect("pod"));
        let mut backend_pods = Vec::new();
        for (i, port) in spec.http_ports.iter().enumerate() {
            let n = u8::try_from(i + 1).expect("a few backends");
            let name = format!("backend-{n}");
            let ip = Ipv4Addr::new(198, 18, 0, 10 + n);
            let pod = sandbox.add_pod(&name, ip).expect("pod");
            backend_pods.push((name, ip, *port, pod));
        }
        for name in [SERVICE_NAME, "backend.shop.svc.cluster.local"] {
            sandbox.add_host(name, CLUSTER_IP).expect("host name");
        }
        sandbox
            .write_file("client.py", CLIENT_PY.as_bytes(), 0o644)
            .expect("client.py");
        let listed: BTreeMap<String, Listed> = backend_pods
            .iter()
            .map(|(name, ..)| {
                let l = Listed {
                    present: true,
                    ready: true,
                };
                (name.clone(), l)
            })
            .collect();
        let entries: Vec<Entry> = backend_pods
            .iter()
            .map(|(name, ip, port, _)| Entry {
                name: name.clone(),
                ip: *ip,
                http_port: *port,
                listed: listed[name],
            })
            .collect();
        let mut identities = vec![frontend_identity(), backend_identity()];
        if spec.intruder {
            identities.push(intruder_identity());
        }
        let cp = ControlPlane::start_with_mesh(
            &sandbox,
            &cp_pod,
            &identities,
            &mesh_yaml(&entries, spec.intruder),
            &[],
        )
        .expect("control plane");
        sandbox
            .node()
            .add_service(&kube_proxy_service(&entries))
            .expect("kube-proxy service");
        let backends: Vec<Backend> = backend_pods
            .into_iter()
            .map(|(name, ip, http_port, pod)| {
                let app = App::start_on(&sandbox, &pod, &name, http_port).expect("backend app");
                let proxy = Sidecar::start(&cp, &pod, SidecarSpec::new(backend_identity()))
                    .expect("backend sidecar");
                Backend {
                    name,
                    ip,
                    http_port,
                    pod,
                    app,
                    proxy,
                }
            })
            .collect();
        let frontend_proxy = Sidecar::start(&cp, &frontend, SidecarSpec::new(frontend_identity()))
            .expect("frontend sidecar");
        let intruder_proxy = intruder.as_ref().map(|pod| {
            Sidecar::start(&cp, pod, SidecarSpec::new(intruder_identity()))
                .expect("intruder sidecar")
        });
        let mesh = ServiceMesh {
            cp,
            frontend,
            frontend_proxy,
            intruder,
            intruder_proxy,
            outsider,
            backends,
            with_intruder: spec.intruder,
            listed: Mutex::new(listed),
            sandbox,
        };
        let workloads = 1 + usize::from(spec.intruder) + mesh.backends.len();
        for s in mesh.sidecars() {
            let applied = eventually(APPLY_TIMEOUT, || {
                let updates = s.metric(UPDATES, &[]).ok()?;
                let known = config_dump(s)?["workloads_known"].as_u64()?;
                (updates >= 1.0 && known >= workloads as u64).then_some(())
            });
            assert!(
                applied.is_some(),
                "{}: the sidecar never applied the mesh",
                s.pod().name()
            );
        }
        mesh.wait_for_ready_endpoints(mesh.backends.len());
        eprintln!(
            "service mesh {} up in {:?} ({})",
            mesh.sandbox.id(),
            started.elapsed(),
            mesh.sandbox.dir().display()
        );
        mesh
    }

    /// The backend pod `name`.
    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.name == name)
    }

    /// Every sidecar.
    fn sidecars(&self) -> impl Iterator<Item = &Sidecar> {
        std::iter::once(&self.frontend_proxy)
            .chain(self.intruder_proxy.iter())
            .chain(self.backends.iter().map(|b| &b.proxy))
    }

    /// The meshed callers' sidecars.
    fn callers(&self) -> impl Iterator<Item = &Sidecar> {
        std::iter::once(&self.frontend_proxy).chain(self.intruder_proxy.iter())
    }

    /// Marks backend `name` (not) ready, in the mesh file and in kube-proxy's rules.
    pub fn set_ready(&self, name: &str, ready: bool) {
        self.change(name, |l| l.ready = ready);
    }

    /// Removes backend `name` from the mesh file (workload and endpoint) and from kube-proxy's
    /// rules, as a cluster does when its pod is deleted. Its processes are the caller's to stop.
    pub fn remove_backend(&self, name: &str) {
        self.change(name, |l| l.present = false);
    }

    fn change(&self, name: &str, f: impl FnOnce(&mut Listed)) {
        let mut listed = self.listed.lock().unwrap_or_else(PoisonError::into_inner);
        f(listed.get_mut(name).expect("a backend of this mesh"));
        let entries: Vec<Entry> = self
            .backends
            .iter()
            .map(|b| Entry {
                name: b.name.clone(),
                ip: b.ip,
                http_port: b.http_port,
                listed: listed[&b.name],
            })
            .collect();
        self.cp
            .write_mesh(&mesh_yaml(&entries, self.with_intruder))
            .expect("rewrite the mesh file");
        self.sandbox
            .node()
            .update_service(&kube_proxy_service(&entries))
            .expect("kube-proxy update");
    }

    /// Waits until every caller's sidecar holds the Service with `n` ready endpoints.
    pub fn wait_for_ready_endpoints(&self, n: usize) {
        for s in self.callers() {
            let mut last = None;
            let held = eventually(APPLY_TIMEOUT, || {
                last = ready_endpoints(s);
                (last.as_ref()?.len() == n).then_some(())
            });
            assert!(
                held.is_some(),
                "{}: the Service never had {n} ready endpoints (last: {last:?})",
                s.pod().name()
            );
        }
    }

    /// `GET BASE/<marker>` from `pod`, as its app (intercepted by its sidecar, if any).
    pub fn get(&self, pod: &Pod, base: &str, marker: &str) -> Result<HttpResponse> {
        trellis_sandbox::http::http_get(
            pod,
            &format!("{base}/{marker}"),
            Some(APP_UID),
            Duration::from_secs(5),
        )
    }

    /// `count` new connections from the frontend's app to `url`, `concurrency` at a time
    /// (at most 60 s): which backend answered each.
    pub fn calls(&self, url: &str, count: u32, concurrency: u32) -> Calls {
        let p = self.spawn_calls(url, count, 60, concurrency);
        Calls::of(&client_output(&p, Duration::from_secs(90)))
    }

    /// Starts `client.py calls` in the frontend's pod: `count` new connections to `url`,
    /// `concurrency` at a time, for at most `seconds`.
    pub fn spawn_calls(&self, url: &str, count: u32, seconds: u32, concurrency: u32) -> Process {
        let cmd = Cmd::new(python())
            .arg(self.sandbox.dir().join("client.py"))
            .args(["calls", url, &count.to_string(), &seconds.to_string()])
            .args(["--concurrency", &concurrency.to_string()])
            .uid(Some(APP_UID));
        self.frontend.spawn(&cmd).expect("client.py starts")
    }

    /// What kube-proxy (the node) DNAT'd for the Service.
    pub fn dnat_counts(&self) -> DnatCounts {
        self.sandbox.node().dnat_counts(SERVICE).expect("counts")
    }

    /// Connections kube-proxy DNAT'd for the Service.
    pub fn dnat_total(&self) -> u64 {
        self.dnat_counts().total
    }

    /// The node's rules with counters, for messages.
    pub fn iptables_save(&self) -> String {
        self.sandbox
            .node()
            .iptables_save()
            .unwrap_or_else(|e| e.to_string())
    }
}

/// What `client.py calls` saw.
#[derive(Debug, Clone, Default)]
pub struct Calls {
    /// Who answered each call, in the order they started (`failed` for none).
    pub answered: Vec<String>,
    /// Calls with no good answer.
    pub failures: u64,
    /// The first errors.
    pub errors: Vec<String>,
}

impl Calls {
    /// From `client.py calls` JSON.
    pub fn of(v: &Value) -> Calls {
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| Some(s.as_str()?.to_owned()))
                        .collect()
                })
                .unwrap_or_default()
        };
        Calls {
            answered: strings(&v["answered"]),
            failures: v["failures"].as_u64().unwrap_or(u64::MAX),
            errors: strings(&v["errors"]),
        }
    }

    /// Calls `name` answered.
    pub fn count(&self, name: &str) -> usize {
        self.answered.iter().filter(|a| *a == name).count()
    }

    /// Calls that started after the last one `name` answered (all of them if none).
    pub fn after_last(&self, name: &str) -> usize {
        let last = self.answered.iter().rposition(|a| a == name);
        self.answered.len() - last.map_or(0, |i| i + 1)
    }
}

/// The JSON a `client.py` printed, once it exits (at most `timeout`).
pub fn client_output(process: &Process, timeout: Duration) -> Value {
    let status = process.wait(timeout).expect("client.py finishes");
    let out = process.stdout();
    assert!(
        status.success(),
        "client.py failed ({status}): {out} {}",
        process.stderr()
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("client.py answer {out:?}: {e}"))
}

fn intruder_identity() -> Identity {
    Identity::new("evil", "intruder")
}

/// A sidecar's `/config_dump`.
fn config_dump(s: &Sidecar) -> Option<Value> {
    serde_json::from_str(&s.admin_get("/config_dump").ok()?).ok()
}

/// The ready endpoints a sidecar holds for the Service's port, if it holds the Service.
fn ready_endpoints(s: &Sidecar) -> Option<Vec<String>> {
    let dump = config_dump(s)?;
    let service = dump["services"]
        .as_array()?
        .iter()
        .find(|x| x["name"] == SERVICE)?;
    let port = service["ports"]
        .as_array()?
        .iter()
        .find(|p| p["port"] == SERVICE_PORT)?;
    Some(
        port["endpoints"]
            .as_array()?
            .iter()
            .filter(|e| e["health"] == "ready")
            .filter_map(|e| Some(e["addr"].as_str()?.to_owned()))
            .collect(),
    )
}

/// A backend as the mesh file and kube-proxy list it.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    ip: Ipv4Addr,
    http_port: u16,
    listed: Listed,
}

/// The mesh file: the callers, the backends still present (with their `http` port and
/// readiness), the Service, and the backends' policy (STRICT mesh-wide).
fn mesh_yaml(backends: &[Entry], intruder: bool) -> String {
    let mut text = format!(
        "mtls: STRICT\n\
         workloads:\n\
         \x20 - {{namespace: shop, serviceAccount: frontend, ip: {FRONTEND_IP}, labels: {{app: frontend}}}}\n"
    );
    if intruder {
        let _ = writeln!(
            text,
            "  - {{namespace: evil, serviceAccount: intruder, ip: {INTRUDER_IP}, labels: {{app: intruder}}}}"
        );
    }
    for b in backends.iter().filter(|b| b.listed.present) {
        let _ = writeln!(
            text,
            "  - {{namespace: shop, serviceAccount: backend, ip: {}, labels: {{app: backend}}, ports: {{http: {}}}, ready: {}}}",
            b.ip, b.http_port, b.listed.ready
        );
    }
    let ports: BTreeSet<u16> = backends.iter().map(|b| b.http_port).collect();
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let _ = write!(
        text,
        "services:\n\
         \x20 - {{namespace: shop, name: backend, clusterIPs: [{CLUSTER_IP}], selector: {{app: backend}}, ports: [{{name: http, port: {SERVICE_PORT}, targetPort: http}}]}}\n\
         policies:\n\
         \x20 - apiVersion: trellis.dev/v1alpha1\n\
         \x20   kind: AuthorizationPolicy\n\
         \x20   metadata: {{name: backend-allow, namespace: shop}}\n\
         \x20   spec: {{selector: {{matchLabels: {{app: backend}}}}, ports: [{}], allow: [\"ns/shop/sa/frontend\"], mode: enforce}}\n",
        ports.join(", ")
    );
    text
}

/// The Service as kube-proxy installs it: the ready endpoints of the pods that exist.
fn kube_proxy_service(backends: &[Entry]) -> Service {
    let endpoints = backends
        .iter()
        .filter(|b| b.listed.present && b.listed.ready)
        .map(|b| SocketAddrV4::new(b.ip, b.http_port));
    Service::new(SERVICE, CLUSTER_IP).port(SERVICE_PORT, endpoints)
}
