//! A sandbox of pods on this machine: network namespaces plugged into one Linux bridge, with
//! the Trellis binaries (control plane, sidecars) and small test apps running inside them.
//! `trellis demo` and the end-to-end tests (`cli/tests/e2e_*.rs`) stand on it.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`Sandbox`] (here) | the switch (a namespace with bridge `br0`), the pods, the temporary directory, clean-up |
//! | [`netns`] | one namespace: create, run commands inside (as root or another UID), move a thread of ours into it, delete; stale clean-up |
//! | [`process`] | a process started inside (or on the host): PID, log files, waiting, stopping (SIGTERM, then SIGKILL) |
//! | [`pod`] | a pod: a namespace with a veth into the bridge and one address from 198.18.0.0/15 |
//! | [`control_plane`] | `trellis-control-plane` in local mode in its pod: join tokens, state dir, mesh file (rewritable), restart |
//! | [`sidecar`] | `trellis-proxy init` + `run` in a pod, and reading its admin endpoint |
//! | [`app`] | the test workload: a small HTTP server and TCP echo (python3) |
//! | [`http`] | HTTP GET from inside a pod (python3): `http_get`, `wait_http_ok` |
//! | [`capture`] | packet capture on the bridge (`dumpcap`) and reading it back (`tshark`, raw bytes) |
//! | [`binaries`] | where the Trellis binaries are: [`binaries::bin_dir`] |
//!
//! # Rules it keeps
//!
//! - Needs root ([`netns::is_root`]); [`Sandbox::new`] says so clearly otherwise.
//! - Addresses only from 198.18.0.0/15; pods have no default route and the bridge no uplink,
//!   so no packet leaves the sandbox.
//! - Names are unique per run (`tsbx-<pid>-<n>-<pod>`); namespaces left behind by a sandbox
//!   whose process died are removed by the next [`Sandbox::new`].
//! - Everything is undone on drop, also when a test panics: every process started is stopped
//!   (SIGTERM, then SIGKILL after a deadline) and every namespace deleted. After a panic the
//!   temporary directory (logs, captures) is kept and its path printed.
//!
//! ```no_run
//! use trellis_sandbox::{Sandbox, http};
//! # fn main() -> Result<(), trellis_sandbox::SandboxError> {
//! let sandbox = Sandbox::new()?;
//! let web = sandbox.add_pod("web", "198.18.0.2".parse().unwrap())?;
//! let app = trellis_sandbox::app::App::start(&sandbox, &web, "web")?;
//! let client = sandbox.add_pod("client", "198.18.0.3".parse().unwrap())?;
//! let reply = http::http_get(&client, "http://198.18.0.2:8080/hello", None, http::GET_TIMEOUT)?;
//! assert_eq!(reply.status, 200);
//! # drop(app);
//! # Ok(()) }
//! ```

pub mod app;
pub mod binaries;
pub mod capture;
pub mod control_plane;
pub mod error;
pub mod http;
pub mod netns;
pub mod pod;
pub mod process;
pub mod sidecar;

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};

pub use error::{Result, SandboxError};
pub use netns::{Cmd, Netns};
pub use pod::Pod;
pub use process::{Process, Signal};

use error::io_error;

/// Every namespace a sandbox creates is named `<NAME_PREFIX><pid>-<n>-…`.
pub const NAME_PREFIX: &str = "tsbx-";
/// The bridge in the switch namespace.
pub const BRIDGE: &str = "br0";

/// Numbers the sandboxes of this process.
static SANDBOXES: AtomicU32 = AtomicU32::new(0);

/// Pods on one bridge, and everything running in them; all of it undone on drop.
#[derive(Debug)]
pub struct Sandbox {
    /// `tsbx-<pid>-<n>`: the prefix of every namespace name of this sandbox.
    id: String,
    /// Logs, state, captures; kept after a panic (`None` once handed over).
    dir: Option<tempfile::TempDir>,
    /// The switch: a namespace holding the bridge and the pods' veth ends.
    switch: Netns,
    /// Pods, in the order they were added.
    pods: Mutex<Vec<Pod>>,
    /// Whether drop during a panic keeps `dir` (default: yes, to read the logs).
    keep_on_panic: AtomicBool,
}

impl Sandbox {
    /// Creates the switch (a namespace with bridge [`BRIDGE`] up) and a temporary directory.
    /// First removes namespaces left behind by sandboxes of processes that no longer run.
    pub fn new() -> Result<Sandbox> {
        if !netns::is_root() {
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
        let switch = Netns::create(format!("{id}-sw"), dir.path().join("logs").join("switch"))?;
        switch.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        switch.ip(&["link", "set", BRIDGE, "up"])?;
        Ok(Sandbox {
            id,
            dir: Some(dir),
            switch,
            pods: Mutex::new(Vec::new()),
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

    /// The switch namespace, where [`BRIDGE`] is (captures run here).
    pub fn switch(&self) -> &Netns {
        &self.switch
    }

    /// The pods, in the order they were added.
    pub fn pods(&self) -> Vec<Pod> {
        self.pods
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Names of every namespace of this sandbox (the switch's, then the pods').
    pub fn namespaces(&self) -> Vec<String> {
        std::iter::once(self.switch.name().to_owned())
            .chain(self.pods().iter().map(|p| p.netns().name().to_owned()))
            .collect()
    }

    /// Every process started in this sandbox, running or not.
    pub fn processes(&self) -> Vec<Process> {
        let mut all = self.switch.processes();
        for pod in self.pods() {
            all.extend(pod.netns().processes());
        }
        all
    }

    /// Adds pod `name` with address `ip`/24: a namespace with `lo` up and `eth0` plugged into
    /// the bridge. `ip` must come from 198.18.0.0/15.
    pub fn add_pod(&self, name: &str, ip: Ipv4Addr) -> Result<Pod> {
        pod::check_name(name)?;
        pod::check_ip(ip)?;
        let mut pods = self.pods.lock().unwrap_or_else(PoisonError::into_inner);
        if pods.iter().any(|p| p.name() == name) {
            return Err(SandboxError::PodName {
                name: name.to_owned(),
                reason: "a pod of this sandbox already has this name",
            });
        }
        if pods.iter().any(|p| p.ip() == ip) {
            return Err(SandboxError::Address {
                ip,
                reason: "a pod of this sandbox already has this address",
            });
        }
        let ns = Netns::create(
            format!("{}-{name}", self.id),
            self.dir().join("logs").join(name),
        )?;
        // The switch's end: `vp<n>`, short whatever the pod's name (interface names ≤ 15).
        let port = format!("vp{}", pods.len());
        self.switch.ip(&[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ])?;
        self.switch.ip(&["link", "set", &port, "master", BRIDGE])?;
        self.switch.ip(&["link", "set", &port, "up"])?;
        let cidr = format!("{ip}/{}", pod::POD_PREFIX_LEN);
        ns.ip(&["addr", "add", &cidr, "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        let pod = Pod::new(name.to_owned(), ip, ns);
        pods.push(pod.clone());
        Ok(pod)
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
    /// [`netns::STOP_GRACE`]) and deletes every namespace. Drop does this too.
    pub fn shutdown(&self) {
        process::stop_all(&self.processes(), netns::STOP_GRACE);
        for pod in self.pods() {
            pod.netns().shutdown(netns::STOP_GRACE);
        }
        self.switch.shutdown(netns::STOP_GRACE);
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
