//! Audit records as evidence off the node: two real `warden proxy` processes write their
//! records to stdout, collected interleaved as a node's log pipeline would, through a
//! restart of one of them and certificate rotations (SVIDs of 6 s); `warden audit verify`
//! with the trust bundle alone verifies the copy, then catches each way of tampering with it.

#[path = "support/apiserver.rs"]
mod apiserver;
#[path = "support/mesh.rs"]
mod mesh;

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use mesh::{http_get, Collected, Identity, Proxy};
use warden_core::audit::{parse_line, Checkpoint, Entry, EpochRecord};
use warden_core::{SpiffeId, TrustDomain};

const BACKEND: &str = "spiffe://cluster.local/ns/shop/sa/backend";
const LEDGER: &str = "spiffe://cluster.local/ns/shop/sa/ledger";
const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";

/// A server proxy for pod `pod` writing every decision to stdout, checkpointing every 5
/// records or each second; `/secret*` is denied, everything else allowed.
fn server(identity: &Identity, pod: &str, id: &str, collected: &Collected) -> Proxy {
    let dir = identity.dir.path().join(format!("policies-{pod}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("deny.yaml"),
        "apiVersion: warden.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: no-secrets, namespace: shop}\nspec:\n  action: DENY\n  rules: [{to: {paths: [\"/secret*\"]}}]\n",
    )
    .unwrap();
    let config = format!(
        "inbound: [{{listen: \"127.0.0.1:0\", app: \"{}\"}}]\nauthorization:\n  policy_dir: {}\n  default: all-authenticated\n  log_allowed: true\n  audit_log: stdout\n  audit_checkpoint_records: 5\n  audit_checkpoint_interval: 1s\n",
        mesh::app(),
        dir.display()
    );
    let proxy = Proxy::start_collecting(
        pod,
        identity,
        id,
        &config,
        &[("WARDEN_POD_NAME", pod)],
        Some(collected.clone()),
    );
    proxy.wait_ready();
    proxy
}

/// A client proxy routing to `servers` (no audit log: it has no inbound).
fn client(identity: &Identity, servers: &[(&Proxy, &str)]) -> Proxy {
    let routes: Vec<String> = servers
        .iter()
        .map(|(s, id)| {
            format!(
                "{{listen: \"127.0.0.1:0\", destination: \"{}\", identity: \"{id}\"}}",
                s.inbound[0]
            )
        })
        .collect();
    let config = format!(
        "authorization: {{audit_log: \"off\"}}\noutbound: [{}]\n",
        routes.join(", ")
    );
    let proxy = Proxy::start_collecting("frontend", identity, FRONTEND, &config, &[], None);
    proxy.wait_ready();
    proxy
}

/// One allowed and one denied request through each of the client's routes.
fn traffic(client: &Proxy) {
    for route in &client.outbound {
        assert!(http_get(route, "/orders", "s").0.contains(" 200"));
        assert!(http_get(route, "/secret/keys", "s").0.contains(" 403"));
    }
}

/// The collected lines' entries of chains of `pod`, by chain.
fn entries(lines: &[String], pod: &str) -> Vec<Entry> {
    lines
        .iter()
        .filter_map(|l| parse_line(l).ok())
        .map(|(e, _)| e)
        .filter(|e| e.chain().starts_with(&format!("{pod}/")))
        .collect()
}

/// The distinct leaf certificates that signed `pod`'s checkpoints.
fn signers(collected: &Collected, pod: &str) -> usize {
    let lines = collected.lock().unwrap().clone();
    entries(&lines, pod)
        .iter()
        .filter_map(|e| match e {
            Entry::Checkpoint(cp) => cp.svid.first().cloned(),
            _ => None,
        })
        .collect::<HashSet<_>>()
        .len()
}

/// `warden audit verify --json --require-closed` on `lines`: its exit code and report.
fn verify(
    dir: &std::path::Path,
    bundle: &std::path::Path,
    lines: &[String],
) -> (i32, serde_json::Value) {
    let file = dir.join("collected.log");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args([
            "audit",
            "verify",
            "--json",
            "--require-closed",
            "--trust-bundle",
        ])
        .arg(bundle)
        .arg(&file)
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stderr));
    });
    (out.status.code().unwrap(), report)
}

/// The finding kinds of the report's chains.
fn kinds(report: &serde_json::Value) -> Vec<String> {
    report["chains"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["findings"].as_array().unwrap().clone())
        .map(|f| f["kind"].as_str().unwrap().to_string())
        .collect()
}

