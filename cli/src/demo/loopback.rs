//! The demo without root: no namespaces and no iptables, every process on 127.0.0.1 with
//! ports of its own (from `--base-port`), the proxies in explicit mode as in
//! `proxy/tests/service_mesh.rs` — each caller's app connects to its proxy's `--outbound`
//! listener, which stands for the Service's ClusterIP:port (198.19.0.10:8080, an address that
//! exists nowhere here: only the proxy's own balancing reaches a backend). The backends' apps are
//! small HTTP servers in this process ([`super::loopback_app`]). The mesh file tells the pods
//! apart by port and tunnel; the two backends give their port named `http` different numbers,
//! and the Service's named target port finds each.
//!
//! ```text
//!   BASE+12, +14   trellis-control-plane: gRPC, metrics
//!   BASE+80, +83   backend-1's and backend-2's apps (HTTP, named http)
//!   BASE+100 +101 +108   frontend proxy: admin, outbound (→ 198.19.0.10:8080), tunnel
//!   BASE+200      +208   backend-1 proxy: admin, tunnel
//!   BASE+250      +258   backend-2 proxy: admin, tunnel
//!   BASE+300 +301 +308   intruder proxy: admin, outbound (→ 198.19.0.10:8080), tunnel
//! ```

use std::fs::Permissions;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use trellis_sandbox::Process;
use trellis_sandbox::binaries::{CONTROL_PLANE, PROXY, binary};
use trellis_sandbox::control_plane::TRUST_DOMAIN;
use trellis_sandbox::process::stop_all;

use super::loopback_app::BackendApp;
use super::mesh_file::{self, Endpoint, Layout};
use super::observer::SiteSpec;
use super::story::PolicyStep;
use super::{Backing, Cleanup, DemoArgs, Out, Replica, Role, Started};

/// The default `--base-port`.
pub const DEFAULT_BASE_PORT: u16 = 21000;
/// The highest offset from the base port the demo uses.
const SPAN: u16 = 308;
/// How long a process may take to answer `/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long processes get between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// `PATH` for the processes (nothing else of our environment is passed on).
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Checks that the ports from `base` fit below 65536.
pub fn check_base_port(base: u16) -> anyhow::Result<()> {
    if !(1024..=u16::MAX - SPAN).contains(&base) {
        anyhow::bail!(
            "--base-port {base}: give 1024 to {} (the demo uses BASE+12 to BASE+{SPAN})",
            u16::MAX - SPAN
        );
    }
    Ok(())
}

/// The ports, from the base.
#[derive(Debug, Clone, Copy)]
struct Ports(u16);

impl Ports {
    fn at(self, offset: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.0 + offset))
    }
    fn grpc(self) -> SocketAddr {
        self.at(12)
    }
    fn metrics(self) -> SocketAddr {
        self.at(14)
    }
    /// The app port of `replica` (only the backends' have a server; the others are names).
    fn app(self, replica: Replica) -> SocketAddr {
        self.at(match (replica.role, replica.n) {
            (Role::Backend, 1) => 80,
            (Role::Frontend, _) => 81,
            (Role::Intruder, _) => 82,
            (Role::Backend, _) => 83,
        })
    }
    fn admin(self, replica: Replica) -> SocketAddr {
        self.at(block(replica))
    }
    fn outbound(self, replica: Replica) -> SocketAddr {
        self.at(block(replica) + 1)
    }
    fn tunnel(self, replica: Replica) -> SocketAddr {
        self.at(block(replica) + 8)
    }
    /// Every port bound, with what binds it.
    fn all(self) -> Vec<(SocketAddr, String)> {
        let mut all = vec![
            (self.grpc(), "control plane gRPC".to_owned()),
            (self.metrics(), "control plane metrics".to_owned()),
        ];
        for replica in Replica::BACKENDS {
            all.push((self.app(replica), format!("the {} app", replica.name())));
        }
        for replica in Replica::ALL {
            let name = replica.name();
            all.push((self.admin(replica), format!("{name} proxy admin")));
            all.push((self.tunnel(replica), format!("{name} proxy tunnel")));
            if replica.role.calls() {
                all.push((self.outbound(replica), format!("{name} proxy outbound")));
            }
        }
        all
    }
}

/// The offset of `replica`'s proxy ports.
fn block(replica: Replica) -> u16 {
    match (replica.role, replica.n) {
        (Role::Frontend, _) => 100,
        (Role::Backend, 1) => 200,
        (Role::Backend, _) => 250,
        (Role::Intruder, _) => 300,
    }
}

/// Everything running; dropping it stops all of it.
#[derive(Debug)]
pub struct Mesh {
    /// Control plane first, then the proxies.
    processes: Vec<(String, Process)>,
    /// The backends' apps, in this process.
    apps: Vec<BackendApp>,
    /// Tokens, state, logs, the mesh file; removed on drop.
    dir: Option<tempfile::TempDir>,
}

