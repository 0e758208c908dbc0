//! Join tokens for local runs and hosts outside Kubernetes: a file maps SHA-256 hashes of
//! tokens to the SPIFFE ID each token authenticates as. Only hashes are stored, so the file
//! reveals no usable token. It is re-read when it changes; a bad edit keeps the last good set.
//!
//! Format, one entry a line (`#` starts a comment):
//!
//! ```text
//! sha256:<64 hex digits> spiffe://cluster.local/ns/shop/sa/web expires=2030-01-01T00:00:00Z
//! sha256:<64 hex digits> spiffe://cluster.local/ns/shop/sa/db expires=2030-01-01T00:00:00Z single-use
//! ```
//!
//! Every entry expires: the format has no version, and an entry without `expires=` (written
//! before tokens expired) fails the whole file closed, naming the file, line and entry and
//! asking for a new token. A `single-use` token admits one issuance: its hash is then
//! recorded in `<file>.used`, which the service owns (the token file stays the operator's),
//! written atomically and synced before the certificate is returned, and read at start, so a
//! used token stays used across restarts. A token admits a workload once; its renewals are
//! authenticated by its current SVID (see [`crate::authn`]).

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use warden_core::SpiffeId;

use crate::timestamp::rfc3339_seconds;

/// How long a new token is valid unless told otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

/// The flag of a single-use entry.
const SINGLE_USE: &str = "single-use";

/// Why the join-token file (or its used-token record) could not be used.
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
    /// The used-token record could not be written.
    #[error("cannot record a used join token in {path}: {reason}")]
    Write {
        /// The record file.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// A new token's lifetime is zero or ends past the year 9999.
    #[error("invalid join-token TTL: {0}")]
    Ttl(String),
}

/// Why a presented token is not accepted. The token itself is never part of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No entry has its hash.
    #[error("unknown join token")]
    Unknown,
    /// Its entry's `expires` has passed.
    #[error("join token expired")]
    Expired,
    /// A single-use token that already admitted a workload.
    #[error("join token already used")]
    Used,
}

/// Why a single-use token could not be redeemed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedeemError {
    /// Another request redeemed it first.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The use could not be recorded durably, so nothing may be issued.
    #[error(transparent)]
    Record(#[from] JoinTokenError),
}

/// One entry of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The identity the token admits.
    pub id: SpiffeId,
    /// When the token stops being accepted.
    pub expires: SystemTime,
    /// Whether it admits one issuance only.
    pub single_use: bool,
}

/// How a new token may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenOptions {
    /// How long it is accepted ([`DEFAULT_TTL`]).
    pub ttl: Duration,
    /// Whether it admits one issuance only (no).
    pub single_use: bool,
}

impl Default for TokenOptions {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_TTL,
            single_use: false,
        }
    }
}

/// The SHA-256 of a token as 64 lowercase hex digits.
pub fn token_hash(token: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A new random token (256 bits, hex) and the file line that admits it as `id`, valid for
/// [`DEFAULT_TTL`] and reusable within it.
pub fn new_token(id: &SpiffeId) -> (String, String) {
    token_and_line(id, OffsetDateTime::now_utc() + DEFAULT_TTL, false)
}

/// A new random token (256 bits, hex) and the file line that admits it as `id` as `options`
/// say.
pub fn new_token_with(
    id: &SpiffeId,
    options: &TokenOptions,
) -> Result<(String, String), JoinTokenError> {
    let expires = OffsetDateTime::now_utc()
        .checked_add(time::Duration::try_from(options.ttl).unwrap_or(time::Duration::MAX))
        .filter(|t| !options.ttl.is_zero() && t.year() <= 9999)
        .ok_or_else(|| {
            JoinTokenError::Ttl(format!(
                "{}: it must be positive and end before the year 10000",
                warden_core::duration::format_duration(options.ttl)
            ))
        })?;
    Ok(token_and_line(id, expires, options.single_use))
}

fn token_and_line(id: &SpiffeId, expires: OffsetDateTime, single_use: bool) -> (String, String) {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random number generator failed");
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let flag = if single_use {
        format!(" {SINGLE_USE}")
    } else {
        String::new()
    };
    let line = format!(
        "sha256:{} {id} expires={}{flag}\n",
        token_hash(&token),
        rfc3339_seconds(expires)
    );
    (token, line)
}

/// The 64 hex digits of a `sha256:<hex>` field, lowercased.
fn parse_hash(field: &str) -> Result<String, String> {
    let hex = field
        .strip_prefix("sha256:")
        .ok_or("the hash must start with \"sha256:\"")?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("the hash must be 64 hex digits".into());
    }
    Ok(hex.to_ascii_lowercase())
}

