//! The I/O of `trellis-proxy init`: runs `iptables-save` to learn what is installed and feeds
//! the transactions of [`super::plan`] to `iptables-restore --noflush`, once per family; or,
//! with `--dry-run`, prints them. Which rules, and which transaction, is decided elsewhere.
//!
//! Commands run through `std::process::Command`, optionally behind a prefix (`ip netns exec
//! NAME`, for tests). Whatever backend the `iptables` given is (Debian's is `nf_tables`, a
//! `iptables-legacy` can be named with `--iptables`), the same text works; the backend is
//! logged from `iptables-save`'s header.

use std::{
    ffi::OsString,
    io::Write,
    path::Path,
    process::{Command, Output, Stdio},
};

use super::{
    config::{InitArgs, Ipv6Mode},
    error::RedirectError,
    plan,
    rules::{self, Family},
    saved::SavedNat,
};

/// How long `iptables-restore` waits for the xtables lock (legacy backend) before failing.
const LOCK_WAIT_SECONDS: &str = "10";

/// Installs (or with `--cleanup` removes) the rules of every family `args` asks for; with
/// `--dry-run`, writes the transactions to `out` instead.
pub(crate) fn run(args: &InitArgs, out: &mut dyn Write) -> Result<(), RedirectError> {
    if args.ipv6 == Ipv6Mode::Off && args.exclude_outbound_cidrs.0.iter().any(|c| c.is_ipv6()) {
        tracing::warn!(
            cidrs = %args.exclude_outbound_cidrs,
            "IPv6 CIDRs excluded but --ipv6 is off: they have no effect"
        );
    }
    let families: &[Family] = match args.ipv6 {
        Ipv6Mode::Off => &[Family::V4],
        Ipv6Mode::On | Ipv6Mode::Auto => &[Family::V4, Family::V6],
    };
    if args.dry_run && !args.cleanup {
        // No command at all: the rule set as a fresh install would apply it.
        for &family in families {
            let text = plan::install(&SavedNat::default(), &rules::build(args, family));
            print_transaction(out, family, args, &text)?;
        }
        return Ok(());
    }
    for &family in families {
        match apply_family(args, family, out) {
            Err(error) if family == Family::V6 && args.ipv6 == Ipv6Mode::Auto => {
                tracing::warn!(%error, "IPv6 nat table unusable; IPv6 traffic is not intercepted");
            }
            result => result?,
        }
    }
    Ok(())
}

/// Installs or removes (or, with `--dry-run --cleanup`, prints the removal of) one family's
/// rules, after reading what is installed.
fn apply_family(args: &InitArgs, family: Family, out: &mut dyn Write) -> Result<(), RedirectError> {
    let tables = Iptables::new(args, family);
    let saved = tables.save()?;
    let backend = saved.backend.as_deref().unwrap_or("unknown");
    let family_name = family.name();
    if !args.cleanup {
        let replacing = saved.has_ours();
        tables.restore(&plan::install(&saved, &rules::build(args, family)))?;
        tracing::info!(
            family = family_name,
            backend,
            replacing,
            "installed Trellis rules"
        );
        return Ok(());
    }
    match (plan::cleanup(&saved), args.dry_run) {
        (None, dry_run) => {
            tracing::info!(family = family_name, backend, "no Trellis rules to remove");
            if dry_run {
                print_transaction(out, family, args, "# nothing to remove\n")?;
            }
        }
        (Some(text), true) => print_transaction(out, family, args, &text)?,
        (Some(text), false) => {
            tables.restore(&text)?;
            tracing::info!(family = family_name, backend, "removed Trellis rules");
        }
    }
    Ok(())
}

/// Writes one family's transaction under a heading that says how to apply it.
fn print_transaction(
    out: &mut dyn Write,
    family: Family,
    args: &InitArgs,
    text: &str,
) -> Result<(), RedirectError> {
    let restore = Iptables::new(args, family).companion("-restore");
    writeln!(
        out,
        "# {}: {} --noflush",
        family.name(),
        restore.to_string_lossy()
    )
    .and_then(|()| out.write_all(text.as_bytes()))
    .map_err(RedirectError::Output)
}

/// One family's `iptables`, behind the command prefix.
struct Iptables<'a> {
    prefix: &'a [String],
    binary: &'a Path,
}

impl<'a> Iptables<'a> {
    fn new(args: &'a InitArgs, family: Family) -> Self {
        let binary = match family {
            Family::V4 => &args.iptables,
            Family::V6 => &args.ip6tables,
        };
        Iptables {
            prefix: &args.command_prefix,
            binary,
        }
    }

    /// `iptables` + `suffix`: `/usr/sbin/iptables-legacy` → `/usr/sbin/iptables-legacy-save`.
    fn companion(&self, suffix: &str) -> OsString {
        let mut name = self.binary.as_os_str().to_owned();
        name.push(suffix);
        name
    }

