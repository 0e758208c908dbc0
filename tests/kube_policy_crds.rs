//! The policy CRDs in a real API server: installed from the committed YAML (generated from
//! the Rust types), valid policies accepted, what can never be right refused at apply time by
//! the API server itself with a message naming the field (structural schema and CEL), and a
//! namespace user who may edit AuthorizationPolicies cannot touch MeshPolicies.

#[path = "support/apiserver.rs"]
mod apiserver;

fn policy(ns: &str, spec: &str) -> String {
    format!(
        "apiVersion: warden.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: {ns}}}\nspec: {spec}\n"
    )
}

fn mesh(name: &str, spec: &str) -> String {
    format!("apiVersion: warden.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {{name: {name}}}\nspec: {spec}\n")
}

#[test]
fn the_api_server_accepts_good_policies_and_refuses_bad_ones_naming_the_field() {
    if !apiserver::available() {
        return;
    }
    let api = apiserver::get();
    api.install_crds();
    let ns = api.namespace("crds", &[]);

    // DESIGN section 4's example, and an opaque-TCP rule.
    let good = policy(
        &ns,
        r#"{selector: {serviceAccounts: [backend]}, action: ALLOW, rules: [{from: {identities: ["spiffe://cluster.local/ns/shop/sa/frontend"], namespaces: [shop]}, to: {ports: [8080], methods: [GET, POST], paths: ["/api/*"]}}, {from: {identities: ["spiffe://cluster.local/ns/batch/*"]}, to: {ports: [5432], opaque: true}}]}"#,
    );
    api.kubectl_ok(&["apply", "-f", "-"], Some(&good));
    let table = api.kubectl_ok(&["get", "authorizationpolicies", "-n", &ns], None);
    assert!(
        table.contains("ACTION") && table.contains("ALLOW"),
        "printer columns: {table}"
    );
    let short = api.kubectl_ok(&["get", "wap", "-n", &ns, "-o", "name"], None);
    assert_eq!(short.trim(), "authorizationpolicy.warden.dev/p");
    api.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&mesh(
            "mesh-defaults",
            r#"{default: all-authenticated, meshOnly: false, allowedAnnotations: [warden.dev/inbound-mode]}"#,
        )),
    );
    api.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&mesh(
            "no-debug-anywhere",
            r#"{namespaceSelector: {matchLabels: {env: prod}}, action: DENY, rules: [{to: {paths: ["/debug*"]}}]}"#,
        )),
    );
    let stored = api.kubectl_ok(
        &[
            "get",
            "authorizationpolicy",
            "p",
            "-n",
            &ns,
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ],
        None,
    );

    // Each refused by the API server, the message naming the field and the problem.
    let bad = [
        (policy(&ns, "{action: PERMIT}"), "spec.action: Unsupported value: \"PERMIT\""),
        (
            policy(&ns, r#"{action: ALLOW, rules: [{from: {identities: ["http://x"]}}]}"#),
            "spec.rules[0].from.identities: Invalid value: \"array\": identities are SPIFFE IDs",
        ),
        (
            policy(&ns, "{action: ALLOW, rules: [{to: {methods: [get]}}]}"),
            "spec.rules[0].to.methods: Invalid value: \"array\": methods are upper-case HTTP methods",
        ),
        (
            policy(&ns, "{action: ALLOW, rules: [{to: {ports: [70000]}}]}"),
            "spec.rules[0].to.ports[0]: Invalid value: 70000: spec.rules[0].to.ports[0] in body should be less than or equal to 65535",
        ),
        (
            policy(&ns, "{action: ALLOW, rules: [{to: {ports: [0]}}]}"),
            "should be greater than or equal to 1",
        ),
        (
            policy(&ns, "{action: ALLOW, rules: [{to: {ports: [5432], opaque: true, paths: [/x]}}]}"),
            "spec.rules[0].to: Invalid value: \"object\": a rule for opaque TCP (opaque: true) cannot name methods or paths",
        ),
        (
            policy(&ns, "{action: DENY, rules: []}"),
            "spec: Invalid value: \"object\": a DENY or AUDIT policy needs at least one rule",
        ),
        (
            policy(&ns, "{action: ALLOW, rules: [{to: {paths: [api]}}]}"),
            "spec.rules[0].to.paths: Invalid value: \"array\": paths start with '/'",
        ),
        (
            policy(&ns, "{action: ALLOW, rules: [{to: {methods: []}}]}"),
            "spec.rules[0].to.methods: Invalid value: 0: spec.rules[0].to.methods in body should have at least 1 items",
        ),
        (
            policy(&ns, "{action: ALLOW, bogus: 1}"),
            "unknown field \"spec.bogus\"",
        ),
        (
            mesh("broken", "{action: DENY}"),
            "spec: Invalid value: \"object\": action and rules go together",
        ),
        (
            mesh("broken", "{default: allow-everything}"),
            "spec.default: Unsupported value: \"allow-everything\"",
        ),
        (
            mesh("broken", "{allowedAnnotations: [warden.dev/anything]}"),
            "spec.allowedAnnotations[0]: Unsupported value: \"warden.dev/anything\"",
        ),
    ];
    for (yaml, want) in bad {
        let out = api.kubectl_with(&["apply", "-f", "-"], Some(&yaml));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted:\n{yaml}");
        assert!(stderr.contains(want), "want {want:?} in:\n{stderr}");
    }
    // Nothing changed: the good policy is as it was.
    let now = api.kubectl_ok(
        &[
            "get",
            "authorizationpolicy",
            "p",
            "-n",
            &ns,
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ],
        None,
    );
    assert_eq!(now, stored, "a refused update changes nothing");
}

