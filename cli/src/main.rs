//! `trellis`: the command-line tool of the Trellis mesh.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`svid`] | `trellis svid fetch`: get an SVID from the control plane and write it as PEM files |
//! | [`files`] | writing output files atomically, keys with mode 0600 |
//! | [`inspect`] | `trellis inspect`: a proxy's identity and recent handshakes, once or `--watch`ed |
//! | [`check`] | `trellis check`: pre-flight and health checks, ✔ / ‼ / ✘ with hints |
//! | [`describe`] | `trellis describe pod` / `--admin`: one pod's (or the local proxy's) mesh facts and a verdict for a caller |
//! | [`status`] | `trellis status`: every proxy as the control plane sees it |
//! | [`completions`] | `trellis completion SHELL` (alias `completions`) |
//! | [`version`] | `trellis version`: this tool's, the control plane's and the proxies' |
//! | [`output`] | `-o table|json|yaml` |
//! | [`pod_ref`] | `NAME`, `pod/NAME`, `deploy/NAME`, `-l SELECTOR` resolved to a pod |
//! | [`demo`] | `trellis demo`: a control plane and sample workloads on this machine, shown live |
//! | [`admin_api`], [`admin_client`] | the proxy admin endpoint's JSON, and reading it |
//! | [`http1`] | a small HTTP/1.1 GET client over any [`dial::Target`] |
//! | [`dial`] | where bytes go: TCP here, or a pod's port through the API server |
//! | [`kube_access`] | the Kubernetes client, reads sorted into found/missing/denied/failed |
//! | [`health_probe`] | the control plane's gRPC health over TLS, with its presented chain |
//! | [`x509`] | certificate dates and trust bundle summaries |
//! | [`table`], [`style`], [`humanize`] | terminal output: tables, colour, durations |
//!
//! Exit status: 0 success; 1 a failed check or an error; 2 bad usage (clap).

#![forbid(unsafe_code)]

mod admin_api;
mod admin_client;
mod check;
mod completions;
mod demo;
mod describe;
mod dial;
mod files;
mod health_probe;
mod http1;
mod humanize;
mod inspect;
mod kube_access;
mod output;
mod pod_ref;
mod status;
mod style;
mod svid;
mod table;
mod version;
mod x509;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::style::{ColorChoice, Palette};

/// Trellis: zero-trust service mesh for Kubernetes.
#[derive(Debug, Parser)]
#[command(
    name = "trellis",
    version,
    about,
    long_about = None,
    after_help = "\
Examples:
  trellis check                                  # is the mesh in this cluster healthy?
  trellis status                                 # every proxy: identity, certificate, sync
  trellis describe pod -n shop backend-6c9f7d8b4-q2w3e --from-pod shop/frontend-x --port 8080
  trellis inspect -n shop deploy/frontend        # a pod's identity and handshakes
  trellis inspect --admin 127.0.0.1:15000 --watch   # a local proxy, following new connections
  trellis --context prod status -n shop -o yaml  # kubectl's --kubeconfig/--context work everywhere
  trellis completion bash > ~/.local/share/bash-completion/completions/trellis

