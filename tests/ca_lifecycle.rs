//! The certificate lifecycle with real processes, traffic flowing throughout: the identity
//! service issues 6-second SVIDs from a CA directory (as the `warden-identity-ca` Secret is
//! mounted in a cluster) to two proxies calling each other every 20 ms. `warden ca
//! rotate-issuer` swaps the issuer: the proxies renew onto it with not one request failing.
//! Then the trust anchor is rotated with an overlapping bundle, step by step as
//! docs/identity.md says, again without one failure, ending with the old root gone.

#[path = "support/apiserver.rs"]
mod apiserver;
#[path = "support/mesh.rs"]
mod mesh;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use mesh::{eventually, http_get, Collected, Identity, Proxy};
use warden_core::audit::{parse_line, Entry};

const BACKEND: &str = "spiffe://cluster.local/ns/shop/sa/backend";
const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";

/// The certificate of a PEM file, as base64 DER (how checkpoints carry SVID chains).
fn cert_b64(path: &Path) -> String {
    let pem = std::fs::read(path).unwrap();
    let der = warden_identity::bundle::certs_from_pem(&pem, "cert").unwrap();
    base64::engine::general_purpose::STANDARD.encode(&der[0])
}

/// The issuer of the SVID that signed the server's latest checkpoint.
fn server_issuer(collected: &Collected) -> Option<String> {
    collected
        .lock()
        .unwrap()
        .iter()
        .rev()
        .filter_map(|l| parse_line(l).ok())
        .find_map(|(e, _)| match e {
            Entry::Checkpoint(cp) => cp.svid.get(1).cloned(),
            _ => None,
        })
}

/// Successful certificate renewals of a proxy so far.
fn renewals(proxy: &Proxy) -> u64 {
    let (_, body) = proxy.admin_get("/metrics");
    body.lines()
        .filter(|l| {
            l.starts_with("warden_identity_renewals_total{") && l.contains("result=\"success\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Waits until each proxy has renewed `times` more times from now.
fn renewed(proxies: &[&Proxy], times: u64, why: &str) {
    let start: Vec<u64> = proxies.iter().map(|p| renewals(p)).collect();
    eventually(why, || {
        let now: Vec<u64> = proxies.iter().map(|p| renewals(p)).collect();
        now.iter()
            .zip(&start)
            .all(|(n, s)| *n >= s + times)
            .then_some(())
            .ok_or_else(|| format!("renewals {start:?} -> {now:?}"))
    });
}

#[test]
fn issuer_and_trust_anchor_rotations_never_fail_a_request() {
    let identity = Identity::start_with(&["--svid-ttl", "6s"]);
    let ca = identity.dir.path().join("ca");
    let collected = Collected::default();
    let config = format!(
        "inbound: [{{listen: \"127.0.0.1:0\", app: \"{}\"}}]\nauthorization:\n  default: all-authenticated\n  log_allowed: true\n  audit_log: stdout\n  audit_checkpoint_interval: 1s\n",
        mesh::app()
    );
    let server = Proxy::start_collecting(
        "backend",
        &identity,
        BACKEND,
        &config,
        &[("WARDEN_POD_NAME", "backend-1")],
        Some(collected.clone()),
    );
    server.wait_ready();
    let client = Proxy::start(
        "frontend",
        &identity,
        FRONTEND,
        &format!(
            "outbound: [{{listen: \"127.0.0.1:0\", destination: \"{}\", identity: \"{BACKEND}\"}}]\n",
            server.inbound[0]
        ),
    );
    client.wait_ready();

    // Requests every 20 ms for the whole test; every one must succeed.
    let stop = Arc::new(AtomicBool::new(false));
    let (total, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let traffic = {
        let (stop, total, failed) = (stop.clone(), total.clone(), failed.clone());
        let route = client.outbound[0].clone();
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let (status, _) = http_get(&route, "/orders", "backend");
                total.fetch_add(1, Ordering::Relaxed);
                if !status.contains(" 200") {
                    failed.fetch_add(1, Ordering::Relaxed);
                    failures.push(status);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            failures
        })
    };
    let old_issuer = cert_b64(&ca.join("issuer.crt"));
    eventually("a checkpoint signed under the first issuer", || {
        (server_issuer(&collected) == Some(old_issuer.clone()))
            .then_some(())
            .ok_or_else(|| format!("{:?}", server_issuer(&collected)))
    });

    // 1. A new issuer from the root: the proxies renew onto it.
    mesh::warden(
        &["ca", "rotate-issuer", "--dir", "ca", "--issuer-ttl", "30d"],
        identity.dir.path(),
    );
    let new_issuer = cert_b64(&ca.join("issuer.crt"));
    assert_ne!(new_issuer, old_issuer);
    eventually("the server renewed onto the new issuer", || {
        (server_issuer(&collected) == Some(new_issuer.clone()))
            .then_some(())
            .ok_or_else(|| "still the old issuer".to_string())
    });
    renewed(
        &[&server, &client],
        1,
        "both proxies renewed after the rotation",
    );

    // 2. Trust anchor rotation. (a) The new root joins the bundle; the proxies learn it on
    //    their next renewal (twice over: the service reloads every 5 s).
    mesh::warden(&["ca", "init", "--dir", "next"], identity.dir.path());
    let next = identity.dir.path().join("next");
    let old_root = std::fs::read_to_string(ca.join("root.crt")).unwrap();
    let new_root = std::fs::read_to_string(next.join("root.crt")).unwrap();
    warden_identity::ca::write_file(
        &ca.join("bundle.crt"),
        format!("{old_root}{new_root}").as_bytes(),
        0o644,
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(6));
    renewed(
        &[&server, &client],
        2,
        "both proxies renewed with the overlapping bundle",
    );
    // (b) The new root's issuer signs: SVIDs now chain to the new root, which both trust.
    for file in ["issuer.key", "issuer.crt"] {
        let text = std::fs::read(next.join(file)).unwrap();
        warden_identity::ca::write_file(&ca.join(file), &text, 0o600).unwrap();
    }
    let next_issuer = cert_b64(&ca.join("issuer.crt"));
    eventually("the server renewed onto the new root's issuer", || {
        (server_issuer(&collected) == Some(next_issuer.clone()))
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    });
    renewed(
        &[&server, &client],
        2,
        "both proxies renewed under the new root",
    );
    // (c) The old root leaves the bundle; after the next renewals nobody trusts it.
    warden_identity::ca::write_file(&ca.join("bundle.crt"), new_root.as_bytes(), 0o644).unwrap();
    std::thread::sleep(Duration::from_secs(6));
    renewed(
        &[&server, &client],
        2,
        "both proxies renewed with the new root alone",
    );

    stop.store(true, Ordering::Relaxed);
    let failures = traffic.join().unwrap();
    let total = total.load(Ordering::Relaxed);
    assert!(total > 500, "{total} requests");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "of {total} requests: {failures:?}"
    );
}
