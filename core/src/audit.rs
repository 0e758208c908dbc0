//! The authorization audit log: one JSON line per decision, hash-chained so that a removed,
//! reordered or edited record is detectable.
//!
//! Each line is a JSON object whose last two fields are `prev` (the previous record's hash)
//! and `hash` (SHA-256, hex, of the line as written with `hash` set to 64 zeros). A chain
//! starts with `seq` 0 and `prev` all zeros; a restarted proxy writing to the same file
//! continues the chain.

use serde::{Deserialize, Serialize};

/// `prev` of the first record of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One decision, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the chain, from 0.
    pub seq: u64,
    /// When, RFC 3339 UTC.
    pub time: String,
    /// `inbound` (the proxy protects its own workload).
    pub direction: String,
    /// The caller's SPIFFE ID (`null` when unauthenticated).
    pub client: Option<String>,
    /// The caller's address.
    pub client_addr: Option<String>,
    /// The protected workload's SPIFFE ID.
    pub workload: String,
    /// The app port.
    pub port: u16,
    /// HTTP method, for HTTP.
    pub method: Option<String>,
    /// HTTP path (normalized), for HTTP.
    pub path: Option<String>,
    /// `allow`, `deny` or `audit`.
    pub decision: String,
    /// The deciding policy, `namespace/name`.
    pub policy: Option<String>,
    /// The deciding rule's index.
    pub rule: Option<usize>,
    /// Why.
    pub reason: String,
    /// For `audit`: the AUDIT policies that would have denied it.
    pub audit_policies: Option<Vec<String>>,
    /// The request id the client saw (`x-warden-request-id`).
    pub request_id: Option<String>,
    /// The previous record's hash (or [`GENESIS`]).
    pub prev: String,
}

fn sha256_hex(data: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl AuditRecord {
    /// The record as one line (no newline), with its hash; returns `(line, hash)`.
    pub fn to_line(&self) -> (String, String) {
        let body = serde_json::to_string(self).unwrap_or_else(|_| "{}".into());
        let body = body.strip_suffix('}').unwrap_or(&body);
        let unhashed = format!("{body},\"hash\":\"{GENESIS}\"}}");
        let hash = sha256_hex(unhashed.as_bytes());
        (format!("{body},\"hash\":\"{hash}\"}}"), hash)
    }
}

/// Where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct ChainBreak {
    /// 1-based line number of the first bad record.
    pub line: usize,
    /// What is wrong.
    pub problem: String,
}

/// What a successful verification saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Records checked.
    pub records: usize,
    /// Chains (a new chain starts when a proxy starts writing to a fresh log).
    pub chains: usize,
}

const HASH_FIELD: &str = ",\"hash\":\"";

