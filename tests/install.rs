//! `warden install` and `warden injector` together, as a cluster would use them: the printed
//! manifests pass a strict Kubernetes schema check (1.30 and 1.34), the kustomize base renders
//! and passes it too, and the injector serving the installed certificate answers an
//! AdmissionReview over HTTPS to a client that verifies it as the API server does (caBundle
//! and the Service's DNS name).

#[path = "support/apiserver.rs"]
mod apiserver;
#[path = "support/mesh.rs"]
mod mesh;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use serde_json::{json, Value};

/// `warden ARGS` in `dir` (where `warden install` keeps its CA).
fn warden_in(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

/// Fails under CI=true when `tool` is missing; elsewhere says so and skips.
fn tool_available(tool: &str, install: &str) -> bool {
    if Command::new(tool).arg("--help").output().is_ok() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{tool} is required under CI=true: {install} (scripts/test.sh does)");
    }
    eprintln!("SKIPPED: {tool} not installed ({install})");
    false
}

fn validate_strict(name: &str, yaml: &str) {
    if !tool_available("kubernetes-validate", "pip install kubernetes-validate") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, yaml).unwrap();
    for version in ["1.30.0", "1.34.0"] {
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "--kubernetes-version", version])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name} fails the {version} schemas:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The YAML documents of a multi-document stream.
fn documents(yaml: &str) -> Vec<Value> {
    yaml.split("\n---")
        .filter_map(|chunk| {
            let doc: Value = serde_saphyr::from_str(chunk.trim_start_matches("---")).unwrap();
            (!doc.is_null()).then_some(doc)
        })
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn b64(value: &Value) -> String {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.as_str().unwrap())
        .unwrap();
    String::from_utf8(bytes).unwrap()
}