/// The line of `pod`'s first chain at position `seq`.
fn line_at(lines: &[String], chain: &str, seq: u64) -> usize {
    lines
        .iter()
        .position(|l| parse_line(l).is_ok_and(|(e, _)| e.chain() == chain && e.seq() == seq))
        .unwrap_or_else(|| panic!("{chain} {seq} not collected"))
}

/// An epoch record of the backend's pod starting chain `chain` (run `run`), as a line.
fn epoch_line(chain: &str, run: &str) -> String {
    let mut epoch = Entry::Epoch(EpochRecord {
        chain: String::new(),
        seq: 0,
        time: "2026-11-26T00:00:00Z".into(),
        pod: "backend-0".into(),
        run: run.into(),
        workload: BACKEND.into(),
        version: "0.1.0".into(),
        prev: String::new(),
    });
    epoch.link(chain, 0, warden_core::audit::GENESIS);
    epoch.to_line().0
}

/// A checkpoint for `chain` after the record `after` (a line), signed with `svid`.
fn signed_checkpoint(after: &str, svid: &warden_identity::Svid, last: bool) -> String {
    let (entry, hash) = parse_line(after).unwrap();
    let mut cp = Checkpoint {
        chain: entry.chain().to_string(),
        seq: entry.seq() + 1,
        time: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap(),
        first: 0,
        dropped: 0,
        last,
        workload: String::new(),
        alg: String::new(),
        svid: vec![],
        sig: String::new(),
        prev: hash,
    };
    warden_identity::audit_signature::sign(svid, &mut cp).unwrap();
    let (line, _) = Entry::Checkpoint(cp).to_line();
    line
}

