//! Single-use join tokens that have been used: their SHA-256 digests (never the tokens), one
//! lowercase hex line each in `<state-dir>/used-join-tokens` (mode 0600), appended and synced
//! before the token is accepted, so that a restart never makes a used token good again.
//!
//! Owns: [`UsedTokens`]. Which tokens are single-use is the token file's business
//! ([`super::join_token_file`]).

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The file's name in the state directory.
pub const FILE_NAME: &str = "used-join-tokens";

/// Why the used-token record could not be read or extended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct UsedTokensError {
    /// The record file.
    pub path: PathBuf,
    /// What went wrong.
    pub reason: String,
}

/// The digests of used single-use tokens, backed by a file.
#[derive(Debug)]
pub struct UsedTokens {
    /// The record file.
    path: PathBuf,
    /// What it holds.
    digests: HashSet<[u8; 32]>,
}

impl UsedTokens {
    /// Reads the record in `state_dir` (creating the directory, mode 0700, if needed). A line
    /// that is not a SHA-256 digest stops the start: a damaged record must not quietly make
    /// used tokens good again.
    pub fn open(state_dir: &Path) -> Result<Self, UsedTokensError> {
        let path = state_dir.join(FILE_NAME);
        let err = |reason: String| UsedTokensError {
            path: path.clone(),
            reason,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|e| err(format!("cannot create the state directory: {e}")))?;
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(err(e.to_string())),
        };
        let mut digests = HashSet::new();
        for (index, line) in text.lines().enumerate() {
            let digest = parse_hex(line.trim()).ok_or_else(|| {
                err(format!(
                    "line {}: expected 64 hexadecimal digits (a SHA-256 digest); restore the file from a backup, or remove the line if it is a half-written last line",
                    index + 1
                ))
            })?;
            digests.insert(digest);
        }
        Ok(Self { path, digests })
    }

    /// Whether `digest` has been used.
    pub fn contains(&self, digest: &[u8; 32]) -> bool {
        self.digests.contains(digest)
    }

    /// Records `digest` as used: on disk (synced) first, then in memory.
    pub fn insert(&mut self, digest: [u8; 32]) -> Result<(), UsedTokensError> {
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(|e| self.err(e))?;
        file.write_all(format!("{}\n", hex(&digest)).as_bytes())
            .and_then(|()| file.sync_data())
            .map_err(|e| self.err(e))?;
        self.digests.insert(digest);
        Ok(())
    }

    fn err(&self, e: std::io::Error) -> UsedTokensError {
        UsedTokensError {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_used_digest_is_remembered_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut used = UsedTokens::open(&state).unwrap();
        assert!(!used.contains(&[7; 32]));
        used.insert([7; 32]).unwrap();
        assert!(used.contains(&[7; 32]));
        let reopened = UsedTokens::open(&state).unwrap();
        assert!(reopened.contains(&[7; 32]));
        assert!(!reopened.contains(&[8; 32]));
        let text = fs::read_to_string(state.join(FILE_NAME)).unwrap();
        assert_eq!(text, format!("{}\n", "07".repeat(32)));
    }

    #[test]
    fn a_damaged_record_stops_the_start_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(FILE_NAME),
            format!("{}\nnot-a-digest\n", "ab".repeat(32)),
        )
        .unwrap();
        let err = UsedTokens::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("line 2: expected 64 hexadecimal digits"),
            "{err}"
        );
    }

    #[test]
    fn hex_digests_parse_only_when_they_are_64_hex_digits() {
        assert_eq!(parse_hex(&"0f".repeat(32)), Some([15; 32]));
        assert_eq!(parse_hex(&"0f".repeat(31)), None);
        assert_eq!(parse_hex(&"zz".repeat(32)), None);
        assert_eq!(parse_hex(&format!("é{}", "0".repeat(62))), None);
    }
}
