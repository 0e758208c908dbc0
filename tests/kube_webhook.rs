//! The injector webhook as the real API server calls it (DESIGN sections 6 and 10).
//!
//! Each test runs the real `warden injector` on 127.0.0.1, exactly as the Deployment of
//! `warden install` runs it (its arguments and environment; only the file paths and listen
//! addresses differ), with a serving certificate issued by the install's CA, and registers
//! the install's `MutatingWebhookConfiguration` with two changes: `clientConfig.service`
//! becomes `clientConfig.url` (the caBundle stays the install's), and the `namespaceSelector`
//! gets one more expression, a label unique to the test, so that the tests of this file
//! (parallel, one API server) never see each other's webhooks. Every assertion is on what
//! the real API server did: what it stored, what it refused, what kubectl printed.

#[path = "support/apiserver.rs"]
mod apiserver;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use apiserver::ports::reserved_port;
use apiserver::ApiServer;
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
use serde_json::{json, Value};
use warden_core::contract::{self, annotations};
use warden_core::probe::{self, AppProbe, AppProbes};

/// The extra `namespaceSelector` label that scopes a test's webhook to its own namespaces.
const SCOPE_LABEL: &str = "webhook-test.warden.dev/scope";
/// The namespace label that turns injection on (and off).
const INJECT: &str = contract::INJECT_LABEL;

// ---------------------------------------------------------------------------------------
// The install: a fresh CA, `warden install --ca-dir`, and what it says about the injector.
// ---------------------------------------------------------------------------------------

/// One test's control plane: its CA, the install's webhook configuration and the injector's
/// command line from the install's Deployment.
struct Mesh {
    dir: tempfile::TempDir,
    /// The install's MutatingWebhookConfiguration.
    webhook: Value,
    /// `warden injector ...` as the install's Deployment runs it, paths made local.
    injector_args: Vec<String>,
    /// The Deployment's container environment.
    injector_env: Vec<(String, String)>,
    /// The install's `warden-system` Namespace and the injector's ServiceAccount, ClusterRole
    /// and ClusterRoleBinding, as one YAML stream.
    injector_rbac: String,
}

