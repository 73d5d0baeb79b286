//! The demo as root: every pod in a network namespace of its own on a bridge — the node
//! (`trellis_sandbox`), the control plane in a pod of its own, sidecars installed as in a
//! cluster — `trellis-proxy init`'s iptables rules, then `trellis-proxy run` as UID 1337 in
//! transparent mode — and the apps real processes (python3, UID 1000) that know nothing of the
//! mesh: the backends serve HTTP, the callers call the Service `shop/backend` by its name
//! (`backend.shop`, in every pod's `/etc/hosts`) and by its ClusterIP. The node does kube-proxy's
//! job for that ClusterIP, as on a cluster — and never sees a meshed connection: the callers'
//! sidecars pick a backend pod themselves. The sidecars learn pods, the Service and the
//! backends' policy from discovery only.
//!
//! ```text
//!   control-plane 198.18.0.1   trellis-control-plane (local mode, join tokens, mesh file)
//!   frontend      198.18.0.2   sidecar ns/shop/sa/frontend; its app calls the Service
//!   backend-1     198.18.0.3   sidecar ns/shop/sa/backend + app (HTTP :8080, named http)
//!   intruder      198.18.0.4   sidecar ns/evil/sa/intruder; its app calls the Service
//!   backend-2     198.18.0.5   sidecar ns/shop/sa/backend + app (HTTP :8080, named http)
//!   node          198.18.0.254 kube-proxy: 198.19.0.10:8080 → backend-1, backend-2 :8080
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use trellis_sandbox::app::{APP_UID, App, HTTP_PORT};
use trellis_sandbox::control_plane::{ControlPlane, Identity};
use trellis_sandbox::http::python;
use trellis_sandbox::sidecar::{Sidecar, SidecarSpec};
use trellis_sandbox::{Cmd, Pod, Process, Sandbox, Service, netns};

use super::mesh_file::{self, Endpoint, Layout, SERVICE, SERVICE_HOST, SERVICE_PORT};
use super::observer::SiteSpec;
use super::story::PolicyStep;
use super::{Backing, Cleanup, DemoArgs, Out, Replica, Role, Started};

/// The control plane's pod address.
const CONTROL_PLANE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The sidecars' admin endpoint, inside each pod.
const ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15000);
/// The callers' app.
const CALLER_PY: &str = include_str!("caller.py");
/// How long the callers keep calling beyond the show (it stops them sooner).
const CALLER_MARGIN: Duration = Duration::from_secs(30);
/// Programs the pods need besides the Trellis binaries.
const TOOLS: [(&str, &str); 4] = [
    ("ip", "iproute2"),
    ("iptables-restore", "iptables"),
    ("setpriv", "util-linux"),
    ("python3", "python3"),
];

/// A pod's address.
fn ip(replica: Replica) -> Ipv4Addr {
    let last = match (replica.role, replica.n) {
        (Role::Frontend, _) => 2,
        (Role::Backend, 1) => 3,
        (Role::Intruder, _) => 4,
        (Role::Backend, _) => 5,
    };
    Ipv4Addr::new(198, 18, 0, last)
}

/// Everything running; the sandbox undoes it all on drop, too.
#[derive(Debug)]
pub struct Mesh {
    /// The control plane (a handle: the sandbox owns the process).
    cp: ControlPlane,
    /// The backends' apps.
    apps: Vec<(Replica, App)>,
    /// The sidecars, in start order.
    sidecars: Vec<(Replica, Sidecar)>,
    /// The pods, for starting the callers' apps.
    pods: Vec<(Replica, Pod)>,
    /// The callers' apps, once the traffic has begun.
    callers: Mutex<Vec<(Replica, Process)>>,
    /// Last: dropped after the handles above.
    sandbox: Sandbox,
}

