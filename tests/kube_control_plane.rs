//! The control plane end to end against a real API server: `kubectl apply` of a policy is
//! enforced by a running proxy that took it from a real `warden controller` over real mTLS
//! (SVIDs from a real `warden identity`), and so are edits, deletions and mesh-wide DENYs;
//! proxies keep enforcing while the controller is gone, resync when it is back, move to the
//! other replica when one is killed or shut down, and can never read another pod's policies.

#[path = "support/apiserver.rs"]
mod apiserver;
#[path = "support/mesh.rs"]
mod mesh;

use apiserver::ports::reserved_port;
use mesh::{allow, call, eventually, pod, until_calls_get, until_ready_says, Identity, Proxy};

#[test]
fn policies_applied_with_kubectl_are_enforced_by_running_proxies_through_controller_failures() {
    if !apiserver::available() {
        return;
    }
    let api = apiserver::get();
    api.install_crds();
    let ns = api.namespace("cp", &[("team", "shop")]);
    pod(api, &ns, "backend-0", "backend", "127.0.0.1");
    let identity = Identity::start();
    // The controllers are restarted on the same addresses while the proxies retry them.
    let (port_a, port_b) = (reserved_port(), reserved_port());
    let (a, b) = (format!("127.0.0.1:{port_a}"), format!("127.0.0.1:{port_b}"));
    let mut replica_a = mesh::controller(&api.kubeconfig, &identity, "replica-a", &ns, &a);

    let mesh::Pair {
        server,
        client,
        port,
        frontend_id,
    } = mesh::Pair::start(&identity, &ns, &[&a, &b]);

    // Ready only with a snapshot; none selects it yet, so the mesh default (deny) decides.
    server.wait_ready();
    let ready = until_ready_says(&server, "stream up");
    assert!(
        ready.contains(&format!("from the controller at {a}")),
        "{ready}"
    );
    assert_eq!(call(&client), "403");

    // kubectl apply -> enforced.
    api.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&allow(&ns, "backend-allow", &frontend_id, port)),
    );
    until_calls_get(&client, "200", "the applied ALLOW is enforced");

    // An invalid edit is refused by the API server with the CEL message; nothing changes.
    let bad = allow(&ns, "backend-allow", &frontend_id, port)
        .replace(&format!("ports: [{port}]"), "ports: [0]");
    let refused = api.kubectl_with(&["apply", "-f", "-"], Some(&bad));
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("ports"), "{message}");
    assert_eq!(call(&client), "200");

    // A mesh-wide DENY wins over the namespace's ALLOW, and its removal restores it.
    let mesh_deny = format!(
        "apiVersion: warden.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {{name: deny-frontend-{ns}}}\nspec:\n  namespaceSelector: {{matchLabels: {{team: shop}}}}\n  action: DENY\n  rules: [{{from: {{identities: [\"{frontend_id}\"]}}}}]\n"
    );
    api.kubectl_ok(&["apply", "-f", "-"], Some(&mesh_deny));
    until_calls_get(
        &client,
        "403",
        "the mesh DENY wins over the namespace ALLOW",
    );
    api.kubectl_ok(
        &["delete", "meshpolicy", &format!("deny-frontend-{ns}")],
        None,
    );
    until_calls_get(&client, "200", "the mesh DENY is gone");

    // The controller is killed: the proxy keeps enforcing its last snapshot, says so.
    replica_a.process.kill();
    until_ready_says(&server, "reconnecting to the controller");
    let (status, _) = server.admin_get("/ready");
    assert!(status.contains(" 200"), "still ready: {status}");
    assert_eq!(call(&client), "200", "the last snapshot stays in force");
    let (_, metrics) = server.admin_get("/metrics");
    assert!(
        metrics.contains("warden_control_plane_connected 0"),
        "{metrics}"
    );
    assert!(metrics.contains("warden_policy_snapshot_age_seconds"));

    // Deleted while no controller runs; replica B comes up: the proxy resyncs from it.
    api.kubectl_ok(
        &["delete", "authorizationpolicy", "backend-allow", "-n", &ns],
        None,
    );
    assert_eq!(call(&client), "200", "nobody told the proxy yet");
    let mut replica_b = mesh::controller(&api.kubeconfig, &identity, "replica-b", &ns, &b);
    until_calls_get(&client, "403", "the proxy resyncs with replica B");
    until_ready_says(&server, &format!("from the controller at {b}"));

    // Replica A back; B shuts down gracefully: the proxy moves to A at once, no gap.
    api.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&allow(&ns, "backend-allow", &frontend_id, port)),
    );
    until_calls_get(&client, "200", "enforced via replica B");
    let _replica_a = mesh::controller(&api.kubeconfig, &identity, "replica-a2", &ns, &a);
    let status = replica_b.process.terminate();
    assert!(status.success(), "replica B exits cleanly: {status:?}");
    until_ready_says(&server, &format!("from the controller at {a}"));
    assert_eq!(call(&client), "200");
    api.kubectl_ok(
        &["delete", "authorizationpolicy", "backend-allow", "-n", &ns],
        None,
    );
    until_calls_get(&client, "403", "enforced via replica A again");
    let (_, metrics) = server.admin_get("/metrics");
    assert!(
        metrics.contains("warden_policy_snapshots_total{result=\"refused\"} 0"),
        "{metrics}"
    );
}

