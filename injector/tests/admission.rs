//! The webhook with AdmissionReviews as the API server sends them. For each: the response's
//! shape, a golden patch, the patch applying cleanly (json-patch), and the patched pod
//! passing a strict schema check for Kubernetes 1.30 and 1.34 (`kubernetes-validate`).
//!
//! Regenerate the golden patches with `UPDATE_GOLDEN=1 cargo test -p warden-injector`.

use std::path::PathBuf;
use std::process::Command;

use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};
use warden_injector::cni::{self, CniSettings, PodInterception};
use warden_injector::config::{InjectorConfig, Interception, SecurityAnnotation};
use warden_injector::grants::{MeshGrant, NamespaceGrants};
use warden_injector::webhook::{review, ReviewError};

fn config() -> InjectorConfig {
    let mut config = InjectorConfig::new(
        "registry.example/warden:0.1.0",
        "-----BEGIN CERTIFICATE-----\nMIIB...test-anchor...\n-----END CERTIFICATE-----\n",
    );
    config.version = "0.1.0-test".into();
    config
}

/// The test configuration with `allowed` security-relevant annotations allowed.
fn allowing(allowed: &[SecurityAnnotation]) -> InjectorConfig {
    let mut config = config();
    config.allowed_annotations = allowed.iter().copied().collect();
    config
}

/// The pod a Deployment's ReplicaSet creates, after the API server's defaulting.
fn deployment_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "web-7d4b9c8f6-",
            "namespace": "shop",
            "labels": {"app": "web", "pod-template-hash": "7d4b9c8f6"},
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c8f6",
                "uid": "3c0e1b2a-5d6f-4a7b-8c9d-0e1f2a3b4c5d", "controller": true, "blockOwnerDeletion": true
            }]
        },
        "spec": {
            "containers": [{
                "name": "web",
                "image": "registry.example/web:1.4.2",
                "imagePullPolicy": "IfNotPresent",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}, {"name": "grpc", "containerPort": 9090, "protocol": "TCP"}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP", "httpHeaders": [{"name": "X-Probe", "value": "liveness"}]},
                                   "initialDelaySeconds": 5, "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3},
                "readinessProbe": {"tcpSocket": {"port": 8080}, "timeoutSeconds": 1, "periodSeconds": 5, "successThreshold": 1, "failureThreshold": 3},
                "startupProbe": {"grpc": {"port": 9090, "service": "web"}, "timeoutSeconds": 1, "periodSeconds": 2, "successThreshold": 1, "failureThreshold": 30},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "volumeMounts": [{"name": "kube-api-access-x7k2p", "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]
            }],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "web",
            "serviceAccount": "web",
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
            ],
            "priority": 0,
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority",
            "volumes": [{
                "name": "kube-api-access-x7k2p",
                "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
                ]}
            }]
        },
        "status": {}
    })
}

/// A pod with its own init containers, two containers (one with an exec probe), a pod
/// securityContext and annotations.
fn busy_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "worker-0",
            "namespace": "batch",
            "annotations": {"prometheus.io/scrape": "true", "warden.dev/skip-outbound-ports": "5432", "warden.dev/opaque-ports": "6379"}
        },
        "spec": {
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "fsGroup": 2000, "seccompProfile": {"type": "RuntimeDefault"}},
            "initContainers": [{"name": "migrate", "image": "registry.example/migrate:3", "command": ["migrate", "up"]}],
            "containers": [
                {"name": "worker", "image": "registry.example/worker:7",
                 "readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 5}},
                {"name": "metrics", "image": "registry.example/exporter:1", "ports": [{"containerPort": 9100}],
                 "livenessProbe": {"httpGet": {"path": "/", "port": 9100}}}
            ],
            "serviceAccountName": "worker"
        }
    })
}

fn admission_review(pod: Value, operation: &str, dry_run: bool) -> Value {
    let kind = pod["kind"].as_str().unwrap_or("Pod").to_string();
    let (group, version, resource) = if kind == "Pod" {
        ("", "v1", "pods")
    } else {
        ("apps", "v1", "deployments")
    };
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": resource},
            "requestKind": {"group": group, "version": version, "kind": kind},
            "requestResource": {"group": group, "version": version, "resource": resource},
            "namespace": pod["metadata"]["namespace"],
            "operation": operation,
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "8f2d4c1e-0b3a-4d5e-9f6a-7b8c9d0e1f2a",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]
            },
            "object": pod,
            "oldObject": null,
            "dryRun": dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

fn answer(review_doc: &Value) -> (Value, &'static str) {
    answer_with(review_doc, &config())
}

fn answer_with(review_doc: &Value, config: &InjectorConfig) -> (Value, &'static str) {
    let answer = review(&serde_json::to_vec(review_doc).unwrap(), config).unwrap();
    (answer.review, answer.outcome)
}

fn decoded_patch(response: &Value) -> Option<Value> {
    response["response"]["patch"].as_str().map(|b64| {
        assert_eq!(response["response"]["patchType"], "JSONPatch");
        serde_json::from_slice(
            &base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
        )
        .unwrap()
    })
}

fn apply(pod: &Value, patch: &Value) -> Value {
    let mut doc = pod.clone();
    let patch: json_patch::Patch = serde_json::from_value(patch.clone()).unwrap();
    json_patch::patch(&mut doc, &patch).expect("the patch applies cleanly");
    doc
}

fn golden(name: &str, patch: &Value) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.json"));
    let rendered = serde_json::to_string_pretty(patch).unwrap() + "\n";
    if std::env::var("UPDATE_GOLDEN").is_ok() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &rendered).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} missing: run with UPDATE_GOLDEN=1", path.display()));
    assert_eq!(
        rendered, want,
        "the patch for {name} changed; review it and run with UPDATE_GOLDEN=1"
    );
}

/// Fails under CI=true when the validator is missing; elsewhere says so and skips.
fn validator() -> bool {
    if Command::new("kubernetes-validate")
        .arg("--version")
        .output()
        .is_ok()
    {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("kubernetes-validate is required under CI=true: pip install kubernetes-validate (scripts/test.sh does)");
    }
    eprintln!("SKIPPED: kubernetes-validate not installed (pip install kubernetes-validate)");
    false
}

