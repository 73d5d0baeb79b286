//! `trellis-control-plane`: parses flags, sets up logging, starts the server, and shuts down
//! gracefully on SIGTERM or Ctrl-C.

use anyhow::Context;
use clap::Parser;
use trellis_control_plane::config::{Args, Mode};
use trellis_control_plane::server;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    trellis_telemetry::init(&args.log)?;
    let config = args.validate()?;
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