/// Checks, before anything starts, that the programs the pods need are there.
pub fn preflight() -> anyhow::Result<()> {
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(tool, _)| !on_path(tool))
        .map(|(tool, package)| format!("{tool} (package {package})"))
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "network namespace mode needs {}: install them (./scripts/setup does)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Starts the mesh, saying each step; on error, what started is stopped (dropped) already.
pub fn start(args: &DemoArgs, out: &Out) -> anyhow::Result<Started> {
    let sandbox = Sandbox::new().context("creating the sandbox")?;
    out.line(&format!(
        "sandbox {}: network namespaces {}*, files in {}",
        sandbox.id(),
        sandbox.id(),
        sandbox.dir().display()
    ))?;
    let cp_pod = sandbox.add_pod("control-plane", CONTROL_PLANE_IP)?;
    let mut pods = Vec::new();
    for replica in Replica::ALL {
        pods.push((replica, sandbox.add_pod(&replica.name(), ip(replica))?));
    }
    sandbox.add_host(SERVICE_HOST, mesh_file::CLUSTER_IP)?;
    sandbox.write_file("caller.py", CALLER_PY.as_bytes(), 0o644)?;
    let layout = layout();
    let identities: Vec<Identity> = Role::ALL
        .iter()
        .map(|r| Identity::new(r.namespace(), r.service_account()))
        .collect();
    let cp = out.step(
        "starting the control plane (local mode: join tokens, mesh file)",
        || {
            let yaml = mesh_file::render(&layout, PolicyStep::FrontendOnly);
            let cp = ControlPlane::start_with_mesh(&sandbox, &cp_pod, &identities, &yaml, &[])?;
            let detail = format!("{}  {}", cp.addr(), pid(cp.process().as_ref()));
            Ok((cp, detail))
        },
    )?;
    out.step(
        &format!(
            "installing kube-proxy's rules on the node for Service {SERVICE} ({}, {SERVICE_HOST})",
            mesh_file::cluster_addr()
        ),
        || {
            let endpoints = layout
                .service_endpoints()
                .into_iter()
                .filter_map(|(_, a)| match a {
                    SocketAddr::V4(a) => Some(a),
                    SocketAddr::V6(_) => None,
                });
            let service =
                Service::new(SERVICE, mesh_file::CLUSTER_IP).port(SERVICE_PORT, endpoints);
            sandbox.node().add_service(&service)?;
            Ok(((), "iptables DNAT, for unmeshed clients".to_owned()))
        },
    )?;
    let mut apps = Vec::new();
    let mut sidecars = Vec::new();
    for (replica, pod) in &pods {
        if replica.role == Role::Backend {
            apps.push((
                *replica,
                out.step(
                    &format!(
                        "starting the {} app (HTTP :{HTTP_PORT}, named http)",
                        replica.name()
                    ),
                    || {
                        let app = App::start(&sandbox, pod, &replica.name())?;
                        let detail = pid(Some(app.process()));
                        Ok((app, detail))
                    },
                )?,
            ));
        }
        let sidecar = out.step(
            &format!(
                "starting the {} sidecar (init rules, then run as UID 1337)",
                replica.name()
            ),
            || {
                let role = replica.role;
                let spec =
                    SidecarSpec::new(Identity::new(role.namespace(), role.service_account()))
                        .arg(format!("--cert-ttl={}s", args.cert_ttl.as_secs()));
                let sidecar = Sidecar::start(&cp, pod, spec)?;
                let detail = format!("{}  {}", pod.ip(), pid(Some(sidecar.process())));
                Ok((sidecar, detail))
            },
        )?;
        sidecars.push((*replica, sidecar));
    }
    let mesh_file = cp
        .mesh_file()
        .map(PathBuf::from)
        .context("the control plane has no mesh file")?;
    let sites = pods
        .iter()
        .map(|(replica, pod)| SiteSpec {
            replica: *replica,
            netns: Some(pod.netns().name().to_owned()),
            admin: ADMIN,
            // The callers' apps are processes of their pods (`Mesh::start_callers`).
            call: None,
            place: pod.ip().to_string(),
        })
        .collect();
    Ok(Started {
        sites,
        mesh_file,
        layout,
        backing: Backing::Namespaced(Box::new(Mesh {
            cp,
            apps,
            sidecars,
            pods,
            callers: Mutex::new(Vec::new()),
            sandbox,
        })),
    })
}

