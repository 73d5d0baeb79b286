//! A sandbox of pods on this machine, standing in for one Kubernetes node: network namespaces
//! plugged into the node's Linux bridge, the node routing ClusterIPs with kube-proxy's iptables
//! rules, and the Trellis binaries (control plane, sidecars) and small test apps running in the
//! pods. `trellis demo` and the end-to-end tests (`cli/tests/e2e_*.rs`, the proxy's
//! `tests/redirect_netns.rs`) stand on it.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`Sandbox`] (here) | the node, the pods, names pods resolve, the temporary directory, clean-up |
//! | [`node`] | the node: a namespace with bridge `br0` at 198.18.0.254 (the pods' gateway), forwarding, Services (running kube-proxy's rules, reading their counters) |
//! | [`kube_proxy`] | what kube-proxy (iptables mode) installs for a [`Service`]: `KUBE-SVC`/`KUBE-SEP` chains, DNAT, MASQUERADE, REJECT; counters read back (pure) |
//! | [`pod`] | a pod: a namespace plugged into the bridge, one address from 198.18.0.1–253 |
//! | [`link`] | veth pairs: a pod into the bridge (default route via the node), or two namespaces directly |
//! | [`hosts`] | the `/etc/hosts` of every pod (`/etc/netns/<ns>/hosts`): localhost and [`Sandbox::add_host`] names |
//! | [`netns`] | one namespace: create, run commands inside (as root or another UID), move a thread of ours into it, delete; stale clean-up |
//! | [`cmd`] | a command to run in a namespace: program, arguments, environment, user, time limit |
//! | [`process`] | a process started inside (or on the host): PID, log files, waiting, stopping (SIGTERM, then SIGKILL) |
//! | [`root`] | whether this process is root; [`require_root`] for tests that need it |
//! | [`control_plane`] | `trellis-control-plane` in local mode in its pod: join tokens, state dir, mesh file (rewritable), restart |
//! | [`sidecar`] | `trellis-proxy init` + `run` in a pod, and reading its admin endpoint |
//! | [`app`] | the test workload: a small HTTP server and TCP echo (python3) |
//! | [`http`] | HTTP GET from inside a pod (python3): `http_get`, `wait_http_ok` |
//! | [`capture`] | packet capture on the bridge (`dumpcap`) and reading it back (`tshark`, raw bytes) |
//! | [`binaries`] | where the Trellis binaries are: [`binaries::bin_dir`] |
//!
//! # Rules it keeps
//!
//! - Needs root ([`root::is_root`]); [`Sandbox::new`] says so clearly otherwise, and tests call
//!   [`require_root`] first, so that without root they fail instead of passing unseen.
//! - Addresses only from 198.18.0.0/15: pods 198.18.0.1–253, the node 198.18.0.254, Services
//!   [`SERVICE_CIDR`] (198.19.0.0/16). The node has no uplink and no route beyond its
//!   namespaces, so no packet leaves the sandbox.
//! - Names are unique per run (`tsbx-<pid>-<n>-<pod>`, the node `tsbx-<pid>-<n>-node`);
//!   namespaces (and `/etc/netns` entries) left behind by a sandbox whose process died are
//!   removed by the next [`Sandbox::new`].
//! - Everything is undone on drop, also when a test panics: every process started is stopped
//!   (SIGTERM, then SIGKILL after a deadline), every namespace deleted (the node's iptables
//!   rules with it) and every `/etc/netns/<ns>` entry removed. After a panic the temporary
//!   directory (logs, captures, the node's rule files) is kept and its path printed.
//!
//! ```no_run
//! use std::net::SocketAddrV4;
//! use trellis_sandbox::{Sandbox, Service, http};
//! # fn main() -> Result<(), trellis_sandbox::SandboxError> {
//! let sandbox = Sandbox::new()?;
//! let web = sandbox.add_pod("web", "198.18.0.2".parse().unwrap())?;
//! let app = trellis_sandbox::app::App::start(&sandbox, &web, "web")?;
//! let client = sandbox.add_pod("client", "198.18.0.3".parse().unwrap())?;
//! let reply = http::http_get(&client, "http://198.18.0.2:8080/hello", None, http::GET_TIMEOUT)?;
//! assert_eq!(reply.status, 200);
//! // The same app behind a Service, by name, through the node's DNAT:
//! let ip = "198.19.0.10".parse().unwrap();
//! sandbox.node().add_service(&Service::new("web", ip).port(80, [SocketAddrV4::new(web.ip(), 8080)]))?;
//! sandbox.add_host("web.default.svc.cluster.local", ip)?;
//! let reply = http::http_get(&client, "http://web.default.svc.cluster.local/", None, http::GET_TIMEOUT)?;
//! assert_eq!(reply.status, 200);
//! assert_eq!(sandbox.node().dnat_counts("web")?.total, 1);
//! # drop(app);
//! # Ok(()) }
//! ```