/// The non-empty lines of `text` without comments, with their 1-based numbers.
fn content_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter_map(|(i, raw)| {
        let line = raw.split('#').next().unwrap_or("").trim();
        (!line.is_empty()).then_some((i + 1, line))
    })
}

/// Parses a join-token file's text; `path` names it in errors.
pub fn parse(text: &str, path: &str) -> Result<HashMap<String, Entry>, JoinTokenError> {
    let mut map = HashMap::new();
    for (number, line) in content_lines(text) {
        let err = |reason: String| JoinTokenError::Syntax {
            path: path.to_string(),
            line: number,
            reason,
        };
        let mut fields = line.split_whitespace();
        let (Some(hash), Some(id)) = (fields.next(), fields.next()) else {
            return Err(err(
                "expected \"sha256:<hex> <spiffe-id> expires=<RFC 3339 time> [single-use]\"".into(),
            ));
        };
        let hex = parse_hash(hash).map_err(err)?;
        let id = SpiffeId::parse(id).map_err(|e| err(e.to_string()))?;
        let mut expires = None;
        let mut single_use = false;
        for option in fields {
            if let Some(value) = option.strip_prefix("expires=") {
                let at = OffsetDateTime::parse(value, &Rfc3339).map_err(|e| {
                    err(format!(
                        "expires={value}: not an RFC 3339 time such as 2030-01-01T00:00:00Z ({e})"
                    ))
                })?;
                if expires.replace(SystemTime::from(at)).is_some() {
                    return Err(err("\"expires=\" appears twice".into()));
                }
            } else if option == SINGLE_USE {
                if std::mem::replace(&mut single_use, true) {
                    return Err(err("\"single-use\" appears twice".into()));
                }
            } else {
                return Err(err(format!(
                    "unknown option {option:?}; expected expires=<RFC 3339 time> or single-use"
                )));
            }
        }
        let Some(expires) = expires else {
            // Entries from before tokens expired: fail closed, and say how to get out.
            return Err(err(format!(
                "the entry sha256:{}… for {id} has no \"expires=\"; every join token must expire: \
                 remove this line and create a new token with `warden ca join-token --tokens {path} --id {id}`",
                &hex[..12]
            )));
        };
        let entry = Entry {
            id,
            expires,
            single_use,
        };
        if map.insert(hex, entry).is_some() {
            return Err(err("the same token hash appears twice".into()));
        }
    }
    Ok(map)
}

/// Parses the used-token record: one `sha256:<hex>` a line.
fn parse_used(text: &str, path: &str) -> Result<HashSet<String>, JoinTokenError> {
    content_lines(text)
        .map(|(number, line)| {
            parse_hash(line).map_err(|reason| JoinTokenError::Syntax {
                path: path.to_string(),
                line: number,
                reason,
            })
        })
        .collect()
}

/// Where the used single-use tokens of the join-token file `tokens` are recorded:
/// `<tokens>.used` next to it.
pub fn used_path(tokens: &Path) -> PathBuf {
    let mut name = OsString::from(tokens.as_os_str());
    name.push(".used");
    PathBuf::from(name)
}

/// A token that passed [`JoinTokens::check`]: whom it admits, and whether issuing to it must
/// first redeem it with [`JoinTokens::redeem`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// The identity the token admits.
    pub id: SpiffeId,
    /// The token's hash when it is single-use.
    single_use: Option<String>,
}

impl Admission {
    /// Whether the token admits one issuance only.
    pub fn single_use(&self) -> bool {
        self.single_use.is_some()
    }
}

#[derive(Debug)]
struct Loaded {
    entries: HashMap<String, Entry>,
    stamp: Option<(SystemTime, u64)>,
    checked: Instant,
}

/// The join-token file, re-read when its modification time or size changes, and the record
/// of used single-use tokens.
#[derive(Debug)]
pub struct JoinTokens {
    path: PathBuf,
    used_path: PathBuf,
    recheck: Duration,
    loaded: Mutex<Loaded>,
    /// Hashes of redeemed single-use tokens. Its lock is held from the check to the durable
    /// write, so concurrent redemptions of one token are serialized and exactly one wins.
    used: Mutex<HashSet<String>>,
}

