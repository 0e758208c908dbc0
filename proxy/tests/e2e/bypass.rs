//! The security review's ways around a DENY, against a running pair with real policies: a
//! caller allowed to a port tries every spelling and framing of a denied request. Each must
//! be refused, and the app must see only what was authorized, exactly as authorized.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use warden_core::policy::evaluate::DefaultPolicy;
use warden_proxy::authz::Authorizer;
use warden_proxy::config::{AppProtocol, InboundMode, ProxyConfig, RouteProtocol};

use crate::apps;
use crate::fixture::{id, Mesh};
use crate::policy::{server, server_config};

/// The client may call the app's port; nothing under /admin, no DELETE, no GET of /private.
fn policies(port: u16) -> String {
    format!(
        r#"
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: allow-client, namespace: test}}
spec:
  selector: {{serviceAccounts: [server]}}
  action: ALLOW
  rules: [{{from: {{identities: ["spiffe://cluster.local/ns/test/sa/client"]}}, to: {{ports: [{port}]}}}}]
---
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: deny-admin, namespace: test}}
spec:
  selector: {{serviceAccounts: [server]}}
  action: DENY
  rules:
    - to: {{paths: ["/admin*"]}}
    - to: {{methods: [DELETE]}}
    - to: {{methods: [GET], paths: ["/private*"]}}
"#
    )
}

