//! Identity patterns for allow-lists: an exact SPIFFE ID, every service account of a namespace
//! (`spiffe://<td>/ns/<ns>/sa/*`), or everything under a namespace (`spiffe://<td>/ns/<ns>/*`).
//! The short forms `ns/<ns>/sa/<sa>`, `ns/<ns>/sa/*` and `ns/<ns>/*` are read in a given trust
//! domain.
//!
//! Owns: parsing and matching. A wildcard never crosses a trust domain or a namespace: the
//! trust domain and namespace are compared whole, never as prefixes of strings.

use std::fmt;

use crate::{SpiffeId, SpiffeIdError, TrustDomain};

/// Why a pattern is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    /// The non-wildcard part is not a valid SPIFFE ID.
    #[error("{pattern:?}: {reason}")]
    Invalid {
        /// The pattern.
        pattern: String,
        /// Why.
        reason: SpiffeIdError,
    },
    /// A `*` appears somewhere other than the last segment of `ns/<ns>/sa/*` or `ns/<ns>/*`.
    #[error("{0:?}: '*' is only allowed as `.../ns/<namespace>/sa/*` or `.../ns/<namespace>/*`")]
    Wildcard(String),
}

/// A parsed allow-list entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IdentityPattern {
    /// Exactly this identity.
    Exact(SpiffeId),
    /// Any service account of `namespace` in `trust_domain`.
    AnyServiceAccount {
        /// The trust domain.
        trust_domain: TrustDomain,
        /// The namespace.
        namespace: String,
    },
    /// Any identity whose path starts with `/ns/<namespace>/`.
    AnyInNamespace {
        /// The trust domain.
        trust_domain: TrustDomain,
        /// The namespace.
        namespace: String,
    },
}

impl IdentityPattern {
    /// Parses `spiffe://...` patterns, or `ns/...` short forms in `default_td`.
    pub fn parse(input: &str, default_td: &TrustDomain) -> Result<Self, PatternError> {
        let full = if input.starts_with("spiffe://") {
            input.to_owned()
        } else {
            format!("spiffe://{default_td}/{}", input.trim_start_matches('/'))
        };
        if !full.contains('*') {
            return SpiffeId::parse(&full).map(Self::Exact).map_err(|reason| {
                PatternError::Invalid {
                    pattern: input.to_owned(),
                    reason,
                }
            });
        }
        let (base, kind) = if let Some(base) = full.strip_suffix("/sa/*") {
            (base, Kind::Sa)
        } else if let Some(base) = full.strip_suffix("/*") {
            (base, Kind::Ns)
        } else {
            return Err(PatternError::Wildcard(input.to_owned()));
        };
        if base.contains('*') {
            return Err(PatternError::Wildcard(input.to_owned()));
        }
        // `base` must be exactly spiffe://<td>/ns/<namespace>.
        let id = SpiffeId::parse(base).map_err(|reason| PatternError::Invalid {
            pattern: input.to_owned(),
            reason,
        })?;
        let mut segments = id.path().strip_prefix('/').unwrap_or_default().split('/');
        let (Some("ns"), Some(namespace), None) =
            (segments.next(), segments.next(), segments.next())
        else {
            return Err(PatternError::Wildcard(input.to_owned()));
        };
        let (trust_domain, namespace) = (id.trust_domain().clone(), namespace.to_owned());
        Ok(match kind {
            Kind::Sa => Self::AnyServiceAccount {
                trust_domain,
                namespace,
            },
            Kind::Ns => Self::AnyInNamespace {
                trust_domain,
                namespace,
            },
        })
    }

    /// Whether `id` is admitted by this pattern.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Exact(want) => want == id,
            Self::AnyServiceAccount {
                trust_domain,
                namespace,
            } => id.trust_domain() == trust_domain && id.namespace() == Some(namespace.as_str()),
            Self::AnyInNamespace {
                trust_domain,
                namespace,
            } => {
                let mut segments = id.path().strip_prefix('/').unwrap_or_default().split('/');
                id.trust_domain() == trust_domain
                    && segments.next() == Some("ns")
                    && segments.next() == Some(namespace.as_str())
                    && segments.next().is_some()
            }
        }
    }
}

