//! `trellis-control-plane` in local mode, in a pod of its own ([`ControlPlane`]): a join-token
//! file with one random token per workload identity, a state directory that survives restarts
//! (so the root, and the trust every proxy has in it, stay the same), and a copy of the root
//! certificate that the proxies (another user) can read; optionally a mesh file (workloads and
//! AuthorizationPolicies, `--mesh-file`) that can be rewritten while it runs.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::Read;
use std::net::SocketAddrV4;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::Sandbox;
use crate::binaries::{CONTROL_PLANE, binary};
use crate::error::{Result, SandboxError, io_error};
use crate::http::wait_http_ok;
use crate::netns::Cmd;
use crate::pod::Pod;
use crate::process::Process;
use crate::sidecar::PROXY_UID;

/// The control plane's gRPC port (CA).
pub const GRPC_PORT: u16 = 15012;
/// The control plane's plain-HTTP metrics and probes port.
pub const METRICS_PORT: u16 = 15014;
/// Where its `/status` listens, on its namespace's loopback (`trellis status --local`).
pub const STATUS_PORT: u16 = 15015;
/// The trust domain of every sandbox identity.
pub const TRUST_DOMAIN: &str = "cluster.local";
/// How long the control plane may take to answer `/ready`.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long it may take to stop.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A workload identity: `spiffe://cluster.local/ns/<namespace>/sa/<service account>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
}

impl Identity {
    /// The identity of service account `service_account` in `namespace`.
    pub fn new(namespace: &str, service_account: &str) -> Self {
        Identity {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        }
    }

    /// Its SPIFFE ID.
    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://{TRUST_DOMAIN}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }
}

/// A control plane running in a pod.
#[derive(Debug)]
pub struct ControlPlane {
    /// Its pod.
    pod: Pod,
    /// Where it keeps the CA (`--state-dir`).
    state_dir: PathBuf,
    /// A plug-in CA in Istio's `cacerts` layout (`--cacerts-dir`), if it was started with one.
    cacerts_dir: Option<PathBuf>,
    /// The join-token file (`--join-tokens`).
    join_tokens: PathBuf,
    /// A world-readable copy of `root-cert.pem`, for the proxies' `--trust-bundle-file`.
    trust_bundle: PathBuf,
    /// One token file per identity, owned by the proxy's UID, mode 0600.
    token_files: Vec<(Identity, PathBuf)>,
    /// The mesh file (`--mesh-file`), if it was started with one.
    mesh_file: Option<PathBuf>,
    /// Extra flags, kept for restarts.
    extra_args: Vec<String>,
    /// The running process, if it runs.
    process: Mutex<Option<Process>>,
}

impl ControlPlane {
    /// Starts a control plane in `pod` that will certify `identities` (one join token each)
    /// and waits until it is ready. `extra_args` go to `trellis-control-plane` as they are.
    pub fn start(
        sandbox: &Sandbox,
        pod: &Pod,
        identities: &[Identity],
        extra_args: &[&str],
    ) -> Result<ControlPlane> {
        Self::start_inner(sandbox, pod, identities, None, None, extra_args)
    }

    /// Like [`ControlPlane::start`], with a plug-in CA: `cacerts` holds `ca-cert.pem`,
    /// `ca-key.pem`, `cert-chain.pem` and `root-cert.pem` (`--cacerts-dir`). The control plane
    /// only reads it, and reloads it when the files change.
    pub fn start_plug_in(
        sandbox: &Sandbox,
        pod: &Pod,
        identities: &[Identity],
        cacerts: &Path,
        extra_args: &[&str],
    ) -> Result<ControlPlane> {
        Self::start_inner(sandbox, pod, identities, None, Some(cacerts), extra_args)
    }

    /// Like [`ControlPlane::start`], with the mesh file `mesh_yaml` (`--mesh-file`; the schema
    /// is in `control-plane/src/mesh/file.rs`): the workloads proxies discover and the
    /// AuthorizationPolicies they enforce. [`ControlPlane::write_mesh`] changes it later.
    pub fn start_with_mesh(
        sandbox: &Sandbox,
        pod: &Pod,
        identities: &[Identity],
        mesh_yaml: &str,
        extra_args: &[&str],
    ) -> Result<ControlPlane> {
        Self::start_inner(sandbox, pod, identities, Some(mesh_yaml), None, extra_args)
    }

    fn start_inner(
        sandbox: &Sandbox,
        pod: &Pod,
        identities: &[Identity],
        mesh_yaml: Option<&str>,
        cacerts_dir: Option<&Path>,
        extra_args: &[&str],
    ) -> Result<ControlPlane> {
        let dir = sandbox.dir().join("control-plane");
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .map_err(io_error(&dir))?;
        let mut table = String::from("# token identity\n");
        let mut token_files = Vec::new();
        for (i, id) in identities.iter().enumerate() {
            let token = random_token()?;
            let _ = writeln!(
                table,
                "{token} ns/{}/sa/{}",
                id.namespace, id.service_account
            );
            let path = dir.join(format!("token-{i}-{}-{}", id.namespace, id.service_account));
            write_secret(&path, &token, PROXY_UID)?;
            token_files.push((id.clone(), path));
        }
        let join_tokens = dir.join("join-tokens");
        write_secret(&join_tokens, &table, 0)?;
        let mesh_file = match mesh_yaml {
            Some(yaml) => {
                let path = dir.join("mesh.yaml");
                write_atomically(&path, yaml)?;
                Some(path)
            }
            None => None,
        };
        let cp = ControlPlane {
            pod: pod.clone(),
            state_dir: dir.join("state"),
            cacerts_dir: cacerts_dir.map(Path::to_owned),
            join_tokens,
            trust_bundle: dir.join("trust-bundle.pem"),
            token_files,
            mesh_file,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            process: Mutex::new(None),
        };
        cp.run()?;
        let root = cp.root_cert();
        std::fs::copy(&root, &cp.trust_bundle).map_err(io_error(&root))?;
        std::fs::set_permissions(&cp.trust_bundle, std::fs::Permissions::from_mode(0o644))
            .map_err(io_error(&cp.trust_bundle))?;
        Ok(cp)
    }

