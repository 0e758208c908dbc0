//! `warden install` against a real API server, with the real kubectl: every object is
//! accepted as it is (the API server's own validation and admission, not a schema copy),
//! applying again changes nothing, server-side apply works too, and the documented uninstall
//! removes everything the install created.

#[path = "support/apiserver.rs"]
mod apiserver;

use std::process::Command;

use serde_json::Value;

/// `(kind, namespace, name)` of every object in a manifest stream.
fn objects(manifest: &str) -> Vec<(String, Option<String>, String)> {
    manifest
        .split("\n---")
        .filter_map(|chunk| {
            let doc: Value = serde_saphyr::from_str(chunk.trim_start_matches("---")).ok()?;
            let kind = doc["kind"].as_str()?.to_string();
            let name = doc["metadata"]["name"].as_str()?.to_string();
            let namespace = doc["metadata"]["namespace"].as_str().map(str::to_string);
            Some((kind, namespace, name))
        })
        .collect()
}

/// `warden ARGS` in `dir` (where `install` keeps, and on a later run reuses, its CA): its
/// stdout, failing the test on a non-zero exit.
fn warden(args: &[&str], dir: &std::path::Path) -> String {
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

/// `kubectl get` of one object as JSON, or `None` if the API server does not have it.
fn get(
    api: &apiserver::ApiServer,
    (kind, ns, name): &(String, Option<String>, String),
) -> Option<Value> {
    let mut args = vec![
        "get",
        kind.as_str(),
        name.as_str(),
        "-o",
        "json",
        "--ignore-not-found",
    ];
    if let Some(ns) = ns {
        args.extend(["-n", ns.as_str()]);
    }
    let out = api.kubectl_ok(&args, None);
    (!out.trim().is_empty()).then(|| serde_json::from_str(&out).unwrap())
}

fn resource_versions(
    api: &apiserver::ApiServer,
    objects: &[(String, Option<String>, String)],
) -> Vec<String> {
    objects
        .iter()
        .map(|o| {
            get(api, o).unwrap_or_else(|| panic!("{o:?} is missing"))["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn install_applies_cleanly_twice_server_side_too_and_uninstalls_completely() {
    if !apiserver::available() {
        return;
    }
    let api = apiserver::get();
    let ca = tempfile::tempdir().unwrap();
    let manifest = warden(&["install"], ca.path());
    let objects = objects(&manifest);
    let kinds: Vec<&str> = objects.iter().map(|(k, _, _)| k.as_str()).collect();
    for kind in [
        "CustomResourceDefinition",
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Secret",
        "ConfigMap",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "MutatingWebhookConfiguration",
    ] {
        assert!(kinds.contains(&kind), "the install has a {kind}: {kinds:?}");
    }

    // 1. Client-side apply: every object accepted and stored.
    let applied = api.kubectl_ok(&["apply", "-f", "-"], Some(&manifest));
    assert_eq!(applied.lines().count(), objects.len(), "{applied}");
    assert!(
        applied.lines().all(|l| l.ends_with(" created")),
        "{applied}"
    );
    let before = resource_versions(api, &objects);
    let webhook = get(
        api,
        &(
            "MutatingWebhookConfiguration".into(),
            None,
            "warden-injector".into(),
        ),
    )
    .unwrap();
    assert_eq!(webhook["webhooks"][0]["failurePolicy"], "Fail", "{webhook}");

    // The controller's RBAC: what it watches (policies; pods, Services and EndpointSlices
    // for discovery) and writes, and nothing more (never Secrets: the CA key is the
    // identity service's alone).
    // Every "yes" first: once the authorizer's cache shows the install's grants, a "no" is
    // the install's answer, not a cache behind.
    let controller = "--as=system:serviceaccount:warden-system:warden-controller";
    for (verb, resource, ns, want) in [
        ("watch", "pods", None, "yes"),
        ("list", "namespaces", None, "yes"),
        ("watch", "services", None, "yes"),
        ("watch", "endpointslices.discovery.k8s.io", None, "yes"),
        ("watch", "authorizationpolicies.warden.dev", None, "yes"),
        ("watch", "meshpolicies.warden.dev", None, "yes"),
        (
            "patch",
            "authorizationpolicies.warden.dev/status",
            None,
            "yes",
        ),
        ("patch", "meshpolicies.warden.dev/status", None, "yes"),
        (
            "update",
            "leases.coordination.k8s.io",
            Some("warden-system"),
            "yes",
        ),
        ("update", "services", None, "no"),
        ("update", "authorizationpolicies.warden.dev", None, "no"),
        ("get", "secrets", Some("warden-system"), "no"),
        ("create", "pods", None, "no"),
        (
            "update",
            "leases.coordination.k8s.io",
            Some("default"),
            "no",
        ),
    ] {
        let (resource, subresource) = match resource.split_once('/') {
            Some((r, sub)) => (r, Some(sub)),
            None => (resource, None),
        };
        let mut args = vec![verb, resource, controller];
        let sub;
        if let Some(s) = subresource {
            sub = format!("--subresource={s}");
            args.push(&sub);
        }
        match ns {
            Some(ns) => args.extend(["-n", ns]),
            None => args.push("--all-namespaces"),
        }
        api.until_can_i(&args, want);
    }

    // 2. The same manifest again: nothing changes. (kubectl says "configured" for a PDB
    //    however equal it is: its selector's patch strategy is `replace`, so the patch
    //    kubectl computes is never empty; the server stores nothing new, as the resource
    //    versions show.)
    let again = api.kubectl_ok(&["apply", "-f", "-"], Some(&manifest));
    assert!(
        again.lines().all(|l| l.ends_with(" unchanged")
            || (l.starts_with("poddisruptionbudget.policy/") && l.ends_with(" configured"))),
        "{again}"
    );
    assert_eq!(
        resource_versions(api, &objects),
        before,
        "no object was rewritten"
    );

    // 3. `warden uninstall` without --crds: the webhook and the control plane go, the
    //    policies stay, pods already running are left alone, and pods created afterwards in
    //    a meshed namespace are not injected.
    let ns = api.namespace("meshed", &[]);
    let pod = |name: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{containers: [{{name: app, image: registry.example/app:1}}]}}\n")
    };
    api.kubectl_ok(&["apply", "-f", "-"], Some(&pod("running")));
    api.kubectl_ok(
        &["label", "namespace", &ns, "warden.dev/inject=enabled"],
        None,
    );
    api.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&format!("apiVersion: warden.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: keep-me, namespace: {ns}}}\nspec: {{action: ALLOW, rules: [{{to: {{ports: [8080]}}}}]}}\n")),
    );
    let refused = api.kubectl_with(&["apply", "-f", "-"], Some(&pod("before")));
    assert!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("inject.warden.dev"),
        "the webhook is in force (and fails closed without its injector): {}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let keep_crds = warden(&["uninstall"], ca.path());
    api.kubectl_ok(
        &["delete", "--ignore-not-found", "--wait=false", "-f", "-"],
        Some(&keep_crds),
    );
    for object in objects
        .iter()
        .filter(|(kind, _, _)| kind != "Namespace" && kind != "CustomResourceDefinition")
    {
        assert!(
            get(api, object).is_none(),
            "{object:?} is left after uninstall"
        );
    }
    api.kubectl_ok(&["get", "authorizationpolicy", "keep-me", "-n", &ns], None);
    api.kubectl_ok(&["get", "pod", "running", "-n", &ns], None);
    api.kubectl_ok(&["apply", "-f", "-"], Some(&pod("after")));
    let after = api.kubectl_ok(&["get", "pod", "after", "-n", &ns, "-o", "json"], None);
    assert!(
        !after.contains("warden-proxy") && !after.contains("warden.dev/injected-version"),
        "{after}"
    );

    // And with --crds, every object (the namespace's contents at once; the namespace itself
    // is finalized by the namespace controller, which this API server has not: the test
    // does its last step).
    uninstall(api, &objects);

    // 4. Server-side apply on a clean cluster, twice: created, then nothing changes.
    let ssa = [
        "apply",
        "--server-side",
        "--field-manager=warden-install",
        "-f",
        "-",
    ];
    let applied = api.kubectl_ok(&ssa, Some(&manifest));
    assert!(
        applied.lines().all(|l| l.ends_with(" serverside-applied")),
        "{applied}"
    );
    let before = resource_versions(api, &objects);
    api.kubectl_ok(&ssa, Some(&manifest));
    assert_eq!(
        resource_versions(api, &objects),
        before,
        "no object was rewritten"
    );
    uninstall(api, &objects);
}

