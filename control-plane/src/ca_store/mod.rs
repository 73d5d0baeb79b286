//! Durable CA state: where the root (or the plug-in intermediate) lives between restarts.
//!
//! Owns: [`CaStore`] (a directory with 0600 key files in local mode, a Secret in Kubernetes
//! mode), reading a plug-in CA in Istio's `cacerts` layout, and [`load_or_init`], the start-up
//! rule: use what is stored; make a new root only when nothing at all is stored; stop with a
//! clear error on anything partial, corrupt or unreadable — never silently replace a root.

mod dir;
mod secret;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub use dir::DirStore;
pub use secret::SecretStore;
use trellis_ca::{CaMaterial, TrustDomain};

/// File (and Secret key) names, as in Istio's `cacerts`.
pub const CA_CERT: &str = "ca-cert.pem";
/// The CA private key.
pub const CA_KEY: &str = "ca-key.pem";
/// The chain from the CA certificate up to the root.
pub const CERT_CHAIN: &str = "cert-chain.pem";
/// The root(s).
pub const ROOT_CERT: &str = "root-cert.pem";

/// Why CA state could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Reading or writing a file failed.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// Some CA files (or Secret keys) exist and others do not.
    #[error(
        "CA state in {location} is incomplete: {missing} is missing; refusing to start rather than make a new root (restore it or remove the whole state to start a new trust domain)"
    )]
    Incomplete {
        /// Directory or Secret.
        location: String,
        /// The missing file or key.
        missing: &'static str,
    },
    /// The key file can be read by others.
    #[error(
        "{path} has mode {mode:o}; a CA key must not be readable by group or others (chmod 600)"
    )]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Other users may create, rename or delete files in the directory.
    #[error(
        "{path} has mode {mode:04o}: every user of this machine can replace or remove the CA's files in it; make it private with `chmod {fix} {path}`",
        path = path.display()
    )]
    DirPermissions {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// The `chmod` argument that fixes it.
        fix: &'static str,
    },
    /// A file is not UTF-8 PEM.
    #[error("{location}: {name} is not PEM text")]
    NotText {
        /// Directory or Secret.
        location: String,
        /// The file or key.
        name: &'static str,
    },
    /// The Kubernetes API refused or failed.
    #[error("Secret {namespace}/{name}: {reason}")]
    Kubernetes {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// What happened.
        reason: String,
    },
    /// Making a new root failed.
    #[error("could not create a root: {0}")]
    Generate(#[from] trellis_ca::CaLoadError),
}

/// Whether `create` stored the material or found someone else's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// Our material was stored.
    Stored,
    /// Another replica stored material first; load it instead.
    AlreadyExists,
}

/// A place to keep the CA.
#[derive(Debug)]
pub enum CaStore {
    /// A directory (local mode).
    Dir(DirStore),
    /// A Kubernetes Secret (Kubernetes mode).
    Secret(Box<SecretStore>),
}

impl CaStore {
    /// Loads stored material; `Ok(None)` only when nothing at all is stored.
    pub async fn load(&self) -> Result<Option<CaMaterial>, StoreError> {
        match self {
            CaStore::Dir(d) => d.load(),
            CaStore::Secret(s) => s.load().await,
        }
    }

    /// Stores new material unless some already exists.
    pub async fn create(&self, material: &CaMaterial) -> Result<Created, StoreError> {
        match self {
            CaStore::Dir(d) => d.create(material),
            CaStore::Secret(s) => s.create(material).await,
        }
    }

    /// Where the state lives, for logs.
    pub fn location(&self) -> String {
        match self {
            CaStore::Dir(d) => d.path().display().to_string(),
            CaStore::Secret(s) => s.location(),
        }
    }
}

/// How the CA material was obtained, for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A plug-in CA from a `cacerts` directory.
    PlugIn,
    /// A root stored by an earlier start.
    Loaded,
    /// A root made now, on first start.
    Generated,
}

/// The start-up rule: plug-in CA if given; else the stored root; else a new root, stored.
pub async fn load_or_init(
    store: &CaStore,
    cacerts_dir: Option<&Path>,
    trust_domain: &TrustDomain,
    now: SystemTime,
) -> Result<(CaMaterial, Origin), StoreError> {
    if let Some(dir) = cacerts_dir {
        let material = DirStore::read_only(dir)
            .load()?
            .ok_or(StoreError::Incomplete {
                location: dir.display().to_string(),
                missing: CA_CERT,
            })?;
        return Ok((material, Origin::PlugIn));
    }
    if let Some(material) = store.load().await? {
        return Ok((material, Origin::Loaded));
    }
    let material = CaMaterial::generate_root(trust_domain, now)?;
    match store.create(&material).await? {
        Created::Stored => Ok((material, Origin::Generated)),
        Created::AlreadyExists => {
            let material = store.load().await?.ok_or(StoreError::Incomplete {
                location: store.location(),
                missing: CA_KEY,
            })?;
            Ok((material, Origin::Loaded))
        }
    }
}