/// Where the pods are, for the mesh file: each its own IP, every port, tunnel on 15008.
fn layout() -> Layout {
    let pod = |replica: Replica| Endpoint {
        ip: IpAddr::V4(ip(replica)),
        port: None,
        tunnel: None,
        http: (replica.role == Role::Backend).then_some(HTTP_PORT),
    };
    Layout {
        frontend: pod(Replica::of(Role::Frontend)),
        backends: Replica::BACKENDS.into_iter().map(pod).collect(),
        intruder: pod(Replica::of(Role::Intruder)),
    }
}

/// The URLs the callers' apps call, in turn: the Service by name, then by ClusterIP.
pub fn caller_urls() -> [String; 2] {
    [
        format!("http://{SERVICE_HOST}:{SERVICE_PORT}"),
        format!(
            "http://{}",
            SocketAddrV4::new(mesh_file::CLUSTER_IP, SERVICE_PORT)
        ),
    ]
}

impl Mesh {
    /// `Err` naming the first process that has stopped, with the end of its log.
    pub fn check_alive(&self) -> Result<(), String> {
        let mut all: Vec<(String, Process)> = Vec::new();
        if let Some(p) = self.cp.process() {
            all.push(("the control plane".into(), p));
        }
        for (replica, app) in &self.apps {
            all.push((format!("the {} app", replica.name()), app.process().clone()));
        }
        for (replica, s) in &self.sidecars {
            all.push((
                format!("the {} sidecar", replica.name()),
                s.process().clone(),
            ));
        }
        for (replica, p) in self.callers().iter() {
            all.push((format!("the {} app", replica.name()), p.clone()));
        }
        for (what, p) in all {
            if let Some(status) = p.exit_status() {
                let log = p.stderr();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(format!(
                    "{what} stopped unexpectedly ({status}); its log ({}) ends:\n{}",
                    p.stderr_path().display(),
                    tail.join("\n")
                ));
            }
        }
        Ok(())
    }

    /// Starts the callers' apps (frontend, intruder): for `seconds` (and a margin), a call to
    /// the Service every second, by name and by ClusterIP in turn, as UID 1000.
    pub fn start_callers(&self, seconds: Duration) -> anyhow::Result<()> {
        let script = self.sandbox.dir().join("caller.py");
        let seconds = (seconds + CALLER_MARGIN).as_secs().to_string();
        let mut callers = self.callers();
        for (replica, pod) in self.pods.iter().filter(|(r, _)| r.role.calls()) {
            let cmd = Cmd::new(python())
                .arg(&script)
                .args([replica.name().as_str(), seconds.as_str()])
                .args(caller_urls())
                .uid(Some(APP_UID));
            let p = pod
                .spawn(&cmd)
                .with_context(|| format!("starting the {} app", replica.name()))?;
            callers.push((*replica, p));
        }
        Ok(())
    }

    /// Connections kube-proxy (the node's DNAT) took for the Service.
    pub fn kube_proxy_connections(&self) -> Option<u64> {
        self.sandbox
            .node()
            .dnat_counts(SERVICE)
            .ok()
            .map(|c| c.total)
    }

    fn callers(&self) -> std::sync::MutexGuard<'_, Vec<(Replica, Process)>> {
        self.callers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops every process, deletes every namespace (their iptables rules go with them) and
    /// the temporary directory.
    pub fn shutdown(self: Box<Self>) -> Cleanup {
        let Mesh { sandbox, .. } = *self;
        let id = sandbox.id().to_owned();
        let processes = sandbox.processes().len();
        let namespaces = sandbox.namespaces().len();
        let dir = sandbox.dir().to_owned();
        sandbox.shutdown();
        drop(sandbox);
        let namespaces_left = netns::list()
            .into_iter()
            .filter(|n| n.starts_with(&format!("{id}-")))
            .collect();
        Cleanup {
            processes,
            namespaces,
            namespaces_left,
            dir,
        }
    }
}

/// `(pid N)`, as the start lines show it (the e2e test reads them).
fn pid(p: Option<&Process>) -> String {
    p.map_or_else(String::new, |p| format!("(pid {})", p.pid()))
}

/// Whether `tool` is an executable in `PATH` (or in the sbin directories root has).
fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .any(|dir| dir.join(tool).is_file())
}
