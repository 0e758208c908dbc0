//! Verifying a collected copy of audit logs: lines of several proxies interleaved (as a log
//! pipeline delivers them), in raw, CRI (`<time> stdout F <line>`) or JSON-wrapped (`{"log":
//! "<line>"}`) form. Per chain it reports what signed checkpoints vouch for, the unverified
//! tail after the last one, and every sign of tampering. Pure: checking a checkpoint's
//! signature is the caller's `check` (the identity crate has the one for real SVIDs).

use std::collections::BTreeMap;

use serde::Serialize;

use super::{parse_line, Checkpoint, Entry, LineError, GENESIS};

/// Where a line was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    /// The input's name (a file path).
    pub source: String,
    /// 1-based line number.
    pub line: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.source, self.line)
    }
}

/// The overall result, from best to worst (the exit code of `warden audit verify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Every record is vouched for by a valid checkpoint.
    Verified,
    /// Nothing was tampered with that can be seen, but some records are not vouched for (after
    /// the last checkpoint, a chain without one, or a chain whose start was not collected).
    Unverified,
    /// Records were edited, removed, reordered or spliced in, or a checkpoint is forged.
    Tampered,
}

/// What is wrong, or worth knowing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    /// A record's content does not match its own hash.
    Edited,
    /// Records are absent between others of the chain.
    Missing,
    /// A record does not follow the one before it (edited and rehashed, reordered, spliced).
    BrokenLink,
    /// Two different records claim the same position.
    Forked,
    /// A checkpoint's signature or SVID does not verify against the trust bundle.
    BadCheckpoint,
    /// A checkpoint signed by an identity that is not the chain's workload.
    WrongSigner,
    /// A decision recorded for another workload than the chain's.
    WrongWorkload,
    /// The chain does not start with an epoch record, or has one elsewhere.
    NotAnEpoch,
    /// Records after the chain's final checkpoint.
    AfterFinal,
    /// The chain's first records are not in the collection (rotated away, or removed).
    StartNotCollected,
    /// The proxy dropped records it could not write (counted in its checkpoints).
    Dropped,
}

impl std::fmt::Display for FindingKind {
    /// Its name as in the JSON report (`broken-link`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::String(name)) => f.write_str(&name),
            _ => write!(f, "{self:?}"),
        }
    }
}

impl FindingKind {
    /// Whether it shows tampering (rather than an incomplete collection or the proxy's own
    /// reported losses).
    pub fn is_tampering(self) -> bool {
        !matches!(self, FindingKind::StartNotCollected | FindingKind::Dropped)
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What kind.
    pub kind: FindingKind,
    /// The first position concerned.
    pub seq: Option<u64>,
    /// Where the line concerned was read.
    pub at: Option<Location>,
    /// In a sentence.
    pub detail: String,
}

/// The result for one chain (one run of one proxy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    /// The chain's id.
    pub chain: String,
    /// The pod, from the epoch record.
    pub pod: Option<String>,
    /// The workload identity the chain belongs to.
    pub workload: Option<String>,
    /// Distinct records read.
    pub records: usize,
    /// Position ranges (inclusive) vouched for by valid checkpoints.
    pub verified: Vec<(u64, u64)>,
    /// Position ranges present but not vouched for.
    pub unverified: Vec<(u64, u64)>,
    /// Whether the chain ends with a valid final checkpoint (the proxy shut down cleanly).
    pub closed: bool,
    /// Records the proxy reported dropped, per its last valid checkpoint.
    pub dropped: u64,
    /// Findings, in position order.
    pub findings: Vec<Finding>,
    /// This chain's result.
    pub status: Status,
}

/// A line that is not an audit record (another program's output, a partly written line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unreadable {
    /// Where.
    pub at: Location,
    /// Why.
    pub problem: String,
}

/// The result for a collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The worst of the chains' results.
    pub status: Status,
    /// Per chain, by id.
    pub chains: Vec<ChainReport>,
    /// Lines that are not audit records; they count against nothing, but are shown.
    pub unreadable: Vec<Unreadable>,
    /// Identical copies of a record seen more than once (at-least-once delivery), ignored.
    pub duplicates: usize,
}

/// Checks a checkpoint's signature and SVID; returns the signer's SPIFFE ID, or why not.
pub type CheckSignature<'a> = &'a dyn Fn(&Checkpoint) -> Result<String, String>;

