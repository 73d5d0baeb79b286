//! `trellis demo`: a whole mesh on this machine, and what it does, shown live.
//!
//! It starts a control plane in local mode (join tokens, a mesh file, state in a temporary
//! directory) and four sample pods, each behind its own sidecar — `frontend` and two replicas of
//! `backend` in namespace `shop`, `intruder` in namespace `evil`. The backend pods are the
//! endpoints of the Service `shop/backend` (ClusterIP 198.19.0.10, port 8080, named target port
//! `http`): the frontend and the intruder call the Service every second, and their sidecars pick
//! a backend pod themselves and tunnel to it. The backends' AuthorizationPolicy lets only the
//! frontend in, until the demo edits it; the sidecars hold short-lived certificates, so
//! rotations show. Everything it started is stopped and removed when it ends — after
//! `--duration`, on Ctrl-C or SIGTERM, or on an error.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | here | the flags, choosing the mode, the order of things, signals, clean-up, output |
//! | [`namespaced`] | as root: pods in network namespaces with the real init rules (`trellis_sandbox`), kube-proxy's rules for the Service on the node, the callers' apps calling it by name and ClusterIP |
//! | [`loopback`] | without root: processes on 127.0.0.1, proxies in explicit mode (the callers' outbound listeners stand for the ClusterIP) |
//! | [`loopback_app`] | the backends' app in loopback mode: a small HTTP server in this process |
//! | [`mesh_file`] | the mesh file's YAML (workloads, the Service, the policy) for each step of the policy story |
//! | [`show`] | the live part: waiting for the sidecars, the traffic, the policy edits, the summary |
//! | [`observer`] | one thread per workload, inside its pod: the app's calls, the sidecar's admin endpoint |
//! | [`story`] | the timeline, pure: which policy when, which line for which observation |
//! | [`lines`] | how each line of the story reads |

mod lines;
mod loopback;
mod loopback_app;
mod mesh_file;
mod namespaced;
mod observer;
mod show;
mod story;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use trellis_sandbox::binaries::{self, CONTROL_PLANE, PROXY};
use trellis_sandbox::control_plane::TRUST_DOMAIN;
use trellis_sandbox::netns;

use crate::style::{self, Palette, Style};

/// `trellis demo` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// How long to show traffic once the mesh is up (humantime: 20s, 2m); Ctrl-C stops sooner.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Lifetime of the sidecars' certificates: short, so that rotations happen while you watch.
    #[arg(long, default_value = "8s", value_parser = humantime::parse_duration)]
    cert_ttl: Duration,
    /// Loopback mode: the first of the ports the demo uses on 127.0.0.1 (it takes BASE+12 to
    /// BASE+308).
    #[arg(long, value_name = "BASE", default_value_t = loopback::DEFAULT_BASE_PORT)]
    base_port: u16,
    /// Loopback mode even as root (no namespaces, no iptables).
    #[arg(long, hide = true)]
    loopback: bool,
}

/// The three sample workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// `ns/shop/sa/frontend`: calls the backend, and is allowed to.
    Frontend,
    /// `ns/shop/sa/backend`: serves HTTP on its app port; its policy decides who gets in.
    /// Two replicas, the endpoints of the Service `shop/backend`.
    Backend,
    /// `ns/evil/sa/intruder`: calls the backend too, and is refused (until the policy says otherwise).
    Intruder,
}

/// One pod of the demo: a workload and, for the backend, which of its replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Replica {
    /// Whose pod.
    pub role: Role,
    /// Which of the role's pods (1 for the frontend and the intruder).
    pub n: u8,
}

impl Replica {
    /// Every pod, in the order they start: the servers first, so callers find them.
    pub const ALL: [Replica; 4] = [
        Replica::backend(1),
        Replica::backend(2),
        Replica::of(Role::Frontend),
        Replica::of(Role::Intruder),
    ];

    /// The backend pods.
    pub const BACKENDS: [Replica; 2] = [Replica::backend(1), Replica::backend(2)];

    /// The only pod of `role` (frontend, intruder).
    pub const fn of(role: Role) -> Replica {
        Replica { role, n: 1 }
    }

    /// Backend pod `n`.
    pub const fn backend(n: u8) -> Replica {
        Replica {
            role: Role::Backend,
            n,
        }
    }

    /// Its pod name: `frontend`, `intruder`, `backend-1`, `backend-2`.
    pub fn name(self) -> String {
        match self.role {
            Role::Backend => format!("backend-{}", self.n),
            role => role.name().to_owned(),
        }
    }
}

impl Role {
    /// In the order they start: the server first, so callers find it.
    pub const ALL: [Role; 3] = [Role::Backend, Role::Frontend, Role::Intruder];

