//! The join-token file's format, parsed without I/O: one entry per line, `#` starts a comment.
//!
//! ```text
//! # token (>= 16 characters)          identity                     options
//! 9f2c1e7a4b6d8e0f1a2b3c4d5e6f7a8b    ns/shop/sa/frontend
//! 0a1b2c3d4e5f60718293a4b5c6d7e8f9    spiffe://cluster.local/ns/shop/sa/backend
//! 5d6e7f8091a2b3c4d5e6f708192a3b4c    ns/shop/sa/batch             expires=2026-07-01T00:00:00Z single-use
//! ```
//!
//! Options (any order, each at most once): `expires=<RFC 3339 UTC time>` — the token is refused
//! from then on; `single-use` — the token proves its identity once, ever (the control plane
//! remembers used tokens' digests in its state directory). A file written for the old two-field
//! format reads the same.
//!
//! Owns: [`parse`] and the checks on each line, including that no token may name the control
//! plane's own identity. Reading, reloading and looking tokens up is [`super::JoinTokens`].

use std::collections::HashMap;
use std::time::SystemTime;

use trellis_ca::{SpiffeId, TrustDomain};

use super::token_digest;

/// Tokens shorter than this are refused when the file is read: they could be guessed.
pub const MIN_TOKEN_LEN: usize = 16;

/// What one token proves, and under which conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTokenEntry {
    /// The identity the token proves.
    pub id: SpiffeId,
    /// From this time on the token is refused.
    pub expires: Option<SystemTime>,
    /// The token proves its identity once only.
    pub single_use: bool,
}

/// A parsed file: token digest → entry. Tokens themselves are not kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenTable {
    /// SHA-256 of the token → what it proves.
    pub by_digest: HashMap<[u8; 32], JoinTokenEntry>,
}

impl TokenTable {
    /// Whether any token is single-use (which needs a state directory to remember it).
    pub fn has_single_use(&self) -> bool {
        self.by_digest.values().any(|e| e.single_use)
    }
}

/// A bad line: its 1-based number and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong, and what is expected.
    pub reason: String,
}

/// Parses a join-token file. Identities must belong to `td` and must not be `control_plane`
/// (a workload holding such a token could pose as the control plane to every proxy).
pub fn parse(
    text: &str,
    td: &TrustDomain,
    control_plane: &SpiffeId,
) -> Result<TokenTable, LineError> {
    let mut by_digest = HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let bad = |reason: String| LineError {
            line: index + 1,
            reason,
        };
        let mut fields = line.split_whitespace();
        let (Some(token), Some(identity)) = (fields.next(), fields.next()) else {
            return Err(bad(
                "expected `<token> <identity> [expires=<RFC 3339 time>] [single-use]`".into(),
            ));
        };
        if token.len() < MIN_TOKEN_LEN {
            return Err(bad(format!(
                "token is {} characters; at least {MIN_TOKEN_LEN} are required",
                token.len()
            )));
        }
        let id = parse_identity(identity, td).map_err(bad)?;
        if &id == control_plane {
            return Err(bad(format!(
                "identity {id} is the control plane's own: a workload holding this token could pose as the control plane; give the token a workload's identity"
            )));
        }
        let mut entry = JoinTokenEntry {
            id,
            expires: None,
            single_use: false,
        };
        for option in fields {
            parse_option(option, &mut entry).map_err(bad)?;
        }
        if by_digest.insert(token_digest(token), entry).is_some() {
            return Err(bad("the same token appears twice".into()));
        }
    }
    Ok(TokenTable { by_digest })
}

fn parse_option(option: &str, entry: &mut JoinTokenEntry) -> Result<(), String> {
    if option == "single-use" {
        if entry.single_use {
            return Err("`single-use` is given twice".into());
        }
        entry.single_use = true;
        return Ok(());
    }
    if let Some(when) = option.strip_prefix("expires=") {
        if entry.expires.is_some() {
            return Err("`expires=` is given twice".into());
        }
        let at = humantime::parse_rfc3339(when).map_err(|e| {
            format!(
                "expires={when:?}: {e}; expected an RFC 3339 time in UTC, e.g. expires=2026-07-01T00:00:00Z"
            )
        })?;
        entry.expires = Some(at);
        return Ok(());
    }
    Err(format!(
        "unknown option {option:?}; expected `expires=<RFC 3339 time>` or `single-use`"
    ))
}

