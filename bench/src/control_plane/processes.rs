//! Real processes of the control-plane bench: the control plane under test (release build, in
//! `--mode kubernetes` against the fake API server) and one real `trellis-proxy` (explicit
//! mode, discovery on) that holds the whole mesh in its state, for its RSS.
//!
//! Owns: their command lines, waiting until they are usable, and the small HTTP/1.0 GET the
//! bench reads the sidecar's admin page with.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::apiserver::{ApiServer, token_for};
use crate::procs::Supervisor;
use crate::routes::Bins;

/// A free port on 127.0.0.1 (bound and released; another process could take it first, which
/// would fail that process's start loudly).
pub fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The control plane under test.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    /// Its PID.
    pub pid: u32,
    /// Its gRPC address.
    pub grpc: SocketAddr,
    /// The root it made (PEM), read from its CA Secret.
    pub root_pem: String,
    /// Its metrics address.
    pub metrics: SocketAddr,
}

impl ControlPlane {
    /// Its metrics, as Prometheus text.
    pub async fn metrics_text(&self) -> anyhow::Result<String> {
        get(self.metrics, "/metrics").await
    }
}

/// Starts the control plane against `api` and waits until it serves and has stored its root.
pub async fn start_control_plane(
    sup: &mut Supervisor,
    dir: &Path,
    bins: &Bins,
    api: &ApiServer,
    name: &str,
    extra_args: &[String],
) -> anyhow::Result<ControlPlane> {
    let kubeconfig = dir.join(format!("{name}.kubeconfig"));
    std::fs::write(&kubeconfig, api.kubeconfig())?;
    let (grpc, metrics) = (free_port()?, free_port()?);
    let pid = sup.spawn(
        name,
        Command::new(&bins.control_plane)
            .env("KUBECONFIG", &kubeconfig)
            .arg("--mode=kubernetes")
            .arg(format!("--listen={grpc}"))
            .arg(format!("--metrics-listen={metrics}"))
            .arg("--injector-secret=")
            .arg("--shutdown-grace=1s")
            .arg("--log=warn")
            .args(extra_args),
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        sup.check_alive(name)?;
        let root = api.cluster.secret_data("trellis-ca", "root-cert.pem");
        if let Some(root) = root
            && TcpStream::connect(grpc).await.is_ok()
        {
            let root_pem = String::from_utf8(root).context("root-cert.pem is not UTF-8")?;
            return Ok(ControlPlane {
                pid,
                grpc,
                root_pem,
                metrics,
            });
        }
        if Instant::now() > deadline {
            bail!(
                "the control plane did not serve within 30 s:\n{}",
                sup.log_of(name)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A real sidecar following discovery.
#[derive(Debug, Clone)]
pub struct Sidecar {
    /// Its PID.
    pub pid: u32,
    /// Its admin address.
    admin: SocketAddr,
}

/// Starts `trellis-proxy run` as the pod `identity` (namespace, service account, pod name).
pub fn start_sidecar(
    sup: &mut Supervisor,
    dir: &Path,
    bins: &Bins,
    cp: &ControlPlane,
    identity: &(String, String, String),
    name: &str,
) -> anyhow::Result<Sidecar> {
    let (ns, sa, pod) = identity;
    let token = dir.join(format!("{name}.token"));
    std::fs::write(&token, token_for(ns, sa, pod))?;
    let root = dir.join(format!("{name}.root.pem"));
    std::fs::write(&root, &cp.root_pem)?;
    let admin = free_port()?;
    let pid = sup.spawn(
        name,
        Command::new(&bins.proxy)
            .arg("run")
            .arg("--mode=explicit")
            .arg(format!("--control-plane={}", cp.grpc))
            .arg(format!("--trust-bundle-file={}", root.display()))
            .arg(format!("--token-file={}", token.display()))
            .arg(format!("--pod-name={pod}"))
            .arg(format!("--pod-namespace={ns}"))
            .arg(format!("--service-account={sa}"))
            .arg("--tunnel-listen=127.0.0.1:0")
            .arg(format!("--admin-listen={admin}"))
            .arg("--drain=1s")
            .arg("--log=warn"),
    )?;
    Ok(Sidecar { pid, admin })
}

impl Sidecar {
    /// Waits until the sidecar knows `workloads` workloads; returns how long it took.
    pub async fn wait_for(
        &self,
        sup: &mut Supervisor,
        name: &str,
        workloads: usize,
        limit: Duration,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            sup.check_alive(name)?;
            // From /metrics, not /config_dump: rendering every Service as JSON is the largest
            // allocation a 10,000-pod state would see, and a sidecar in a cluster is not polled
            // for it.
            let known = get(self.admin, "/metrics")
                .await
                .ok()
                .and_then(|body| workloads_of(&body));
            if known.is_some_and(|k| k >= workloads as u64) {
                return Ok(started.elapsed());
            }
            if started.elapsed() > limit {
                bail!(
                    "the sidecar knows {known:?} of {workloads} workloads after {limit:?}:\n{}",
                    sup.log_of(name)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The `trellis_proxy_discovery_workloads` sample of a Prometheus text page.
fn workloads_of(metrics: &str) -> Option<u64> {
    metrics.lines().find_map(|l| {
        let value = l.strip_prefix("trellis_proxy_discovery_workloads ")?;
        value.trim().parse().ok()
    })
}

/// `GET path` over HTTP/1.0; the body.
async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut text = String::new();
        s.read_to_string(&mut text).await?;
        anyhow::Ok(text)
    };
    let text = tokio::time::timeout(Duration::from_secs(2), exchange).await??;
    let (_, body) = text.split_once("\r\n\r\n").context("no HTTP body")?;
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::workloads_of;

    #[test]
    fn the_workload_count_is_read_from_its_own_sample_only() {
        let page = "# HELP trellis_proxy_discovery_workloads Workloads\n\
                    trellis_proxy_discovery_workloads_other 7\n\
                    trellis_proxy_discovery_workloads 10000\n";
        assert_eq!(workloads_of(page), Some(10000));
        assert_eq!(workloads_of("trellis_proxy_discovery_version 3\n"), None);
        assert_eq!(workloads_of("trellis_proxy_discovery_workloads x\n"), None);
    }
}
