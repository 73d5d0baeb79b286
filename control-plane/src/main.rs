//! `trellis-control-plane`: parses flags, sets up logging, starts the server, and shuts down
//! gracefully on SIGTERM or Ctrl-C.

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;
use trellis_control_plane::config::{Args, LogFormat, Mode};
use trellis_control_plane::server;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Args::parse().validate()?;
    let filter = EnvFilter::try_new(&config.args.log)
        .with_context(|| format!("--log {:?} is not a valid filter", config.args.log))?;
    match config.args.log_format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
        LogFormat::Text => tracing_subscriber::fmt()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .with_env_filter(filter)
            .init(),
    }
    tracing::info!(config = ?config.args, "starting");

    let kube = match config.args.mode {
        Mode::Kubernetes => Some(
            kube::Client::try_default()
                .await
                .context("no Kubernetes configuration (in-cluster or KUBECONFIG)")?,
        ),
        Mode::Local => None,
    };
    let running = server::start(&config, kube).await?;
    let token = running.shutdown_token();
    tokio::select! {
        () = shutdown_signal() => tracing::info!("shutdown signal received; draining"),
        () = token.cancelled() => {}
    }
    running.shutdown(config.args.shutdown_grace).await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
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
