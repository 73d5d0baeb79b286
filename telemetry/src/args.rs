//! The log flags every Trellis binary takes, with the same names, environment variables and
//! defaults:
//!
//! | flag | env | default |
//! |---|---|---|
//! | `--log <filter>` | `TRELLIS_LOG` (then `RUST_LOG`) | `info` |
//! | `--log-format text\|json` | `TRELLIS_LOG_FORMAT` | `text` |
//! | `--log-json` (hidden, old proxy flag) | `TRELLIS_LOG_JSON` | off; same as `--log-format json` |
//!
//! Owns: [`LogArgs`] (clap, flattened into each binary's flags) and the resolved
//! [`LogSettings`]. Checking the filter is [`crate::filter`]'s job.

use std::io::IsTerminal as _;

use clap::{Args, ValueEnum};

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (`kubectl logs` as people read it).
    #[default]
    Text,
    /// One JSON object per line, fields flat (for log pipelines); see [`crate::json`].
    Json,
}

/// The log flags; flatten into a binary's clap struct with `#[command(flatten)]`.
#[derive(Debug, Clone, Default, Args)]
pub struct LogArgs {
    /// Log filter: a level (error, warn, info, debug, trace) or directives such as
    /// `info,trellis_proxy=debug`. Default `info` (or `RUST_LOG` when set).
    #[arg(long = "log", env = "TRELLIS_LOG", value_name = "FILTER")]
    pub filter: Option<String>,
    /// Log output: text lines or one JSON object per line.
    #[arg(long = "log-format", env = "TRELLIS_LOG_FORMAT", value_enum)]
    pub format: Option<LogFormat>,
    /// Old name of `--log-format json`, kept so existing manifests keep working.
    #[arg(long = "log-json", env = "TRELLIS_LOG_JSON", hide = true)]
    pub json: bool,
}

/// Resolved log settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// The filter text (checked when the subscriber is built).
    pub filter: String,
    /// Text or JSON.
    pub format: LogFormat,
    /// Colour escapes in text lines (only on a terminal).
    pub ansi: bool,
}

impl LogArgs {
    /// The settings these flags ask for: `--log`/`TRELLIS_LOG`, else `RUST_LOG`, else `info`;
    /// `--log-format`, else `json` when the old `--log-json` is set, else `text`; colour when
    /// standard error is a terminal.
    pub fn settings(&self) -> LogSettings {
        self.resolve(
            std::env::var("RUST_LOG").ok(),
            std::io::stderr().is_terminal(),
        )
    }

    /// [`LogArgs::settings`] with the environment given (pure, for tests).
    pub fn resolve(&self, rust_log: Option<String>, terminal: bool) -> LogSettings {
        let format = match (self.format, self.json) {
            (Some(format), _) => format,
            (None, true) => LogFormat::Json,
            (None, false) => LogFormat::Text,
        };
        LogSettings {
            filter: self
                .filter
                .clone()
                .or(rust_log.filter(|f| !f.trim().is_empty()))
                .unwrap_or_else(|| "info".to_owned()),
            format,
            ansi: terminal && format == LogFormat::Text,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        log: LogArgs,
    }

    fn resolve(argv: &[&str], rust_log: Option<&str>) -> LogSettings {
        let mut all = vec!["bin"];
        all.extend_from_slice(argv);
        Cli::try_parse_from(all)
            .unwrap()
            .log
            .resolve(rust_log.map(str::to_owned), false)
    }

    #[test]
    fn flags_win_over_rust_log_which_wins_over_the_default() {
        assert_eq!(resolve(&[], None).filter, "info");
        assert_eq!(resolve(&[], Some("debug")).filter, "debug");
        assert_eq!(resolve(&[], Some(" ")).filter, "info");
        assert_eq!(resolve(&["--log", "warn"], Some("debug")).filter, "warn");
    }

    #[test]
    fn the_old_log_json_flag_still_means_json() {
        assert_eq!(resolve(&[], None).format, LogFormat::Text);
        assert_eq!(resolve(&["--log-json"], None).format, LogFormat::Json);
        assert_eq!(
            resolve(&["--log-format", "json"], None).format,
            LogFormat::Json
        );
        assert_eq!(
            resolve(&["--log-json", "--log-format", "text"], None).format,
            LogFormat::Text
        );
        assert!(Cli::try_parse_from(["bin", "--log-format", "yaml"]).is_err());
    }

    #[test]
    fn json_lines_never_carry_colour() {
        let json = LogArgs {
            format: Some(LogFormat::Json),
            ..LogArgs::default()
        };
        assert!(!json.resolve(None, true).ansi);
        assert!(LogArgs::default().resolve(None, true).ansi);
    }
}