    /// `iptables-save -t nat`, parsed.
    fn save(&self) -> Result<SavedNat, RedirectError> {
        let output = self.run(&self.companion("-save"), &["-t", "nat"], None)?;
        Ok(SavedNat::parse(&String::from_utf8_lossy(&output.stdout)))
    }

    /// `iptables-restore --noflush` with `text` on standard input: all of it, or none.
    fn restore(&self, text: &str) -> Result<(), RedirectError> {
        tracing::debug!(input = text, "iptables-restore");
        self.run(
            &self.companion("-restore"),
            &["--noflush", "-w", LOCK_WAIT_SECONDS],
            Some(text),
        )
        .map_err(|error| match error {
            RedirectError::Failed {
                command,
                status,
                stderr,
            } => RedirectError::Failed {
                stderr: name_failed_line(&stderr, text),
                command,
                status,
            },
            other => other,
        })
        .map(drop)
    }

    /// Runs `program args` behind the prefix, with `stdin` fed to it; a non-zero exit is an
    /// error carrying the command line and its standard error.
    fn run(
        &self,
        program: &OsString,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<Output, RedirectError> {
        let mut words: Vec<OsString> = self.prefix.iter().map(OsString::from).collect();
        words.push(program.clone());
        words.extend(args.iter().map(OsString::from));
        let command_line = words
            .iter()
            .map(|w| w.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        let (first, rest) = words.split_first().ok_or_else(|| RedirectError::Spawn {
            command: command_line.clone(),
            source: std::io::Error::other("empty command"),
        })?;
        let spawn_error = |source| RedirectError::Spawn {
            command: command_line.clone(),
            source,
        };
        let mut child = Command::new(first)
            .args(rest)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_error)?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A write error (the command exited early) shows up in its status and stderr.
            let _ = pipe.write_all(text.as_bytes());
        }
        let output = child.wait_with_output().map_err(spawn_error)?;
        if output.status.success() {
            Ok(output)
        } else {
            Err(RedirectError::Failed {
                command: command_line,
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            })
        }
    }
}

/// `iptables-restore: line 7 failed` names a line of its input; append that line, which is
/// what the reader of the error needs.
fn name_failed_line(stderr: &str, input: &str) -> String {
    let line = stderr
        .split("line ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<usize>().ok())
        .and_then(|n| input.lines().nth(n.checked_sub(1)?));
    match line {
        Some(line) => format!("{stderr} (input line: `{line}`)"),
        None => stderr.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: InitArgs,
    }

    fn dry_run(flags: &[&str]) -> Result<String, RedirectError> {
        // Commands that cannot exist: a dry run that tried to run one would fail.
        let fixed = [
            "init",
            "--dry-run",
            "--iptables",
            "/nonexistent/iptables",
            "--ip6tables",
            "/nonexistent/ip6tables",
        ];
        let args = Cli::parse_from(fixed.iter().chain(flags)).args;
        let mut out = Vec::new();
        run(&args, &mut out)?;
        Ok(String::from_utf8(out).expect("rules are text"))
    }

    #[test]
    fn a_dry_run_prints_both_families_and_runs_nothing() {
        let text = dry_run(&[]).unwrap();
        assert!(
            text.starts_with("# IPv4: /nonexistent/iptables-restore --noflush\n*nat\n"),
            "{text}"
        );
        assert!(
            text.contains("# IPv6: /nonexistent/ip6tables-restore --noflush\n*nat\n"),
            "{text}"
        );
        assert_eq!(text.matches("COMMIT\n").count(), 2, "{text}");
        assert!(
            text.contains("-A TRELLIS_OUTPUT -d ::1/128 -o lo -j RETURN"),
            "{text}"
        );
    }

    #[test]
    fn a_dry_run_with_ipv6_off_prints_ipv4_only() {
        let text = dry_run(&["--ipv6", "off"]).unwrap();
        assert!(!text.contains("IPv6"), "{text}");
        assert_eq!(text.matches("COMMIT\n").count(), 1, "{text}");
    }

    #[test]
    fn a_dry_run_cleanup_must_read_the_rules_and_says_which_command_failed() {
        let error = dry_run(&["--cleanup"]).unwrap_err().to_string();
        assert!(
            error.contains("/nonexistent/iptables-save -t nat"),
            "{error}"
        );
    }

    #[test]
    fn a_restore_error_names_the_input_line() {
        let input = "*nat\n-A NOPE -j RETURN\nCOMMIT\n";
        assert_eq!(
            name_failed_line(
                "iptables-restore: line 2 failed: No chain/target/match by that name.",
                input
            ),
            "iptables-restore: line 2 failed: No chain/target/match by that name. (input line: `-A NOPE -j RETURN`)"
        );
        assert_eq!(name_failed_line("something else", input), "something else");
    }
}
