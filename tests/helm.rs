//! The Helm chart (deploy/helm/warden): `helm lint` passes; `helm template` with the same CA
//! and settings renders exactly the objects `warden install` prints (so the two cannot
//! drift); its values change what they say (the injector's certificate from cert-manager or
//! given as values included); and the real API server accepts what it renders.

#[path = "support/apiserver.rs"]
mod apiserver;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/helm/warden");
/// The test API server's release (helm built from source defaults to an old one).
const KUBE_VERSION: &str = "1.34.4";

/// The helm binary `scripts/testenv.sh` builds (or one on PATH). Fails under CI=true when
/// there is none; elsewhere says so and skips.
fn helm() -> Option<PathBuf> {
    let built = apiserver::bin_dir().join("helm");
    if built.is_file() {
        return Some(built);
    }
    if Command::new("helm").arg("version").output().is_ok() {
        return Some(PathBuf::from("helm"));
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "helm is required under CI=true: scripts/testenv.sh builds it into target/testenv/bin"
        );
    }
    eprintln!("SKIPPED: no helm (scripts/testenv.sh builds it)");
    None
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The objects of a multi-document YAML stream, by `(kind, namespace, name)`.
fn objects(yaml: &str) -> BTreeMap<(String, String, String), Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).unwrap();
    docs.into_iter()
        .filter(|d| !d.is_null())
        .map(|d| {
            let key = (
                d["kind"].as_str().unwrap().to_string(),
                d["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                d["metadata"]["name"].as_str().unwrap().to_string(),
            );
            (key, d)
        })
        .collect()
}

/// `helm template` of the chart into warden-system with `args`.
fn template(helm: &Path, dir: &Path, args: &[&str]) -> Output {
    run(Command::new(helm)
        .args([
            "template",
            "warden",
            CHART,
            "--namespace",
            "warden-system",
            "--include-crds",
            "--kube-version",
            KUBE_VERSION,
        ])
        .args(args)
        .current_dir(dir))
}