/// A parsed line and where it was read.
struct Read {
    entry: Entry,
    hash: String,
    at: Location,
}

/// What one position of a chain holds.
#[derive(Default)]
struct Slot {
    /// Distinct records (more than one: a fork).
    records: Vec<Read>,
    /// An edited line claiming this position.
    edited: Option<Location>,
}

/// Verifies `inputs` (name, text) as one collection.
pub fn verify(inputs: &[(String, String)], check: CheckSignature<'_>) -> Report {
    let mut chains: BTreeMap<String, BTreeMap<u64, Slot>> = BTreeMap::new();
    let mut unreadable = Vec::new();
    let mut duplicates = 0;
    for (name, text) in inputs {
        let mut partial = String::new();
        for (i, raw) in text.lines().enumerate() {
            let at = Location {
                source: name.clone(),
                line: i + 1,
            };
            let Some(line) = unwrap_collected(raw, &mut partial) else {
                continue;
            };
            if line.trim().is_empty() {
                continue;
            }
            match parse_line(&line) {
                Ok((entry, hash)) => {
                    let slot = chains
                        .entry(entry.chain().to_string())
                        .or_default()
                        .entry(entry.seq())
                        .or_default();
                    if slot.records.iter().any(|r| r.hash == hash) {
                        duplicates += 1;
                    } else {
                        slot.records.push(Read { entry, hash, at });
                    }
                }
                Err(LineError::Edited {
                    claims: Some((chain, seq)),
                }) => {
                    let slot = chains.entry(chain).or_default().entry(seq).or_default();
                    slot.edited.get_or_insert(at);
                }
                Err(e) => unreadable.push(Unreadable {
                    at,
                    problem: e.to_string(),
                }),
            }
        }
    }
    let chains: Vec<ChainReport> = chains
        .into_iter()
        .map(|(id, slots)| verify_chain(id, slots, check))
        .collect();
    Report {
        status: chains
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Status::Verified),
        chains,
        unreadable,
        duplicates,
    }
}

/// The decision records of `inputs` (name, text), read as [`verify`] reads them (raw, CRI
/// or JSON-wrapped lines; a record collected twice counts once), without checking the
/// chains; and how many lines were not audit records.
pub fn decisions(inputs: &[(String, String)]) -> (Vec<super::AuditRecord>, usize) {
    let mut seen = std::collections::HashSet::new();
    let mut records = Vec::new();
    let mut unreadable = 0;
    for (_, text) in inputs {
        let mut partial = String::new();
        for raw in text.lines() {
            let Some(line) = unwrap_collected(raw, &mut partial) else {
                continue;
            };
            if line.trim().is_empty() {
                continue;
            }
            match parse_line(&line) {
                Ok((Entry::Decision(record), hash)) => {
                    if seen.insert(hash) {
                        records.push(record);
                    }
                }
                Ok(_) => {}
                Err(_) => unreadable += 1,
            }
        }
    }
    (records, unreadable)
}

/// The audit line inside a collected line: as is, the content of a CRI log line (partial
/// lines, `P`, joined until the `F` that ends them), or the `log`/`message` field of a JSON
/// wrapper. `None` while a partial line is incomplete.
fn unwrap_collected(raw: &str, partial: &mut String) -> Option<String> {
    let raw = raw.trim_end_matches('\r');
    if let Some((flag, content)) = cri_content(raw) {
        partial.push_str(content);
        return (flag == "F").then(|| std::mem::take(partial));
    }
    if super::split_hash(raw).is_some() {
        return Some(raw.to_string());
    }
    if let Ok(serde_json::Value::Object(wrapper)) = serde_json::from_str(raw) {
        for field in ["log", "message"] {
            if let Some(serde_json::Value::String(inner)) = wrapper.get(field) {
                return Some(inner.trim_end_matches('\n').to_string());
            }
        }
    }
    Some(raw.to_string())
}

/// `(flag, content)` of a CRI log line: `<RFC 3339 time> <stdout|stderr> <F|P> <content>`.
fn cri_content(raw: &str) -> Option<(&str, &str)> {
    let mut parts = raw.splitn(4, ' ');
    let (time, stream, flag) = (parts.next()?, parts.next()?, parts.next()?);
    let looks_like_time = time.len() >= 20 && time.as_bytes()[4] == b'-' && time.contains('T');
    (looks_like_time && matches!(stream, "stdout" | "stderr") && matches!(flag, "F" | "P"))
        .then(|| (flag, parts.next().unwrap_or("")))
}

