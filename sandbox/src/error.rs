//! What can go wrong in a sandbox, with the command, path or address concerned, so that a
//! failing test or demo says what it was doing.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Why a sandbox operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// Network namespaces need root (CAP_SYS_ADMIN and CAP_NET_ADMIN).
    #[error("the sandbox needs root (network namespaces, iptables); this process is not root")]
    NotRoot,
    /// A pod address outside 198.18.0.1–198.18.0.253, or otherwise unusable.
    #[error("pod address {ip}: {reason}")]
    Address {
        /// The address given.
        ip: std::net::Ipv4Addr,
        /// What is expected.
        reason: &'static str,
    },
    /// A pod name that cannot be used (empty, too long, or taken).
    #[error("pod name {name:?}: {reason}")]
    PodName {
        /// The name given.
        name: String,
        /// What is expected.
        reason: &'static str,
    },
    /// An interface name that cannot be used (empty, too long, odd characters).
    #[error("interface name {name:?}: {reason}")]
    Interface {
        /// The name given.
        name: String,
        /// What is expected.
        reason: &'static str,
    },
    /// A Service that cannot be installed on the node as given.
    #[error("service {service:?}: {reason}")]
    Service {
        /// The Service's name.
        service: String,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// A host name that cannot go into a pod's `/etc/hosts`.
    #[error("host name {name:?}: {reason}")]
    HostName {
        /// The name given.
        name: String,
        /// What is expected.
        reason: &'static str,
    },
    /// A command could not be started at all (not found, not executable).
    #[error("cannot start {command}: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A command ran and exited unsuccessfully.
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// How it exited.
        status: ExitStatus,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// A command did not finish in time and was killed.
    #[error("{command} did not finish within {after:?}; killed")]
    Timeout {
        /// The command line.
        command: String,
        /// How long it was given.
        after: Duration,
    },
    /// Something awaited did not happen before its deadline.
    #[error("{what}: not within {after:?} (last: {last})")]
    Deadline {
        /// What was awaited.
        what: String,
        /// How long it was given.
        after: Duration,
        /// The last observation, to say why.
        last: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A Trellis binary is not where it is looked for.
    #[error(
        "{name} not found in {dir} (build it with `cargo build --workspace --bins`, or set TRELLIS_BIN_DIR)"
    )]
    Binary {
        /// The binary's name.
        name: &'static str,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// An operation that does not fit the current state (starting what runs already).
    #[error("{what}: {reason}")]
    State {
        /// What was asked.
        what: String,
        /// Why it cannot be done now.
        reason: &'static str,
    },
    /// An answer could not be understood (JSON, metrics text).
    #[error("{what}: {reason}")]
    Parse {
        /// What was being read.
        what: String,
        /// Why it could not be read.
        reason: String,
    },
}

/// Results of sandbox operations.
pub type Result<T, E = SandboxError> = std::result::Result<T, E>;

/// `SandboxError::Io` for `path`.
pub(crate) fn io_error(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let path = path.into();
    move |source| SandboxError::Io { path, source }
}
