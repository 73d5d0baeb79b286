//! Where the Trellis binaries are: [`bin_dir`] and [`binary`].
//!
//! Tests run from `target/<profile>/deps/`, the `trellis` binary from `target/<profile>/`; the
//! binaries built by `cargo build --workspace --bins` sit in `target/<profile>/`. The
//! environment variable `TRELLIS_BIN_DIR` overrides the guess (installed binaries, another
//! target directory).

use std::path::PathBuf;

use crate::error::{Result, SandboxError};

/// The environment variable that names the directory holding the binaries.
pub const BIN_DIR_ENV: &str = "TRELLIS_BIN_DIR";

/// The sidecar binary.
pub const PROXY: &str = "trellis-proxy";
/// The control plane binary.
pub const CONTROL_PLANE: &str = "trellis-control-plane";

/// The directory holding the Trellis binaries: `$TRELLIS_BIN_DIR`, or the directory of the
/// running executable (its parent when that is cargo's `deps/`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().map(PathBuf::from).unwrap_or(dir)
    } else {
        dir
    }
}

/// The path of binary `name` in [`bin_dir`], if it is there.
pub fn binary(name: &'static str) -> Result<PathBuf> {
    let dir = bin_dir();
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(SandboxError::Binary { name, dir })
    }
}