/// Sends `bytes` to `addr` after `delay` and reads until the peer closes (or 5 s).
async fn raw(addr: SocketAddr, delay: Duration, bytes: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(delay).await;
    let _ = tcp.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn request(line: &str) -> Vec<u8> {
    format!("{line}\r\nhost: s\r\nconnection: close\r\n\r\n").into_bytes()
}

/// Sends `request` to `addr` and checks that the app answered it, reading no identity
/// header (the app's answer is the identities it read: none here).
async fn served_without_an_identity(addr: SocketAddr, request: &str) {
    let response = raw(addr, Duration::ZERO, request.as_bytes()).await;
    assert_eq!(status(&response), 200, "{response}");
    assert!(
        response.ends_with("\r\n\r\n"),
        "no identity header: {response}"
    );
}

fn status(response: &str) -> u16 {
    response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn no_spelling_or_framing_of_a_denied_request_reaches_the_app() {
    let mesh = Mesh::start().await;
    let dir = mesh.dir.path().join("policies");
    std::fs::create_dir(&dir).unwrap();
    let (app, hits) = apps::http_app().await;
    std::fs::write(dir.join("p.yaml"), policies(app.port())).unwrap();
    let server = server(&mesh, app, &dir).await;
    let client = mesh
        .client_named("client", &server, RouteProtocol::Detect)
        .await;
    let opaque = mesh
        .client_named("client", &server, RouteProtocol::Opaque)
        .await;
    let (out, out_opaque) = (client.addrs.outbound[0], opaque.addrs.outbound[0]);
    let now = Duration::ZERO;

    assert_eq!(
        status(&raw(out, now, &request("GET /api HTTP/1.1")).await),
        200
    );
    let allowed = hits.load(Ordering::SeqCst);

    // Framings that made the client's proxy send opaque TCP: a first byte after the detect
    // timeout, a request line over 8 KiB, or an opaque route. The port is constrained by
    // HTTP fields, so the server's proxy refuses opaque TCP there: closed, nothing served.
    let slow = raw(
        out,
        Duration::from_millis(2500),
        &request("GET /admin HTTP/1.1"),
    )
    .await;
    assert_eq!(status(&slow), 0, "{slow}");
    let long = format!("GET /admin?{} HTTP/1.1", "a".repeat(9000));
    assert_eq!(status(&raw(out, now, &request(&long)).await), 0);
    let chosen = raw(out_opaque, now, &request("GET /admin HTTP/1.1")).await;
    assert_eq!(status(&chosen), 0, "{chosen}");
    // Framings HTTP servers accept are HTTP here too, and decided as such.
    for line in [
        "\r\nGET /admin HTTP/1.1",
        "get /admin HTTP/1.1",
        "delete /api HTTP/1.1",
        "Delete /api HTTP/1.1",
    ] {
        let response = raw(out, now, &request(line)).await;
        assert_eq!(status(&response), 403, "{line:?}: {response}");
    }
    // Spellings of /admin that apps decode to /admin.
    for (line, want) in [
        ("GET /%61dmin HTTP/1.1", 403),
        ("GET /%41dmin HTTP/1.1", 200), // /Admin is another path
        ("GET //admin HTTP/1.1", 403),
        ("GET /api/..//admin HTTP/1.1", 403),
        ("GET /api/%2e%2e/admin HTTP/1.1", 403),
        ("GET /admin;x HTTP/1.1", 400),
        ("GET /api/..;/admin HTTP/1.1", 400),
        ("GET /admin%2f HTTP/1.1", 400),
    ] {
        let response = raw(out, now, &request(line)).await;
        assert_eq!(status(&response), want, "{line:?}: {response}");
    }
    // A WebSocket upgrade is the GET the app sees: a GET DENY holds, and the app's non-101
    // answer is never reached.
    let upgrade = "GET /private HTTP/1.1\r\nhost: s\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let response = raw(out, now, upgrade.as_bytes()).await;
    assert_eq!(status(&response), 403, "{response}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        allowed + 1,
        "only /Admin reached the app"
    );

    // The app receives exactly the authorized path.
    let response = raw(out, now, &request("GET /%73tatus//./200 HTTP/1.1")).await;
    assert_eq!(status(&response), 200, "{response}");
    assert!(response.contains("path: /status/200\n"), "{response}");
    let response = raw(out, now, &request("get /status/200 HTTP/1.1")).await;
    assert!(response.contains("method: GET\n"), "{response}");

    // The audit log says what the app would have seen (written by the log's own thread, so
    // the last records may take a moment).
    let mut records: Vec<serde_json::Value> = Vec::new();
    for _ in 0..500 {
        let log = std::fs::read_to_string(mesh.dir.path().join("audit.log")).unwrap();
        records = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let opaque_denied =
            |r: &serde_json::Value| r["method"].is_null() && r["decision"] == "deny";
        if records.iter().any(|r| r["path"] == "/private") && records.iter().any(opaque_denied) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let upgrade = records
        .iter()
        .find(|r| r["path"] == "/private")
        .expect("the upgrade was audited");
    assert_eq!(upgrade["method"], "GET", "{upgrade}");
    assert_eq!(upgrade["decision"], "deny");
    let tcp = records
        .iter()
        .find(|r| r["method"].is_null() && r["decision"] == "deny")
        .expect("the opaque connection was audited");
    assert!(
        tcp["reason"]
            .as_str()
            .unwrap()
            .contains("matched DENY policy test/deny-admin"),
        "{tcp}"
    );
}

/// What a WSGI, CGI or PHP app reads as `HTTP_X_WARDEN_CLIENT_ID`: every header whose name,
/// upper-cased with `-` as `_`, is that, joined with `,` as wsgiref joins repeated headers.
async fn wsgi_style_app() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = requests.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: Request<hyper::body::Incoming>| {
                        counted.fetch_add(1, Ordering::SeqCst);
                        let environ: Vec<&str> = req
                            .headers()
                            .iter()
                            .filter(|(name, _)| {
                                format!("HTTP_{}", name.as_str().to_uppercase().replace('-', "_"))
                                    == "HTTP_X_WARDEN_CLIENT_ID"
                            })
                            .map(|(_, v)| v.to_str().unwrap_or("?"))
                            .collect();
                        let body = environ.join(",");
                        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, requests)
}

#[tokio::test]
async fn no_spelling_of_the_identity_header_reaches_a_wsgi_app() {
    let mesh = Mesh::start().await;
    let (app, _) = wsgi_style_app().await;
    let pair = mesh
        .pair(
            app,
            AppProtocol::Http1,
            RouteProtocol::Detect,
            Authorizer::allow_all(),
        )
        .await;
    let spoofed = "GET / HTTP/1.1\r\nhost: s\r\nconnection: close\r\n\
        x_warden_client_id: spiffe://cluster.local/ns/test/sa/admin\r\n\
        X-Warden_Client-ID: spiffe://cluster.local/ns/test/sa/root\r\n\
        x-warden-client-id: spiffe://cluster.local/ns/test/sa/other\r\n\r\n";
    let response = raw(pair.outbound, Duration::ZERO, spoofed.as_bytes()).await;
    assert_eq!(status(&response), 200, "{response}");
    let body = response.rsplit("\r\n\r\n").next().unwrap();
    assert_eq!(
        body,
        id("client").as_str(),
        "the app reads the verified caller and only that"
    );
}

#[tokio::test]
async fn no_http_request_reaches_the_app_as_opaque_bytes_with_a_forged_identity() {
    let mesh = Mesh::start().await;
    let (app, requests) = wsgi_style_app().await;
    let forged = "x-warden-client-id: spiffe://cluster.local/ns/test/sa/admin\r\n";
    let spoofed = format!("GET / HTTP/1.1\r\nhost: s\r\nconnection: close\r\n{forged}\r\n");
    // A request line over the proxies' 8 KiB detection limit: the caller's proxy sends it as
    // opaque TCP, and hyper (as Go) still parses it, headers and all.
    let long = format!(
        "GET /{} HTTP/1.1\r\nhost: s\r\nconnection: close\r\n{forged}\r\n",
        "a".repeat(9 * 1024)
    );
    let permissive = |c: &mut ProxyConfig| c.inbound_mode = InboundMode::Permissive;
    let opaque_app_port = [app.port()];
    // (case, app protocol, route, ports the server declares opaque, bytes sent, served)
    let cases = [
        (
            "app declared HTTP, opaque route",
            AppProtocol::Http1,
            RouteProtocol::Opaque,
            &[][..],
            &spoofed,
            false,
        ),
        (
            "auto app, opaque route",
            AppProtocol::Auto,
            RouteProtocol::Opaque,
            &[],
            &spoofed,
            false,
        ),
        (
            "auto app, too long to detect",
            AppProtocol::Auto,
            RouteProtocol::Detect,
            &[],
            &long,
            false,
        ),
        // The port is declared opaque on the server's side: relayed unread, as documented
        // (the app must not trust the header there).
        (
            "auto app, port declared opaque",
            AppProtocol::Auto,
            RouteProtocol::Opaque,
            &opaque_app_port,
            &spoofed,
            true,
        ),
    ];
    for (case, protocol, route, opaque_ports, sent, served) in cases {
        let pair = mesh
            .pair_with(app, protocol, route, Authorizer::allow_all(), |c| {
                c.opaque_ports = opaque_ports.to_vec()
            })
            .await;
        let before = requests.load(Ordering::SeqCst);
        let response = raw(pair.outbound, Duration::ZERO, sent.as_bytes()).await;
        if served {
            assert_eq!(status(&response), 200, "{case}: {response}");
            assert!(response.ends_with("/sa/admin"), "{case}: {response}");
        } else {
            assert_eq!(response, "", "{case}: closed, not answered");
        }
        let reached = requests.load(Ordering::SeqCst) - before;
        assert_eq!(
            reached,
            usize::from(served),
            "{case}: requests the app read"
        );
    }
    // The control for the long case: the same line without a header of ours is relayed
    // and served, so it is the header that was refused, not the length.
    let pair = mesh
        .pair_with(
            app,
            AppProtocol::Auto,
            RouteProtocol::Detect,
            Authorizer::allow_all(),
            |_| {},
        )
        .await;
    served_without_an_identity(pair.outbound, &long.replace(forged, "")).await;
    // HTTP sent as opaque TCP without a header of ours is relayed, as any bytes are.
    let pair = mesh.opaque_pair(app).await;
    let plain = "GET / HTTP/1.1\r\nhost: s\r\nconnection: close\r\n\r\n";
    served_without_an_identity(pair.outbound, plain).await;
    // A caller without a sidecar (permissive mode) is read the same way.
    let pair = mesh
        .pair_with(
            app,
            AppProtocol::Auto,
            RouteProtocol::Detect,
            Authorizer::allow_all(),
            permissive,
        )
        .await;
    let inbound = pair.server.addrs.inbound[0];
    assert_eq!(raw(inbound, Duration::ZERO, long.as_bytes()).await, "");
    // What is HTTP still gets through, with the caller's real identity (none here).
    let response = raw(inbound, Duration::ZERO, spoofed.as_bytes()).await;
    assert_eq!(status(&response), 200, "{response}");
    assert!(
        response.ends_with("\r\n\r\n"),
        "no identity header: {response}"
    );
}

/// An HTTP/1.1 app that switches to h2c for any request asking it to (as lenient h2c servers
/// do) and otherwise answers `no upgrade`.
async fn h2c_upgrading_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && tcp.read(&mut byte).await.unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let answer = if head.contains("\r\nupgrade: h2c") {
                    "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n"
                } else {
                    "HTTP/1.1 200 OK\r\ncontent-length: 10\r\nconnection: close\r\n\r\nno upgrade"
                };
                let _ = tcp.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_h2c_upgrade_is_not_carried_so_no_unchecked_http2_reaches_the_app() {
    let mesh = Mesh::start().await;
    let pair = mesh.open_pair(h2c_upgrading_app().await).await;
    let asks = "GET / HTTP/1.1\r\nhost: s\r\nconnection: Upgrade, HTTP2-Settings, close\r\n\
        upgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n\r\n";
    let response = raw(pair.outbound, Duration::ZERO, asks.as_bytes()).await;
    assert_eq!(status(&response), 200, "{response}");
    assert!(response.ends_with("no upgrade"), "{response}");
}

#[tokio::test]
async fn a_proxy_that_never_loaded_a_good_policy_set_is_not_ready_and_denies() {
    let mesh = Mesh::start().await;
    let dir = mesh.dir.path().join("policies");
    std::fs::create_dir(&dir).unwrap();
    let (app, hits) = apps::http_app().await;
    std::fs::write(
        dir.join("p.yaml"),
        policies(app.port()).replace("action: DENY", "action: REFUSE"),
    )
    .unwrap();
    // Even with the permissive default, a bad set at startup denies (the DENY is not lost).
    let mut config = server_config(&mesh, app, &dir);
    config.authorization.default = DefaultPolicy::AllAuthenticated;
    let stop = tokio_util::sync::CancellationToken::new();
    let authz = warden_proxy::proxy::authorizer(&config, stop.clone()).unwrap();
    let server = mesh.spawn_proxy(config, authz).await;
    let mut ready = String::new();
    for _ in 0..1200 {
        ready = server.admin("/ready").await;
        if ready.contains("no good policy set") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert!(
        ready.contains("p.yaml: document 2: field spec.action"),
        "/ready names the bad file: {ready}"
    );
    let client = mesh
        .client_named("client", &server, RouteProtocol::Detect)
        .await;
    let out = client.addrs.outbound[0];
    assert_eq!(
        status(&raw(out, Duration::ZERO, &request("GET /api HTTP/1.1")).await),
        403
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0);

    // Fixed: ready, and the policies decide.
    std::fs::write(dir.join("p.yaml"), policies(app.port())).unwrap();
    for _ in 0..1200 {
        if server.admin("/ready").await.starts_with("HTTP/1.1 200") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(server
        .admin("/ready")
        .await
        .contains("policies: 2 in force"));
    assert_eq!(
        status(&raw(out, Duration::ZERO, &request("GET /api HTTP/1.1")).await),
        200
    );
    assert_eq!(
        status(&raw(out, Duration::ZERO, &request("GET /admin HTTP/1.1")).await),
        403
    );
    stop.cancel();
}