fn warden(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "warden {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

impl Mesh {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("warden-webhook-")
            .tempdir()
            .unwrap();
        let ca = dir.path().join("ca");
        warden(&["ca", "init", "--dir", ca.to_str().unwrap()]);
        let manifest = warden(&["install", "--ca-dir", ca.to_str().unwrap()]);
        let docs: Vec<Value> = manifest
            .split("\n---")
            .filter_map(|chunk| serde_saphyr::from_str(chunk.trim_start_matches("---")).ok())
            .filter(|doc: &Value| doc.is_object())
            .collect();
        let of_kind = |kind: &str, name: &str| {
            docs.iter()
                .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
                .unwrap_or_else(|| panic!("the install has no {kind} {name}"))
                .clone()
        };
        let webhook = of_kind("MutatingWebhookConfiguration", "warden-injector");
        let injector_rbac = [
            ("Namespace", contract::SYSTEM_NAMESPACE),
            ("ServiceAccount", "warden-injector"),
            ("ClusterRole", "warden-injector"),
            ("ClusterRoleBinding", "warden-injector"),
        ]
        .map(|(kind, name)| of_kind(kind, name).to_string())
        .join("\n---\n");
        let deployment = of_kind("Deployment", "warden-injector");
        let container = deployment["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "injector")
            .expect("the injector Deployment has an `injector` container")
            .clone();

        // The serving certificate, as the install issues it (the injector's SPIFFE ID and
        // Service DNS name, from the CA's issuer) plus the IP SAN the API server calls here.
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        serving_certificate(&ca, &cert, &key);
        let bundle = ca.join("bundle.crt");

        let mut args: Vec<String> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        // In a cluster the injector gets its serving certificate from the identity service;
        // here it serves the one above (same CA, same names, plus the IP SAN).
        let token = args
            .iter()
            .position(|a| a == "--identity-token-file")
            .expect("the injector Deployment gets its certificate from the identity service");
        args.splice(
            token..token + 2,
            [
                "--tls-cert".to_string(),
                cert.display().to_string(),
                "--tls-key".to_string(),
                key.display().to_string(),
            ],
        );
        let at = args
            .iter()
            .position(|a| a == "--trust-anchors")
            .unwrap_or_else(|| panic!("the injector Deployment passes --trust-anchors: {args:?}"));
        args[at + 1] = bundle.display().to_string();
        let env = container["env"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e["name"].as_str().unwrap().to_string(),
                    e["value"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        Mesh {
            dir,
            webhook,
            injector_args: args,
            injector_env: env,
            injector_rbac,
        }
    }
}

/// Writes a serving certificate (chain: leaf, issuer) and key issued by the CA's issuer,
/// valid for the injector's Service DNS name and 127.0.0.1.
fn serving_certificate(ca: &Path, cert: &Path, key: &Path) {
    let issuer_pem = std::fs::read_to_string(ca.join("issuer.crt")).unwrap();
    let issuer_key =
        KeyPair::from_pem(&std::fs::read_to_string(ca.join("issuer.key")).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&issuer_pem, issuer_key).unwrap();
    let mut params = CertificateParams::new(vec![contract::injector_service_dns()]).unwrap();
    let id = format!(
        "spiffe://cluster.local/ns/{}/sa/{}",
        contract::SYSTEM_NAMESPACE,
        contract::INJECTOR_SERVICE
    );
    params
        .subject_alt_names
        .push(SanType::URI(id.as_str().try_into().unwrap()));
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = params.signed_by(&leaf_key, &issuer).unwrap();
    std::fs::write(cert, format!("{}{issuer_pem}", leaf.pem())).unwrap();
    std::fs::write(key, leaf_key.serialize_pem()).unwrap();
}

// ---------------------------------------------------------------------------------------
// The injector process.
// ---------------------------------------------------------------------------------------

/// A running `warden injector`; killed when dropped.
struct Injector {
    child: Option<Child>,
    port: u16,
    admin: u16,
    log: PathBuf,
}

impl Injector {
    fn start(mesh: &Mesh) -> Self {
        Self::start_with(mesh, &[])
    }

    /// Starts the install's injector with `extra` arguments after the install's.
    fn start_with(mesh: &Mesh, extra: &[&str]) -> Self {
        let log = mesh.dir.path().join("injector.log");
        // In a cluster its ServiceAccount's in-cluster credentials; here the same account's
        // token in a kubeconfig.
        let kubeconfig = injector_kubeconfig(apiserver::get(), mesh);
        let mut last = String::new();
        // A port free a moment ago may be taken by the time the injector binds it.
        for _ in 0..3 {
            let (port, admin) = (reserved_port(), reserved_port());
            let file = std::fs::File::create(&log).unwrap();
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_warden"));
            cmd.args(&mesh.injector_args)
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .args(extra)
                .arg(format!("--listen=127.0.0.1:{port}"))
                .arg(format!("--admin-listen=127.0.0.1:{admin}"))
                .envs(mesh.injector_env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(file.try_clone().unwrap())
                .stderr(file);
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let mut injector = Injector {
                child: Some(cmd.spawn().expect("warden injector starts")),
                port,
                admin,
                log: log.clone(),
            };
            match injector.wait_ready() {
                Ok(()) => return injector,
                Err(e) => last = e,
            }
        }
        panic!("{last}");
    }

    /// Waits for the admin `/ready` and the webhook's port.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.as_mut().unwrap().try_wait() {
                return Err(format!(
                    "warden injector exited ({status}): {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ));
            }
            let ready = matches!(http_get(self.admin, "/ready"), Some((200, _)));
            if ready && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "warden injector not ready within 20s: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/mutate", self.port)
    }

    /// `warden_injector_reviews_total{result}` from the admin `/metrics`.
    fn reviews(&self, result: &str) -> u64 {
        let (status, body) = http_get(self.admin, "/metrics").expect("the admin port answers");
        assert_eq!(status, 200, "{body}");
        let label = format!("result=\"{result}\"");
        body.lines()
            .find(|l| l.starts_with("warden_injector_reviews_total{") && l.contains(&label))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<f64>().ok())
            .map(|n| n as u64)
            .unwrap_or_else(|| panic!("no reviews_total for {result} in:\n{body}"))
    }

    /// Kills the process and waits for it.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A kubeconfig for the injector's ServiceAccount with the install's RBAC, so that its
/// MeshPolicy and Namespace watches get exactly what the ClusterRole grants (made once per
/// test binary, with Warden's CRDs).
fn injector_kubeconfig(api: &ApiServer, mesh: &Mesh) -> &'static Path {
    static KUBECONFIG: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    KUBECONFIG.get_or_init(|| {
        api.install_crds();
        api.kubectl_ok(&["apply", "-f", "-"], Some(&mesh.injector_rbac));
        let token = api.kubectl_ok(
            &[
                "create",
                "token",
                "warden-injector",
                "-n",
                contract::SYSTEM_NAMESPACE,
                "--duration",
                "2h",
            ],
            None,
        );
        let admin = std::fs::read_to_string(&api.kubeconfig).unwrap();
        let cluster = admin.split("users:").next().unwrap();
        let config = format!(
            "{cluster}users:\n- name: injector\n  user:\n    token: {}\ncontexts:\n- name: test\n  context: {{cluster: test, user: injector}}\ncurrent-context: test\n",
            token.trim()
        );
        let path = api.dir.join("injector.kubeconfig");
        std::fs::write(&path, config).unwrap();
        path
    })
}

/// A plain HTTP/1.0 GET on 127.0.0.1 (no chunked encoding): status and body.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

// ---------------------------------------------------------------------------------------
// The webhook configuration.
// ---------------------------------------------------------------------------------------

/// A registered MutatingWebhookConfiguration; deleted when dropped.
struct Webhook<'a> {
    api: &'a ApiServer,
    name: String,
}

impl Drop for Webhook<'_> {
    fn drop(&mut self) {
        let _ = self.api.kubectl_with(
            &[
                "delete",
                "mutatingwebhookconfiguration",
                &self.name,
                "--ignore-not-found",
                "--wait=false",
            ],
            None,
        );
    }
}

/// Registers the install's webhook configuration under `name`, calling `injector`, scoped to
/// namespaces labelled `SCOPE_LABEL=name`; `adjust` may change it further.
fn register<'a>(
    api: &'a ApiServer,
    mesh: &Mesh,
    injector: &Injector,
    name: &str,
    adjust: impl FnOnce(&mut Value),
) -> Webhook<'a> {
    let mut config = mesh.webhook.clone();
    config["metadata"]["name"] = json!(name);
    let hooks = config["webhooks"].as_array_mut().unwrap();
    assert_eq!(hooks.len(), 1, "the install registers one webhook");
    for hook in hooks.iter_mut() {
        let client = &hook["clientConfig"];
        // The change the issue asks for: the Service becomes a URL (same path, same CA).
        assert_eq!(client["service"]["path"], "/mutate", "{client}");
        assert!(client.get("url").is_none(), "{client}");
        let ca_bundle = client["caBundle"].clone();
        assert!(
            ca_bundle.is_string(),
            "the install sets a caBundle: {client}"
        );
        hook["clientConfig"] = json!({"url": injector.url(), "caBundle": ca_bundle});
        hook["namespaceSelector"]["matchExpressions"]
            .as_array_mut()
            .expect("the install's namespaceSelector has matchExpressions")
            .push(json!({"key": SCOPE_LABEL, "operator": "In", "values": [name]}));
    }
    adjust(&mut config);
    api.kubectl_ok(&["create", "-f", "-"], Some(&config.to_string()));
    Webhook {
        api,
        name: name.to_string(),
    }
}