impl JoinTokens {
    /// Loads the file and its used-token record (absent means none used); both must be
    /// valid at start-up. `recheck` bounds how often the file is stat'ed.
    pub fn load(path: &Path, recheck: Duration) -> Result<Self, JoinTokenError> {
        let (entries, stamp) = read(path)?;
        let used_path = used_path(path);
        let used = match std::fs::read_to_string(&used_path) {
            Ok(text) => parse_used(&text, &used_path.display().to_string())?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashSet::new(),
            Err(e) => {
                return Err(JoinTokenError::Read {
                    path: used_path.display().to_string(),
                    reason: e.to_string(),
                })
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            used_path,
            recheck,
            loaded: Mutex::new(Loaded {
                entries,
                stamp,
                checked: Instant::now(),
            }),
            used: Mutex::new(used),
        })
    }

    /// Runs `f` on the current entries, re-reading the file first if it changed.
    fn with_entries<R>(&self, f: impl FnOnce(&HashMap<String, Entry>) -> R) -> R {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if loaded.checked.elapsed() >= self.recheck {
            loaded.checked = Instant::now();
            if stamp_of(&self.path) != loaded.stamp {
                match read(&self.path) {
                    Ok((entries, stamp)) => {
                        tracing::info!(path = %self.path.display(), entries = entries.len(), "join tokens reloaded");
                        loaded.entries = entries;
                        loaded.stamp = stamp;
                    }
                    Err(_) if is_missing(&self.path) => {
                        // Removed: the operator revoked every token (an atomic replace never
                        // leaves the file missing), so none is accepted until it returns.
                        tracing::warn!(path = %self.path.display(), "join-token file removed; no join token is accepted until it returns");
                        loaded.entries.clear();
                        loaded.stamp = None;
                    }
                    Err(e) => {
                        // Keep the last good set; try again at the next change.
                        tracing::error!(error = %e, "join-token file invalid; keeping the last good one");
                        loaded.stamp = stamp_of(&self.path);
                    }
                }
            }
        }
        f(&loaded.entries)
    }

    /// Whether `token` is accepted now, and as whom. A single-use token is not redeemed
    /// here: call [`JoinTokens::redeem`] once the certificate is ready.
    pub fn check(&self, token: &str) -> Result<Admission, Refusal> {
        let hash = token_hash(token);
        let entry = self
            .with_entries(|entries| entries.get(&hash).cloned())
            .ok_or(Refusal::Unknown)?;
        if SystemTime::now() >= entry.expires {
            return Err(Refusal::Expired);
        }
        if !entry.single_use {
            return Ok(Admission {
                id: entry.id,
                single_use: None,
            });
        }
        if self.lock_used().contains(&hash) {
            return Err(Refusal::Used);
        }
        Ok(Admission {
            id: entry.id,
            single_use: Some(hash),
        })
    }

    /// Records the use of a single-use token durably (`<file>.used`, replaced atomically);
    /// nothing to do for a reusable one. Of concurrent redemptions of one token exactly one
    /// succeeds; the others get [`Refusal::Used`].
    pub fn redeem(&self, admission: &Admission) -> Result<(), RedeemError> {
        let Some(hash) = &admission.single_use else {
            return Ok(());
        };
        let mut used = self.lock_used();
        if used.contains(hash) {
            return Err(Refusal::Used.into());
        }
        let mut sorted: Vec<&String> = used.iter().chain([hash]).collect();
        sorted.sort();
        let mut text = String::from(
            "# Single-use join tokens already redeemed, by hash. Written by `warden identity`; do not edit.\n",
        );
        for h in sorted {
            text.push_str(&format!("sha256:{h}\n"));
        }
        crate::ca::write_file(&self.used_path, text.as_bytes(), 0o600).map_err(|e| {
            JoinTokenError::Write {
                path: self.used_path.display().to_string(),
                reason: e.to_string(),
            }
        })?;
        used.insert(hash.clone());
        Ok(())
    }

    /// Whether some entry, expired or used included, names `id`. A workload admitted once
    /// renews with its SVID while this holds; removing every line for `id` evicts it.
    pub fn lists(&self, id: &SpiffeId) -> bool {
        self.with_entries(|entries| entries.values().any(|e| &e.id == id))
    }

