//! Authorization policies enforced by the inbound proxy: decisions, immediate effect of
//! changes (live TCP connections and WebSockets included), last-good on bad files, and the
//! audit log.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use warden_core::audit::verify::Status;
use warden_proxy::config::{AppProtocol, InboundListener, ProxyConfig, RouteProtocol};

use crate::apps;
use crate::fixture::{Mesh, Proxy};
use crate::{empty, full, h1_client, h2c_client, text};

const ALLOW_CLIENT_API: &str = r#"
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: server-allow-client, namespace: test}
spec:
  selector: {serviceAccounts: [server]}
  action: ALLOW
  rules:
    - from: {identities: ["spiffe://cluster.local/ns/test/sa/client"]}
      to: {methods: [GET, POST], paths: ["/api/*"]}
    - from: {namespaces: [test]}
      to: {paths: ["/grpc.test.Echo/*"]}
"#;

const ALLOW_TCP: &str = r#"
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: server-allow-tcp, namespace: test}
spec:
  action: ALLOW
  rules: [{from: {identities: ["spiffe://cluster.local/ns/test/*"]}}]
"#;

const DENY_CLIENT: &str = r#"
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: server-deny-client, namespace: test}
spec:
  action: DENY
  rules: [{from: {identities: ["spiffe://cluster.local/ns/test/sa/client"]}}]
"#;

/// A server with policies from `dir` (default deny), audit log in `dir/../audit.log`.
pub async fn server(mesh: &Mesh, app: std::net::SocketAddr, dir: &Path) -> Proxy {
    mesh.proxy_from_config(server_config(mesh, app, dir)).await
}

/// The configuration of [`server`], for tests that start it themselves.
pub fn server_config(mesh: &Mesh, app: std::net::SocketAddr, dir: &Path) -> ProxyConfig {
    let mut config: ProxyConfig = mesh.workload("server");
    config.inbound = vec![InboundListener {
        listen: "127.0.0.1:0".parse().unwrap(),
        app,
        protocol: AppProtocol::Auto,
    }];
    config.authorization.policy_dir = Some(dir.to_path_buf());
    config.authorization.reload_interval = Duration::from_millis(50);
    config.authorization.audit_log = dir
        .parent()
        .unwrap()
        .join("audit.log")
        .display()
        .to_string();
    config
}

async fn status_of(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
) -> (u16, http::HeaderMap, String) {
    let mut client = h1_client(addr).await;
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "s")
        .body(empty())
        .unwrap();
    let resp = client.send_request(req).await.unwrap();
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    (status, headers, text(resp).await)
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..600 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within 30s");
}