/// Waits until the API server calls the webhook for pods in `namespace` (its webhook
/// configuration cache has caught up): a server-side dry run reaches the injector.
fn wait_called(api: &ApiServer, injector: &Injector, namespace: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let before = injector.reviews("dry_run");
    let probe = restricted_pod("webhook-ready");
    loop {
        let out = kubectl(
            api,
            &["create", "--dry-run=server", "-n", namespace, "-f", "-"],
            Some(&probe.to_string()),
        );
        assert!(out.status.success(), "{}", stderr(&out));
        if injector.reviews("dry_run") > before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the API server did not call the webhook within 20s; its log:\n{}",
            api.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------
// Pods.
// ---------------------------------------------------------------------------------------

/// A pod that satisfies Pod Security `restricted` itself.
fn restricted_pod(name: &str) -> Value {
    pod(
        name,
        json!({"spec": {
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "app",
                "image": "registry.example/app:1",
                "securityContext": {
                    "runAsUser": 1000,
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                },
            }],
        }}),
    )
}

fn kubectl(api: &ApiServer, args: &[&str], stdin: Option<&str>) -> Output {
    api.kubectl_with(args, stdin)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A pod named `name` (`generateName` if it ends with `-`) with one app container, merged
/// with `extra` (its `metadata` and `spec` keys replace the defaults').
fn pod(name: &str, extra: Value) -> Value {
    let name_key = if name.ends_with('-') {
        "generateName"
    } else {
        "name"
    };
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {name_key: name},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]},
    });
    for part in ["metadata", "spec"] {
        if let Some(fields) = extra.get(part).and_then(Value::as_object) {
            for (k, v) in fields {
                pod[part][k] = v.clone();
            }
        }
    }
    pod
}

/// Creates `pod` in `namespace` with `kubectl create`; returns the stored pod (read back)
/// and kubectl's stderr (the admission warnings).
fn create(api: &ApiServer, namespace: &str, pod: &Value) -> (Value, String) {
    let out = kubectl(
        api,
        &["create", "-n", namespace, "-o", "name", "-f", "-"],
        Some(&pod.to_string()),
    );
    assert!(
        out.status.success(),
        "creating {} in {namespace}: {}",
        pod["metadata"],
        stderr(&out)
    );
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let name = name.strip_prefix("pod/").expect("kubectl prints pod/NAME");
    (get_pod(api, namespace, name), stderr(&out))
}

fn get_pod(api: &ApiServer, namespace: &str, name: &str) -> Value {
    let json = api.kubectl_ok(&["get", "pod", "-n", namespace, name, "-o", "json"], None);
    serde_json::from_str(&json).unwrap()
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

fn container<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {list}"))
}

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
}

