//! `warden identity --auth kubernetes` against a real API server, with exactly the
//! credentials and RBAC `warden install` gives its ServiceAccount: tokens from the
//! TokenRequest API are accepted only for the `warden-identity` audience, for a Pod and a
//! ServiceAccount that still exist, and when the API server signed them. Every refusal is a
//! 401 counted in the service's metrics, and no token shows up in its logs.
//!
//! The service runs twice, as a real process each time: once the way it runs in a pod (API
//! server host and port, token file and CA file) and once out of the cluster (a kubeconfig
//! whose user has a `tokenFile`). Every case is checked against both.

#[path = "support/apiserver.rs"]
mod apiserver;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use serde_json::Value;
use warden_core::{SpiffeId, TrustDomain};
use warden_identity::client::{CertifyClient, CertifyClientConfig, CertifyClientError};
use warden_identity::{TrustBundle, TrustStore};

const TRUST_DOMAIN: &str = "tokenreview.test";
const AUDIENCE: &str = "warden-identity";
/// The API server's own audience (`--api-audiences` of the fixture).
const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

fn warden(args: &[&str], cwd: &Path) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(args)
        .current_dir(cwd)
        .env_remove("WARDEN_LOG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "warden {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A `warden identity` process, killed when dropped, with everything it wrote.
struct Identity {
    name: &'static str,
    child: Child,
    https: String,
    admin: String,
    logs: Arc<Mutex<String>>,
}

impl Drop for Identity {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Identity {
    /// Starts `warden identity` with `args` and waits until it serves. Logs at `trace`, so
    /// the no-token check covers every line any crate in it may write.
    fn start(name: &'static str, dir: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(["identity", "--ca-dir", "ca", "--auth", "kubernetes"])
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--dns-name", "localhost"])
            // Every request of the test comes from 127.0.0.1: no rate limit in the way.
            .args(["--rate-per-minute", "100000", "--rate-burst", "10000"])
            .args(args)
            .current_dir(dir)
            .env("WARDEN_LOG", "trace")
            // Only what the arguments say: not the environment of whoever runs the test.
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = BufReader::new(stdout).read_to_string(&mut text);
            sink.lock().unwrap().push_str(&text);
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("warden identity: serving https://") {
                    let _ = tx.send(rest.to_string());
                }
                let mut all = sink.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        let serving = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => panic!(
                "{name}: warden identity did not serve: {}",
                logs.lock().unwrap()
            ),
        };
        let (https, admin) = serving.split_once(" (admin http://").unwrap();
        Self {
            name,
            child,
            https: https.to_string(),
            admin: admin.trim_end_matches(')').to_string(),
            logs,
        }
    }

    /// `GET /metrics` on the admin port.
    fn metrics(&self) -> String {
        let mut tcp = std::net::TcpStream::connect(&self.admin).unwrap();
        write!(
            tcp,
            "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        tcp.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        out
    }

    /// `warden_ca_certificates_issued_total{result}`.
    fn counted(&self, result: &str) -> u64 {
        let prefix = format!("warden_ca_certificates_issued_total{{result=\"{result}\"}} ");
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0)
    }

    /// Its logs (colours removed) once `wanted` holds for them, for at most 30 s: lines
    /// reach the reader thread a moment after they are written.
    fn logs_once(&self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let logs = without_colours(&self.logs.lock().unwrap());
            if wanted(&logs) {
                return logs;
            }
            assert!(Instant::now() < deadline, "{}: {what}: {logs}", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What one certify call got.
#[derive(Debug)]
enum Outcome {
    Issued(String),
    Refused(u16, String),
}

struct Harness {
    api: &'static apiserver::ApiServer,
    dir: PathBuf,
    services: Vec<Identity>,
    bundle: TrustBundle,
    runtime: tokio::runtime::Runtime,
    /// Every token handed out in the test, to look for in the logs.
    tokens: Vec<String>,
}

impl Harness {
    /// `kubectl create token` as admin (the TokenRequest API).
    fn token(&mut self, ns: &str, sa: &str, extra: &[&str]) -> String {
        let mut args = vec!["create", "token", sa, "-n", ns, "--duration", "10m"];
        args.extend(extra);
        let token = self.api.kubectl_ok(&args, None).trim().to_string();
        assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
        self.tokens.push(token.clone());
        token
    }

    /// A certify call to `svc` with `token`, through the client the proxy uses.
    fn certify(&self, svc: &Identity, token: &str, expected: Option<&SpiffeId>) -> Outcome {
        let token_file = self.dir.join(format!("caller-{}.token", svc.name));
        std::fs::write(&token_file, token).unwrap();
        let client = CertifyClient::new(
            CertifyClientConfig {
                url: format!("https://{}", svc.https),
                server_id: SpiffeId::parse(&format!(
                    "spiffe://{TRUST_DOMAIN}/ns/warden-system/sa/warden-identity"
                ))
                .unwrap(),
                token_file,
                expected_id: expected.cloned(),
                timeout: Duration::from_secs(20),
            },
            TrustStore::single(self.bundle.clone()),
        )
        .unwrap();
        match self.runtime.block_on(client.certify()) {
            Ok(issued) => Outcome::Issued(issued.svid.id().as_str().to_string()),
            Err(CertifyClientError::Refused { status, message }) => {
                Outcome::Refused(status, message)
            }
            Err(e) => panic!("{}: certify failed otherwise: {e}", svc.name),
        }
    }

    /// Every service issues `want` for `token`.
    fn accepted(&self, case: &str, token: &str, want: &SpiffeId) {
        for svc in &self.services {
            match self.certify(svc, token, Some(want)) {
                Outcome::Issued(id) => assert_eq!(id, want.as_str(), "{case} ({})", svc.name),
                other => panic!("{case} ({}): {other:?}", svc.name),
            }
        }
    }

    /// Every service refuses `token` with 401, and counts it as `unauthenticated`.
    fn refused(&self, case: &str, token: &str, because: &str) {
        for svc in &self.services {
            let before = svc.counted("unauthenticated");
            match self.certify(svc, token, None) {
                Outcome::Refused(401, message) => {
                    assert!(
                        message.contains(because),
                        "{case} ({}): {message}",
                        svc.name
                    );
                    for t in &self.tokens {
                        assert!(!message.contains(t.as_str()), "the reply names no token");
                    }
                }
                other => panic!("{case} ({}): expected a 401, got {other:?}", svc.name),
            }
            assert_eq!(
                svc.counted("unauthenticated"),
                before + 1,
                "{case} ({}): counted",
                svc.name
            );
        }
    }

    /// Waits until the API server itself refuses `token` for `warden-identity` (its
    /// ServiceAccount and Pod lookups go through caches that follow a deletion shortly).
    fn until_the_api_server_refuses(&self, token: &str) {
        let runtime = &self.runtime;
        let client = runtime.block_on(self.api.client());
        let reviews: kube::Api<TokenReview> = kube::Api::all(client);
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![AUDIENCE.to_string()]),
            },
            ..TokenReview::default()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let reply = runtime
                .block_on(reviews.create(&Default::default(), &review))
                .unwrap();
            let status = reply.status.unwrap_or_default();
            if status.authenticated != Some(true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the API server still authenticates a token of a deleted object"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The install's documents of `kind`/`name`, as JSON for `kubectl apply`.
fn install_document(manifest: &str, kind: &str, name: &str) -> String {
    manifest
        .split("\n---")
        .filter_map(|chunk| serde_saphyr::from_str::<Value>(chunk.trim_start_matches("---")).ok())
        .find(|doc| doc["kind"] == kind && doc["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("warden install has no {kind} {name}"))
        .to_string()
}

/// An ES256 JWT with `claims` and header `kid`, signed with a fresh key.
fn forge(kid: &str, claims: &Value) -> String {
    use rcgen::SigningKey;
    let key = rcgen::KeyPair::generate().unwrap();
    let header = serde_json::json!({"alg": "ES256", "kid": kid});
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let der = key.sign(signing_input.as_bytes()).unwrap();
    format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(ecdsa_der_to_jose(&der))
    )
}

/// An ECDSA P-256 signature from ASN.1 `SEQUENCE { r INTEGER, s INTEGER }` to JOSE's
/// fixed `r || s` (32 bytes each).
fn ecdsa_der_to_jose(der: &[u8]) -> Vec<u8> {
    assert_eq!(der[0], 0x30, "a SEQUENCE");
    // Short-form lengths only: a P-256 signature is at most 72 bytes.
    let mut rest = &der[2..];
    let mut out = Vec::with_capacity(64);
    for _ in 0..2 {
        assert_eq!(rest[0], 0x02, "an INTEGER");
        let len = rest[1] as usize;
        let int = &rest[2..2 + len];
        let int = &int[int.len().saturating_sub(32)..]; // drop the sign byte
        out.extend(std::iter::repeat_n(0, 32 - int.len()));
        out.extend_from_slice(int);
        rest = &rest[2 + len..];
    }
    out
}

/// `text` without the terminal colour sequences (`ESC [ ... m`) of the text log format.
fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The JSON of a JWT part.
fn jwt_part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

#[test]
fn token_review_against_a_real_api_server_with_the_installed_rbac() {
    if !apiserver::available() {
        return;
    }
    let started = Instant::now();
    let api = apiserver::get();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();

    // The identity service's Namespace, ServiceAccount and RBAC exactly as installed.
    let manifest = String::from_utf8(warden(&["install"], &dir).stdout).unwrap();
    let mut documents = vec![install_document(&manifest, "Namespace", "warden-system")];
    for kind in ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"] {
        documents.push(install_document(&manifest, kind, "warden-identity"));
    }
    for document in &documents {
        api.kubectl_ok(&["apply", "-f", "-"], Some(document));
    }
    // No controller-manager creates the namespace's default ServiceAccount here.
    api.kubectl_ok(
        &["apply", "-f", "-"],
        Some(r#"{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"default","namespace":"warden-system"}}"#),
    );
    // Those rights and no others: what the test runs with is what a cluster gives it.
    let sa = "--as=system:serviceaccount:warden-system:warden-identity";
    api.until_can_i(&[sa, "create", "tokenreviews"], "yes");
    for (verb, resource) in [
        ("get", "secrets"),
        ("list", "pods"),
        ("create", "tokenrequests"),
    ] {
        let out = api.kubectl_with(&["auth", "can-i", sa, verb, resource], None);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "no",
            "{verb} {resource}"
        );
    }

    // The CA the service signs with.
    warden(
        &["ca", "init", "--dir", "ca", "--trust-domain", TRUST_DOMAIN],
        &dir,
    );
    let mut harness = Harness {
        api,
        dir: dir.clone(),
        services: Vec::new(),
        bundle: TrustBundle::from_pem_file(
            TrustDomain::parse(TRUST_DOMAIN).unwrap(),
            &dir.join("ca/bundle.crt"),
        )
        .unwrap(),
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        tokens: Vec::new(),
    };
    // The service's own token, from the TokenRequest API, for the API server's audience.
    let own = harness.token(
        "warden-system",
        "warden-identity",
        &["--audience", API_AUDIENCE],
    );
    assert_eq!(jwt_part(&own, 1)["aud"][0], API_AUDIENCE);
    // In a pod: the mounted file. As `kubectl` prints it, with a newline.
    std::fs::write(dir.join("own.token"), format!("{own}\n")).unwrap();
    // Out of the cluster: a kubeconfig whose user reads a token file.
    std::fs::write(dir.join("own-kubeconfig.token"), &own).unwrap();
    std::fs::write(
        dir.join("kubeconfig"),
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: warden-identity\n  user:\n    tokenFile: {}\ncontexts:\n- name: test\n  context: {{cluster: test, user: warden-identity}}\ncurrent-context: test\n",
            api.url,
            api.ca_file.display(),
            dir.join("own-kubeconfig.token").display()
        ),
    )
    .unwrap();

    let port = api.port.to_string();
    let ca_file = api.ca_file.display().to_string();
    harness.services.push(Identity::start(
        "in-cluster flags",
        &dir,
        &[
            "--kube-api-host",
            "127.0.0.1",
            "--kube-api-port",
            &port,
            "--kube-token-file",
            "own.token",
            "--kube-ca-file",
            &ca_file,
        ],
    ));
    harness.services.push(Identity::start(
        "kubeconfig",
        &dir,
        &["--kubeconfig", "kubeconfig"],
    ));

    // The workloads.
    let ns = api.namespace("tokenreview", &[]);
    api.kubectl_ok(&["create", "serviceaccount", "web", "-n", &ns], None);
    api.kubectl_ok(&["create", "serviceaccount", "gone", "-n", &ns], None);
    let pod = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"web-0","namespace":"{ns}"}},
            "spec":{{"serviceAccountName":"web","containers":[{{"name":"app","image":"registry.k8s.io/pause:3.10"}}]}}}}"#
    );
    api.kubectl_ok(&["create", "-f", "-"], Some(&pod));
    let web = SpiffeId::parse(&format!("spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/web")).unwrap();
    let gone = SpiffeId::parse(&format!("spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/gone")).unwrap();

    // (a) The warden-identity audience: an SVID for the ServiceAccount.
    let good = harness.token(&ns, "web", &["--audience", AUDIENCE]);
    harness.accepted("audience warden-identity", &good, &web);

    // (b) Another audience.
    let vault = harness.token(&ns, "web", &["--audience", "vault"]);
    harness.refused("another audience", &vault, "audience");

    // (c) Bound to a Pod that is then deleted, and (d) of a ServiceAccount that is then
    // deleted: both good while the object exists. The API server caches a successful
    // authentication for 10 s, so both objects go at once and the test waits once.
    let bound = harness.token(
        &ns,
        "web",
        &[
            "--audience",
            AUDIENCE,
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "web-0",
        ],
    );
    assert_eq!(
        jwt_part(&bound, 1)["kubernetes.io"]["pod"]["name"],
        "web-0",
        "a pod-bound token"
    );
    harness.accepted("bound to a live pod", &bound, &web);
    let orphan = harness.token(&ns, "gone", &["--audience", AUDIENCE]);
    harness.accepted("of a live ServiceAccount", &orphan, &gone);
    api.kubectl_ok(
        &[
            "delete",
            "pod",
            "web-0",
            "-n",
            &ns,
            "--grace-period=0",
            "--force",
        ],
        None,
    );
    api.kubectl_ok(&["delete", "serviceaccount", "gone", "-n", &ns], None);
    harness.until_the_api_server_refuses(&bound);
    harness.until_the_api_server_refuses(&orphan);
    harness.refused("bound to a deleted pod", &bound, "invalid bearer token");
    harness.refused(
        "of a deleted ServiceAccount",
        &orphan,
        "invalid bearer token",
    );

    // (e) The claims of a good token, signed with a key the API server does not know.
    let header = jwt_part(&good, 0);
    assert_eq!(header["alg"], "ES256", "the fixture signs with P-256");
    let forged = forge(header["kid"].as_str().unwrap(), &jwt_part(&good, 1));
    harness.tokens.push(forged.clone());
    assert_eq!(jwt_part(&forged, 1), jwt_part(&good, 1), "same claims");
    harness.refused(
        "signed with an unknown key",
        &forged,
        "invalid bearer token",
    );

    // The good token still works: the refusals changed nothing.
    harness.accepted("audience warden-identity, again", &good, &web);

    // Without the install's RBAC (the namespace's default ServiceAccount has none), the
    // API server answers 403 and callers get 503, not a verdict on their token.
    let unbound = harness.token("warden-system", "default", &["--audience", API_AUDIENCE]);
    std::fs::write(dir.join("unbound.token"), &unbound).unwrap();
    let without_rbac = Identity::start(
        "no RBAC",
        &dir,
        &[
            "--kube-api-host",
            "127.0.0.1",
            "--kube-api-port",
            &port,
            "--kube-token-file",
            "unbound.token",
            "--kube-ca-file",
            &ca_file,
        ],
    );
    match harness.certify(&without_rbac, &good, None) {
        Outcome::Refused(503, message) => {
            assert_eq!(
                message,
                "authenticator unavailable: TokenReview API answered 403 Forbidden"
            );
        }
        other => panic!("without RBAC: expected a 503, got {other:?}"),
    }
    assert_eq!(without_rbac.counted("unavailable"), 1);
    without_rbac.logs_once("the operator learns why", |logs| {
        logs.contains("cannot create resource \"tokenreviews\"")
    });
    harness.services.push(without_rbac);

    for svc in &harness.services[..2] {
        assert_eq!(svc.counted("issued"), 4, "{}", svc.name);
        assert_eq!(svc.counted("unauthenticated"), 4, "{}", svc.name);
        assert_eq!(svc.counted("unavailable"), 0, "{}", svc.name);
    }

    // No token, nor any 20 characters of one, in any line either service wrote.
    for svc in &harness.services {
        let logs = svc.logs_once("the refusals were logged", |logs| {
            logs.contains("certify refused") || logs.contains("certify failed")
        });
        for token in &harness.tokens {
            let bytes = token.as_bytes();
            for window in bytes.windows(20) {
                let window = std::str::from_utf8(window).unwrap();
                assert!(
                    !logs.contains(window),
                    "{}: a token's {window:?} appears in the logs",
                    svc.name
                );
            }
        }
    }
    eprintln!(
        "kube_tokenreview: API server ready in {:?}, test took {:?}",
        api.startup,
        started.elapsed()
    );
}
