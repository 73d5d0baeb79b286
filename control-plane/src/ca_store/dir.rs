//! CA state in a directory: the four `cacerts` files, the key with mode 0600, written
//! atomically (temporary file, fsync, rename).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use trellis_ca::CaMaterial;

use super::{CA_CERT, CA_KEY, CERT_CHAIN, Created, ROOT_CERT, StoreError};

/// A directory holding CA material.
#[derive(Debug, Clone)]
pub struct DirStore {
    /// The directory.
    path: PathBuf,
    /// Whether `cert-chain.pem` may be absent (plug-in CAs signed directly by the root).
    chain_optional: bool,
}

impl DirStore {
    /// A store in `path` (created on first write with mode 0700).
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            chain_optional: false,
        }
    }

    /// A plug-in `cacerts` directory, only ever read.
    pub fn read_only(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            chain_optional: true,
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the material; `Ok(None)` when none of the files exist.
    pub fn load(&self) -> Result<Option<CaMaterial>, StoreError> {
        self.check_dir_mode()?;
        let names = [CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT];
        let present: Vec<bool> = names.iter().map(|n| self.path.join(n).exists()).collect();
        if present.iter().all(|p| !p) {
            return Ok(None);
        }
        for (name, here) in names.iter().zip(&present) {
            let optional = self.chain_optional && *name == CERT_CHAIN;
            if !here && !optional {
                return Err(StoreError::Incomplete {
                    location: self.path.display().to_string(),
                    missing: name,
                });
            }
        }
        self.check_key_mode()?;
        Ok(Some(CaMaterial {
            ca_cert_pem: self.read(CA_CERT)?,
            ca_key_pem: self.read(CA_KEY)?,
            cert_chain_pem: if self.path.join(CERT_CHAIN).exists() {
                self.read(CERT_CHAIN)?
            } else {
                String::new()
            },
            root_cert_pem: self.read(ROOT_CERT)?,
        }))
    }

    /// Writes new material; refuses to overwrite existing files.
    pub fn create(&self, material: &CaMaterial) -> Result<Created, StoreError> {
        if self.load()?.is_some() {
            return Ok(Created::AlreadyExists);
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.path)
            .map_err(|e| self.io(&self.path, e))?;
        self.check_dir_mode()?;
        // The key goes last: a crash before it leaves an incomplete state, which stops the
        // next start with a clear error instead of silently making another root.
        self.write_atomic(CA_CERT, &material.ca_cert_pem, 0o644)?;
        self.write_atomic(CERT_CHAIN, &material.cert_chain_pem, 0o644)?;
        self.write_atomic(ROOT_CERT, &material.root_cert_pem, 0o644)?;
        self.write_atomic(CA_KEY, &material.ca_key_pem, 0o600)?;
        Ok(Created::Stored)
    }

    /// Refuses a directory other users may write to (even with the sticky bit, they could
    /// plant files before ours are written). A missing directory is fine: it is made 0700.
    fn check_dir_mode(&self) -> Result<(), StoreError> {
        let mode = match fs::metadata(&self.path) {
            Ok(meta) => meta.permissions().mode() & 0o7777,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.io(&self.path, e)),
        };
        if mode & 0o002 != 0 {
            return Err(StoreError::DirPermissions {
                path: self.path.clone(),
                mode,
                // A plug-in `cacerts` directory is the operator's; our own state is private.
                fix: if self.chain_optional { "o-w" } else { "700" },
            });
        }
        Ok(())
    }

    fn check_key_mode(&self) -> Result<(), StoreError> {
        let path = self.path.join(CA_KEY);
        let mode = fs::metadata(&path)
            .map_err(|e| self.io(&path, e))?
            .permissions()
            .mode()
            & 0o777;
        // Our own state must be 0600. A plug-in `cacerts` Secret mounted with an fsGroup is
        // group-readable by design (0440); it must still not be readable by others.
        let forbidden = if self.chain_optional { 0o007 } else { 0o077 };
        if mode & forbidden != 0 {
            return Err(StoreError::KeyPermissions { path, mode });
        }
        Ok(())
    }

    fn read(&self, name: &'static str) -> Result<String, StoreError> {
        let path = self.path.join(name);
        let bytes = fs::read(&path).map_err(|e| self.io(&path, e))?;
        String::from_utf8(bytes).map_err(|_| StoreError::NotText {
            location: self.path.display().to_string(),
            name,
        })
    }

    fn write_atomic(&self, name: &str, contents: &str, mode: u32) -> Result<(), StoreError> {
        let path = self.path.join(name);
        let tmp = self.path.join(format!(".{name}.tmp"));
        let _ = fs::remove_file(&tmp);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| self.io(&tmp, e))?;
        file.write_all(contents.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| self.io(&tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| self.io(&path, e))?;
        if let Ok(dir) = fs::File::open(&self.path) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    fn io(&self, path: &Path, err: std::io::Error) -> StoreError {
        StoreError::Io {
            path: path.to_owned(),
            reason: err.to_string(),
        }
    }
}
