//! Local attestation: a join-token file mapping tokens to identities (embedded mode), reloaded
//! when it changes. A malformed file keeps the last good table and reports the error. The
//! format is [`super::join_token_file`]'s; single-use tokens are remembered by
//! [`super::used_tokens`].
//!
//! Owns: [`JoinTokens`] — reading the file (refused when other users may read or write it),
//! reloading it, and looking a token up at a given time (expired, used or unknown tokens are
//! refused).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use trellis_ca::{SpiffeId, TrustDomain};

use super::join_token_file::{self, TokenTable};
use super::used_tokens::{UsedTokens, UsedTokensError};
use super::{AttestError, Attested, token_digest};

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
    /// Users other than the file's owner (and group) may read or write it.
    #[error(
        "join-token file {path} has mode {mode:04o}: every user of this machine can {what} it and so take any identity it lists; make it private with `chmod 600 {path}` (a Kubernetes Secret volume: `defaultMode: 0400`)",
        path = path.display()
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// `read`, `change` or `read and change`.
        what: &'static str,
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
    /// The file has single-use tokens but the control plane has nowhere to remember them.
    #[error(
        "join-token file {path} has single-use tokens, which need a state directory to remember used ones across restarts; pass --state-dir"
    )]
    NoStateDir {
        /// The file.
        path: PathBuf,
    },
    /// The record of used single-use tokens is unreadable.
    #[error("record of used join tokens {0}")]
    Used(#[from] UsedTokensError),
}

/// What the last read saw: the contents' digest and the file's mode, or the read error.
type Seen = Result<([u8; 32], u32), String>;

/// A join-token file and its last good contents.
#[derive(Debug)]
pub struct JoinTokens {
    /// The file watched for changes.
    path: PathBuf,
    /// Identities must belong to this trust domain.
    trust_domain: TrustDomain,
    /// No token may prove this identity: the control plane's own.
    control_plane: SpiffeId,
    /// The last good table.
    table: RwLock<Arc<TokenTable>>,
    /// What the last read saw. Changes are detected by content and mode (a same-size edit
    /// within one timestamp tick, or a chmod, is not missed), and a broken or missing file is
    /// reported once, not on every poll.
    seen: RwLock<Option<Seen>>,
    /// Used single-use tokens, when the control plane has a state directory.
    used: Option<Mutex<UsedTokens>>,
}

impl JoinTokens {
    /// Reads the file; fails if it cannot be read, may be read or changed by other users, or
    /// has a bad line. `control_plane` is the control plane's own identity, which no token may
    /// prove; used single-use tokens are remembered in `state_dir`.
    pub fn load(
        path: &Path,
        trust_domain: TrustDomain,
        control_plane: SpiffeId,
        state_dir: Option<&Path>,
    ) -> Result<Self, JoinTokenError> {
        let used = state_dir.map(UsedTokens::open).transpose()?.map(Mutex::new);
        let tokens = Self {
            path: path.to_owned(),
            trust_domain,
            control_plane,
            table: RwLock::new(Arc::new(TokenTable::default())),
            seen: RwLock::new(None),
            used,
        };
        let (seen, text) = tokens.read();
        *tokens.seen.write().unwrap_or_else(|e| e.into_inner()) = Some(seen);
        tokens.install(text)?;
        Ok(tokens)
    }

    /// Re-reads the file if its contents or mode changed. Returns `Ok(true)` when a new table
    /// was installed; on error the previous table stays in force. Replace the file atomically
    /// (write elsewhere, then rename): a half-written file is read as it is.
    pub fn reload_if_changed(&self) -> Result<bool, JoinTokenError> {
        let (seen, text) = self.read();
        if self.seen.read().unwrap_or_else(|e| e.into_inner()).as_ref() == Some(&seen) {
            return Ok(false);
        }
        *self.seen.write().unwrap_or_else(|e| e.into_inner()) = Some(seen);
        self.install(text).map(|()| true)
    }

    /// Reads the file's mode and text.
    fn read(&self) -> (Seen, Result<(u32, String), JoinTokenError>) {
        let read = std::fs::metadata(&self.path)
            .and_then(|meta| {
                let text = std::fs::read_to_string(&self.path)?;
                Ok((meta.permissions().mode() & 0o7777, text))
            })
            .map_err(|e| JoinTokenError::Read {
                path: self.path.clone(),
                reason: e.to_string(),
            });
        let seen = match &read {
            Ok((mode, text)) => Ok((token_digest(text), *mode)),
            Err(e) => Err(e.to_string()),
        };
        (seen, read)
    }