/// Checks, before anything starts, that every port the demo needs on 127.0.0.1 is free; the
/// error names the first taken one.
pub fn preflight(args: &DemoArgs) -> anyhow::Result<()> {
    let ports = Ports(args.base_port);
    for (addr, what) in ports.all() {
        if let Err(e) = TcpListener::bind(addr) {
            anyhow::bail!(
                "port {} on 127.0.0.1 ({what}) is taken: {e}. Another program — or another \
                 trellis demo — is using it; stop it, or move the demo's ports with --base-port \
                 (it uses BASE+12 to BASE+{SPAN}; now {})",
                addr.port(),
                args.base_port
            );
        }
    }
    Ok(())
}

/// Starts the mesh, saying each step; on error, what started is stopped (dropped) already.
pub fn start(args: &DemoArgs, out: &Out) -> anyhow::Result<Started> {
    let ports = Ports(args.base_port);
    let dir = tempfile::Builder::new()
        .prefix("trellis-demo-")
        .tempdir()
        .context("creating a temporary directory")?;
    let root = dir.path().to_owned();
    // From here on, dropping `mesh` stops what started and removes the directory.
    let mut mesh = Mesh {
        processes: Vec::new(),
        apps: Vec::new(),
        dir: Some(dir),
    };
    out.line(&format!(
        "files (state, logs, mesh file) in {}",
        root.display()
    ))?;
    let layout = layout(ports);
    let mesh_path = root.join("mesh.yaml");
    mesh_file::write(
        &mesh_path,
        &mesh_file::render(&layout, PolicyStep::FrontendOnly),
    )
    .context("writing the mesh file")?;
    let join_tokens = write_tokens(&root)?;

    out.step(
        "starting the control plane (local mode: join tokens, mesh file)",
        || {
            let mut cmd = Command::new(binary(CONTROL_PLANE)?);
            cmd.args(["--mode", "local"])
                .arg("--state-dir")
                .arg(root.join("state"))
                .arg("--join-tokens")
                .arg(&join_tokens)
                .arg("--mesh-file")
                .arg(&mesh_path)
                .args(["--listen", &ports.grpc().to_string()])
                .args(["--metrics-listen", &ports.metrics().to_string()])
                .args(["--trust-domain", TRUST_DOMAIN, "--shutdown-grace", "1s"]);
            let p = mesh.spawn("control plane", "control-plane", &mut cmd, &root)?;
            wait_ready(&p, ports.metrics(), Some(&root.join("state/root-cert.pem")))?;
            Ok(((), format!("{}  (pid {})", ports.grpc(), p.pid())))
        },
    )?;
    for replica in Replica::BACKENDS {
        let addr = ports.app(replica);
        out.step(
            &format!(
                "starting the {} app (HTTP {addr}, named http)",
                replica.name()
            ),
            || {
                let listener =
                    TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
                mesh.apps
                    .push(BackendApp::start(&replica.name(), listener)?);
                Ok(((), "in this process".to_owned()))
            },
        )?;
    }
    for replica in Replica::ALL {
        let name = replica.name();
        out.step(
            &format!("starting the {name} proxy (explicit mode)"),
            || {
                let mut cmd = proxy_command(args, ports, replica, &root)?;
                let p = mesh.spawn(&format!("{name} proxy"), &name, &mut cmd, &root)?;
                wait_ready(&p, ports.admin(replica), None)?;
                Ok((
                    (),
                    format!("tunnel {}  (pid {})", ports.tunnel(replica), p.pid()),
                ))
            },
        )?;
    }
    let sites = Replica::ALL
        .iter()
        .map(|replica| SiteSpec {
            replica: *replica,
            netns: None,
            admin: ports.admin(*replica),
            call: replica.role.calls().then_some(ports.outbound(*replica)),
            place: format!(
                "127.0.0.1 (admin :{}, tunnel :{})",
                ports.admin(*replica).port(),
                ports.tunnel(*replica).port()
            ),
        })
        .collect();
    Ok(Started {
        sites,
        mesh_file: mesh_path,
        layout,
        backing: Backing::Loopback(mesh),
    })
}

/// `trellis-proxy run` for `replica`, in explicit mode on its ports. A caller's outbound
/// listener stands for the Service's ClusterIP:port; where that goes, discovery says.
fn proxy_command(
    args: &DemoArgs,
    ports: Ports,
    replica: Replica,
    root: &Path,
) -> anyhow::Result<Command> {
    let role = replica.role;
    let mut cmd = Command::new(binary(PROXY)?);
    cmd.args(["run", "--mode", "explicit", "--pod-name", &replica.name()])
        .args(["--pod-namespace", role.namespace()])
        .args(["--service-account", role.service_account()])
        .args(["--control-plane", &ports.grpc().to_string()])
        .arg("--token-file")
        .arg(root.join(format!("token-{}", role.name())))
        .arg("--trust-bundle-file")
        .arg(root.join("state/root-cert.pem"))
        .args(["--tunnel-listen", &ports.tunnel(replica).to_string()])
        .args(["--admin-listen", &ports.admin(replica).to_string()])
        .arg(format!("--cert-ttl={}s", args.cert_ttl.as_secs()))
        .args(["--drain", "1s"]);
    if role.calls() {
        cmd.arg(format!(
            "--outbound={}={}",
            ports.outbound(replica),
            mesh_file::cluster_addr()
        ));
    }
    Ok(cmd)
}