    /// Its short name (pod name, labels).
    pub fn name(self) -> &'static str {
        match self {
            Role::Frontend => "frontend",
            Role::Backend => "backend",
            Role::Intruder => "intruder",
        }
    }

    /// Its Kubernetes namespace.
    pub fn namespace(self) -> &'static str {
        match self {
            Role::Frontend | Role::Backend => "shop",
            Role::Intruder => "evil",
        }
    }

    /// Its service account (its name).
    pub fn service_account(self) -> &'static str {
        self.name()
    }

    /// `ns/<namespace>/sa/<service account>`, as policies list it.
    pub fn short_id(self) -> String {
        format!("ns/{}/sa/{}", self.namespace(), self.service_account())
    }

    /// Its SPIFFE ID.
    pub fn spiffe_id(self) -> String {
        format!("spiffe://{TRUST_DOMAIN}/{}", self.short_id())
    }

    /// Whether its app calls the backend.
    pub fn calls(self) -> bool {
        self != Role::Backend
    }
}

/// Which way the demo runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Root: one network namespace per workload, transparent interception.
    Namespaced,
    /// No root: everything on 127.0.0.1, proxies in explicit mode.
    Loopback,
}

/// A mesh that runs: where each workload is, its mesh file, and what to stop.
#[derive(Debug)]
pub struct Started {
    /// Where to observe each workload from.
    pub sites: Vec<observer::SiteSpec>,
    /// The mesh file the control plane follows.
    pub mesh_file: PathBuf,
    /// The addresses it is written with.
    pub layout: mesh_file::Layout,
    /// What runs; dropping it stops everything too.
    pub backing: Backing,
}

/// The processes (and namespaces) of one mode.
#[derive(Debug)]
pub enum Backing {
    /// Pods in network namespaces (boxed: a sandbox is large, the other variant small).
    Namespaced(Box<namespaced::Mesh>),
    /// Processes on loopback.
    Loopback(loopback::Mesh),
}

impl Backing {
    /// `Err` naming the first process that stopped on its own, with the end of its log.
    fn check_alive(&self) -> Result<(), String> {
        match self {
            Backing::Namespaced(m) => m.check_alive(),
            Backing::Loopback(m) => m.check_alive(),
        }
    }

    /// Starts the callers' apps where they are processes of their pods (network namespaces),
    /// calling for `duration`; in loopback mode the observer threads call.
    fn start_callers(&self, duration: Duration) -> anyhow::Result<()> {
        match self {
            Backing::Namespaced(m) => m.start_callers(duration),
            Backing::Loopback(_) => Ok(()),
        }
    }

    /// How many connections kube-proxy (the node's DNAT) took for the Service; `None` on
    /// loopback, where there is no node.
    fn kube_proxy_connections(&self) -> Option<u64> {
        match self {
            Backing::Namespaced(m) => m.kube_proxy_connections(),
            Backing::Loopback(_) => None,
        }
    }

    /// Stops everything and removes what was made; says what.
    fn shutdown(self) -> Cleanup {
        match self {
            Backing::Namespaced(m) => m.shutdown(),
            Backing::Loopback(m) => m.shutdown(),
        }
    }
}

/// What shutting down undid.
#[derive(Debug, Default)]
pub struct Cleanup {
    /// Processes stopped.
    pub processes: usize,
    /// Network namespaces deleted.
    pub namespaces: usize,
    /// Namespaces that are still there (should be none).
    pub namespaces_left: Vec<String>,
    /// The temporary directory removed.
    pub dir: PathBuf,
}

/// Whether Ctrl-C or SIGTERM asked the demo to stop.
#[derive(Debug, Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// Whether a stop was asked for.
    pub fn requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Whether a stop is asked for now or within a moment: Ctrl-C on a terminal reaches the
    /// demo's processes too, and one of them may exit (and the demo see it gone) before the
    /// demo has heard of the signal itself. For telling "interrupted" from "failed".
    pub fn requested_soon(&self) -> bool {
        let deadline = Instant::now() + Duration::from_millis(300);
        while !self.requested() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.requested()
    }
}

/// Writes the demo's lines to stdout, in colour only where the palette says so.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    /// Colours.
    pub palette: Palette,
}

impl Out {
    /// One line.
    pub fn line(&self, text: &str) -> anyhow::Result<()> {
        style::print(&format!("{text}\n")).context("writing to stdout")
    }

    /// One step of the start: "▸ WHAT … ready in 0.8 s DETAIL", or "failed".
    pub fn step<T>(
        &self,
        what: &str,
        f: impl FnOnce() -> anyhow::Result<(T, String)>,
    ) -> anyhow::Result<T> {
        style::print(&format!("▸ {what} … ")).context("writing to stdout")?;
        let started = Instant::now();
        match f() {
            Ok((value, detail)) => {
                let took = format!("ready in {:.1} s", started.elapsed().as_secs_f64());
                let detail = if detail.is_empty() {
                    String::new()
                } else {
                    format!("  {}", self.palette.paint(Style::Faint, &detail))
                };
                self.line(&format!(
                    "{}{detail}",
                    self.palette.paint(Style::Good, &took)
                ))?;
                Ok(value)
            }
            Err(e) => {
                self.line(&self.palette.paint(Style::Bad, "failed"))?;
                Err(e)
            }
        }
    }
}