#[test]
fn the_chart_renders_what_install_does_lints_and_the_api_server_accepts_it() {
    let Some(helm) = helm() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let install = ok(
        run(Command::new(env!("CARGO_BIN_EXE_warden"))
            .args([
                "install",
                "--ca-dir",
                "ca",
                "--trust-domain",
                "prod.example",
            ])
            .args([
                "--image",
                "reg.example/warden:9.9",
                "--proxy-image",
                "reg.example/warden-proxy:9.9",
            ])
            .current_dir(dir)),
        "warden install",
    );
    let installed = objects(&install);
    let same = [
        "--set",
        "namespace.create=true",
        "--set",
        "trustDomain=prod.example",
        "--set",
        "image.repository=reg.example/warden",
        "--set",
        "image.tag=9.9",
        "--set",
        "proxyImage.repository=reg.example/warden-proxy",
        "--set",
        "proxyImage.tag=9.9",
        "--set-file",
        "ca.bundle=ca/bundle.crt",
        "--set-file",
        "ca.issuerCert=ca/issuer.crt",
        "--set-file",
        "ca.issuerKey=ca/issuer.key",
    ];
    let rendered = objects(&ok(template(&helm, dir, &same), "helm template"));
    assert_eq!(
        rendered.keys().collect::<Vec<_>>(),
        installed.keys().collect::<Vec<_>>(),
        "the same objects"
    );
    for (key, object) in &installed {
        assert_eq!(
            &rendered[key], object,
            "{key:?} differs between helm and warden install"
        );
    }
    ok(
        run(Command::new(&helm)
            .args([
                "lint",
                CHART,
                "--namespace",
                "warden-system",
                "--kube-version",
                KUBE_VERSION,
            ])
            .args(&same[2..])
            .current_dir(dir)),
        "helm lint",
    );

    // Values change what they say.
    let mut custom: Vec<&str> = same.to_vec();
    custom.extend([
        "--set",
        "injector.replicas=3",
        "--set",
        "controller.resources.limits.memory=512Mi",
        "--set",
        "injector.sidecarMode=regular",
        "--set",
        "injector.interception=cni",
        "--set",
        "injector.allowPodAnnotations={warden.dev/inbound-mode}",
        "--set",
        "meshPolicy.spec.default=audit",
    ]);
    let yaml = ok(template(&helm, dir, &custom), "helm template (custom)");
    let custom_objects = objects(&yaml);
    let injector = &custom_objects[&(
        "Deployment".into(),
        "warden-system".into(),
        "warden-injector".into(),
    )];
    assert_eq!(injector["spec"]["replicas"], 3);
    let args: Vec<&str> = injector["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for pair in [
        ["--sidecar-mode", "regular"],
        ["--interception", "cni"],
        ["--allow-pod-annotation", "warden.dev/inbound-mode"],
    ] {
        assert!(args.windows(2).any(|w| w == pair), "{pair:?} in {args:?}");
    }
    assert_eq!(
        custom_objects[&(
            "Deployment".into(),
            "warden-system".into(),
            "warden-controller".into()
        )]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"],
        "512Mi"
    );
    assert_eq!(
        custom_objects[&("MeshPolicy".into(), "".into(), "mesh-defaults".into())]["spec"]
            ["default"],
        "audit"
    );

    // cert-manager issues (and renews) the injector's certificate; its CA injector fills in
    // the webhook's caBundle.
    let mut cert_manager: Vec<&str> = same.to_vec();
    cert_manager.extend([
        "--set",
        "injector.tls.certManager.enabled=true",
        "--set",
        "injector.tls.certManager.issuerRef.name=mesh-ca",
        "--set",
        "injector.tls.certManager.issuerRef.kind=ClusterIssuer",
    ]);
    let cm = objects(&ok(
        template(&helm, dir, &cert_manager),
        "helm template (cert-manager)",
    ));
    let certificate = &cm[&(
        "Certificate".into(),
        "warden-system".into(),
        "warden-injector-tls".into(),
    )];
    assert_eq!(
        certificate["spec"]["dnsNames"][0],
        "warden-injector.warden-system.svc"
    );
    assert_eq!(certificate["spec"]["issuerRef"]["kind"], "ClusterIssuer");
    assert!(!cm.contains_key(&(
        "Secret".into(),
        "warden-system".into(),
        "warden-injector-tls".into()
    )));
    let webhook = &cm[&(
        "MutatingWebhookConfiguration".into(),
        "".into(),
        "warden-injector".into(),
    )];
    assert_eq!(
        webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "warden-system/warden-injector-tls"
    );
    assert!(webhook["webhooks"][0]["clientConfig"]
        .get("caBundle")
        .is_none());

    // cert-manager can issue (and renew) the mesh issuer itself, from one of its CA issuers:
    // the identity service reads cert-manager's key names.
    let mut issuer_cm: Vec<&str> = same[..same.len() - 4].to_vec();
    issuer_cm.extend([
        "--set",
        "ca.certManager.enabled=true",
        "--set",
        "ca.certManager.issuerRef.name=mesh-root",
        "--set",
        "ca.certManager.issuerRef.kind=ClusterIssuer",
    ]);
    let icm = objects(&ok(
        template(&helm, dir, &issuer_cm),
        "helm template (cert-manager issuer)",
    ));
    let issuer = &icm[&(
        "Certificate".into(),
        "warden-system".into(),
        "warden-identity-ca".into(),
    )];
    assert_eq!(issuer["spec"]["isCA"], true);
    assert_eq!(issuer["spec"]["uris"][0], "spiffe://prod.example");
    assert!(!icm.contains_key(&(
        "Secret".into(),
        "warden-system".into(),
        "warden-identity-ca".into()
    )));
    let items = icm[&(
        "Deployment".into(),
        "warden-system".into(),
        "warden-identity".into(),
    )]["spec"]["template"]["spec"]["volumes"][0]["secret"]["items"]
        .to_string();
    assert!(
        items.contains("\"key\":\"tls.crt\",\"path\":\"issuer.crt\""),
        "{items}"
    );

    // Or a fixed certificate given as values (renewed by whoever made it).
    ok(
        run(Command::new(env!("CARGO_BIN_EXE_warden"))
            .args([
                "ca",
                "issue",
                "--dir",
                "ca",
                "--id",
                "spiffe://prod.example/ns/warden-system/sa/warden-injector",
            ])
            .args([
                "--dns-name",
                "warden-injector.warden-system.svc",
                "--ttl",
                "365d",
                "--out",
                "injector",
            ])
            .current_dir(dir)),
        "warden ca issue",
    );
    let mut fixed: Vec<&str> = same.to_vec();
    fixed.extend([
        "--set-file",
        "injector.tls.cert=injector.crt",
        "--set-file",
        "injector.tls.key=injector.key",
    ]);
    let fixed = objects(&ok(
        template(&helm, dir, &fixed),
        "helm template (fixed certificate)",
    ));
    let secret = &fixed[&(
        "Secret".into(),
        "warden-system".into(),
        "warden-injector-tls".into(),
    )];
    assert_eq!(secret["type"], "kubernetes.io/tls");
    let args = fixed[&(
        "Deployment".into(),
        "warden-system".into(),
        "warden-injector".into(),
    )]["spec"]["template"]["spec"]["containers"][0]["args"]
        .to_string();
    assert!(
        args.contains("--tls-cert") && !args.contains("--identity-token-file"),
        "{args}"
    );

    // Mistakes get one clear message.
    let out = run(Command::new(&helm)
        .args([
            "template",
            "warden",
            CHART,
            "--namespace",
            "default",
            "--kube-version",
            KUBE_VERSION,
        ])
        .args(same)
        .current_dir(dir));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("install into the namespace warden-system"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = template(&helm, dir, &[]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ca.bundle is required"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The real API server takes it: the CRDs first (as Helm does), then the rest.
    if !apiserver::available() {
        return;
    }
    let api = apiserver::get();
    let (crds, rest): (Vec<_>, Vec<_>) = yaml
        .split("\n---")
        .map(|d| d.trim_start_matches("---").to_string())
        .partition(|d| d.contains("kind: CustomResourceDefinition"));
    api.kubectl_ok(&["apply", "-f", "-"], Some(&crds.join("\n---\n")));
    api.wait_crds_established();
    let applied = api.kubectl_ok(&["apply", "-f", "-"], Some(&rest.join("\n---\n")));
    assert!(
        applied.contains("meshpolicy.warden.dev/mesh-defaults created"),
        "{applied}"
    );
    assert!(
        applied.contains("deployment.apps/warden-injector created"),
        "{applied}"
    );
}
