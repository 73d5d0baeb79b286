//! Colour on the terminal: whether to use it, and the few styles the commands paint with.
//!
//! Owns: the decision (`--color`, whether stdout is a terminal, `NO_COLOR`), the ANSI codes,
//! and writing to stdout. Layout (tables, check lines) is left to [`crate::table`] and the
//! commands.

use std::ffi::OsStr;
use std::io::{IsTerminal, Write};

/// The `--color` flag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// Colour when stdout is a terminal and `NO_COLOR` is unset or empty.
    #[default]
    Auto,
    /// Always colour (an explicit request wins over `NO_COLOR`, as no-color.org allows).
    Always,
    /// Never colour.
    Never,
}

/// Whether to colour: `Auto` colours only a terminal, and never when `NO_COLOR` holds a
/// non-empty value (<https://no-color.org>).
pub fn use_color(choice: ColorChoice, is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => is_terminal && no_color.is_none_or(OsStr::is_empty),
    }
}

/// What a piece of text means, which decides its colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Success: green.
    Good,
    /// Failure: red.
    Bad,
    /// Warning: yellow.
    Warn,
    /// Headings: bold.
    Strong,
    /// Secondary text (hints): dim.
    Faint,
}

impl Style {
    fn code(self) -> &'static str {
        match self {
            Style::Good => "32",
            Style::Bad => "31",
            Style::Warn => "33",
            Style::Strong => "1",
            Style::Faint => "2",
        }
    }
}

/// Paints text, or leaves it alone when colour is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Palette {
    /// Whether to emit ANSI escape codes at all.
    enabled: bool,
}

impl Palette {
    /// A palette that paints only if `enabled`.
    pub fn new(enabled: bool) -> Self {
        Self { enabled }
    }

    /// No colour.
    #[cfg(test)]
    pub fn plain() -> Self {
        Self::new(false)
    }

    /// The palette for this process's stdout under `choice`.
    pub fn for_stdout(choice: ColorChoice) -> Self {
        let no_color = std::env::var_os("NO_COLOR");
        Self::new(use_color(
            choice,
            std::io::stdout().is_terminal(),
            no_color.as_deref(),
        ))
    }

    /// `text` in `style`.
    pub fn paint(&self, style: Style, text: &str) -> String {
        if self.enabled && !text.is_empty() {
            format!("\x1b[{}m{text}\x1b[0m", style.code())
        } else {
            text.to_owned()
        }
    }
}

/// Writes `text` to stdout and flushes, so `--watch` piped into another program shows rows
/// at once. Unlike `print!`, a closed pipe is an error to return, not a panic.
pub fn print(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_is_used_only_when_it_should_be() {
        let set = Some(OsStr::new("1"));
        let empty = Some(OsStr::new(""));
        let cases = [
            // choice, terminal, NO_COLOR, expected
            (ColorChoice::Auto, true, None, true),
            (ColorChoice::Auto, false, None, false),
            (ColorChoice::Auto, true, set, false),
            (ColorChoice::Auto, true, empty, true),
            (ColorChoice::Always, false, set, true),
            (ColorChoice::Never, true, None, false),
        ];
        for (choice, tty, no_color, want) in cases {
            assert_eq!(
                use_color(choice, tty, no_color),
                want,
                "{choice:?} tty={tty} NO_COLOR={no_color:?}"
            );
        }
    }

    #[test]
    fn a_plain_palette_leaves_text_alone() {
        assert_eq!(Palette::plain().paint(Style::Bad, "deny"), "deny");
        assert_eq!(
            Palette::new(true).paint(Style::Bad, "deny"),
            "\x1b[31mdeny\x1b[0m"
        );
    }
}
