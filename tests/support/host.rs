//! What the tests that change the host's network (namespaces, iptables) share: whether this
//! machine can run them, and running a command that must succeed.

#![allow(dead_code)] // each test binary uses its own part

use std::process::{Command, Stdio};

/// Whether the tests named `what` can run here: root, and each `(tool, Debian package)`.
/// Under `CI=true` they must (a missing piece fails the test with what to install);
/// elsewhere they are skipped with a message.
pub fn runnable(what: &str, tools: &[(&str, &str)]) -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root".to_string());
    }
    for (tool, package) in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            missing.push(format!("{tool} (apt-get install -y {package})"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let message = format!("{what} need: {}", missing.join(", "));
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{message}; scripts/test.sh installs the tools and CI runs as root");
    }
    eprintln!("SKIPPED: {message}");
    false
}

/// Runs `args`, failing the test with its stderr if it fails.
pub fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
