//! `warden check` against a real API server: before installing (as an admin, and as a user
//! without the permissions), after `warden install` with the statuses a kubelet and the
//! controller would write (healthy), and broken in each way it checks, one at a time.

#[path = "support/apiserver.rs"]
mod apiserver;

use std::path::Path;
use std::process::Command;

/// `warden check ARGS` against `api`: (exit code, stdout).
fn check(api: &apiserver::ApiServer, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .arg("check")
        .arg("--kubeconfig")
        .arg(&api.kubeconfig)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.code().is_some(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap(), stdout)
}

/// `warden ARGS` in `dir`: stdout, failing on a non-zero exit.
fn warden(dir: &Path, args: &[&str]) -> String {
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
    String::from_utf8(out.stdout).unwrap()
}

/// Writes what a kubelet (the Deployments' available replicas) and the controller (its
/// Lease, renewed `age` seconds ago) would.
fn running(api: &apiserver::ApiServer, available: &[(&str, i32)], lease_age: i64) {
    for (name, n) in available {
        api.kubectl_ok(
            &[
                "-n",
                "warden-system",
                "patch",
                "deployment",
                name,
                "--subresource=status",
                "--type=merge",
                "-p",
                &format!(
                    "{{\"status\":{{\"replicas\":2,\"readyReplicas\":{n},\"availableReplicas\":{n},\"updatedReplicas\":2}}}}"
                ),
            ],
            None,
        );
    }
    let renewed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - lease_age;
    let renewed = time::OffsetDateTime::from_unix_timestamp(renewed)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let renewed = renewed.replace('Z', ".000000Z");
    api.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {{name: warden-controller, namespace: warden-system}}\nspec: {{holderIdentity: warden-controller-7d9f-abcde, leaseDurationSeconds: 15, renewTime: \"{renewed}\"}}\n"
        )),
    );
}

const ALL_UP: [(&str, i32); 3] = [
    ("warden-identity", 2),
    ("warden-injector", 2),
    ("warden-controller", 2),
];

/// The lines of `out` that do not pass.
fn problems(out: &str) -> Vec<&str> {
    out.lines()
        .filter(|l| l.starts_with("  WARN") || l.starts_with("  FAIL"))
        .collect()
}

