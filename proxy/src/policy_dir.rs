//! Policies from a directory (the mounted `warden-policy` ConfigMap), re-read when it
//! changes. A bad file never takes effect: the last good set stays, and the error is
//! logged, counted (`warden_policy_reloads_total{result}`) and shown on `/ready`.
//!
//! Only `*.yaml` / `*.yml` files are read; names starting with `.` are skipped (a
//! ConfigMap's `..data` machinery); a symlink is followed only if it stays inside the
//! directory (ConfigMaps are symlinks into `..data`), and a file over 1 MiB is refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use warden_core::policy::evaluate::PolicySet;
use warden_core::policy::{self, AuthorizationPolicy};

/// The largest policy file read.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// The policy loader's state, for `/ready`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyStatus {
    /// Policies in force.
    pub policies: usize,
    /// The last reload's error, while the last good set stays in force.
    pub error: Option<String>,
    /// With a control plane: the snapshot in force and the stream's state.
    pub snapshot: Option<SnapshotStatus>,
}

/// The control-plane snapshot in force, for `/ready`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotStatus {
    /// The snapshot's version.
    pub version: String,
    /// When it arrived.
    pub received: std::time::Instant,
    /// The controller it came from, while the stream is up; `None` while reconnecting.
    pub connected_to: Option<String>,
}

/// Whether a directory entry named `name` is a policy file: `*.yaml` or `*.yml`, not hidden
/// (a ConfigMap volume's `..data` and editors' swap files are not).
fn is_policy_file(name: &str) -> bool {
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// The files to read, in name order.
fn policy_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let root = dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let entries = std::fs::read_dir(&root).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        if !is_policy_file(&entry.file_name().to_string_lossy()) {
            continue;
        }
        let path = entry.path();
        let real = path
            .canonicalize()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if !real.starts_with(&root) {
            return Err(format!(
                "{}: a symlink out of the policy directory (to {}) is refused",
                path.display(),
                real.display()
            ));
        }
        let meta = std::fs::metadata(&real).map_err(|e| format!("{}: {e}", path.display()))?;
        if !meta.is_file() {
            continue;
        }
        if meta.len() > MAX_FILE_BYTES {
            return Err(format!(
                "{}: {} bytes, more than the {MAX_FILE_BYTES} allowed",
                path.display(),
                meta.len()
            ));
        }
        files.push(path);
    }
    files.sort();
    Ok(files)
}

/// Reads and validates every policy file of `dir`.
pub fn load(dir: &Path) -> Result<Vec<AuthorizationPolicy>, String> {
    let mut all = Vec::new();
    for path in policy_files(dir)? {
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        all.extend(policy::parse(&text, &name).map_err(|e| e.to_string())?);
    }
    Ok(all)
}

/// One version of the directory (see [`fingerprint`]).
type Fingerprint = Option<Vec<(PathBuf, u64, Option<SystemTime>)>>;

/// Whether to read the directory at a check that found it at `now`, the check before at
/// `last`, with `loaded` in force: when it changed, and the check before saw the same. A
/// file being written (an editor or `cp` truncates it first, a slow producer writes in
/// pieces) changes between checks, and read half-written, a file of DENY rules could
/// parse as none and drop them until the next check.
fn due(loaded: &Fingerprint, last: &Fingerprint, now: &Fingerprint) -> bool {
    now != loaded && now == last
}

/// The directory's state between checks: the version in force and the one the last check saw.
#[derive(Debug)]
struct Versions {
    loaded: Fingerprint,
    last: Fingerprint,
}

impl Versions {
    /// One check: reads the directory with `read` when it changed and has settled (see
    /// [`due`]), and returns what was read, unless the directory changed while it was being
    /// read (that version is read again once it settles).
    fn check<T>(&mut self, dir: &Path, read: impl FnOnce(&Path) -> T) -> Option<T> {
        let now = fingerprint(dir);
        let is_due = due(&self.loaded, &self.last, &now);
        self.last = now;
        if !is_due {
            return None;
        }
        let read = read(dir);
        if fingerprint(dir) != self.last {
            return None;
        }
        self.loaded = self.last.clone();
        Some(read)
    }
}

/// What identifies a version of the directory: each policy file's resolved path, size and
/// mtime; `None` while the directory cannot be read (so its appearing, even empty, is a
/// change).
fn fingerprint(dir: &Path) -> Fingerprint {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut files: Vec<_> = entries
        .flatten()
        .filter(|e| is_policy_file(&e.file_name().to_string_lossy()))
        .filter_map(|e| {
            let real = e.path().canonicalize().ok()?;
            let meta = std::fs::metadata(&real).ok()?;
            Some((real, meta.len(), meta.modified().ok()))
        })
        .collect();
    files.sort();
    Some(files)
}

