//! Join tokens for local runs and hosts outside Kubernetes: a file maps SHA-256 hashes of
//! tokens to the SPIFFE ID each token authenticates as. Only hashes are stored, so the file
//! reveals no usable token. It is re-read when it changes; a bad edit keeps the last good set.
//!
//! Format, one entry a line (`#` starts a comment):
//!
//! ```text
//! sha256:<64 hex digits> spiffe://cluster.local/ns/shop/sa/web
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use warden_core::SpiffeId;

/// Why the join-token file could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinTokenError {
    /// The file could not be read.
    #[error("{path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// A line is malformed.
    #[error("{path}:{line}: {reason}")]
    Syntax {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// The SHA-256 of a token as 64 lowercase hex digits.
pub fn token_hash(token: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A new random token (256 bits, hex) and the file line that admits it as `id`.
pub fn new_token(id: &SpiffeId) -> (String, String) {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random number generator failed");
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let line = format!("sha256:{} {id}\n", token_hash(&token));
    (token, line)
}

/// Parses a join-token file's text; `path` names it in errors.
pub fn parse(text: &str, path: &str) -> Result<HashMap<String, SpiffeId>, JoinTokenError> {
    let mut map = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let err = |reason: String| JoinTokenError::Syntax {
            path: path.to_string(),
            line: i + 1,
            reason,
        };
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(hash), Some(id), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(err("expected \"sha256:<hex> <spiffe-id>\"".into()));
        };
        let hex = hash
            .strip_prefix("sha256:")
            .ok_or_else(|| err("the hash must start with \"sha256:\"".into()))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err("the hash must be 64 hex digits".into()));
        }
        let id = SpiffeId::parse(id).map_err(|e| err(e.to_string()))?;
        if map.insert(hex.to_ascii_lowercase(), id).is_some() {
            return Err(err("the same token hash appears twice".into()));
        }
    }
    Ok(map)
}

#[derive(Debug)]
struct Loaded {
    tokens: HashMap<String, SpiffeId>,
    stamp: Option<(SystemTime, u64)>,
    checked: Instant,
}

/// The join-token file, re-read when its modification time or size changes.
#[derive(Debug)]
pub struct JoinTokens {
    path: PathBuf,
    recheck: Duration,
    loaded: Mutex<Loaded>,
}

impl JoinTokens {
    /// Loads the file; it must be valid at start-up. `recheck` bounds how often it is stat'ed.
    pub fn load(path: &Path, recheck: Duration) -> Result<Self, JoinTokenError> {
        let (tokens, stamp) = read(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            recheck,
            loaded: Mutex::new(Loaded {
                tokens,
                stamp,
                checked: Instant::now(),
            }),
        })
    }

    /// The identity a token admits, if any.
    pub fn lookup(&self, token: &str) -> Option<SpiffeId> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if loaded.checked.elapsed() >= self.recheck {
            loaded.checked = Instant::now();
            if stamp_of(&self.path) != loaded.stamp {
                match read(&self.path) {
                    Ok((tokens, stamp)) => {
                        tracing::info!(path = %self.path.display(), entries = tokens.len(), "join tokens reloaded");
                        loaded.tokens = tokens;
                        loaded.stamp = stamp;
                    }
                    Err(e) => {
                        // Keep the last good set; try again at the next change.
                        tracing::error!(error = %e, "join-token file invalid; keeping the last good one");
                        loaded.stamp = stamp_of(&self.path);
                    }
                }
            }
        }
        loaded.tokens.get(&token_hash(token)).cloned()
    }
}

fn stamp_of(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

type ReadResult = (HashMap<String, SpiffeId>, Option<(SystemTime, u64)>);

fn read(path: &Path) -> Result<ReadResult, JoinTokenError> {
    let stamp = stamp_of(path);
    let text = std::fs::read_to_string(path).map_err(|e| JoinTokenError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok((parse(&text, &path.display().to_string())?, stamp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let id = "spiffe://cluster.local/ns/a/sa/b";
        let h = "ab".repeat(32);
        let ok = format!("# comment\n\nsha256:{h} {id}   # trailing comment\n");
        assert_eq!(parse(&ok, "f").unwrap().len(), 1);
        let bad = [
            (
                format!("{h} {id}"),
                "f:1: the hash must start with \"sha256:\"",
            ),
            (
                format!("sha256:abc {id}"),
                "f:1: the hash must be 64 hex digits",
            ),
            (
                format!("sha256:{h}"),
                "f:1: expected \"sha256:<hex> <spiffe-id>\"",
            ),
            (format!("sha256:{h} {id} extra"), "f:1: expected"),
            (
                format!("\nsha256:{h} spiffe://X/y"),
                "f:2: invalid SPIFFE ID",
            ),
            (
                format!("sha256:{h} {id}\nsha256:{h} {id}"),
                "f:2: the same token hash",
            ),
            (
                format!("sha256:{} {id}", "zz".repeat(32)),
                "f:1: the hash must be 64 hex",
            ),
        ];
        for (text, want) in bad {
            let got = parse(&text, "f").unwrap_err().to_string();
            assert!(got.starts_with(want), "{text:?}: {got}");
        }
    }

    #[test]
    fn new_tokens_are_admitted_and_reloaded_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let a = SpiffeId::parse("spiffe://cluster.local/ns/a/sa/a").unwrap();
        let b = SpiffeId::parse("spiffe://cluster.local/ns/b/sa/b").unwrap();
        let (token_a, line_a) = new_token(&a);
        let (token_b, line_b) = new_token(&b);
        assert_eq!(token_a.len(), 64);
        assert!(
            !line_a.contains(&token_a),
            "the file never holds the token itself"
        );
        std::fs::write(&path, &line_a).unwrap();
        let tokens = JoinTokens::load(&path, Duration::ZERO).unwrap();
        assert_eq!(tokens.lookup(&token_a), Some(a.clone()));
        assert_eq!(tokens.lookup(&token_b), None);

        std::fs::write(&path, format!("{line_a}{line_b}")).unwrap();
        assert_eq!(tokens.lookup(&token_b), Some(b), "re-read after a change");

        // A broken edit keeps the last good set.
        std::fs::write(&path, "garbage that is longer than before, surely\n").unwrap();
        assert_eq!(tokens.lookup(&token_a), Some(a));
        // Removing a line revokes the token.
        std::fs::write(&path, line_b).unwrap();
        assert_eq!(tokens.lookup(&token_a), None);
    }
}
