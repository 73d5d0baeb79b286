//! `trellis-proxy`: `run` (the sidecar), `init` (iptables, in the init container) and `wait`
//! (block until the sidecar is ready; the app container's postStart hook on clusters without
//! native sidecars).

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use trellis_proxy::config::RunArgs;
use trellis_telemetry::LogArgs;

/// The Trellis sidecar proxy.
#[derive(Debug, Parser)]
#[command(name = "trellis-proxy", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the sidecar.
    Run(Box<RunArgs>),
    /// Install the iptables rules that send the pod's TCP through the proxy (init container).
    Init {
        /// What to install.
        #[command(flatten)]
        args: Box<trellis_proxy::redirect::InitArgs>,
        /// Logs (on stderr: `--dry-run` prints the rules on stdout).
        #[command(flatten)]
        log: LogArgs,
    },
    /// Wait until the sidecar on this pod is ready (GET http://127.0.0.1:15020/ready).
    Wait {
        /// The readiness URL's host:port.
        #[arg(long, default_value = "127.0.0.1:15020")]
        health: String,
        /// Give up after this long.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(*args),
        Command::Init { args, log } => {
            trellis_telemetry::init(&log)?;
            Ok(trellis_proxy::redirect::run(&args)?)
        }
        Command::Wait { health, timeout } => wait(&health, timeout),
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let logs = trellis_telemetry::init(&args.log)?;
    let workers = args.worker_threads.clamp(1, 64);
    let mut config = args.validate()?;
    config.log_control = Some(logs);
    raise_fd_limit();
    tracing::info!(config = %serde_json::to_string(&config).unwrap_or_default(), "starting");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let running = trellis_proxy::run::start(config).await?;
        let token = running.shutdown_token();
        tokio::select! {
            () = terminated() => tracing::info!("SIGTERM: draining"),
            () = token.cancelled() => {}
        }
        running.shutdown().await;
        Ok(())
    })
}

/// Raises the soft limit on open files to the hard limit: every proxied connection costs two
/// descriptors, and the default soft limit (often 1024) would cap the proxy at ~500.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let Some(max) = limit.maximum {
        let raised = rustix::process::Rlimit {
            current: Some(max),
            maximum: Some(max),
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
        }
    }
}

async fn terminated() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

fn wait(health: &str, timeout: Duration) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let deadline = Instant::now() + timeout;
    loop {
        let ok = std::net::TcpStream::connect(health)
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.write_all(
                    b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                )?;
                let mut buf = [0u8; 16];
                let n = s.read(&mut buf)?;
                Ok(buf.get(..n).is_some_and(|b| b.starts_with(b"HTTP/1.1 200")))
            })
            .unwrap_or(false);
        if ok {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!("sidecar not ready at {health} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