    fn install(&self, read: Result<(u32, String), JoinTokenError>) -> Result<(), JoinTokenError> {
        let (mode, text) = read?;
        let what = match (mode & 0o004 != 0, mode & 0o002 != 0) {
            (true, true) => Some("read and change"),
            (true, false) => Some("read"),
            (false, true) => Some("change"),
            (false, false) => None,
        };
        if let Some(what) = what {
            return Err(JoinTokenError::Permissions {
                path: self.path.clone(),
                mode,
                what,
            });
        }
        let table = join_token_file::parse(&text, &self.trust_domain, &self.control_plane)
            .map_err(|e| JoinTokenError::Line {
                path: self.path.clone(),
                line: e.line,
                reason: e.reason,
            })?;
        if table.has_single_use() && self.used.is_none() {
            return Err(JoinTokenError::NoStateDir {
                path: self.path.clone(),
            });
        }
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
        Ok(())
    }

    /// The identity `token` proves at `now`, if it is in the table, has not expired, and (when
    /// single-use) has not been used. A single-use token is recorded as used before this
    /// returns; if that cannot be recorded, the token is refused.
    pub fn lookup(&self, token: &str, now: SystemTime) -> Result<Attested, AttestError> {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner()).clone();
        let digest = token_digest(token);
        let Some(entry) = table.by_digest.get(&digest) else {
            return Err(AttestError::Rejected("unknown join token".into()));
        };
        if let Some(expires) = entry.expires.filter(|at| now >= *at) {
            return Err(AttestError::Rejected(format!(
                "join token expired at {}",
                humantime::format_rfc3339_seconds(expires)
            )));
        }
        if entry.single_use {
            let Some(used) = &self.used else {
                return Err(AttestError::Unavailable(
                    "single-use join token but no state directory to record its use".into(),
                ));
            };
            let mut used = used.lock().unwrap_or_else(|e| e.into_inner());
            if used.contains(&digest) {
                return Err(AttestError::Rejected(
                    "single-use join token was already used".into(),
                ));
            }
            used.insert(digest).map_err(|e| {
                AttestError::Unavailable(format!(
                    "cannot record the use of a single-use join token: {e}"
                ))
            })?;
        }
        Ok(Attested {
            id: entry.id.clone(),
            pod: None,
            pod_uid: None,
            node: None,
        })
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const T1: &str = "0123456789abcdef0123";
    const T2: &str = "fedcba9876543210fedc";

    fn td() -> TrustDomain {
        TrustDomain::default()
    }

    fn control_plane() -> SpiffeId {
        SpiffeId::parse("spiffe://cluster.local/ns/trellis-system/sa/trellis-control-plane")
            .unwrap()
    }

    /// Writes a private (0600) token file, as an operator should.
    fn write_private(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    fn load(path: &Path, state_dir: Option<&Path>) -> Result<JoinTokens, JoinTokenError> {
        JoinTokens::load(path, td(), control_plane(), state_dir)
    }

    #[test]
    fn a_listed_token_proves_its_identity_and_others_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        write_private(
            &path,
            &format!(
                "# comment\n{T1} ns/shop/sa/frontend\n\n{T2} spiffe://cluster.local/ns/shop/sa/backend # x\n"
            ),
        );
        let tokens = load(&path, None).unwrap();
        let now = SystemTime::now();
        assert_eq!(tokens.len(), 2);
        assert_eq!(
            tokens.lookup(T1, now).unwrap().id.to_string(),
            "spiffe://cluster.local/ns/shop/sa/frontend"
        );
        assert_eq!(
            tokens.lookup(T2, now).unwrap().id.to_string(),
            "spiffe://cluster.local/ns/shop/sa/backend"
        );
        assert_eq!(
            tokens.lookup("not-a-token-at-all", now),
            Err(AttestError::Rejected("unknown join token".into()))
        );
    }

