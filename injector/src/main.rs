//! `trellis-injector`: loads and checks its configuration and files, decides the proxy layout,
//! then serves the webhook until SIGTERM or Ctrl-C.
//!
//! ```text
//! trellis-injector \
//!   --tls-cert-file /var/run/trellis/injector/tls.crt \
//!   --tls-key-file /var/run/trellis/injector/tls.key \
//!   --trust-bundle-file /var/run/trellis/bundle/root-cert.pem \
//!   --proxy-image ghcr.io/trellis-mesh/trellis-proxy:0.1.0
//! ```
//!
//! Logs go to stderr: `--log <filter>` (`TRELLIS_LOG`, then `RUST_LOG`; default `info`) and
//! `--log-format text|json` (`TRELLIS_LOG_FORMAT`), as in every Trellis binary.

#![forbid(unsafe_code)]

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser as _;
use tokio::sync::watch;
use tracing::{Instrument as _, info, info_span, warn};
use trellis_injector::{
    Config,
    apiserver::ApiServer,
    config::NativeSidecars,
    reload, server,
    tls::{self, LatestCertificate},
};

/// Attempts, and time for each, at reading the API server's version.
const VERSION_ATTEMPTS: u32 = 3;
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    trellis_telemetry::init(&config.log)?;
    config.validate()?;
    info!(config = %config.dump(), "trellis-injector starting");

    let files = reload::Files {
        cert: config.tls_cert_file.clone(),
        key: config.tls_key_file.clone(),
        trust_bundle: config.trust_bundle_file.clone(),
        trust_domain: config.trust_domain.clone(),
    };
    let (loaded, watcher) = files.load().await?;
    let native_sidecars = match config.native_sidecars {
        NativeSidecars::On => true,
        NativeSidecars::Off => false,
        NativeSidecars::Auto => native_sidecars_from_api_server().await,
    };
    info!(native_sidecars, "proxy layout chosen");

    let (config_tx, config_rx) = watch::channel(Arc::new(
        config.inject_config(loaded.trust_bundle_pem, native_sidecars)?,
    ));
    let (serving_tx, serving_rx) = watch::channel(Arc::new(loaded.serving));
    let tls = tls::server_config(Arc::new(LatestCertificate::new(serving_rx)))?;

    let mut dump = config.dump();
    dump["nativeSidecarsInUse"] = native_sidecars.into();
    let state = Arc::new(server::State {
        config: config_rx,
        config_dump: Bytes::from(serde_json::to_vec_pretty(&dump)?),
        limits: server::Limits {
            max_connections: usize::try_from(config.max_connections)?,
            ..server::Limits::default()
        },
    });
    let listener = server::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on --listen {}", config.listen))?;
    info!(address = %config.listen, "webhook listening");

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let reloader = tokio::spawn(
        watcher
            .run(
                serving_tx,
                config_tx,
                config.reload_interval(),
                stopped(stop_rx.clone()),
            )
            .instrument(info_span!("reload")),
    );
    let webhook = tokio::spawn(
        server::run(listener, tls, state, stopped(stop_rx)).instrument(info_span!("webhook")),
    );

    termination().await?;
    info!("termination requested");
    let _ = stop_tx.send(true);
    webhook.await?;
    reloader.await?;
    info!("trellis-injector stopped");
    Ok(())
}

/// `--native-sidecars=auto`: ask the API server; if it cannot be asked, use the layout that
/// works on every version.
async fn native_sidecars_from_api_server() -> bool {
    let api_server = match ApiServer::in_cluster() {
        Ok(api_server) => api_server,
        Err(err) => {
            warn!(%err, "cannot reach the API server; proxy goes in the first regular container");
            return false;
        }
    };
    for attempt in 1..=VERSION_ATTEMPTS {
        match api_server.version(VERSION_TIMEOUT).await {
            Ok(version) => {
                info!(%version, "API server version read");
                return version.supports_native_sidecars();
            }
            Err(err) => {
                warn!(%err, attempt, "cannot read the API server's version");
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
            }
        }
    }
    warn!("proxy goes in the first regular container (works on every version)");
    false
}

/// Completes on SIGTERM (how the kubelet stops a pod) or Ctrl-C.
async fn termination() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot listen for SIGTERM")?;
        tokio::select! {
            _ = term.recv() => Ok(()),
            ctrl_c = tokio::signal::ctrl_c() => ctrl_c.context("cannot listen for Ctrl-C"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .context("cannot listen for Ctrl-C")
    }
}
