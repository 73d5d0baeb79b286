//! The file source (embedded mode): a YAML mesh file with workloads, Services and policies in
//! the same terms as the cluster's, reloaded when it changes. A malformed file keeps the last
//! good model and reports the error once.
//!
//! ```yaml
//! mtls: STRICT                    # mesh default (STRICT | PERMISSIVE)
//! namespaces:                     # per-namespace overrides
//!   lab: {mtls: PERMISSIVE}
//! workloads:                      # ports: named container ports; ready (default true), terminating
//!   - {namespace: shop, serviceAccount: backend, ip: 198.18.0.3, labels: {app: backend}, ports: {http: 8080}}
//!   - {namespace: shop, serviceAccount: frontend, ip: 127.0.0.1, port: 18081, tunnel: "127.0.0.1:25008"}
//! services:                       # see services.rs: selector or explicit endpoints
//!   - {namespace: shop, name: backend, clusterIPs: [198.19.0.10], selector: {app: backend},
//!      ports: [{name: http, port: 80, targetPort: http}]}
//! policies:                       # AuthorizationPolicy objects, exactly as in a cluster
//!   - apiVersion: trellis.dev/v1alpha1
//!     kind: AuthorizationPolicy
//!     metadata: {name: allow-frontend, namespace: shop}
//!     spec: {selector: {matchLabels: {app: backend}}, ports: [8080], allow: [ns/shop/sa/frontend]}
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use trellis_ca::TrustDomain;

mod services;

use super::crd::{AuthorizationPolicy, Policy};
use super::model::{MeshModel, MtlsMode, TUNNEL_PORT, Workload};
use super::publish::Publisher;
use services::{SelectableWorkload, ServiceDoc};

/// How often the file is checked for changes.
pub const POLL: Duration = Duration::from_millis(250);
/// Largest mesh file read.
const MAX_BYTES: u64 = 8 * 1024 * 1024;

/// Why a mesh file was not (re)loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MeshFileError {
    /// Reading failed.
    #[error("cannot read mesh file {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The YAML does not have the expected shape.
    #[error("mesh file {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        reason: String,
    },
    /// An entry is invalid.
    #[error("mesh file {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the entry.
        reason: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    mtls: MtlsMode,
    #[serde(default)]
    namespaces: BTreeMap<String, NamespaceDoc>,
    #[serde(default)]
    workloads: Vec<WorkloadDoc>,
    #[serde(default)]
    services: Vec<ServiceDoc>,
    #[serde(default)]
    policies: Vec<AuthorizationPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamespaceDoc {
    mtls: MtlsMode,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct WorkloadDoc {
    namespace: String,
    service_account: String,
    ip: IpAddr,
    #[serde(default)]
    port: u16,
    #[serde(default)]
    tunnel: Option<SocketAddr>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Named container ports (Services' named target ports resolve against them).
    #[serde(default)]
    ports: BTreeMap<String, u16>,
    /// Passing its readiness probe (default: yes).
    #[serde(default = "yes")]
    ready: bool,
    /// Being deleted.
    #[serde(default)]
    terminating: bool,
}

fn yes() -> bool {
    true
}

/// The parser's limits: proportional to the largest file read, so that the file size is
/// the limit that bites (a 10,000-workload mesh is ~1 M nodes).
fn parse_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = usize::try_from(MAX_BYTES).unwrap_or(usize::MAX);
    budget.max_events = budget.max_nodes;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

/// Parses a mesh file's text into a model.
pub fn parse(text: &str, path: &Path, td: &TrustDomain) -> Result<MeshModel, MeshFileError> {
    let doc: FileDoc = serde_saphyr::from_str_with_options(text, parse_options()).map_err(|e| {
        MeshFileError::Parse {
            path: path.to_owned(),
            reason: e.to_string(),
        }
    })?;
    let invalid = |reason: String| MeshFileError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let mut model = MeshModel {
        trust_domain: td.clone(),
        default_mtls: doc.mtls,
        namespace_mtls: doc
            .namespaces
            .into_iter()
            .map(|(k, v)| (k, v.mtls))
            .collect(),
        ..MeshModel::default()
    };
    let mut selectable = Vec::with_capacity(doc.workloads.len());
    for (i, w) in doc.workloads.into_iter().enumerate() {
        let candidate = Workload {
            tunnel: w.tunnel.unwrap_or(SocketAddr::new(w.ip, TUNNEL_PORT)),
            namespace: w.namespace,
            service_account: w.service_account,
            ip: w.ip,
            port: w.port,
            labels: w.labels,
        };
        if candidate.id(td).is_none() {
            return Err(invalid(format!(
                "workloads[{i}]: namespace {:?} / serviceAccount {:?} do not form a valid SPIFFE ID",
                candidate.namespace, candidate.service_account
            )));
        }
        if model.workloads.contains_key(&candidate.key()) {
            return Err(invalid(format!(
                "workloads[{i}]: {} is already another workload's address",
                candidate.ip
            )));
        }
        selectable.push(SelectableWorkload {
            key: candidate.key(),
            ports: w.ports,
            ready: w.ready,
            terminating: w.terminating,
        });
        model.add_workload(candidate);
    }
    for (i, s) in doc.services.into_iter().enumerate() {
        let service = s
            .resolve(&model, &selectable)
            .map_err(|reason| invalid(format!("services[{i}]: {reason}")))?;
        if model.services.contains_key(&service.key()) {
            return Err(invalid(format!(
                "services[{i}]: {} is declared twice",
                service.key()
            )));
        }
        model.add_service(service);
    }
    model.policies = doc
        .policies
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Policy::from_resource(p, td).map_err(|e| invalid(format!("policies[{i}]: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(model)
}

/// Reads and parses the file.
pub fn load(path: &Path, td: &TrustDomain) -> Result<MeshModel, MeshFileError> {
    let read_err = |reason: String| MeshFileError::Read {
        path: path.to_owned(),
        reason,
    };
    let len = std::fs::metadata(path)
        .map_err(|e| read_err(e.to_string()))?
        .len();
    if len > MAX_BYTES {
        return Err(read_err(format!(
            "{len} bytes; at most {MAX_BYTES} are read"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| read_err(e.to_string()))?;
    parse(&text, path, td)
}

/// Hands the file's model to `publisher` whenever the file's contents change, until
/// `shutdown`.
pub async fn watch_file(
    path: PathBuf,
    td: TrustDomain,
    publisher: Publisher,
    shutdown: CancellationToken,
) {
    let mut last_text: Option<String> = None;
    loop {
        match std::fs::read_to_string(&path) {
            Ok(text) if last_text.as_deref() != Some(text.as_str()) => {
                match parse(&text, &path, &td) {
                    Ok(model) => {
                        let (workloads, services, policies) = (
                            model.workloads.len(),
                            model.services.len(),
                            model.policies.len(),
                        );
                        let version = publisher.publish(model).map(|c| c.version);
                        info!(
                            path = %path.display(),
                            ?version,
                            workloads,
                            services,
                            policies,
                            "mesh file loaded"
                        );
                    }
                    Err(e) => {
                        warn!(error = %e, "mesh file not applied; the last good state stays in force")
                    }
                }
                last_text = Some(text);
            }
            Ok(_) => {}
            Err(e) => {
                if last_text.is_some() {
                    warn!(path = %path.display(), error = %e, "mesh file unreadable; the last good state stays in force");
                    last_text = None;
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
