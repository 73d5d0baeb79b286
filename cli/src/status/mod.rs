//! `trellis status`: every meshed pod's proxy as the control plane sees it — identity,
//! certificate serial and time left, discovery version acknowledged against the control
//! plane's, mTLS mode, whether the app's probes are rewritten — with stale, unreachable and
//! expiring proxies flagged (the `istioctl proxy-status` of Trellis).
//!
//! One source: the control plane's `GET /status` (its loopback-only `--status-listen`, port
//! 15015 in the chart), reached through the API server's port-forward to one control plane pod
//! — which is how the caller is authenticated and authorized (`create pods/portforward` in the
//! control plane's namespace) — joined with the meshed pods the API server lists. No proxy is
//! contacted.
//!
//! Owns: the flags and the I/O. What is shown is decided in [`view`].

mod view;

pub use view::CpStatus;

use std::time::{SystemTime, UNIX_EPOCH};

use clap::Args;
use http::StatusCode;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use trellis_injector::annotations::APP_PROBES;

use self::view::MeshedPod;
use crate::check::cluster::CONTROL_PLANE_SELECTOR;
use crate::dial::Target;
use crate::http1::Http1Client;
use crate::kube_access::{self, Fetched, INJECTED_ANNOTATION, KubeOpts, fetch_value};
use crate::output::{self, Format};
use crate::style::{Palette, print};

/// The control plane's status port (chart: `--status-listen 127.0.0.1:15015`).
pub const STATUS_PORT: u16 = 15015;

/// `trellis status` flags.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  # Every meshed pod in the cluster
  trellis status

  # One namespace, as YAML
  trellis status -n shop -o yaml

  # Proxies that need attention, with jq
  trellis status -o json | jq '.proxies[] | select(.state != \"synced\")'

  # A control plane on this machine (trellis-control-plane --status-listen 127.0.0.1:15015)
  trellis status --local 127.0.0.1:15015

  # Fail a script (CI gate, cron) unless every proxy is synced
  trellis status --exit-code -o json > status.json

States: synced; stale (acknowledged an older discovery version); unreachable (a meshed pod
with no discovery stream); expiring (its certificate has under a quarter of its lifetime left).
Exit status 0 whatever the states, unless --exit-code: then 1 when any proxy is not synced.
Exit status 1 (with an error on stderr) when the control plane cannot be read.")]
pub struct StatusArgs {
    /// Only the meshed pods of this namespace (default: every namespace).
    #[arg(short = 'n', long, value_name = "NS", conflicts_with = "local")]
    namespace: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    output: Format,
    /// The control plane's namespace.
    #[arg(long, value_name = "NS", default_value = "trellis-system")]
    control_plane_namespace: String,
    /// Read a control plane on this machine at ADDR (its --status-listen) instead of a cluster;
    /// its streams are listed by the pod names the proxies gave.
    #[arg(long, value_name = "ADDR", value_parser = crate::dial::host_port)]
    local: Option<String>,
    /// Exit with status 1 when any listed proxy is not synced (stale, unreachable or with an
    /// expiring certificate); the report is printed either way.
    #[arg(long)]
    exit_code: bool,
}

/// Why `trellis status` has nothing to show.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    /// No control plane pod to read.
    #[error(
        "no ready control plane pod ({CONTROL_PLANE_SELECTOR}) in namespace {0}\n  hint: trellis check; or --control-plane-namespace NS if it runs elsewhere"
    )]
    NoControlPlane(String),
    /// Reading `/status` failed.
    #[error(
        "cannot read the control plane's /status at {target}: {reason}\n  hint: is the control plane started with --status-listen 127.0.0.1:{STATUS_PORT} (chart 0.2 and later)?"
    )]
    Read {
        /// Where.
        target: String,
        /// What failed.
        reason: String,
    },
    /// The API server refused or failed a call.
    #[error("Kubernetes API: {0}")]
    Api(String),
}

/// Runs `trellis status`.
pub async fn run(args: StatusArgs, kube: &KubeOpts, palette: Palette) -> anyhow::Result<bool> {
    let (cp, pods) = match &args.local {
        Some(addr) => (read_status(Target::tcp(addr)).await?, None),
        None => {
            let client = kube_access::client(kube).await?;
            let target =
                control_plane_target(client.clone(), &args.control_plane_namespace).await?;
            let cp = read_status(target).await?;
            (
                cp,
                Some(meshed_pods(client, args.namespace.as_deref()).await?),
            )
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let report = view::report(&cp, pods.as_deref(), now);
    let text = match output::structured(args.output, &report)? {
        Some(text) => text,
        None => view::table(&report, palette),
    };
    print(&text)?;
    Ok(!args.exit_code || report.all_synced())
}

/// The status port of a ready control plane pod.
pub async fn control_plane_target(client: Client, namespace: &str) -> Result<Target, StatusError> {
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    match kube_access::ready_pod(&pods, CONTROL_PLANE_SELECTOR).await {
        Fetched::Found(Some(name)) => Ok(Target::PodPort {
            pods: Box::new(pods),
            namespace: namespace.to_owned(),
            name,
            port: STATUS_PORT,
        }),
        Fetched::Found(None) | Fetched::Missing => {
            Err(StatusError::NoControlPlane(namespace.to_owned()))
        }
        Fetched::Denied(m) | Fetched::Failed(m) => Err(StatusError::Api(m)),
    }
}

/// `GET /status` at `target`.
pub async fn read_status(target: Target) -> Result<CpStatus, StatusError> {
    let name = target.to_string();
    let failed = |reason: String| StatusError::Read {
        target: name.clone(),
        reason,
    };
    let (status, body) = Http1Client::new(target)
        .get("/status")
        .await
        .map_err(|e| failed(e.to_string()))?;
    if status != StatusCode::OK {
        let text = String::from_utf8_lossy(&body);
        return Err(failed(format!(
            "answered {status}: {}",
            text.trim().chars().take(200).collect::<String>()
        )));
    }
    serde_json::from_slice(&body).map_err(|e| failed(format!("not a status document: {e}")))
}

/// The meshed pods of `namespace` (every namespace when `None`).
async fn meshed_pods(
    client: Client,
    namespace: Option<&str>,
) -> Result<Vec<MeshedPod>, StatusError> {
    let api: Api<Pod> = match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let list = match fetch_value(api.list(&ListParams::default())).await {
        Fetched::Found(list) => list,
        Fetched::Missing => return Ok(Vec::new()),
        Fetched::Denied(m) | Fetched::Failed(m) => return Err(StatusError::Api(m)),
    };
    let mut pods: Vec<MeshedPod> = list
        .items
        .into_iter()
        .filter_map(|p| {
            let annotations = p.metadata.annotations.unwrap_or_default();
            annotations.get(INJECTED_ANNOTATION)?;
            Some(MeshedPod {
                namespace: p.metadata.namespace.unwrap_or_default(),
                name: p.metadata.name.unwrap_or_default(),
                ip: p.status.and_then(|s| s.pod_ip),
                app_probes: annotations.get(APP_PROBES).cloned(),
            })
        })
        .collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(pods)
}