    #[test]
    fn a_bad_line_is_reported_with_the_file_and_line_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        write_private(&path, &format!("{T1} ns/a/sa/b\nshort ns/a/sa/b\n"));
        let err = load(&path, None).unwrap_err().to_string();
        assert!(
            err.ends_with("tokens:2: token is 5 characters; at least 16 are required"),
            "{err}"
        );
    }

    #[test]
    fn a_token_file_other_users_may_read_or_change_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        write_private(&path, &format!("{T1} ns/a/sa/b\n"));
        for (mode, what) in [
            (0o644, "can read it"),
            (0o602, "can change it"),
            (0o666, "can read and change it"),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = load(&path, None).unwrap_err().to_string();
            assert!(err.contains(&format!("has mode {mode:04o}")), "{err}");
            assert!(err.contains(what), "{err}");
            assert!(
                err.contains(&format!("chmod 600 {}", path.display())),
                "{err}"
            );
        }
        // Group access is the operator's choice (a Secret mounted with an fsGroup is 0440).
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(load(&path, None).is_ok());
    }

    #[test]
    fn a_chmod_that_opens_the_file_is_noticed_on_reload_and_the_last_good_table_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        write_private(&path, &format!("{T1} ns/a/sa/one\n"));
        let tokens = load(&path, None).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = tokens.reload_if_changed().unwrap_err();
        assert!(
            matches!(err, JoinTokenError::Permissions { mode: 0o644, .. }),
            "{err}"
        );
        assert!(tokens.lookup(T1, SystemTime::now()).is_ok());
    }

    #[test]
    fn an_expired_token_is_refused_from_its_expiry_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        write_private(
            &path,
            &format!("{T1} ns/a/sa/b expires=2026-07-01T00:00:00Z\n"),
        );
        let tokens = load(&path, None).unwrap();
        let expiry = humantime::parse_rfc3339("2026-07-01T00:00:00Z").unwrap();
        assert!(tokens.lookup(T1, expiry - Duration::from_secs(1)).is_ok());
        assert_eq!(
            tokens.lookup(T1, expiry),
            Err(AttestError::Rejected(
                "join token expired at 2026-07-01T00:00:00Z".into()
            ))
        );
    }

    #[test]
    fn a_single_use_token_works_once_even_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let state = dir.path().join("state");
        write_private(
            &path,
            &format!("{T1} ns/a/sa/b single-use\n{T2} ns/a/sa/c\n"),
        );
        let now = SystemTime::now();
        let tokens = load(&path, Some(&state)).unwrap();
        assert!(tokens.lookup(T1, now).is_ok());
        let again = Err(AttestError::Rejected(
            "single-use join token was already used".into(),
        ));
        assert_eq!(tokens.lookup(T1, now), again);
        assert!(tokens.lookup(T2, now).is_ok() && tokens.lookup(T2, now).is_ok());
        drop(tokens);

        let restarted = load(&path, Some(&state)).unwrap();
        assert_eq!(restarted.lookup(T1, now), again);
        let record =
            std::fs::read_to_string(state.join(super::super::used_tokens::FILE_NAME)).unwrap();
        assert!(!record.contains(T1), "the token itself is never written");
        assert_eq!(record.lines().count(), 1);
    }

    #[test]
    fn single_use_tokens_without_a_state_directory_stop_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        write_private(&path, &format!("{T1} ns/a/sa/b single-use\n"));
        let err = load(&path, None).unwrap_err().to_string();
        assert!(err.contains("pass --state-dir"), "{err}");
    }

    #[test]
    fn a_changed_file_is_reloaded_and_a_broken_one_keeps_the_last_good_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let now = SystemTime::now();
        write_private(&path, &format!("{T1} ns/a/sa/one\n"));
        let tokens = load(&path, None).unwrap();
        assert!(
            !tokens.reload_if_changed().unwrap(),
            "unchanged file is not re-read"
        );

        write_private(&path, &format!("{T2} ns/a/sa/two\n# longer now\n"));
        assert!(tokens.reload_if_changed().unwrap());
        assert!(
            tokens.lookup(T1, now).is_err(),
            "removed token no longer works"
        );
        assert_eq!(
            tokens.lookup(T2, now).unwrap().id.service_account(),
            Some("two")
        );

        write_private(&path, "garbage line that is not valid at all\n");
        assert!(tokens.reload_if_changed().is_err());
        assert!(
            tokens.lookup(T2, now).is_ok(),
            "last good table stays in force"
        );
    }

    #[test]
    fn a_missing_file_stops_the_start() {
        let err = load(Path::new("/nonexistent/tokens"), None).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/tokens"), "{err}");
    }
}