/// Asserts the stored pod is injected exactly once, as DESIGN section 6 says: `warden-init`
/// then `warden-proxy` (a native sidecar) ahead of the app's own init containers, the app
/// containers untouched in number and order, Warden's volumes, the injected-version
/// annotation.
fn assert_injected(pod: &Value, app_init: &[&str], app: &[&str]) {
    let spec = &pod["spec"];
    let mut init = vec![contract::INIT_CONTAINER, contract::PROXY_CONTAINER];
    init.extend_from_slice(app_init);
    assert_eq!(names(&spec["initContainers"]), init, "{pod}");
    assert_eq!(names(&spec["containers"]), app, "{pod}");

    let warden_init = container(&spec["initContainers"], contract::INIT_CONTAINER);
    assert_eq!(warden_init["args"][0], "init", "{warden_init}");
    assert_eq!(
        warden_init["securityContext"]["capabilities"],
        json!({"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}),
        "{warden_init}"
    );
    assert_native_proxy(container(
        &spec["initContainers"],
        contract::PROXY_CONTAINER,
    ));
    assert_token_volume_and_version(pod, &["warden-token", "warden-run"]);
    // The ServiceAccount label NetworkPolicies select by: the pod's real one.
    assert_eq!(
        pod["metadata"]["labels"][contract::SERVICE_ACCOUNT_LABEL],
        spec["serviceAccountName"].as_str().unwrap_or("default"),
        "{pod}"
    );
}

/// Asserts `proxy` is the injector's `warden-proxy` as a native sidecar, meeting Pod
/// Security `restricted` on its own.
fn assert_native_proxy(proxy: &Value) {
    assert_eq!(
        proxy["restartPolicy"], "Always",
        "a native sidecar: {proxy}"
    );
    assert_eq!(proxy["args"], json!(["proxy"]), "{proxy}");
    assert_eq!(
        proxy["startupProbe"]["httpGet"],
        json!({"path": "/ready", "port": contract::ADMIN_PORT, "scheme": "HTTP"}),
        "{proxy}"
    );
    let sc = &proxy["securityContext"];
    assert_eq!(sc["runAsUser"], contract::PROXY_UID, "{sc}");
    assert_eq!(sc["runAsNonRoot"], true, "{sc}");
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{sc}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{sc}");
    assert_eq!(sc["capabilities"], json!({"drop": ["ALL"]}), "{sc}");
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{sc}");
}

/// Asserts the pod has each of Warden's `volumes` once (and no policy ConfigMap: policies
/// come from the controller, whose address the proxy gets), the token's audience, and the
/// injected-version annotation.
fn assert_token_volume_and_version(pod: &Value, volumes: &[&str]) {
    let spec = &pod["spec"];
    let have = names(&spec["volumes"]);
    for volume in volumes {
        assert_eq!(have.iter().filter(|v| *v == volume).count(), 1, "{have:?}");
    }
    assert!(!have.contains(&"warden-policy"), "{have:?}");
    let containers = spec["initContainers"]
        .as_array()
        .into_iter()
        .chain(spec["containers"].as_array())
        .flatten();
    let proxy = containers
        .into_iter()
        .find(|c| c["name"] == contract::PROXY_CONTAINER)
        .unwrap();
    let control_plane = proxy["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == contract::env::CONTROL_PLANE)
        .unwrap();
    assert_eq!(
        control_plane["value"],
        contract::controller_address(),
        "{proxy}"
    );
    let token = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "warden-token")
        .unwrap();
    assert_eq!(
        token["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        contract::IDENTITY_TOKEN_AUDIENCE,
        "{token}"
    );
    assert_eq!(
        pod["metadata"]["annotations"][annotations::INJECTED_VERSION],
        env!("CARGO_PKG_VERSION"),
        "{}",
        pod["metadata"]
    );
}

/// Asserts the stored pod is injected once in CNI mode (`warden injector --interception
/// cni`): `warden-proxy` first among the init containers and no `warden-init` (Warden's CNI
/// plugin installs the rules from the node), no `/run` volume, the interception annotation,
/// and the interception settings in the proxy's environment, which the plugin reads.
fn assert_injected_cni(pod: &Value, app: &[&str]) {
    let spec = &pod["spec"];
    assert_eq!(
        names(&spec["initContainers"]),
        [contract::PROXY_CONTAINER],
        "{pod}"
    );
    assert_eq!(names(&spec["containers"]), app, "{pod}");
    let proxy = container(&spec["initContainers"], contract::PROXY_CONTAINER);
    assert_native_proxy(proxy);
    assert_eq!(
        env_value(proxy, contract::cni::SETTINGS_ENV),
        Some(r#"{"skipInboundPorts":[],"skipOutboundPorts":[],"skipOutboundCidrs":[]}"#),
        "{proxy}"
    );
    assert_token_volume_and_version(pod, &["warden-token"]);
    assert!(
        !names(&spec["volumes"]).contains(&"warden-run"),
        "no /run volume without warden-init: {}",
        spec["volumes"]
    );
    assert_eq!(
        pod["metadata"]["annotations"][contract::cni::INTERCEPTION_ANNOTATION],
        contract::cni::INTERCEPTION_CNI,
        "{}",
        pod["metadata"]
    );
    // What the CNI plugin makes of the stored pod: its rules, with those settings.
    let typed: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod.clone()).unwrap();
    assert_eq!(
        warden_injector::cni::interception(&typed),
        Ok(warden_injector::cni::PodInterception::Cni(
            Default::default()
        ))
    );
}

/// Asserts the stored pod has nothing of Warden's.
fn assert_not_injected(pod: &Value) {
    let spec = &pod["spec"];
    let all: Vec<&str> = names(&spec["initContainers"])
        .into_iter()
        .chain(names(&spec["containers"]))
        .collect();
    assert!(
        all.iter().all(|n| !n.starts_with("warden-")),
        "no Warden container: {all:?}"
    );
    let volumes = names(&spec["volumes"]);
    assert!(
        volumes.iter().all(|n| !n.starts_with("warden-")),
        "no Warden volume: {volumes:?}"
    );
    assert!(
        pod["metadata"]["annotations"]
            .get(annotations::INJECTED_VERSION)
            .is_none(),
        "{}",
        pod["metadata"]
    );
}

/// The namespace labels: `warden.dev/inject` (when given), the test's scope, and `more`.
fn labels<'a>(
    scope: &'a str,
    inject: Option<&'a str>,
    more: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut labels = vec![(SCOPE_LABEL, scope)];
    if let Some(value) = inject {
        labels.push((INJECT, value));
    }
    labels.extend_from_slice(more);
    labels
}

/// The API server, or `None` when the test is skipped (no binaries, outside CI).
fn api() -> Option<&'static ApiServer> {
    apiserver::available().then(apiserver::get)
}

// ---------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------

#[test]
fn pods_in_an_enabled_namespace_are_injected_and_the_api_server_accepts_them() {
    let Some(api) = api() else { return };
    let started = Instant::now();
    let scope = "inject-enabled";
    let mesh = Mesh::new();
    let injector = Injector::start(&mesh);
    let _webhook = register(api, &mesh, &injector, scope, |_| {});
    let ns = api.namespace("webhook-enabled", &labels(scope, Some("enabled"), &[]));
    wait_called(api, &injector, &ns);

    // A bare pod.
    let (bare, warnings) = create(api, &ns, &pod("bare", json!({})));
    assert_injected(&bare, &[], &["app"]);
    assert!(!warnings.contains("warden"), "no warning: {warnings}");
    let proxy = container(&bare["spec"]["initContainers"], contract::PROXY_CONTAINER);
    assert_eq!(env_value(proxy, probe::ENV), None, "no probes: {proxy}");
    assert_eq!(
        bare["metadata"]["annotations"][annotations::DEFAULT_CONTAINER],
        "app"
    );

    // HTTP (by port name), TCP and gRPC probes on one container, an exec probe on another.
    let probes = pod(
        "probes",
        json!({"spec": {"containers": [
            {
                "name": "app",
                "image": "registry.example/app:1",
                "ports": [
                    {"name": "http", "containerPort": 8080},
                    {"name": "db", "containerPort": 5432},
                    {"name": "grpc", "containerPort": 9090},
                ],
                "livenessProbe": {
                    "httpGet": {"path": "/healthz", "port": "http",
                                "httpHeaders": [{"name": "X-Probe", "value": "1"}]},
                    "periodSeconds": 7,
                    "failureThreshold": 4,
                },
                "readinessProbe": {"tcpSocket": {"port": 5432}, "initialDelaySeconds": 2},
                "startupProbe": {"grpc": {"port": 9090, "service": "ready"}},
            },
            {
                "name": "worker",
                "image": "registry.example/worker:1",
                "livenessProbe": {"exec": {"command": ["true"]}},
            },
        ]}}),
    );
    let (stored, _) = create(api, &ns, &probes);
    assert_injected(&stored, &[], &["app", "worker"]);
    let app = container(&stored["spec"]["containers"], "app");
    for (field, kind) in [
        ("livenessProbe", "liveness"),
        ("readinessProbe", "readiness"),
        ("startupProbe", "startup"),
    ] {
        let probe = &app[field];
        assert_eq!(
            probe["httpGet"],
            json!({"path": probe::admin_path("app", kind), "port": contract::ADMIN_PORT, "scheme": "HTTP"}),
            "{field}: {probe}"
        );
        for other in ["tcpSocket", "grpc", "exec"] {
            assert!(probe.get(other).is_none(), "{field}: {probe}");
        }
    }
    // The timing is the app's own.
    assert_eq!(app["livenessProbe"]["periodSeconds"], 7);
    assert_eq!(app["livenessProbe"]["failureThreshold"], 4);
    assert_eq!(app["readinessProbe"]["initialDelaySeconds"], 2);
    // The exec probe is left as it was.
    let worker = container(&stored["spec"]["containers"], "worker");
    assert_eq!(
        worker["livenessProbe"]["exec"],
        json!({"command": ["true"]}),
        "{worker}"
    );
    // The proxy runs the originals.
    let proxy = container(&stored["spec"]["initContainers"], contract::PROXY_CONTAINER);
    let table: AppProbes = serde_json::from_str(
        env_value(proxy, probe::ENV).unwrap_or_else(|| panic!("{} in {proxy}", probe::ENV)),
    )
    .unwrap();
    let expected: AppProbes = [
        (
            "app/liveness".to_string(),
            AppProbe::Http {
                scheme: "HTTP".into(),
                host: None,
                port: 8080,
                path: "/healthz".into(),
                headers: vec![("X-Probe".into(), "1".into())],
            },
        ),
        ("app/readiness".to_string(), AppProbe::Tcp { port: 5432 }),
        (
            "app/startup".to_string(),
            AppProbe::Grpc {
                port: 9090,
                service: "ready".into(),
            },
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(table, expected);

    // warden.dev/* annotations: resources and log level honoured, a malformed value ignored
    // with a warning, a security-relevant one ignored with a warning (not allowed by the
    // install's injector); the app's own init container runs after Warden's.
    let annotated = pod(
        "annotated",
        json!({
            "metadata": {"annotations": {
                annotations::PROXY_MEMORY_LIMIT: "300Mi",
                annotations::PROXY_CPU_REQUEST: "50m",
                annotations::LOG_LEVEL: "debug,warden_proxy=trace",
                annotations::PROXY_MEMORY_REQUEST: "lots",
                annotations::SKIP_INBOUND_PORTS: "22",
            }},
            "spec": {
                "initContainers": [{"name": "migrate", "image": "registry.example/migrate:1"}],
                "containers": [{"name": "app", "image": "registry.example/app:1"}],
            },
        }),
    );
    let (stored, warnings) = create(api, &ns, &annotated);
    assert_injected(&stored, &["migrate"], &["app"]);
    let proxy = container(&stored["spec"]["initContainers"], contract::PROXY_CONTAINER);
    assert_eq!(
        proxy["resources"],
        json!({"limits": {"memory": "300Mi"}, "requests": {"cpu": "50m", "memory": "20Mi"}}),
        "{proxy}"
    );
    assert_eq!(
        env_value(proxy, contract::env::LOG),
        Some("debug,warden_proxy=trace")
    );
    let init = container(&stored["spec"]["initContainers"], contract::INIT_CONTAINER);
    assert_eq!(
        init["args"],
        json!(["init"]),
        "skip-inbound-ports ignored: {init}"
    );
    // kubectl prints the webhook's warnings as the API server relays them.
    let warning_lines: Vec<&str> = warnings
        .lines()
        .filter(|l| l.starts_with("Warning: warden:"))
        .collect();
    assert_eq!(warning_lines.len(), 2, "{warnings}");
    assert!(
        warning_lines.iter().any(|l| l.contains(&format!(
            "annotation {} ignored: it weakens enforcement",
            annotations::SKIP_INBOUND_PORTS
        ))),
        "{warnings}"
    );
    assert!(
        warning_lines.iter().any(|l| l.contains(&format!(
            "annotation {}: \"lots\" is not a Kubernetes quantity; using the default",
            annotations::PROXY_MEMORY_REQUEST
        ))),
        "{warnings}"
    );

    // Shaped like a Deployment's pod: generateName, the ReplicaSet's labels and owner.
    let replica = pod(
        "web-5d8f7c9b6-",
        json!({
            "metadata": {
                "labels": {"app": "web", "pod-template-hash": "5d8f7c9b6"},
                "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f7c9b6",
                    "uid": "6f1c2a7e-2b1d-4c1e-9a55-0c3f5b8d2e11", "controller": true,
                }],
            },
            "spec": {
                "containers": [{
                    "name": "web",
                    "image": "registry.example/web:1",
                    "ports": [{"name": "http", "containerPort": 80}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": "http"}},
                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                }],
                "terminationGracePeriodSeconds": 30,
                "serviceAccountName": "default",
            },
        }),
    );
    let (stored, _) = create(api, &ns, &replica);
    let name = stored["metadata"]["name"].as_str().unwrap();
    assert!(
        name.starts_with("web-5d8f7c9b6-") && name.len() > "web-5d8f7c9b6-".len(),
        "{name}"
    );
    assert_injected(&stored, &[], &["web"]);
    assert_eq!(
        container(&stored["spec"]["containers"], "web")["readinessProbe"]["httpGet"]["path"],
        probe::admin_path("web", "readiness")
    );
    // The proxy names itself from the downward API, so a generated name is no problem.
    let proxy = container(&stored["spec"]["initContainers"], contract::PROXY_CONTAINER);
    let pod_name = proxy["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == contract::env::POD_NAME)
        .unwrap();
    assert_eq!(
        pod_name["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name",
        "{pod_name}"
    );

    // Each pod went through the injector once.
    assert_eq!(injector.reviews("injected"), 4);
    eprintln!("enabled namespace: {:?}", started.elapsed());
}

#[test]
fn pods_in_disabled_and_unlabelled_namespaces_and_opted_out_pods_are_stored_unchanged() {
    let Some(api) = api() else { return };
    let started = Instant::now();
    let scope = "inject-elsewhere";
    let mesh = Mesh::new();
    let injector = Injector::start(&mesh);
    let _webhook = register(api, &mesh, &injector, scope, |_| {});
    let enabled = api.namespace("webhook-optout", &labels(scope, Some("enabled"), &[]));
    let disabled = api.namespace("webhook-disabled", &labels(scope, Some("disabled"), &[]));
    let unlabelled = api.namespace("webhook-unlabelled", &labels(scope, None, &[]));
    wait_called(api, &injector, &enabled);

    let app = json!({"spec": {"containers": [{
        "name": "app",
        "image": "registry.example/app:1",
        "ports": [{"name": "http", "containerPort": 8080}],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
    }]}});
    for ns in [&disabled, &unlabelled] {
        let (stored, warnings) = create(api, ns, &pod("app", app.clone()));
        assert_not_injected(&stored);
        assert_eq!(
            names(&stored["spec"]["containers"]),
            ["app"],
            "{ns}: {stored}"
        );
        assert_eq!(
            stored["spec"]["containers"][0]["livenessProbe"]["httpGet"]["path"], "/healthz",
            "{ns}: the probe is the app's"
        );
        assert!(!warnings.contains("warden"), "{ns}: {warnings}");
    }
    assert_eq!(
        injector.reviews("injected") + injector.reviews("skipped"),
        0,
        "the API server never called the webhook for them"
    );

    // In an enabled namespace: a pod labelled warden.dev/inject=disabled is excluded by the
    // objectSelector (never sent); one annotated so is sent and skipped with a warning; a
    // hostNetwork pod is skipped with a warning.
    let (stored, _) = create(
        api,
        &enabled,
        &pod(
            "labelled-out",
            json!({"metadata": {"labels": {INJECT: "disabled"}}}),
        ),
    );
    assert_not_injected(&stored);
    assert_eq!(injector.reviews("skipped"), 0, "not sent to the webhook");
    let (stored, warnings) = create(
        api,
        &enabled,
        &pod(
            "annotated-out",
            json!({"metadata": {"annotations": {annotations::INJECT: "disabled"}}}),
        ),
    );
    assert_not_injected(&stored);
    assert!(
        warnings.contains("Warning: warden: not injected: the pod opted out"),
        "{warnings}"
    );
    let (stored, warnings) = create(
        api,
        &enabled,
        &pod(
            "host",
            json!({"spec": {"hostNetwork": true, "containers": [{"name": "app", "image": "registry.example/app:1"}]}}),
        ),
    );
    assert_not_injected(&stored);
    assert!(
        warnings.contains("Warning: warden: not injected: hostNetwork pods"),
        "{warnings}"
    );
    assert_eq!(injector.reviews("skipped"), 2);
    assert_eq!(injector.reviews("injected"), 0);
    eprintln!(
        "disabled and unlabelled namespaces: {:?}",
        started.elapsed()
    );
}

#[test]
fn a_namespace_enforcing_pod_security_restricted_admits_an_injected_pod() {
    let Some(api) = api() else { return };
    let started = Instant::now();
    // The injector in CNI mode (Warden's CNI plugin installs the rules), and one in init
    // mode (the default), each with its own webhook and namespaces.
    let scope = "inject-restricted";
    let mesh = Mesh::new();
    let injector = Injector::start_with(&mesh, &["--interception", "cni"]);
    let _webhook = register(api, &mesh, &injector, scope, |_| {});
    let init_scope = "inject-restricted-init";
    let init_mesh = Mesh::new();
    let init_injector = Injector::start(&init_mesh);
    let _init_webhook = register(api, &init_mesh, &init_injector, init_scope, |_| {});
    let restricted = [("pod-security.kubernetes.io/enforce", "restricted")];
    let plain = api.namespace(
        "webhook-restricted-plain",
        &labels(scope, None, &restricted),
    );
    let meshed = api.namespace(
        "webhook-restricted",
        &labels(scope, Some("enabled"), &restricted),
    );
    let meshed_init = api.namespace(
        "webhook-restricted-init",
        &labels(init_scope, Some("enabled"), &restricted),
    );
    wait_called(api, &injector, &meshed);
    wait_called(api, &init_injector, &meshed_init);

    // A pod that satisfies `restricted` itself (admitted where nothing is injected)...
    let compliant = restricted_pod("compliant");
    let (stored, warnings) = create(api, &plain, &compliant);
    assert_not_injected(&stored);
    assert!(!warnings.contains("violate"), "{warnings}");

    // ... is admitted, injected in CNI mode, where the namespace is meshed too: the proxy
    // meets `restricted`, and there is no privileged container.
    let (stored, warnings) = create(api, &meshed, &compliant);
    assert!(!warnings.contains("violate"), "{warnings}");
    assert_injected_cni(&stored, &["app"]);
    assert_eq!(injector.reviews("injected"), 1);

    // In init mode, by design, `restricted` refuses it: warden-init runs as root with
    // NET_ADMIN and NET_RAW for the iptables rules; the refusal names that container only.
    let out = kubectl(
        api,
        &["create", "-n", &meshed_init, "-o", "name", "-f", "-"],
        Some(&compliant.to_string()),
    );
    let refusal = stderr(&out);
    assert!(!out.status.success(), "init mode admitted under restricted");
    assert!(
        refusal.contains("violates PodSecurity \"restricted:"),
        "{refusal}"
    );
    assert!(
        refusal.contains(&format!("container \"{}\"", contract::INIT_CONTAINER)),
        "{refusal}"
    );
    for other in [contract::PROXY_CONTAINER, "app"] {
        assert!(
            !refusal.contains(&format!("\"{other}\"")),
            "only warden-init violates `restricted`, not {other}: {refusal}"
        );
    }
    assert_eq!(
        init_injector.reviews("injected"),
        1,
        "injected, then refused"
    );
    eprintln!("restricted namespace: {:?}", started.elapsed());
}

#[test]
fn with_the_injector_stopped_pod_creation_fails_only_where_the_webhook_applies() {
    let Some(api) = api() else { return };
    let started = Instant::now();
    let scope = "inject-stopped";
    let mesh = Mesh::new();
    let mut injector = Injector::start(&mesh);
    let _webhook = register(api, &mesh, &injector, scope, |_| {});
    let enabled = api.namespace("webhook-stopped", &labels(scope, Some("enabled"), &[]));
    let disabled = api.namespace("webhook-stopped-off", &labels(scope, Some("disabled"), &[]));
    let unlabelled = api.namespace("webhook-stopped-none", &labels(scope, None, &[]));
    wait_called(api, &injector, &enabled);
    let (stored, _) = create(api, &enabled, &pod("before", json!({})));
    assert_injected(&stored, &[], &["app"]);

    injector.stop();
    assert!(
        TcpStream::connect(("127.0.0.1", injector.port)).is_err(),
        "the injector is gone"
    );

    // failurePolicy Fail: no pod is created unmeshed where the webhook applies.
    let out = kubectl(
        api,
        &["create", "-n", &enabled, "-f", "-"],
        Some(&pod("while-down", json!({})).to_string()),
    );
    let error = stderr(&out);
    assert!(!out.status.success(), "created without the injector");
    assert!(
        error.contains("failed calling webhook \"inject.warden.dev\"")
            && error.contains(&injector.url()),
        "{error}"
    );
    let out = kubectl(
        api,
        &[
            "get",
            "pod",
            "-n",
            &enabled,
            "while-down",
            "--ignore-not-found",
        ],
        None,
    );
    assert!(out.stdout.is_empty(), "not stored");

    // Everywhere else pods are created as usual: namespaces not labelled enabled, and pods
    // the objectSelector excludes.
    for ns in [&disabled, &unlabelled] {
        let (stored, _) = create(api, ns, &pod("while-down", json!({})));
        assert_not_injected(&stored);
    }
    let (stored, _) = create(
        api,
        &enabled,
        &pod(
            "opted-out",
            json!({"metadata": {"labels": {INJECT: "disabled"}}}),
        ),
    );
    assert_not_injected(&stored);
    eprintln!("injector stopped: {:?}", started.elapsed());
}

#[test]
fn a_pod_through_the_injector_twice_is_injected_once() {
    let Some(api) = api() else { return };
    let started = Instant::now();
    let scope = "inject-twice";
    let mesh = Mesh::new();
    let injector = Injector::start(&mesh);
    // The pod goes through the injector three times in one creation:
    // 1. `inject.warden.dev` injects;
    // 2. a second entry of the install's webhook, `inject-again.warden.dev`, gets the pod as
    //    the first patch left it (defaulted by the API server);
    // 3. the API server then reinvokes its built-in mutating plugins, and the ServiceAccount
    //    plugin mounts the API token into Warden's containers too; with reinvocationPolicy
    //    IfNeeded (the install says Never) the first webhook is called again with that pod,
    //    exactly as every stored injected pod looks.
    let _webhook = register(api, &mesh, &injector, scope, |config| {
        let hooks = config["webhooks"].as_array_mut().unwrap();
        let mut again = hooks[0].clone();
        again["name"] = json!("inject-again.warden.dev");
        hooks[0]["reinvocationPolicy"] = json!("IfNeeded");
        hooks.push(again);
    });
    let ns = api.namespace("webhook-twice", &labels(scope, Some("enabled"), &[]));
    wait_called(api, &injector, &ns);

    let probed = pod(
        "twice",
        json!({"spec": {"containers": [{
            "name": "app",
            "image": "registry.example/app:1",
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}},
        }]}}),
    );
    let (stored, warnings) = create(api, &ns, &probed);
    assert_injected(&stored, &[], &["app"]);
    assert_eq!(injector.reviews("injected"), 1);
    assert_eq!(
        injector.reviews("skipped"),
        2,
        "the second webhook and the reinvocation saw an injected pod"
    );
    for c in ["warden-init", "warden-proxy"] {
        let mounts = &container(&stored["spec"]["initContainers"], c)["volumeMounts"];
        assert!(
            mounts
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount"),
            "the ServiceAccount plugin mounted the API token into {c}: {mounts}"
        );
    }
    assert!(
        warnings.contains("Warning: warden: not injected: the pod is already injected"),
        "{warnings}"
    );

    // A copy of the stored pod created again under another name (what `kubectl get -o
    // yaml`, a rename and `kubectl create` do): it already has Warden's containers and the
    // token volume the ServiceAccount admission plugin added; it is not injected again.
    let mut copy = stored.clone();
    let meta = copy["metadata"].as_object_mut().unwrap();
    for field in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "managedFields",
        "generation",
    ] {
        meta.remove(field);
    }
    meta.insert("name".into(), json!("twice-copy"));
    copy.as_object_mut().unwrap().remove("status");
    let out = kubectl(
        api,
        &["create", "-n", &ns, "-o", "name", "-f", "-"],
        Some(&copy.to_string()),
    );
    assert!(
        out.status.success(),
        "a copy of an injected pod is admitted: {}",
        stderr(&out)
    );
    let again = get_pod(api, &ns, "twice-copy");
    assert_injected(&again, &[], &["app"]);
    assert_eq!(
        again["spec"], stored["spec"],
        "the copy is stored as it was"
    );
    assert_eq!(injector.reviews("injected"), 1, "never injected twice");
    assert_eq!(
        injector.reviews("skipped"),
        4,
        "the copy went through both webhooks"
    );
    eprintln!("twice: {:?}", started.elapsed());
}

#[test]
fn a_mesh_policy_allows_a_weakening_annotation_only_in_the_namespaces_it_selects() {
    let Some(api) = api() else { return };
    let started = Instant::now();
    let scope = "mesh-grants";
    let mesh = Mesh::new();
    // Both namespaces and the MeshPolicy exist before the injector starts: it is ready only
    // once it has listed them, so what follows does not race its watches.
    let lab = api.namespace(
        "webhook-lab",
        &labels(scope, Some("enabled"), &[("env", "lab")]),
    );
    let prod = api.namespace(
        "webhook-prod",
        &labels(scope, Some("enabled"), &[("env", "prod")]),
    );
    api.install_crds();
    let policy = format!(
        "apiVersion: warden.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {{name: webhook-lab-grants}}\n\
         spec:\n  namespaceSelector: {{matchLabels: {{{SCOPE_LABEL}: {scope}, env: lab}}}}\n  \
         allowedAnnotations: [{}]\n",
        annotations::INBOUND_MODE
    );
    api.kubectl_ok(&["apply", "-f", "-"], Some(&policy));
    let injector = Injector::start(&mesh);
    let _webhook = register(api, &mesh, &injector, scope, |_| {});
    wait_called(api, &injector, &lab);
    wait_called(api, &injector, &prod);

    let annotated = pod(
        "permissive",
        json!({"metadata": {"annotations": {
            annotations::INBOUND_MODE: "permissive",
            annotations::SKIP_INBOUND_PORTS: "22",
        }}}),
    );
    // In lab the MeshPolicy allows inbound-mode, and only that.
    let (stored, warnings) = create(api, &lab, &annotated);
    assert_injected(&stored, &[], &["app"]);
    let proxy = container(&stored["spec"]["initContainers"], contract::PROXY_CONTAINER);
    assert_eq!(
        env_value(proxy, contract::env::INBOUND_MODE),
        Some("permissive"),
        "{proxy}"
    );
    let init = container(&stored["spec"]["initContainers"], contract::INIT_CONTAINER);
    assert_eq!(
        init["args"],
        json!(["init"]),
        "skip-inbound-ports ignored: {init}"
    );
    assert!(
        warnings.contains(&format!(
            "annotation {} ignored: it weakens enforcement and neither a MeshPolicy for namespace {lab}",
            annotations::SKIP_INBOUND_PORTS
        )),
        "{warnings}"
    );
    assert!(!warnings.contains(annotations::INBOUND_MODE), "{warnings}");
    // In prod nothing allows it.
    let (stored, warnings) = create(api, &prod, &annotated);
    assert_injected(&stored, &[], &["app"]);
    let proxy = container(&stored["spec"]["initContainers"], contract::PROXY_CONTAINER);
    assert_eq!(
        env_value(proxy, contract::env::INBOUND_MODE),
        None,
        "{proxy}"
    );
    assert!(
        warnings.contains(&format!(
            "annotation {} ignored: it weakens enforcement and neither a MeshPolicy for namespace {prod}",
            annotations::INBOUND_MODE
        )),
        "{warnings}"
    );
    api.kubectl_ok(&["delete", "meshpolicy", "webhook-lab-grants"], None);
    eprintln!("mesh grants test took {:?}", started.elapsed());
}

#[test]
fn a_debug_container_running_as_the_proxy_uid_is_refused_by_the_real_api_server() {
    let Some(api) = api() else { return };
    let scope = "debug-uid";
    let mesh = Mesh::new();
    let injector = Injector::start(&mesh);
    let _webhook = register(api, &mesh, &injector, scope, |_| {});
    let ns = api.namespace("webhook-debug", &labels(scope, Some("enabled"), &[]));
    wait_called(api, &injector, &ns);
    let (stored, _) = create(api, &ns, &pod("debugged", json!({})));
    assert_injected(&stored, &[], &["app"]);

    // What `kubectl debug` sends: the pod's ephemeralcontainers subresource, updated.
    let debug = |name: &str, uid: u32| {
        let patch = json!({"spec": {"ephemeralContainers": [{
            "name": name,
            "image": "registry.example/debug:1",
            "securityContext": {"runAsUser": uid},
        }]}});
        kubectl(
            api,
            &[
                "patch",
                "pod",
                "debugged",
                "-n",
                &ns,
                "--subresource=ephemeralcontainers",
                "--type=strategic",
                "-p",
                &patch.to_string(),
            ],
            None,
        )
    };
    let refused = debug("sneaky", contract::PROXY_UID);
    assert!(!refused.status.success(), "refused");
    assert!(
        stderr(&refused).contains("ephemeral container sneaky runs as UID 2626"),
        "{}",
        stderr(&refused)
    );
    let allowed = debug("debugger", 1000);
    assert!(allowed.status.success(), "{}", stderr(&allowed));
    let stored = get_pod(api, &ns, "debugged");
    assert_eq!(names(&stored["spec"]["ephemeralContainers"]), ["debugger"]);
    assert_eq!(injector.reviews("refused"), 1);
}