/// `warden uninstall --crds | kubectl delete`, then waits until every object is gone.
fn uninstall(api: &apiserver::ApiServer, objects: &[(String, Option<String>, String)]) {
    // A CRD deleted before the API server has its instances' storage ready is left stuck
    // ("could not list instances: storage is (re)initializing"), as on any cluster: wait
    // until each CRD's instances can be listed, as an operator's tooling would.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for (_, _, crd) in objects
        .iter()
        .filter(|(kind, _, _)| kind == "CustomResourceDefinition")
    {
        while !api
            .kubectl_with(&["get", crd.as_str(), "--all-namespaces"], None)
            .status
            .success()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{crd}: instances cannot be listed"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    api.kubectl_ok(
        &["delete", "--ignore-not-found", "--wait=false", "-f", "-"],
        Some(&warden(&["uninstall", "--crds"], std::path::Path::new("."))),
    );
    let namespace = objects
        .iter()
        .find(|(kind, _, _)| kind == "Namespace")
        .map(|(_, _, name)| name.clone())
        .unwrap();
    // A CRD goes once the API server's own finalizer has removed its instances (in the
    // background): wait for that, up to 30 s; everything else goes at once.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for object in objects.iter().filter(|(kind, _, _)| kind != "Namespace") {
        while let Some(left) = get(api, object) {
            let finalizing = object.0 == "CustomResourceDefinition"
                && left["metadata"]["deletionTimestamp"].is_string();
            assert!(
                finalizing && std::time::Instant::now() < deadline,
                "{object:?} is left after uninstall: {left}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    let ns = get(api, &("Namespace".into(), None, namespace.clone()));
    if let Some(ns) = ns {
        assert!(
            ns["metadata"]["deletionTimestamp"].is_string(),
            "the namespace is being deleted: {ns}"
        );
        finalize_namespace(api, &namespace);
    }
    for _ in 0..100 {
        if get(api, &("Namespace".into(), None, namespace.clone())).is_none() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("namespace {namespace} is left after uninstall");
}

/// What the namespace controller does once a terminating namespace is empty.
fn finalize_namespace(api: &apiserver::ApiServer, name: &str) {
    let body = format!(
        r#"{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"{name}"}},"spec":{{"finalizers":[]}}}}"#
    );
    api.kubectl_ok(
        &[
            "replace",
            "--raw",
            &format!("/api/v1/namespaces/{name}/finalize"),
            "-f",
            "-",
        ],
        Some(&body),
    );
}