/// Checks every line of an audit log; reports the first broken, edited or missing record.
pub fn verify(text: &str) -> Result<Verified, ChainBreak> {
    let mut previous: Option<(u64, String)> = None;
    let mut verified = Verified {
        records: 0,
        chains: 0,
    };
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        let broken = |problem: String| ChainBreak {
            line: lineno,
            problem,
        };
        if line.trim().is_empty() {
            continue;
        }
        let hash_at = line.len().checked_sub(HASH_FIELD.len() + 64 + 2);
        let hash = hash_at
            .filter(|&at| {
                line.is_char_boundary(at)
                    && line[at..].starts_with(HASH_FIELD)
                    && line.ends_with("\"}")
            })
            .map(|at| &line[at + HASH_FIELD.len()..line.len() - 2])
            .ok_or_else(|| broken("not an audit record (no trailing hash)".into()))?;
        let unhashed = format!("{}{GENESIS}\"}}", &line[..line.len() - 66]);
        if sha256_hex(unhashed.as_bytes()) != hash {
            return Err(broken(
                "the record was edited (its hash does not match its content)".into(),
            ));
        }
        let record: AuditRecord =
            serde_json::from_str(&format!("{}}}", &line[..hash_at.unwrap_or(0)]))
                .map_err(|e| broken(format!("not an audit record: {e}")))?;
        match &previous {
            _ if record.seq == 0 && record.prev == GENESIS => verified.chains += 1,
            None => {
                return Err(broken(format!(
                    "the chain starts at record {} (the records before it are missing)",
                    record.seq
                )))
            }
            Some((seq, hash)) => {
                if record.seq != seq + 1 {
                    return Err(broken(format!(
                        "records {} to {} are missing",
                        seq + 1,
                        record.seq.saturating_sub(1).max(seq + 1)
                    )));
                }
                if &record.prev != hash {
                    return Err(broken(format!(
                        "record {} does not follow record {seq}: a record was removed, reordered or edited",
                        record.seq
                    )));
                }
            }
        }
        previous = Some((record.seq, hash.to_string()));
        verified.records += 1;
    }
    Ok(verified)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<String> {
        let mut prev = GENESIS.to_string();
        (0..n)
            .map(|seq| {
                let record = AuditRecord {
                    seq,
                    time: "2026-11-22T12:00:00Z".into(),
                    direction: "inbound".into(),
                    client: Some("spiffe://cluster.local/ns/shop/sa/frontend".into()),
                    client_addr: Some("10.0.0.1:41000".into()),
                    workload: "spiffe://cluster.local/ns/shop/sa/backend".into(),
                    port: 8080,
                    method: Some("GET".into()),
                    path: Some(format!("/api/{seq}")),
                    decision: "deny".into(),
                    policy: Some("shop/p".into()),
                    rule: Some(0),
                    reason: "matched DENY policy shop/p rule 0".into(),
                    audit_policies: None,
                    request_id: Some(format!("{seq:016x}")),
                    prev: prev.clone(),
                };
                let (line, hash) = record.to_line();
                prev = hash;
                line
            })
            .collect()
    }

    #[test]
    fn an_intact_log_verifies() {
        let lines = chain(5);
        assert_eq!(
            verify(&lines.join("\n")),
            Ok(Verified {
                records: 5,
                chains: 1
            })
        );
        // A second chain (a proxy started on a fresh log, then the logs were concatenated).
        let both = format!("{}\n{}\n", lines.join("\n"), chain(2).join("\n"));
        assert_eq!(
            verify(&both),
            Ok(Verified {
                records: 7,
                chains: 2
            })
        );
        assert_eq!(
            verify(""),
            Ok(Verified {
                records: 0,
                chains: 0
            })
        );
    }

    #[test]
    fn tampering_is_found_at_the_first_bad_record() {
        let lines = chain(5);
        let edited = {
            let mut l = lines.clone();
            l[2] = l[2].replace("\"deny\"", "\"allow\"");
            l.join("\n")
        };
        let removed = {
            let mut l = lines.clone();
            l.remove(2);
            l.join("\n")
        };
        let swapped = {
            let mut l = lines.clone();
            l.swap(1, 2);
            l.join("\n")
        };
        let head_cut = lines[2..].join("\n");
        let rehashed_edit = {
            // An edit whose own hash is recomputed still breaks the next record's link.
            let mut l = lines.clone();
            let mut record: AuditRecord =
                serde_json::from_str(&format!("{}}}", &l[2][..l[2].len() - 75])).unwrap();
            record.decision = "allow".into();
            l[2] = record.to_line().0;
            l.join("\n")
        };
        let cases = [
            (edited, 3, "was edited"),
            (removed, 3, "records 2 to 2 are missing"),
            (swapped, 2, "records 1 to 1 are missing"),
            (head_cut, 1, "the chain starts at record 2"),
            (rehashed_edit, 4, "does not follow record 2"),
            ("not json at all".to_string(), 1, "not an audit record"),
        ];
        for (text, line, problem) in cases {
            let err = verify(&text).unwrap_err();
            assert_eq!(err.line, line, "{err}");
            assert!(err.problem.contains(problem), "{err}");
        }
    }
}