#[test]
fn a_namespace_user_may_edit_authorization_policies_but_not_mesh_policies() {
    if !apiserver::available() {
        return;
    }
    let api = apiserver::get();
    api.install_crds();
    let ns = api.namespace("team", &[]);
    let rbac = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: policy-editor, namespace: {ns}}}\nrules:\n- apiGroups: [warden.dev]\n  resources: [authorizationpolicies]\n  verbs: [get, list, watch, create, update, patch, delete]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: alice-edits-policies, namespace: {ns}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: policy-editor}}\nsubjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}}]\n"
    );
    api.kubectl_ok(&["apply", "-f", "-"], Some(&rbac));
    api.until_can_i(
        &[
            "create",
            "authorizationpolicies.warden.dev",
            "--as=alice",
            "-n",
            &ns,
        ],
        "yes",
    );
    let as_alice = |args: &[&str], stdin: Option<&str>| {
        let mut all = vec!["--as=alice"];
        all.extend_from_slice(args);
        api.kubectl_with(&all, stdin)
    };
    let allow = policy(
        &ns,
        "{action: ALLOW, rules: [{from: {namespaces: [team]}}]}",
    );
    let out = as_alice(&["apply", "-f", "-"], Some(&allow));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = as_alice(
        &["apply", "-f", "-"],
        Some(&mesh("alice-was-here", "{default: all-authenticated}")),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("forbidden") && stderr.contains("meshpolicies"),
        "{stderr}"
    );
    // Nor change one an operator made.
    api.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&mesh("operator-default", "{default: deny}")),
    );
    let out = as_alice(
        &[
            "patch",
            "meshpolicy",
            "operator-default",
            "--type=merge",
            "-p",
            r#"{"spec":{"default":"all-authenticated"}}"#,
        ],
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("forbidden"));
    let default = api.kubectl_ok(
        &[
            "get",
            "meshpolicy",
            "operator-default",
            "-o",
            "jsonpath={.spec.default}",
        ],
        None,
    );
    assert_eq!(default, "deny");
}

/// `warden policy netpol` on `dir`: its stdout (YAML), failing on a non-zero exit.
fn netpol(dir: &std::path::Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["policy", "netpol"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_api_server_accepts_the_network_policies_mirroring_allow_lists() {
    if !apiserver::available() {
        return;
    }
    let api = apiserver::get();
    let ns = api.namespace("netpol", &[]);
    let dir = tempfile::tempdir().unwrap();
    let policies = [
        r#"{selector: {serviceAccounts: [backend]}, action: ALLOW, rules: [{from: {identities: ["spiffe://cluster.local/ns/web/sa/frontend", "spiffe://cluster.local/ns/batch/*"]}, to: {ports: [8080], methods: [GET]}}, {from: {namespaces: [monitoring]}, to: {ports: [9090]}}]}"#,
        r#"{action: ALLOW, rules: [{from: {identities: ["*/sa/admin"]}, to: {ports: [22]}}]}"#,
        r#"{action: DENY, rules: [{to: {paths: ["/admin*"]}}]}"#,
    ];
    let text: Vec<String> = policies
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            format!(
                "apiVersion: warden.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: p{i}, namespace: {ns}}}\nspec: {spec}\n"
            )
        })
        .collect();
    std::fs::write(dir.path().join("policies.yaml"), text.join("---\n")).unwrap();
    let yaml = netpol(dir.path());
    api.kubectl_ok(&["apply", "-f", "-"], Some(&yaml));
    let stored: serde_json::Value = serde_json::from_str(
        &api.kubectl_ok(&["get", "networkpolicies", "-n", &ns, "-o", "json"], None),
    )
    .unwrap();
    let items = stored["items"].as_array().unwrap();
    let names: Vec<&str> = items
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["warden-p0", "warden-p1"],
        "the DENY policy is not mirrored"
    );
    let backend = &items[0]["spec"];
    assert_eq!(
        backend["podSelector"]["matchExpressions"][0]["values"],
        serde_json::json!(["backend"])
    );
    let ingress = backend["ingress"].as_array().unwrap();
    assert_eq!(ingress[0]["ports"][0]["port"], 7191, "the admin port");
    assert_eq!(
        ingress[1]["from"][0]["podSelector"]["matchLabels"]["warden.dev/service-account"],
        "frontend"
    );
    assert_eq!(
        ingress[1]["from"][1]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "batch"
    );
    assert_eq!(ingress[2]["ports"][0]["port"], 9090);
    // A caller pattern the CNI cannot see widens to any source on that port.
    let any = &items[1]["spec"]["ingress"][1];
    assert!(any.get("from").is_none(), "{any}");
    assert_eq!(any["ports"][0]["port"], 22);
    // Applying again changes nothing (the output is stable).
    let again = api.kubectl_ok(&["apply", "-f", "-"], Some(&netpol(dir.path())));
    assert!(again.contains("unchanged"), "{again}");
}