Exit status: 0 success, 1 a failed check or an error, 2 bad usage.
Colour only on a terminal, never with NO_COLOR set (or choose with --color)."
)]
struct Cli {
    /// When to colour the output.
    #[arg(long, global = true, value_enum, value_name = "WHEN", default_value_t)]
    color: ColorChoice,
    #[command(flatten)]
    kube: kube_access::KubeOpts,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show a proxy's identity and its recent connections (handshakes).
    ///
    /// Reads the proxy's admin endpoint: on this machine with --admin ADDR (default
    /// 127.0.0.1:15000), or in a cluster with -n NAMESPACE POD, through the API server
    /// (port-forward to the pod's port 15000). Each connection shows when it came, its
    /// direction, the peer's address and SPIFFE ID, TLS version, cipher suite, ALPN, the
    /// handshake time (or "reused" when it rode an existing tunnel) and the decision, with the
    /// reason for anything but allow.
    Inspect(inspect::InspectArgs),
    /// Run a mesh on this machine and show, live, what it does.
    ///
    /// Starts a control plane in local mode and three workloads — frontend, backend, intruder —
    /// each behind its own sidecar, and shows the frontend's calls allowed (with both SPIFFE
    /// IDs and the TLS handshake), the intruder refused with the reason, policy edits taking
    /// effect and certificate rotations. As root each workload gets its own network namespace
    /// with transparent interception (the real iptables rules); otherwise everything runs on
    /// 127.0.0.1 with the proxies in explicit mode. Stops after --duration or on Ctrl-C, and
    /// removes everything it started. Needs trellis-control-plane and trellis-proxy next to
    /// this binary (`cargo build --bins`).
    #[command(after_help = "\
Examples:
  sudo trellis demo --duration 20s   # network namespaces, transparent interception
  trellis demo                       # as an ordinary user: loopback, explicit mode")]
    Demo(demo::DemoArgs),
    /// Check that the mesh is installed and healthy: ✔ ok, ‼ warning, ✘ failed (exit 1).
    ///
    /// Against the cluster of the current kubeconfig context: API server, CRD, control plane
    /// and injector Deployments, the webhook's caBundle against the injector Secret's ca.crt,
    /// the mesh root's expiry, the control plane's gRPC health over TLS (through a
    /// port-forward), intermediates' expiry, labelled namespaces and pods not injected yet.
    /// With --local: a control plane on this machine.
    Check(check::CheckArgs),
    /// Every meshed pod's proxy as the control plane sees it, stale and unreachable flagged.
    ///
    /// For each meshed pod (or a namespace's): its SPIFFE ID, the serial and time left of the
    /// certificate its discovery stream was opened with, the discovery version it acknowledged
    /// against the control plane's, its mTLS mode and whether its app probes are rewritten.
    /// Read from the control plane's /status through the API server (port-forward to a control
    /// plane pod's 127.0.0.1:15015; needs `create pods/portforward` in its namespace), never
    /// from each proxy.
    Status(status::StatusArgs),
    /// Describe one object of the mesh (`describe pod NAME`), or the proxy on this machine
    /// (`describe --admin ADDR`).
    ///
    /// For a pod: injected or why not, its identity, the policies that select it and what
    /// they allow per port, its mTLS mode, its recent refusals with reasons, and a one-line
    /// verdict for "can X reach this pod on port P?" (--from SPIFFE_ID or --from-pod NS/NAME,
    /// with --port), decided by its proxy's own enforcement code.
    Describe(describe::DescribeArgs),
    /// Work with X509-SVIDs (workload certificates).
    Svid {
        #[command(subcommand)]
        command: svid::SvidCommand,
    },
    /// Print a shell completion script.
    #[command(
        visible_alias = "completions",
        after_help = "\
Examples:
  trellis completion bash > ~/.local/share/bash-completion/completions/trellis
  trellis completion zsh > \"${fpath[1]}/_trellis\"
  trellis completion fish > ~/.config/fish/completions/trellis.fish"
    )]
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the version of this tool and, when reachable, the control plane's and proxies'.
    Version(version::VersionArgs),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let palette = Palette::for_stdout(cli.color);
    let result = match cli.command {
        Command::Inspect(args) => inspect::run(args, &cli.kube, palette).await.map(|()| true),
        Command::Demo(args) => demo::run(args, palette).await,
        Command::Check(args) => check::run(args, &cli.kube, palette).await,
        Command::Status(args) => status::run(args, &cli.kube, palette).await,
        Command::Describe(args) => describe::run(args, &cli.kube).await,
        Command::Svid { command } => svid::run(command).await.map(|()| true),
        Command::Completion { shell } => completions::run(shell, &mut Cli::command())
            .map(|()| true)
            .map_err(Into::into),
        Command::Version(args) => version::run(args, &cli.kube).await,
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        // The reader went away (`trellis inspect | head`): nothing more to say.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
