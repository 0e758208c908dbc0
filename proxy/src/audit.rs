//! Writing the audit log: one hash-chained JSON line per decision (the format and its
//! verification are `warden_core::audit`). A file log is appended to and its chain continued
//! across restarts.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use warden_core::audit::{AuditRecord, GENESIS};

/// Where records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditTarget {
    /// Standard output (logs go to standard error).
    Stdout,
    /// A file, appended to.
    File(PathBuf),
}

impl AuditTarget {
    /// `stdout`, `off` (`None`), or a path.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "off" => None,
            "stdout" | "-" => Some(Self::Stdout),
            path => Some(Self::File(PathBuf::from(path))),
        }
    }
}

struct Chain {
    sink: Box<dyn Write + Send>,
    seq: u64,
    prev: String,
}

/// The audit log.
pub struct AuditLog {
    chain: Mutex<Chain>,
    /// Whether allowed decisions are recorded too.
    pub log_allowed: bool,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("log_allowed", &self.log_allowed)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens the log; a file's existing chain is continued from its last record.
    pub fn open(target: &AuditTarget, log_allowed: bool) -> std::io::Result<Self> {
        let (sink, seq, prev): (Box<dyn Write + Send>, u64, String) = match target {
            AuditTarget::Stdout => (Box::new(std::io::stdout()), 0, GENESIS.to_string()),
            AuditTarget::File(path) => {
                let (seq, prev) = std::fs::read_to_string(path)
                    .ok()
                    .and_then(|text| {
                        let last = text
                            .lines()
                            .rev()
                            .find(|l| !l.trim().is_empty())?
                            .to_string();
                        let hash = last
                            .get(last.len().checked_sub(66)?..last.len() - 2)?
                            .to_string();
                        let value: serde_json::Value = serde_json::from_str(&last).ok()?;
                        Some((value.get("seq")?.as_u64()? + 1, hash))
                    })
                    .unwrap_or((0, GENESIS.to_string()));
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?;
                (Box::new(file), seq, prev)
            }
        };
        Ok(Self {
            chain: Mutex::new(Chain { sink, seq, prev }),
            log_allowed,
        })
    }

    /// Appends a record (its `seq` and `prev` are filled in here).
    pub fn record(&self, mut record: AuditRecord) {
        let mut chain = self.chain.lock().unwrap_or_else(|p| p.into_inner());
        record.seq = chain.seq;
        record.prev = chain.prev.clone();
        let (line, hash) = record.to_line();
        let written = chain
            .sink
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| chain.sink.flush());
        match written {
            Ok(()) => {
                chain.seq += 1;
                chain.prev = hash;
            }
            Err(e) => tracing::error!(error = %e, "cannot write the audit log"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(path: &str) -> AuditRecord {
        AuditRecord {
            seq: 0,
            time: "2026-11-22T12:00:00Z".into(),
            direction: "inbound".into(),
            client: None,
            client_addr: None,
            workload: "spiffe://cluster.local/ns/a/sa/b".into(),
            port: 80,
            method: Some("GET".into()),
            path: Some(path.into()),
            decision: "deny".into(),
            policy: None,
            rule: None,
            reason: "no policy applies".into(),
            audit_policies: None,
            request_id: None,
            prev: String::new(),
        }
    }

    #[test]
    fn a_file_log_continues_its_chain_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let target = AuditTarget::File(path.clone());
        let log = AuditLog::open(&target, false).unwrap();
        log.record(record("/one"));
        log.record(record("/two"));
        drop(log);
        let log = AuditLog::open(&target, false).unwrap();
        log.record(record("/three"));
        let text = std::fs::read_to_string(&path).unwrap();
        let verified = warden_core::audit::verify(&text).unwrap();
        assert_eq!(
            (verified.records, verified.chains),
            (3, 1),
            "one chain across the restart"
        );
        assert_eq!(AuditTarget::parse("off"), None);
        assert_eq!(AuditTarget::parse("stdout"), Some(AuditTarget::Stdout));
    }
}