/// The chain's workload: its epoch's, else its first checkpoint's or decision's claim.
fn claimed_workload(slots: &BTreeMap<u64, Slot>) -> Option<String> {
    let all = || slots.values().flat_map(|s| &s.records);
    let epoch = all().find_map(|r| match &r.entry {
        Entry::Epoch(e) if e.seq == 0 => Some(e.workload.clone()),
        _ => None,
    });
    epoch.or_else(|| {
        all().find_map(|r| match &r.entry {
            Entry::Checkpoint(c) => Some(c.workload.clone()),
            Entry::Decision(d) => Some(d.workload.clone()),
            Entry::Epoch(_) => None,
        })
    })
}

/// Why a checkpoint cannot vouch for its chain, if it cannot.
fn checkpoint_problem(
    cp: &Checkpoint,
    workload: Option<&str>,
    check: CheckSignature<'_>,
) -> Option<(FindingKind, String)> {
    let fields = [&cp.chain, &cp.time, &cp.workload, &cp.prev];
    if fields.iter().any(|f| f.contains(['\n', '\r'])) {
        return Some((
            FindingKind::BadCheckpoint,
            "a field holds a line break".into(),
        ));
    }
    let signer = match check(cp) {
        Ok(signer) => signer,
        Err(why) => return Some((FindingKind::BadCheckpoint, why)),
    };
    if signer != cp.workload || Some(signer.as_str()) != workload {
        return Some((
            FindingKind::WrongSigner,
            format!(
                "signed by {signer}, but the chain belongs to {}",
                workload.unwrap_or(&cp.workload)
            ),
        ));
    }
    None
}