/// Where the pods are, for the mesh file: all on 127.0.0.1, told apart by port and tunnel.
fn layout(ports: Ports) -> Layout {
    let local = |replica: Replica| Endpoint {
        ip: Ipv4Addr::LOCALHOST.into(),
        port: Some(ports.app(replica).port()),
        tunnel: Some(ports.tunnel(replica)),
        http: (replica.role == Role::Backend).then(|| ports.app(replica).port()),
    };
    Layout {
        frontend: local(Replica::of(Role::Frontend)),
        backends: Replica::BACKENDS.into_iter().map(local).collect(),
        intruder: local(Replica::of(Role::Intruder)),
    }
}

/// One random join token per workload (a file each, mode 0600) and the control plane's table.
fn write_tokens(root: &Path) -> anyhow::Result<PathBuf> {
    let mut table = String::from("# token identity\n");
    for role in Role::ALL {
        let mut bytes = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .context("reading /dev/urandom")?;
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        table.push_str(&format!("{token} {}\n", role.short_id()));
        secret(&root.join(format!("token-{}", role.name())), &token)?;
    }
    let path = root.join("join-tokens");
    secret(&path, &table)?;
    Ok(path)
}

fn secret(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 600 {}", path.display()))
}

/// Waits until `addr` answers `GET /ready` with 200 (and `file`, if any, exists), or `p` exits.
fn wait_ready(p: &Process, addr: SocketAddr, file: Option<&Path>) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if status(addr, "/ready") == Some(200) && file.is_none_or(Path::exists) {
            return Ok(());
        }
        if let Some(exit) = p.exit_status() {
            anyhow::bail!(
                "{} exited ({exit}): {}",
                p.label(),
                last_lines(&p.stderr(), 6)
            );
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "{} not ready on {addr} within {}s; its log: {}",
                p.label(),
                READY_TIMEOUT.as_secs(),
                p.stderr_path().display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The status of `GET path` at `addr` (HTTP/1.0, short timeouts), if anything answered.
fn status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head).ok()?;
    let head = String::from_utf8_lossy(head.get(..n)?);
    head.split_whitespace().nth(1)?.parse().ok()
}

/// The last `n` lines of `text`.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(n);
    lines.into_iter().skip(skip).collect::<Vec<_>>().join("\n")
}

impl Mesh {
    /// Starts `cmd` (environment cleared but `PATH`), its output in `root/logs/<name>.*`.
    fn spawn(
        &mut self,
        what: &str,
        name: &str,
        cmd: &mut Command,
        root: &Path,
    ) -> anyhow::Result<Process> {
        let logs = root.join("logs");
        std::fs::create_dir_all(&logs).context("creating the log directory")?;
        cmd.env_clear().env("PATH", PATH);
        let p = Process::spawn_host(
            what,
            cmd,
            logs.join(format!("{name}.stdout")),
            logs.join(format!("{name}.stderr")),
        )?;
        self.processes.push((what.to_owned(), p.clone()));
        Ok(p)
    }

    /// `Err` naming the first process that has stopped, with the end of its log.
    pub fn check_alive(&self) -> Result<(), String> {
        for (what, p) in &self.processes {
            if let Some(status) = p.exit_status() {
                return Err(format!(
                    "the {what} stopped unexpectedly ({status}); its log ({}) ends:\n{}",
                    p.stderr_path().display(),
                    last_lines(&p.stderr(), 5)
                ));
            }
        }
        Ok(())
    }

    /// Stops the processes and the app, removes the directory; says what.
    pub fn shutdown(mut self) -> Cleanup {
        let processes = self.processes.len();
        let dir = self
            .dir
            .as_ref()
            .map(|d| d.path().to_owned())
            .unwrap_or_default();
        self.stop();
        Cleanup {
            processes,
            namespaces: 0,
            namespaces_left: Vec::new(),
            dir,
        }
    }

    fn stop(&mut self) {
        let all: Vec<Process> = self.processes.iter().map(|(_, p)| p.clone()).collect();
        stop_all(&all, STOP_GRACE);
        self.apps.clear();
        if let Some(dir) = self.dir.take()
            && let Err(e) = dir.close()
        {
            eprintln!("trellis demo: could not remove its temporary directory: {e}");
        }
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.stop();
    }
}
