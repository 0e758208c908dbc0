//! The `warden` binary as an operator runs it: `ca init|issue`, `cert inspect|verify`, `demo`.

#[path = "support/ports.rs"]
mod ports;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn warden(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(args)
        .current_dir(cwd)
        .env_remove("WARDEN_LOG")
        .output()
        .expect("runs warden")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failed command prints exactly one line naming the problem.
fn assert_one_line_error(o: &Output, code: i32, needle: &str) {
    assert_eq!(o.status.code(), Some(code), "stderr: {}", stderr(o));
    let err = stderr(o);
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.contains(needle), "{needle:?} not in {err:?}");
}

#[test]
fn ca_init_issue_inspect_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    let o = warden(
        &["ca", "init", "--dir", "ca", "--trust-domain", "example.org"],
        dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("example.org"));
    let key_mode = std::fs::metadata(dir.join("ca/issuer.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);

    let o = warden(
        &["ca", "init", "--dir", "ca", "--trust-domain", "example.org"],
        dir,
    );
    assert_one_line_error(&o, 1, "--force");
    let o = warden(
        &[
            "ca",
            "init",
            "--dir",
            "ca",
            "--trust-domain",
            "example.org",
            "--force",
        ],
        dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));

    let id = "spiffe://example.org/ns/shop/sa/web";
    let o = warden(
        &[
            "ca", "issue", "--dir", "ca", "--id", id, "--out", "web", "--ttl", "2h",
        ],
        dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("valid for 2h"), "{}", stdout(&o));
    let mode = std::fs::metadata(dir.join("web.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "private key not readable by others");
    let chain = std::fs::read_to_string(dir.join("web.crt")).unwrap();
    assert_eq!(
        chain.matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf + issuer"
    );
    let o = warden(
        &["ca", "issue", "--dir", "ca", "--id", id, "--out", "web"],
        dir,
    );
    assert_one_line_error(&o, 1, "already exists");

    let o = warden(&["cert", "inspect", "web.crt"], dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for needle in [
        &format!("SPIFFE ID:     {id}"),
        "Issuer:        O=example.org, CN=Warden issuer",
        "Serial:",
        "Not before:",
        "Not after:",
        "Key usage:     digitalSignature, (critical)",
        "Extended KU:   serverAuth, clientAuth",
        "CA:            no",
        "--- certificate 1 of 2",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }

    let o = warden(
        &["cert", "verify", "--bundle", "ca/bundle.crt", "web.crt"],
        dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), id);

    // A serving certificate with DNS names too (the injector's, for the Helm chart).
    let o = warden(
        &[
            "ca",
            "issue",
            "--dir",
            "ca",
            "--id",
            id,
            "--out",
            "svc",
            "--dns-name",
            "warden-injector.warden-system.svc",
        ],
        dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = warden(&["cert", "inspect", "svc.crt"], dir);
    assert!(
        stdout(&o).contains("warden-injector.warden-system.svc"),
        "{}",
        stdout(&o)
    );
    let o = warden(
        &[
            "cert",
            "verify",
            "--bundle",
            "ca/bundle.crt",
            "--trust-domain",
            "example.org",
            "web.crt",
        ],
        dir,
    );
    assert_eq!(stdout(&o).trim(), id);

    // Rejections: exit 1 and one line naming the rule.
    let o = warden(
        &[
            "ca",
            "init",
            "--dir",
            "other",
            "--trust-domain",
            "example.org",
        ],
        dir,
    );
    assert!(o.status.success());
    let o = warden(
        &["cert", "verify", "--bundle", "other/bundle.crt", "web.crt"],
        dir,
    );
    assert_one_line_error(&o, 1, "not signed by the trust bundle of example.org");
    let o = warden(
        &[
            "cert",
            "verify",
            "--bundle",
            "ca/bundle.crt",
            "--trust-domain",
            "other.org",
            "web.crt",
        ],
        dir,
    );
    assert_one_line_error(&o, 1, "trust domain \"example.org\" is not trusted");
    let o = warden(
        &[
            "cert",
            "verify",
            "--bundle",
            "ca/bundle.crt",
            "ca/issuer.crt",
        ],
        dir,
    );
    assert_one_line_error(&o, 1, "has no path");
}

#[test]
fn bad_input_gets_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let o = warden(&["cert", "inspect", "missing.pem"], dir);
    assert_one_line_error(&o, 1, "cannot read missing.pem: No such file");

    std::fs::write(dir.join("junk.pem"), "hello").unwrap();
    let o = warden(&["cert", "inspect", "junk.pem"], dir);
    assert_one_line_error(&o, 1, "junk.pem: no certificate found");

    let o = warden(&["ca", "init", "--dir", "ca"], dir);
    assert!(o.status.success());
    let o = warden(
        &[
            "ca",
            "issue",
            "--dir",
            "ca",
            "--id",
            "spiffe://other.org/x",
            "--out",
            "x",
        ],
        dir,
    );
    assert_one_line_error(&o, 1, "not in this CA's trust domain cluster.local");
    let o = warden(
        &[
            "ca",
            "issue",
            "--dir",
            "nowhere",
            "--id",
            "spiffe://cluster.local/x",
            "--out",
            "x",
        ],
        dir,
    );
    assert_one_line_error(&o, 1, "nowhere/issuer.crt");

    // Usage errors come from clap (exit 2) and still name the input and the rule.
    let o = warden(
        &[
            "ca",
            "issue",
            "--dir",
            "ca",
            "--id",
            "spiffe://Cluster.local/x",
            "--out",
            "x",
        ],
        dir,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("invalid SPIFFE ID \"spiffe://Cluster.local/x\""),
        "{}",
        stderr(&o)
    );
    let o = warden(&["ca", "init", "--dir", "y", "--issuer-ttl", "3q"], dir);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("invalid duration \"3q\""),
        "{}",
        stderr(&o)
    );
    assert!(!dir.join("y").exists(), "nothing written on bad input");
}

#[test]
fn demo_runs_the_mesh_and_shows_what_each_callee_saw() {
    let tmp = tempfile::tempdir().unwrap();
    let o = warden(&["demo", "--once"], tmp.path());
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let text = stdout(&o);
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows.len(), 4, "header + 3 rows:\n{text}");
    assert!(
        rows[0].contains("CLIENT IDENTITY THE CALLEE SAW") && rows[0].contains("DECISION"),
        "{text}"
    );
    assert!(
        rows[1].starts_with("frontend") && rows[1].contains("200      TLSv1.3/X25519MLKEM768"),
        "{text}"
    );
    assert!(
        rows[1].contains("spiffe://cluster.local/ns/demo/sa/frontend"),
        "{text}"
    );
    assert!(
        rows[1].ends_with("allow by demo/backend-allow-frontend"),
        "{text}"
    );
    assert!(
        rows[2].starts_with("intruder") && rows[2].contains(" 403 "),
        "{text}"
    );
    assert!(
        rows[2].contains("no ALLOW policy for this workload matched"),
        "{text}"
    );
    assert!(
        rows[3].starts_with("plaintext client") && rows[3].contains("refused"),
        "{text}"
    );
}