/// Policies kept current from a directory.
#[derive(Debug, Clone)]
pub struct WatchedPolicies {
    /// The policy set in force.
    pub policies: watch::Receiver<Arc<PolicySet>>,
    /// The loader's state.
    pub status: watch::Receiver<PolicyStatus>,
}

fn record(result: &'static str) {
    metrics::counter!("warden_policy_reloads_total", "result" => result).increment(1);
}

/// Loads `dir` now (an unusable directory at start means no good set yet: everything is
/// denied and the proxy is not ready until it loads) and re-reads it every `interval` when it
/// changed, until `shutdown`.
pub fn watch(dir: PathBuf, interval: Duration, shutdown: CancellationToken) -> WatchedPolicies {
    metrics::describe_counter!(
        "warden_policy_reloads_total",
        "Loads of the policy directory, by result (success, failure: the last good set stays)."
    );
    for result in ["success", "failure"] {
        metrics::counter!("warden_policy_reloads_total", "result" => result).increment(0);
    }
    // The fingerprint is taken with the initial load, so an edit made right after is seen.
    let loaded = fingerprint(&dir);
    let mut versions = Versions {
        last: loaded.clone(),
        loaded,
    };
    let (initial, status) = match load(&dir) {
        Ok(policies) => {
            record("success");
            let status = PolicyStatus {
                policies: policies.len(),
                ..Default::default()
            };
            (PolicySet::new(policies), status)
        }
        Err(error) => {
            record("failure");
            tracing::error!(%error, "policies did not load; denying everything and not ready until they do");
            (
                PolicySet::not_loaded(),
                PolicyStatus {
                    error: Some(error),
                    ..Default::default()
                },
            )
        }
    };
    let (set_tx, set_rx) = watch::channel(Arc::new(initial));
    let (status_tx, status_rx) = watch::channel(status);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let Some(loaded) = versions.check(&dir, load) else {
                continue;
            };
            match loaded {
                Ok(policies) => {
                    record("success");
                    tracing::info!(dir = %dir.display(), policies = policies.len(), "policies reloaded");
                    let count = policies.len();
                    // The set first: a status change makes /ready look at the set.
                    set_tx.send_replace(Arc::new(PolicySet::new(policies)));
                    status_tx.send_replace(PolicyStatus {
                        policies: count,
                        error: None,
                        snapshot: None,
                    });
                }
                Err(error) => {
                    record("failure");
                    let kept = set_tx.borrow().policies().len();
                    tracing::error!(%error, kept, "policy reload failed; keeping the last good policies");
                    status_tx.send_replace(PolicyStatus {
                        policies: kept,
                        error: Some(error),
                        snapshot: None,
                    });
                }
            }
        }
    });
    WatchedPolicies {
        policies: set_rx,
        status: status_rx,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALLOW: &str = "apiVersion: warden.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: shop}\nspec: {action: ALLOW, rules: [{}]}\n";

    #[test]
    fn loading_reads_policy_files_only_and_refuses_escapes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), ALLOW).unwrap();
        std::fs::write(
            dir.path().join("b.yml"),
            ALLOW.replace("name: a", "name: b"),
        )
        .unwrap();
        std::fs::write(dir.path().join("README.md"), "not a policy").unwrap();
        std::fs::create_dir(dir.path().join("..data")).unwrap();
        std::fs::write(dir.path().join("..data/c.yaml"), "garbage").unwrap();
        assert_eq!(load(dir.path()).unwrap().len(), 2);

        // A ConfigMap-style symlink inside the directory is followed.
        std::os::unix::fs::symlink("..data/c.yaml", dir.path().join("c.yaml")).unwrap();
        std::fs::write(
            dir.path().join("..data/c.yaml"),
            ALLOW.replace("name: a", "name: c"),
        )
        .unwrap();
        assert_eq!(load(dir.path()).unwrap().len(), 3);

        // A symlink out of the directory is refused, naming it.
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(outside.path(), ALLOW).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("evil.yaml")).unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(
            err.contains("evil.yaml") && err.contains("out of the policy directory"),
            "{err}"
        );
        std::fs::remove_file(dir.path().join("evil.yaml")).unwrap();

        // Huge files and bad policies name the file.
        std::fs::write(
            dir.path().join("huge.yaml"),
            vec![b'#'; MAX_FILE_BYTES as usize + 1],
        )
        .unwrap();
        assert!(load(dir.path()).unwrap_err().contains("huge.yaml"));
        std::fs::remove_file(dir.path().join("huge.yaml")).unwrap();
        std::fs::write(
            dir.path().join("bad.yaml"),
            ALLOW.replace("ALLOW", "PERMIT"),
        )
        .unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(
            err.starts_with("bad.yaml: document 1: field spec.action"),
            "{err}"
        );
    }

    /// Replaces `path` with `contents` in one step (written beside it, then renamed), as a
    /// ConfigMap volume changes: the watcher never reads it half-written.
    fn replace(path: &Path, contents: &str) {
        let staged = path.with_extension("staged");
        std::fs::write(&staged, contents).unwrap();
        std::fs::rename(&staged, path).unwrap();
    }

    #[test]
    fn a_change_is_read_once_two_checks_in_a_row_see_it() {
        let version = |size: u64| Some(vec![(PathBuf::from("/p/a.yaml"), size, None)]);
        let (a, b, c) = (version(10), version(20), version(30));
        let cases = [
            ("unchanged", &a, &a, &a, false),
            ("changed, first seen now", &a, &a, &b, false),
            ("changed, the same at the check before", &a, &b, &b, true),
            ("still being written", &a, &b, &c, false),
            ("changed back before it settled", &a, &b, &a, false),
            ("the directory appeared", &None, &a, &a, true),
            ("the directory went away", &a, &None, &None, true),
        ];
        for (name, loaded, last, now, want) in cases {
            assert_eq!(due(loaded, last, now), want, "{name}");
        }
    }

    #[test]
    fn a_directory_changed_while_being_read_is_read_again_once_settled() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), ALLOW).unwrap();
        let start = fingerprint(dir.path());
        let mut versions = Versions {
            loaded: start.clone(),
            last: start,
        };
        let two = format!("{ALLOW}---\n{}", ALLOW.replace("name: a", "name: z"));
        replace(&dir.path().join("a.yaml"), &two);
        assert!(
            versions.check(dir.path(), load).is_none(),
            "first seen: not settled yet"
        );
        // The second check reads it, and a writer replaces the file during that read (with a
        // size of its own, as timestamps may not tell versions apart within a clock tick).
        let last = ALLOW.replace("name: a", "name: last");
        let during = versions.check(dir.path(), |d| {
            let read = load(d);
            replace(&d.join("a.yaml"), &last);
            read
        });
        assert!(
            during.is_none(),
            "what was read is already stale: {during:?}"
        );
        assert!(
            versions.check(dir.path(), load).is_none(),
            "the new version must settle"
        );
        let settled = versions.check(dir.path(), load).expect("settled: read");
        let names: Vec<_> = settled
            .unwrap()
            .iter()
            .map(|p| p.metadata.name.clone())
            .collect();
        assert_eq!(names, ["last"], "the version on disk, not the stale read");
        assert!(
            versions.check(dir.path(), load).is_none(),
            "unchanged since"
        );
    }

    #[test]
    fn only_policy_files_count_as_changes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), ALLOW).unwrap();
        let before = fingerprint(dir.path());
        for other in ["notes.txt", ".a.yaml.swp", "a.yaml.staged"] {
            std::fs::write(dir.path().join(other), "busy").unwrap();
        }
        assert_eq!(fingerprint(dir.path()), before);
        std::fs::write(dir.path().join("b.yml"), ALLOW).unwrap();
        assert_ne!(fingerprint(dir.path()), before);
    }

    #[tokio::test]
    async fn a_bad_edit_keeps_the_last_good_set_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), ALLOW).unwrap();
        let stop = CancellationToken::new();
        let mut watched = watch(
            dir.path().to_path_buf(),
            Duration::from_millis(20),
            stop.clone(),
        );
        assert_eq!(watched.policies.borrow().policies().len(), 1);

        replace(&dir.path().join("a.yaml"), "spec: [broken");
        tokio::time::timeout(Duration::from_secs(5), watched.status.changed())
            .await
            .unwrap()
            .unwrap();
        let status = watched.status.borrow().clone();
        assert_eq!(status.policies, 1, "the last good set stays");
        assert!(
            status
                .error
                .as_deref()
                .is_some_and(|e| e.starts_with("a.yaml")),
            "{status:?}"
        );
        assert_eq!(watched.policies.borrow().policies().len(), 1);

        replace(
            &dir.path().join("a.yaml"),
            &format!("{ALLOW}---\n{}", ALLOW.replace("name: a", "name: z")),
        );
        tokio::time::timeout(Duration::from_secs(5), watched.policies.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(watched.policies.borrow().policies().len(), 2);
        assert_eq!(watched.status.borrow().error, None);
        stop.cancel();
    }

    #[tokio::test]
    async fn a_directory_that_appears_later_even_empty_is_loaded() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("policies");
        let stop = CancellationToken::new();
        let mut watched = watch(dir.clone(), Duration::from_millis(20), stop.clone());
        assert!(!watched.policies.borrow().is_loaded(), "nothing loaded yet");
        assert!(watched.status.borrow().error.is_some());

        std::fs::create_dir(&dir).unwrap();
        tokio::time::timeout(Duration::from_secs(5), watched.policies.changed())
            .await
            .unwrap()
            .unwrap();
        assert!(watched.policies.borrow().is_loaded());
        assert_eq!(watched.policies.borrow().policies().len(), 0);
        stop.cancel();
    }
}