fn verify_chain(id: String, slots: BTreeMap<u64, Slot>, check: CheckSignature<'_>) -> ChainReport {
    let workload = claimed_workload(&slots);
    let mut findings = Vec::new();
    let mut add = |kind, seq: Option<u64>, at: Option<&Location>, detail: String| {
        findings.push(Finding {
            kind,
            seq,
            at: at.cloned(),
            detail,
        })
    };
    let (first, last) = match (slots.keys().next(), slots.keys().next_back()) {
        (Some(&a), Some(&b)) => (a, b),
        _ => unreachable!("a chain has at least one slot"),
    };
    if first > 0 {
        add(
            FindingKind::StartNotCollected,
            Some(0),
            None,
            format!(
                "records 0 to {} are not in the collection (rotated away, or removed)",
                first - 1
            ),
        );
    }
    let mut pod = None;
    let mut verified: Vec<(u64, u64)> = Vec::new();
    let mut present: Vec<u64> = Vec::new();
    // The current run of linked records: where it started and the hash of its last record.
    let mut run: Option<(u64, String)> = None;
    let mut gap_from: Option<u64> = None;
    let mut final_at: Option<u64> = None;
    let mut dropped = 0;
    let mut records = 0;
    for seq in first..=last {
        let Some(slot) = slots.get(&seq) else {
            gap_from.get_or_insert(seq);
            run = None;
            continue;
        };
        if let Some(from) = gap_from.take() {
            let what = if from + 1 == seq {
                format!("record {from} is missing")
            } else {
                format!("records {from} to {} are missing", seq - 1)
            };
            add(FindingKind::Missing, Some(from), None, what);
        }
        records += slot.records.len();
        if let Some(at) = &slot.edited {
            add(
                FindingKind::Edited,
                Some(seq),
                Some(at),
                format!("record {seq} was edited (its hash does not match its content)"),
            );
            run = None;
            continue;
        }
        let read = match slot.records.as_slice() {
            [read] => read,
            [a, b, ..] => {
                add(
                    FindingKind::Forked,
                    Some(seq),
                    Some(&b.at),
                    format!(
                        "two different records claim position {seq} (the other at {})",
                        a.at
                    ),
                );
                run = None;
                continue;
            }
            [] => continue,
        };
        let at = Some(&read.at);
        if let Some(f) = final_at {
            add(
                FindingKind::AfterFinal,
                Some(seq),
                at,
                format!("record {seq} follows the final checkpoint at {f}"),
            );
        }
        let start = match run.take() {
            Some((start, prev)) if prev == read.entry.prev() => start,
            Some(_) => {
                add(
                    FindingKind::BrokenLink,
                    Some(seq),
                    at,
                    format!("record {seq} does not follow record {}: one of them was edited and rehashed, or records were reordered or spliced in", seq - 1),
                );
                seq
            }
            None if seq == 0 && read.entry.prev() != GENESIS => {
                add(
                    FindingKind::BrokenLink,
                    Some(0),
                    at,
                    "record 0 does not start a chain".into(),
                );
                seq
            }
            None => seq,
        };
        run = Some((start, read.hash.clone()));
        present.push(seq);
        match &read.entry {
            Entry::Epoch(e) if seq == 0 => pod = Some(e.pod.clone()),
            Entry::Epoch(_) => add(
                FindingKind::NotAnEpoch,
                Some(seq),
                at,
                format!("an epoch record at position {seq}: a chain was spliced in"),
            ),
            _ if seq == 0 => add(
                FindingKind::NotAnEpoch,
                Some(0),
                at,
                "the chain does not start with an epoch record".into(),
            ),
            Entry::Decision(d) if Some(&d.workload) != workload.as_ref() => add(
                FindingKind::WrongWorkload,
                Some(seq),
                at,
                format!(
                    "a decision for {}, in a chain of {}",
                    d.workload,
                    workload.as_deref().unwrap_or("?")
                ),
            ),
            Entry::Decision(_) => {}
            Entry::Checkpoint(cp) => match checkpoint_problem(cp, workload.as_deref(), check) {
                Some((kind, why)) => add(kind, Some(seq), at, format!("checkpoint {seq}: {why}")),
                None => {
                    match verified.last_mut() {
                        Some(range) if range.1 + 1 >= start => range.1 = seq,
                        _ => verified.push((start, seq)),
                    }
                    dropped = cp.dropped;
                    if cp.last {
                        final_at = Some(seq);
                    }
                }
            },
        }
    }
    if dropped > 0 {
        add(
            FindingKind::Dropped,
            None,
            None,
            format!("the proxy dropped {dropped} records it could not write (see warden_audit_records_dropped_total)"),
        );
    }
    let unverified = ranges(
        present
            .into_iter()
            .filter(|s| !verified.iter().any(|(a, b)| (a..=b).contains(&s))),
    );
    findings.sort_by_key(|f| f.seq);
    let status = if findings.iter().any(|f| f.kind.is_tampering()) {
        Status::Tampered
    } else if !unverified.is_empty() || first > 0 {
        Status::Unverified
    } else {
        Status::Verified
    };
    ChainReport {
        chain: id,
        pod,
        workload,
        records,
        verified,
        unverified,
        closed: final_at.is_some(),
        dropped,
        findings,
        status,
    }
}

