//! [`RedirectError`]: why `trellis-proxy init` could not install or remove the rules. Bad flag
//! values never get this far: clap refuses them with [`super::config::ValueError`].

use std::io;

/// Why installing, removing or printing the interception rules failed. Each variant names
/// the command that failed, as it was run (prefix included), so the log says what to retry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedirectError {
    /// A command could not be started: not installed, not on `PATH`, not executable.
    #[error(
        "could not run `{command}`: {source} (are iptables and its -save/-restore companions installed?)"
    )]
    Spawn {
        /// The command line.
        command: String,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// A command ran and failed; for `iptables-restore`, the transaction was not applied, so
    /// the rules are as they were.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status (`exit status: 1`, `signal: 9 (SIGKILL)`).
        status: String,
        /// Its standard error, trimmed; for `iptables-restore`, followed by the input line
        /// it names.
        stderr: String,
    },
    /// Writing the `--dry-run` text to standard output failed.
    #[error("could not write the dry-run rules to standard output: {0}")]
    Output(#[source] io::Error),
}