/// Reads the child's stderr until the "serving" line and returns (https addr, admin addr).
fn wait_for_serving(child: &mut std::process::Child) -> (String, String) {
    let (https, admin, _rest) = wait_for_serving_logs(child);
    (https, admin)
}

/// Like [`wait_for_serving`], and keeps collecting the child's later stderr.
fn wait_for_serving_logs(
    child: &mut std::process::Child,
) -> (String, String, std::sync::Arc<std::sync::Mutex<String>>) {
    use std::io::BufRead;
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(stderr).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("warden identity: serving https://") {
            let (https, admin) = rest.split_once(" (admin http://").unwrap();
            let collected = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
            let sink = collected.clone();
            std::thread::spawn(move || {
                for line in lines.map_while(Result::ok) {
                    let mut all = sink.lock().unwrap();
                    all.push_str(&line);
                    all.push('\n');
                }
            });
            return (
                https.to_string(),
                admin.trim_end_matches(')').to_string(),
                collected,
            );
        }
    }
    panic!("warden identity exited before serving");
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn identity_service_issues_reports_ready_and_stops_on_sigterm() {
    use warden_identity::client::{CertifyClient, CertifyClientConfig};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    assert!(warden(&["ca", "init", "--dir", "ca"], dir).status.success());
    let id = "spiffe://cluster.local/ns/shop/sa/web";
    let o = warden(&["ca", "join-token", "--tokens", "tokens", "--id", id], dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let token = stdout(&o).trim().to_string();
    assert_eq!(token.len(), 64);
    let file = std::fs::read_to_string(dir.join("tokens")).unwrap();
    assert!(!file.contains(&token), "the token file holds only hashes");
    std::fs::write(dir.join("token"), &token).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args([
            "identity",
            "--ca-dir",
            "ca",
            "--auth",
            "join-tokens",
            "--join-tokens",
            "tokens",
        ])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .current_dir(dir)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (https, admin) = wait_for_serving(&mut child);

    let ready = http_get(&admin, "/ready");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    assert!(ready.contains("issuing for cluster.local"), "{ready}");
    assert!(http_get(&admin, "/live").starts_with("HTTP/1.1 200"));

    let bundle = warden_identity::TrustBundle::from_pem_file(
        warden_core::TrustDomain::default(),
        &dir.join("ca/bundle.crt"),
    )
    .unwrap();
    let client = CertifyClient::new(
        CertifyClientConfig {
            url: format!("https://{https}"),
            server_id: warden_core::SpiffeId::parse(
                "spiffe://cluster.local/ns/warden-system/sa/warden-identity",
            )
            .unwrap(),
            token_file: dir.join("token"),
            expected_id: Some(warden_core::SpiffeId::parse(id).unwrap()),
            timeout: std::time::Duration::from_secs(10),
        },
        warden_identity::TrustStore::single(bundle),
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let issued = runtime.block_on(client.certify()).unwrap();
    assert_eq!(issued.svid.id().as_str(), id);
    let metrics = http_get(&admin, "/metrics");
    assert!(
        metrics.contains("warden_ca_certificates_issued_total{result=\"issued\"} 1"),
        "{metrics}"
    );
    // What the expiry alerts watch: the issuer's notAfter (365 days, `ca init`'s default)
    // and the first trust anchor's (3650 days).
    let gauge = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
            .parse()
            .unwrap()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let days = |name: &str| ((gauge(name) - now) / 86400.0).round();
    assert_eq!(days("warden_ca_issuer_expiry_timestamp_seconds"), 365.0);
    assert_eq!(
        days("warden_ca_trust_anchor_expiry_timestamp_seconds"),
        3650.0
    );

    let started = std::time::Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn ca_join_token_writes_an_expiry_and_the_single_use_flag() {
    use std::time::{Duration, SystemTime};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let id = "spiffe://cluster.local/ns/shop/sa/web";
    let args = ["ca", "join-token", "--tokens", "tokens", "--id", id];
    let once = warden(&[&args[..], &["--ttl", "1h", "--single-use"]].concat(), dir);
    assert!(once.status.success(), "{}", stderr(&once));
    assert_eq!(stdout(&once).trim().len(), 64, "the token, alone on stdout");
    assert!(
        stderr(&once).contains("single-use join token") && stderr(&once).contains("valid for 1h"),
        "{}",
        stderr(&once)
    );
    let reusable = warden(&args, dir);
    assert!(reusable.status.success(), "{}", stderr(&reusable));
    assert!(
        stderr(&reusable).contains("valid for 1d"),
        "{}",
        stderr(&reusable)
    );

    let file = std::fs::read_to_string(dir.join("tokens")).unwrap();
    assert!(!file.contains(stdout(&once).trim()), "hashes only");
    let lines: Vec<&str> = file.lines().collect();
    assert_eq!(lines.len(), 2, "{file}");
    assert!(lines[0].ends_with(" single-use") && lines[0].contains(" expires="));
    assert!(!lines[1].contains("single-use") && lines[1].contains(" expires="));
    let entries = warden_identity::join_token::parse(&file, "tokens").unwrap();
    let left = |single_use: bool| {
        let entry = entries
            .values()
            .find(|e| e.single_use == single_use)
            .unwrap();
        entry.expires.duration_since(SystemTime::now()).unwrap()
    };
    let hour = Duration::from_secs(3600);
    assert!(left(true) <= hour && left(true) > hour - Duration::from_secs(120));
    assert!(left(false) <= 24 * hour && left(false) > 24 * hour - Duration::from_secs(120));

    let zero = warden(&[&args[..], &["--ttl", "0s"]].concat(), dir);
    assert_one_line_error(&zero, 1, "invalid join-token TTL");
    // A file from before tokens expired fails closed and says how to get out.
    let old = format!("sha256:{} {id}\n", "ab".repeat(32));
    std::fs::write(dir.join("tokens"), old).unwrap();
    let o = warden(&args, dir);
    assert_one_line_error(&o, 1, "has no \"expires=\"");
    assert!(stderr(&o).contains("warden ca join-token --tokens tokens --id"));
}

#[test]
fn proxy_check_config_prints_the_resolved_config_or_one_error_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("proxy.yaml"),
        "inbound:\n  - listen: 127.0.0.1:7143\n    app: 127.0.0.1:8080\ntimeouts: {detect: 1s}\n",
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["proxy", "--config", "proxy.yaml", "--check-config"])
        .env("WARDEN_POD_NAMESPACE", "shop")
        .env("WARDEN_POD_SERVICE_ACCOUNT", "web")
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let yaml = stdout(&o);
    for needle in [
        "expected_id: spiffe://cluster.local/ns/shop/sa/web",
        "server_id: spiffe://cluster.local/ns/warden-system/sa/warden-identity",
        "app: 127.0.0.1:8080",
        "detect: 1s",
        "connect: 3s",
    ] {
        assert!(yaml.contains(needle), "{needle:?} not in:\n{yaml}");
    }
    std::fs::write(dir.join("bad.yaml"), "timeouts: {detect: soon}\n").unwrap();
    let o = warden(&["proxy", "--config", "bad.yaml", "--check-config"], dir);
    assert_one_line_error(&o, 1, "bad.yaml");
    assert!(
        stderr(&o).contains("invalid duration \"soon\""),
        "{}",
        stderr(&o)
    );
}

#[test]
fn proxy_gets_its_identity_from_the_identity_service_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    assert!(warden(&["ca", "init", "--dir", "ca"], dir).status.success());
    let id = "spiffe://cluster.local/ns/shop/sa/web";
    let o = warden(&["ca", "join-token", "--tokens", "tokens", "--id", id], dir);
    std::fs::write(dir.join("token"), stdout(&o).trim()).unwrap();
    let mut identity = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args([
            "identity",
            "--ca-dir",
            "ca",
            "--auth",
            "join-tokens",
            "--join-tokens",
            "tokens",
        ])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .current_dir(dir)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (https, _) = wait_for_serving(&mut identity);

    let mut proxy = Command::new(env!("CARGO_BIN_EXE_warden"))
        .arg("proxy")
        .env("WARDEN_IDENTITY_URL", format!("https://{https}"))
        .env("WARDEN_IDENTITY_TOKEN_FILE", dir.join("token"))
        .env("WARDEN_TRUST_BUNDLE", dir.join("ca/bundle.crt"))
        .env("WARDEN_POD_NAMESPACE", "shop")
        .env("WARDEN_POD_SERVICE_ACCOUNT", "web")
        .env("WARDEN_ADMIN_LISTEN", "127.0.0.1:0")
        .current_dir(dir)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let admin = {
        use std::io::BufRead;
        let stderr = proxy.stderr.take().unwrap();
        let line = std::io::BufReader::new(stderr)
            .lines()
            .map(|l| l.unwrap())
            .find(|l| l.starts_with("warden proxy: admin http://"))
            .expect("the proxy prints its addresses");
        line["warden proxy: admin http://".len()..]
            .split(' ')
            .next()
            .unwrap()
            .to_string()
    };
    let mut ready = String::new();
    for _ in 0..600 {
        ready = http_get(&admin, "/ready");
        if ready.starts_with("HTTP/1.1 200") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(ready.contains(&format!("ready: {id}")), "{ready}");
    for child in [&mut proxy, &mut identity] {
        let kill = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        assert!(child.wait().unwrap().success(), "clean exit on SIGTERM");
    }
}

const POLICY: &str = "apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: backend-allow-frontend, namespace: shop}
spec:
  selector: {serviceAccounts: [backend]}
  action: ALLOW
  rules:
    - from: {identities: [\"spiffe://cluster.local/ns/shop/sa/frontend\"]}
      to: {ports: [8080], methods: [GET], paths: [\"/api/*\"]}
    - from: {identities: [\"spiffe://cluster.local/ns/shop/sa/frontend\"]}
      to: {ports: [8080], methods: [GET], paths: [\"/api/v1\"]}
";

#[test]
fn policy_check_reports_errors_with_locations_and_warnings() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("policies");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("good.yaml"), POLICY).unwrap();
    let o = warden(&["policy", "check", "policies"], tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("1 policies, 0 errors, 1 warnings"),
        "{}",
        stdout(&o)
    );
    assert!(
        stderr(&o).contains("warning: shop/backend-allow-frontend rule 1: is shadowed by rule 0"),
        "{}",
        stderr(&o)
    );

    std::fs::write(dir.join("bad.yaml"), POLICY.replace("[GET]", "[get]")).unwrap();
    std::fs::write(dir.join("worse.yaml"), "---\nkind: AuthorizationPolicy\n").unwrap();
    let o = warden(&["policy", "check", "policies"], tmp.path());
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("error: policies/bad.yaml: document 1: field spec.rules[0].to.methods[0]: \"get\" is not an upper-case HTTP method"), "{err}");
    assert!(
        err.contains("error: policies/worse.yaml: document 1"),
        "every file's error is reported: {err}"
    );
}

#[test]
fn policy_test_diff_netpol_and_suggest_as_ci_runs_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir(dir.join("old")).unwrap();
    std::fs::write(dir.join("old/p.yaml"), POLICY).unwrap();
    // The proposal: POST too, under /api/ only.
    std::fs::create_dir(dir.join("new")).unwrap();
    std::fs::write(
        dir.join("new/p.yaml"),
        POLICY
            .replace(
                "methods: [GET], paths: [\"/api/*\"]",
                "methods: [GET, POST], paths: [\"/api/*\"]",
            )
            .replace("paths: [\"/api/v1\"]", "paths: [\"/api/v1/*\"]"),
    )
    .unwrap();
    let case = |name: &str, method: &str, path: &str, expect: &str| {
        format!("  - name: {name}\n    from: spiffe://cluster.local/ns/shop/sa/frontend\n    workload: spiffe://cluster.local/ns/shop/sa/backend\n    port: 8080\n    method: {method}\n    path: {path}\n    expect: {expect}\n")
    };
    let cases = format!(
        "cases:\n{}{}{}  - name: nobody else\n    workload: spiffe://cluster.local/ns/shop/sa/backend\n    port: 8080\n    method: GET\n    path: /api/orders\n    expect: deny\n    policy: no-match\n",
        case("reads", "GET", "/api/orders", "allow"),
        case("dot segments normalized", "GET", "/x/../api/orders", "allow"),
        case("writes", "POST", "/api/orders", "deny")
    );
    std::fs::write(dir.join("cases.yaml"), &cases).unwrap();

    let o = warden(
        &[
            "policy",
            "test",
            "old",
            "cases.yaml",
            "--junit",
            "report.xml",
        ],
        dir,
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).ends_with("4 cases, 4 passed, 0 failed\n"),
        "{}",
        stdout(&o)
    );
    let xml = std::fs::read_to_string(dir.join("report.xml")).unwrap();
    assert!(
        xml.contains("<testsuite name=\"cases.yaml\" tests=\"4\" failures=\"0\""),
        "{xml}"
    );

    // The proposal breaks a case: exit 1, the line says what was decided and expected.
    let o = warden(
        &[
            "policy",
            "test",
            "new",
            "cases.yaml",
            "--junit",
            "report.xml",
        ],
        dir,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("FAIL  cases.yaml: writes: expected deny, got allow by shop/backend-allow-frontend rule 0"),
        "{}",
        stdout(&o)
    );
    let xml = std::fs::read_to_string(dir.join("report.xml")).unwrap();
    assert!(
        xml.contains("failures=\"1\"") && xml.contains("<failure message=\"expected deny"),
        "{xml}"
    );

    // A bad case file: one line naming the file and the field.
    std::fs::write(
        dir.join("bad.yaml"),
        "cases: [{workload: spiffe://td/ns/a/sa/b, port: 80, expect: maybe}]",
    )
    .unwrap();
    let o = warden(&["policy", "test", "old", "bad.yaml"], dir);
    assert_one_line_error(&o, 1, "bad.yaml: field cases[0].expect");

    // diff: no change exits 0; the proposal newly allows (exit 2) and narrows nothing.
    let o = warden(&["policy", "diff", "old", "old"], dir);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let o = warden(&["policy", "diff", "old", "new"], dir);
    assert_eq!(o.status.code(), Some(2), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains(" 0 newly denied, "), "{out}");
    assert!(out.contains("port 8080 POST /api/"), "{out}");
    // The other way round, the same requests are newly denied: exit 3.
    let o = warden(&["policy", "diff", "new", "old"], dir);
    assert_eq!(o.status.code(), Some(3), "{}", stdout(&o));

    // netpol: the YAML on stdout, one per ALLOW policy.
    let o = warden(&["policy", "netpol", "new"], dir);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).matches("kind: NetworkPolicy").count(), 1);
    assert!(
        stdout(&o).contains("warden.dev/service-account: frontend"),
        "{}",
        stdout(&o)
    );

    // suggest: records are required.
    std::fs::write(dir.join("empty.log"), "not an audit line\n").unwrap();
    let o = warden(&["policy", "suggest", "empty.log"], dir);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("error: no decision records in empty.log"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn policy_explain_prints_the_decision_and_what_made_it() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("p.yaml"), POLICY).unwrap();
    let explain = |from: &str, path: &str| {
        warden(
            &[
                "policy",
                "explain",
                "p.yaml",
                "--workload",
                "spiffe://cluster.local/ns/shop/sa/backend",
                "--from",
                from,
                "--port",
                "8080",
                "--method",
                "GET",
                "--path",
                path,
            ],
            tmp.path(),
        )
    };
    let o = explain("spiffe://cluster.local/ns/shop/sa/frontend", "/api/orders");
    let text = stdout(&o);
    assert!(
        text.contains("decision: allow")
            && text.contains("policy:   shop/backend-allow-frontend")
            && text.contains("rule:     0"),
        "{text}"
    );
    let o = explain(
        "spiffe://cluster.local/ns/shop/sa/frontend",
        "/api/../admin",
    );
    let text = stdout(&o);
    assert!(
        text.contains("decision: deny") && text.contains("path:     /admin (normalized)"),
        "{text}"
    );
    let o = explain("spiffe://cluster.local/ns/shop/sa/intruder", "/api/orders");
    assert!(
        stdout(&o).contains("reason:   no ALLOW policy for this workload matched"),
        "{}",
        stdout(&o)
    );
    let o = explain("spiffe://cluster.local/ns/shop/sa/frontend", "/api%2fx");
    assert_one_line_error(&o, 1, "--path \"/api%2fx\"");
}

/// A MeshPolicy as an operator applies it: prod namespaces refuse /debug, and their mesh
/// default is audit.
const MESH_POLICY: &str = "---
apiVersion: warden.dev/v1alpha1
kind: MeshPolicy
metadata: {name: prod-no-debug}
spec:
  namespaceSelector: {matchLabels: {env: prod}}
  action: DENY
  rules: [{to: {paths: [\"/debug*\"]}}]
  default: audit
";

#[test]
fn policy_check_and_explain_take_the_crd_yaml_mesh_policies_included() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("policies");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("all.yaml"), format!("{POLICY}{MESH_POLICY}")).unwrap();
    let o = warden(&["policy", "check", "policies"], tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("2 policies, 0 errors"),
        "{}",
        stdout(&o)
    );

    let explain = |from: &str, path: &str, labels: &[&str]| {
        let mut args = vec![
            "policy",
            "explain",
            "policies",
            "--workload",
            "spiffe://cluster.local/ns/shop/sa/cart",
            "--from",
            from,
            "--port",
            "8080",
            "--method",
            "GET",
            "--path",
            path,
        ];
        for label in labels {
            args.extend(["--namespace-label", label]);
        }
        stdout(&warden(&args, tmp.path()))
    };
    let frontend = "spiffe://cluster.local/ns/shop/sa/frontend";
    // (caller, path, namespace labels, decision, deciding policy)
    let cases = [
        (
            frontend,
            "/debug/vars",
            &["env=prod"][..],
            "deny",
            "MeshPolicy/prod-no-debug",
        ),
        (frontend, "/", &["env=prod"][..], "audit", "-"),
        // The selector does not match: neither the mesh rules nor the mesh default apply,
        // so the built-in default (deny) decides.
        (frontend, "/debug/vars", &["env=dev"][..], "deny", "-"),
        (frontend, "/", &[][..], "deny", "-"),
    ];
    for (from, path, labels, decision, policy) in cases {
        let text = explain(from, path, labels);
        assert!(
            text.contains(&format!("decision: {decision}"))
                && text.contains(&format!("policy:   {policy}")),
            "{path} {labels:?}: {text}"
        );
    }

    std::fs::write(dir.join("bad.yaml"), MESH_POLICY.replace("DENY", "REFUSE")).unwrap();
    let o = warden(&["policy", "check", "policies"], tmp.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("error: policies/bad.yaml: document 1: field spec.action"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn audit_verify_reports_per_chain_with_exit_codes_and_json() {
    use warden_core::audit::{Checkpoint, Entry, EpochRecord, GENESIS};
    let tmp = tempfile::tempdir().unwrap();
    let ca = warden_identity::ca::generate(&warden_identity::ca::InitOptions::new(
        warden_core::TrustDomain::default(),
    ))
    .unwrap()
    .authority()
    .unwrap();
    std::fs::write(tmp.path().join("bundle.crt"), ca.bundle().to_pem()).unwrap();
    let id = warden_core::SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/backend").unwrap();
    let svid = ca.issue(&id, std::time::Duration::from_secs(3600)).unwrap();
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    // An epoch, two decisions, a signed final checkpoint: what a proxy writes.
    let chain = "shop/backend-1/1764144000-0000abcd";
    let (mut prev, mut lines) = (GENESIS.to_string(), Vec::new());
    let mut push = |mut entry: Entry, lines: &mut Vec<String>| {
        entry.link(chain, lines.len() as u64, &prev);
        let (line, hash) = entry.to_line();
        prev = hash;
        lines.push(line);
    };
    push(
        Entry::Epoch(EpochRecord {
            chain: String::new(),
            seq: 0,
            time: now.clone(),
            pod: "shop/backend-1".into(),
            run: "1764144000-0000abcd".into(),
            workload: id.to_string(),
            version: "test".into(),
            prev: String::new(),
        }),
        &mut lines,
    );
    for path in ["/a", "/b"] {
        let record = warden_core::audit::AuditRecord {
            chain: String::new(),
            seq: 0,
            time: now.clone(),
            direction: "inbound".into(),
            client: None,
            client_addr: None,
            workload: id.to_string(),
            port: 80,
            method: Some("GET".into()),
            path: Some(path.into()),
            decision: "deny".into(),
            policy: None,
            rule: None,
            reason: "r".into(),
            audit_policies: None,
            request_id: None,
            prev: String::new(),
        };
        push(Entry::Decision(record), &mut lines);
    }
    let mut cp = Checkpoint {
        chain: chain.into(),
        seq: 3,
        time: now.clone(),
        first: 0,
        dropped: 0,
        last: true,
        workload: String::new(),
        alg: String::new(),
        svid: vec![],
        sig: String::new(),
        prev: String::new(),
    };
    cp.prev = warden_core::audit::parse_line(&lines[2]).unwrap().1;
    warden_identity::audit_signature::sign(&svid, &mut cp).unwrap();
    push(Entry::Checkpoint(cp), &mut lines);
    let write = |lines: &[String]| {
        std::fs::write(tmp.path().join("audit.log"), lines.join("\n") + "\n").unwrap()
    };
    let verify = |extra: &[&str]| {
        let mut args = vec!["audit", "verify", "--trust-bundle", "bundle.crt"];
        args.extend_from_slice(extra);
        args.push("audit.log");
        warden(&args, tmp.path())
    };

    write(&lines);
    let o = verify(&[]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(
        stdout(&o).starts_with(&format!(
            "VERIFIED chain {chain} (pod shop/backend-1, workload {id}): 4 records; closed"
        )),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("  verified: 0-3\n"), "{}", stdout(&o));

    // The tail cut: the records stand, but nothing vouches for them.
    write(&lines[..3]);
    let o = verify(&[]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("unverified (no checkpoint vouches for them): 0-2"),
        "{}",
        stdout(&o)
    );

    // A record removed inside the checkpointed range.
    write(&[lines[0].clone(), lines[2].clone(), lines[3].clone()]);
    let o = verify(&["--json"]);
    assert_eq!(o.status.code(), Some(3), "{}", stdout(&o));
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(report["status"], "tampered");
    assert_eq!(report["chains"][0]["findings"][0]["kind"], "missing");
    assert_eq!(
        report["chains"][0]["findings"][0]["detail"],
        "record 1 is missing"
    );

    // A bundle that cannot be read is an input error, named.
    let o = warden(
        &["audit", "verify", "--trust-bundle", "nope.crt", "audit.log"],
        tmp.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("nope.crt"), "{}", stderr(&o));
}

#[test]
fn json_access_logs_and_the_log_level_changes_at_runtime() {
    // Access logs, as JSON lines, from the demo's proxies.
    let tmp = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args([
            "--log-json",
            "--log-level",
            "warn,warden::access=info",
            "demo",
            "--once",
        ])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{:?}\n{}{}",
        o.status,
        stdout(&o),
        stderr(&o)
    );
    let access: Vec<serde_json::Value> = stderr(&o)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "warden::access")
        .collect();
    let denied = access
        .iter()
        .find(|v| v["fields"]["direction"] == "inbound" && v["fields"]["status"] == 403)
        .unwrap_or_else(|| panic!("no inbound 403 access log in {access:?}"));
    let fields = &denied["fields"];
    assert_eq!(
        fields["client_id"],
        "spiffe://cluster.local/ns/demo/sa/intruder"
    );
    assert_eq!(
        fields["server_id"],
        "spiffe://cluster.local/ns/demo/sa/backend"
    );
    assert_eq!(fields["request_id"].as_str().unwrap().len(), 16);
    assert!(fields["duration_ms"].as_f64().is_some() && fields["method"] == "GET");

    // The identity service starts at `warn`; PUT /log-level from loopback makes it log `info`.
    let dir = tmp.path();
    assert!(warden(&["ca", "init", "--dir", "ca"], dir).status.success());
    let id = "spiffe://cluster.local/ns/shop/sa/web";
    let o = warden(&["ca", "join-token", "--tokens", "tokens", "--id", id], dir);
    std::fs::write(dir.join("token"), stdout(&o).trim()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args([
            "identity",
            "--ca-dir",
            "ca",
            "--auth",
            "join-tokens",
            "--join-tokens",
            "tokens",
        ])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .current_dir(dir)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (https, admin, logs) = wait_for_serving_logs(&mut child);
    assert!(
        http_get(&admin, "/log-level").ends_with("\r\n\r\nwarn\n"),
        "{}",
        http_get(&admin, "/log-level")
    );
    let put = {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(&admin).unwrap();
        write!(tcp, "PUT /log-level HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\nconnection: close\r\n\r\ninfo").unwrap();
        let mut out = String::new();
        tcp.read_to_string(&mut out).unwrap();
        out
    };
    assert!(
        put.starts_with("HTTP/1.1 200") && put.ends_with("info\n"),
        "{put}"
    );
    let bundle = warden_identity::TrustBundle::from_pem_file(
        warden_core::TrustDomain::default(),
        &dir.join("ca/bundle.crt"),
    )
    .unwrap();
    let client = warden_identity::client::CertifyClient::new(
        warden_identity::client::CertifyClientConfig {
            url: format!("https://{https}"),
            server_id: warden_core::SpiffeId::parse(
                "spiffe://cluster.local/ns/warden-system/sa/warden-identity",
            )
            .unwrap(),
            token_file: dir.join("token"),
            expected_id: None,
            timeout: std::time::Duration::from_secs(10),
        },
        warden_identity::TrustStore::single(bundle),
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(client.certify()).unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().unwrap();
    // The reader thread gets the last lines a moment after the process wrote them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let rest = logs.lock().unwrap().clone();
        if rest.contains("issued") && rest.contains(id) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "info logs after the change: {rest}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn proxy_wait_ready_polls_the_admin_port_until_ready() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // An admin endpoint that is not ready twice, then ready.
    let server = std::thread::spawn(move || {
        for status in [
            "503 Service Unavailable",
            "503 Service Unavailable",
            "200 OK",
        ] {
            let (mut tcp, _) = listener.accept().unwrap();
            let mut request = [0u8; 512];
            let n = tcp.read(&mut request).unwrap();
            assert!(request[..n].starts_with(b"GET /ready HTTP/1.1\r\n"));
            let body = "ready\n";
            let _ = write!(
                tcp,
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let o = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["proxy", "--wait-ready", "--wait-timeout", "20s"])
        .env("WARDEN_ADMIN_LISTEN", format!("0.0.0.0:{}", addr.port()))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    server.join().unwrap();

    // Nothing listening: a clear failure once the timeout passes. (A socket bound there and
    // not listening refuses connections and keeps the port from anyone else meanwhile.)
    let held = ports::closed_port();
    let closed = held.addr.port();
    let o = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["proxy", "--wait-ready", "--wait-timeout", "1s"])
        .env("WARDEN_ADMIN_LISTEN", format!("0.0.0.0:{closed}"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_one_line_error(&o, 1, "was not ready within 1s");
}