#[test]
fn collected_audit_logs_verify_across_restart_and_rotation_and_tampering_is_caught() {
    warden_identity::tls::install_crypto_provider();
    let identity = Identity::start_with(&["--svid-ttl", "6s"]);
    let collected: Collected = Default::default();
    let backend = server(&identity, "backend-0", BACKEND, &collected);
    let ledger = server(&identity, "ledger-0", LEDGER, &collected);
    let front = client(&identity, &[(&backend, BACKEND), (&ledger, LEDGER)]);

    // Traffic until each proxy has signed checkpoints with two different SVIDs (renewal at
    // ~70% of 6 s): the chains span a rotation.
    mesh::eventually("checkpoints signed before and after a rotation", || {
        traffic(&front);
        std::thread::sleep(Duration::from_millis(200));
        match (
            signers(&collected, "backend-0"),
            signers(&collected, "ledger-0"),
        ) {
            (a, b) if a >= 2 && b >= 2 => Ok(()),
            other => Err(format!("distinct signers so far: {other:?}")),
        }
    });

    // The backend restarts (SIGTERM: its final checkpoint), and serves again as a new run.
    let mut backend = backend;
    assert!(backend.process.terminate().success());
    drop(front);
    let backend2 = server(&identity, "backend-0", BACKEND, &collected);
    let mut front = client(&identity, &[(&backend2, BACKEND), (&ledger, LEDGER)]);
    for _ in 0..3 {
        traffic(&front);
    }
    let mut backend2 = backend2;
    let mut ledger = ledger;
    for proxy in [&mut backend2, &mut ledger, &mut front] {
        assert!(proxy.process.terminate().success());
    }
    drop(backend);
    // Stdout is read by threads: the final lines arrive just after the exits.
    mesh::eventually("every chain's final checkpoint collected", || {
        let lines = collected.lock().unwrap().clone();
        let finals = lines
            .iter()
            .filter(|l| l.contains("\"final\":true"))
            .count();
        if finals == 3 {
            Ok(())
        } else {
            Err(format!("{finals} final checkpoints"))
        }
    });
    let lines = collected.lock().unwrap().clone();

    // The untouched copy verifies whole: three chains, each closed by its final checkpoint.
    let dir = tempfile::tempdir().unwrap();
    let bundle = identity.bundle();
    let (code, report) = verify(dir.path(), &bundle, &lines);
    assert_eq!(code, 0, "{report:#}");
    let chains = report["chains"].as_array().unwrap();
    assert_eq!(chains.len(), 3, "{report:#}");
    let pods: Vec<&str> = chains.iter().map(|c| c["pod"].as_str().unwrap()).collect();
    assert_eq!(
        pods.iter().filter(|p| **p == "backend-0").count(),
        2,
        "{pods:?}"
    );
    for chain in chains {
        assert_eq!(chain["closed"], true, "{chain:#}");
        assert_eq!(chain["status"], "verified");
        assert_eq!(chain["unverified"], serde_json::json!([]));
    }
    let ledger_chain = chains.iter().find(|c| c["pod"] == "ledger-0").unwrap()["chain"]
        .as_str()
        .unwrap()
        .to_string();
    let ledger_lines: Vec<String> = lines
        .iter()
        .filter(|l| l.contains(&format!("\"chain\":\"{ledger_chain}\"")))
        .cloned()
        .collect();
    let backend_chain = entries(&lines, "backend-0")[0].chain().to_string();
    let last_seq = parse_line(ledger_lines.last().unwrap()).unwrap().0.seq();

    // What tampering looks like, each way the review listed.
    let ca =
        warden_identity::CertificateAuthority::load(&identity.dir.path().join("ca"), None).unwrap();
    let intruder = ca
        .issue(
            &SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/intruder").unwrap(),
            Duration::from_secs(600),
        )
        .unwrap();
    let foreign_ca = warden_identity::ca::generate(&warden_identity::ca::InitOptions::new(
        TrustDomain::default(),
    ))
    .unwrap()
    .authority()
    .unwrap();
    let foreign_svid = foreign_ca
        .issue(&SpiffeId::parse(BACKEND).unwrap(), Duration::from_secs(600))
        .unwrap();
    let decision_at = line_at(&lines, &ledger_chain, 2);
    let tampered = |f: &dyn Fn(&mut Vec<String>)| {
        let mut copy = lines.clone();
        f(&mut copy);
        copy
    };
    let cases: Vec<(&str, Vec<String>, i32, &str)> = vec![
        (
            "a decision edited",
            tampered(&|l| {
                let line = &l[decision_at];
                l[decision_at] = if line.contains("\"decision\":\"allow\"") {
                    line.replace("\"decision\":\"allow\"", "\"decision\":\"deny\"")
                } else {
                    line.replace("\"decision\":\"deny\"", "\"decision\":\"allow\"")
                };
                assert_ne!(l[decision_at], lines[decision_at]);
            }),
            3,
            "edited",
        ),
        (
            "a decision removed",
            tampered(&|l| {
                l.remove(decision_at);
            }),
            3,
            "missing",
        ),
        (
            "a decision edited and its hash recomputed",
            tampered(&|l| {
                let (mut entry, _) = parse_line(&l[decision_at]).unwrap();
                if let Entry::Decision(d) = &mut entry {
                    d.client = Some("spiffe://cluster.local/ns/shop/sa/someone-else".into());
                }
                l[decision_at] = entry.to_line().0;
            }),
            3,
            "broken-link",
        ),
        (
            "a checkpoint's dropped count altered and rehashed",
            tampered(&|l| {
                let at = l
                    .iter()
                    .position(|x| {
                        x.contains(&ledger_chain) && x.contains("\"type\":\"checkpoint\"")
                    })
                    .unwrap();
                let (mut entry, _) = parse_line(&l[at]).unwrap();
                if let Entry::Checkpoint(cp) = &mut entry {
                    cp.dropped += 5;
                }
                l[at] = entry.to_line().0;
            }),
            3,
            "bad-checkpoint",
        ),
        (
            "the final checkpoint replaced by one another workload signed",
            tampered(&|l| {
                let at = line_at(l, &ledger_chain, last_seq);
                l[at] =
                    signed_checkpoint(&l[line_at(l, &ledger_chain, last_seq - 1)], &intruder, true);
            }),
            3,
            "wrong-signer",
        ),
        (
            "a forged chain spliced in, signed by a foreign CA",
            tampered(&|l| {
                let epoch = epoch_line("backend-0/1-forged", "1-forged");
                let cp = signed_checkpoint(&epoch, &foreign_svid, true);
                l.insert(3, epoch);
                l.insert(7, cp);
            }),
            3,
            "bad-checkpoint",
        ),
        (
            "a fresh chain started under an existing chain's id",
            tampered(&|l| {
                l.insert(l.len() / 2, epoch_line(&backend_chain, "x"));
            }),
            3,
            "forked",
        ),
        (
            "the tail cut: the final checkpoint and the record before it (open, so unverified)",
            tampered(&|l| {
                let at = line_at(l, &ledger_chain, last_seq - 1);
                l.remove(line_at(l, &ledger_chain, last_seq));
                l.remove(at);
            }),
            2,
            "",
        ),
        (
            "a line left half written mid-stream (not tampering)",
            tampered(&|l| {
                let half = l[decision_at][..60].to_string();
                l.insert(decision_at, half);
            }),
            0,
            "",
        ),
    ];
    for (name, copy, want_code, want_kind) in cases {
        let (code, report) = verify(dir.path(), &bundle, &copy);
        assert_eq!(code, want_code, "{name}: {report:#}");
        if !want_kind.is_empty() {
            let got = kinds(&report);
            assert!(
                got.iter().any(|k| k == want_kind),
                "{name}: want {want_kind}, got {got:?}"
            );
        }
    }
}
