//! The results of `trellis check`: one [`Outcome`] per check (✔, ‼ or ✘, with what was found
//! and a hint), grouped in [`Section`]s, and how they are printed.

use crate::style::{Palette, Style};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// ✔ as it should be.
    Ok,
    /// ‼ works, but needs attention (or could not be checked).
    Warn,
    /// ✘ broken; `trellis check` exits 1.
    Fail,
}

impl Status {
    /// Its symbol.
    pub fn symbol(self) -> &'static str {
        match self {
            Status::Ok => "✔",
            Status::Warn => "‼",
            Status::Fail => "✘",
        }
    }

    fn style(self) -> Style {
        match self {
            Status::Ok => Style::Good,
            Status::Warn => Style::Warn,
            Status::Fail => Style::Bad,
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Outcome {
    /// ✔ ‼ ✘.
    pub status: Status,
    /// What was checked and, when it passed, what was found.
    pub title: String,
    /// What was found, when it is not as it should be.
    pub detail: Option<String>,
    /// What to do about it.
    pub hint: Option<String>,
}

impl Outcome {
    /// A passed check.
    pub fn ok(title: impl Into<String>) -> Self {
        Self {
            status: Status::Ok,
            title: title.into(),
            detail: None,
            hint: None,
        }
    }

    /// A warning.
    pub fn warn(title: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            status: Status::Warn,
            hint: Some(hint.into()),
            ..Self::ok(title)
        }
    }

    /// A failure.
    pub fn fail(title: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            status: Status::Fail,
            hint: Some(hint.into()),
            ..Self::ok(title)
        }
    }

    /// With what was found.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

/// A group of checks under a heading.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Section {
    /// The heading (`kubernetes-api`, `trellis-identity`, ...).
    pub name: &'static str,
    /// Its checks, in order.
    pub outcomes: Vec<Outcome>,
}

/// Whether every check passed or only warned.
pub fn passed(sections: &[Section]) -> bool {
    count(sections, Status::Fail) == 0
}

fn count(sections: &[Section], status: Status) -> usize {
    sections
        .iter()
        .flat_map(|s| &s.outcomes)
        .filter(|o| o.status == status)
        .count()
}

/// The report, as `linkerd check` prints it: a heading per section, a line per check, the
/// detail and hint indented below, and a closing status line.
pub fn render(sections: &[Section], palette: Palette) -> String {
    let mut out = String::new();
    for section in sections.iter().filter(|s| !s.outcomes.is_empty()) {
        out.push_str(&palette.paint(Style::Strong, section.name));
        out.push('\n');
        out.push_str(&"-".repeat(section.name.chars().count()));
        out.push('\n');
        for o in &section.outcomes {
            out.push_str(&palette.paint(o.status.style(), o.status.symbol()));
            out.push(' ');
            out.push_str(&o.title);
            out.push('\n');
            if let Some(detail) = &o.detail {
                for line in detail.lines() {
                    out.push_str(&format!("    {line}\n"));
                }
            }
            if let Some(hint) = &o.hint {
                out.push_str(&format!(
                    "    {}\n",
                    palette.paint(Style::Faint, &format!("hint: {hint}"))
                ));
            }
        }
        out.push('\n');
    }
    let (fails, warns) = (count(sections, Status::Fail), count(sections, Status::Warn));
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    let status = match (fails, warns) {
        (0, 0) => palette.paint(Style::Good, Status::Ok.symbol()),
        (0, w) => format!(
            "{} ({})",
            palette.paint(Style::Warn, Status::Warn.symbol()),
            plural(w, "warning")
        ),
        (f, w) => format!(
            "{} ({}, {})",
            palette.paint(Style::Bad, Status::Fail.symbol()),
            plural(f, "failed check"),
            plural(w, "warning")
        ),
    };
    out.push_str(&format!("Status check results are {status}\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_prints_headings_symbols_details_and_hints() {
        let sections = [
            Section {
                name: "trellis-install",
                outcomes: vec![
                    Outcome::ok("CRD authorizationpolicies.trellis.dev is installed"),
                    Outcome::fail("Deployment trellis-injector is available", "kubectl ...")
                        .detail("0 of 2 replicas available"),
                ],
            },
            Section {
                name: "empty",
                outcomes: vec![],
            },
        ];
        let out = render(&sections, Palette::plain());
        assert_eq!(
            out,
            "trellis-install\n\
             ---------------\n\
             ✔ CRD authorizationpolicies.trellis.dev is installed\n\
             ✘ Deployment trellis-injector is available\n    \
             0 of 2 replicas available\n    \
             hint: kubectl ...\n\
             \n\
             Status check results are ✘ (1 failed check, 0 warnings)\n"
        );
        assert!(!passed(&sections));
    }

    #[test]
    fn warnings_alone_pass() {
        let sections = [Section {
            name: "data-plane",
            outcomes: vec![Outcome::ok("a"), Outcome::warn("b", "c")],
        }];
        assert!(passed(&sections));
        assert!(render(&sections, Palette::plain()).ends_with("are ‼ (1 warning)\n"));
    }
}
