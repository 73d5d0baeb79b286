//! The file source (embedded mode): a YAML mesh file with workloads and policies in the same
//! schema as the cluster's, reloaded when it changes. A malformed file keeps the last good model
//! and reports the error once.
//!
//! ```yaml
//! mtls: STRICT                    # mesh default (STRICT | PERMISSIVE)
//! namespaces:                     # per-namespace overrides
//!   lab: {mtls: PERMISSIVE}
//! workloads:
//!   - {namespace: shop, serviceAccount: backend, ip: 198.18.0.3, labels: {app: backend}}
//!   - {namespace: shop, serviceAccount: frontend, ip: 127.0.0.1, port: 18081, tunnel: "127.0.0.1:25008"}
//! policies:                       # AuthorizationPolicy objects, exactly as in a cluster
//!   - apiVersion: trellis.dev/v1alpha1
//!     kind: AuthorizationPolicy
//!     metadata: {name: allow-frontend, namespace: shop}
//!     spec: {selector: {matchLabels: {app: backend}}, ports: [8080], allow: [ns/shop/sa/frontend]}
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use trellis_ca::TrustDomain;

use super::crd::{AuthorizationPolicy, Policy};
use super::model::{MeshModel, MtlsMode, Workload};

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
}

/// Parses a mesh file's text into a model (version 0; the watcher numbers versions).
pub fn parse(text: &str, path: &Path, td: &TrustDomain) -> Result<MeshModel, MeshFileError> {
    let doc: FileDoc = serde_saphyr::from_str(text).map_err(|e| MeshFileError::Parse {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let invalid = |reason: String| MeshFileError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let mut workloads = Vec::with_capacity(doc.workloads.len());
    for (i, w) in doc.workloads.into_iter().enumerate() {
        let candidate = Workload {
            tunnel: w.tunnel.unwrap_or(SocketAddr::new(w.ip, 15008)),
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
        workloads.push(candidate);
    }
    let policies = doc
        .policies
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Policy::from_resource(p, td).map_err(|e| invalid(format!("policies[{i}]: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(MeshModel {
        version: 0,
        trust_domain: td.clone(),
        workloads,
        policies,
        default_mtls: doc.mtls,
        namespace_mtls: doc
            .namespaces
            .into_iter()
            .map(|(k, v)| (k, v.mtls))
            .collect(),
    })
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

/// Publishes the file's model on `tx` whenever its contents change, until `shutdown`.
pub async fn watch_file(
    path: PathBuf,
    td: TrustDomain,
    tx: watch::Sender<Arc<MeshModel>>,
    shutdown: CancellationToken,
) {
    let mut last_text: Option<String> = None;
    loop {
        match std::fs::read_to_string(&path) {
            Ok(text) if last_text.as_deref() != Some(text.as_str()) => {
                match parse(&text, &path, &td) {
                    Ok(mut model) => {
                        model.version = tx.borrow().version + 1;
                        info!(
                            path = %path.display(),
                            version = model.version,
                            workloads = model.workloads.len(),
                            policies = model.policies.len(),
                            "mesh file loaded"
                        );
                        tx.send_replace(Arc::new(model));
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
mod tests {
    use super::*;

    const GOOD: &str = r#"
mtls: STRICT
namespaces:
  lab: {mtls: PERMISSIVE}
workloads:
  - {namespace: shop, serviceAccount: backend, ip: 198.18.0.3, labels: {app: backend}}
  - {namespace: shop, serviceAccount: frontend, ip: 127.0.0.1, port: 18081, tunnel: "127.0.0.1:25008"}
policies:
  - apiVersion: trellis.dev/v1alpha1
    kind: AuthorizationPolicy
    metadata: {name: allow-frontend, namespace: shop}
    spec: {selector: {matchLabels: {app: backend}}, ports: [8080], allow: [ns/shop/sa/frontend], mode: audit}
"#;

    fn td() -> TrustDomain {
        TrustDomain::default()
    }

    #[test]
    fn a_mesh_file_becomes_a_model() {
        let m = parse(GOOD, Path::new("mesh.yaml"), &td()).unwrap();
        assert_eq!(m.workloads.len(), 2);
        assert_eq!(m.workloads[0].tunnel, "198.18.0.3:15008".parse().unwrap());
        assert_eq!(m.workloads[1].port, 18081);
        assert_eq!(m.policies[0].mode, super::super::crd::PolicyMode::Audit);
        assert_eq!(m.namespace_mtls["lab"], MtlsMode::Permissive);
    }

    #[test]
    fn bad_files_say_what_and_where() {
        let cases = [
            ("workloads: [{namespace: shop}]", "serviceAccount"),
            (
                "workloads: [{namespace: shop, serviceAccount: b, ip: not-an-ip}]",
                "ip",
            ),
            (
                "workloads: [{namespace: 'a/b', serviceAccount: b, ip: 198.18.0.1}]",
                "workloads[0]",
            ),
            ("mtls: SOMETIMES", "SOMETIMES"),
            ("surprise: 1", "surprise"),
            (
                "policies: [{apiVersion: trellis.dev/v1alpha1, kind: AuthorizationPolicy, metadata: {name: p, namespace: shop}, spec: {allow: ['ns/*/sa/x']}}]",
                "policies[0]",
            ),
            ("workloads: [", "mesh.yaml"),
        ];
        for (text, want) in cases {
            let err = parse(text, Path::new("mesh.yaml"), &td())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[tokio::test]
    async fn a_changed_file_is_republished_and_a_broken_one_keeps_the_last_good_model() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.yaml");
        std::fs::write(&path, GOOD).unwrap();
        let (tx, mut rx) = watch::channel(Arc::new(MeshModel::default()));
        let stop = CancellationToken::new();
        tokio::spawn(watch_file(path.clone(), td(), tx, stop.clone()));
        let wait = |rx: &mut watch::Receiver<Arc<MeshModel>>, v: u64| {
            let mut rx = rx.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|m| m.version >= v))
                    .await
                    .is_ok()
            }
        };
        assert!(wait(&mut rx, 1).await);
        assert_eq!(rx.borrow().policies.len(), 1);
        std::fs::write(&path, GOOD.replace("mode: audit", "mode: enforce")).unwrap();
        assert!(wait(&mut rx, 2).await);
        std::fs::write(&path, "workloads: [").unwrap();
        tokio::time::sleep(POLL * 4).await; // give the watcher several polls to (not) publish
        assert_eq!(rx.borrow().version, 2, "a broken file publishes nothing");
        assert_eq!(rx.borrow().policies.len(), 1);
        stop.cancel();
    }
}
