//! Faults with the real `warden` binary: a server proxy killed with SIGKILL under load and
//! started again. Clients see errors only while it is down, and the client proxy's pooled
//! mesh connection recovers by itself as soon as it is back.

#[path = "support/ports.rs"]
mod ports;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ports::reserved_port;

fn warden(args: &[&str], cwd: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(out.status.success(), "warden {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// An app answering every request with 200 and closing; `GET /slow` takes a second. Also
/// how many `GET /slow` requests have arrived.
fn app() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let slow = Arc::new(AtomicUsize::new(0));
    let arrived = slow.clone();
    std::thread::spawn(move || {
        for mut tcp in listener.incoming().flatten() {
            let arrived = arrived.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                if seen.starts_with(b"GET /slow ") {
                    arrived.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_secs(1));
                }
                let _ = tcp.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            });
        }
    });
    (addr, slow)
}

/// One GET / through `addr`: the status, or 0 when the connection failed.
fn get(addr: SocketAddr) -> u16 {
    get_path(addr, "/")
}

/// One GET of `path` through `addr`: the status, or 0 when the connection failed.
fn get_path(addr: SocketAddr, path: &str) -> u16 {
    let Ok(mut tcp) = TcpStream::connect(addr) else {
        return 0;
    };
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    if tcp
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: server\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .is_err()
    {
        return 0;
    }
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer);
    answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

fn spawn_proxy(dir: &Path, config: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["proxy", "--config", config])
        .env("WARDEN_LOG", "warn")
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_ready(dir: &Path, config: &str) {
    let ok = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args([
            "proxy",
            "--config",
            config,
            "--wait-ready",
            "--wait-timeout",
            "20s",
        ])
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(ok.success(), "{config} did not become ready");
}

/// Kills the child (and reaps it) when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running mesh of real processes: the identity service, a server proxy ("api") in front
/// of [`app`] with a policy allowing "web", and a client proxy ("web") routing to it.
struct Mesh {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    _identity: Reaped,
    server: Reaped,
    _client: Reaped,
    /// The client proxy's outbound listener.
    outbound: SocketAddr,
    /// How many `GET /slow` requests reached the app.
    slow_arrived: Arc<AtomicUsize>,
}

impl Mesh {
    fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        warden(&["ca", "init", "--dir", "ca"], &dir);
        for (name, id) in [
            ("client", "spiffe://cluster.local/ns/shop/sa/web"),
            ("server", "spiffe://cluster.local/ns/shop/sa/api"),
        ] {
            let token = warden(
                &["ca", "join-token", "--tokens", "tokens", "--id", id],
                &dir,
            );
            std::fs::write(dir.join(format!("{name}.token")), token.trim()).unwrap();
        }
        let identity_port = reserved_port();
        let identity = Reaped(
            Command::new(env!("CARGO_BIN_EXE_warden"))
                .args(["identity", "--ca-dir", "ca", "--auth", "join-tokens"])
                .args(["--join-tokens", "tokens", "--admin-listen", "127.0.0.1:0"])
                .args(["--listen", &format!("127.0.0.1:{identity_port}")])
                .current_dir(&dir)
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let (app, slow_arrived) = app();
        let (inbound, outbound) = (reserved_port(), reserved_port());
        let common = |name: &str, sa: &str| {
            format!(
                "identity:\n  url: https://127.0.0.1:{identity_port}\n  trust_bundle: ca/bundle.crt\n  \
                 namespace: shop\n  service_account: {sa}\n  token_file: {name}.token\n\
                 admin: {{listen: 127.0.0.1:{}}}\nworker_threads: 1\n\
                 timeouts: {{shutdown_grace: 5s}}\n",
                reserved_port()
            )
        };
        std::fs::write(
            dir.join("server.yaml"),
            common("server", "api")
                + &format!("inbound:\n  - {{listen: 127.0.0.1:{inbound}, app: {app}}}\n")
                + "authorization: {policy_dir: policies}\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("client.yaml"),
            common("client", "web")
                + &format!(
                    "outbound:\n  - {{listen: 127.0.0.1:{outbound}, destination: 127.0.0.1:{inbound}, \
                     identity: spiffe://cluster.local/ns/shop/sa/api}}\n"
                ),
        )
        .unwrap();
        std::fs::create_dir(dir.join("policies")).unwrap();
        std::fs::write(
            dir.join("policies/allow.yaml"),
            "apiVersion: warden.dev/v1alpha1\nkind: AuthorizationPolicy\n\
             metadata: {name: api-allow-web, namespace: shop}\n\
             spec:\n  selector: {serviceAccounts: [api]}\n  action: ALLOW\n  \
             rules: [{from: {identities: [\"spiffe://cluster.local/ns/shop/sa/web\"]}}]\n",
        )
        .unwrap();
        // The identity service binds first; the proxies retry until it answers.
        let server = Reaped(spawn_proxy(&dir, "server.yaml"));
        let client = Reaped(spawn_proxy(&dir, "client.yaml"));
        wait_ready(&dir, "server.yaml");
        wait_ready(&dir, "client.yaml");
        Self {
            _tmp: tmp,
            dir,
            _identity: identity,
            server,
            _client: client,
            outbound: format!("127.0.0.1:{outbound}").parse().unwrap(),
            slow_arrived,
        }
    }
}