/// The strict schema check, for each Kubernetes version the injector supports.
fn assert_valid_for_kubernetes(name: &str, object: &Value) {
    if !validator() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{name}.json"));
    let mut object = object.clone();
    if object["metadata"]["name"].is_null() {
        object["metadata"]["name"] = json!("web-7d4b9c8f6-abcde"); // the API server generates it
    }
    std::fs::write(&file, serde_json::to_vec_pretty(&object).unwrap()).unwrap();
    for version in ["1.30.0", "1.34.0"] {
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "-k", version])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name} fails the strict schema of Kubernetes {version}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn container<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

#[test]
fn a_deployment_pod_gets_a_native_sidecar_and_its_probes_rewritten() {
    let pod = deployment_pod();
    let (response, outcome) = answer(&admission_review(pod.clone(), "CREATE", false));
    assert_eq!(outcome, "injected");
    assert_eq!(response["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(
        response["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
    assert_eq!(response["response"]["allowed"], true);
    let patch = decoded_patch(&response).expect("a patch");
    golden("deployment-pod", &patch);
    let patched = apply(&pod, &patch);
    assert_valid_for_kubernetes("deployment-pod", &patched);

    let init = &patched["spec"]["initContainers"];
    assert_eq!(init[0]["name"], "warden-init");
    assert_eq!(
        init[0]["securityContext"]["capabilities"],
        json!({"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]})
    );
    let proxy = &init[1];
    assert_eq!(proxy["name"], "warden-proxy");
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(
        proxy["startupProbe"]["httpGet"],
        json!({"path": "/ready", "port": 7191, "scheme": "HTTP"})
    );
    let sc = &proxy["securityContext"];
    assert_eq!(
        (sc["runAsUser"].clone(), sc["runAsNonRoot"].clone()),
        (json!(2626), json!(true))
    );
    assert_eq!(
        (
            sc["readOnlyRootFilesystem"].clone(),
            sc["allowPrivilegeEscalation"].clone()
        ),
        (json!(true), json!(false))
    );
    assert_eq!(sc["capabilities"], json!({"drop": ["ALL"]}));
    assert_eq!(sc["seccompProfile"], json!({"type": "RuntimeDefault"}));
    let env: Vec<&str> = proxy["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for name in [
        "WARDEN_POD_NAME",
        "WARDEN_POD_NAMESPACE",
        "WARDEN_POD_IP",
        "WARDEN_POD_SERVICE_ACCOUNT",
        "WARDEN_TRUST_ANCHORS",
        "WARDEN_IDENTITY_URL",
        "WARDEN_APP_PROBES",
    ] {
        assert!(env.contains(&name), "{name} missing: {env:?}");
    }
    let token = patched["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "warden-token")
        .unwrap();
    assert_eq!(
        token["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "warden-identity"
    );
    // No policy ConfigMap (a namespace editor could rewrite it): the proxy subscribes to
    // its pod's policies at the controller.
    assert!(
        !patched["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "warden-policy"),
        "{}",
        patched["spec"]["volumes"]
    );
    let proxy = container(&patched["spec"]["initContainers"], "warden-proxy");
    let env = proxy["env"].as_array().unwrap();
    let control_plane = env
        .iter()
        .find(|e| e["name"] == "WARDEN_CONTROL_PLANE")
        .unwrap();
    assert_eq!(
        control_plane["value"],
        "warden-controller.warden-system.svc:7160"
    );
    assert!(!env.iter().any(|e| e["name"] == "WARDEN_POLICY_DIR"));

    // Every probe of the app goes through the admin port; the originals travel to the proxy.
    let web = container(&patched["spec"]["containers"], "web");
    for (probe, kind) in [
        ("livenessProbe", "liveness"),
        ("readinessProbe", "readiness"),
        ("startupProbe", "startup"),
    ] {
        assert_eq!(web[probe]["httpGet"]["port"], 7191, "{probe}");
        assert_eq!(
            web[probe]["httpGet"]["path"],
            format!("/app-probe/web/{kind}")
        );
        assert_eq!(web[probe]["timeoutSeconds"], 1, "timing kept");
    }
    let probes_env = proxy["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "WARDEN_APP_PROBES")
        .unwrap();
    let probes: Value = serde_json::from_str(probes_env["value"].as_str().unwrap()).unwrap();
    assert_eq!(
        probes["web/liveness"],
        json!({"kind": "http", "scheme": "HTTP", "port": 8080, "path": "/healthz", "headers": [["X-Probe", "liveness"]]})
    );
    assert_eq!(
        probes["web/readiness"],
        json!({"kind": "tcp", "port": 8080})
    );
    assert_eq!(
        probes["web/startup"],
        json!({"kind": "grpc", "port": 9090, "service": "web"})
    );
    assert_eq!(
        patched["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"],
        "web"
    );
    assert_eq!(
        patched["metadata"]["annotations"]["warden.dev/injected-version"],
        "0.1.0-test"
    );

    // Injecting twice changes nothing.
    let (again, outcome) = answer(&admission_review(patched, "CREATE", false));
    assert_eq!(outcome, "skipped");
    assert!(again["response"].get("patch").is_none());
    assert_eq!(
        again["response"]["warnings"][0],
        "warden: not injected: the pod is already injected"
    );
}

#[test]
fn existing_init_containers_several_containers_and_annotations() {
    let pod = busy_pod();
    // The operator allows skipped outbound ports (busy_pod skips 5432).
    let config = allowing(&[SecurityAnnotation::SkipOutboundPorts]);
    let (response, outcome) = answer_with(&admission_review(pod.clone(), "CREATE", false), &config);
    assert_eq!(outcome, "injected");
    let patch = decoded_patch(&response).unwrap();
    golden("busy-pod", &patch);
    let patched = apply(&pod, &patch);
    assert_valid_for_kubernetes("busy-pod", &patched);
    let names: Vec<&str> = patched["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["warden-init", "warden-proxy", "migrate"],
        "before the pod's own init containers"
    );
    let init = &patched["spec"]["initContainers"][0];
    assert_eq!(
        init["args"],
        json!(["init", "--skip-outbound-ports", "5432"])
    );
    let worker = container(&patched["spec"]["containers"], "worker");
    assert_eq!(
        worker["readinessProbe"]["exec"]["command"][0], "cat",
        "exec probes are untouched"
    );
    let metrics = container(&patched["spec"]["containers"], "metrics");
    assert_eq!(
        metrics["livenessProbe"]["httpGet"]["path"],
        "/app-probe/metrics/liveness"
    );
    assert_eq!(
        patched["metadata"]["annotations"]["prometheus.io/scrape"], "true",
        "existing annotations kept"
    );
    let env = patched["spec"]["initContainers"][1]["env"]
        .as_array()
        .unwrap();
    assert!(env
        .iter()
        .any(|e| e["name"] == "WARDEN_OPAQUE_PORTS" && e["value"] == "6379"));
    assert_eq!(
        patched["spec"]["securityContext"]["runAsUser"], 1000,
        "the pod's securityContext is untouched"
    );
}

#[test]
fn regular_mode_puts_the_proxy_first_and_holds_the_app() {
    let mut pod = deployment_pod();
    pod["metadata"]["annotations"] =
        json!({"warden.dev/sidecar-mode": "regular", "warden.dev/proxy-memory-limit": "64Mi"});
    let (response, _) = answer(&admission_review(pod.clone(), "CREATE", false));
    let patch = decoded_patch(&response).unwrap();
    golden("regular-mode", &patch);
    let patched = apply(&pod, &patch);
    assert_valid_for_kubernetes("regular-mode", &patched);
    let proxy = &patched["spec"]["containers"][0];
    assert_eq!(proxy["name"], "warden-proxy");
    assert!(proxy.get("restartPolicy").is_none());
    assert_eq!(
        proxy["lifecycle"]["postStart"]["exec"]["command"],
        json!(["warden-proxy", "proxy", "--wait-ready"])
    );
    assert_eq!(proxy["resources"]["limits"]["memory"], "64Mi");
    assert_eq!(
        patched["spec"]["containers"][1]["livenessProbe"]["httpGet"]["path"],
        "/app-probe/web/liveness"
    );
    assert_eq!(
        patched["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"],
        "web"
    );
}

#[test]
fn skipped_pods_are_allowed_unchanged_with_a_warning() {
    let mut host_network = deployment_pod();
    host_network["spec"]["hostNetwork"] = json!(true);
    let mut opted_out_label = deployment_pod();
    opted_out_label["metadata"]["labels"]["warden.dev/inject"] = json!("disabled");
    let mut opted_out_annotation = deployment_pod();
    opted_out_annotation["metadata"]["annotations"] = json!({"warden.dev/inject": "disabled"});
    let cases = [
        (host_network, "hostNetwork"),
        (opted_out_label, "opted out"),
        (opted_out_annotation, "opted out"),
    ];
    for (pod, why) in cases {
        let (response, outcome) = answer(&admission_review(pod, "CREATE", false));
        assert_eq!(outcome, "skipped");
        assert_eq!(response["response"]["allowed"], true);
        assert!(
            response["response"].get("patch").is_none()
                && response["response"].get("patchType").is_none()
        );
        assert!(
            response["response"]["warnings"][0]
                .as_str()
                .unwrap()
                .contains(why),
            "{response}"
        );
    }
}

#[test]
fn dry_runs_other_operations_and_other_kinds_are_allowed_unchanged() {
    let (response, outcome) = answer(&admission_review(deployment_pod(), "CREATE", true));
    assert_eq!(
        (outcome, response["response"]["allowed"].clone()),
        ("dry_run", json!(true))
    );
    assert!(response["response"].get("patch").is_none());
    let (_, outcome) = answer(&admission_review(deployment_pod(), "UPDATE", false));
    assert_eq!(outcome, "ignored");
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"}, "spec": {}});
    let (response, outcome) = answer(&admission_review(deployment, "CREATE", false));
    assert_eq!(
        (outcome, response["response"]["allowed"].clone()),
        ("ignored", json!(true))
    );
    // A "Pod" whose object does not fit a Pod: allowed unchanged, and said why.
    let mut weird = deployment_pod();
    weird["spec"]["containers"] = json!("not a list");
    let (response, outcome) = answer(&admission_review(weird, "CREATE", false));
    assert_eq!(outcome, "invalid_pod");
    assert!(response["response"]["warnings"][0]
        .as_str()
        .unwrap()
        .contains("not a valid Pod"));
}

#[test]
fn bad_annotations_warn_and_fall_back_to_defaults() {
    let mut pod = deployment_pod();
    pod["metadata"]["annotations"] = json!({
        "warden.dev/sidecar-mode": "sideways",
        "warden.dev/skip-inbound-ports": "22,ssh",
        "warden.dev/proxy-cpu-limit": "lots",
        "warden.dev/skip-outbound-cidrs": "10.0.0.1/8"
    });
    // Allowed, so that the values themselves are checked.
    let config = allowing(&SecurityAnnotation::ALL);
    let (response, outcome) = answer_with(&admission_review(pod.clone(), "CREATE", false), &config);
    assert_eq!(outcome, "injected");
    let warnings: Vec<&str> = response["response"]["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert_eq!(warnings.len(), 4, "{warnings:?}");
    assert!(warnings
        .iter()
        .any(|w| w.contains("warden.dev/sidecar-mode") && w.contains("sideways")));
    let patched = apply(&pod, &decoded_patch(&response).unwrap());
    assert_eq!(
        patched["spec"]["initContainers"][1]["restartPolicy"], "Always",
        "default mode"
    );
    assert_eq!(
        patched["spec"]["initContainers"][0]["args"],
        json!(["init"])
    );
}

#[test]
fn a_probe_naming_a_host_is_left_to_the_kubelet() {
    let mut pod = deployment_pod();
    let probe = json!({"httpGet": {"host": "10.1.2.3", "path": "/healthz", "port": 8080}});
    pod["spec"]["containers"][0]["livenessProbe"] = probe.clone();
    let (response, outcome) = answer(&admission_review(pod.clone(), "CREATE", false));
    assert_eq!(outcome, "injected");
    assert!(
        warnings_of(&response)
            .iter()
            .any(|w| w.contains("liveness probe") && w.contains("names a host")),
        "{:?}",
        warnings_of(&response)
    );
    let patched = apply(&pod, &decoded_patch(&response).unwrap());
    let app = container(&patched["spec"]["containers"], "web");
    assert_eq!(app["livenessProbe"], probe, "unchanged");
    let probes = proxy_env(&patched, "WARDEN_APP_PROBES")
        .unwrap()
        .to_string();
    assert!(
        !probes.contains("liveness"),
        "the proxy does not run it: {probes}"
    );
    assert!(
        probes.contains("readiness"),
        "the others still are: {probes}"
    );
}

#[test]
fn malformed_reviews_are_refused_with_the_reason() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{\"apiVersion\": \"admission.k8s.io/v1\", \"kind\": \"AdmissionRev".to_vec(), "malformed AdmissionReview"),
        (serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"})).unwrap(), "expected apiVersion admission.k8s.io/v1"),
        (serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"})).unwrap(), "has no request"),
        (serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": 7}})).unwrap(), "malformed AdmissionReview"),
        (b"[]".to_vec(), "expected apiVersion"),
    ];
    for (body, want) in cases {
        let err: ReviewError = review(&body, &config()).unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(err.to_string().contains(want), "{err}");
    }
}

fn warnings_of(response: &Value) -> Vec<String> {
    response["response"]["warnings"]
        .as_array()
        .map(|w| w.iter().map(|w| w.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// What the API server fills in after the patch (the injector never sets these), as a
/// reinvocation or `kubectl get pod -o json` shows it.
fn with_api_server_defaults(pod: &mut Value) {
    for list in ["initContainers", "containers"] {
        let Some(containers) = pod
            .pointer_mut(&format!("/spec/{list}"))
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        for c in containers {
            let fields = c.as_object_mut().unwrap();
            fields
                .entry("imagePullPolicy")
                .or_insert(json!("IfNotPresent"));
            fields
                .entry("terminationMessagePath")
                .or_insert(json!("/dev/termination-log"));
            fields
                .entry("terminationMessagePolicy")
                .or_insert(json!("File"));
            // The ServiceAccount admission plugin, run again after the webhook, mounts the
            // pod's API token into every container, Warden's included.
            let mounts = fields.entry("volumeMounts").or_insert(json!([]));
            if let Some(mounts) = mounts.as_array_mut() {
                mounts.push(json!({
                    "name": "kube-api-access-x7k2p",
                    "readOnly": true,
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"
                }));
            }
            for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                if let Some(p) = fields.get_mut(probe).and_then(Value::as_object_mut) {
                    p.entry("timeoutSeconds").or_insert(json!(1));
                    p.entry("successThreshold").or_insert(json!(1));
                }
            }
            for e in fields
                .get_mut("env")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if let Some(f) = e
                    .pointer_mut("/valueFrom/fieldRef")
                    .and_then(Value::as_object_mut)
                {
                    f.entry("apiVersion").or_insert(json!("v1"));
                }
            }
        }
    }
    for v in pod["spec"]["volumes"].as_array_mut().unwrap() {
        for source in ["projected", "configMap"] {
            if let Some(s) = v.get_mut(source).and_then(Value::as_object_mut) {
                s.entry("defaultMode").or_insert(json!(420));
            }
        }
    }
}

/// `pod` injected under `config`, as the API server stores it.
fn stored(pod: Value, config: &InjectorConfig) -> Value {
    let (response, outcome) = answer_with(&admission_review(pod.clone(), "CREATE", false), config);
    assert_eq!(outcome, "injected", "{response}");
    let mut pod = apply(&pod, &decoded_patch(&response).unwrap());
    with_api_server_defaults(&mut pod);
    pod
}

fn init_list(pod: &mut Value) -> &mut Vec<Value> {
    pod["spec"]["initContainers"].as_array_mut().unwrap()
}

/// The injected proxy (native mode: the second init container).
fn proxy_of(pod: &mut Value) -> &mut Value {
    &mut init_list(pod)[1]
}

fn proxy_env(pod: &Value, name: &str) -> Option<Value> {
    pod["spec"]["initContainers"][1]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .map(|e| e["value"].clone())
}

/// A change made to a pod in a test case.
type Edit = fn(&mut Value);

fn with_annotations(mut pod: Value, annotations: Value) -> Value {
    pod["metadata"]["annotations"] = annotations;
    pod
}

#[test]
fn a_genuinely_injected_pod_reviewed_again_is_skipped() {
    let regular = with_annotations(
        deployment_pod(),
        json!({"warden.dev/sidecar-mode": "regular"}),
    );
    let canonicalized = with_annotations(
        deployment_pod(),
        json!({"warden.dev/proxy-cpu-request": "0.1"}),
    );
    let skip_outbound = allowing(&[SecurityAnnotation::SkipOutboundPorts]);
    let cases: Vec<(&str, Value, InjectorConfig, Edit)> = vec![
        ("native sidecar", deployment_pod(), config(), |_| {}),
        ("regular container", regular, config(), |_| {}),
        (
            "allowed annotations, init containers",
            busy_pod(),
            skip_outbound,
            |_| {},
        ),
        (
            "quantities canonicalized by the API server",
            canonicalized,
            config(),
            |pod| proxy_of(pod)["resources"]["requests"]["cpu"] = json!("100m"),
        ),
    ];
    for (name, pod, config, change) in cases {
        let mut pod = stored(pod, &config);
        change(&mut pod);
        let (response, outcome) = answer_with(&admission_review(pod, "CREATE", false), &config);
        assert_eq!(outcome, "skipped", "{name}: {response}");
        assert!(response["response"].get("patch").is_none(), "{name}");
        assert_eq!(
            warnings_of(&response),
            ["warden: not injected: the pod is already injected"],
            "{name}"
        );
    }
}

#[test]
fn a_forged_injected_version_annotation_is_overwritten_and_the_pod_injected() {
    let pod = with_annotations(
        deployment_pod(),
        json!({"warden.dev/injected-version": "9.9.9"}),
    );
    let (response, outcome) = answer(&admission_review(pod.clone(), "CREATE", false));
    assert_eq!(outcome, "injected", "{response}");
    let patched = apply(&pod, &decoded_patch(&response).unwrap());
    assert_eq!(
        patched["metadata"]["annotations"]["warden.dev/injected-version"],
        "0.1.0-test"
    );
    assert_eq!(patched["spec"]["initContainers"][0]["name"], "warden-init");
    assert_eq!(patched["spec"]["initContainers"][1]["name"], "warden-proxy");
}

#[test]
fn the_service_account_label_is_always_the_pods_real_one() {
    // A pod claiming another ServiceAccount's label gets its own (NetworkPolicies from
    // `warden policy netpol` select by it).
    let mut pod = deployment_pod();
    pod["metadata"]["labels"]["warden.dev/service-account"] = json!("payments");
    let (response, _) = answer(&admission_review(pod.clone(), "CREATE", false));
    let patched = apply(&pod, &decoded_patch(&response).unwrap());
    let real = pod["spec"]["serviceAccountName"].clone();
    assert!(real.is_string());
    assert_eq!(
        patched["metadata"]["labels"]["warden.dev/service-account"],
        real
    );
    assert_eq!(patched["metadata"]["labels"]["app"], "web");

    // A name too long for a label value: the forged label is removed, with a warning.
    let long = "a".repeat(64);
    pod["spec"]["serviceAccountName"] = json!(long);
    let (response, outcome) = answer(&admission_review(pod.clone(), "CREATE", false));
    assert_eq!(outcome, "injected");
    let patched = apply(&pod, &decoded_patch(&response).unwrap());
    assert!(patched["metadata"]["labels"]
        .get("warden.dev/service-account")
        .is_none());
    assert!(
        warnings_of(&response)
            .iter()
            .any(|w| w.contains("longer than a label value")),
        "{response}"
    );
}

/// A refused review: not allowed, no patch, a 403 whose message contains `want`.
fn assert_refused(name: &str, response: &Value, outcome: &str, want: &str) {
    assert_eq!(outcome, "refused", "{name}: {response}");
    let r = &response["response"];
    assert_eq!(r["allowed"], false, "{name}");
    assert!(
        r.get("patch").is_none() && r.get("patchType").is_none(),
        "{name}"
    );
    assert_eq!(r["status"]["code"], 403, "{name}");
    let message = r["status"]["message"].as_str().unwrap();
    assert!(message.starts_with("warden: "), "{name}: {message}");
    assert!(message.contains(want), "{name}: {message:?} lacks {want:?}");
}

#[test]
fn containers_under_wardens_names_that_are_not_the_injectors_are_refused() {
    let fake = json!({"name": "warden-proxy", "image": "busybox", "command": ["sleep", "inf"]});
    let mut fake_proxy = deployment_pod();
    fake_proxy["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(fake.clone());
    let fake_proxy_annotated = with_annotations(
        fake_proxy.clone(),
        json!({"warden.dev/injected-version": "0.1.0-test"}),
    );
    let mut fake_init = busy_pod();
    init_list(&mut fake_init).insert(
        0,
        json!({"name": "warden-init", "image": "busybox", "command": ["true"]}),
    );
    let mut own_volume = deployment_pod();
    own_volume["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "warden-token", "emptyDir": {}}));
    let proxy = "container name warden-proxy is reserved for Warden's sidecar";
    let init = "container name warden-init is reserved for Warden's sidecar";
    let mut cases: Vec<(&str, Value, &str)> = vec![
        ("an app container named warden-proxy", fake_proxy, proxy),
        (
            "the same with the injected-version annotation",
            fake_proxy_annotated,
            proxy,
        ),
        ("an init container named warden-init", fake_init, init),
        (
            "the pod's own volume named warden-token",
            own_volume,
            "volume name warden-token is reserved",
        ),
    ];
    // Copies of an injected pod, edited.
    let edits: [(&str, Edit, &str); 9] = [
        (
            "a permissive proxy",
            |pod| {
                proxy_of(pod)["env"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "WARDEN_INBOUND_MODE", "value": "permissive"}))
            },
            proxy,
        ),
        (
            "skipped ports added to warden-init",
            |pod| {
                init_list(pod)[0]["args"] = json!(["init", "--skip-inbound-ports", "22"]);
            },
            init,
        ),
        (
            "another image",
            |pod| proxy_of(pod)["image"] = json!("evil.example/warden:0.1.0"),
            proxy,
        ),
        (
            "a command replacing the proxy",
            |pod| proxy_of(pod)["command"] = json!(["sleep", "inf"]),
            proxy,
        ),
        (
            "the proxy running as root",
            |pod| proxy_of(pod)["securityContext"]["runAsUser"] = json!(0),
            proxy,
        ),
        (
            "no warden-init",
            |pod| {
                init_list(pod).remove(0);
            },
            proxy,
        ),
        (
            "the proxy ahead of warden-init",
            |pod| init_list(pod).swap(0, 1),
            "is reserved for Warden's sidecar",
        ),
        (
            "another controller to take policy from",
            |pod| {
                let env = proxy_of(pod)["env"].as_array_mut().unwrap();
                let control_plane = env
                    .iter_mut()
                    .find(|e| e["name"] == "WARDEN_CONTROL_PLANE")
                    .unwrap();
                control_plane["value"] = json!("evil.example:7160");
            },
            proxy,
        ),
        (
            "a token volume of another audience",
            |pod| {
                let volumes = pod["spec"]["volumes"].as_array_mut().unwrap();
                let token = volumes
                    .iter_mut()
                    .find(|v| v["name"] == "warden-token")
                    .unwrap();
                token["projected"]["sources"][0]["serviceAccountToken"]["audience"] =
                    json!("anything-goes");
            },
            "volume name warden-token is reserved",
        ),
    ];
    for (name, edit, want) in edits {
        let mut pod = stored(deployment_pod(), &config());
        edit(&mut pod);
        cases.push((name, pod, want));
    }
    for (name, pod, want) in cases {
        let (response, outcome) = answer(&admission_review(pod, "CREATE", false));
        assert_refused(name, &response, outcome, want);
    }
}

#[test]
fn app_containers_running_as_the_proxy_uid_are_refused() {
    let mut own = deployment_pod();
    own["spec"]["containers"][0]["securityContext"] = json!({"runAsUser": 2626});
    let mut pod_level = deployment_pod();
    pod_level["spec"]["securityContext"] = json!({"runAsUser": 2626, "runAsNonRoot": true});
    let mut init = busy_pod();
    init_list(&mut init)[0]["securityContext"] = json!({"runAsUser": 2626});
    let mut copy = stored(deployment_pod(), &config());
    copy["spec"]["containers"][0]["securityContext"] = json!({"runAsUser": 2626});
    let mut overridden = pod_level.clone();
    overridden["spec"]["containers"][0]["securityContext"] = json!({"runAsUser": 1000});
    let mut group = deployment_pod();
    group["spec"]["containers"][0]["securityContext"] =
        json!({"runAsUser": 1000, "runAsGroup": 2626});
    let refused = [
        (
            "its own runAsUser",
            own,
            "container web runs as UID 2626 (its securityContext.runAsUser)",
        ),
        (
            "the pod's runAsUser",
            pod_level,
            "container web runs as UID 2626 (the pod's securityContext.runAsUser)",
        ),
        (
            "an app init container",
            init,
            "container migrate runs as UID 2626",
        ),
        (
            "a copy of an injected pod",
            copy,
            "container web runs as UID 2626",
        ),
    ];
    for (name, pod, want) in refused {
        let (response, outcome) = answer(&admission_review(pod, "CREATE", false));
        assert_refused(name, &response, outcome, want);
        assert!(
            response["response"]["status"]["message"]
                .as_str()
                .unwrap()
                .contains("never intercepted"),
            "{name}: says why"
        );
    }
    // The container's own UID wins over the pod's; interception matches the UID, not the GID.
    for (name, pod) in [("overridden", overridden), ("GID only", group)] {
        let (response, outcome) = answer(&admission_review(pod, "CREATE", false));
        assert_eq!(outcome, "injected", "{name}: {response}");
    }
}

#[test]
fn security_annotations_are_ignored_with_a_warning_unless_the_operator_allows_them() {
    fn init_args(pod: &Value) -> Value {
        pod["spec"]["initContainers"][0]["args"].clone()
    }
    let skipped = |flag: &'static str, value: &'static str| {
        move |pod: &Value| init_args(pod) == json!(["init", flag, value])
    };
    type Honoured = Box<dyn Fn(&Value) -> bool>;
    let cases: Vec<(SecurityAnnotation, &str, Honoured)> = vec![
        (
            SecurityAnnotation::SkipInboundPorts,
            "22",
            Box::new(skipped("--skip-inbound-ports", "22")),
        ),
        (
            SecurityAnnotation::SkipOutboundPorts,
            "5432",
            Box::new(skipped("--skip-outbound-ports", "5432")),
        ),
        (
            SecurityAnnotation::SkipOutboundCidrs,
            "10.0.0.0/8",
            Box::new(skipped("--skip-outbound-cidrs", "10.0.0.0/8")),
        ),
        (
            SecurityAnnotation::PermissiveInbound,
            "permissive",
            Box::new(|pod: &Value| {
                proxy_env(pod, "WARDEN_INBOUND_MODE") == Some(json!("permissive"))
            }),
        ),
    ];
    for (annotation, value, honoured) in cases {
        let key = annotation.key();
        let pod = with_annotations(deployment_pod(), json!({ key: value }));
        let others: Vec<SecurityAnnotation> = SecurityAnnotation::ALL
            .into_iter()
            .filter(|a| *a != annotation)
            .collect();
        for (config, allowed) in [
            (config(), false),
            (allowing(&others), false),
            (allowing(&[annotation]), true),
        ] {
            let (response, outcome) =
                answer_with(&admission_review(pod.clone(), "CREATE", false), &config);
            assert_eq!(outcome, "injected", "{key}: {response}");
            let patched = apply(&pod, &decoded_patch(&response).unwrap());
            assert_eq!(honoured(&patched), allowed, "{key} allowed: {allowed}");
            let warnings = warnings_of(&response);
            if allowed {
                assert!(warnings.is_empty(), "{key}: {warnings:?}");
            } else {
                assert_eq!(warnings.len(), 1, "{key}: {warnings:?}");
                assert!(
                    warnings[0].starts_with(&format!("warden: annotation {key} ignored"))
                        && warnings[0].contains(&format!("--allow-pod-annotation {key}")),
                    "{key}: {warnings:?}"
                );
                assert_eq!(init_args(&patched), json!(["init"]), "{key}");
                assert_eq!(proxy_env(&patched, "WARDEN_INBOUND_MODE"), None, "{key}");
            }
        }
    }

    // What weakens nothing keeps working under the default configuration.
    let pod = with_annotations(
        deployment_pod(),
        json!({
            "warden.dev/inbound-mode": "strict",
            "warden.dev/opaque-ports": "6379",
            "warden.dev/log-level": "info",
            "warden.dev/proxy-memory-limit": "64Mi",
            "warden.dev/proxy-cpu-limit": "2500m",
        }),
    );
    let (response, outcome) = answer(&admission_review(pod.clone(), "CREATE", false));
    assert_eq!(outcome, "injected");
    assert!(warnings_of(&response).is_empty(), "{response}");
    let patched = apply(&pod, &decoded_patch(&response).unwrap());
    for (env, want) in [
        ("WARDEN_INBOUND_MODE", "strict"),
        ("WARDEN_OPAQUE_PORTS", "6379"),
        ("WARDEN_LOG", "info"),
        // The CPU limit rounded up (none without one: the golden patches).
        ("WARDEN_WORKER_THREADS", "3"),
    ] {
        assert_eq!(proxy_env(&patched, env), Some(json!(want)), "{env}");
    }
    assert_eq!(
        patched["spec"]["initContainers"][1]["resources"]["limits"]["memory"],
        "64Mi"
    );
}

// ---------------------------------------------------------------------------------------
// CNI mode: no warden-init; the CNI plugin installs the rules from the node.
// ---------------------------------------------------------------------------------------

/// The test configuration in CNI mode, with `allowed` security-relevant annotations.
fn cni_config(allowed: &[SecurityAnnotation]) -> InjectorConfig {
    let mut config = allowing(allowed);
    config.interception = Interception::Cni;
    config
}

fn env_of(container: &Value, name: &str) -> Option<Value> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .map(|e| e["value"].clone())
}

#[test]
fn cni_mode_adds_no_init_container_and_hands_the_settings_to_the_plugin() {
    let pod = with_annotations(
        deployment_pod(),
        json!({
            "warden.dev/skip-inbound-ports": "22",
            "warden.dev/skip-outbound-ports": "5432",
            "warden.dev/skip-outbound-cidrs": "169.254.169.254/32",
        }),
    );
    // The operator allows skipped inbound ports and networks, not skipped outbound ports.
    let config = cni_config(&[
        SecurityAnnotation::SkipInboundPorts,
        SecurityAnnotation::SkipOutboundCidrs,
    ]);
    let (response, outcome) = answer_with(&admission_review(pod.clone(), "CREATE", false), &config);
    assert_eq!(outcome, "injected", "{response}");
    assert_eq!(
        warnings_of(&response).len(),
        1,
        "skip-outbound-ports ignored"
    );
    let patch = decoded_patch(&response).unwrap();
    golden("cni-mode", &patch);
    let patched = apply(&pod, &patch);
    assert_valid_for_kubernetes("cni-mode", &patched);

    let init = &patched["spec"]["initContainers"];
    assert_eq!(
        init.as_array().unwrap().len(),
        1,
        "the proxy only, no warden-init: {init}"
    );
    let proxy = &init[0];
    assert_eq!(proxy["name"], "warden-proxy");
    assert_eq!(proxy["restartPolicy"], "Always");
    assert!(
        proxy["securityContext"]["capabilities"]
            .get("add")
            .is_none(),
        "nothing privileged anywhere"
    );
    let settings = env_of(proxy, "WARDEN_INTERCEPTION_SETTINGS").expect("the settings");
    assert_eq!(
        settings,
        json!(
            r#"{"skipInboundPorts":[22],"skipOutboundPorts":[],"skipOutboundCidrs":["169.254.169.254/32"]}"#
        ),
        "what warden-init's arguments would be, after the allowed-annotations policy"
    );
    assert_eq!(
        patched["metadata"]["annotations"]["warden.dev/interception"],
        "cni"
    );
    let volumes: Vec<&str> = patched["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        volumes,
        ["kube-api-access-x7k2p", "warden-token"],
        "no /run volume without warden-init"
    );
    // Apart from that variable, the proxy is the one of init mode.
    let (init_mode, _) = answer(&admission_review(deployment_pod(), "CREATE", false));
    let init_mode = apply(&deployment_pod(), &decoded_patch(&init_mode).unwrap());
    let mut same = proxy.clone();
    same["env"]
        .as_array_mut()
        .unwrap()
        .retain(|e| e["name"] != "WARDEN_INTERCEPTION_SETTINGS");
    assert_eq!(same, init_mode["spec"]["initContainers"][1]);

    // The CNI plugin reads exactly that from the pod.
    let stored: Pod = serde_json::from_value(patched).unwrap();
    assert_eq!(
        cni::interception(&stored),
        Ok(PodInterception::Cni(CniSettings {
            skip_inbound_ports: vec![22],
            skip_outbound_ports: vec![],
            skip_outbound_cidrs: vec![warden_core::Cidr::parse("169.254.169.254/32").unwrap()],
        }))
    );
    assert_eq!(
        cni::interception(&serde_json::from_value(init_mode).unwrap()),
        Ok(PodInterception::InitContainer),
        "an init-mode pod is left to its warden-init"
    );
}

#[test]
fn cni_mode_in_regular_sidecar_mode_and_with_the_pods_own_init_containers() {
    let config = cni_config(&[SecurityAnnotation::SkipOutboundPorts]);
    // Regular: the proxy is the first container, and no initContainers appear.
    let regular = with_annotations(
        deployment_pod(),
        json!({"warden.dev/sidecar-mode": "regular"}),
    );
    let (response, _) = answer_with(&admission_review(regular.clone(), "CREATE", false), &config);
    let patched = apply(&regular, &decoded_patch(&response).unwrap());
    assert_valid_for_kubernetes("cni-regular", &patched);
    assert!(patched["spec"].get("initContainers").is_none(), "{patched}");
    assert_eq!(patched["spec"]["containers"][0]["name"], "warden-proxy");
    assert_eq!(
        patched["spec"]["containers"][1]["livenessProbe"]["httpGet"]["path"],
        "/app-probe/web/liveness",
        "the app's probes are indexed past the proxy"
    );
    // The pod's own init containers run after the proxy.
    let (response, _) = answer_with(&admission_review(busy_pod(), "CREATE", false), &config);
    let patched = apply(&busy_pod(), &decoded_patch(&response).unwrap());
    let names: Vec<&str> = patched["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["warden-proxy", "migrate"]);
    assert_eq!(
        env_of(
            &patched["spec"]["initContainers"][0],
            "WARDEN_INTERCEPTION_SETTINGS"
        ),
        Some(json!(
            r#"{"skipInboundPorts":[],"skipOutboundPorts":[5432],"skipOutboundCidrs":[]}"#
        ))
    );
}

#[test]
fn cni_mode_pods_are_genuine_only_to_an_injector_in_cni_mode() {
    let cni = cni_config(&[]);
    let regular = with_annotations(
        deployment_pod(),
        json!({"warden.dev/sidecar-mode": "regular"}),
    );
    // Reviewed again (reinvocation, copies) by the CNI-mode injector: skipped.
    let skipped: Vec<(&str, Value, InjectorConfig, Edit)> = vec![
        ("native sidecar", deployment_pod(), cni.clone(), |_| {}),
        ("regular container", regular, cni.clone(), |_| {}),
        (
            "the pod's own init containers, allowed annotations",
            busy_pod(),
            cni_config(&[SecurityAnnotation::SkipOutboundPorts]),
            |_| {},
        ),
        (
            "the interception annotation removed (the plugin does not read it)",
            deployment_pod(),
            cni.clone(),
            |pod| {
                pod["metadata"]["annotations"]
                    .as_object_mut()
                    .unwrap()
                    .remove("warden.dev/interception");
            },
        ),
    ];
    for (name, pod, config, change) in skipped {
        let mut pod = stored(pod, &config);
        change(&mut pod);
        let (response, outcome) = answer_with(&admission_review(pod, "CREATE", false), &config);
        assert_eq!(outcome, "skipped", "{name}: {response}");
        assert_eq!(
            warnings_of(&response),
            ["warden: not injected: the pod is already injected"],
            "{name}"
        );
    }

    // Refused: what is not exactly what this injector adds.
    let proxy = "container name warden-proxy is reserved for Warden's sidecar";
    let cases: Vec<(&str, InjectorConfig, InjectorConfig, Edit, &str)> = vec![
        (
            "a CNI-mode pod under an init-mode injector (nothing would install its rules)",
            cni.clone(),
            config(),
            |_| {},
            proxy,
        ),
        (
            "an init-mode pod under a CNI-mode injector",
            config(),
            cni.clone(),
            |_| {},
            "container name warden-init is reserved",
        ),
        (
            "settings widened in a copy",
            cni.clone(),
            cni.clone(),
            |pod| {
                let env = init_list(pod)[0]["env"].as_array_mut().unwrap();
                let settings = env
                    .iter_mut()
                    .find(|e| e["name"] == "WARDEN_INTERCEPTION_SETTINGS")
                    .unwrap();
                settings["value"] = json!(r#"{"skipInboundPorts":[8080]}"#);
            },
            proxy,
        ),
        (
            "the settings removed in a copy",
            cni.clone(),
            cni.clone(),
            |pod| {
                init_list(pod)[0]["env"]
                    .as_array_mut()
                    .unwrap()
                    .retain(|e| e["name"] != "WARDEN_INTERCEPTION_SETTINGS");
            },
            proxy,
        ),
        (
            "a warden-run volume the injector does not add in CNI mode",
            cni.clone(),
            cni.clone(),
            |pod| {
                pod["spec"]["volumes"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "warden-run", "emptyDir": {"medium": "Memory"}}));
            },
            "volume name warden-run is reserved",
        ),
    ];
    for (name, injected_by, reviewed_by, edit, want) in cases {
        let mut pod = stored(deployment_pod(), &injected_by);
        edit(&mut pod);
        let (response, outcome) =
            answer_with(&admission_review(pod, "CREATE", false), &reviewed_by);
        assert_refused(name, &response, outcome, want);
    }

    // A pod of its own with a warden-run volume is refused in CNI mode too (reserved names).
    let mut own = deployment_pod();
    own["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "warden-run", "emptyDir": {}}));
    let (response, outcome) = answer_with(&admission_review(own, "CREATE", false), &cni);
    assert_refused(
        "own warden-run",
        &response,
        outcome,
        "volume name warden-run is reserved",
    );
}

#[test]
fn mesh_policy_grants_follow_the_requests_namespace_not_the_objects() {
    // A MeshPolicy allows permissive inbound in namespace `lab` only.
    let mut grants = NamespaceGrants::default();
    grants.set_namespace("lab", [("env".into(), "lab".into())].into());
    grants.set_namespace("prod", [("env".into(), "prod".into())].into());
    grants.set_mesh_policy(
        "lab",
        MeshGrant {
            match_labels: [("env".into(), "lab".into())].into(),
            allowed: [SecurityAnnotation::PermissiveInbound].into(),
        },
    );
    let mut config = config();
    config.grants = std::sync::Arc::new(grants);
    let mut pod = deployment_pod();
    pod["metadata"]["annotations"] = json!({"warden.dev/inbound-mode": "permissive"});
    pod["metadata"]["namespace"] = json!("lab");
    let inbound_mode = |review: Value| {
        let (response, outcome) = answer_with(&review, &config);
        assert_eq!(outcome, "injected");
        let patched = apply(
            &review["request"]["object"],
            &decoded_patch(&response).unwrap(),
        );
        let proxy = patched["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "warden-proxy")
            .unwrap()
            .clone();
        proxy["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "WARDEN_INBOUND_MODE")
            .map(|e| e["value"].clone())
    };
    assert_eq!(
        inbound_mode(admission_review(pod.clone(), "CREATE", false)),
        Some(json!("permissive"))
    );
    // The object claims `lab`, the request is for `prod`: prod's (no) grants apply.
    let mut review = admission_review(pod.clone(), "CREATE", false);
    review["request"]["namespace"] = json!("prod");
    assert_eq!(inbound_mode(review), None);
    // The object names no namespace: the request's decides.
    let mut unnamed = pod.clone();
    unnamed["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("namespace");
    let mut review = admission_review(unnamed, "CREATE", false);
    review["request"]["namespace"] = json!("lab");
    assert_eq!(inbound_mode(review), Some(json!("permissive")));
}

#[test]
fn a_debug_container_running_as_the_proxy_uid_is_refused_in_an_injected_pod() {
    let pod = deployment_pod();
    let (response, _) = answer(&admission_review(pod.clone(), "CREATE", false));
    let injected = apply(&pod, &decoded_patch(&response).unwrap());
    let debug = |pod: &Value, security_context: Value| {
        let mut pod = pod.clone();
        pod["spec"]["ephemeralContainers"] = json!([{
            "name": "debugger", "image": "busybox", "securityContext": security_context,
        }]);
        let mut review = admission_review(pod, "UPDATE", false);
        review["request"]["subResource"] = json!("ephemeralcontainers");
        answer(&review)
    };
    let (refused, outcome) = debug(&injected, json!({"runAsUser": 2626}));
    assert_eq!(outcome, "refused");
    assert_eq!(refused["response"]["allowed"], false);
    assert_eq!(refused["response"]["status"]["code"], 403);
    let message = refused["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("ephemeral container debugger runs as UID 2626"),
        "{message}"
    );
    // By the pod's runAsUser too.
    let mut pod_uid = injected.clone();
    pod_uid["spec"]["securityContext"] = json!({"runAsUser": 2626});
    assert_eq!(debug(&pod_uid, json!({})).1, "refused");
    // Another UID, or a pod without Warden's proxy: allowed, unchanged.
    for (pod, sc) in [
        (&injected, json!({"runAsUser": 1000})),
        (&pod, json!({"runAsUser": 2626})),
    ] {
        let (allowed, outcome) = debug(pod, sc);
        assert_eq!(outcome, "ignored");
        assert_eq!(allowed["response"]["allowed"], true);
        assert!(allowed["response"].get("patch").is_none(), "{allowed}");
    }
    // Other subresources and updates are none of the injector's business.
    let mut status = admission_review(injected, "UPDATE", false);
    status["request"]["subResource"] = json!("status");
    assert_eq!(answer(&status).1, "ignored");
}
