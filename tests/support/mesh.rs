//! The mesh's own processes for tests against the real API server: a CA, `warden identity`
//! (join tokens: no kubelet here mints projected tokens), `warden controller run` and
//! `warden proxy`, each a real process on 127.0.0.1 with port 0, killed when dropped, with
//! everything it logged kept for assertions; and the pods and policies the scenarios use
//! (the including crate also declares `mod apiserver`).

#![allow(dead_code)] // each test binary uses its own part

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Runs `warden args` in `dir`, failing the test if it fails; returns stdout.
pub fn warden(args: &[&str], dir: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "warden {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Lines several processes wrote to stdout, in the order they arrived.
pub type Collected = Arc<Mutex<Vec<String>>>;

/// A process whose stderr is collected; killed when dropped.
pub struct Process {
    child: Child,
    /// Everything it wrote to stderr so far.
    pub log: Arc<Mutex<String>>,
    name: String,
}

impl Process {
    /// Spawns `cmd` and waits for a stderr line starting with `marker`; returns the
    /// process and the rest of that line.
    pub fn spawn(name: &str, cmd: Command, marker: &str) -> (Self, String) {
        Self::spawn_collecting(name, cmd, marker, None)
    }

    /// [`Process::spawn`], with its stdout's lines appended to `collected` as they come (as
    /// a node's log pipeline collects containers' output, several processes interleaved).
    pub fn spawn_collecting(
        name: &str,
        mut cmd: Command,
        marker: &str,
        collected: Option<Collected>,
    ) -> (Self, String) {
        let stdout = if collected.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let (Some(collected), Some(out)) = (collected, child.stdout.take()) {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    collected.lock().unwrap().push(line);
                }
            });
        }
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(String::new()));
        let mut found = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            log.lock().unwrap().push_str(&format!("{line}\n"));
            if let Some(rest) = line.strip_prefix(marker) {
                found = Some(rest.to_string());
                break;
            }
        }
        let Some(rest) = found else {
            let status = child.wait().unwrap();
            panic!(
                "{name} exited ({status}) before {marker:?}:\n{}",
                log.lock().unwrap()
            );
        };
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let process = Self {
            child,
            log,
            name: name.to_string(),
        };
        (process, rest)
    }

    /// Its process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log so far.
    pub fn logged(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Kills it now (SIGKILL: no goodbye to anyone).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for it to exit; its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) with a pid we own.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.name, self.logged());
        }
    }
}

/// A CA and `warden identity` issuing against join tokens.
pub struct Identity {
    /// The working directory (CA, tokens).
    pub dir: tempfile::TempDir,
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    _process: Process,
}

impl Identity {
    /// A new CA and its identity service.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// [`Identity::start`] with more arguments for `warden identity` (e.g. `--svid-ttl`).
    pub fn start_with(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        warden(&["ca", "init", "--dir", "ca"], dir.path());
        std::fs::write(dir.path().join("tokens"), "").unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_warden"));
        cmd.args(["identity", "--ca-dir", "ca", "--auth", "join-tokens"])
            .args(["--join-tokens", "tokens", "--rate-per-minute", "6000"])
            .args(["--rate-burst", "200"])
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(args)
            .current_dir(dir.path());
        let (process, rest) =
            Process::spawn("warden identity", cmd, "warden identity: serving https://");
        let https = rest
            .split_once(' ')
            .map_or(rest.as_str(), |(a, _)| a)
            .to_string();
        Self {
            url: format!("https://{https}"),
            dir,
            _process: process,
        }
    }

    /// The trust bundle file.
    pub fn bundle(&self) -> PathBuf {
        self.dir.path().join("ca/bundle.crt")
    }

    /// A file holding a fresh join token for `id`.
    pub fn token_for(&self, id: &str) -> PathBuf {
        let token = warden(
            &["ca", "join-token", "--tokens", "tokens", "--id", id],
            self.dir.path(),
        );
        let file = self
            .dir
            .path()
            .join(format!("token-{}", id.replace(['/', ':'], "_")));
        std::fs::write(&file, token.trim()).unwrap();
        // The identity service re-reads the token file every second.
        std::thread::sleep(Duration::from_millis(1100));
        file
    }
}

/// A running `warden controller run` and its addresses.
pub struct Controller {
    /// The process.
    pub process: Process,
    /// `127.0.0.1:<port>` of the proxies' API.
    pub grpc: String,
    /// `127.0.0.1:<port>` of its admin endpoint.
    pub admin: String,
}

