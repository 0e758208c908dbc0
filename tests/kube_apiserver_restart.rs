//! The API server crashes and comes back under a running mesh: proxies
//! keep enforcing what they have, the controller's watches recover on their own, and
//! changes made after the restart reach the proxies. Its own test binary: the restart would
//! pull the server from under other tests.

#[path = "support/apiserver.rs"]
mod apiserver;
#[path = "support/mesh.rs"]
mod mesh;

use mesh::{allow, call, pod, until_calls_get, Identity, Proxy};

#[test]
fn the_controller_recovers_from_an_api_server_restart_and_serves_what_changed_after() {
    if !apiserver::available() {
        return;
    }
    let api = apiserver::get();
    api.install_crds();
    let ns = api.namespace("restart", &[]);
    pod(api, &ns, "backend-0", "backend", "127.0.0.1");
    let identity = Identity::start();
    let controller = mesh::controller(&api.kubeconfig, &identity, "replica-r", &ns, "127.0.0.1:0");
    let backend_id = format!("spiffe://cluster.local/ns/{ns}/sa/backend");
    let mesh::Pair {
        server,
        client,
        port,
        frontend_id,
    } = mesh::Pair::start(&identity, &ns, &[&controller.grpc]);
    server.wait_ready();
    api.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&allow(&ns, "backend-allow", &frontend_id, port)),
    );
    until_calls_get(&client, "200", "the ALLOW is enforced");

    api.restart();
    assert_eq!(
        call(&client),
        "200",
        "enforcement went on while the API server was away"
    );

    // The watches recovered: a deletion made after the restart reaches the proxy, and a pod
    // created after it can subscribe.
    api.kubectl_ok(
        &["delete", "authorizationpolicy", "backend-allow", "-n", &ns],
        None,
    );
    until_calls_get(&client, "403", "the deletion after the restart is enforced");
    pod(api, &ns, "backend-1", "backend", "127.0.0.1");
    let late = Proxy::start(
        "late backend proxy",
        &identity,
        &backend_id,
        &format!(
            "control_plane: {{addresses: [\"{}\"], pod_name: backend-1}}\n",
            controller.grpc
        ),
    );
    late.wait_ready();
    let log = controller.process.logged();
    assert!(
        log.contains("a watch failed; retrying with backoff"),
        "{log}"
    );
}
