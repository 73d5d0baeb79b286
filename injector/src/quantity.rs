//! Kubernetes resource quantities (`100m`, `0.5`, `128Mi`, `1e3`): parsed at the boundary so
//! that a bad value in a flag or a pod annotation is refused by the injector, with the value
//! named, instead of producing a pod the API server rejects.
//!
//! This module only validates and compares; the text the user wrote is what goes into the pod.
//! The grammar is the one of `k8s.io/apimachinery/pkg/api/resource`: a non-negative decimal
//! number followed by a binary (`Ki`…`Ei`), decimal (`n u m k M G T P E`) or exponent
//! (`e3`, `E-2`) suffix.

use std::{cmp::Ordering, fmt, str::FromStr};

use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;

/// Why a text is not a resource quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuantityError {
    /// The text is empty (or only whitespace).
    #[error("quantity is empty; expected e.g. \"100m\" or \"128Mi\"")]
    Empty,
    /// The number part is missing or malformed.
    #[error(
        "quantity {0:?} does not start with a number; expected e.g. \"100m\", \"0.5\" or \"128Mi\""
    )]
    BadNumber(String),
    /// The suffix is not one Kubernetes knows.
    #[error(
        "quantity {value:?} has the unknown suffix {suffix:?}; expected one of Ki Mi Gi Ti Pi Ei n u m k M G T P E or an exponent"
    )]
    BadSuffix {
        /// The whole text.
        value: String,
        /// The part after the number.
        suffix: String,
    },
    /// Negative quantities make no sense for requests and limits.
    #[error("quantity {0:?} is negative; resources must be zero or more")]
    Negative(String),
}

/// A validated, non-negative Kubernetes quantity. Keeps the user's text (what the pod gets)
/// and its value in base units (cores or bytes) for comparisons.
#[derive(Debug, Clone)]
pub struct Quantity {
    text: String,
    value: f64,
}

impl Quantity {
    /// The text as written, e.g. `"128Mi"`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value in base units (cores for CPU, bytes for memory).
    pub fn value(&self) -> f64 {
        self.value
    }

    /// The quantity as the k8s-openapi type for a `ResourceRequirements`.
    pub fn to_k8s(&self) -> K8sQuantity {
        K8sQuantity(self.text.clone())
    }
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        self.value.partial_cmp(&other.value)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let text = input.trim();
        if text.is_empty() {
            return Err(QuantityError::Empty);
        }
        let bad_number = || QuantityError::BadNumber(text.to_owned());

        let (sign, unsigned) = if let Some(rest) = text.strip_prefix('-') {
            (-1.0, rest)
        } else {
            (1.0, text.strip_prefix('+').unwrap_or(text))
        };
        let number_len = unsigned
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(unsigned.len());
        let (number, suffix) = unsigned.split_at(number_len);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(bad_number());
        }
        let mantissa: f64 = number.parse().map_err(|_| bad_number())?;
        let scale = suffix_scale(suffix).ok_or_else(|| QuantityError::BadSuffix {
            value: text.to_owned(),
            suffix: suffix.to_owned(),
        })?;
        let value = sign * mantissa * scale;
        if value < 0.0 {
            return Err(QuantityError::Negative(text.to_owned()));
        }
        Ok(Self {
            text: text.to_owned(),
            value,
        })
    }
}

/// The multiplier of a quantity suffix, or `None` if Kubernetes would refuse it.
fn suffix_scale(suffix: &str) -> Option<f64> {
    let scale = match suffix {
        "" => 1.0,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        exponent => {
            let digits = exponent
                .strip_prefix('e')
                .or_else(|| exponent.strip_prefix('E'))?;
            let unsigned = digits
                .strip_prefix('-')
                .or_else(|| digits.strip_prefix('+'))
                .unwrap_or(digits);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let power: i32 = digits.parse().ok()?;
            10f64.powi(power)
        }
    };
    Some(scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_forms_kubernetes_accepts() {
        let cases: &[(&str, f64)] = &[
            ("100m", 0.1),
            ("0.5", 0.5),
            ("2", 2.0),
            ("+1", 1.0),
            (".5", 0.5),
            ("1.", 1.0),
            ("128Mi", 128.0 * 1024.0 * 1024.0),
            ("1Gi", 1024.0 * 1024.0 * 1024.0),
            ("1G", 1e9),
            ("1e3", 1000.0),
            ("5E-1", 0.5),
            ("250u", 250e-6),
            (" 64Mi ", 64.0 * 1024.0 * 1024.0),
        ];
        for (text, value) in cases {
            let q: Quantity = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!((q.value() - value).abs() < 1e-9 * value.max(1.0), "{text}");
        }
    }

    #[test]
    fn refuses_what_kubernetes_refuses() {
        for text in [
            "", "  ", "m", "abc", "1.2.3", "10mb", "1KB", "1e", "1e+", "-1", "-100m", "1 Mi", ".",
        ] {
            assert!(
                text.parse::<Quantity>().is_err(),
                "{text:?} should be refused"
            );
        }
    }

    #[test]
    fn compares_by_value_not_text() {
        let a: Quantity = "1Gi".parse().unwrap();
        let b: Quantity = "1024Mi".parse().unwrap();
        let c: Quantity = "1G".parse().unwrap();
        assert_eq!(a, b);
        assert!(c < a);
        assert_eq!(a.as_str(), "1Gi");
    }
}