fn parse_identity(s: &str, td: &TrustDomain) -> Result<SpiffeId, String> {
    let id = if s.starts_with("spiffe://") {
        SpiffeId::parse(s).map_err(|e| format!("identity {s:?}: {e}"))?
    } else {
        let rest = s.strip_prefix("ns/").ok_or_else(|| {
            format!("identity {s:?}: expected ns/<namespace>/sa/<service-account> or spiffe://...")
        })?;
        let (ns, sa) = rest.split_once("/sa/").ok_or_else(|| {
            format!("identity {s:?}: expected ns/<namespace>/sa/<service-account>")
        })?;
        SpiffeId::for_service_account(td, ns, sa).map_err(|e| format!("identity {s:?}: {e}"))?
    };
    if id.trust_domain() != td {
        return Err(format!("identity {id} is not in trust domain {td}"));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    const T1: &str = "0123456789abcdef0123";
    const T2: &str = "fedcba9876543210fedc";

    fn control_plane() -> SpiffeId {
        SpiffeId::parse("spiffe://cluster.local/ns/trellis-system/sa/trellis-control-plane")
            .unwrap()
    }

    fn parse_ok(text: &str) -> TokenTable {
        parse(text, &TrustDomain::default(), &control_plane()).unwrap()
    }

    fn entry(table: &TokenTable, token: &str) -> JoinTokenEntry {
        table.by_digest[&token_digest(token)].clone()
    }

    #[test]
    fn two_field_lines_read_as_before_and_options_add_expiry_and_single_use() {
        let table = parse_ok(&format!(
            "# comment\n{T1} ns/shop/sa/frontend\n\n\
             {T2} spiffe://cluster.local/ns/shop/sa/backend single-use expires=2026-07-01T00:00:00Z # x\n"
        ));
        assert_eq!(table.by_digest.len(), 2);
        let first = entry(&table, T1);
        assert_eq!(
            first.id.to_string(),
            "spiffe://cluster.local/ns/shop/sa/frontend"
        );
        assert_eq!((first.expires, first.single_use), (None, false));
        let second = entry(&table, T2);
        assert!(second.single_use);
        assert_eq!(
            second.expires,
            Some(UNIX_EPOCH + Duration::from_secs(1_782_864_000))
        );
        assert!(table.has_single_use());
    }

    #[test]
    fn bad_lines_are_reported_with_their_line_number_and_what_was_expected() {
        let cases = [
            ("short ns/a/sa/b", "line 1: token is 5 characters"),
            (T1, "expected `<token> <identity> [expires="),
            (
                &*format!("{T1} ns/a/sa/b extra"),
                "unknown option \"extra\"",
            ),
            (
                &*format!("{T1} a/b"),
                "expected ns/<namespace>/sa/<service-account> or spiffe",
            ),
            (
                &*format!("{T1} spiffe://other.td/ns/a/sa/b"),
                "not in trust domain cluster.local",
            ),
            (
                &*format!("{T1} ns/a/sa/b\n{T1} ns/c/sa/d"),
                "line 2: the same token appears twice",
            ),
            (&*format!("{T1} ns/../sa/c"), "not allowed"),
            (
                &*format!("{T1} ns/a/sa/b expires=tomorrow"),
                "expected an RFC 3339 time in UTC",
            ),
            (
                &*format!("{T1} ns/a/sa/b expires=2026-07-01T00:00:00+02:00"),
                "expected an RFC 3339 time in UTC",
            ),
            (
                &*format!("{T1} ns/a/sa/b single-use single-use"),
                "`single-use` is given twice",
            ),
            (
                &*format!(
                    "{T1} ns/a/sa/b expires=2026-07-01T00:00:00Z expires=2027-07-01T00:00:00Z"
                ),
                "`expires=` is given twice",
            ),
            (
                &*format!("{T1} ns/trellis-system/sa/trellis-control-plane"),
                "is the control plane's own",
            ),
            (
                &*format!("{T1} spiffe://cluster.local/ns/trellis-system/sa/trellis-control-plane"),
                "is the control plane's own",
            ),
        ];
        for (text, want) in cases {
            let err = parse(text, &TrustDomain::default(), &control_plane())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{text:?}: got {err:?}, want {want:?}");
        }
    }
}
