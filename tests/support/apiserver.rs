//! A real Kubernetes API server for the tests (DESIGN section 10): the `kube-apiserver` of
//! the release pinned in `testenv/go.mod`, with etcd 3.6 embedded, built into
//! `target/testenv/bin` by `scripts/testenv.sh`.
//!
//! One server per test binary, started on first use: a reserved port on 127.0.0.1, etcd data in
//! a temp dir, its own CA, serving certificate, admin client certificate (`system:masters`)
//! and ServiceAccount signing key, and the admission plugins of a real cluster. Each test
//! takes its own namespaces. Everything stops when the test binary exits, also when a test
//! panicked (an `atexit` hook), and the server dies with the test process if that is killed
//! (`PR_SET_PDEATHSIG` from a thread that lives as long as the process).
//!
//! No kubelet or controller-manager runs: nothing creates ServiceAccounts, runs pods or
//! fills in status. Tests create what a controller would, and check what the API server
//! itself did (validation, admission, webhooks, RBAC, TokenReview, TokenRequest).

#![allow(dead_code)] // each test binary uses its own part of the fixture

/// Ports picked before their server starts. Here for the test binaries that run this
/// server (one copy per binary: its counter keeps the binary's tests on distinct ports);
/// the others include `ports.rs` themselves.
#[path = "ports.rs"]
pub mod ports;

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

/// The admission plugins of a real cluster (kube-apiserver's defaults plus the ones every
/// production cluster turns on), so admission behaves as it does there.
pub const ADMISSION_PLUGINS: &str = "NamespaceLifecycle,LimitRanger,ServiceAccount,\
DefaultTolerationSeconds,DefaultStorageClass,StorageObjectInUseProtection,PersistentVolumeClaimResize,\
RuntimeClass,CertificateApproval,CertificateSigning,ClusterTrustBundleAttest,CertificateSubjectRestriction,\
DefaultIngressClass,PodSecurity,Priority,TaintNodesByCondition,MutatingAdmissionWebhook,\
ValidatingAdmissionPolicy,ValidatingAdmissionWebhook,ResourceQuota,NodeRestriction";

/// The ServiceAccount token issuer.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The running API server of this test binary.
pub struct ApiServer {
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    /// The port.
    pub port: u16,
    /// A kubeconfig with admin rights (`system:masters`).
    pub kubeconfig: PathBuf,
    /// The CA that signs the serving certificate (PEM), also the file `ca.crt`.
    pub ca_pem: String,
    /// The CA file.
    pub ca_file: PathBuf,
    /// The directory with certificates, keys, kubeconfig and the log.
    pub dir: PathBuf,
    /// Seconds from spawn to `/readyz` 200.
    pub startup: Duration,
    namespaces: AtomicUsize,
}

/// The process and its files, stopped and removed at exit.
struct Running {
    child: Child,
    /// Set once the server is up (until then its starter owns the directory).
    dir: Option<tempfile::TempDir>,
}

static SERVER: OnceLock<Result<ApiServer, String>> = OnceLock::new();
static RUNNING: Mutex<Option<Running>> = Mutex::new(None);

/// The binaries' directory.
pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/testenv/bin")
}

/// Whether the test API server can run here; under `CI=true` it must (a missing binary
/// fails the test with how to build it), elsewhere a test is skipped with a message.
pub fn available() -> bool {
    let missing: Vec<&str> = ["kube-apiserver", "kubectl"]
        .into_iter()
        .filter(|b| !bin_dir().join(b).is_file())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let message = format!(
        "the real-API-server tests need {} in {}: run scripts/testenv.sh (needs Go 1.24+)",
        missing.join(" and "),
        bin_dir().display()
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{message}; scripts/test.sh builds them");
    }
    eprintln!("SKIPPED: {message}");
    false
}

/// The API server of this test binary, started on first use.
pub fn get() -> &'static ApiServer {
    match SERVER.get_or_init(start) {
        Ok(server) => server,
        Err(e) => panic!("{e}"),
    }
}