/// Runs the demo; `Ok(true)` when it ran its course (or was stopped with Ctrl-C once running).
pub async fn run(args: DemoArgs, palette: Palette) -> anyhow::Result<bool> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut interrupt = signal(SignalKind::interrupt()).context("installing a Ctrl-C handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    // The demo itself is blocking code (processes, threads, waits); this task only listens
    // for signals and tells it to stop, which it then does in order.
    let demo = tokio::task::spawn_blocking(move || run_blocking(&args, palette, &Stop(stop_rx)));
    tokio::pin!(demo);
    loop {
        tokio::select! {
            done = &mut demo => return done.context("the demo panicked")?,
            _ = interrupt.recv() => { stop_tx.send_replace(true); }
            _ = terminate.recv() => { stop_tx.send_replace(true); }
        }
    }
}

fn run_blocking(args: &DemoArgs, palette: Palette, stop: &Stop) -> anyhow::Result<bool> {
    check_args(args)?;
    for name in [CONTROL_PLANE, PROXY] {
        if binaries::binary(name).is_err() {
            let dir = binaries::bin_dir();
            let whose = if std::env::var_os(binaries::BIN_DIR_ENV).is_some() {
                binaries::BIN_DIR_ENV
            } else {
                "the directory of this trellis binary"
            };
            anyhow::bail!(
                "{name} is not in {} ({whose}): build the binaries first with \
                 `cargo build --bins` at the workspace root, or set {} to where they are",
                dir.display(),
                binaries::BIN_DIR_ENV
            );
        }
    }
    let out = Out { palette };
    let mode = if args.loopback || !netns::is_root() {
        Mode::Loopback
    } else {
        Mode::Namespaced
    };
    out.line(&palette.paint(
        Style::Strong,
        "trellis demo: a control plane and four pods (frontend, backend-1, backend-2, intruder), each behind its own sidecar; the backends behind the Service shop/backend",
    ))?;
    out.line(&match (mode, args.loopback) {
        (Mode::Namespaced, _) => "mode: network namespaces, one per workload, on a bridge (198.18.0.0/24); transparent interception with the iptables rules of `trellis-proxy init`; sidecars as UID 1337".to_owned(),
        (Mode::Loopback, true) => "mode: loopback (--loopback): every process on 127.0.0.1, sidecars in explicit mode (no namespaces, no iptables)".to_owned(),
        (Mode::Loopback, false) => "mode: loopback, because this is not root: every process on 127.0.0.1, sidecars in explicit mode (no namespaces, no iptables); run as root for network namespaces and transparent interception".to_owned(),
    })?;
    out.line(&format!("binaries: {}", binaries::bin_dir().display()))?;
    match mode {
        Mode::Namespaced => namespaced::preflight()?,
        Mode::Loopback => loopback::preflight(args)?,
    }
    let started = match mode {
        Mode::Namespaced => namespaced::start(args, &out),
        Mode::Loopback => loopback::start(args, &out),
    };
    // Whatever was started is already stopped when `start` fails: its parts were dropped.
    let started = match started {
        Ok(s) => s,
        Err(e) => {
            out.line("stopped what had started; cleaned up")?;
            if stop.requested_soon() {
                anyhow::bail!("interrupted while starting");
            }
            return Err(e);
        }
    };
    let Started {
        sites,
        mesh_file,
        layout,
        backing,
    } = started;
    let shown = show::show(
        &show::Setup {
            sites: &sites,
            mesh_file: &mesh_file,
            layout: &layout,
            backing: &backing,
            duration: args.duration,
        },
        &out,
        stop,
    );
    let _ = out.line("stopping …");
    let cleanup = backing.shutdown();
    let _ = out.line(&cleanup_line(&cleanup, &out.palette));
    shown?;
    if !cleanup.namespaces_left.is_empty() {
        anyhow::bail!(
            "network namespaces left behind: {}",
            cleanup.namespaces_left.join(", ")
        );
    }
    Ok(true)
}

fn check_args(args: &DemoArgs) -> anyhow::Result<()> {
    if args.duration < Duration::from_secs(4) {
        anyhow::bail!(
            "--duration {}: give at least 4s (the policy story needs a few calls per step)",
            humantime::format_duration(args.duration)
        );
    }
    if args.cert_ttl < Duration::from_secs(4) {
        anyhow::bail!(
            "--cert-ttl {}: give at least 4s (sidecars renew at half the lifetime)",
            humantime::format_duration(args.cert_ttl)
        );
    }
    loopback::check_base_port(args.base_port)
}

fn cleanup_line(c: &Cleanup, palette: &Palette) -> String {
    let mut parts = vec![format!(
        "{} process{} stopped",
        c.processes,
        if c.processes == 1 { "" } else { "es" }
    )];
    if c.namespaces > 0 {
        parts.push(format!("{} network namespaces deleted", c.namespaces));
    }
    if !c.dir.as_os_str().is_empty() {
        let gone = if c.dir.exists() { "kept" } else { "removed" };
        parts.push(format!("{} {gone}", c.dir.display()));
    }
    let text = format!("stopped; cleaned up: {}", parts.join(", "));
    if c.namespaces_left.is_empty() {
        palette.paint(Style::Good, &text)
    } else {
        palette.paint(Style::Bad, &text)
    }
}
