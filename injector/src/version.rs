//! The API server's version (its `/version` document) and what follows from it: whether the
//! proxy can be a native sidecar (an init container with `restartPolicy: Always`), which
//! Kubernetes enables by default from 1.29.
//!
//! Pure parsing; fetching the document is [`crate::apiserver`]'s job. Managed clusters write
//! the minor as `"28+"` (GKE, EKS); some builds leave `major`/`minor` empty and only fill
//! `gitVersion` (`v1.29.3-gke.1`), so that is the fallback. Anything unreadable is an error,
//! and the caller falls back to the conservative layout.

use std::fmt;

use serde::Deserialize;

/// The first Kubernetes minor (of major 1) where native sidecars are on by default.
pub const NATIVE_SIDECARS_SINCE: KubeVersion = KubeVersion {
    major: 1,
    minor: 29,
};

/// A Kubernetes `major.minor` version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KubeVersion {
    /// Major version, `1` in practice.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
}

impl KubeVersion {
    /// Whether this version runs init containers with `restartPolicy: Always` as sidecars.
    pub fn supports_native_sidecars(self) -> bool {
        self >= NATIVE_SIDECARS_SINCE
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Why a `/version` document could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VersionError {
    /// The body is not the JSON object `/version` returns.
    #[error("the API server's /version is not a version document: {0}")]
    NotJson(String),
    /// Neither `major`/`minor` nor `gitVersion` hold a version.
    #[error(
        "the API server's /version has major {major:?}, minor {minor:?} and gitVersion {git_version:?}; none reads as a version like 1.29"
    )]
    Unreadable {
        /// The `major` field.
        major: String,
        /// The `minor` field.
        minor: String,
        /// The `gitVersion` field.
        git_version: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VersionDocument {
    #[serde(default)]
    major: String,
    #[serde(default)]
    minor: String,
    #[serde(default)]
    git_version: String,
}

/// Reads the body of the API server's `GET /version`.
pub fn parse(body: &[u8]) -> Result<KubeVersion, VersionError> {
    let doc: VersionDocument =
        serde_json::from_slice(body).map_err(|e| VersionError::NotJson(e.to_string()))?;
    from_fields(&doc.major, &doc.minor)
        .or_else(|| from_git_version(&doc.git_version))
        .ok_or(VersionError::Unreadable {
            major: doc.major,
            minor: doc.minor,
            git_version: doc.git_version,
        })
}

/// `major: "1"`, `minor: "28+"` → 1.28. The minor may carry a non-digit tail; the major not.
fn from_fields(major: &str, minor: &str) -> Option<KubeVersion> {
    let major = major.trim().parse().ok()?;
    let minor = leading_number(minor.trim())?;
    Some(KubeVersion { major, minor })
}

/// `v1.29.3-gke.1` → 1.29.
fn from_git_version(git_version: &str) -> Option<KubeVersion> {
    let rest = git_version.trim().strip_prefix('v')?;
    let (major, rest) = rest.split_once('.')?;
    Some(KubeVersion {
        major: major.parse().ok()?,
        minor: leading_number(rest)?,
    })
}

/// The decimal number at the start of `text` (`"28+"` → 28); `None` when there is none.
fn leading_number(text: &str) -> Option<u32> {
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    text.get(..end)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_documents_are_read_like_kubectl_does() {
        let v = |major, minor| Ok(KubeVersion { major, minor });
        let cases: &[(&str, Result<KubeVersion, ()>)] = &[
            (
                r#"{"major":"1","minor":"28","gitVersion":"v1.28.0"}"#,
                v(1, 28),
            ),
            (
                r#"{"major":"1","minor":"29","gitVersion":"v1.29.2"}"#,
                v(1, 29),
            ),
            (
                r#"{"major":"1","minor":"28+","gitVersion":"v1.28.9-eks-036c24b"}"#,
                v(1, 28),
            ),
            (r#"{"major":"1","minor":"30+"}"#, v(1, 30)),
            (r#"{"major":" 1 ","minor":"31"}"#, v(1, 31)),
            (
                r#"{"major":"","minor":"","gitVersion":"v1.29.3-gke.1"}"#,
                v(1, 29),
            ),
            (r#"{"gitVersion":"v1.33.0"}"#, v(1, 33)),
            (
                r#"{"major":"1","minor":"+","gitVersion":"v1.30.1"}"#,
                v(1, 30),
            ),
            (r#"{"major":"1","minor":"x"}"#, Err(())),
            (
                r#"{"major":"one","minor":"28","gitVersion":"garbage"}"#,
                Err(()),
            ),
            (r#"{}"#, Err(())),
            (r#"[]"#, Err(())),
            (r#"not json"#, Err(())),
            (r#"{"major":1,"minor":28}"#, Err(())),
            (r#"{"major":"1","minor":"99999999999999999999"}"#, Err(())),
        ];
        for (body, expected) in cases {
            assert_eq!(parse(body.as_bytes()).map_err(|_| ()), *expected, "{body}");
        }
    }

    #[test]
    fn native_sidecars_start_at_1_29() {
        let cases = [
            ((1, 27), false),
            ((1, 28), false),
            ((1, 29), true),
            ((1, 33), true),
            ((2, 0), true),
        ];
        for ((major, minor), expected) in cases {
            assert_eq!(
                KubeVersion { major, minor }.supports_native_sidecars(),
                expected,
                "{major}.{minor}"
            );
        }
    }

    #[test]
    fn the_fixture_api_server_is_1_28() {
        let body = include_bytes!("../../testdata/apiserver-version.json");
        let version = parse(body).unwrap();
        assert_eq!(
            version,
            KubeVersion {
                major: 1,
                minor: 28
            }
        );
        assert!(!version.supports_native_sidecars());
    }

    #[test]
    fn unreadable_versions_name_the_fields() {
        let err = parse(br#"{"major":"1","minor":"x","gitVersion":"dev"}"#).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("\"x\"") && text.contains("\"dev\""), "{text}");
    }
}