#[tokio::test]
async fn policies_decide_changes_apply_at_once_and_every_denial_is_audited() {
    let mesh = Mesh::start().await;
    let policies = mesh.dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(policies.join("allow.yaml"), ALLOW_CLIENT_API).unwrap();
    let (app, hits) = apps::http_app().await;
    let server = server(&mesh, app, &policies).await;
    let client = mesh
        .client_named("client", &server, RouteProtocol::Detect)
        .await;
    let intruder = mesh
        .client_named("intruder", &server, RouteProtocol::Detect)
        .await;
    let (via_client, via_intruder) = (client.addrs.outbound[0], intruder.addrs.outbound[0]);

    assert_eq!(status_of(via_client, "GET", "/api/orders").await.0, 200);
    assert_eq!(status_of(via_client, "POST", "/api/orders").await.0, 200);
    let (status, headers, body) = status_of(via_client, "DELETE", "/api/orders").await;
    assert_eq!((status, body.as_str()), (403, "forbidden by policy\n"));
    let denied_id = headers["x-warden-request-id"].to_str().unwrap().to_string();
    assert_eq!(status_of(via_client, "GET", "/admin").await.0, 403);
    // Dot segments cannot smuggle a request past the path rule.
    assert_eq!(status_of(via_client, "GET", "/api/../admin").await.0, 403);
    assert_eq!(
        status_of(via_client, "GET", "/api/%2e%2e/admin").await.0,
        403
    );
    assert_eq!(
        status_of(via_client, "GET", "/api%2f..%2fadmin").await.0,
        400
    );
    // Another workload of the mesh, authenticated but not allowed.
    assert_eq!(status_of(via_intruder, "GET", "/api/orders").await.0, 403);
    // gRPC: PERMISSION_DENIED for the intruder, allowed for the namespace.
    let mut grpc = h2c_client(via_intruder).await;
    let req = Request::post("http://s/secret.Svc/Get")
        .header("content-type", "application/grpc")
        .body(full("x"))
        .unwrap();
    assert_eq!(
        grpc.send_request(req).await.unwrap().headers()["grpc-status"],
        "7"
    );
    let mut grpc = h2c_client(via_intruder).await;
    let req = Request::post("http://s/grpc.test.Echo/Unary")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(apps::grpc_frame(b"hi")))
        .unwrap();
    let resp = grpc.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        !resp.headers().contains_key("grpc-status"),
        "not refused by the proxy"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        3,
        "only allowed requests reached the app"
    );

    // A DENY for the client takes effect for new requests at once.
    std::fs::write(policies.join("deny.yaml"), DENY_CLIENT).unwrap();
    eventually("the DENY applies", async || {
        status_of(via_client, "GET", "/api/orders").await.0 == 403
    })
    .await;

    // The audit log: every denial, hash-chained, with the id the client saw. Records are
    // written by the log's own thread, so the last ones may take a moment.
    let path = mesh.dir.path().join("audit.log");
    let mut log = String::new();
    for _ in 0..500 {
        log = std::fs::read_to_string(&path).unwrap_or_default();
        if log
            .lines()
            .filter(|l| l.contains("\"decision\":\"deny\""))
            .count()
            >= 7
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let store = warden_identity::TrustStore::single(mesh.ca.get().bundle().clone());
    let check = |cp: &warden_core::audit::Checkpoint| {
        warden_identity::audit_signature::check(&store, cp).map(|id| id.to_string())
    };
    let report = warden_core::audit::verify::verify(&[("audit.log".into(), log.clone())], &check);
    assert_ne!(report.status, Status::Tampered, "{report:#?}");
    assert_eq!(report.chains.len(), 1);
    // The epoch and 7 denials (the 400 is refused before authorization).
    assert!(report.chains[0].records >= 8, "{report:#?}");
    let record: serde_json::Value = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["request_id"] == denied_id.as_str())
        .expect("the denied request is in the audit log");
    assert_eq!(record["decision"], "deny");
    assert_eq!(record["client"], "spiffe://cluster.local/ns/test/sa/client");
    assert_eq!(
        record["workload"],
        "spiffe://cluster.local/ns/test/sa/server"
    );
    assert_eq!(record["method"], "DELETE");
    assert_eq!(record["path"], "/api/orders");
    assert!(record["client_addr"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert!(
        record["reason"]
            .as_str()
            .unwrap()
            .contains("no ALLOW policy"),
        "{record}"
    );
    assert!(
        log.contains("\"policy\":\"test/server-deny-client\""),
        "the DENY decided later"
    );
    let metrics = mesh.metrics.render();
    assert!(
        metrics.contains("warden_authz_decisions_total{decision=\"deny\",policy=\"no-match\"}"),
        "{metrics}"
    );
    assert!(metrics.contains(
        "warden_authz_decisions_total{decision=\"allow\",policy=\"test/server-allow-client\"}"
    ));
}

#[tokio::test]
async fn a_live_tcp_connection_that_a_new_policy_denies_is_closed() {
    let mesh = Mesh::start().await;
    let policies = mesh.dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(policies.join("allow.yaml"), ALLOW_TCP).unwrap();
    let (app, conns) = apps::tcp_app(None).await;
    let server = server(&mesh, app, &policies).await;
    let client = mesh
        .client_named("client", &server, RouteProtocol::Opaque)
        .await;
    let mut tcp = TcpStream::connect(client.addrs.outbound[0]).await.unwrap();
    tcp.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    tcp.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"before");
    assert_eq!(conns.load(Ordering::SeqCst), 1);

    std::fs::write(policies.join("deny.yaml"), DENY_CLIENT).unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if tcp.write_all(b"x").await.is_err() {
                return;
            }
            match tokio::time::timeout(Duration::from_millis(100), tcp.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                _ => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the connection was closed after the policy change"
    );
}

#[tokio::test]
async fn a_live_websocket_that_a_new_policy_denies_is_closed() {
    use futures_util::{SinkExt, StreamExt};
    let mesh = Mesh::start().await;
    let policies = mesh.dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(policies.join("allow.yaml"), ALLOW_TCP).unwrap();
    let server = server(&mesh, apps::websocket_app().await, &policies).await;
    let client = mesh
        .client_named("client", &server, RouteProtocol::Detect)
        .await;
    let tcp = TcpStream::connect(client.addrs.outbound[0]).await.unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async("ws://server.test/chat", tcp)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    ws.send("before".into()).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    assert!(
        matches!(reply, Ok(Some(Ok(ref m))) if m.to_text().is_ok_and(|t| t.ends_with("said before"))),
        "{reply:?}"
    );

    // Written beside, then renamed in: the watcher never reads it half-written.
    std::fs::write(policies.join("deny.staged"), DENY_CLIENT).unwrap();
    std::fs::rename(policies.join("deny.staged"), policies.join("deny.yaml")).unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if ws.send("x".into()).await.is_err() {
                return;
            }
            match tokio::time::timeout(Duration::from_millis(100), ws.next()).await {
                Ok(None | Some(Err(_))) => return,
                Ok(Some(Ok(m))) if m.is_close() => return,
                _ => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the WebSocket was closed after the policy change"
    );
}

