//! `trellis-proxy`: `run` (the sidecar), `init` (iptables, in the init container) and `wait`
//! (block until the sidecar is ready: the proxy container's postStart hook on clusters without
//! native sidecars).

use anyhow::Context;
use clap::{Parser, Subcommand};
use trellis_proxy::config::RunArgs;
use trellis_proxy::malloc_tuning;
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
    Run {
        /// The sidecar's settings.
        #[command(flatten)]
        args: Box<RunArgs>,
        /// Start again with glibc's allocator tuned for the data path (`GLIBC_TUNABLES`, see
        /// the `malloc_tuning` module) unless `GLIBC_TUNABLES` is already set.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        malloc_tuning: bool,
    },
    /// Install the iptables rules that send the pod's TCP through the proxy (init container).
    Init {
        /// What to install.
        #[command(flatten)]
        args: Box<trellis_proxy::redirect::InitArgs>,
        /// Logs (on stderr: `--dry-run` prints the rules on stdout).
        #[command(flatten)]
        log: LogArgs,
    },
    /// Wait until the sidecar in this pod is ready (GET http://127.0.0.1:15000/ready).
    Wait(trellis_proxy::wait::WaitArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            args,
            malloc_tuning,
        } => {
            let tuning = malloc_tuning::should_reexec(
                malloc_tuning,
                std::env::var_os(malloc_tuning::ENV).as_deref(),
            );
            // Returns only when starting again failed: the proxy then runs untuned.
            let failed = tuning.then(malloc_tuning::reexec);
            run(*args, failed)
        }
        Command::Init { args, log } => {
            trellis_telemetry::init(&log)?;
            Ok(trellis_proxy::redirect::run(&args)?)
        }
        Command::Wait(args) => Ok(trellis_proxy::wait::wait(&args)?),
    }
}

fn run(args: RunArgs, reexec_failed: Option<std::io::Error>) -> anyhow::Result<()> {
    let logs = trellis_telemetry::init(&args.log)?;
    if let Some(e) = reexec_failed {
        tracing::warn!(error = %e, "cannot start again with GLIBC_TUNABLES set: allocator untuned");
    }
    let workers = args.worker_threads.clamp(1, 64);
    let mut config = args.validate()?;
    config.log_control = Some(logs);
    raise_fd_limit();
    tracing::info!(config = %serde_json::to_string(&config).unwrap_or_default(), "starting");
    let runtime = runtime_builder(workers)
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

/// One worker: a current-thread runtime, every task on the main thread. A multi-thread runtime
/// with one worker still hands tasks between the main thread and its worker, and pays for
/// cross-thread wake-ups on every hop (bench/: at 5,000 req/s, CPU per request −31 % and added
/// p50 −33 %; single-stream throughput +8 %).
fn runtime_builder(workers: usize) -> tokio::runtime::Builder {
    if workers == 1 {
        return tokio::runtime::Builder::new_current_thread();
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(workers);
    builder
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

#[cfg(test)]
mod tests {
    use super::runtime_builder;
    use tokio::runtime::RuntimeFlavor;

    #[test]
    fn one_worker_runs_on_the_main_thread_and_more_get_a_pool() {
        for (workers, flavor) in [
            (1, RuntimeFlavor::CurrentThread),
            (2, RuntimeFlavor::MultiThread),
            (4, RuntimeFlavor::MultiThread),
        ] {
            let rt = runtime_builder(workers).enable_all().build().unwrap();
            assert_eq!(rt.handle().runtime_flavor(), flavor, "{workers} workers");
            if flavor == RuntimeFlavor::MultiThread {
                assert_eq!(rt.metrics().num_workers(), workers);
            }
        }
    }
}