enum Kind {
    Sa,
    Ns,
}

impl fmt::Display for IdentityPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(id) => write!(f, "{id}"),
            Self::AnyServiceAccount {
                trust_domain,
                namespace,
            } => write!(f, "spiffe://{trust_domain}/ns/{namespace}/sa/*"),
            Self::AnyInNamespace {
                trust_domain,
                namespace,
            } => write!(f, "spiffe://{trust_domain}/ns/{namespace}/*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::default()
    }
    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn matching_table() {
        let cases: &[(&str, &str, bool)] = &[
            (
                "spiffe://cluster.local/ns/shop/sa/frontend",
                "spiffe://cluster.local/ns/shop/sa/frontend",
                true,
            ),
            (
                "spiffe://cluster.local/ns/shop/sa/frontend",
                "spiffe://cluster.local/ns/shop/sa/frontend2",
                false,
            ),
            (
                "ns/shop/sa/frontend",
                "spiffe://cluster.local/ns/shop/sa/frontend",
                true,
            ),
            (
                "ns/shop/sa/*",
                "spiffe://cluster.local/ns/shop/sa/anything",
                true,
            ),
            (
                "ns/shop/sa/*",
                "spiffe://cluster.local/ns/shopping/sa/x",
                false,
            ),
            ("ns/shop/sa/*", "spiffe://cluster.local/ns/sho/sa/x", false),
            ("ns/shop/sa/*", "spiffe://other.td/ns/shop/sa/x", false),
            ("ns/shop/sa/*", "spiffe://cluster.local/ns/shop/x/y", false),
            ("ns/shop/*", "spiffe://cluster.local/ns/shop/x/y", true),
            ("ns/shop/*", "spiffe://cluster.local/ns/shop/sa/y", true),
            ("ns/shop/*", "spiffe://cluster.local/ns/shop", false),
            ("ns/shop/*", "spiffe://cluster.local/ns/shop2/sa/y", false),
            (
                "spiffe://other.td/ns/shop/*",
                "spiffe://cluster.local/ns/shop/sa/y",
                false,
            ),
        ];
        for (pattern, peer, want) in cases {
            let p = IdentityPattern::parse(pattern, &td()).unwrap();
            assert_eq!(p.matches(&id(peer)), *want, "{pattern} vs {peer}");
        }
    }

    #[test]
    fn malformed_patterns_are_refused_with_a_reason() {
        for bad in [
            "spiffe://cluster.local/ns/*/sa/x",
            "spiffe://cluster.local/*",
            "spiffe://*/ns/a/sa/b",
            "ns/shop/sa/fr*",
            "ns/a/b/c/*",
            "ns//sa/*",
            "http://x/ns/a/sa/b",
            "ns/a b/sa/c",
        ] {
            assert!(
                IdentityPattern::parse(bad, &td()).is_err(),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn patterns_display_in_full_form() {
        let p = IdentityPattern::parse("ns/shop/sa/*", &td()).unwrap();
        assert_eq!(p.to_string(), "spiffe://cluster.local/ns/shop/sa/*");
    }

    proptest! {
        #[test]
        fn a_wildcard_never_matches_another_trust_domain_or_namespace(
            ns in "[a-z][a-z0-9-]{0,10}", other_ns in "[a-z][a-z0-9-]{0,10}",
            sa in "[a-z][a-z0-9-]{0,10}", other_td in "[a-z][a-z0-9.]{0,12}",
            ns_wide in any::<bool>(),
        ) {
            let pattern = if ns_wide { format!("ns/{ns}/*") } else { format!("ns/{ns}/sa/*") };
            let p = IdentityPattern::parse(&pattern, &td()).unwrap();
            let same = id(&format!("spiffe://cluster.local/ns/{ns}/sa/{sa}"));
            prop_assert!(p.matches(&same));
            if other_ns != ns {
                let other = id(&format!("spiffe://cluster.local/ns/{other_ns}/sa/{sa}"));
                prop_assert!(!p.matches(&other));
            }
            if other_td != "cluster.local" {
                let other = id(&format!("spiffe://{other_td}/ns/{ns}/sa/{sa}"));
                prop_assert!(!p.matches(&other));
            }
        }
    }
}
