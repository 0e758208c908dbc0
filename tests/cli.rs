//! The `warden` binary as an operator runs it: `ca init|issue`, `cert inspect|verify`, `demo`.

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
fn demo_shows_mutual_tls_and_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let o = warden(&["demo"], tmp.path());
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let text = stdout(&o);
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows.len(), 5, "header + 4 rows:\n{text}");
    assert!(
        rows[1].starts_with("frontend") && rows[1].contains(" ok "),
        "{text}"
    );
    assert!(
        rows[1].contains("TLS 1.3")
            && rows[1].ends_with("spiffe://cluster.local/ns/demo/sa/frontend")
    );
    assert!(
        rows[2].starts_with("backend")
            && rows[2].ends_with("spiffe://cluster.local/ns/demo/sa/backend")
    );
    assert!(
        rows[3].starts_with("intruder")
            && rows[3].contains("refused")
            && rows[3].contains("UnknownIssuer")
    );
    assert!(
        rows[4].starts_with("plaintext") && rows[4].contains("refused"),
        "{text}"
    );
}
