//! `trellis completions SHELL`: the shell completion script for this command line, generated
//! by clap_complete from the same definition that parses it (so it never goes stale).

use std::io::Write;

use clap_complete::Shell;

/// Writes the completion script for `shell` to stdout.
pub fn run(shell: Shell, command: &mut clap::Command) -> std::io::Result<()> {
    let mut out = Vec::new();
    clap_complete::generate(shell, command, "trellis", &mut out);
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&out)?;
    stdout.flush()
}