extern "C" fn stop_at_exit() {
    let running = RUNNING.lock().map(|mut r| r.take()).unwrap_or(None);
    if let Some(mut running) = running {
        // SIGTERM first: the API server and etcd close cleanly; then make sure.
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(running.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = running.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = running.child.kill();
        let _ = running.child.wait();
        drop(running.dir);
    }
}

fn start() -> Result<ApiServer, String> {
    let dir = tempfile::Builder::new()
        .prefix("warden-apiserver-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    let pki = Pki::generate(dir.path())?;
    // A port outside the ephemeral range (the server restarts on it while clients retry),
    // free a moment ago; if another process takes it first the server fails to bind, and
    // we try another.
    let mut last_error = String::new();
    for _ in 0..3 {
        let port = ports::reserved_port();
        let started = Instant::now();
        let child = spawn(dir.path(), port)?;
        *RUNNING.lock().unwrap() = Some(Running { child, dir: None });
        // SAFETY: registering a plain extern "C" function.
        static REGISTERED: std::sync::Once = std::sync::Once::new();
        REGISTERED.call_once(|| unsafe {
            libc::atexit(stop_at_exit);
        });
        match wait_ready(dir.path(), port, &pki) {
            Ok(()) => {
                let startup = started.elapsed();
                let server = ApiServer {
                    url: format!("https://127.0.0.1:{port}"),
                    port,
                    kubeconfig: dir.path().join("kubeconfig"),
                    ca_pem: pki.ca_pem.clone(),
                    ca_file: dir.path().join("ca.crt"),
                    dir: dir.path().to_path_buf(),
                    startup,
                    namespaces: AtomicUsize::new(0),
                };
                write_kubeconfig(&server, &pki)?;
                // The temp dir now lives as long as the process.
                if let Some(running) = RUNNING.lock().unwrap().as_mut() {
                    running.dir = Some(dir);
                }
                return Ok(server);
            }
            Err(e) => {
                stop_at_exit();
                last_error = e;
                if !last_error.contains("address already in use") {
                    break;
                }
            }
        }
    }
    Err(last_error)
}

/// Spawns the server from a thread that lives as long as the process, so that
/// `PR_SET_PDEATHSIG` (tied to the spawning thread) fires only when the process dies.
fn spawn(dir: &Path, port: u16) -> Result<Child, String> {
    let path = |name: &str| dir.join(name).display().to_string();
    let log = std::fs::File::create(dir.join("apiserver.log")).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(bin_dir().join("kube-apiserver"));
    cmd.arg("--etcd-data-dir")
        .arg(dir.join("etcd"))
        .arg("--")
        .args([
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            &format!("--secure-port={port}"),
            &format!("--cert-dir={}", path("serving")),
            &format!("--tls-cert-file={}", path("apiserver.crt")),
            &format!("--tls-private-key-file={}", path("apiserver.key")),
            &format!("--client-ca-file={}", path("ca.crt")),
            &format!("--service-account-key-file={}", path("sa.pub")),
            &format!("--service-account-signing-key-file={}", path("sa.key")),
            &format!("--service-account-issuer={ISSUER}"),
            "--api-audiences=https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--authorization-mode=RBAC",
            &format!("--enable-admission-plugins={ADMISSION_PLUGINS}"),
            "--allow-privileged=true",
            "--profiling=false",
            "--enable-priority-and-fairness=false",
            "--endpoint-reconciler-type=none",
            "--v=1",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("apiserver-keeper".into())
        .spawn(move || {
            let _ = tx.send(cmd.spawn().map_err(|e| format!("kube-apiserver: {e}")));
            loop {
                std::thread::park();
            }
        })
        .map_err(|e| e.to_string())?;
    rx.recv().map_err(|e| e.to_string())?
}

fn wait_ready(dir: &Path, port: u16, pki: &Pki) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let last_lines = || {
        let log = std::fs::read_to_string(dir.join("apiserver.log")).unwrap_or_default();
        // The flag dump says nothing about what went wrong.
        let lines: Vec<&str> = log.lines().filter(|l| !l.contains("flags.go")).collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
    };
    loop {
        if let Some(running) = RUNNING.lock().unwrap().as_mut() {
            if let Ok(Some(status)) = running.child.try_wait() {
                return Err(format!(
                    "kube-apiserver exited ({status}) before it was ready; its last lines:\n{}",
                    last_lines()
                ));
            }
        }
        if readyz(port, pki) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "kube-apiserver not ready within 120s; its last lines:\n{}",
                last_lines()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `GET /readyz` with the admin certificate (before the kubeconfig exists).
fn readyz(port: u16, pki: &Pki) -> bool {
    let out = Command::new(bin_dir().join("kubectl"))
        .args([
            &format!("--server=https://127.0.0.1:{port}"),
            &format!(
                "--certificate-authority={}",
                pki.dir.join("ca.crt").display()
            ),
            &format!(
                "--client-certificate={}",
                pki.dir.join("admin.crt").display()
            ),
            &format!("--client-key={}", pki.dir.join("admin.key").display()),
            "--request-timeout=2s",
            "get",
            "--raw",
            "/readyz",
        ])
        .output();
    matches!(out, Ok(o) if o.status.success() && o.stdout.starts_with(b"ok"))
}

fn write_kubeconfig(server: &ApiServer, pki: &Pki) -> Result<(), String> {
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: admin\n  user:\n    client-certificate: {}\n    client-key: {}\ncontexts:\n- name: test\n  context: {{cluster: test, user: admin}}\ncurrent-context: test\n",
        server.url,
        pki.dir.join("ca.crt").display(),
        pki.dir.join("admin.crt").display(),
        pki.dir.join("admin.key").display(),
    );
    std::fs::write(&server.kubeconfig, config).map_err(|e| e.to_string())
}

/// The certificates and keys of one API server, written into its directory.
struct Pki {
    dir: PathBuf,
    ca_pem: String,
}

impl Pki {
    fn generate(dir: &Path) -> Result<Self, String> {
        let err = |e: rcgen::Error| e.to_string();
        let write = |name: &str, text: &str| {
            let mut f = std::fs::File::create(dir.join(name)).map_err(|e| e.to_string())?;
            f.write_all(text.as_bytes()).map_err(|e| e.to_string())
        };
        let mut ca_params = CertificateParams::new(Vec::new()).map_err(err)?;
        ca_params.distinguished_name = name("warden-test-kubernetes-ca", None);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(err)?)
            .map_err(err)?;
        write("ca.crt", &ca.pem())?;

        let mut serving = CertificateParams::new(vec![
            "localhost".to_string(),
            "kubernetes".to_string(),
            "kubernetes.default".to_string(),
            "kubernetes.default.svc".to_string(),
            "kubernetes.default.svc.cluster.local".to_string(),
        ])
        .map_err(err)?;
        serving
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        serving.distinguished_name = name("kube-apiserver", None);
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().map_err(err)?;
        write(
            "apiserver.crt",
            &serving.signed_by(&key, &ca).map_err(err)?.pem(),
        )?;
        write("apiserver.key", &key.serialize_pem())?;

        let mut admin = CertificateParams::new(Vec::new()).map_err(err)?;
        admin.distinguished_name = name("warden-test-admin", Some("system:masters"));
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().map_err(err)?;
        write("admin.crt", &admin.signed_by(&key, &ca).map_err(err)?.pem())?;
        write("admin.key", &key.serialize_pem())?;

        let sa = KeyPair::generate().map_err(err)?;
        write("sa.key", &sa.serialize_pem())?;
        write("sa.pub", &sa.public_key_pem())?;
        Ok(Self {
            dir: dir.to_path_buf(),
            ca_pem: ca.pem(),
        })
    }
}

fn name(common: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common);
    if let Some(o) = organization {
        dn.push(DnType::OrganizationName, o);
    }
    dn
}

impl ApiServer {
    /// `kubectl` against this server as admin.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(bin_dir().join("kubectl"));
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()));
        cmd
    }

    /// Runs `kubectl args` (as admin) with `stdin`; returns its output.
    pub fn kubectl_with(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = self.kubectl();
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("kubectl runs");
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// Runs `kubectl args` and returns stdout, failing the test with stderr if it fails.
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_with(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl auth can-i <args>` until it answers `want` (`yes` or `no`), for at most 30 s:
    /// the API server's authorizer reads Roles and bindings from a cache, so a grant just
    /// applied takes a moment to count. A `no` is taken at once: check it after a `yes` that
    /// shows the grants it depends on have arrived.
    pub fn until_can_i(&self, args: &[&str], want: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut all = vec!["auth", "can-i"];
        all.extend_from_slice(args);
        loop {
            let out = self.kubectl_with(&all, None);
            let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kubectl {all:?}: {got:?}, not {want:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A `kube::Client` with admin rights.
    pub async fn client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// A fresh namespace named `<prefix>-<n>` with its `default` ServiceAccount (no
    /// controller-manager creates it here) and `labels`.
    pub fn namespace(&self, prefix: &str, labels: &[(&str, &str)]) -> String {
        let n = self.namespaces.fetch_add(1, Ordering::SeqCst);
        let name = format!("{prefix}-{n}");
        let labels: String = labels
            .iter()
            .map(|(k, v)| format!("    {k}: \"{v}\"\n"))
            .collect();
        let labels = if labels.is_empty() {
            String::new()
        } else {
            format!("  labels:\n{labels}")
        };
        let yaml = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n{labels}---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: default, namespace: {name}}}\n"
        );
        self.kubectl_ok(&["apply", "-f", "-"], Some(&yaml));
        name
    }

    /// Kills the server (as a crash or a lost node does; a graceful stop waits a minute for
    /// watches) and starts it again on the same port with the same data, waiting until it
    /// is ready. Clients see their connections and watches break, then the same objects and
    /// resource versions (etcd recovers from its log).
    pub fn restart(&self) {
        let mut running = RUNNING.lock().unwrap();
        let current = running.as_mut().expect("the server runs");
        let _ = current.child.kill();
        let _ = current.child.wait();
        current.child = spawn(&self.dir, self.port).expect("kube-apiserver restarts");
        drop(running);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let ready =
                self.kubectl_with(&["--request-timeout=2s", "get", "--raw", "/readyz"], None);
            if ready.status.success() && ready.stdout.starts_with(b"ok") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver did not come back:\n{}",
                self.log_tail(25)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Installs Warden's policy CRDs (once per test binary: its tests share this server) and
    /// waits until they are established.
    pub fn install_crds(&self) {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let crds = include_str!("../../deploy/kubernetes/base/crds.yaml");
            self.kubectl_ok(&["apply", "-f", "-"], Some(crds));
            self.wait_crds_established();
        });
    }

    /// Waits (60 s at most) until Warden's CRDs are established, as `kubectl wait` does.
    pub fn wait_crds_established(&self) {
        self.kubectl_ok(
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/authorizationpolicies.warden.dev",
                "crd/meshpolicies.warden.dev",
            ],
            None,
        );
    }

    /// The last `n` lines of the server's log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join("apiserver.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}
