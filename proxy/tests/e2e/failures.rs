//! Failures, limits and refusals: every one bounded, answered, and counted.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warden_core::TrustDomain;
use warden_identity::ca::{self, InitOptions};
use warden_identity::{tls, ExpectedPeer, TrustStore};
use warden_proxy::authz::{Authorizer, Verdict};
use warden_proxy::config::{AppProtocol, RouteProtocol};

use crate::apps;
use crate::fixture::{closed_port, id, raw_get, reserved_port, Mesh};
use crate::{empty, full, h1_client, h2c_client, text};

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, http::HeaderMap, String) {
    let mut client = h1_client(addr).await;
    let resp = client
        .send_request(
            Request::get(path)
                .header("host", "s")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    (status, headers, text(resp).await)
}

#[tokio::test]
async fn an_unreachable_destination_is_502_for_http_and_a_reset_for_tcp() {
    let mesh = Mesh::start().await;
    let closed = closed_port();
    let nowhere = closed.addr;
    let client = mesh.client_to(nowhere, None, RouteProtocol::Detect).await;
    let (status, headers, body) = get(client.addrs.outbound[0], "/").await;
    assert_eq!(status, 502, "{body}");
    assert!(headers.contains_key("x-warden-request-id"));
    assert!(body.contains("unreachable"), "{body}");

    let opaque = mesh.client_to(nowhere, None, RouteProtocol::Opaque).await;
    let mut tcp = TcpStream::connect(opaque.addrs.outbound[0]).await.unwrap();
    let wrote = tcp.write_all(b"hello").await;
    let mut buf = [0u8; 8];
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .unwrap();
    let reset = |e: &std::io::Error| {
        use std::io::ErrorKind::{BrokenPipe, ConnectionReset};
        matches!(e.kind(), ConnectionReset | BrokenPipe)
    };
    match (wrote, read) {
        // The reset arrived before the write, which reported it.
        (Err(e), Ok(0)) if reset(&e) => {}
        (_, Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        (wrote, Ok(n)) => panic!("expected a reset; the write gave {wrote:?}, the read {n} bytes"),
    }
}

#[tokio::test]
async fn an_app_that_is_down_is_502_and_a_slow_one_504() {
    let mesh = Mesh::start().await;
    let closed = closed_port();
    let pair = mesh
        .pair(
            closed.addr,
            AppProtocol::Auto,
            RouteProtocol::Detect,
            Authorizer::allow_all(),
        )
        .await;
    let (status, _, body) = get(pair.outbound, "/").await;
    assert_eq!(status, 502, "{body}");

    let (app, _) = apps::http_app().await;
    let pair = mesh
        .pair_with(
            app,
            AppProtocol::Auto,
            RouteProtocol::Detect,
            Authorizer::allow_all(),
            |c| {
                c.timeouts.response = Duration::from_millis(300);
            },
        )
        .await;
    // The app would answer after 30 s: an answer well before that is the timeout's.
    let started = Instant::now();
    let (status, headers, body) = get(pair.outbound, "/slow/30000").await;
    assert_eq!(status, 504, "{body}");
    assert!(headers.contains_key("x-warden-request-id"));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded by the response timeout"
    );

    // A burst of 300 at once against the slow app: each is answered 504 within the response
    // timeout (nothing queues behind them: one after another would take 90 s), and a fast
    // request is served right after.
    let started = Instant::now();
    let burst: Vec<_> = (0..300)
        .map(|_| {
            let addr = pair.outbound;
            tokio::spawn(async move { get(addr, "/slow/30000").await.0 })
        })
        .collect();
    for request in burst {
        assert_eq!(request.await.unwrap(), 504);
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the burst is bounded by the response timeout ({:?})",
        started.elapsed()
    );
    assert_eq!(get(pair.outbound, "/").await.0, 200);

    // gRPC callers get a gRPC status instead.
    let mut grpc = h2c_client(pair.outbound).await;
    let req = Request::post("http://s/slow/3000")
        .header("content-type", "application/grpc")
        .body(empty())
        .unwrap();
    let resp = grpc.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["grpc-status"], "4", "DEADLINE_EXCEEDED");
}

