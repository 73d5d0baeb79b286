//! `-o table|json|yaml`, shared by the commands that print a report: the flag's values and
//! rendering a serializable report as JSON or YAML (the table is each command's own).
//!
//! Owns: [`Format`] and [`structured`].

use clap::ValueEnum;
use serde::Serialize;

/// Output format (`-o`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people: aligned columns or ✔/‼/✘ lines.
    #[default]
    Table,
    /// One JSON document.
    Json,
    /// One YAML document.
    Yaml,
}

/// Why a report could not be rendered.
#[derive(Debug, thiserror::Error)]
#[error("cannot render the report as {format}: {reason}")]
pub struct RenderError {
    /// "JSON" or "YAML".
    format: &'static str,
    /// The encoder's words.
    reason: String,
}

/// `value` as pretty JSON or YAML, ending with a newline; `None` for [`Format::Table`].
pub fn structured<T: Serialize>(format: Format, value: &T) -> Result<Option<String>, RenderError> {
    let text = match format {
        Format::Table => return Ok(None),
        Format::Json => serde_json::to_string_pretty(value).map_err(|e| RenderError {
            format: "JSON",
            reason: e.to_string(),
        })?,
        Format::Yaml => serde_saphyr::to_string(value).map_err(|e| RenderError {
            format: "YAML",
            reason: e.to_string(),
        })?,
    };
    Ok(Some(if text.ends_with('\n') {
        text
    } else {
        text + "\n"
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[derive(Serialize)]
    struct Doc {
        name: &'static str,
        ports: Vec<u16>,
        note: Option<&'static str>,
    }

    #[test]
    fn json_and_yaml_carry_the_same_fields_and_table_is_left_to_the_command() {
        let doc = Doc {
            name: "a: b",
            ports: vec![80, 443],
            note: None,
        };
        let json = structured(Format::Json, &doc).unwrap().unwrap();
        let back: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(back["ports"][1], 443);
        let yaml = structured(Format::Yaml, &doc).unwrap().unwrap();
        let back: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(back["name"], "a: b", "{yaml}");
        assert_eq!(back["ports"][0], 80);
        assert!(yaml.ends_with('\n'));
        assert!(structured(Format::Table, &doc).unwrap().is_none());
    }
}