/// `warden controller run` as replica `name`, serving proxies on `listen`.
pub fn controller(
    kubeconfig: &Path,
    identity: &Identity,
    name: &str,
    lease_namespace: &str,
    listen: &str,
) -> Controller {
    let token = identity.token_for("spiffe://cluster.local/ns/warden-system/sa/warden-controller");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warden"));
    cmd.args(["controller", "run", "--kubeconfig"])
        .arg(kubeconfig)
        .args(["--admin-listen", "127.0.0.1:0", "--listen", listen])
        .args(["--identity", name, "--lease-namespace", lease_namespace])
        // Long enough that a renewal delayed by a busy machine does not hand the Lease to
        // another live replica (renew times are whole seconds); a takeover still comes
        // well within `eventually`'s 30 s.
        .args(["--lease-duration", "6s", "--identity-url", &identity.url])
        .arg("--identity-token-file")
        .arg(&token)
        .arg("--trust-bundle")
        .arg(identity.bundle())
        .env("WARDEN_LOG", "info");
    let (process, rest) = Process::spawn(
        &format!("warden controller {name}"),
        cmd,
        "warden controller: watching",
    );
    // `(Kubernetes v…), serving proxies on <grpc>, admin on <admin>`
    let grpc = rest
        .split("serving proxies on ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap()
        .to_string();
    let admin = rest.rsplit("admin on ").next().unwrap().trim().to_string();
    Controller {
        process,
        grpc,
        admin,
    }
}

/// A running `warden proxy` and its addresses.
pub struct Proxy {
    /// The process.
    pub process: Process,
    /// `127.0.0.1:<port>` of its admin endpoint.
    pub admin: String,
    /// Its inbound listeners.
    pub inbound: Vec<String>,
    /// Its outbound listeners.
    pub outbound: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts `warden proxy` with `config` (YAML; the identity settings are added, and no
    /// audit log).
    pub fn start(name: &str, identity: &Identity, id: &str, config: &str) -> Self {
        let config = format!("authorization: {{audit_log: \"off\"}}\n{config}");
        Self::start_collecting(name, identity, id, &config, &[], None)
    }

    /// Starts `warden proxy` with `config` (YAML; the identity settings are added) and
    /// environment `env`, its stdout (the audit log) appended to `collected`.
    pub fn start_collecting(
        name: &str,
        identity: &Identity,
        id: &str,
        config: &str,
        env: &[(&str, &str)],
        collected: Option<Collected>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let token = identity.token_for(id);
        let full = format!(
            "identity:\n  url: {}\n  token_file: {}\n  trust_bundle: {}\n  expected_id: \"{id}\"\nadmin: {{listen: \"127.0.0.1:0\"}}\nworker_threads: 1\n{config}",
            identity.url,
            token.display(),
            identity.bundle().display()
        );
        std::fs::write(dir.path().join("proxy.yaml"), full).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_warden"));
        cmd.args(["proxy", "--config"])
            .arg(dir.path().join("proxy.yaml"))
            .envs(env.iter().copied())
            .env("WARDEN_LOG", "info");
        let (process, rest) =
            Process::spawn_collecting(name, cmd, "warden proxy: admin http://", collected);
        // `<admin> inbound [a, b] outbound [c]`
        let (admin, rest) = rest.split_once(' ').unwrap();
        let list = |text: &str| -> Vec<String> {
            text.trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        };
        let rest = rest.trim_start_matches("inbound ");
        let (inbound, outbound) = rest.split_once(" outbound ").unwrap();
        Self {
            process,
            admin: admin.to_string(),
            inbound: list(inbound),
            outbound: list(outbound),
            _dir: dir,
        }
    }

    /// `GET path` on the admin port: (status line, body).
    pub fn admin_get(&self, path: &str) -> (String, String) {
        http_get(&self.admin, path, "localhost")
    }

    /// Waits until `/ready` says 200 (30 s at most).
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = self.admin_get("/ready");
            if status.contains(" 200") {
                return;
            }
            assert!(Instant::now() < deadline, "{status}\n{body}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One HTTP/1.1 `GET` with `Connection: close`: (status line, body); an empty status line
/// when the connection fails.
pub fn http_get(addr: &str, path: &str, host: &str) -> (String, String) {
    let Ok(mut tcp) = std::net::TcpStream::connect(addr) else {
        return (String::new(), String::new());
    };
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = write!(
        tcp,
        "GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = tcp.read_to_string(&mut out);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

/// A tiny HTTP/1.1 app on 127.0.0.1 answering every request `200 hello`.
pub fn app() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    // Request line and headers, then the answer (no bodies in these tests).
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
                    if stream.write_all(answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Polls `f` until it returns `Some` (30 s at most), failing with `what` and the last value.
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match f() {
            Ok(t) => return t,
            Err(last) => {
                assert!(Instant::now() < deadline, "{what}: {last}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// A ServiceAccount and a Pod running as it with `ip` (no kubelet here: the test writes the
/// status a kubelet would).
pub fn pod(api: &crate::apiserver::ApiServer, ns: &str, name: &str, sa: &str, ip: &str) {
    pod_with(api, ns, name, sa, &[ip], false);
}

/// Like [`pod`], with several IPs (the first is `podIP`) and, if `meshed`, a container under
/// Warden's sidecar name (what the controller's discovery counts as meshed).
pub fn pod_with(
    api: &crate::apiserver::ApiServer,
    ns: &str,
    name: &str,
    sa: &str,
    ips: &[&str],
    meshed: bool,
) {
    let sidecar = if meshed {
        ", {name: warden-proxy, image: registry.example/warden:1}"
    } else {
        ""
    };
    api.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {sa}, namespace: {ns}}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  serviceAccountName: {sa}\n  automountServiceAccountToken: false\n  containers: [{{name: app, image: registry.example/app:1}}{sidecar}]\n"
        )),
    );
    let pod_ips: Vec<String> = ips.iter().map(|ip| format!(r#"{{"ip":"{ip}"}}"#)).collect();
    let status = format!(
        r#"{{"status":{{"podIP":"{}","podIPs":[{}]}}}}"#,
        ips[0],
        pod_ips.join(",")
    );
    api.kubectl_ok(
        &[
            "patch",
            "pod",
            name,
            "-n",
            ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ],
        None,
    );
}

/// A backend proxy (pod `backend-0`, ServiceAccount `backend`, an app answering `200 hello`)
/// taking its policies from the controllers at `controllers`, and a frontend proxy routing
/// to it; with the app's port and the frontend's SPIFFE ID.
pub struct Pair {
    /// The backend's proxy.
    pub server: Proxy,
    /// The frontend's proxy (its outbound listener reaches the backend).
    pub client: Proxy,
    /// The backend app's port (what policies name).
    pub port: u16,
    /// The frontend's SPIFFE ID.
    pub frontend_id: String,
}

impl Pair {
    /// Starts both proxies in namespace `ns`; the backend is not waited for.
    pub fn start(identity: &Identity, ns: &str, controllers: &[&str]) -> Self {
        let backend_id = format!("spiffe://cluster.local/ns/{ns}/sa/backend");
        let frontend_id = format!("spiffe://cluster.local/ns/{ns}/sa/frontend");
        let app = app();
        let port: u16 = app.rsplit_once(':').unwrap().1.parse().unwrap();
        let addresses: Vec<String> = controllers.iter().map(|c| format!("\"{c}\"")).collect();
        let server = Proxy::start(
            "backend proxy",
            identity,
            &backend_id,
            &format!(
                "inbound: [{{listen: \"127.0.0.1:0\", app: \"{app}\"}}]\ncontrol_plane: {{addresses: [{}], pod_name: backend-0}}\n",
                addresses.join(", ")
            ),
        );
        let client = Proxy::start(
            "frontend proxy",
            identity,
            &frontend_id,
            &format!(
                "outbound: [{{listen: \"127.0.0.1:0\", destination: \"{}\", identity: \"{backend_id}\"}}]\n",
                server.inbound[0]
            ),
        );
        Self {
            server,
            client,
            port,
            frontend_id,
        }
    }
}

/// An ALLOW for `caller`'s GETs to the backend's app port.
pub fn allow(ns: &str, name: &str, caller: &str, port: u16) -> String {
    format!(
        "apiVersion: warden.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  selector: {{serviceAccounts: [backend]}}\n  action: ALLOW\n  rules: [{{from: {{identities: [\"{caller}\"]}}, to: {{ports: [{port}], methods: [GET]}}}}]\n"
    )
}

/// The status code the app's caller gets for `GET /` through the client proxy.
pub fn call(client: &Proxy) -> String {
    let (status, _) = http_get(&client.outbound[0], "/", "backend");
    status.split(' ').nth(1).unwrap_or("no answer").to_string()
}

/// Waits until calls get `want`.
pub fn until_calls_get(client: &Proxy, want: &str, why: &str) {
    eventually(why, || match call(client) {
        got if got == want => Ok(()),
        got => Err(format!("got {got}, want {want}")),
    });
}

/// Waits until the proxy's `/ready` detail contains `text`.
pub fn until_ready_says(proxy: &Proxy, text: &str) -> String {
    eventually(&format!("/ready saying {text:?}"), || {
        let (status, body) = proxy.admin_get("/ready");
        if body.contains(text) {
            Ok(body)
        } else {
            Err(format!("{status}\n{body}"))
        }
    })
}
