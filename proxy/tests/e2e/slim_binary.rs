//! The sidecar image's slim binary, `warden-proxy`: `proxy` and `init` and nothing else, and
//! a proxy started by it gets its identity, serves, and stops cleanly on SIGTERM.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::fixture::{raw_get, Mesh};

const BIN: &str = env!("CARGO_BIN_EXE_warden-proxy");

#[test]
fn the_slim_binary_has_only_the_sidecar_commands() {
    let help = Command::new(BIN).arg("--help").output().unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    let commands: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .unwrap()
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(commands, ["proxy", "init", "help"], "{help}");
    for other in ["identity", "controller", "injector", "install", "ca"] {
        let out = Command::new(BIN).arg(other).output().unwrap();
        assert!(!out.status.success(), "{other}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("unrecognized subcommand '{other}'")),
            "{stderr}"
        );
    }
    // `init` plans the same rules as `warden init` (dry run: nothing is applied).
    let plan = Command::new(BIN)
        .args(["init", "--dry-run", "--ipv6", "off"])
        .output()
        .unwrap();
    assert!(
        plan.status.success(),
        "{}",
        String::from_utf8_lossy(&plan.stderr)
    );
    let plan = String::from_utf8_lossy(&plan.stdout);
    assert!(plan.contains("-j REDIRECT --to-ports 7143"), "{plan}");
}

#[tokio::test]
async fn the_slim_binary_runs_a_proxy_that_gets_its_identity_and_stops_on_sigterm() {
    let mesh = Mesh::start().await;
    let config = mesh.workload("slim");
    let mut child = Command::new(BIN)
        .arg("proxy")
        .env("WARDEN_IDENTITY_URL", &config.identity.url)
        .env("WARDEN_IDENTITY_TOKEN_FILE", &config.identity.token_file)
        .env("WARDEN_TRUST_BUNDLE", &config.identity.trust_bundle)
        .env("WARDEN_POD_NAMESPACE", "test")
        .env("WARDEN_POD_SERVICE_ACCOUNT", "slim")
        .env("WARDEN_ADMIN_LISTEN", "127.0.0.1:0")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.strip_prefix("warden proxy: admin http://") {
                let _ = tx.send(rest.split(' ').next().unwrap().to_string());
            }
        }
    });
    let admin: std::net::SocketAddr = tokio::task::spawn_blocking(move || {
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the proxy prints its addresses")
    })
    .await
    .unwrap()
    .parse()
    .unwrap();
    let mut ready = String::new();
    for _ in 0..1200 {
        ready = raw_get(admin, "/ready").await;
        if ready.starts_with("HTTP/1.1 200") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        ready.contains("ready: spiffe://cluster.local/ns/test/sa/slim"),
        "{ready}"
    );
    let metrics = raw_get(admin, "/metrics").await;
    assert!(
        metrics.contains("warden_identity_renewals_total"),
        "{metrics}"
    );
    // SAFETY: kill(2) with a child's pid and a signal number has no memory preconditions.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
}