#[tokio::test]
async fn peers_failing_verification_are_refused_and_the_app_gets_nothing() {
    let mesh = Mesh::start().await;
    let (app, hits) = apps::http_app().await;
    let pair = mesh.open_pair(app).await;
    let inbound = pair.server.addrs.inbound[0];

    // A workload with a certificate from another CA, claiming to be the client.
    let rogue_ca = ca::generate(&InitOptions::new(TrustDomain::default()))
        .unwrap()
        .authority()
        .unwrap();
    let rogue = rogue_ca
        .issue(&id("client"), Duration::from_secs(3600))
        .unwrap();
    let config = tls::client_config(
        &rogue,
        Arc::new(TrustStore::single(mesh.ca.get().bundle().clone())),
        ExpectedPeer::AnyTrusted,
        &[warden_core::contract::ALPN_HTTP2],
    )
    .unwrap();
    let tcp = TcpStream::connect(inbound).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(tls::mesh_server_name(), tcp)
        .await;
    if let Ok(mut stream) = stream {
        // TLS 1.3: the client finishes first; the server's refusal arrives on the next read.
        let _ = stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .unwrap();
        assert!(
            !matches!(read, Ok(n) if n > 0),
            "the server must not talk to a rogue peer"
        );
    }

    // Plaintext straight to the inbound port.
    let answer = raw_get(inbound, "/").await;
    assert!(!answer.contains("HTTP/1.1 200"), "{answer}");

    // A client whose route expects another identity refuses the server.
    let wrong = mesh
        .client_to(inbound, Some(id("someone-else")), RouteProtocol::Detect)
        .await;
    let (status, _, body) = get(wrong.addrs.outbound[0], "/").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("mTLS"), "{body}");

    assert_eq!(hits.load(Ordering::SeqCst), 0, "the app saw none of it");
    let metrics = mesh.metrics.render();
    assert!(
        metrics.contains("warden_tls_handshakes_total{direction=\"inbound\",result=\"failure\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("warden_tls_handshakes_total{direction=\"outbound\",result=\"failure\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_authorization_hook_denies_requests_and_connections() {
    let mesh = Mesh::start().await;
    let (app, hits) = apps::http_app().await;
    let authz = Authorizer::from_fn(|req| match req.http {
        Some((_, path)) if path.starts_with("/secret") => Verdict::Deny {
            policy: "deny-secret".into(),
        },
        Some(_) => Verdict::Allow,
        None => Verdict::Deny {
            policy: "no-tcp".into(),
        },
    });
    let pair = mesh
        .pair(app, AppProtocol::Auto, RouteProtocol::Detect, authz.clone())
        .await;
    let (status, headers, body) = get(pair.outbound, "/secret/plans").await;
    assert_eq!(status, 403);
    assert_eq!(
        body, "forbidden by policy\n",
        "the client learns nothing more"
    );
    assert!(headers.contains_key("x-warden-request-id"));
    let (status, _, _) = get(pair.outbound, "/open").await;
    assert_eq!(status, 200);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "only the allowed request reached the app"
    );

    let mut grpc = h2c_client(pair.outbound).await;
    let req = Request::post("http://s/secret.Svc/Get")
        .header("content-type", "application/grpc")
        .body(full("x"))
        .unwrap();
    let resp = grpc.send_request(req).await.unwrap();
    assert_eq!(resp.headers()["grpc-status"], "7", "PERMISSION_DENIED");

    let (tcp_app, conns) = apps::tcp_app(None).await;
    let tcp_pair = mesh
        .pair(tcp_app, AppProtocol::Auto, RouteProtocol::Opaque, authz)
        .await;
    let mut tcp = TcpStream::connect(tcp_pair.outbound).await.unwrap();
    let _ = tcp.write_all(b"let me in").await;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .unwrap();
    assert!(!matches!(read, Ok(n) if n > 0), "closed without an answer");
    assert_eq!(conns.load(Ordering::SeqCst), 0, "no byte reached the app");
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_and_stops_accepting() {
    let mesh = Mesh::start().await;
    let (app, hits) = apps::http_app().await;
    let mut server = mesh.server(app).await;
    let mut config = mesh.client_config(
        server.addrs.inbound[0],
        Some(id("server")),
        RouteProtocol::Detect,
    );
    // A port the kernel gives no other socket, so that a refused connection after the exit
    // means this proxy stopped listening, not that a test alongside took its port.
    let outbound = std::net::SocketAddr::from(([127, 0, 0, 1], reserved_port()));
    config.outbound[0].listen = outbound;
    let mut client = mesh.proxy(config, Authorizer::allow_all()).await;
    let in_flight = tokio::spawn(async move { get(outbound, "/slow/800").await });
    // The request is at the app (which answers it 800 ms later) when shutdown begins.
    let deadline = Instant::now() + Duration::from_secs(30);
    while hits.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the request never reached the app"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.shutdown.cancel();
    client.shutdown.cancel();
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "slow done"),
        "the in-flight request completed"
    );
    // Both proxies exit within their grace period...
    for proxy in [&mut server, &mut client] {
        let task = proxy.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("exits in time")
            .unwrap();
    }
    // ...and accept nothing more.
    assert!(
        TcpStream::connect(outbound).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn admin_reports_readiness_and_metrics() {
    let mesh = Mesh::start().await;
    let (app, _) = apps::http_app().await;
    let pair = mesh.open_pair(app).await;
    let (status, _, _) = get(pair.outbound, "/").await;
    assert_eq!(status, 200);
    assert!(pair.server.admin("/live").await.starts_with("HTTP/1.1 200"));
    let ready = pair.server.admin("/ready").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    assert!(
        ready.contains(&format!("ready: {}", id("server"))),
        "{ready}"
    );
    let metrics = pair.server.admin("/metrics").await;
    for series in [
        "warden_requests_total{direction=\"inbound\",client_id=\"spiffe://cluster.local/ns/test/sa/client\",server_id=\"spiffe://cluster.local/ns/test/sa/server\",status_code=\"200\"}",
        "warden_request_duration_seconds_bucket{direction=\"inbound\"",
        "warden_tls_handshakes_total{direction=\"inbound\",result=\"success\"}",
        "warden_tls_handshake_duration_seconds_bucket{direction=\"outbound\"",
        "warden_tcp_connections_opened_total{direction=\"inbound\"}",
        "warden_tcp_connections_active{direction=\"outbound\"}",
        "warden_identity_cert_expiry_timestamp_seconds",
        "# HELP warden_requests_total",
    ] {
        assert!(metrics.contains(series), "{series} missing");
    }
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_and_counted() {
    let mesh = Mesh::start().await;
    let (app, _) = apps::tcp_app(None).await;
    let pair = mesh
        .pair_with(
            app,
            AppProtocol::Auto,
            RouteProtocol::Opaque,
            Authorizer::allow_all(),
            |_| {},
        )
        .await;
    let mut limited = mesh.workload("limited");
    limited.limits.max_connections = 1;
    limited.outbound = vec![warden_proxy::config::OutboundRoute {
        listen: "127.0.0.1:0".parse().unwrap(),
        destination: pair.server.addrs.inbound[0],
        identity: None,
        protocol: RouteProtocol::Opaque,
    }];
    let proxy = mesh.proxy(limited, Authorizer::allow_all()).await;
    let addr = proxy.addrs.outbound[0];
    let mut first = TcpStream::connect(addr).await.unwrap();
    first.write_all(b"one").await.unwrap();
    let mut buf = [0u8; 3];
    first.read_exact(&mut buf).await.unwrap();
    let mut second = TcpStream::connect(addr).await.unwrap();
    let _ = second.write_all(b"two").await;
    let read = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
        .await
        .unwrap();
    assert!(
        !matches!(read, Ok(n) if n > 0),
        "the second connection is refused"
    );
    first.write_all(b"one").await.unwrap();
    first.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"one", "the first is unaffected");
    assert!(mesh
        .metrics
        .render()
        .contains("warden_connections_refused_total{direction=\"outbound\"}"));
}

#[tokio::test]
async fn oversized_headers_are_refused_before_reaching_anyone() {
    let mesh = Mesh::start().await;
    let (app, hits) = apps::http_app().await;
    let pair = mesh.open_pair(app).await;
    // 100 KiB of headers against the default 64 KiB limit.
    let mut tcp = TcpStream::connect(pair.outbound).await.unwrap();
    let big = "x".repeat(100 * 1024);
    let req = format!("GET / HTTP/1.1\r\nhost: s\r\nx-big: {big}\r\n\r\n");
    let _ = tcp.write_all(req.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    // The proxy goes on serving others.
    let (status, _, _) = get(pair.outbound, "/").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn nothing_is_served_before_the_proxy_has_a_certificate() {
    let mesh = Mesh::start().await;
    let (app, hits) = apps::http_app().await;
    let mut config = mesh.workload("early");
    let ca_down = closed_port();
    config.identity.url = format!("https://{}", ca_down.addr);
    config.inbound = vec![warden_proxy::config::InboundListener {
        listen: "127.0.0.1:0".parse().unwrap(),
        app,
        protocol: AppProtocol::Auto,
    }];
    config.outbound = vec![warden_proxy::config::OutboundRoute {
        listen: "127.0.0.1:0".parse().unwrap(),
        destination: app,
        identity: None,
        protocol: RouteProtocol::Detect,
    }];
    let listeners = warden_proxy::proxy::Listeners::bind(&config).await.unwrap();
    let addrs = listeners.addrs();
    let source = warden_proxy::proxy::cert_source(&config).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(warden_proxy::proxy::run(
        config,
        listeners,
        source,
        Authorizer::allow_all(),
        warden_identity::admin::Telemetry::new(mesh.metrics.clone()),
        shutdown.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = raw_get(addrs.admin, "/ready").await;
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert!(ready.contains("waiting for a certificate"), "{ready}");
    for addr in [addrs.outbound[0], addrs.inbound[0]] {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let _ = tcp.write_all(b"GET / HTTP/1.1\r\nhost: s\r\n\r\n").await;
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut buf)).await;
        assert!(read.is_err(), "no answer before a certificate");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn permissive_mode_accepts_plaintext_as_unauthenticated_subject_to_the_hook() {
    let mesh = Mesh::start().await;
    let (app, hits) = apps::http_app().await;
    // Only authenticated callers may reach /private.
    let authz = Authorizer::from_fn(|req| match (req.client, req.http) {
        (None, Some((_, path))) if path.starts_with("/private") => Verdict::Deny {
            policy: "authenticated-only".into(),
        },
        _ => Verdict::Allow,
    });
    let pair = mesh
        .pair_with(app, AppProtocol::Auto, RouteProtocol::Detect, authz, |c| {
            c.inbound_mode = warden_proxy::config::InboundMode::Permissive;
        })
        .await;
    let inbound = pair.server.addrs.inbound[0];
    // A caller without a sidecar, straight to the inbound port, claiming an identity.
    let mut plain = h1_client(inbound).await;
    let req = Request::get("/headers")
        .header("host", "s")
        .header(
            "x-warden-client-id",
            "spiffe://cluster.local/ns/test/sa/client",
        )
        .header("connection", "keep-alive, upgrade, http2-settings")
        .header("upgrade", "h2c")
        .header("http2-settings", "AAMAAABkAAQAAP__")
        .body(empty())
        .unwrap();
    let resp = plain.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = text(resp).await;
    assert!(
        !seen.contains("x-warden-client-id"),
        "no identity for plaintext, and no spoofing: {seen}"
    );
    // It reaches the app as it was sent (HTTP/1.1), without this hop's upgrade headers.
    assert!(seen.starts_with("version: HTTP/1.1\n"), "{seen}");
    for hop in ["upgrade", "http2-settings", "connection"] {
        assert!(
            !seen.contains(&format!("\n{hop}:")),
            "{hop} reached the app: {seen}"
        );
    }
    plain.ready().await.unwrap();
    let resp = plain
        .send_request(
            Request::get("/private")
                .header("host", "s")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 403, "the hook saw an unauthenticated caller");
    // Meshed callers still arrive over mTLS with their identity.
    let (status, _, body) = get(pair.outbound, "/headers").await;
    assert_eq!(status, 200);
    assert!(
        body.contains(&format!("x-warden-client-id: {}", id("client"))),
        "{body}"
    );
    let (status, _, _) = get(pair.outbound, "/private").await;
    assert_eq!(status, 200);
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn an_identity_outage_past_expiry_fails_closed_and_recovers_by_itself() {
    // SVIDs of 6 s: renewal is due at ~3.7-4.2 s, expiry at 6 s.
    let mesh = Mesh::start_with_ttl(Duration::from_secs(6)).await;
    let (app, _) = apps::http_app().await;
    let pair = mesh.open_pair(app).await;
    let inbound = pair.server.addrs.inbound[0];
    let store = Arc::new(TrustStore::single(mesh.ca.get().bundle().clone()));
    // A fresh mTLS handshake with the server proxy, as a new peer would make: the
    // certificate it presented (its validity, Unix seconds), or the handshake's error.
    let handshake = || {
        let config = tls::client_config(
            &mesh
                .ca
                .get()
                .issue(&id("client"), Duration::from_secs(60))
                .unwrap(),
            store.clone(),
            ExpectedPeer::AnyTrusted,
            &[warden_core::contract::ALPN_HTTP2],
        )
        .unwrap();
        async move {
            let tcp = TcpStream::connect(inbound).await.unwrap();
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(tls::mesh_server_name(), tcp)
                .await?;
            let leaf = &tls.get_ref().1.peer_certificates().unwrap()[0];
            Ok::<_, std::io::Error>(warden_identity::inspect::validity_unix(leaf).unwrap())
        }
    };
    let unix_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
    };
    assert!(raw_get(pair.outbound, "/")
        .await
        .starts_with("HTTP/1.1 200"));
    assert!(pair
        .server
        .admin("/ready")
        .await
        .starts_with("HTTP/1.1 200"));

    // The outage starts right after a renewal, so that the certificate in force has most of
    // its life left however long the set-up took.
    let (first, _) = handshake().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while handshake().await.unwrap().0 == first {
        assert!(Instant::now() < deadline, "the server proxy never renewed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    mesh.identity_down().await;
    // No renewal can succeed from here on: this certificate is the last one.
    let (_, expiry) = handshake().await.unwrap();
    let expiry = Duration::from_secs(u64::try_from(expiry).unwrap());

    // Past the renewal time, the renewal failing, before expiry: still serving.
    let check_at = expiry - Duration::from_millis(1500);
    tokio::time::sleep(check_at.saturating_sub(unix_now())).await;
    assert!(
        pair.server
            .admin("/ready")
            .await
            .starts_with("HTTP/1.1 200"),
        "still serving on the current certificate before it expires"
    );
    handshake().await.expect("handshakes work until expiry");
    assert!(
        unix_now() < expiry,
        "the checks above ran before the certificate expired"
    );

    // Expired: not ready, and new peers refuse it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = loop {
        let ready = pair.server.admin("/ready").await;
        if ready.starts_with("HTTP/1.1 503") || Instant::now() > deadline {
            break ready;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(unix_now() >= expiry, "not before expiry: {ready}");
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert!(ready.contains("expired"), "{ready}");
    // notAfter is a whole second and counts as valid through it (RFC 5280): a verifier
    // refuses the certificate from the next second on.
    let refused_from = expiry + Duration::from_secs(1);
    tokio::time::sleep(refused_from.saturating_sub(unix_now())).await;
    let err = handshake().await.unwrap_err();
    assert!(
        err.to_string().contains("xpired"),
        "new peers refuse it: {err}"
    );

    // The CA comes back: the proxy renews by itself and serves again.
    mesh.identity_up().await;
    let mut ready = String::new();
    for _ in 0..300 {
        ready = pair.server.admin("/ready").await;
        if ready.starts_with("HTTP/1.1 200") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready.starts_with("HTTP/1.1 200"), "recovered: {ready}");
    handshake().await.expect("new handshakes work again");
}

#[tokio::test]
async fn exhausting_the_admin_port_leaves_the_mesh_listeners_serving() {
    let mesh = Mesh::start().await;
    let (app, hits) = apps::http_app().await;
    let pair = mesh
        .pair_with(
            app,
            AppProtocol::Auto,
            RouteProtocol::Detect,
            Authorizer::allow_all(),
            |server| server.limits.max_admin_connections = 4,
        )
        .await;
    let admin = pair.server.addrs.admin;
    // Four idle connections hold every admin slot.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(admin).await.unwrap());
    }
    // Let the admin server accept all four before the fifth arrives (they are accepted in
    // order; a request on each proves it).
    for tcp in &mut held {
        tcp.write_all(b"GET /live HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        tcp.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
    }
    let refused = raw_get(admin, "/live").await;
    assert_eq!(refused, "", "the fifth admin connection is closed at once");
    // The mesh listeners do not share the admin port's budget.
    for _ in 0..3 {
        assert_eq!(get(pair.outbound, "/api").await.0, 200);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    assert!(mesh
        .metrics
        .render()
        .contains("warden_server_connections_refused_total{server=\"admin\"}"));
    // A slot freed is a slot served.
    drop(held.pop());
    let mut served = String::new();
    for _ in 0..1500 {
        served = raw_get(admin, "/live").await;
        if !served.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
}

#[tokio::test]
async fn a_tls_session_resumed_past_the_callers_svid_is_refused_before_the_app() {
    use rustls::HandshakeKind;
    use warden_core::contract::ALPN_TCP;
    let mesh = Mesh::start().await;
    let (app, connections) = apps::tcp_app(None).await;
    let server = mesh.server(app).await;
    let inbound = server.addrs.inbound[0];
    let store = Arc::new(TrustStore::single(mesh.ca.get().bundle().clone()));
    // A caller whose SVID lives 2 s and is not renewed, with one configuration: its second
    // connection resumes the first's session, which no verifier checks again.
    let svid = mesh
        .ca
        .get()
        .issue(&id("client"), Duration::from_secs(2))
        .unwrap();
    let config = tls::client_config(
        &svid,
        store.clone(),
        ExpectedPeer::Exact(id("server")),
        &[ALPN_TCP],
    )
    .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    // One connection: its handshake's kind, and the app's echo or how it ended.
    let round = || async {
        let tcp = TcpStream::connect(inbound).await.unwrap();
        let mut tls = connector
            .connect(tls::mesh_server_name(), tcp)
            .await
            .unwrap();
        let kind = tls.get_ref().1.handshake_kind();
        tls.write_all(b"ping").await.unwrap();
        // The server's session tickets come before the echo.
        let mut echo = [0u8; 4];
        let read = tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut echo))
            .await
            .expect("echoed or closed");
        (kind, read.map(|_| echo))
    };
    let (kind, echo) = round().await;
    assert_eq!(kind, Some(HandshakeKind::Full));
    assert_eq!(&echo.unwrap(), b"ping");
    assert_eq!(connections.load(Ordering::SeqCst), 1);

    // Past its notAfter (a whole second, valid through it).
    let (_, not_after) = warden_identity::inspect::validity_unix(&svid.chain()[0]).unwrap();
    let unix_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    while unix_now() <= not_after {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (kind, echo) = round().await;
    assert_eq!(
        kind,
        Some(HandshakeKind::Resumed),
        "the session was resumed"
    );
    assert!(echo.is_err(), "closed, not relayed: {echo:?}");
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "the resumed connection never reached the app"
    );

    // A proxy holding that SVID (its renewal failing) opens no connection, and says why.
    let options = warden_identity::rotation::TlsOptions {
        server_alpn: vec![ALPN_TCP.to_vec()],
        client_alpn: vec![ALPN_TCP.to_vec()],
        client_auth: tls::ClientAuth::Required,
    };
    let credentials = warden_identity::rotation::Credentials::build(svid, store, &options).unwrap();
    let (_keep, credentials) = tokio::sync::watch::channel(Arc::new(credentials));
    let connector = warden_proxy::mesh::MeshConnector::new(
        credentials,
        Duration::from_secs(5),
        Duration::from_secs(5),
    );
    let err = connector
        .connect(inbound, &[id("server")], ALPN_TCP)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("SVID {} expired at", id("client")))
            && err.contains("renewal is failing"),
        "{err}"
    );
}
