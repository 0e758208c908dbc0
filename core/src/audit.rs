//! The authorization audit log's format: JSON lines, hash-chained per proxy run, with signed
//! checkpoints, so that a copy collected off the node can be verified with the trust bundle
//! alone (DESIGN section 4). Writing is the proxy's (`warden_proxy::audit`), signing and
//! checking signatures the identity crate's (`warden_identity::audit_signature`); checking a
//! collection is [`verify`].
//!
//! Every line is a JSON object with a `type` (`epoch`, `decision` or `checkpoint`), the
//! `chain` it belongs to, its `seq` in that chain, `prev` (the previous line's hash, or
//! [`GENESIS`] for `seq` 0) and, last, `hash`: SHA-256, hex, of the line as written with
//! `hash` set to 64 zeros. A chain is one run of one proxy: it starts with an `epoch` record
//! that names the pod, the run and the workload identity. A `checkpoint` signs the chain's
//! head (its `prev`) with the proxy's SVID key and carries the SVID chain, so it vouches for
//! every record before it.

pub mod verify;

use serde::{Deserialize, Serialize};

/// `prev` of the first record of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Entry {
    /// The first record of a chain.
    Epoch(EpochRecord),
    /// An authorization decision.
    Decision(AuditRecord),
    /// A signed checkpoint of the chain's head.
    Checkpoint(Checkpoint),
}

/// The first record of a chain: a proxy run began (so a restart is never silent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// The chain's id: `<pod>/<run>`.
    pub chain: String,
    /// Always 0.
    pub seq: u64,
    /// When, RFC 3339 UTC.
    pub time: String,
    /// The pod, `namespace/name` (the proxy's host name outside Kubernetes).
    pub pod: String,
    /// This run of the proxy: its start (Unix seconds) and a random suffix.
    pub run: String,
    /// The workload identity whose SVIDs sign this chain's checkpoints.
    pub workload: String,
    /// The proxy's version.
    pub version: String,
    /// [`GENESIS`].
    pub prev: String,
}

/// One decision, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// The chain's id (filled in by the writer).
    pub chain: String,
    /// Position in the chain (filled in by the writer).
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
    /// The previous record's hash (filled in by the writer).
    pub prev: String,
}

/// A decision as the proxy records it, borrowed from the request: serialized once, on the
/// request path, into the body of a `decision` line ([`decision_body`]); it reads back as an
/// [`AuditRecord`]. The fields are [`AuditRecord`]'s, in its order, without the chain's.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionFields<'a> {
    /// When, RFC 3339 UTC.
    pub time: &'a str,
    /// `inbound`.
    pub direction: &'a str,
    /// The caller's SPIFFE ID.
    pub client: Option<&'a str>,
    /// The caller's address.
    pub client_addr: Option<std::net::SocketAddr>,
    /// The protected workload's SPIFFE ID.
    pub workload: &'a str,
    /// The app port.
    pub port: u16,
    /// HTTP method.
    pub method: Option<&'a str>,
    /// HTTP path (normalized).
    pub path: Option<&'a str>,
    /// `allow`, `deny` or `audit`.
    pub decision: &'a str,
    /// The deciding policy.
    pub policy: Option<&'a str>,
    /// The deciding rule's index.
    pub rule: Option<usize>,
    /// Why.
    pub reason: &'a str,
    /// For `audit`: the AUDIT policies that would have denied it.
    pub audit_policies: Option<&'a [String]>,
    /// The request id the client saw.
    pub request_id: Option<&'a str>,
}

/// The fields of a decision as a JSON object: what the writer puts, without its braces,
/// between a line's chain position and its `prev`.
pub fn decision_body(fields: &DecisionFields<'_>) -> String {
    serde_json::to_string(fields).unwrap_or_else(|_| "{}".into())
}

/// Appends a whole `decision` line (no newline) to `out`: chain `chain_json` (the chain id
/// as a JSON string), position `seq`, the `body` from [`decision_body`], `prev`; returns its
/// hash. The same line [`Entry::to_line`] writes for the [`AuditRecord`] it reads back as.
pub fn append_decision_line(
    out: &mut Vec<u8>,
    chain_json: &str,
    seq: u64,
    body: &str,
    prev: &str,
) -> String {
    use std::io::Write;
    let members = body
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .unwrap_or(body);
    let start = out.len();
    let _ = write!(
        out,
        "{{\"type\":\"decision\",\"chain\":{chain_json},\"seq\":{seq},{members},\"prev\":\"{prev}\""
    );
    let hash = hash_of(&out[start..]);
    out.extend_from_slice(HASH_FIELD.as_bytes());
    out.extend_from_slice(hash.as_bytes());
    out.extend_from_slice(b"\"}");
    hash
}

