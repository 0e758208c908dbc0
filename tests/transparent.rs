//! Transparent interception with real root, real iptables and a real kernel: pods are
//! network namespaces on a bridge; `warden init` installs the rules, the proxy runs as UID
//! 2626, and unmodified apps talk to each other's addresses as if there were no mesh.
//!
//! Needs root, iproute2, iptables, tcpdump and setpriv (`scripts/test.sh` installs them).
//! Under `CI=true` a missing piece fails the test with a clear message; elsewhere it is
//! skipped with one.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "support/host.rs"]
mod host;
#[path = "support/lab.rs"]
mod lab;

use host::run;
use lab::{echo_app, http_app, http_get, pod_v4, pod_v6, tcp_echo, Lab, PODS, SW};

/// Whether this machine can run the test; under CI it must.
fn runnable() -> bool {
    host::runnable(
        "transparent interception tests",
        &[
            ("ip", "iproute2"),
            ("iptables-restore", "iptables"),
            ("ip6tables-restore", "iptables"),
            ("tcpdump", "tcpdump"),
            ("setpriv", "util-linux"),
        ],
    )
}

fn output(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts the identity service in the switch namespace and a sidecar in each meshed pod.
fn mesh(lab: &mut Lab) {
    assert!(lab.warden(&["ca", "init", "--dir", "ca"]).status.success());
    for (pod, _) in &PODS[..2] {
        let id = format!("spiffe://cluster.local/ns/test/sa/{pod}");
        let out = lab.warden(&["ca", "join-token", "--tokens", "tokens", "--id", &id]);
        assert!(out.status.success());
        std::fs::write(
            lab.path(&format!("{pod}.token")),
            String::from_utf8_lossy(&out.stdout).trim(),
        )
        .unwrap();
    }
    lab.identity_service();
    // Zero trust is the default: the pods' traffic is allowed by policy, as in a cluster.
    std::fs::create_dir(lab.path("policies")).unwrap();
    std::fs::write(
        lab.path("policies/allow-test.yaml"),
        "apiVersion: warden.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: allow-test, namespace: test}\nspec: {action: ALLOW, rules: [{from: {namespaces: [test]}}]}\n",
    )
    .unwrap();
    for (pod, _) in &PODS[..2] {
        let extra = [
            (
                "WARDEN_POLICY_DIR",
                lab.path("policies").display().to_string(),
            ),
            ("WARDEN_AUDIT_LOG", "off".to_string()),
            // A takes plaintext callers too (permissive); B is strict, the default.
            (
                "WARDEN_INBOUND_MODE",
                if *pod == "a" { "permissive" } else { "strict" }.to_string(),
            ),
        ];
        sidecar(lab, pod, &extra);
    }
}

/// `warden init` in `pod`, then its proxy as UID 2626 with the token `<pod>.token`, the
/// mesh's settings and `extra` (policies, audit log, inbound mode).
fn sidecar(lab: &mut Lab, pod: &str, extra: &[(&str, String)]) -> usize {
    let out = lab.warden_in(pod, &["init"]);
    assert!(
        out.status.success(),
        "warden init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut env = vec![
        (
            "WARDEN_IDENTITY_URL",
            "https://10.213.0.254:7150".to_string(),
        ),
        (
            "WARDEN_IDENTITY_TOKEN_FILE",
            lab.path(&format!("{pod}.token")).display().to_string(),
        ),
        (
            "WARDEN_TRUST_BUNDLE",
            lab.path("ca/bundle.crt").display().to_string(),
        ),
        ("WARDEN_POD_NAMESPACE", "test".to_string()),
        ("WARDEN_POD_SERVICE_ACCOUNT", pod.to_string()),
        ("WARDEN_POD_NAME", format!("{pod}-1")),
        ("WARDEN_TRANSPARENT", "true".to_string()),
        // The pods are meshed; the switch (10.213.0.254) is outside: egress.
        (
            "WARDEN_MESH_NETWORKS",
            "10.213.0.0/29,fd00:213::/120".to_string(),
        ),
        ("WARDEN_LOG", "info".to_string()),
    ];
    env.extend(extra.iter().cloned());
    let uid = [
        "setpriv",
        "--reuid",
        "2626",
        "--regid",
        "2626",
        "--clear-groups",
    ];
    lab.spawn(pod, &uid, &["proxy"], &env, "proxy ready")
}

fn nat_rules(lab: &Lab, pod: &str, tool: &str) -> String {
    output(&["ip", "netns", "exec", &lab.ns(pod), tool, "-t", "nat"])
}

#[test]
fn pods_talk_through_their_sidecars_with_mtls_and_plaintext_is_refused() {
    if !runnable() {
        return;
    }
    let started = Instant::now();
    let mut lab = Lab::new();
    let hits = Arc::new(AtomicUsize::new(0));
    http_app(&lab.ns("b"), format!("{}:8080", pod_v4(2)), hits.clone());
    http_app(&lab.ns("b"), format!("[{}]:8080", pod_v6(2)), hits.clone());
    echo_app(&lab.ns("b"), format!("{}:9000", pod_v4(2)));
    echo_app(&lab.ns(SW), "10.213.0.254:9100".to_string());
    mesh(&mut lab);

    // Capture what crosses the wire to pod b.
    let capture = lab.path("b.pcap");
    let mut tcpdump = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns(SW),
            "tcpdump",
            "-n",
            "-U",
            "--immediate-mode",
            "-i",
            &format!("{}b1", lab.tag),
        ])
        .args(["-w", &capture.display().to_string(), "tcp port 8080"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut tcpdump_err = BufReader::new(tcpdump.stderr.take().unwrap());
    let mut line = String::new();
    tcpdump_err.read_line(&mut line).unwrap();
    assert!(line.contains("listening"), "tcpdump: {line}");

    // 1. A calls B's address and port, as it would without a mesh, and gets B's answer.
    let a = lab.ns("a");
    let reply = http_get(&a, &format!("{}:8080", pod_v4(2)), "/hello");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("get /hello http/1.1"), "{reply}");
    // 2. B's app sees A's verified identity.
    assert!(
        reply.contains("x-warden-client-id: spiffe://cluster.local/ns/test/sa/a"),
        "{reply}"
    );
    assert!(reply.contains("x-warden-tls: tlsv1.3/"), "{reply}");
    // The same over IPv6 (IP6T_SO_ORIGINAL_DST on both sides).
    let reply6 = http_get(&a, &format!("[{}]:8080", pod_v6(2)), "/hello6");
    assert!(
        reply6.contains("x-warden-client-id: spiffe://cluster.local/ns/test/sa/a"),
        "{reply6}"
    );
    // Opaque TCP to another port.
    assert_eq!(
        tcp_echo(&a, &format!("{}:9000", pod_v4(2)), b"\x00\x01opaque bytes"),
        b"\x00\x01opaque bytes"
    );
    // Outside the mesh networks: plain TCP as if there were no proxy, counted as tls="false".
    assert_eq!(tcp_echo(&a, "10.213.0.254:9100", b"egress"), b"egress");
    let metrics = http_get(&a, "127.0.0.1:7191", "/metrics");
    assert!(
        metrics.contains(r#"warden_outbound_connections_total{tls="false"} 1"#),
        "{metrics}"
    );

    // 3. On the wire: TLS records, never the HTTP request.
    std::thread::sleep(Duration::from_millis(300));
    run(&["kill", "-INT", &tcpdump.id().to_string()]);
    tcpdump.wait().unwrap();
    let mut summary = String::new();
    let _ = tcpdump_err.read_to_string(&mut summary);
    let pcap = std::fs::read(&capture).unwrap();
    let has = |needle: &[u8]| pcap.windows(needle.len()).any(|w| w == needle);
    assert!(
        pcap.len() > 200,
        "packets were captured: {} bytes; tcpdump: {summary}",
        pcap.len()
    );
    assert!(
        has(b"\x16\x03\x01") || has(b"\x16\x03\x03"),
        "a TLS handshake crossed the wire"
    );
    assert!(
        has(b"\x17\x03\x03"),
        "TLS application data crossed the wire"
    );
    assert!(
        !has(b"GET /hello"),
        "the HTTP request line never crossed in the clear"
    );
    assert!(!has(b"x-warden-client-id"), "nor any header");

    // 4. C has no sidecar: its plaintext to B is refused (strict mode); B's app sees nothing.
    let before = hits.load(Ordering::SeqCst);
    let refused = http_get(&lab.ns("c"), &format!("{}:8080", pod_v4(2)), "/from-c");
    assert!(!refused.contains("200 OK"), "{refused}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        before,
        "the app saw nothing from C"
    );

    // 4b. A plaintext request to A's own inbound port (A is permissive) is closed, not
    //     forwarded to the proxy itself again and again until the connection limit.
    let inbound_opened = |metrics: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with("warden_tcp_connections_opened_total{direction=\"inbound\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no inbound connection count in {metrics}"))
    };
    let opened = inbound_opened(&http_get(&a, "127.0.0.1:7191", "/metrics"));
    let looped = http_get(&lab.ns("c"), &format!("{}:7143", pod_v4(1)), "/loop");
    assert!(
        !looped.starts_with("HTTP/"),
        "closed without an answer: {looped}"
    );
    let after = inbound_opened(&http_get(&a, "127.0.0.1:7191", "/metrics"));
    assert_eq!(after, opened + 1, "one connection, no loop");

    // 4c. A meshed pod scrapes another pod's proxy admin port: plaintext by design (B's
    //     inbound rules skip it), so A's outbound passes it through instead of trying mTLS.
    let scraped = http_get(&a, &format!("{}:7191", pod_v4(2)), "/metrics");
    assert!(scraped.starts_with("HTTP/1.1 200"), "{scraped}");
    assert!(
        scraped.contains("warden_tcp_connections_opened_total"),
        "{scraped}"
    );

    // 5. init is idempotent: once more, still one set of rules, and traffic still flows.
    let out = lab.warden_in("a", &["init"]);
    assert!(out.status.success());
    let rules = nat_rules(&lab, "a", "iptables-save");
    assert_eq!(
        rules
            .matches("-A PREROUTING -p tcp -j WARDEN_INBOUND")
            .count(),
        1,
        "{rules}"
    );
    assert_eq!(
        rules.matches("-A OUTPUT -p tcp -j WARDEN_OUTPUT").count(),
        1,
        "{rules}"
    );
    assert!(http_get(&a, &format!("{}:8080", pod_v4(2)), "/again").contains("sa/a"));

    // 6. --remove takes exactly our chains away, IPv4 and IPv6.
    let out = lab.warden_in("b", &["init", "--remove"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for tool in ["iptables-save", "ip6tables-save"] {
        let left = nat_rules(&lab, "b", tool);
        assert!(!left.contains("WARDEN"), "{tool} still has: {left}");
        assert!(left.contains("*nat"), "{tool} answered");
    }
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn dry_run_prints_both_families_without_privileges_or_changes() {
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args([
            "init",
            "--dry-run",
            "--skip-outbound-cidrs",
            "169.254.169.254/32,fd00:ec2::254/128",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("# iptables-restore --noflush"), "{text}");
    assert!(text.contains("# ip6tables-restore --noflush"), "{text}");
    assert!(text.contains("-A WARDEN_OUTPUT -m owner --uid-owner 2626 -j RETURN"));
    assert!(text.contains("-A WARDEN_OUTPUT -d 169.254.169.254/32 -j RETURN"));
    assert!(text.contains("-A WARDEN_OUTPUT -d fd00:ec2::254/128 -j RETURN"));
}

/// A pod with a global IPv6 address whose IPv6 nat table is missing (a node without the
/// `ip6table_nat` module, stood in for by an `ip6tables-save` that fails as it does there):
/// `warden init` fails before touching anything, instead of leaving IPv6 unintercepted.
#[test]
fn init_fails_closed_when_a_pod_with_global_ipv6_cannot_get_ipv6_rules() {
    if !runnable() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let stub = dir.path().join("ip6tables-save");
    std::fs::write(
        &stub,
        "#!/bin/sh\necho \"ip6tables-save v1.8.9 (nf_tables): table 'nat' does not exist\" >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let ns = format!("wdv6{}", std::process::id() % 100_000);
    run(&["ip", "netns", "add", &ns]);
    struct Gone(String);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _gone = Gone(ns.clone());
    run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
    run(&[
        "ip",
        "-n",
        &ns,
        "addr",
        "add",
        "2001:db8::5/128",
        "dev",
        "lo",
    ]);
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let init = || {
        Command::new("ip")
            .args(["netns", "exec", &ns, "env", &format!("PATH={path}")])
            .arg(env!("CARGO_BIN_EXE_warden"))
            .arg("init")
            .output()
            .unwrap()
    };
    let out = init();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "init must fail: {stderr}");
    assert!(
        stderr.contains("global IPv6 addresses (2001:db8::5)") && stderr.contains("ip6table_nat"),
        "the error says what and what to do: {stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    let v4 = output(&["ip", "netns", "exec", &ns, "iptables-save", "-t", "nat"]);
    assert!(!v4.contains("WARDEN"), "nothing installed on refusal: {v4}");

    // Without a global IPv6 address there is nothing to leave open: IPv4 only, said so.
    run(&[
        "ip",
        "-n",
        &ns,
        "addr",
        "del",
        "2001:db8::5/128",
        "dev",
        "lo",
    ]);
    let out = init();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("no IPv6 rules"), "{stderr}");
    let v4 = output(&["ip", "netns", "exec", &ns, "iptables-save", "-t", "nat"]);
    assert!(v4.contains("WARDEN_INBOUND"), "{v4}");
}

#[test]
fn policies_suggested_from_the_netns_mesh_allow_what_was_seen_and_deny_a_new_caller() {
    if !runnable() {
        return;
    }
    let mut lab = Lab::new();
    lab.identity_service();
    for (pod, _) in &PODS[..3] {
        let token = lab.join_token(&format!("spiffe://cluster.local/ns/test/sa/{pod}"));
        std::fs::copy(token, lab.path(&format!("{pod}.token"))).unwrap();
    }
    // B is observed under the audit default: everything is let through and recorded, in
    // a file its proxy (UID 2626) appends to; /admin is refused by a DENY policy.
    let policies = lab.path("policies-b");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("deny.yaml"),
        "apiVersion: warden.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: no-admin, namespace: test}\nspec: {action: DENY, rules: [{to: {paths: [\"/admin*\"]}}]}\n",
    )
    .unwrap();
    let log = lab.path("b-audit.log");
    std::fs::write(&log, "").unwrap();
    run(&["chown", "2626:2626", log.to_str().unwrap()]);
    for (pod, _) in &PODS[..3] {
        let mut extra = vec![("WARDEN_AUDIT_LOG", "off".to_string())];
        if *pod == "b" {
            extra = vec![
                ("WARDEN_AUDIT_LOG", log.display().to_string()),
                ("WARDEN_DEFAULT_POLICY", "audit".to_string()),
                ("WARDEN_POLICY_DIR", policies.display().to_string()),
            ];
        }
        sidecar(&mut lab, pod, &extra);
    }
    let app = format!("{}:8080", pod_v4(2));
    http_app(&lab.ns("b"), app.clone(), Arc::new(AtomicUsize::new(0)));
    let status = |pod: &str, path: &str| -> String {
        http_get(&lab.ns(pod), &app, path)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    // The observed period: A reads two orders and is refused /admin.
    for (path, want) in [
        ("/api/orders/1", " 200"),
        ("/api/orders/2", " 200"),
        ("/admin/users", " 403"),
    ] {
        assert!(status("a", path).contains(want), "{path}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&log)
        .unwrap()
        .matches("\"type\":\"decision\"")
        .count()
        < 3
    {
        assert!(Instant::now() < deadline, "the decisions were not recorded");
        std::thread::sleep(Duration::from_millis(50));
    }

    let out = lab.warden(&[
        "policy",
        "suggest",
        // Unverified: this proxy signs a checkpoint every 10 s (tests/policy_from_traffic.rs
        // suggests from verified records only).
        "--path-depth",
        "2",
        "--action",
        "allow",
        log.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("1 policies from 2 of 3 decision records"),
        "{stderr}"
    );
    std::fs::write(policies.join("suggested.yaml"), &out.stdout).unwrap();

    // Enforced: A keeps what it did (and the next order), C, never seen, is refused, and so
    // is a path A never used.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !status("c", "/api/orders/1").contains(" 403") {
        assert!(
            Instant::now() < deadline,
            "the suggested policy never took effect"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(status("a", "/api/orders/3").contains(" 200"));
    assert!(status("a", "/api/reports").contains(" 403"));
    assert!(status("a", "/admin/users").contains(" 403"));
}