pub mod app;
pub mod binaries;
pub mod capture;
pub mod cmd;
pub mod control_plane;
pub mod error;
pub mod hosts;
pub mod http;
pub mod kube_proxy;
pub mod link;
pub mod netns;
pub mod node;
pub mod pod;
pub mod process;
pub mod root;
pub mod sidecar;

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

pub use error::{Result, SandboxError};
pub use kube_proxy::{DnatCounts, SERVICE_CIDR, Service, ServicePort};
pub use netns::{Cmd, Netns};
pub use node::{BRIDGE, NODE_IP, Node};
pub use pod::Pod;
pub use process::{Process, Signal};
pub use root::{is_root, require_root};

use error::io_error;

/// Every namespace a sandbox creates is named `<NAME_PREFIX><pid>-<n>-…`.
pub const NAME_PREFIX: &str = "tsbx-";

/// Numbers the sandboxes of this process.
static SANDBOXES: AtomicU32 = AtomicU32::new(0);

/// Pods on one node, and everything running in them; all of it undone on drop.
#[derive(Debug)]
pub struct Sandbox {
    /// `tsbx-<pid>-<n>`: the prefix of every namespace name of this sandbox.
    id: String,
    /// Logs, state, captures; kept after a panic (`None` once handed over).
    dir: Option<tempfile::TempDir>,
    /// The node: the bridge, routing, Services.
    node: Node,
    /// Pods, extra namespaces and host names; one lock, so they never disagree.
    members: Mutex<Members>,
    /// Whether drop during a panic keeps `dir` (default: yes, to read the logs).
    keep_on_panic: AtomicBool,
}

/// What a sandbox holds besides its node.
#[derive(Debug, Default)]
struct Members {
    /// Pods, in the order they were added.
    pods: Vec<Pod>,
    /// Namespaces not plugged into the bridge ([`Sandbox::add_namespace`]).
    namespaces: Vec<Arc<Netns>>,
    /// Names every pod resolves ([`Sandbox::add_host`]), in the order given.
    hosts: Vec<(String, Ipv4Addr)>,
}

impl Sandbox {
    /// Creates the node (a namespace with bridge [`BRIDGE`] at [`NODE_IP`], forwarding, no
    /// Service yet) and a temporary directory. First removes namespaces left behind by
    /// sandboxes of processes that no longer run.
    pub fn new() -> Result<Sandbox> {
        if !root::is_root() {
            return Err(SandboxError::NotRoot);
        }
        netns::remove_stale(NAME_PREFIX);
        let n = SANDBOXES.fetch_add(1, Ordering::Relaxed);
        let id = format!("{NAME_PREFIX}{}-{n}", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix("trellis-sandbox-")
            .tempdir()
            .map_err(io_error(std::env::temp_dir()))?;
        // Pods run programs as other users (the proxy's UID, the apps'): they read files here.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(io_error(dir.path()))?;
        let node = Node::create(
            format!("{id}-{}", pod::RESERVED_NAME),
            dir.path().join("logs").join(pod::RESERVED_NAME),
        )?;
        Ok(Sandbox {
            id,
            dir: Some(dir),
            node,
            members: Mutex::new(Members::default()),
            keep_on_panic: AtomicBool::new(true),
        })
    }

    /// `tsbx-<pid>-<n>`: every namespace of this sandbox is named with this prefix.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The temporary directory: logs (`logs/<pod>/`), control plane state, captures.
    pub fn dir(&self) -> &Path {
        // `dir` is `None` only inside `drop`.
        self.dir
            .as_ref()
            .map_or(Path::new("/nonexistent"), |d| d.path())
    }

    /// The node: its namespace, and its Services ([`Node::add_service`] …).
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The node's namespace, where [`BRIDGE`] is (captures run here). The name is older than
    /// the node: it is [`Sandbox::node`]`().netns()`.
    pub fn switch(&self) -> &Netns {
        self.node.netns()
    }

    /// The pods, in the order they were added.
    pub fn pods(&self) -> Vec<Pod> {
        self.members().pods.clone()
    }

    /// Names of every namespace of this sandbox (the node's, then the pods', then the others').
    pub fn namespaces(&self) -> Vec<String> {
        let members = self.members();
        std::iter::once(self.node.netns().name().to_owned())
            .chain(members.pods.iter().map(|p| p.netns().name().to_owned()))
            .chain(members.namespaces.iter().map(|n| n.name().to_owned()))
            .collect()
    }

    /// Every process started in this sandbox, running or not.
    pub fn processes(&self) -> Vec<Process> {
        let members = self.members();
        let mut all = self.node.netns().processes();
        for pod in &members.pods {
            all.extend(pod.netns().processes());
        }
        for ns in &members.namespaces {
            all.extend(ns.processes());
        }
        all
    }

    /// Adds pod `name` with address `ip`/24: a namespace with `lo` up, `eth0` plugged into the
    /// bridge, a default route via the node ([`NODE_IP`]), and the sandbox's `/etc/hosts`.
    /// `ip` must be one of 198.18.0.1–198.18.0.253; `name` 1 to 20 characters of `a-z`, `0-9`
    /// and `-`, not `node`.
    pub fn add_pod(&self, name: &str, ip: Ipv4Addr) -> Result<Pod> {
        pod::check_name(name)?;
        pod::check_ip(ip)?;
        let netns_name = format!("{}-{name}", self.id);
        let mut members = self.members();
        members.check_new_name(name, &netns_name)?;
        if members.pods.iter().any(|p| p.ip() == ip) {
            return Err(SandboxError::Address {
                ip,
                reason: "a pod of this sandbox already has this address",
            });
        }
        let ns = Netns::create(netns_name, self.dir().join("logs").join(name))?;
        // Before anything runs inside: `ip netns exec` mounts it only if it exists at start.
        hosts::write(&ns, &members.hosts)?;
        // The node's end: `vp<n>`, short whatever the pod's name (interface names ≤ 15).
        let port = format!("vp{}", members.pods.len());
        link::plug_into_bridge(self.node.netns(), BRIDGE, &port, &ns, ip, NODE_IP)?;
        let pod = Pod::new(name.to_owned(), ip, ns);
        members.pods.push(pod.clone());
        Ok(pod)
    }

    /// Adds namespace `name` (`tsbx-<pid>-<n>-<name>`) with only `lo` up, plugged into nothing:
    /// for tests that wire their own links ([`Netns::veth_to`]). Same naming rules as pods;
    /// stopped and deleted with the sandbox.
    pub fn add_namespace(&self, name: &str) -> Result<Arc<Netns>> {
        pod::check_name(name)?;
        let netns_name = format!("{}-{name}", self.id);
        let mut members = self.members();
        members.check_new_name(name, &netns_name)?;
        let ns = Arc::new(Netns::create(
            netns_name,
            self.dir().join("logs").join(name),
        )?);
        members.namespaces.push(Arc::clone(&ns));
        Ok(ns)
    }

    /// Makes `name` resolve to `ip` in every pod of the sandbox, present and future, through
    /// the pod's `/etc/hosts` (see [`hosts`]); a name given again moves to the new address.
    /// Python's `urllib`, `getaddrinfo` and anything else that reads `/etc/hosts` sees it,
    /// also in programs already running.
    pub fn add_host(&self, name: &str, ip: Ipv4Addr) -> Result<()> {
        hosts::check_name(name)?;
        let mut members = self.members();
        let entry = (name.to_owned(), ip);
        match members
            .hosts
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some(existing) => *existing = entry,
            None => members.hosts.push(entry),
        }
        for pod in &members.pods {
            hosts::write(pod.netns(), &members.hosts)?;
        }
        Ok(())
    }