/// A signed statement of a chain's head: every record before `seq` is as its hashes say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The chain's id.
    pub chain: String,
    /// Its position in the chain; it covers records `first..seq`.
    pub seq: u64,
    /// When, RFC 3339 UTC: the time the SVID is checked at.
    pub time: String,
    /// The first record since the previous checkpoint (0 for the first).
    pub first: u64,
    /// Records this run dropped so far (a full queue or a failed write), never written.
    pub dropped: u64,
    /// Written at shutdown: nothing follows in this chain.
    #[serde(rename = "final")]
    pub last: bool,
    /// The workload identity the signer claims (the chain's).
    pub workload: String,
    /// The signature algorithm, e.g. `ecdsa-p256-sha256`.
    pub alg: String,
    /// The signing SVID's chain, leaf first, base64 DER.
    pub svid: Vec<String>,
    /// The signature over [`Checkpoint::message`], base64.
    pub sig: String,
    /// The hash of record `seq - 1`: the head being signed.
    pub prev: String,
}

impl Checkpoint {
    /// The bytes signed: every field that vouches for something, one per line. Fields may not
    /// hold a newline (the verifier refuses checkpoints whose fields do).
    pub fn message(&self) -> Vec<u8> {
        format!(
            "warden-audit-checkpoint/v1\nchain={}\nseq={}\nfirst={}\nhead={}\ntime={}\ndropped={}\nfinal={}\nworkload={}\n",
            self.chain, self.seq, self.first, self.prev, self.time, self.dropped, self.last, self.workload
        )
        .into_bytes()
    }
}

impl Entry {
    /// The chain it belongs to.
    pub fn chain(&self) -> &str {
        match self {
            Entry::Epoch(r) => &r.chain,
            Entry::Decision(r) => &r.chain,
            Entry::Checkpoint(r) => &r.chain,
        }
    }

    /// Its position in the chain.
    pub fn seq(&self) -> u64 {
        match self {
            Entry::Epoch(r) => r.seq,
            Entry::Decision(r) => r.seq,
            Entry::Checkpoint(r) => r.seq,
        }
    }

    /// The previous record's hash.
    pub fn prev(&self) -> &str {
        match self {
            Entry::Epoch(r) => &r.prev,
            Entry::Decision(r) => &r.prev,
            Entry::Checkpoint(r) => &r.prev,
        }
    }

    /// Places it in a chain: its chain id, position and the previous record's hash.
    pub fn link(&mut self, chain: &str, seq: u64, prev: &str) {
        let (c, s, p) = match self {
            Entry::Epoch(r) => (&mut r.chain, &mut r.seq, &mut r.prev),
            Entry::Decision(r) => (&mut r.chain, &mut r.seq, &mut r.prev),
            Entry::Checkpoint(r) => (&mut r.chain, &mut r.seq, &mut r.prev),
        };
        chain.clone_into(c);
        *s = seq;
        prev.clone_into(p);
    }

    /// The entry as one line (no newline), with its hash; returns `(line, hash)`.
    pub fn to_line(&self) -> (String, String) {
        // One buffer: the JSON object without its closing brace, then the hash field.
        let mut line = serde_json::to_string(self).unwrap_or_else(|_| "{}".into());
        line.pop();
        let hash = hash_of(line.as_bytes());
        line.reserve(HASH_FIELD.len() + 66);
        line.push_str(HASH_FIELD);
        line.push_str(&hash);
        line.push_str("\"}");
        (line, hash)
    }
}

/// How a line's hash is appended.
const HASH_FIELD: &str = ",\"hash\":\"";

#[cfg(test)]
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref())
}

/// The hash of a line whose body (everything before the hash field) is `body`: SHA-256 of
/// the body with the hash field set to zeros, without copying the body.
fn hash_of(body: &[u8]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(body);
    ctx.update(HASH_FIELD.as_bytes());
    ctx.update(GENESIS.as_bytes());
    ctx.update(b"\"}");
    hex(ctx.finish().as_ref())
}

/// Lower-case hex.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

/// Why a line is not a valid entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// Not JSON ending in a hash (another program's output, or a partly written line).
    #[error("not an audit record (no trailing hash)")]
    NoHash,
    /// The hash does not match the line: it was edited. Carries what the line claims to be.
    #[error("edited: its hash does not match its content")]
    Edited {
        /// The chain and position the line claims, if readable.
        claims: Option<(String, u64)>,
    },
    /// Hashed correctly but not an entry of this format.
    #[error("not an audit record: {0}")]
    Malformed(String),
}

/// A line's body (without the hash field and closing brace) and its hash, if it ends as an
/// entry's line does.
fn split_hash(line: &str) -> Option<(&str, &str)> {
    let at = line.len().checked_sub(HASH_FIELD.len() + 64 + 2)?;
    (line.is_char_boundary(at) && line[at..].starts_with(HASH_FIELD) && line.ends_with("\"}"))
        .then(|| (&line[..at], &line[at + HASH_FIELD.len()..line.len() - 2]))
}