#[test]
fn check_before_and_after_install_healthy_and_broken_each_way() {
    if !apiserver::available() {
        return;
    }
    let api = apiserver::get();
    let tmp = tempfile::tempdir().unwrap();

    // Before installing: an admin may; a user without rights may not, and is told what.
    let (code, out) = check(api, &["--pre"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ok   permissions to install: all 14 permissions granted"),
        "{out}"
    );
    assert!(out.contains("ok   no installation yet"), "{out}");
    let (code, out) = check(api, &["--pre", "--as", "jane"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL permissions to install: missing: create apiextensions.k8s.io/customresourcedefinitions, create admissionregistration.k8s.io/mutatingwebhookconfigurations"),
        "{out}"
    );
    let (code, out) = check(api, &[]);
    assert_eq!(code, 1);
    assert!(
        out.contains("FAIL installed: namespace warden-system not found"),
        "{out}"
    );

    // Installed, running: healthy.
    let manifest = warden(tmp.path(), &["install", "--ca-dir", "ca"]);
    api.kubectl_ok(&["apply", "-f", "-"], Some(&manifest));
    api.wait_crds_established();
    running(api, &ALL_UP, 2);
    let (code, out) = check(api, &[]);
    assert_eq!(problems(&out), Vec::<&str>::new(), "{out}");
    assert_eq!(code, 0);
    assert!(out.contains("healthy: "), "{out}");
    let (_, json) = check(api, &["--output", "json"]);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["status"], "pass");
    assert!(report["checks"].as_array().unwrap().len() >= 14);
    let restore = || {
        api.kubectl_ok(&["apply", "-f", "-"], Some(&manifest));
        api.wait_crds_established();
        running(api, &ALL_UP, 2);
        let (code, out) = check(api, &[]);
        assert_eq!((code, problems(&out)), (0, vec![]), "{out}");
    };

    // Broken one way at a time (exit 1): what breaks it, and the line that must say so.
    let other = tempfile::tempdir().unwrap();
    warden(other.path(), &["ca", "init", "--dir", "ca"]);
    let other_root = std::fs::read_to_string(other.path().join("ca/root.crt")).unwrap();
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(&other_root)
    };
    type Breaking<'a> = Box<dyn Fn() + 'a>;
    let breakages: Vec<(Breaking, &str)> = vec![
        (
            Box::new(|| {
                api.kubectl_ok(&["patch", "mutatingwebhookconfiguration", "warden-injector", "--type=json", "-p", &format!("[{{\"op\":\"replace\",\"path\":\"/webhooks/0/clientConfig/caBundle\",\"value\":\"{b64}\"}}]")], None);
            }),
            "FAIL caBundle verifies the injector: lacks 1 trust anchor(s) of the CA",
        ),
        (
            Box::new(|| {
                let cm = format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: warden-trust-anchors, namespace: warden-system}}\ndata:\n  bundle.crt: {}\n", serde_json::to_string(&other_root).unwrap());
                api.kubectl_ok(&["apply", "-f", "-"], Some(&cm));
            }),
            "FAIL proxies start with the CA's bundle: ConfigMap warden-trust-anchors differs",
        ),
        (
            Box::new(|| running(api, &[("warden-injector", 0)], 2)),
            "FAIL warden-injector: 0 of 2 replicas available",
        ),
        (
            Box::new(|| {
                api.kubectl_ok(&["delete", "clusterrolebinding", "warden-injector"], None);
            }),
            "FAIL the injector may read MeshPolicies and Namespaces: missing: list namespaces, watch namespaces, list warden.dev/meshpolicies, watch warden.dev/meshpolicies",
        ),
        (
            Box::new(|| running(api, &[], 600)),
            "FAIL a controller writes policy status: the Lease held by warden-controller-7d9f-abcde was last renewed 60",
        ),
        (
            Box::new(|| {
                api.namespace("pci", &[("warden.dev/inject", "enabled"), ("pod-security.kubernetes.io/enforce", "restricted")]);
            }),
            "FAIL meshed namespaces admit injected pods: pci-",
        ),
        (
            Box::new(|| {
                api.kubectl_ok(&["delete", "crd", "meshpolicies.warden.dev", "--wait=true"], None);
            }),
            "FAIL meshpolicies.warden.dev: not found",
        ),
    ];
    for (breaking, want) in &breakages {
        breaking();
        let (code, out) = check(api, &[]);
        assert!(out.contains(want), "want {want:?} in\n{out}");
        assert!(out.contains("hint: "), "{out}");
        assert_eq!(code, 1, "{out}");
        if want.contains("meshed namespaces") {
            // No namespace controller runs here to finish a deletion: unmesh it instead.
            api.kubectl_ok(
                &[
                    "label",
                    "ns",
                    "-l",
                    "pod-security.kubernetes.io/enforce=restricted",
                    "warden.dev/inject-",
                ],
                None,
            );
        }
        restore();
    }

    // Warnings only (exit 0): a pod running an older proxy, and an issuer expiring in 20 days
    // (the injector's own certificate is its SVID: short-lived, renewed by itself).
    let ns = api.namespace("old", &[]);
    api.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: web-1, namespace: {ns}, annotations: {{warden.dev/injected-version: 0.0.9}}}}\nspec: {{containers: [{{name: web, image: registry.example/web:1}}]}}\n"
        )),
    );
    let (code, out) = check(api, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("WARN proxies run this version: 1 of 1 meshed pod(s) run 0.0.9 (this CLI is {}): {ns}/web-1", env!("CARGO_PKG_VERSION"))), "{out}");
    api.kubectl_ok(
        &[
            "delete",
            "pod",
            "-n",
            &ns,
            "web-1",
            "--wait=false",
            "--grace-period=0",
            "--force",
        ],
        None,
    );

    warden(
        tmp.path(),
        &["ca", "init", "--dir", "short", "--issuer-ttl", "20d"],
    );
    let short = warden(tmp.path(), &["install", "--ca-dir", "short"]);
    api.kubectl_ok(&["apply", "-f", "-"], Some(&short));
    let (code, out) = check(api, &["--output", "json"]);
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["status"], "warn");
    let warned: Vec<String> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "warn")
        .map(|c| {
            format!(
                "{}: {}",
                c["name"].as_str().unwrap(),
                c["message"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        warned.contains(&"issuer: expires in 19 days".to_string()),
        "{warned:?}"
    );
}
