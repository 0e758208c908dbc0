//! `warden controller run` against a real API server: it watches the policy CRDs, Pods and
//! Namespaces and writes each policy's status (Accepted or Invalid with what is wrong,
//! observedGeneration, how many workloads it selects), recovering what it knew from the
//! watches alone.

#[path = "support/apiserver.rs"]
mod apiserver;
#[path = "support/mesh.rs"]
mod mesh;

use std::time::{Duration, Instant};

use apiserver::ApiServer;

/// Polls `jsonpath` of `object` until it equals `want` (30 s at most).
fn eventually(api: &ApiServer, object: &[&str], jsonpath: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut args: Vec<&str> = vec!["get"];
    args.extend_from_slice(object);
    let output = format!("jsonpath={jsonpath}");
    args.extend(["-o", &output]);
    loop {
        let got = api.kubectl_ok(&args, None);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{object:?} {jsonpath}: {got:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pod(ns: &str, name: &str, sa: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {sa}, namespace: {ns}}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  serviceAccountName: {sa}\n  containers: [{{name: app, image: registry.example/app:1}}]\n"
    )
}

#[test]
fn the_controller_writes_each_policys_status_and_keeps_it_current() {
    if !apiserver::available() {
        return;
    }
    let api = apiserver::get();
    api.install_crds();
    let ns = api.namespace("ctl", &[("env", "prod")]);
    for (name, sa) in [
        ("backend-1", "backend"),
        ("backend-2", "backend"),
        ("frontend-1", "frontend"),
    ] {
        api.kubectl_ok(&["apply", "-f", "-"], Some(&pod(&ns, name, sa)));
    }
    // Objects that exist before the controller starts come from its initial list.
    let policy = |name: &str, identity: &str, sa: &str| {
        format!(
            "apiVersion: warden.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  selector: {{serviceAccounts: [{sa}]}}\n  action: ALLOW\n  rules: [{{from: {{identities: [\"{identity}\"]}}}}]\n"
        )
    };
    let frontend = format!("spiffe://cluster.local/ns/{ns}/sa/frontend");
    api.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&policy("backend-allow", &frontend, "backend")),
    );
    let identity = mesh::Identity::start();
    let first = mesh::controller(&api.kubeconfig, &identity, "replica-a", &ns, "127.0.0.1:0");
    let backend_allow = ["authorizationpolicy", "backend-allow", "-n", ns.as_str()];
    let accepted = "{.status.conditions[?(@.type==\"Accepted\")].status}";
    eventually(api, &backend_allow, accepted, "True");
    eventually(api, &backend_allow, "{.status.observedGeneration}", "1");
    eventually(api, &backend_allow, "{.status.workloads}", "2");

    // A pod comes: the count follows.
    api.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&pod(&ns, "backend-3", "backend")),
    );
    eventually(api, &backend_allow, "{.status.workloads}", "3");

    // An edit the schema lets through but the deeper checks refuse: Invalid, says why, and
    // the generation it is about.
    let dot = format!("spiffe://cluster.local/ns/{ns}/./frontend");
    api.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&policy("backend-allow", &dot, "backend")),
    );
    eventually(api, &backend_allow, accepted, "False");
    eventually(api, &backend_allow, "{.status.observedGeneration}", "2");
    eventually(
        api,
        &backend_allow,
        "{.status.conditions[0].reason}",
        "Invalid",
    );
    let message = api.kubectl_ok(
        &[
            "get",
            "authorizationpolicy",
            "backend-allow",
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.conditions[0].message}",
        ],
        None,
    );
    assert!(
        message.starts_with("spec.rules[0].from.identities[0]: ")
            && message.contains("last valid version"),
        "{message}"
    );
    // Fixed again: Accepted.
    api.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&policy("backend-allow", &frontend, "backend")),
    );
    eventually(api, &backend_allow, accepted, "True");
    eventually(api, &backend_allow, "{.status.observedGeneration}", "3");

    // A selector that matches nothing: accepted, and the status says it selects nobody.
    api.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&policy("for-nobody", &frontend, "ghost")),
    );
    let nobody = ["authorizationpolicy", "for-nobody", "-n", ns.as_str()];
    eventually(api, &nobody, accepted, "True");
    eventually(api, &nobody, "{.status.workloads}", "0");

    // A MeshPolicy for prod namespaces.
    api.kubectl_ok(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: warden.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {name: prod-no-debug}\nspec: {namespaceSelector: {matchLabels: {env: prod}}, action: DENY, rules: [{to: {paths: [\"/debug*\"]}}]}\n",
        ),
    );
    let mesh = ["meshpolicy", "prod-no-debug"];
    eventually(api, &mesh, accepted, "True");
    eventually(api, &mesh, "{.status.workloads}", "4");

    // A second replica follows; the first holds the Lease. Killed, the first stops renewing
    // and the second takes over: an edit made afterwards gets its status all the same.
    let _second = mesh::controller(&api.kubeconfig, &identity, "replica-b", &ns, "127.0.0.1:0");
    let lease = ["lease", "warden-controller", "-n", ns.as_str()];
    eventually(api, &lease, "{.spec.holderIdentity}", "replica-a");
    drop(first);
    let other = format!("spiffe://cluster.local/ns/{ns}/sa/other");
    api.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&policy("backend-allow", &other, "backend")),
    );
    eventually(api, &lease, "{.spec.holderIdentity}", "replica-b");
    eventually(api, &backend_allow, "{.status.observedGeneration}", "4");
    eventually(api, &backend_allow, accepted, "True");
}
