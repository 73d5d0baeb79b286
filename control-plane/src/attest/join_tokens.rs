//! Local attestation: a join-token file mapping tokens to identities (embedded mode), reloaded
//! when it changes. A malformed file keeps the last good table and reports the error.
//!
//! File format, one entry per line, `#` starts a comment:
//!
//! ```text
//! # token (>= 16 characters)          identity (ns/<ns>/sa/<sa> or a full SPIFFE ID)
//! 9f2c1e7a4b6d8e0f1a2b3c4d5e6f7a8b    ns/shop/sa/frontend
//! 0a1b2c3d4e5f60718293a4b5c6d7e8f9    spiffe://cluster.local/ns/shop/sa/backend
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use trellis_ca::{SpiffeId, TrustDomain};

use super::{AttestError, Attested, token_digest};

/// Tokens shorter than this are refused when the file is read: they could be guessed.
const MIN_TOKEN_LEN: usize = 16;

/// Why a join-token file was not (re)loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinTokenError {
    /// The file could not be read.
    #[error("cannot read join-token file {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// A line is malformed.
    #[error("{path}:{line}: {reason}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// The token table, swapped whole on reload.
#[derive(Debug, Default)]
struct Table {
    /// Token digest → identity.
    by_digest: HashMap<[u8; 32], SpiffeId>,
}

/// A join-token file and its last good contents.
#[derive(Debug)]
pub struct JoinTokens {
    /// The file watched for changes.
    path: PathBuf,
    /// Identities must belong to this trust domain.
    trust_domain: TrustDomain,
    /// The last good table.
    table: RwLock<Arc<Table>>,
    /// What the last read saw: a digest of the contents, or the read error. Changes are
    /// detected by content (a same-size edit within one timestamp tick is not missed), and a
    /// broken or missing file is reported once, not on every poll.
    seen: RwLock<Option<Result<[u8; 32], String>>>,
}

impl JoinTokens {
    /// Reads the file; fails if it cannot be read or has a bad line.
    pub fn load(path: &Path, trust_domain: TrustDomain) -> Result<Self, JoinTokenError> {
        let tokens = Self {
            path: path.to_owned(),
            trust_domain,
            table: RwLock::new(Arc::new(Table::default())),
            seen: RwLock::new(None),
        };
        tokens.reload()?;
        Ok(tokens)
    }

    /// Re-reads the file if its contents changed. Returns `Ok(true)` when a new table was
    /// installed; on error the previous table stays in force. Replace the file atomically
    /// (write elsewhere, then rename): a half-written file is read as it is.
    pub fn reload_if_changed(&self) -> Result<bool, JoinTokenError> {
        let read = std::fs::read_to_string(&self.path);
        let seen = match &read {
            Ok(text) => Ok(token_digest(text)),
            Err(e) => Err(e.to_string()),
        };
        if self.seen.read().unwrap_or_else(|e| e.into_inner()).as_ref() == Some(&seen) {
            return Ok(false);
        }
        *self.seen.write().unwrap_or_else(|e| e.into_inner()) = Some(seen);
        self.install(read).map(|()| true)
    }

    fn reload(&self) -> Result<(), JoinTokenError> {
        let read = std::fs::read_to_string(&self.path);
        *self.seen.write().unwrap_or_else(|e| e.into_inner()) = Some(match &read {
            Ok(text) => Ok(token_digest(text)),
            Err(e) => Err(e.to_string()),
        });
        self.install(read)
    }

