//! Checking a log filter before it is used. `tracing`'s env-filter reads any bare word as a
//! target enabled at `trace` (`debgu` would silently mean "everything from a module named
//! debgu"), so every directive here must name its level: `info`, `debug`,
//! `trellis_proxy=debug`, `trellis_proxy::tunnel[inbound]=trace`.
//!
//! Owns: [`check_filter`] (pure) and [`FilterError`]. Installing the filter is
//! [`crate::install`]'s job.

use tracing_subscriber::EnvFilter;

/// The longest filter text accepted (the admin endpoint and pod annotations carry it).
pub const MAX_FILTER_LEN: usize = 1024;

/// The level names a directive may end with (case-insensitive), as env-filter reads them.
const LEVELS: &[&str] = &[
    "off", "error", "warn", "info", "debug", "trace", "0", "1", "2", "3", "4", "5",
];

/// Why a filter text is refused; each message says what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    /// Nothing but commas and spaces.
    #[error(
        "log filter is empty; expected a level (off, error, warn, info, debug, trace) or directives like info,trellis_proxy=debug"
    )]
    Empty,
    /// Longer than [`MAX_FILTER_LEN`].
    #[error("log filter is {0} bytes long; at most {MAX_FILTER_LEN} are accepted")]
    TooLong(usize),
    /// A directive does not end with a level.
    #[error(
        "log filter directive {directive:?} names no level; expected a level (off, error, warn, info, debug, trace) or target=level, e.g. trellis_proxy=debug"
    )]
    NoLevel {
        /// The directive.
        directive: String,
    },
    /// env-filter refused the text.
    #[error("log filter {text:?}: {reason}")]
    Syntax {
        /// The whole filter.
        text: String,
        /// What env-filter said.
        reason: String,
    },
}

/// Checks `text` and returns the filter it stands for, trimmed of spaces around directives.
pub fn check_filter(text: &str) -> Result<EnvFilter, FilterError> {
    if text.len() > MAX_FILTER_LEN {
        return Err(FilterError::TooLong(text.len()));
    }
    let directives: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    if directives.is_empty() {
        return Err(FilterError::Empty);
    }
    let mut normalised = Vec::with_capacity(directives.len());
    for directive in directives {
        let (level, shown) = match directive.rsplit_once('=') {
            Some((target, level)) => (level.trim(), format!("{}={}", target.trim(), level.trim())),
            None => (directive, directive.to_owned()),
        };
        if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level)) {
            return Err(FilterError::NoLevel {
                directive: directive.to_owned(),
            });
        }
        normalised.push(shown);
    }
    let normalised = normalised.join(",");
    EnvFilter::builder()
        .parse(&normalised)
        .map_err(|e| FilterError::Syntax {
            text: normalised.clone(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_must_name_a_level_in_every_directive() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("info", Ok("info")),
            ("DEBUG", Ok("debug")),
            (" warn ", Ok("warn")),
            ("info,trellis_proxy=debug", Ok("trellis_proxy=debug,info")),
            ("info, trellis_proxy = debug", Ok("")),
            ("trellis_proxy::tunnel[inbound]=trace", Ok("")),
            ("info,", Ok("info")),
            ("off", Ok("off")),
            ("", Err("empty")),
            (" , ", Err("empty")),
            ("debgu", Err("names no level")),
            ("trellis_proxy", Err("names no level")),
            ("info,trellis_proxy=loud", Err("names no level")),
            ("[span{a=b}]", Err("names no level")),
            ("x[y{=info", Err("log filter \"x[y{=info\"")),
        ];
        for (text, expected) in cases {
            let got = check_filter(text);
            match (expected, got) {
                (Ok(shown), Ok(filter)) => {
                    if !shown.is_empty() {
                        assert_eq!(filter.to_string(), *shown, "{text:?}");
                    }
                }
                (Err(part), Err(e)) => assert!(e.to_string().contains(part), "{text:?}: {e}"),
                (want, got) => panic!("{text:?}: expected {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn overlong_filters_are_refused_before_parsing() {
        let long = "info,".repeat(MAX_FILTER_LEN / 4);
        assert_eq!(
            check_filter(&long).unwrap_err(),
            FilterError::TooLong(long.len())
        );
    }
}
