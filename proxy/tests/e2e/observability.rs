//! What dashboards scrape: the live exposition of proxies that served HTTP, gRPC, TCP,
//! denied and failed traffic passes `promtool check metrics`, and has every metric the
//! Grafana dashboard queries.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warden_proxy::config::{AppProtocol, InboundListener, OutboundRoute, RouteProtocol};

use crate::apps;
use crate::fixture::{id, Mesh};
use crate::{empty, full, h1_client, h2c_client};

/// Fails under CI=true when the tool is missing; elsewhere says so and skips.
fn require_tool(tool: &str, package: &str) -> bool {
    if Command::new(tool).arg("--version").output().is_ok() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{tool} is required under CI=true: apt-get install -y {package} (scripts/test.sh does)"
        );
    }
    eprintln!("SKIPPED: {tool} not installed (apt-get install -y {package})");
    false
}

/// `PORT` is the HTTP app's: the path rule constrains only that port, so the TCP app's
/// port still carries opaque TCP.
const POLICY: &str = r#"
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: server-deny-secret, namespace: test}
spec:
  action: DENY
  rules: [{to: {ports: [PORT], paths: ["/secret*"]}}]
---
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: server-allow-test, namespace: test}
spec:
  action: ALLOW
  rules: [{from: {namespaces: [test]}}]
"#;

/// Every metric name a dashboard expression uses.
fn dashboard_metrics() -> BTreeSet<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/warden-dashboard.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut names = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let identifiers = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
            names.extend(
                identifiers
                    .filter(|w| w.starts_with("warden_") || w.starts_with("process_"))
                    .map(str::to_string),
            );
        }
    }
    names
}

#[tokio::test]
async fn the_exposition_passes_promtool_and_feeds_every_dashboard_query() {
    let mesh = Mesh::start().await;
    let policies = mesh.dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    let (http_app, _) = apps::http_app().await;
    std::fs::write(
        policies.join("p.yaml"),
        POLICY.replace("PORT", &http_app.port().to_string()),
    )
    .unwrap();
    let (tcp_app, _) = apps::tcp_app(None).await;
    let closed = crate::fixture::closed_port();
    let nowhere = closed.addr;
    let mut server = mesh.workload("server");
    server.inbound = [http_app, tcp_app, nowhere]
        .into_iter()
        .map(|app| InboundListener {
            listen: "127.0.0.1:0".parse().unwrap(),
            app,
            protocol: AppProtocol::Auto,
        })
        .collect();
    server.authorization.policy_dir = Some(policies);
    server.authorization.audit_log = "off".into();
    let server = mesh.proxy_from_config(server).await;
    let mut client = mesh.workload("client");
    client.outbound = server
        .addrs
        .inbound
        .iter()
        .zip([
            RouteProtocol::Detect,
            RouteProtocol::Opaque,
            RouteProtocol::Detect,
        ])
        .map(|(destination, protocol)| OutboundRoute {
            listen: "127.0.0.1:0".parse().unwrap(),
            destination: *destination,
            identity: Some(id("server")),
            protocol,
        })
        .collect();
    let client = mesh
        .proxy(client, warden_proxy::authz::Authorizer::allow_all())
        .await;
    let (to_http, to_tcp, to_nowhere) = (
        client.addrs.outbound[0],
        client.addrs.outbound[1],
        client.addrs.outbound[2],
    );

    // HTTP allowed, HTTP denied, HTTP failed (502), gRPC, opaque TCP.
    let mut h1 = h1_client(to_http).await;
    for (path, status) in [("/", 200), ("/secret", 403)] {
        h1.ready().await.unwrap();
        let resp = h1
            .send_request(
                Request::get(path)
                    .header("host", "s")
                    .body(empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), status);
    }
    let mut failed = h1_client(to_nowhere).await;
    let resp = failed
        .send_request(Request::get("/").header("host", "s").body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let mut grpc = h2c_client(to_http).await;
    let req = Request::post("http://s/grpc.test.Echo/Unary")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(apps::grpc_frame(b"hi")))
        .unwrap();
    assert_eq!(grpc.send_request(req).await.unwrap().status(), 200);
    let mut tcp = TcpStream::connect(to_tcp).await.unwrap();
    tcp.write_all(b"bytes").await.unwrap();
    let mut buf = [0u8; 5];
    tcp.read_exact(&mut buf).await.unwrap();
    drop(tcp);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let response = server.admin("/metrics").await;
    let exposition = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    assert!(
        exposition.contains("warden_requests_total{"),
        "{exposition}"
    );

    // Every Warden series has help text; the process metrics are there.
    for line in exposition
        .lines()
        .filter(|l| l.starts_with("# TYPE warden_"))
    {
        let name = line.split_whitespace().nth(2).unwrap();
        assert!(
            exposition.contains(&format!("# HELP {name} ")),
            "{name} has no HELP"
        );
    }
    // Every metric the dashboard queries is exposed (histograms as _bucket/_sum/_count).
    let missing: Vec<String> = dashboard_metrics()
        .into_iter()
        .filter(|name| !exposition.lines().any(|l| l.starts_with(name.as_str())))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics that are not exposed: {missing:?}"
    );
    assert!(dashboard_metrics().len() >= 12);

    if !require_tool("promtool", "prometheus") {
        return;
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
