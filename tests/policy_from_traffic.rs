//! From observed traffic to enforced least privilege, with real proxies: a backend runs
//! under the `audit` default, two callers use it, its audit records are collected from its
//! stdout; `warden policy suggest` turns them into policies which, enforced, allow every
//! recorded request and refuse a new caller and what the callers never did; `warden policy
//! diff --against` the same records shows nothing newly denied; a tampered collection is
//! refused, and a forged chain no checkpoint vouches for is not used.

#[path = "support/apiserver.rs"]
mod apiserver;
#[path = "support/mesh.rs"]
mod mesh;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use mesh::{eventually, Collected, Identity, Proxy};
use warden_core::audit::{parse_line, Entry};

const BACKEND: &str = "spiffe://cluster.local/ns/shop/sa/backend";
const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const REPORTS: &str = "spiffe://cluster.local/ns/shop/sa/reports";
const INTRUDER: &str = "spiffe://cluster.local/ns/shop/sa/intruder";

/// `method path` through `route` (HTTP/1.1, connection closed): the status code.
fn call(route: &str, method: &str, path: &str) -> u16 {
    let mut tcp = std::net::TcpStream::connect(route).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        tcp,
        "{method} {path} HTTP/1.1\r\nhost: backend\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = tcp.read_to_string(&mut out);
    out.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// A client proxy for `id` with one route to `server`.
fn client(identity: &Identity, name: &str, id: &str, server: &Proxy) -> Proxy {
    let config = format!(
        "outbound: [{{listen: \"127.0.0.1:0\", destination: \"{}\", identity: \"{BACKEND}\"}}]\n",
        server.inbound[0]
    );
    let proxy = Proxy::start(name, identity, id, &config);
    proxy.wait_ready();
    proxy
}

/// `warden policy ARGS`: (exit code, stdout, stderr).
fn policy(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .arg("policy")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The traffic the backend sees while in audit mode: (caller, method, path, status).
const OBSERVED: [(&str, &str, &str, u16); 6] = [
    ("frontend", "GET", "/api/orders/1", 200),
    ("frontend", "GET", "/api/orders/2", 200),
    ("frontend", "POST", "/api/orders", 200),
    ("reports", "GET", "/api/reports/daily", 200),
    ("reports", "GET", "/api/reports/weekly", 200),
    // Refused by the DENY policy: never suggested.
    ("frontend", "GET", "/admin/users", 403),
];

#[test]
fn suggested_policies_enforced_allow_what_was_seen_and_refuse_the_rest() {
    let identity = Identity::start();
    let dir = identity.dir.path().join("backend-policies");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("deny.yaml"),
        "apiVersion: warden.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: no-admin, namespace: shop}\nspec:\n  action: DENY\n  rules: [{to: {paths: [\"/admin*\"]}}]\n",
    )
    .unwrap();
    let before = identity.dir.path().join("before");
    std::fs::create_dir_all(&before).unwrap();
    std::fs::copy(dir.join("deny.yaml"), before.join("deny.yaml")).unwrap();

    let collected = Collected::default();
    let config = format!(
        "inbound: [{{listen: \"127.0.0.1:0\", app: \"{}\"}}]\nauthorization:\n  policy_dir: {}\n  default: audit\n  audit_log: stdout\n  audit_checkpoint_interval: 1s\n",
        mesh::app(),
        dir.display()
    );
    let backend = Proxy::start_collecting(
        "backend",
        &identity,
        BACKEND,
        &config,
        &[("WARDEN_POD_NAME", "backend-1")],
        Some(collected.clone()),
    );
    backend.wait_ready();
    let frontend = client(&identity, "frontend", FRONTEND, &backend);
    let reports = client(&identity, "reports", REPORTS, &backend);
    let intruder = client(&identity, "intruder", INTRUDER, &backend);
    let route = |who: &str| match who {
        "frontend" => frontend.outbound[0].clone(),
        "reports" => reports.outbound[0].clone(),
        _ => intruder.outbound[0].clone(),
    };
    for (who, method, path, status) in OBSERVED {
        assert_eq!(
            call(&route(who), method, path),
            status,
            "{who} {method} {path}"
        );
    }
    // The audit default lets the intruder in too: it is not in the observed period.
    let decisions = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| l.starts_with("{\"type\":\"decision\""))
            .count()
    };
    // Every decision, and a signed checkpoint after the last (what vouches for them).
    let lines = eventually("every decision recorded and vouched for", || {
        let lines = collected.lock().unwrap().clone();
        let last_decision = lines
            .iter()
            .rposition(|l| l.starts_with("{\"type\":\"decision\""));
        let last_checkpoint = lines
            .iter()
            .rposition(|l| l.starts_with("{\"type\":\"checkpoint\""));
        let seen = decisions(&lines);
        (seen == OBSERVED.len() && last_checkpoint > last_decision)
            .then_some(lines)
            .ok_or_else(|| format!("{seen} decisions"))
    });
    let log = identity.dir.path().join("collected.log");
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();

    let bundle = identity.bundle();
    let (code, yaml, err) = policy(&[
        "suggest",
        "--trust-bundle",
        bundle.to_str().unwrap(),
        "--path-depth",
        "2",
        "--action",
        "allow",
        log.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("1 policies from 5 of 6 decision records; 1 left out: denied when recorded"),
        "{err}"
    );
    assert!(yaml.contains("name: \"backend-suggested\""), "{yaml}");
    assert!(yaml.contains("\"/api/orders/*\""), "{yaml}");
    std::fs::write(dir.join("suggested.yaml"), &yaml).unwrap();

    // An edited record (the intruder written in as a caller) is tampering: nothing is
    // suggested from such a collection.
    let forged = identity.dir.path().join("forged.log");
    let edited = lines.join("\n").replacen(FRONTEND, INTRUDER, 1);
    assert_ne!(edited, lines.join("\n"));
    std::fs::write(&forged, edited + "\n").unwrap();
    let (code, yaml_forged, err) = policy(&[
        "suggest",
        "--trust-bundle",
        bundle.to_str().unwrap(),
        forged.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(yaml_forged.is_empty());
    assert!(
        err.contains("error: the records were tampered with"),
        "{err}"
    );

    // A chain written by someone with the log store but not the proxy's key (hash-linked,
    // no checkpoint) is not tampering, but nothing vouches for it: none of it is used.
    let mut forged_chain = lines.clone();
    let (mut epoch, mut decision) = (None, None);
    for line in &lines {
        match parse_line(line).map(|(e, _)| e) {
            Ok(Entry::Epoch(e)) if epoch.is_none() => epoch = Some(Entry::Epoch(e)),
            Ok(Entry::Decision(d)) if decision.is_none() => decision = Some(d),
            _ => {}
        }
    }
    let chain = "shop/evil-1/1-forged";
    let mut epoch = epoch.unwrap();
    epoch.link(chain, 0, warden_core::audit::GENESIS);
    let (epoch_line, epoch_hash) = epoch.to_line();
    let mut decision = decision.unwrap();
    decision.client = Some(INTRUDER.to_string());
    decision.path = Some("/api/export".to_string());
    let mut decision = Entry::Decision(decision);
    decision.link(chain, 1, &epoch_hash);
    forged_chain.push(epoch_line);
    forged_chain.push(decision.to_line().0);
    let forged = identity.dir.path().join("forged-chain.log");
    std::fs::write(&forged, forged_chain.join("\n") + "\n").unwrap();
    let (code, yaml_forged, err) = policy(&[
        "suggest",
        "--trust-bundle",
        bundle.to_str().unwrap(),
        forged.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(!yaml_forged.contains(INTRUDER), "{yaml_forged}");
    assert!(
        err.contains("1 left out: not vouched for by a signed checkpoint"),
        "{err}"
    );

    // Enforced: what was seen passes (new IDs under the generalized paths too); a new caller,
    // a path a caller never used and a method it never used are refused.
    eventually("the suggested policy enforced", || {
        match call(&route("intruder"), "GET", "/api/orders/1") {
            403 => Ok(()),
            other => Err(format!("intruder got {other}")),
        }
    });
    for (who, method, path, status) in OBSERVED {
        assert_eq!(
            call(&route(who), method, path),
            status,
            "{who} {method} {path}"
        );
    }
    let cases = [
        ("frontend", "GET", "/api/orders/3", 200),
        ("reports", "GET", "/api/reports/monthly", 200),
        ("frontend", "GET", "/api/reports/daily", 403),
        ("reports", "GET", "/api/orders/1", 403),
        ("frontend", "DELETE", "/api/orders", 403),
        ("intruder", "GET", "/api/reports/daily", 403),
    ];
    for (who, method, path, status) in cases {
        assert_eq!(
            call(&route(who), method, path),
            status,
            "{who} {method} {path}"
        );
    }

    // Against the recorded traffic, the change denies nothing that was let through.
    let (code, out, err) = policy(&[
        "diff",
        before.to_str().unwrap(),
        dir.to_str().unwrap(),
        "--default",
        "audit",
        "--against",
        log.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        out.starts_with("compared 6 recorded requests: 0 newly denied, 0 newly allowed, 5 decided differently but still let through"),
        "{out}"
    );
    // And the made-up requests show what the audit default let in that is now refused.
    let (code, out, _) = policy(&[
        "diff",
        before.to_str().unwrap(),
        dir.to_str().unwrap(),
        "--default",
        "audit",
    ]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains(&format!(
            "spiffe://cluster.local/ns/warden-diff-other/sa/warden-diff-other -> {BACKEND}: "
        )),
        "{out}"
    );
}