    fn install(&self, read: std::io::Result<String>) -> Result<(), JoinTokenError> {
        let text = read.map_err(|e| JoinTokenError::Read {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        let table = parse(&text, &self.path, &self.trust_domain)?;
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
        Ok(())
    }

    /// The identity `token` proves, if it is in the table.
    pub fn lookup(&self, token: &str) -> Result<Attested, AttestError> {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner()).clone();
        match table.by_digest.get(&token_digest(token)) {
            Some(id) => Ok(Attested {
                id: id.clone(),
                pod: None,
            }),
            None => Err(AttestError::Rejected("unknown join token".into())),
        }
    }

    /// The number of tokens in force.
    pub fn len(&self) -> usize {
        self.table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_digest
            .len()
    }

    /// Whether no token is in force.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn parse(text: &str, path: &Path, td: &TrustDomain) -> Result<Table, JoinTokenError> {
    let mut by_digest = HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let bad = |reason: String| JoinTokenError::Line {
            path: path.to_owned(),
            line: index + 1,
            reason,
        };
        let mut fields = line.split_whitespace();
        let (Some(token), Some(identity), None) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(bad("expected `<token> <identity>`".into()));
        };
        if token.len() < MIN_TOKEN_LEN {
            return Err(bad(format!(
                "token is {} characters; at least {MIN_TOKEN_LEN} are required",
                token.len()
            )));
        }
        let id = parse_identity(identity, td).map_err(bad)?;
        if by_digest.insert(token_digest(token), id).is_some() {
            return Err(bad("the same token appears twice".into()));
        }
    }
    Ok(Table { by_digest })
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
    use super::*;

    const T1: &str = "0123456789abcdef0123";
    const T2: &str = "fedcba9876543210fedc";

    fn td() -> TrustDomain {
        TrustDomain::default()
    }

    #[test]
    fn a_listed_token_proves_its_identity_and_others_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(
            &path,
            format!("# comment\n{T1} ns/shop/sa/frontend\n\n{T2} spiffe://cluster.local/ns/shop/sa/backend # x\n"),
        )
        .unwrap();
        let tokens = JoinTokens::load(&path, td()).unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(
            tokens.lookup(T1).unwrap().id.to_string(),
            "spiffe://cluster.local/ns/shop/sa/frontend"
        );
        assert_eq!(
            tokens.lookup(T2).unwrap().id.to_string(),
            "spiffe://cluster.local/ns/shop/sa/backend"
        );
        assert_eq!(
            tokens.lookup("not-a-token-at-all"),
            Err(AttestError::Rejected("unknown join token".into()))
        );
    }

    #[test]
    fn bad_lines_are_reported_with_their_line_number() {
        let cases = [
            ("short ns/a/sa/b", "f:1: token is 5 characters"),
            (T1, "expected `<token> <identity>`"),
            (
                &*format!("{T1} ns/a/sa/b extra"),
                "expected `<token> <identity>`",
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
                ":2: the same token appears twice",
            ),
            (
                &*format!("{T1} ns/a b/sa/c"),
                "expected `<token> <identity>`",
            ),
            (&*format!("{T1} ns/../sa/c"), "not allowed"),
        ];
        for (text, want) in cases {
            let err = parse(text, Path::new("f"), &td()).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn a_changed_file_is_reloaded_and_a_broken_one_keeps_the_last_good_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, format!("{T1} ns/a/sa/one\n")).unwrap();
        let tokens = JoinTokens::load(&path, td()).unwrap();
        assert!(
            !tokens.reload_if_changed().unwrap(),
            "unchanged file is not re-read"
        );

        std::fs::write(&path, format!("{T2} ns/a/sa/two\n# longer now\n")).unwrap();
        assert!(tokens.reload_if_changed().unwrap());
        assert!(tokens.lookup(T1).is_err(), "removed token no longer works");
        assert_eq!(tokens.lookup(T2).unwrap().id.service_account(), Some("two"));

        std::fs::write(&path, "garbage line that is not valid at all\n").unwrap();
        assert!(tokens.reload_if_changed().is_err());
        assert!(tokens.lookup(T2).is_ok(), "last good table stays in force");
    }

    #[test]
    fn a_missing_file_stops_the_start() {
        let err = JoinTokens::load(Path::new("/nonexistent/tokens"), td()).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/tokens"), "{err}");
    }
}