#[test]
fn install_prints_complete_valid_manifests() {
    let tmp = tempfile::tempdir().unwrap();
    let warden = |args: &[&str]| warden_in(tmp.path(), args);
    let out = warden(&[
        "install",
        "--trust-domain",
        "prod.example",
        "--image",
        "reg.example/warden:9.9",
        "--proxy-image",
        "reg.example/warden-proxy:9.9",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    validate_strict("install.yaml", &yaml);
    let docs = documents(&yaml);

    // Every object of the kustomize base is there, plus the generated Secrets and ConfigMap.
    let kustomization =
        std::fs::read_to_string("deploy/kubernetes/base/kustomization.yaml").unwrap();
    let resources = serde_saphyr::from_str::<Value>(&kustomization).unwrap()["resources"].clone();
    let mut base_objects = 0;
    for file in resources.as_array().unwrap() {
        let text =
            std::fs::read_to_string(format!("deploy/kubernetes/base/{}", file.as_str().unwrap()))
                .unwrap();
        for object in documents(&text) {
            base_objects += 1;
            find(
                &docs,
                object["kind"].as_str().unwrap(),
                object["metadata"]["name"].as_str().unwrap(),
            );
        }
    }
    // The CA Secret and the trust anchors (the injector's certificate comes from the
    // identity service, not from a Secret).
    assert_eq!(docs.len(), base_objects + 2);
    // CRDs first (a policy in the same stream needs them), then the namespace.
    assert_eq!(docs[0]["kind"], "CustomResourceDefinition");
    assert_eq!(docs[1]["kind"], "CustomResourceDefinition");
    assert_eq!(docs[2]["kind"], "Namespace");
    for doc in &docs {
        assert_eq!(
            doc["metadata"]["labels"]["app.kubernetes.io/part-of"], "warden",
            "{doc}"
        );
    }
    for name in ["warden-identity", "warden-injector"] {
        let deployment = find(&docs, "Deployment", name);
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["image"], "reg.example/warden:9.9");
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let td = args.iter().position(|a| *a == "--trust-domain").unwrap();
        assert_eq!(args[td + 1], "prod.example", "{args:?}");
    }
    let injector = find(&docs, "Deployment", "warden-injector");
    let args = injector["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    // The control plane runs the full CLI; pods get the sidecar image.
    assert!(
        args.contains(r#""--image","reg.example/warden-proxy:9.9""#),
        "{args}"
    );

    // Every component gets the trust domain, the controller through its environment.
    let controller = &find(&docs, "Deployment", "warden-controller")["spec"]["template"]["spec"]
        ["containers"][0];
    let td = controller["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "WARDEN_TRUST_DOMAIN")
        .unwrap();
    assert_eq!(td["value"], "prod.example", "{controller}");

    // The three pieces of PKI agree: the caBundle is the trust anchors, the CA Secret's bundle
    // too, and the injector's certificate chains to it for the Service's DNS name.
    let webhook = find(&docs, "MutatingWebhookConfiguration", "warden-injector");
    let ca_bundle = b64(&webhook["webhooks"][0]["clientConfig"]["caBundle"]);
    let anchors = find(&docs, "ConfigMap", "warden-trust-anchors")["data"]["bundle.crt"]
        .as_str()
        .unwrap();
    assert_eq!(ca_bundle, anchors);
    let ca = find(&docs, "Secret", "warden-identity-ca");
    assert_eq!(b64(&ca["data"]["bundle.crt"]), anchors);
    assert!(b64(&ca["data"]["issuer.key"]).starts_with("-----BEGIN PRIVATE KEY-----"));
    assert_eq!(
        ca["data"].as_object().unwrap().len(),
        3,
        "no root key in the cluster"
    );
    // No key for the injector: its serving certificate is its SVID from the identity service.
    assert!(!docs
        .iter()
        .any(|d| d["metadata"]["name"] == "warden-injector-tls"));
    let injector_args = find(&docs, "Deployment", "warden-injector")["spec"]["template"]["spec"]
        ["containers"][0]["args"]
        .to_string();
    assert!(
        injector_args.contains("--identity-token-file"),
        "{injector_args}"
    );

    // The CA stays in ./warden-ca with its root key, which never reaches the cluster.
    let root_key = std::fs::read_to_string(tmp.path().join("warden-ca/root.key")).unwrap();
    assert!(!yaml.contains(root_key.lines().nth(1).unwrap()));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("keep its root.key offline"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Installing again keeps the CA (proxies keep trusting the control plane). Another
    // directory is another CA.
    let again = String::from_utf8(warden(&["install"]).stdout).unwrap();
    let again = documents(&again);
    assert_eq!(
        find(&again, "Secret", "warden-identity-ca")["data"],
        ca["data"]
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let other =
        documents(&String::from_utf8(warden_in(elsewhere.path(), &["install"]).stdout).unwrap());
    assert_ne!(
        find(&other, "Secret", "warden-identity-ca")["data"]["issuer.key"],
        ca["data"]["issuer.key"]
    );
    assert!(
        find(&again, "Deployment", "warden-identity")["spec"]["template"]["spec"]["containers"][0]
            ["image"]
            .as_str()
            .unwrap()
            .starts_with("ghcr.io/warden-mesh/warden:")
    );
    // Pods get the slim sidecar image, not the control plane's.
    let injector = &find(&again, "Deployment", "warden-injector")["spec"]["template"]["spec"]
        ["containers"][0]["args"];
    let args: Vec<&str> = injector
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let image = args[args.iter().position(|a| *a == "--image").unwrap() + 1];
    assert!(
        image.starts_with("ghcr.io/warden-mesh/warden-proxy:"),
        "{args:?}"
    );
}

#[test]
fn install_uses_a_given_ca_and_keeps_its_root_key() {
    let dir = tempfile::tempdir().unwrap();
    let warden = |args: &[&str]| warden_in(dir.path(), args);
    let ca_dir = dir.path().join("ca");
    let ca = ca_dir.to_str().unwrap();
    let out = warden(&["ca", "init", "--dir", ca, "--trust-domain", "corp.example"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = warden(&["install", "--ca-dir", ca]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    let docs = documents(&yaml);
    let bundle = std::fs::read_to_string(ca_dir.join("bundle.crt")).unwrap();
    assert_eq!(
        find(&docs, "ConfigMap", "warden-trust-anchors")["data"]["bundle.crt"],
        bundle.as_str()
    );
    let issuer_key = std::fs::read_to_string(ca_dir.join("issuer.key")).unwrap();
    assert_eq!(
        b64(&find(&docs, "Secret", "warden-identity-ca")["data"]["issuer.key"]),
        issuer_key
    );
    let root_key = std::fs::read_to_string(ca_dir.join("root.key")).unwrap();
    let root_material = root_key.lines().nth(1).unwrap();
    assert!(!yaml.contains(root_material));
    for secret in docs.iter().filter(|d| d["kind"] == "Secret") {
        for value in secret["data"].as_object().unwrap().values() {
            assert!(!b64(value).contains(root_material), "the root key leaked");
        }
    }
    assert!(
        yaml.contains("- corp.example"),
        "the CA's trust domain is used"
    );

    // A trust domain that contradicts the CA is refused, naming both.
    let out = warden(&["install", "--ca-dir", ca, "--trust-domain", "other.example"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("other.example") && err.contains("corp.example"),
        "{err}"
    );
}

#[test]
fn the_kustomize_base_renders_valid_manifests() {
    // kubectl is not a Debian package; the issue asks for this check where it is present.
    if Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: kubectl not installed; `warden install` output is still validated");
        return;
    }
    let out = Command::new("kubectl")
        .args(["kustomize", "deploy/kubernetes/base"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    validate_strict("kustomize.yaml", &yaml);
    let docs = documents(&yaml);
    let webhook = find(&docs, "MutatingWebhookConfiguration", "warden-injector");
    let hook = &webhook["webhooks"][0];
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(hook["clientConfig"]["service"]["path"], "/mutate");
    let selector = hook["namespaceSelector"].to_string();
    assert!(
        selector.contains("warden.dev/inject")
            && selector.contains("kube-system")
            && selector.contains("warden-system"),
        "{selector}"
    );
    let role = find(&docs, "ClusterRole", "warden-identity");
    assert_eq!(
        role["rules"],
        json!([{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}])
    );
}

/// Kills its process on drop, also when a test fails.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_installed_injector_answers_a_verifying_api_server_over_https() {
    let tmp = tempfile::tempdir().unwrap();
    let warden = |args: &[&str]| warden_in(tmp.path(), args);
    let out = warden(&["install", "--image", "reg.example/warden:9.9"]);
    let docs = documents(&String::from_utf8(out.stdout).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    // A serving certificate from the installed CA (what the identity service gives the
    // injector: its SVID with the webhook's name).
    let prefix = dir.path().join("injector");
    let issued = warden(&[
        "ca",
        "issue",
        "--dir",
        "warden-ca",
        "--id",
        "spiffe://cluster.local/ns/warden-system/sa/warden-injector",
        "--dns-name",
        "warden-injector.warden-system.svc",
        "--out",
        prefix.to_str().unwrap(),
    ]);
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    let cert = prefix.with_extension("crt").display().to_string();
    let key = prefix.with_extension("key").display().to_string();
    let anchors = find(&docs, "ConfigMap", "warden-trust-anchors")["data"]["bundle.crt"]
        .as_str()
        .unwrap()
        .to_string();
    let anchors_file = write("bundle.crt", anchors.clone());
    let webhook = find(&docs, "MutatingWebhookConfiguration", "warden-injector");
    let ca_bundle = b64(&webhook["webhooks"][0]["clientConfig"]["caBundle"]);

    let (_child, addr) = start_injector(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--trust-anchors",
        &anchors_file,
        "--image",
        "reg.example/warden:9.9",
        "--reload-interval",
        "100ms",
    ]);
    let connect = |name: &'static str| api_server_connect(addr, ca_bundle.clone(), name);
    // A name the certificate does not carry is refused, as the API server would.
    let wrong = connect("warden-injector.default.svc").await;
    assert!(
        wrong.is_err(),
        "the certificate must not be valid for another name"
    );

    let tls = connect("warden-injector.warden-system.svc").await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"generateName": "web-", "namespace": "shop"},
                "spec": {"containers": [{"name": "web", "image": "registry.example/web:1"}]}
            },
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    });
    let answer_of = async |sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>| {
        let req = http::Request::post("/mutate?timeout=10s")
            .header("host", "warden-injector.warden-system.svc:443")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(review.to_string())))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice::<Value>(&body).unwrap()
    };
    let answer = answer_of(&mut sender).await;
    assert_eq!(
        answer["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    let patch = b64(&answer["response"]["patch"]);
    assert!(patch.contains("reg.example/warden:9.9"), "{patch}");
    assert!(
        patch.contains("BEGIN CERTIFICATE"),
        "the trust anchors are injected: {patch}"
    );

    // The trust anchors follow their file (a ConfigMap): a broken edit keeps the last good
    // bundle; an overlapping bundle with a second root reaches the next pods injected.
    let second = tempfile::tempdir().unwrap();
    warden_in(second.path(), &["ca", "init", "--dir", "next"]);
    let next_root = std::fs::read_to_string(second.path().join("next/root.crt")).unwrap();
    let marker = next_root.lines().nth(2).unwrap().to_string();
    std::fs::write(&anchors_file, "not a certificate\n").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let patch = b64(&answer_of(&mut sender).await["response"]["patch"]);
    assert!(
        patch.contains("BEGIN CERTIFICATE") && !patch.contains("not a certificate"),
        "{patch}"
    );
    std::fs::write(&anchors_file, format!("{anchors}{next_root}")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let patch = b64(&answer_of(&mut sender).await["response"]["patch"]);
        if patch.contains(&marker) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new bundle never reached a patch"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Malformed JSON: 400 with the reason.
    let req = http::Request::post("/mutate")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{not json")))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 400);
}

/// Starts `warden injector` on loopback ports; returns it and its webhook address.
fn start_injector(args: &[&str]) -> (Killed, SocketAddr) {
    let mut child = Killed(
        Command::new(env!("CARGO_BIN_EXE_warden"))
            .args([
                "injector",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // "warden injector: serving https://127.0.0.1:PORT/mutate (admin http://...)", after
    // any log lines (outside a cluster it warns that it reads no MeshPolicies).
    let mut stderr = BufReader::new(child.0.stderr.take().unwrap());
    let mut banner = String::new();
    loop {
        banner.clear();
        if stderr.read_line(&mut banner).unwrap() == 0 || banner.starts_with("warden injector:") {
            break;
        }
    }
    let addr = banner
        .split("https://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no address in {banner:?}"))
        .parse()
        .unwrap();
    (child, addr)
}

/// Connects as the API server does: trusting only `ca_bundle`, calling the host `name`.
async fn api_server_connect(
    addr: SocketAddr,
    ca_bundle: String,
    name: &'static str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_bundle.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let server_name = rustls::pki_types::ServerName::try_from(name).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
}

#[tokio::test]
async fn an_injector_issuing_from_the_ca_serves_a_certificate_for_its_service_name() {
    let dir = tempfile::tempdir().unwrap();
    let warden = |args: &[&str]| warden_in(dir.path(), args);
    let ca_dir = dir.path().join("ca");
    let ca = ca_dir.to_str().unwrap();
    let out = warden(&["ca", "init", "--dir", ca, "--trust-domain", "corp.example"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_child, addr) = start_injector(&["--ca-dir", ca, "--image", "reg.example/warden:9.9"]);
    let bundle = std::fs::read_to_string(ca_dir.join("bundle.crt")).unwrap();
    assert!(
        api_server_connect(addr, bundle.clone(), "warden-injector.default.svc")
            .await
            .is_err()
    );
    let bundle_again = bundle.clone();
    let tls = api_server_connect(addr, bundle, "warden-injector.warden-system.svc")
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/live")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);

    // A body announced over the limit is refused before it is read: 413.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = api_server_connect(addr, bundle_again, "warden-injector.warden-system.svc")
        .await
        .unwrap();
    tls.write_all(b"POST /mutate HTTP/1.1\r\nhost: warden-injector.warden-system.svc\r\ncontent-type: application/json\r\ncontent-length: 4194304\r\n\r\n{")
        .await
        .unwrap();
    let mut head = vec![0u8; 64];
    let n = tls.read(&mut head).await.unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
}

#[tokio::test]
async fn an_injector_serving_with_its_svid_renews_it_and_the_api_server_keeps_trusting_it() {
    // 6-second certificates: the injector renews within about four.
    let identity = mesh::Identity::start_with(&["--svid-ttl", "6s"]);
    let token = identity.token_for("spiffe://cluster.local/ns/warden-system/sa/warden-injector");
    let bundle = identity.bundle();
    let (_child, addr) = start_injector(&[
        "--identity-token-file",
        token.to_str().unwrap(),
        "--identity-url",
        &identity.url,
        "--trust-anchors",
        bundle.to_str().unwrap(),
        "--image",
        "reg.example/warden:9.9",
    ]);
    // The webhook's caBundle is the trust bundle: every renewed certificate chains to it.
    let ca_bundle = std::fs::read_to_string(&bundle).unwrap();
    let leaf = || async {
        let tls = api_server_connect(addr, ca_bundle.clone(), "warden-injector.warden-system.svc")
            .await
            .expect("the API server accepts the injector's certificate");
        tls.get_ref().1.peer_certificates().unwrap()[0].clone()
    };
    let first = leaf().await;
    let summary = warden_identity::inspect::summarize(&first).unwrap();
    assert_eq!(summary.dns_names, ["warden-injector.warden-system.svc"]);
    assert_eq!(
        summary.uris,
        ["spiffe://cluster.local/ns/warden-system/sa/warden-injector"]
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        if leaf().await != first {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the serving certificate was never renewed"
        );
    }
}