    /// Whether the temporary directory is kept when the sandbox is dropped during a panic
    /// (default: yes, and its path is printed). Tests that panic on purpose say no.
    pub fn keep_dir_on_panic(&self, keep: bool) {
        self.keep_on_panic.store(keep, Ordering::Relaxed);
    }

    /// Writes `contents` to `name` in the sandbox directory with `mode`; returns the path.
    pub fn write_file(&self, name: &str, contents: &[u8], mode: u32) -> Result<PathBuf> {
        let path = self.dir().join(name);
        std::fs::write(&path, contents).map_err(io_error(&path))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(io_error(&path))?;
        Ok(path)
    }

    /// Stops every process (all together: SIGTERM, then SIGKILL after
    /// [`netns::STOP_GRACE`]) and deletes every namespace and its `/etc/netns` entry. Drop
    /// does this too.
    pub fn shutdown(&self) {
        process::stop_all(&self.processes(), netns::STOP_GRACE);
        let members = self.members();
        for pod in &members.pods {
            pod.netns().shutdown(netns::STOP_GRACE);
        }
        for ns in &members.namespaces {
            ns.shutdown(netns::STOP_GRACE);
        }
        self.node.netns().shutdown(netns::STOP_GRACE);
    }

    fn members(&self) -> MutexGuard<'_, Members> {
        self.members.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Members {
    /// Errors if a pod or namespace of the sandbox already is namespace `netns_name`.
    fn check_new_name(&self, name: &str, netns_name: &str) -> Result<()> {
        let taken = self.pods.iter().any(|p| p.netns().name() == netns_name)
            || self.namespaces.iter().any(|n| n.name() == netns_name);
        if taken {
            return Err(SandboxError::PodName {
                name: name.to_owned(),
                reason: "a pod or namespace of this sandbox already has this name",
            });
        }
        Ok(())
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.shutdown();
        if std::thread::panicking()
            && self.keep_on_panic.load(Ordering::Relaxed)
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            eprintln!(
                "sandbox {}: kept {} (logs, captures) for the failed test",
                self.id,
                kept.display()
            );
        }
    }
}