/// Parses one line and checks its own hash; returns the entry and its hash.
pub fn parse_line(line: &str) -> Result<(Entry, String), LineError> {
    let line = line.trim_end_matches(['\r', '\n']);
    let (body, hash) = split_hash(line).ok_or(LineError::NoHash)?;
    if hash_of(body.as_bytes()) != hash {
        let claims = serde_json::from_str::<serde_json::Value>(&format!("{body}}}"))
            .ok()
            .and_then(|v| {
                Some((
                    v.get("chain")?.as_str()?.to_string(),
                    v.get("seq")?.as_u64()?,
                ))
            });
        return Err(LineError::Edited { claims });
    }
    let entry: Entry = serde_json::from_str(&format!("{body}}}"))
        .map_err(|e| LineError::Malformed(e.to_string()))?;
    Ok((entry, hash.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A decision record for tests.
    pub(crate) fn decision(path: &str) -> AuditRecord {
        AuditRecord {
            chain: String::new(),
            seq: 0,
            time: "2026-11-22T12:00:00Z".into(),
            direction: "inbound".into(),
            client: Some("spiffe://cluster.local/ns/shop/sa/frontend".into()),
            client_addr: Some("10.0.0.1:41000".into()),
            workload: "spiffe://cluster.local/ns/shop/sa/backend".into(),
            port: 8080,
            method: Some("GET".into()),
            path: Some(path.into()),
            decision: "deny".into(),
            policy: Some("shop/p".into()),
            rule: Some(0),
            reason: "matched DENY policy shop/p rule 0".into(),
            audit_policies: None,
            request_id: None,
            prev: String::new(),
        }
    }

    #[test]
    fn a_line_round_trips_and_an_edit_is_seen() {
        let mut entry = Entry::Decision(decision("/a"));
        entry.link("shop/backend-1/1764150000-0a0b", 7, GENESIS);
        let (line, hash) = entry.to_line();
        assert!(
            line.starts_with("{\"type\":\"decision\",\"chain\":"),
            "{line}"
        );
        assert!(line.ends_with(&format!("\"hash\":\"{hash}\"}}")));
        assert_eq!(parse_line(&line), Ok((entry.clone(), hash.clone())));
        assert_eq!(parse_line(&format!("{line}\r\n")).unwrap().1, hash);

        let edited = line.replace("\"deny\"", "\"allow\"");
        assert_eq!(
            parse_line(&edited),
            Err(LineError::Edited {
                claims: Some(("shop/backend-1/1764150000-0a0b".into(), 7))
            })
        );
        for junk in ["", "hello", &line[..line.len() - 10], "{\"hash\":\"00\"}"] {
            assert_eq!(parse_line(junk), Err(LineError::NoHash), "{junk:?}");
        }
        // Hashed correctly, but not this format.
        let other = format!("{{\"x\":1{HASH_FIELD}{GENESIS}\"}}");
        let hash = sha256_hex(other.as_bytes());
        let other = other.replace(GENESIS, &hash);
        assert!(matches!(parse_line(&other), Err(LineError::Malformed(_))));
    }

    #[test]
    fn a_decision_line_from_borrowed_fields_is_the_records_line() {
        let record = AuditRecord {
            chain: "shop/backend-1/1-a".into(),
            seq: 3,
            client: Some("spiffe://cluster.local/ns/shop/sa/\"quoted\"".into()),
            client_addr: Some("10.0.0.1:41000".into()),
            audit_policies: Some(vec!["shop/a".into()]),
            request_id: Some("ab".into()),
            prev: GENESIS.into(),
            ..decision("/a b/\u{e9}")
        };
        let fields = DecisionFields {
            time: &record.time,
            direction: &record.direction,
            client: record.client.as_deref(),
            client_addr: Some("10.0.0.1:41000".parse().unwrap()),
            workload: &record.workload,
            port: record.port,
            method: record.method.as_deref(),
            path: record.path.as_deref(),
            decision: &record.decision,
            policy: record.policy.as_deref(),
            rule: record.rule,
            reason: &record.reason,
            audit_policies: record.audit_policies.as_deref(),
            request_id: record.request_id.as_deref(),
        };
        let mut out = Vec::new();
        let chain_json = serde_json::to_string(&record.chain).unwrap();
        let hash = append_decision_line(&mut out, &chain_json, 3, &decision_body(&fields), GENESIS);
        let want = Entry::Decision(record).to_line();
        assert_eq!((String::from_utf8(out).unwrap(), hash), want);
    }

    #[test]
    fn a_checkpoint_signs_every_field_that_vouches() {
        let cp = Checkpoint {
            chain: "c".into(),
            seq: 10,
            time: "2026-11-22T12:00:00Z".into(),
            first: 3,
            dropped: 2,
            last: true,
            workload: "spiffe://cluster.local/ns/shop/sa/backend".into(),
            alg: "ecdsa-p256-sha256".into(),
            svid: vec![],
            sig: String::new(),
            prev: GENESIS.into(),
        };
        let message = String::from_utf8(cp.message()).unwrap();
        for field in [
            "chain=c\n",
            "seq=10\n",
            "first=3\n",
            "dropped=2\n",
            "final=true\n",
            "workload=spiffe://cluster.local/ns/shop/sa/backend\n",
            "time=2026-11-22T12:00:00Z\n",
        ] {
            assert!(message.contains(field), "{field}");
        }
        let (line, _) = Entry::Checkpoint(cp).to_line();
        assert!(line.contains("\"final\":true"), "{line}");
    }
}
