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

/// `warden-proxy` with `args`, getting its identity as the workload `config` is for, as the
/// injector sets a sidecar up (environment variables), its admin server on a free port.
fn slim_proxy(config: &warden_proxy::config::ProxyConfig, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env("WARDEN_IDENTITY_URL", &config.identity.url)
        .env("WARDEN_IDENTITY_TOKEN_FILE", &config.identity.token_file)
        .env("WARDEN_TRUST_BUNDLE", &config.identity.trust_bundle)
        .env("WARDEN_POD_NAMESPACE", "test")
        .env("WARDEN_POD_SERVICE_ACCOUNT", "slim")
        .env("WARDEN_ADMIN_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null());
    command
}

/// The admin `/ready` answer once it is 200, or the last one after 30 s.
async fn until_ready(admin: std::net::SocketAddr) -> String {
    let mut ready = String::new();
    for _ in 0..1200 {
        ready = raw_get(admin, "/ready").await;
        if ready.starts_with("HTTP/1.1 200") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    ready
}

#[tokio::test]
async fn the_slim_binary_runs_a_proxy_that_gets_its_identity_and_stops_on_sigterm() {
    let mesh = Mesh::start().await;
    let config = mesh.workload("slim");
    let mut child = slim_proxy(&config, &["proxy"])
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
    let ready = until_ready(admin).await;
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

/// A child process killed if the test ends without waiting for it (a failed assertion).
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The counter's value in a Prometheus exposition (0 when absent).
fn counter(exposition: &str, name: &str) -> u64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn a_proxy_whose_stderr_nobody_reads_keeps_serving_and_counts_the_log_lines_it_drops() {
    let mesh = Mesh::start().await;
    let config = mesh.workload("slim");
    let file = mesh.dir.path().join("stuck-stderr.yaml");
    // An inbound listener to refuse plaintext at: one log line per connection.
    std::fs::write(
        &file,
        "inbound:\n  - listen: 127.0.0.1:0\n    app: 127.0.0.1:9\n",
    )
    .unwrap();
    let child = slim_proxy(&config, &["--log-level", "info", "proxy", "--config"])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Reaped(child);
    // Read up to the addresses, then not at all: the pipe fills (64 KiB) and stays full.
    let mut stderr = std::io::BufReader::new(child.0.stderr.take().unwrap());
    let (stderr, line) = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        while !line.starts_with("warden proxy: admin http://") {
            line.clear();
            assert!(stderr.read_line(&mut line).unwrap() > 0, "no addresses");
        }
        (stderr, line)
    })
    .await
    .unwrap();
    let admin: std::net::SocketAddr = line["warden proxy: admin http://".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let inbound: std::net::SocketAddr = line
        .split("inbound [")
        .nth(1)
        .and_then(|rest| rest.split([']', ',']).next())
        .unwrap()
        .parse()
        .unwrap();
    let ready = until_ready(admin).await;
    assert!(ready.starts_with("HTTP/1.1 200"), "never ready: {ready}");

    // Plaintext callers, each refused (and logged) until lines no longer fit: every one of
    // them must still be answered (closed), as a blocked worker would not.
    let mut refused = 0;
    let mut dropped = 0;
    let mut metrics = String::new();
    while dropped == 0 {
        assert!(
            refused < 100_000,
            "{refused} refusals and no line dropped: {metrics}"
        );
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            for _ in 0..500 {
                let mut tcp = std::net::TcpStream::connect(inbound).unwrap();
                tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let _ = tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
                let mut rest = Vec::new();
                if let Err(e) = tcp.read_to_end(&mut rest) {
                    assert_ne!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock,
                        "the proxy stopped serving while its stderr was full"
                    );
                }
            }
        })
        .await
        .unwrap();
        refused += 500;
        metrics = raw_get(admin, "/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        dropped = counter(&metrics, "warden_log_lines_dropped_total");
    }
    assert!(raw_get(admin, "/ready").await.starts_with("HTTP/1.1 200"));

    // Read again: what was kept arrives, whole lines, with the drops reported.
    let reading =
        std::thread::spawn(move || stderr.lines().map(Result::unwrap).collect::<Vec<String>>());
    // SAFETY: kill(2) with a child's pid and a signal number has no memory preconditions.
    assert_eq!(
        unsafe { libc::kill(child.0.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let status = tokio::task::spawn_blocking(move || child.0.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    let lines = reading.join().unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("log lines dropped: stderr is not keeping up")),
        "{:?}",
        &lines[lines.len().saturating_sub(5)..]
    );
    let refusals = lines
        .iter()
        .filter(|l| l.contains("inbound TLS handshake refused"))
        .count();
    assert!(
        refusals > 0 && (refusals as u64) < refused,
        "{refusals} of {refused}"
    );
    // Whole lines: each kept one starts with its timestamp (or is the addresses line).
    let torn: Vec<&String> = lines
        .iter()
        .filter(|l| !l.starts_with("20") && !l.starts_with("warden proxy:"))
        .take(3)
        .collect();
    assert!(torn.is_empty(), "{torn:?}");
}