/// Consecutive numbers as inclusive ranges.
fn ranges(sorted: impl Iterator<Item = u64>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for s in sorted {
        match out.last_mut() {
            Some(range) if range.1 + 1 == s => range.1 = s,
            _ => out.push((s, s)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{tests::decision, EpochRecord};

    const BACKEND: &str = "spiffe://cluster.local/ns/shop/sa/backend";
    const OTHER: &str = "spiffe://cluster.local/ns/shop/sa/other";

    fn digest(message: &[u8]) -> String {
        crate::audit::sha256_hex(message)
    }

    /// A stand-in for SVID signatures: `<signer>|<digest of the message>`; a signer starting
    /// with `untrusted:` is one the trust bundle does not know.
    fn check(cp: &Checkpoint) -> Result<String, String> {
        let (signer, sig) = cp.sig.split_once('|').ok_or("no signature")?;
        if signer.starts_with("untrusted:") {
            return Err("its SVID does not chain to the trust bundle".into());
        }
        if sig != digest(&cp.message()) {
            return Err("the signature does not match".into());
        }
        Ok(signer.to_string())
    }

    /// Writes a chain the way the proxy does: an epoch, `decisions` decisions with a
    /// checkpoint after every `every`, and a final checkpoint if `close`.
    struct Writer {
        chain: String,
        seq: u64,
        prev: String,
        since: u64,
        signer: String,
        /// Put in every decision's path, so that two writers' records differ.
        tag: String,
        lines: Vec<String>,
    }

    impl Writer {
        fn new(chain: &str) -> Self {
            let mut w = Self {
                chain: chain.into(),
                seq: 0,
                prev: GENESIS.into(),
                since: 0,
                signer: BACKEND.into(),
                tag: String::new(),
                lines: Vec::new(),
            };
            w.push(Entry::Epoch(EpochRecord {
                chain: String::new(),
                seq: 0,
                time: "2026-11-26T08:00:00Z".into(),
                pod: "shop/backend-1".into(),
                run: chain.rsplit('/').next().unwrap().into(),
                workload: BACKEND.into(),
                version: "test".into(),
                prev: String::new(),
            }));
            w
        }

        fn push(&mut self, mut entry: Entry) {
            entry.link(&self.chain, self.seq, &self.prev);
            let (line, hash) = entry.to_line();
            self.lines.push(line);
            self.prev = hash;
            self.seq += 1;
        }

        fn decisions(&mut self, n: usize) -> &mut Self {
            for i in 0..n {
                let path = format!("/{}{}/{i}", self.tag, self.seq);
                self.push(Entry::Decision(decision(&path)));
            }
            self
        }

        fn checkpoint(&mut self, last: bool) -> &mut Self {
            let mut cp = Checkpoint {
                chain: self.chain.clone(),
                seq: self.seq,
                time: "2026-11-26T08:00:10Z".into(),
                first: self.since,
                dropped: 0,
                last,
                workload: BACKEND.into(),
                alg: "test".into(),
                svid: vec![],
                sig: String::new(),
                prev: self.prev.clone(),
            };
            cp.sig = format!("{}|{}", self.signer, digest(&cp.message()));
            self.since = self.seq + 1;
            self.push(Entry::Checkpoint(cp));
            self
        }

        fn text(&self) -> String {
            self.lines.join("\n") + "\n"
        }
    }

    /// Epoch, 4 decisions, checkpoint (5), 4 decisions, final checkpoint (10).
    fn closed(chain: &str) -> Writer {
        let mut w = Writer::new(chain);
        w.decisions(4)
            .checkpoint(false)
            .decisions(4)
            .checkpoint(true);
        w
    }

    fn run(texts: &[String]) -> Report {
        let inputs: Vec<(String, String)> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("in{i}"), t.clone()))
            .collect();
        verify(&inputs, &check)
    }

    fn kinds(chain: &ChainReport) -> Vec<FindingKind> {
        chain.findings.iter().map(|f| f.kind).collect()
    }

    /// Re-hashes line `i` after `edit` (a forger without the key can do this).
    fn rehash(line: &str, edit: impl FnOnce(&mut Entry)) -> String {
        let (mut entry, _) = parse_line(line).unwrap();
        edit(&mut entry);
        entry.to_line().0
    }

    #[test]
    fn an_intact_closed_chain_verifies_whole() {
        let report = run(&[closed("shop/backend-1/1764144000-aa").text()]);
        assert_eq!(report.status, Status::Verified);
        let c = &report.chains[0];
        assert_eq!(c.verified, vec![(0, 10)]);
        assert!(c.unverified.is_empty() && c.findings.is_empty(), "{c:?}");
        assert!(c.closed);
        assert_eq!(c.pod.as_deref(), Some("shop/backend-1"));
        assert_eq!(c.workload.as_deref(), Some(BACKEND));
        assert_eq!(c.records, 11);
    }

    #[test]
    fn tampering_of_each_kind_is_found() {
        let id = "shop/backend-1/1764144000-aa";
        let base = closed(id).lines;
        let edit = |f: &dyn Fn(&mut Vec<String>)| {
            let mut lines = base.clone();
            f(&mut lines);
            lines.join("\n")
        };
        let cases: Vec<(&str, String, Vec<FindingKind>)> = vec![
            (
                "an edited record inside a checkpointed range",
                edit(&|l| l[2] = l[2].replace("\"deny\"", "\"allow\"")),
                vec![FindingKind::Edited],
            ),
            (
                "a removed record",
                edit(&|l| {
                    l.remove(3);
                }),
                vec![FindingKind::Missing],
            ),
            (
                "an edit whose own hash is recomputed",
                edit(&|l| {
                    l[2] = rehash(&l[2], |e| {
                        if let Entry::Decision(d) = e {
                            d.decision = "allow".into();
                        }
                    })
                }),
                vec![FindingKind::BrokenLink],
            ),
            (
                "every record after an edit rehashed and relinked, up to the checkpoint",
                edit(&|l| {
                    let mut prev = parse_line(&l[1]).unwrap().1;
                    for line in l.iter_mut().take(5).skip(2) {
                        let (mut entry, _) = parse_line(line).unwrap();
                        if let Entry::Decision(d) = &mut entry {
                            d.decision = "allow".into();
                        }
                        let seq = entry.seq();
                        entry.link(id, seq, &prev);
                        let (new, hash) = entry.to_line();
                        *line = new;
                        prev = hash;
                    }
                }),
                vec![FindingKind::BrokenLink],
            ),
            (
                "the checkpoint's head rewritten to match",
                edit(&|l| {
                    l[2] = rehash(&l[2], |e| {
                        if let Entry::Decision(d) = e {
                            d.decision = "allow".into();
                        }
                    });
                    let mut prev = parse_line(&l[2]).unwrap().1;
                    for line in l.iter_mut().take(6).skip(3) {
                        let (mut entry, _) = parse_line(line).unwrap();
                        let seq = entry.seq();
                        entry.link(id, seq, &prev);
                        let (new, hash) = entry.to_line();
                        *line = new;
                        prev = hash;
                    }
                }),
                vec![FindingKind::BadCheckpoint, FindingKind::BrokenLink],
            ),
            ("two records swapped", edit(&|l| l.swap(2, 3)), vec![]),
            (
                "a fresh chain spliced in under the same id",
                edit(&|l| {
                    let mut forged = Writer::new(id);
                    forged.tag = "forged".into();
                    l.extend(forged.decisions(2).lines.clone())
                }),
                vec![FindingKind::Forked],
            ),
            (
                "records appended after the final checkpoint",
                edit(&|l| {
                    let mut w = closed(id);
                    w.decisions(1);
                    l.push(w.lines.last().unwrap().clone());
                }),
                vec![FindingKind::AfterFinal],
            ),
            (
                "a checkpoint forged by an untrusted signer",
                {
                    let mut w = Writer::new(id);
                    w.signer = format!("untrusted:{BACKEND}");
                    w.decisions(2).checkpoint(true).text()
                },
                vec![FindingKind::BadCheckpoint],
            ),
            (
                "a checkpoint signed by another workload",
                {
                    let mut w = Writer::new(id);
                    w.signer = OTHER.into();
                    w.decisions(2).checkpoint(true).text()
                },
                vec![FindingKind::WrongSigner],
            ),
            (
                "a decision of another workload",
                {
                    let mut w = Writer::new(id);
                    let mut d = decision("/x");
                    d.workload = OTHER.into();
                    w.push(Entry::Decision(d));
                    w.checkpoint(true).text()
                },
                vec![FindingKind::WrongWorkload],
            ),
        ];
        for (name, text, want) in cases {
            let report = run(&[text]);
            let chain = &report.chains[0];
            let got = kinds(chain);
            if name == "two records swapped" {
                // Positions are in the records, so a swap reads back in order: not a finding,
                // and nothing lost.
                assert_eq!(report.status, Status::Verified, "{name}: {chain:?}");
                continue;
            }
            assert_eq!(report.status, Status::Tampered, "{name}: {chain:?}");
            for kind in &want {
                assert!(got.contains(kind), "{name}: want {kind:?}, got {got:?}");
            }
        }
    }

    #[test]
    fn records_after_the_last_checkpoint_are_an_unverified_tail() {
        let mut w = Writer::new("shop/backend-1/1764144000-aa");
        w.decisions(3).checkpoint(false).decisions(2);
        let report = run(&[w.text()]);
        let c = &report.chains[0];
        assert_eq!(report.status, Status::Unverified);
        assert_eq!(
            (c.verified.clone(), c.unverified.clone()),
            (vec![(0, 4)], vec![(5, 6)])
        );
        assert!(!c.closed);

        // Cut right after a periodic checkpoint: all verified, but not closed.
        let mut w = Writer::new("shop/backend-1/1764144000-aa");
        w.decisions(3).checkpoint(false);
        let c = &run(&[w.text()]).chains[0];
        assert_eq!((c.status, c.closed), (Status::Verified, false));

        // No checkpoint at all (a chain forged from scratch looks like this).
        let mut w = Writer::new("shop/forged/1764144000-ff");
        w.decisions(3);
        let c = &run(&[w.text()]).chains[0];
        assert_eq!(
            (c.status, c.unverified.clone()),
            (Status::Unverified, vec![(0, 3)])
        );
    }

    #[test]
    fn a_chain_whose_start_was_rotated_away_is_incomplete_not_tampered() {
        let lines = closed("shop/backend-1/1764144000-aa").lines;
        let report = run(&[lines[3..].join("\n")]);
        let c = &report.chains[0];
        assert_eq!(report.status, Status::Unverified);
        assert_eq!(kinds(c), vec![FindingKind::StartNotCollected]);
        assert_eq!(c.verified, vec![(3, 10)]);
    }

    #[test]
    fn interleaved_chains_duplicates_wrappers_and_a_partial_last_line() {
        let a = closed("shop/backend-1/1764144000-aa").lines;
        let b = closed("shop/backend-2/1764144000-bb").lines;
        // Interleaved, one line delivered twice, a partly written line at the end.
        let mut mixed = Vec::new();
        for (x, y) in a.iter().zip(&b) {
            mixed.push(x.clone());
            mixed.push(y.clone());
        }
        mixed.push(a[4].clone());
        mixed.push(a[5][..40].to_string());
        // The same chains again, as the kubelet writes them (CRI, the long line in two
        // parts) and as a shipper wraps them in JSON.
        let cri: Vec<String> = a
            .iter()
            .map(|l| {
                let (x, y) = l.split_at(l.len() / 2);
                format!("2026-11-26T08:00:00.1Z stdout P {x}\n2026-11-26T08:00:00.1Z stdout F {y}")
            })
            .collect();
        let wrapped: Vec<String> = b
            .iter()
            .map(|l| serde_json::json!({"log": format!("{l}\n"), "stream": "stdout"}).to_string())
            .collect();
        let report = run(&[mixed.join("\n"), cri.join("\n"), wrapped.join("\n")]);
        assert_eq!(report.status, Status::Verified, "{report:?}");
        assert_eq!(report.chains.len(), 2);
        assert_eq!(report.duplicates, 1 + 11 + 11);
        assert_eq!(report.unreadable.len(), 1);
        assert_eq!(report.unreadable[0].at.line, a.len() * 2 + 2);
        assert!(report
            .chains
            .iter()
            .all(|c| c.closed && c.verified == vec![(0, 10)]));
    }

    #[test]
    fn records_the_proxy_dropped_are_reported_not_tampering() {
        let mut w = Writer::new("shop/backend-1/1764144000-aa");
        w.decisions(2);
        let mut cp = Checkpoint {
            chain: w.chain.clone(),
            seq: w.seq,
            time: "2026-11-26T08:00:10Z".into(),
            first: 0,
            dropped: 7,
            last: true,
            workload: BACKEND.into(),
            alg: "test".into(),
            svid: vec![],
            sig: String::new(),
            prev: w.prev.clone(),
        };
        cp.sig = format!("{BACKEND}|{}", digest(&cp.message()));
        w.push(Entry::Checkpoint(cp));
        let c = &run(&[w.text()]).chains[0];
        assert_eq!((c.status, c.dropped), (Status::Verified, 7));
        assert_eq!(kinds(c), vec![FindingKind::Dropped]);
    }

    #[test]
    fn collected_line_forms() {
        let mut partial = String::new();
        assert_eq!(
            unwrap_collected(
                "2026-11-26T08:00:00.123456789Z stdout P {\"a\"",
                &mut partial
            ),
            None
        );
        assert_eq!(
            unwrap_collected("2026-11-26T08:00:00.2Z stdout F :1}", &mut partial).as_deref(),
            Some("{\"a\":1}")
        );
        assert_eq!(
            unwrap_collected("{\"log\":\"x\\n\"}", &mut partial).as_deref(),
            Some("x")
        );
        assert_eq!(
            unwrap_collected("plain", &mut partial).as_deref(),
            Some("plain")
        );
        assert_eq!(
            unwrap_collected("2026 stdout F x", &mut partial).as_deref(),
            Some("2026 stdout F x")
        );
    }
}