#[tokio::test]
async fn a_bad_policy_file_keeps_the_last_good_set_and_ready_says_so() {
    let mesh = Mesh::start().await;
    let policies = mesh.dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(policies.join("allow.yaml"), ALLOW_CLIENT_API).unwrap();
    let (app, _) = apps::http_app().await;
    let server = server(&mesh, app, &policies).await;
    let client = mesh
        .client_named("client", &server, RouteProtocol::Detect)
        .await;
    let ready = server.admin("/ready").await;
    assert!(ready.contains("policies: 1 in force"), "{ready}");

    // A broken edit that would, if it took effect, remove the allow.
    crate::fixture::replace_file(
        &policies.join("allow.yaml"),
        &ALLOW_CLIENT_API.replace("ALLOW", "PERMIT"),
    );
    eventually("ready reports the failure", async || {
        server
            .admin("/ready")
            .await
            .contains("the last reload failed")
    })
    .await;
    let ready = server.admin("/ready").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "still serving: {ready}");
    assert!(
        ready.contains("allow.yaml: document 1: field spec.action"),
        "{ready}"
    );
    assert_eq!(
        status_of(client.addrs.outbound[0], "GET", "/api/x").await.0,
        200,
        "last good policy in force"
    );
    assert!(mesh
        .metrics
        .render()
        .contains("warden_policy_reloads_total{result=\"failure\"}"));

    crate::fixture::replace_file(&policies.join("allow.yaml"), ALLOW_CLIENT_API);
    eventually("ready recovers", async || {
        server
            .admin("/ready")
            .await
            .contains("policies: 1 in force")
    })
    .await;
}

#[tokio::test]
async fn an_audit_log_that_cannot_be_written_fails_open_or_closed_as_configured() {
    use warden_proxy::audit::AuditFailure;
    // /dev/full takes the open and refuses every write (no space left), as a full disk does.
    for failure in [AuditFailure::Allow, AuditFailure::Deny] {
        let mesh = Mesh::start().await;
        let policies = mesh.dir.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        std::fs::write(policies.join("allow.yaml"), ALLOW_CLIENT_API).unwrap();
        let (app, hits) = apps::http_app().await;
        let mut config = server_config(&mesh, app, &policies);
        config.authorization.audit_log = "/dev/full".into();
        config.authorization.log_allowed = true;
        config.authorization.audit_failure = failure;
        // Not waited for: with `deny` it never becomes ready.
        let authz = warden_proxy::proxy::authorizer(&config, CancellationToken::new()).unwrap();
        let server = mesh.spawn_proxy(config, authz).await;
        let client = mesh
            .client_named("client", &server, RouteProtocol::Detect)
            .await;
        // The epoch record's write fails at start; /ready says so.
        eventually("/ready reports the failing audit log", async || {
            server
                .admin("/ready")
                .await
                .contains("No space left on device")
        })
        .await;
        let ready = server.admin("/ready").await;
        let (status, _, body) = status_of(client.addrs.outbound[0], "GET", "/api/orders").await;
        let metrics = server.admin("/metrics").await;
        match failure {
            AuditFailure::Allow => {
                assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
                assert!(ready.contains("audit: writes are failing"), "{ready}");
                assert_eq!(status, 200, "served; the record is lost and counted");
                assert_eq!(hits.load(Ordering::SeqCst), 1);
            }
            AuditFailure::Deny => {
                assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
                assert!(ready.contains("audit_failure is deny"), "{ready}");
                assert_eq!(status, 503, "refused: {body}");
                assert!(body.contains("audit log is unavailable"), "{body}");
                assert_eq!(hits.load(Ordering::SeqCst), 0, "nothing reached the app");
                assert!(
                    metrics.contains("warden_audit_refused_total 1"),
                    "{metrics}"
                );
            }
        }
        assert!(
            metrics.contains("warden_audit_records_dropped_total{reason=\"write_error\"}"),
            "{metrics}"
        );
    }
}