    /// Starts the process (again) with the same flags and state directory, and waits until it
    /// answers `/ready`. Errors if it runs already.
    pub fn run(&self) -> Result<()> {
        let mut slot = self.process.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.as_ref().is_some_and(Process::is_running) {
            return Err(SandboxError::State {
                what: "start the control plane".into(),
                reason: "it is running already",
            });
        }
        let ip = self.pod.ip();
        let cmd = Cmd::new(binary(CONTROL_PLANE)?)
            .args(["--mode", "local"])
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--join-tokens")
            .arg(&self.join_tokens)
            .args(["--listen", &format!("{ip}:{GRPC_PORT}")])
            .args(["--metrics-listen", &format!("{ip}:{METRICS_PORT}")])
            .args(["--status-listen", &format!("127.0.0.1:{STATUS_PORT}")])
            .args(["--trust-domain", TRUST_DOMAIN])
            .args(["--shutdown-grace", "1s"])
            .args(
                self.mesh_file
                    .iter()
                    .flat_map(|m| [OsStr::new("--mesh-file"), m.as_os_str()]),
            )
            .args(
                self.cacerts_dir
                    .iter()
                    .flat_map(|c| [OsStr::new("--cacerts-dir"), c.as_os_str()]),
            )
            .args(&self.extra_args);
        let process = self.pod.spawn(&cmd)?;
        *slot = Some(process.clone());
        drop(slot);
        let ready = format!("http://{ip}:{METRICS_PORT}/ready");
        wait_http_ok(&self.pod, &ready, START_TIMEOUT).map_err(|e| SandboxError::Deadline {
            what: "control plane ready".into(),
            after: START_TIMEOUT,
            last: format!("{e}; stderr: {}", process.stderr()),
        })?;
        Ok(())
    }

    /// Stops the process (SIGTERM, SIGKILL after a grace period); the state directory stays.
    pub fn stop(&self) -> Result<()> {
        let process = self
            .process
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(p) = process {
            p.stop(STOP_GRACE)?;
        }
        Ok(())
    }

    /// The running process, if any.
    pub fn process(&self) -> Option<Process> {
        self.process
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The mesh file, if it was started with one ([`ControlPlane::start_with_mesh`]).
    pub fn mesh_file(&self) -> Option<&Path> {
        self.mesh_file.as_deref()
    }

    /// Replaces the mesh file's contents at once (a new file renamed over the old one, so the
    /// control plane never reads half of it); it reloads the file within about 250 ms and
    /// streams the change to the proxies. Errors if it was started without one.
    pub fn write_mesh(&self, mesh_yaml: &str) -> Result<()> {
        let path = self
            .mesh_file
            .as_deref()
            .ok_or_else(|| SandboxError::State {
                what: "rewrite the mesh file".into(),
                reason: "the control plane was started without one (use start_with_mesh)",
            })?;
        write_atomically(path, mesh_yaml)
    }

    /// Its pod.
    pub fn pod(&self) -> &Pod {
        &self.pod
    }

    /// Where proxies reach it (`--control-plane`).
    pub fn addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.pod.ip(), GRPC_PORT)
    }

    /// The CA state directory (`--state-dir`).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// `root-cert.pem` in the state directory (readable by root only: the directory is 0700),
    /// or in the plug-in `cacerts` directory.
    pub fn root_cert(&self) -> PathBuf {
        self.cacerts_dir
            .as_deref()
            .unwrap_or(&self.state_dir)
            .join("root-cert.pem")
    }

    /// The plug-in `cacerts` directory, if it was started with one.
    pub fn cacerts_dir(&self) -> Option<&Path> {
        self.cacerts_dir.as_deref()
    }

    /// A copy of [`ControlPlane::root_cert`] that every user can read.
    pub fn trust_bundle(&self) -> &Path {
        &self.trust_bundle
    }

    /// The token file of `identity` (owned by the proxy's UID), if it was given at start.
    pub fn token_file(&self, identity: &Identity) -> Option<&Path> {
        self.token_files
            .iter()
            .find(|(id, _)| id == identity)
            .map(|(_, p)| p.as_path())
    }
}

/// 32 hex digits from the OS's random source.
fn random_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    let path = Path::new("/dev/urandom");
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io_error(path))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `contents` to a new file next to `path`, then renames it over `path`.
fn write_atomically(path: &Path, contents: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).map_err(io_error(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_error(path))
}

/// Writes a secret with mode 0600, owned by `uid` (and GID `uid`).
fn write_secret(path: &Path, contents: &str, uid: u32) -> Result<()> {
    std::fs::write(path, contents).map_err(io_error(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_error(path))?;
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).map_err(io_error(path))
}