#[test]
fn a_proxy_can_never_read_another_pods_policies_and_the_attempt_is_logged() {
    if !apiserver::available() {
        return;
    }
    let api = apiserver::get();
    api.install_crds();
    let ns = api.namespace("cpx", &[]);
    pod(api, &ns, "backend-0", "backend", "127.0.0.1");
    pod(api, &ns, "backend-1", "backend", "10.9.9.9");
    let identity = Identity::start();
    let controller = mesh::controller(&api.kubeconfig, &identity, "replica-x", &ns, "127.0.0.1:0");
    let grpc = controller.grpc.clone();
    let start = |name: &str, id: &str, pod: &str| {
        Proxy::start(
            name,
            &identity,
            id,
            &format!("control_plane: {{addresses: [\"{grpc}\"], pod_name: {pod}}}\n"),
        )
    };
    let frontend = format!("spiffe://cluster.local/ns/{ns}/sa/frontend");
    let backend = format!("spiffe://cluster.local/ns/{ns}/sa/backend");
    // (SVID, claimed pod, what /ready and the controller's log say)
    let cases = [
        (
            &frontend,
            "backend-0",
            "PERMISSION_DENIED",
            "runs as ServiceAccount backend, not as frontend",
        ),
        (
            &backend,
            "backend-1",
            "PERMISSION_DENIED",
            "has IP 10.9.9.9, not the caller's 127.0.0.1",
        ),
        (
            &backend,
            "ghost-0",
            "NOT_FOUND",
            &format!("no pod {ns}/ghost-0"),
        ),
    ];
    for (id, pod, code, why) in cases {
        let proxy = start(&format!("proxy claiming {pod}"), id, pod);
        let body = until_ready_says(&proxy, code);
        assert!(body.contains(why), "{body}");
        let (status, _) = proxy.admin_get("/ready");
        assert!(
            status.contains(" 503"),
            "not ready without its snapshot: {status}"
        );
        eventually("the controller logs the refusal", || {
            let log = controller.process.logged();
            let logged = log.lines().any(|l| {
                l.contains("refused a policy subscription")
                    && l.contains(why)
                    && l.contains(id.as_str())
            });
            if logged {
                Ok(())
            } else {
                Err(log)
            }
        });
    }
    let (_, metrics) = mesh::http_get(&controller.admin, "/metrics", "localhost");
    for reason in ["other-service-account", "other-address", "no-pod"] {
        let counted =
            format!("warden_controller_subscriptions_refused_total{{reason=\"{reason}\"}} ");
        assert!(metrics.contains(&counted), "{reason}: {metrics}");
    }
    // The rightful proxy gets its snapshot.
    let own = start("backend-0 proxy", &backend, "backend-0");
    own.wait_ready();
    until_ready_says(&own, "stream up");
    let (_, metrics) = mesh::http_get(&controller.admin, "/metrics", "localhost");
    assert!(
        metrics.contains("warden_controller_subscriptions 1"),
        "{metrics}"
    );
}