#[test]
fn a_server_proxy_killed_under_load_fails_only_while_down_and_recovers_by_itself() {
    let mut mesh = Mesh::start();
    let (dir, outbound) = (mesh.dir.clone(), mesh.outbound);

    // Steady load: one request after another, each recorded with when it started and ended.
    let log: Arc<Mutex<Vec<(Instant, Instant, u16)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (log, stop) = (log.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                let status = get(outbound);
                log.lock().unwrap().push((started, Instant::now(), status));
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let killed = Instant::now();
    mesh.server.0.kill().unwrap(); // SIGKILL: no goodbye to anyone
    mesh.server.0.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    mesh.server = Reaped(spawn_proxy(&dir, "server.yaml"));
    wait_ready(&dir, "server.yaml");
    let back = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    load.join().unwrap();
    drop(mesh);

    // Classified by overlap with the outage: a request in flight when the proxy was killed
    // or while it came back belongs to the outage, whatever its start time.
    let log = log.lock().unwrap();
    let statuses = |keep: &dyn Fn(Instant, Instant) -> bool| -> Vec<u16> {
        log.iter()
            .filter(|(start, end, _)| keep(*start, *end))
            .map(|(_, _, s)| *s)
            .collect()
    };
    let before = statuses(&|_, end| end < killed);
    let after = statuses(&|start, _| start >= back);
    let down = statuses(&|start, end| end >= killed && start < back);
    assert!(
        before.len() > 10 && after.len() > 10,
        "load ran: {before:?} {after:?}"
    );
    assert!(
        before.iter().all(|s| *s == 200),
        "before the kill every request succeeds: {before:?}"
    );
    assert!(
        down.iter().all(|s| [200, 502, 503].contains(s)),
        "while down, requests are answered 502/503 (never hang or vanish): {down:?}"
    );
    assert!(
        down.iter().any(|s| *s != 200),
        "the kill was noticed: {down:?}"
    );
    assert!(
        after.iter().all(|s| *s == 200),
        "once the server proxy is back every request succeeds: {after:?}"
    );
}

#[test]
fn sigterm_under_load_lets_in_flight_requests_finish_then_exits() {
    let mut mesh = Mesh::start();
    let outbound = mesh.outbound;
    // Eight requests the app takes a second to answer, in flight through both proxies.
    let in_flight: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(move || get_path(outbound, "/slow")))
        .collect();
    // All eight are at the app (it answers each a second after it arrives).
    let deadline = Instant::now() + Duration::from_secs(30);
    while mesh.slow_arrived.load(Ordering::SeqCst) < 8 {
        assert!(
            Instant::now() < deadline,
            "the requests never reached the app"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let term = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &mesh.server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let statuses: Vec<u16> = in_flight.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(statuses, vec![200; 8], "every in-flight request completes");
    let exit = mesh.server.0.wait().unwrap();
    assert!(exit.success(), "a clean exit after SIGTERM: {exit:?}");
    // The grace period is 5 s; the app answers within a second, so the proxy stops well
    // before the grace period would have cut the requests short.
    assert!(
        term.elapsed() < Duration::from_secs(5),
        "before the 5 s grace period ran out ({:?})",
        term.elapsed()
    );
    // Gone: new requests are answered by the client proxy, not left hanging.
    assert!([502, 503].contains(&get(outbound)));
}
