//! The published trust bundle: the mesh's roots, kept apart from the CA store so that they
//! outlive it. A control plane that finds its CA store empty reads them before making a root:
//! if they name a root, the mesh already has one, and a new root would be trusted by no proxy.
//!
//! Owns: where the bundle is published and reading and writing one copy of it.
//! - Kubernetes mode: ConfigMap [`CONFIGMAP`] (key [`KEY`]) in the control plane's namespace
//!   and in every namespace labelled `trellis-injection=enabled` — like Istio's
//!   `istio-ca-root-cert`. They are not part of the Helm release (`helm upgrade --force`,
//!   `helm uninstall` leave them), and the copies in the meshed namespaces survive even the
//!   deletion of the control plane's namespace, which takes the CA Secret with it. Keeping
//!   every copy current is [`crate::ca_live::publish`]'s job.
//! - Local mode: [`FILE`] in the state directory, beside the CA files (removing the whole
//!   directory is how an operator starts a new trust domain on purpose).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use rustls_pki_types::CertificateDer;
use trellis_ca::{RootSummary, certs_from_pem};

use super::StoreError;

/// Name of the published ConfigMaps.
pub const CONFIGMAP: &str = "trellis-ca-root-cert";
/// Their key (as Istio's `istio-ca-root-cert`).
pub const KEY: &str = "root-cert.pem";
/// The published file in local mode, in the state directory.
pub const FILE: &str = "trust-bundle.pem";
/// Label on the published ConfigMaps.
pub const LABEL: (&str, &str) = ("trellis.dev/trust-bundle", "true");

/// Where the bundle is published.
#[derive(Clone)]
pub enum Published {
    /// Local mode: a file.
    File(PathBuf),
    /// Kubernetes mode: ConfigMaps.
    ConfigMaps(kube::Client),
    /// Nowhere (local mode with only a plug-in CA and no state directory).
    Nowhere,
}

impl std::fmt::Debug for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Published::File(p) => write!(f, "File({})", p.display()),
            Published::ConfigMaps(_) => write!(f, "ConfigMaps({CONFIGMAP})"),
            Published::Nowhere => f.write_str("Nowhere"),
        }
    }
}

/// What was found published.
#[derive(Debug, Default)]
pub struct Found {
    /// Every root named anywhere (no duplicates).
    pub roots: Vec<CertificateDer<'static>>,
    /// Where, for messages (`ConfigMap shop/trellis-ca-root-cert`, a path).
    pub places: Vec<String>,
}

impl Found {
    fn add(&mut self, place: String, pem: &str) {
        let Ok(certs) = certs_from_pem(pem.as_bytes()) else {
            return;
        };
        for c in certs {
            if !self.roots.iter().any(|r| r.as_ref() == c.as_ref()) {
                self.roots.push(c);
            }
        }
        self.places.push(place);
    }

    /// `subject (sha256 …)` of each root, joined.
    pub fn describe(&self) -> String {
        self.roots
            .iter()
            .filter_map(RootSummary::of)
            .map(|s| format!("{} (sha256 {})", s.subject, s.sha256))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Published {
    /// The published file of a local state directory.
    pub fn in_state_dir(dir: &Path) -> Self {
        Published::File(dir.join(FILE))
    }

    /// Every root published anywhere. Unparseable copies name no root.
    pub async fn read(&self) -> Result<Found, StoreError> {
        let mut found = Found::default();
        match self {
            Published::Nowhere => {}
            Published::File(path) => match std::fs::read_to_string(path) {
                Ok(pem) => found.add(path.display().to_string(), &pem),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(StoreError::Io {
                        path: path.clone(),
                        reason: e.to_string(),
                    });
                }
            },
            Published::ConfigMaps(client) => {
                // RBAC allows listing only by name: the field selector is required.
                let api: Api<ConfigMap> = Api::all(client.clone());
                let params = ListParams::default().fields(&format!("metadata.name={CONFIGMAP}"));
                let list = api
                    .list(&params)
                    .await
                    .map_err(|e| StoreError::Kubernetes {
                        namespace: "*".into(),
                        name: CONFIGMAP.into(),
                        reason: e.to_string(),
                    })?;
                for cm in list.items {
                    let ns = cm.metadata.namespace.clone().unwrap_or_default();
                    if let Some(pem) = cm.data.as_ref().and_then(|d| d.get(KEY)) {
                        found.add(format!("ConfigMap {ns}/{CONFIGMAP}"), pem);
                    }
                }
            }
        }
        Ok(found)
    }

    /// Local mode: writes the file (mode 0644: the roots are public). Kubernetes mode and
    /// nowhere: nothing (see [`write_configmap`]).
    pub fn write_file(&self, pem: &str) -> Result<(), StoreError> {
        let Published::File(path) = self else {
            return Ok(());
        };
        let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
        else {
            return Ok(());
        };
        super::DirStore::new(dir).write_file(name, pem, 0o644)
    }
}

/// What [`write_configmap`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// It held the bundle already.
    Current,
    /// It was missing and was created.
    Created,
    /// It held something else and was replaced.
    Replaced,
}

/// Makes ConfigMap [`CONFIGMAP`] in `namespace` hold `pem`.
pub async fn write_configmap(
    client: &kube::Client,
    namespace: &str,
    pem: &str,
) -> Result<Written, StoreError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let err = |e: kube::Error| StoreError::Kubernetes {
        namespace: namespace.to_owned(),
        name: CONFIGMAP.to_owned(),
        reason: e.to_string(),
    };
    let data = BTreeMap::from([(KEY.to_owned(), pem.to_owned())]);
    let labels = BTreeMap::from([(LABEL.0.to_owned(), LABEL.1.to_owned())]);
    match api.get_opt(CONFIGMAP).await.map_err(err)? {
        Some(cm)
            if cm
                .data
                .as_ref()
                .and_then(|d| d.get(KEY))
                .map(String::as_str)
                == Some(pem) =>
        {
            Ok(Written::Current)
        }
        Some(mut cm) => {
            cm.data = Some(data);
            cm.metadata
                .labels
                .get_or_insert_with(BTreeMap::new)
                .extend(labels);
            api.replace(CONFIGMAP, &PostParams::default(), &cm)
                .await
                .map_err(err)?;
            Ok(Written::Replaced)
        }
        None => {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(CONFIGMAP.to_owned()),
                    namespace: Some(namespace.to_owned()),
                    labels: Some(labels),
                    ..ObjectMeta::default()
                },
                data: Some(data),
                ..ConfigMap::default()
            };
            api.create(&PostParams::default(), &cm).await.map_err(err)?;
            Ok(Written::Created)
        }
    }
}
