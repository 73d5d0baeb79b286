//! SPIFFE identities: [`TrustDomain`] and [`SpiffeId`], parsed by the rules of the
//! SPIFFE ID specification (<https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md>).
//!
//! Owns: parsing, validation, construction from a Kubernetes namespace and service account,
//! and the `ns/<ns>/sa/<sa>` accessors. It knows nothing about certificates; the
//! verifiers in [`crate::verify`] take the URI SAN out of a certificate and parse it here.

use std::fmt;
use std::str::FromStr;

/// The default trust domain of a mesh, as in Istio and Linkerd.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

const SCHEME_PREFIX: &str = "spiffe://";
/// The SPIFFE spec limits a trust domain to 255 bytes.
const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// The SPIFFE spec limits a whole SPIFFE ID (as a URI) to 2048 bytes.
const MAX_SPIFFE_ID_LEN: usize = 2048;

/// Why a string is not a valid SPIFFE ID or trust domain. One variant per rule of the spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    /// The input was empty.
    #[error("SPIFFE ID is empty")]
    Empty,
    /// The input does not start with `spiffe://` (the scheme is lowercase and mandatory).
    #[error("SPIFFE ID must start with \"spiffe://\" (got {0:?})")]
    WrongScheme(String),
    /// Nothing between `spiffe://` and the path.
    #[error("SPIFFE ID has no trust domain")]
    MissingTrustDomain,
    /// The trust domain is longer than 255 bytes.
    #[error("trust domain is {0} bytes long; at most 255 are allowed")]
    TrustDomainTooLong(usize),
    /// The trust domain has a character outside `[a-z0-9.-_]` (uppercase is not allowed either).
    #[error(
        "trust domain has the character {0:?}; only lowercase letters, digits, '.', '-' and '_' are allowed"
    )]
    TrustDomainChar(char),
    /// The authority carries a port (`:8443`), which SPIFFE forbids.
    #[error("trust domain must not carry a port")]
    Port,
    /// The authority carries user information (`user@`), which SPIFFE forbids.
    #[error("trust domain must not carry user information ('@')")]
    UserInfo,
    /// The URI has a query (`?...`).
    #[error("SPIFFE ID must not have a query ('?')")]
    Query,
    /// The URI has a fragment (`#...`).
    #[error("SPIFFE ID must not have a fragment ('#')")]
    Fragment,
    /// Two slashes in a row, or a trailing slash.
    #[error("SPIFFE ID path has an empty segment (a '//' or a trailing '/')")]
    EmptySegment,
    /// A path segment is `.` or `..`.
    #[error("SPIFFE ID path segment {0:?} is not allowed ('.' and '..' are forbidden)")]
    DotSegment(String),
    /// A path segment has a character outside `[a-zA-Z0-9.-_]`.
    #[error(
        "SPIFFE ID path has the character {0:?}; only letters, digits, '.', '-' and '_' are allowed"
    )]
    PathChar(char),
    /// The whole ID is longer than 2048 bytes.
    #[error("SPIFFE ID is {0} bytes long; at most 2048 are allowed")]
    TooLong(usize),
}

/// A SPIFFE trust domain, e.g. `cluster.local`. Always valid once constructed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (`cluster.local`, not `spiffe://cluster.local`).
    pub fn new(name: &str) -> Result<Self, SpiffeIdError> {
        validate_trust_domain(name)?;
        Ok(Self(name.to_owned()))
    }

    /// The trust domain's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The SPIFFE ID of the trust domain itself (`spiffe://<td>`), used as the root's URI.
    pub fn id_string(&self) -> String {
        format!("{SCHEME_PREFIX}{}", self.0)
    }
}

impl Default for TrustDomain {
    fn default() -> Self {
        Self(DEFAULT_TRUST_DOMAIN.to_owned())
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A valid SPIFFE ID: `spiffe://<trust-domain>/<path>`.
///
/// Fields are private so that every value has passed [`SpiffeId::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// The trust domain part, kept separately so that checks need no re-parsing.
    trust_domain: TrustDomain,
    /// The path including its leading `/`, or empty for the trust domain's own ID.
    path: String,
}

impl SpiffeId {
    /// Parses a SPIFFE ID, applying every rule of the spec.
    pub fn parse(input: &str) -> Result<Self, SpiffeIdError> {
        if input.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if input.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong(input.len()));
        }
        let rest = input
            .strip_prefix(SCHEME_PREFIX)
            .ok_or_else(|| SpiffeIdError::WrongScheme(truncate(input, 64)))?;
        if rest.contains('?') {
            return Err(SpiffeIdError::Query);
        }
        if rest.contains('#') {
            return Err(SpiffeIdError::Fragment);
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        validate_trust_domain(authority)?;
        validate_path(path)?;
        Ok(Self {
            trust_domain: TrustDomain(authority.to_owned()),
            path: path.to_owned(),
        })
    }

    /// Builds `spiffe://<td>/ns/<namespace>/sa/<service_account>`, validating both names.
    pub fn for_service_account(
        trust_domain: &TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        validate_segment(namespace)?;
        validate_segment(service_account)?;
        let path = format!("/ns/{namespace}/sa/{service_account}");
        Ok(Self {
            trust_domain: trust_domain.clone(),
            path,
        })
    }

    /// The trust domain this ID belongs to.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path, with its leading `/` (empty for a trust domain ID).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The namespace, when the path has the Kubernetes form `/ns/<ns>/sa/<sa>`.
    pub fn namespace(&self) -> Option<&str> {
        self.ns_sa().map(|(ns, _)| ns)
    }

    /// The service account, when the path has the Kubernetes form `/ns/<ns>/sa/<sa>`.
    pub fn service_account(&self) -> Option<&str> {
        self.ns_sa().map(|(_, sa)| sa)
    }

    fn ns_sa(&self) -> Option<(&str, &str)> {
        let mut parts = self.path.strip_prefix('/')?.split('/');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME_PREFIX}{}{}", self.trust_domain, self.path)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong(td.len()));
    }
    if td.contains('@') {
        return Err(SpiffeIdError::UserInfo);
    }
    if td.contains(':') {
        return Err(SpiffeIdError::Port);
    }
    match td
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        Some(c) => Err(SpiffeIdError::TrustDomainChar(c)),
        None => Ok(()),
    }
}

/// Validates a path that is empty or starts with `/`.
fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Ok(()); // empty path: the trust domain's own ID
    };
    rest.split('/').try_for_each(validate_segment)
}

/// Validates one path segment: non-empty, not `.`/`..`, only `[a-zA-Z0-9.-_]`.
fn validate_segment(segment: &str) -> Result<(), SpiffeIdError> {
    if segment.is_empty() {
        return Err(SpiffeIdError::EmptySegment);
    }
    if segment == "." || segment == ".." {
        return Err(SpiffeIdError::DotSegment(segment.to_owned()));
    }
    match segment
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        Some(c) => Err(SpiffeIdError::PathChar(c)),
        None => Ok(()),
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
#[path = "spiffe_tests.rs"]
mod tests;
