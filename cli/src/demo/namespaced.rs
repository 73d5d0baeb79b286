//! The demo as root: every workload in a network namespace of its own on a bridge
//! (`trellis_sandbox`), the control plane in a fourth, sidecars installed as in a cluster —
//! `trellis-proxy init`'s iptables rules, then `trellis-proxy run` as UID 1337 in transparent
//! mode — and the backend's app a real process (python3, UID 1000) that knows nothing of the
//! mesh. The sidecars learn endpoints and the backend's policy from discovery only.
//!
//! ```text
//!   control-plane 198.18.0.1   trellis-control-plane (local mode, join tokens, mesh file)
//!   frontend      198.18.0.2   sidecar ns/shop/sa/frontend; calls the backend
//!   backend       198.18.0.3   sidecar ns/shop/sa/backend + app (HTTP :8080)
//!   intruder      198.18.0.4   sidecar ns/evil/sa/intruder; calls the backend
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context as _;
use trellis_sandbox::app::{App, HTTP_PORT};
use trellis_sandbox::control_plane::{ControlPlane, Identity};
use trellis_sandbox::netns;
use trellis_sandbox::sidecar::{Sidecar, SidecarSpec};
use trellis_sandbox::{Process, Sandbox};

use super::mesh_file::{self, Endpoint, Layout};
use super::observer::SiteSpec;
use super::story::PolicyStep;
use super::{Backing, Cleanup, DemoArgs, Out, Role, Started};

/// The control plane's pod address.
const CONTROL_PLANE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The sidecars' admin endpoint, inside each pod.
const ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15000);
/// Programs the pods need besides the Trellis binaries.
const TOOLS: [(&str, &str); 4] = [
    ("ip", "iproute2"),
    ("iptables-restore", "iptables"),
    ("setpriv", "util-linux"),
    ("python3", "python3"),
];

/// A workload's pod address.
fn ip(role: Role) -> Ipv4Addr {
    match role {
        Role::Frontend => Ipv4Addr::new(198, 18, 0, 2),
        Role::Backend => Ipv4Addr::new(198, 18, 0, 3),
        Role::Intruder => Ipv4Addr::new(198, 18, 0, 4),
    }
}

/// Everything running; the sandbox undoes it all on drop, too.
#[derive(Debug)]
pub struct Mesh {
    /// The control plane (a handle: the sandbox owns the process).
    cp: ControlPlane,
    /// The backend's app.
    app: App,
    /// The sidecars, in start order.
    sidecars: Vec<(Role, Sidecar)>,
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
    for role in Role::ALL {
        pods.push((role, sandbox.add_pod(role.name(), ip(role))?));
    }
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
    let mut app = None;
    let mut sidecars = Vec::new();
    for (role, pod) in &pods {
        if *role == Role::Backend {
            app = Some(out.step(
                &format!("starting the backend's app (HTTP :{HTTP_PORT})"),
                || {
                    let app = App::start(&sandbox, pod, "backend")?;
                    let detail = pid(Some(app.process()));
                    Ok((app, detail))
                },
            )?);
        }
        let sidecar = out.step(
            &format!(
                "starting the {} sidecar (init rules, then run as UID 1337)",
                role.name()
            ),
            || {
                let spec =
                    SidecarSpec::new(Identity::new(role.namespace(), role.service_account()))
                        .arg(format!("--cert-ttl={}s", args.cert_ttl.as_secs()));
                let sidecar = Sidecar::start(&cp, pod, spec)?;
                let detail = format!("{}  {}", pod.ip(), pid(Some(sidecar.process())));
                Ok((sidecar, detail))
            },
        )?;
        sidecars.push((*role, sidecar));
    }
    let app = app.context("the backend's app did not start")?;
    let mesh_file = cp
        .mesh_file()
        .map(PathBuf::from)
        .context("the control plane has no mesh file")?;
    let sites = Role::ALL
        .iter()
        .zip(&pods)
        .map(|(role, (_, pod))| SiteSpec {
            role: *role,
            netns: Some(pod.netns().name().to_owned()),
            admin: ADMIN,
            call: role
                .calls()
                .then_some(SocketAddr::from((ip(Role::Backend), HTTP_PORT))),
            records: *role == Role::Backend,
            place: pod.ip().to_string(),
        })
        .collect();
    Ok(Started {
        sites,
        mesh_file,
        layout,
        backing: Backing::Namespaced(Box::new(Mesh {
            cp,
            app,
            sidecars,
            sandbox,
        })),
    })
}

/// Where the workloads are, for the mesh file: each its own IP, every port, tunnel on 15008.
fn layout() -> Layout {
    let pod = |role| Endpoint {
        ip: IpAddr::V4(ip(role)),
        port: None,
        tunnel: None,
    };
    Layout {
        frontend: pod(Role::Frontend),
        backend: pod(Role::Backend),
        intruder: pod(Role::Intruder),
        app_port: HTTP_PORT,
    }
}

impl Mesh {
    /// `Err` naming the first process that has stopped, with the end of its log.
    pub fn check_alive(&self) -> Result<(), String> {
        let mut all: Vec<(String, Process)> = Vec::new();
        if let Some(p) = self.cp.process() {
            all.push(("the control plane".into(), p));
        }
        all.push(("the backend's app".into(), self.app.process().clone()));
        for (role, s) in &self.sidecars {
            all.push((format!("the {} sidecar", role.name()), s.process().clone()));
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