    fn lock_used(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether `path` does not exist (not merely unreadable).
fn is_missing(path: &Path) -> bool {
    matches!(std::fs::metadata(path), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
}

fn stamp_of(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

type ReadResult = (HashMap<String, Entry>, Option<(SystemTime, u64)>);

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

    const FUTURE: &str = "expires=2999-01-01T00:00:00Z";

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn parse_table() {
        let id = "spiffe://cluster.local/ns/a/sa/b";
        let h = "ab".repeat(32);
        let ok = format!(
            "# comment\n\nsha256:{h} {id} {FUTURE}   # trailing comment\n\
             sha256:{} {id} expires=2030-06-01T12:00:00+02:00 single-use\n",
            "cd".repeat(32)
        );
        let parsed = parse(&ok, "f").unwrap();
        assert_eq!(parsed.len(), 2);
        assert!(!parsed[&h].single_use);
        let second = &parsed[&"cd".repeat(32)];
        assert!(second.single_use);
        let want = OffsetDateTime::parse("2030-06-01T10:00:00Z", &Rfc3339).unwrap();
        assert_eq!(second.expires, SystemTime::from(want));

        let bad = [
            (
                format!("{h} {id} {FUTURE}"),
                "f:1: the hash must start with \"sha256:\"",
            ),
            (
                format!("sha256:abc {id} {FUTURE}"),
                "f:1: the hash must be 64 hex digits",
            ),
            (format!("sha256:{h}"), "f:1: expected \"sha256:<hex> <spiffe-id>"),
            (format!("sha256:{h} {id} {FUTURE} extra"), "f:1: unknown option \"extra\""),
            (
                format!("\nsha256:{h} spiffe://X/y {FUTURE}"),
                "f:2: invalid SPIFFE ID",
            ),
            (
                format!("sha256:{h} {id} {FUTURE}\nsha256:{h} {id} {FUTURE}"),
                "f:2: the same token hash",
            ),
            (
                format!("sha256:{} {id} {FUTURE}", "zz".repeat(32)),
                "f:1: the hash must be 64 hex",
            ),
            (
                format!("sha256:{h} {id} expires=tomorrow"),
                "f:1: expires=tomorrow: not an RFC 3339 time",
            ),
            (
                format!("sha256:{h} {id} {FUTURE} {FUTURE}"),
                "f:1: \"expires=\" appears twice",
            ),
            (
                format!("sha256:{h} {id} {FUTURE} single-use single-use"),
                "f:1: \"single-use\" appears twice",
            ),
            (
                format!("sha256:{h} {id} single-use"),
                "f:1: the entry sha256:abababababab… for spiffe://cluster.local/ns/a/sa/b has no \"expires=\"",
            ),
        ];
        for (text, want) in bad {
            let got = parse(&text, "f").unwrap_err().to_string();
            assert!(got.starts_with(want), "{text:?}: {got}");
        }
    }

    #[test]
    fn entries_from_before_expiry_fail_closed_and_say_how_to_recreate_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let old = format!(
            "sha256:{} spiffe://cluster.local/ns/a/sa/b\n",
            "ab".repeat(32)
        );
        std::fs::write(&path, old).unwrap();
        let err = JoinTokens::load(&path, Duration::ZERO)
            .unwrap_err()
            .to_string();
        let file = path.display().to_string();
        for part in [
            format!("{file}:1:"),
            "sha256:abababababab…".to_string(),
            "no \"expires=\"".to_string(),
            format!("warden ca join-token --tokens {file} --id spiffe://cluster.local/ns/a/sa/b"),
        ] {
            assert!(err.contains(&part), "{part:?} missing from {err}");
        }
    }

    #[test]
    fn new_tokens_are_admitted_and_reloaded_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let a = id("spiffe://cluster.local/ns/a/sa/a");
        let b = id("spiffe://cluster.local/ns/b/sa/b");
        let (token_a, line_a) = new_token(&a);
        let (token_b, line_b) = new_token(&b);
        assert_eq!(token_a.len(), 64);
        assert!(
            !line_a.contains(&token_a),
            "the file never holds the token itself"
        );
        std::fs::write(&path, &line_a).unwrap();
        let tokens = JoinTokens::load(&path, Duration::ZERO).unwrap();
        let admitted = |token: &str| tokens.check(token).map(|a| a.id);
        assert_eq!(admitted(&token_a), Ok(a.clone()));
        assert_eq!(admitted(&token_b), Err(Refusal::Unknown));

        std::fs::write(&path, format!("{line_a}{line_b}")).unwrap();
        assert_eq!(admitted(&token_b), Ok(b.clone()), "re-read after a change");

        // A broken edit keeps the last good set.
        std::fs::write(&path, "garbage that is longer than before, surely\n").unwrap();
        assert_eq!(admitted(&token_a), Ok(a.clone()));
        assert!(tokens.lists(&a));
        // Removing a line revokes the token, and evicts its identity.
        std::fs::write(&path, line_b).unwrap();
        assert_eq!(admitted(&token_a), Err(Refusal::Unknown));
        assert!(!tokens.lists(&a));
        assert!(tokens.lists(&b));
        // Removing the file revokes every token, until it returns.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(admitted(&token_b), Err(Refusal::Unknown));
        assert!(!tokens.lists(&b));
        std::fs::write(&path, &line_a).unwrap();
        assert_eq!(admitted(&token_a), Ok(a.clone()));
    }

    #[test]
    fn new_token_lines_carry_the_expiry_and_the_single_use_flag() {
        let who = id("spiffe://cluster.local/ns/a/sa/a");
        let (_, line) = new_token(&who);
        let entry = parse(&line, "f").unwrap().into_values().next().unwrap();
        let left = entry.expires.duration_since(SystemTime::now()).unwrap();
        assert!(left <= DEFAULT_TTL && left > DEFAULT_TTL - Duration::from_secs(60));
        assert!(!entry.single_use);

        let options = TokenOptions {
            ttl: Duration::from_secs(3600),
            single_use: true,
        };
        let (_, line) = new_token_with(&who, &options).unwrap();
        assert!(line.ends_with(" single-use\n"), "{line}");
        let entry = parse(&line, "f").unwrap().into_values().next().unwrap();
        assert!(entry.single_use);
        assert!(entry.expires.duration_since(SystemTime::now()).unwrap() <= options.ttl);

        for ttl in [Duration::ZERO, Duration::from_secs(u64::MAX)] {
            let options = TokenOptions {
                ttl,
                single_use: false,
            };
            assert!(matches!(
                new_token_with(&who, &options),
                Err(JoinTokenError::Ttl(_))
            ));
        }
    }

    #[test]
    fn expired_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let who = "spiffe://cluster.local/ns/a/sa/a";
        std::fs::write(
            &path,
            format!(
                "sha256:{} {who} expires=2001-01-01T00:00:00Z\n",
                token_hash("old")
            ),
        )
        .unwrap();
        let tokens = JoinTokens::load(&path, Duration::ZERO).unwrap();
        assert_eq!(tokens.check("old"), Err(Refusal::Expired));
        assert!(
            tokens.lists(&id(who)),
            "an expired entry still lists its identity"
        );
    }

    /// A file with one single-use token, and the token.
    fn single_use_file(dir: &Path) -> (PathBuf, String) {
        let path = dir.join("tokens");
        let options = TokenOptions {
            single_use: true,
            ..TokenOptions::default()
        };
        let (token, line) =
            new_token_with(&id("spiffe://cluster.local/ns/a/sa/a"), &options).unwrap();
        std::fs::write(&path, line).unwrap();
        (path, token)
    }

    #[test]
    fn single_use_tokens_are_redeemed_once_also_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let (path, token) = single_use_file(dir.path());
        let tokens = JoinTokens::load(&path, Duration::ZERO).unwrap();
        let admission = tokens.check(&token).unwrap();
        assert!(admission.single_use());
        // Checking does not redeem.
        assert_eq!(tokens.check(&token), Ok(admission.clone()));
        tokens.redeem(&admission).unwrap();
        assert_eq!(tokens.check(&token), Err(Refusal::Used));
        assert_eq!(
            tokens.redeem(&admission),
            Err(RedeemError::Refused(Refusal::Used))
        );

        let record = std::fs::read_to_string(used_path(&path)).unwrap();
        assert!(record.contains(&token_hash(&token)));
        assert!(!record.contains(&token), "the record holds hashes only");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(used_path(&path)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);

        let restarted = JoinTokens::load(&path, Duration::ZERO).unwrap();
        assert_eq!(restarted.check(&token), Err(Refusal::Used));
    }

    #[test]
    fn of_concurrent_redemptions_exactly_one_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let (path, token) = single_use_file(dir.path());
        let tokens = JoinTokens::load(&path, Duration::ZERO).unwrap();
        let barrier = std::sync::Barrier::new(8);
        let won = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        let admission = tokens.check(&token);
                        barrier.wait();
                        admission.is_ok_and(|a| tokens.redeem(&a).is_ok())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .filter(|&ok| ok)
                .count()
        });
        assert_eq!(won, 1);
    }

    #[test]
    fn a_corrupt_used_record_fails_closed_and_an_unwritable_one_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let (path, token) = single_use_file(dir.path());
        std::fs::write(used_path(&path), "sha256:nothex\n").unwrap();
        let err = JoinTokens::load(&path, Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tokens.used:1: the hash must be 64 hex digits"),
            "{err}"
        );

        std::fs::remove_file(used_path(&path)).unwrap();
        let tokens = JoinTokens::load(&path, Duration::ZERO).unwrap();
        // A directory where the record goes: the write fails, the token stays unredeemed.
        std::fs::create_dir(used_path(&path)).unwrap();
        let admission = tokens.check(&token).unwrap();
        assert!(matches!(
            tokens.redeem(&admission),
            Err(RedeemError::Record(JoinTokenError::Write { .. }))
        ));
        assert!(tokens.check(&token).is_ok());
    }
}
