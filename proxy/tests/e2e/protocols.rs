//! HTTP through a proxy pair: HTTP/1.1, HTTP/2, gRPC, WebSocket.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warden_proxy::authz::Authorizer;
use warden_proxy::config::RouteProtocol;

use crate::apps::{self, checksum, grpc_frame, grpc_messages, pattern};
use crate::fixture::{counting_relay, id, Mesh, Proxy};
use crate::{empty, full, h1_client, h2c_client, text};

/// The app gets the path the policy judged (dot segments resolved) with the query as the
/// caller sent it, from HTTP/1.1 and HTTP/2 callers alike; a path with nothing to resolve
/// passes as it was.
#[tokio::test]
async fn the_app_gets_the_normalized_path_and_the_query_as_sent() {
    let mesh = Mesh::start().await;
    let (app, _) = apps::http_app().await;
    let pair = mesh.open_pair(app).await;
    let cases = [
        ("/headers", "/headers"),
        ("/headers?a=1&b=%2F", "/headers?a=1&b=%2F"),
        ("/x/../headers?a=1&b=%2F", "/headers?a=1&b=%2F"),
        ("/./x/%2e%2e/headers", "/headers"),
    ];
    let mut h1 = h1_client(pair.outbound).await;
    let mut h2 = h2c_client(pair.outbound).await;
    for (sent, expected) in cases {
        h1.ready().await.unwrap();
        let req = Request::get(sent)
            .header("host", "server.test")
            .body(empty())
            .unwrap();
        let seen = text(h1.send_request(req).await.unwrap()).await;
        assert!(
            seen.contains(&format!("target: {expected}\n")),
            "HTTP/1.1 {sent}: {seen}"
        );
        assert!(seen.contains("version: HTTP/1.1\n"), "{seen}");
        let req = Request::get(format!("http://server.test{sent}"))
            .body(empty())
            .unwrap();
        let seen = text(h2.send_request(req).await.unwrap()).await;
        assert!(
            seen.contains(&format!("target: {expected}\n")),
            "HTTP/2 {sent}: {seen}"
        );
        assert!(seen.contains("version: HTTP/2.0\n"), "{seen}");
    }
}

/// A target with no path (`?x=1`) is judged as `/`, and the app gets `/?x=1`, not the target
/// as it came.
#[tokio::test]
async fn a_target_without_a_path_reaches_the_app_as_the_path_that_was_judged() {
    let mesh = Mesh::start().await;
    // An app that answers with the request line it read.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let Ok(byte) = tcp.read_u8().await else {
                        return;
                    };
                    head.push(byte);
                }
                let line = String::from_utf8_lossy(&head)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{line}",
                    line.len()
                );
                let _ = tcp.write_all(answer.as_bytes()).await;
            });
        }
    });
    let pair = mesh
        .pair(
            app,
            warden_proxy::config::AppProtocol::Http1,
            RouteProtocol::Detect,
            Authorizer::allow_all(),
        )
        .await;
    // An HTTP/2 caller can send such a target (`:path` is `?x=1`); HTTP/1.1 gets a 400 from
    // the outbound proxy.
    let mut h2 = h2c_client(pair.outbound).await;
    let req = Request::get("http://server.test?x=1")
        .body(empty())
        .unwrap();
    let seen = text(h2.send_request(req).await.unwrap()).await;
    assert_eq!(seen, "GET /?x=1 HTTP/1.1");
}

#[tokio::test]
async fn http1_keep_alive_chunked_bodies_and_identity_headers() {
    let mesh = Mesh::start().await;
    let (app, hits) = apps::http_app().await;
    let pair = mesh.open_pair(app).await;
    let mut client = h1_client(pair.outbound).await;

    // The app sees the verified caller, whatever the caller claimed.
    let req = Request::get("/headers")
        .header("host", "server.test")
        .header(
            "x-warden-client-id",
            "spiffe://cluster.local/ns/kube-system/sa/admin",
        )
        .header("x-warden-tls", "TLSv1.0/none")
        .body(empty())
        .unwrap();
    let resp = client.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = text(resp).await;
    assert!(
        seen.contains(&format!("x-warden-client-id: {}\n", id("client"))),
        "{seen}"
    );
    assert!(
        !seen.contains("sa/admin"),
        "a spoofed identity never reaches the app: {seen}"
    );
    assert!(
        seen.contains("x-warden-tls: TLSv1.3/X25519MLKEM768\n"),
        "{seen}"
    );
    assert!(
        seen.contains("version: HTTP/1.1\n"),
        "an HTTP/1 caller's app gets HTTP/1.1: {seen}"
    );
    assert!(seen.contains("host: server.test\n"), "{seen}");
    assert!(
        !seen.contains("x-warden-orig-proto"),
        "internal headers stay internal: {seen}"
    );

    // A chunked request body on the same keep-alive connection.
    let chunks = ["alpha-", "beta-", "gamma"]
        .map(|c| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(c))));
    let body = BodyExt::boxed(StreamBody::new(futures_util::stream::iter(chunks)));
    client.ready().await.unwrap();
    let resp = client
        .send_request(
            Request::post("/upload")
                .header("host", "server.test")
                .body(body)
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        text(resp).await,
        format!("16 {}", checksum(b"alpha-beta-gamma"))
    );

    // A chunked response.
    client.ready().await.unwrap();
    let resp = client
        .send_request(
            Request::get("/chunked")
                .header("host", "server.test")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(resp.headers().get("content-length").is_none());
    assert_eq!(text(resp).await, "first,second,third");
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

/// Splits `raw` (HTTP/1.1 responses back to back, bodies framed by `content-length` or
/// absent) into (head lines but `date`, joined by `|`; body) pairs; `bodiless` says which have no body whatever
/// their length says (a response to HEAD, a 204).
fn split_responses(mut raw: &[u8], bodiless: &[bool]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for &no_body in bodiless {
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a head")
            + 4;
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |n| n.trim().parse::<usize>().unwrap());
        let length = if no_body { 0 } else { length };
        // The head as sent, but its `date` (the clock's) and the app's own `date`.
        let head: Vec<_> = head
            .split("\r\n")
            .filter(|l| !l.is_empty() && !l.starts_with("date: "))
            .collect();
        out.push((head.join("|"), raw[end..end + length].to_vec()));
        raw = &raw[end + length..];
    }
    assert!(raw.is_empty(), "nothing after the last response");
    out
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_each_framed_as_its_status_says() {
    let mesh = Mesh::start().await;
    let (app, hits) = apps::http_app().await;
    let pair = mesh.open_pair(app).await;
    let mut tcp = tokio::net::TcpStream::connect(pair.outbound).await.unwrap();
    // All at once: no body (the outbound proxy serves these itself), a 204, a HEAD, a body
    // larger than one write, one with a body (which hyper's server takes over), and a last
    // one asking to close.
    let requests = [
        "GET /status/204 HTTP/1.1\r\nhost: s\r\n\r\n",
        "GET /status/304 HTTP/1.1\r\nhost: s\r\n\r\n",
        "HEAD /download/5 HTTP/1.1\r\nhost: s\r\n\r\n",
        "GET /download/70000 HTTP/1.1\r\nhost: s\r\n\r\n",
        "POST /upload HTTP/1.1\r\nhost: s\r\ncontent-length: 3\r\n\r\nabc",
        "GET /status/404 HTTP/1.1\r\nhost: s\r\nconnection: close\r\n\r\n",
    ]
    .concat();
    tcp.write_all(requests.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut raw))
        .await
        .expect("the proxy closes after the last answer")
        .unwrap();
    let answers = split_responses(&raw, &[true, true, true, false, false, false]);
    let heads: Vec<_> = answers.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        heads[..5],
        [
            "HTTP/1.1 204 No Content",
            "HTTP/1.1 304 Not Modified",
            "HTTP/1.1 200 OK|content-length: 5",
            "HTTP/1.1 200 OK|content-length: 70000",
            "HTTP/1.1 200 OK|content-length: 22",
        ]
    );
    // The app's 404 echoes the request it saw: its length is the app's business.
    assert!(
        heads[5].starts_with("HTTP/1.1 404 Not Found|content-length: ")
            && heads[5].ends_with("|connection: close"),
        "{}",
        heads[5]
    );
    assert!(!answers[5].1.is_empty());
    assert_eq!(answers[3].1, pattern(70_000));
    assert_eq!(answers[4].1, format!("3 {}", checksum(b"abc")).as_bytes());
    assert_eq!(hits.load(Ordering::SeqCst), 6);
}

#[tokio::test]
async fn ten_mib_upload_and_download() {
    let mesh = Mesh::start().await;
    let (app, _) = apps::http_app().await;
    let pair = mesh.open_pair(app).await;
    let mut client = h1_client(pair.outbound).await;
    let size = 10 * 1024 * 1024;
    let data = pattern(size);
    let resp = client
        .send_request(
            Request::post("/upload")
                .header("host", "s")
                .body(full(data.clone()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(text(resp).await, format!("{size} {}", checksum(&data)));
    client.ready().await.unwrap();
    let resp = client
        .send_request(
            Request::get(format!("/download/{size}"))
                .header("host", "s")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), size);
    assert_eq!(checksum(&body), checksum(&data));
}

/// A server proxy in front of the test app, and a client proxy with `workers` workers whose
/// route reaches it through a relay that counts the mesh connections.
struct CountedPair {
    client: Proxy,
    hits: Arc<AtomicUsize>,
    mesh_connections: Arc<AtomicUsize>,
    _server: Proxy,
}

impl CountedPair {
    async fn start(mesh: &Mesh, workers: usize) -> Self {
        let (app, hits) = apps::http_app().await;
        let server = mesh.server(app).await;
        let (relay, mesh_connections) = counting_relay(server.addrs.inbound[0]).await;
        let mut client = mesh.client_config(relay, Some(id("server")), RouteProtocol::Detect);
        client.worker_threads = Some(workers);
        let client = mesh.proxy(client, Authorizer::allow_all()).await;
        Self {
            client,
            hits,
            mesh_connections,
            _server: server,
        }
    }
}

/// One GET on `h1`, answered by the test app.
async fn get_hello(h1: &mut hyper::client::conn::http1::SendRequest<crate::ClientBody>) {
    let resp = h1
        .send_request(Request::get("/").header("host", "s").body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(text(resp).await, "hello from app");
}

#[tokio::test]
async fn each_worker_serves_its_connections_over_a_mesh_connection_of_its_own() {
    let mesh = Mesh::start().await;
    let counted = CountedPair::start(&mesh, 2).await;
    let outbound = counted.client.addrs.outbound[0];

    // Two app connections open at once go to the two workers (the least loaded first);
    // each worker's requests share its one pooled connection.
    let mut first = h1_client(outbound).await;
    let mut second = h1_client(outbound).await;
    for _ in 0..10 {
        for h1 in [&mut first, &mut second] {
            h1.ready().await.unwrap();
            get_hello(h1).await;
        }
    }
    assert_eq!(counted.hits.load(Ordering::SeqCst), 20);
    assert_eq!(
        counted.mesh_connections.load(Ordering::SeqCst),
        2,
        "one pooled mTLS connection per worker"
    );
}

#[tokio::test]
async fn http2_streams_and_many_app_connections_share_one_mesh_connection() {
    let mesh = Mesh::start().await;
    // One worker: each worker pools connections of its own (the test above).
    let counted = CountedPair::start(&mesh, 1).await;
    let outbound = counted.client.addrs.outbound[0];

    // 200 concurrent streams on one HTTP/2 app connection.
    let h2 = h2c_client(outbound).await;
    let requests = (0..200).map(|i| {
        let mut h2 = h2.clone();
        async move {
            let req = Request::get(format!("http://server.test/headers?i={i}"))
                .body(empty())
                .unwrap();
            let resp = h2.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            text(resp).await
        }
    });
    let bodies = futures_util::future::join_all(requests).await;
    assert!(
        bodies.iter().all(|b| b.contains("version: HTTP/2.0\n")),
        "an HTTP/2 caller's app gets HTTP/2"
    );

    // 20 separate HTTP/1.1 app connections.
    for _ in 0..20 {
        get_hello(&mut h1_client(outbound).await).await;
    }
    assert_eq!(counted.hits.load(Ordering::SeqCst), 220);
    assert_eq!(
        counted.mesh_connections.load(Ordering::SeqCst),
        1,
        "all of it over one pooled mTLS connection"
    );
}

#[tokio::test]
async fn request_trailers_reach_an_h2c_app_without_any_warden_header() {
    let mesh = Mesh::start().await;
    let (app, _) = apps::http_app().await;
    let pair = mesh.open_pair(app).await;
    let mut h2 = h2c_client(pair.outbound).await;
    let mut trailers = http::HeaderMap::new();
    trailers.insert(
        "x-warden-client-id",
        "spiffe://cluster.local/ns/x/sa/forged".parse().unwrap(),
    );
    trailers.insert("x_warden_tls", "forged".parse().unwrap());
    trailers.insert("x-checksum", "42".parse().unwrap());
    let frames = [
        Ok(Frame::data(Bytes::from_static(b"body"))),
        Ok(Frame::trailers(trailers)),
    ];
    let body = BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)));
    let resp = h2
        .send_request(
            Request::post("http://server.test/trailers")
                .body(body)
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = text(resp).await;
    assert_eq!(
        seen, "x-checksum: 42\n",
        "only the caller's own trailer arrives"
    );
}

#[tokio::test]
async fn grpc_unary_and_server_streaming_keep_their_trailers() {
    let mesh = Mesh::start().await;
    let (app, _) = apps::http_app().await;
    let pair = mesh.open_pair(app).await;
    let mut grpc = h2c_client(pair.outbound).await;
    let call = |path: &str, payload: &[u8]| {
        Request::post(format!("http://server.test{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(full(grpc_frame(payload)))
            .unwrap()
    };

    let resp = grpc
        .send_request(call("/grpc.test.Echo/Unary", b"hello"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers arrive");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(
        grpc_messages(&collected.to_bytes()),
        vec![b"echo: hello".to_vec()]
    );

    let resp = grpc
        .send_request(call("/grpc.test.Echo/Stream", b""))
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut messages = Vec::new();
    let mut status = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if let Some(data) = frame.data_ref() {
            messages.extend(grpc_messages(data));
        } else if let Some(t) = frame.trailers_ref() {
            status = t.get("grpc-status").cloned();
        }
    }
    let expected: Vec<Vec<u8>> = (0..5)
        .map(|i| format!("message {i}").into_bytes())
        .collect();
    assert_eq!(messages, expected);
    assert_eq!(status.unwrap(), "0");
}

/// A slow reader of a stream of tiny messages makes them pile up at the client proxy, on the
/// pooled connection every other call to that destination shares. h2 counts unread small
/// DATA frames against a budget derived from the connection window and closes the connection
/// when it is spent; with a 64 KiB window that was ~130 frames, so one slow gRPC stream (or
/// a busy proxy under gRPC load) failed every call in flight on the connection with 502.
#[tokio::test]
async fn a_slow_reader_of_tiny_messages_does_not_break_the_shared_connection() {
    let mesh = Mesh::start().await;
    // One worker, so that both app connections share one pooled connection.
    let counted = CountedPair::start(&mesh, 1).await;
    let outbound = counted.client.addrs.outbound[0];
    let call = |path: &str| {
        Request::post(format!("http://server.test{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(full(grpc_frame(b"")))
            .unwrap()
    };
    // A client that lets through 1 KiB at a time and reads nothing yet.
    let tcp = tokio::net::TcpStream::connect(outbound).await.unwrap();
    let (mut slow, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(1024)
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let messages = 3000;
    let resp = slow
        .send_request(call(&format!("/grpc.test.Echo/Tiny/{messages}")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The server side sends everything while the reader waits (18 KB of one-byte messages).
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Meanwhile another call on the same pooled connection is answered...
    let mut other = h2c_client(outbound).await;
    let unary = other
        .send_request(call("/grpc.test.Echo/Unary"))
        .await
        .unwrap();
    let trailers = unary.into_body().collect().await.unwrap();
    assert_eq!(trailers.trailers().unwrap()["grpc-status"], "0");

    // ... and the slow reader gets every message, then the status.
    let collected = resp
        .into_body()
        .collect()
        .await
        .expect("the stream completes");
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(
        counted.mesh_connections.load(Ordering::SeqCst),
        1,
        "both calls on one pooled connection"
    );
    assert_eq!(grpc_messages(&collected.to_bytes()).len(), messages);

    // The other way: a client stream of tiny messages the app reads late piles up at the
    // server proxy, on the connection from the client proxy.
    let tiny: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = (0..messages)
        .map(|_| Ok(Frame::data(grpc_frame(b"t"))))
        .collect();
    let upload = Request::post("http://server.test/grpc.test.Echo/SlowCount")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
            tiny,
        ))))
        .unwrap();
    let resp = other.send_request(upload).await.unwrap();
    let collected = resp
        .into_body()
        .collect()
        .await
        .expect("the call completes");
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(
        counted.mesh_connections.load(Ordering::SeqCst),
        1,
        "both calls on one pooled connection"
    );
    assert_eq!(
        grpc_messages(&collected.to_bytes()),
        vec![messages.to_string().into_bytes()]
    );
}

#[tokio::test]
async fn websocket_upgrade_exchanges_messages() {
    let mesh = Mesh::start().await;
    let app = apps::websocket_app().await;
    let pair = mesh.open_pair(app).await;
    let mut ws = websocket(pair.outbound).await;
    for word in ["one", "two", "three"] {
        chat(&mut ws, word).await;
    }
    ws.close(None).await.unwrap();
}

/// An app that answers a WebSocket upgrade 200 (one that ignores the upgrade) gives the
/// caller a 502: a 2xx to the peer's extended CONNECT would say a tunnel is open.
#[tokio::test]
async fn a_websocket_upgrade_the_app_answers_200_is_a_502() {
    let mesh = Mesh::start().await;
    let (app, _) = apps::http_app().await;
    let pair = mesh.open_pair(app).await;
    let tcp = tokio::net::TcpStream::connect(pair.outbound).await.unwrap();
    match tokio_tungstenite::client_async("ws://server.test/chat", tcp).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 502);
        }
        Err(other) => panic!("expected a 502, got {other}"),
        Ok((_, response)) => panic!("expected a 502, got {}", response.status()),
    }
}

type WebSocket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A WebSocket to the test app's `/chat` through the client proxy at `outbound`.
async fn websocket(outbound: std::net::SocketAddr) -> WebSocket {
    let tcp = tokio::net::TcpStream::connect(outbound).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async("ws://server.test/chat", tcp)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

/// Sends `word` and checks the app's answer: it names the caller the proxies verified.
async fn chat(ws: &mut WebSocket, word: &str) {
    ws.send(word.into()).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        reply.to_text().unwrap(),
        format!("{} said {word}", id("client"))
    );
}

/// An upgraded connection is relayed after hyper lets go of it: it still counts as the open
/// connection it is (here against the listener's connection limit) until it closes.
#[tokio::test]
async fn a_websocket_holds_its_connection_until_it_closes() {
    let mesh = Mesh::start().await;
    let server = mesh.server(apps::websocket_app().await).await;
    let mut client = mesh.client_config(
        server.addrs.inbound[0],
        Some(id("server")),
        RouteProtocol::Detect,
    );
    client.limits.max_connections = 1;
    let client = mesh.proxy(client, Authorizer::allow_all()).await;
    let outbound = client.addrs.outbound[0];

    let mut ws = websocket(outbound).await;
    chat(&mut ws, "one").await;

    // The WebSocket holds the one connection allowed: another is closed at once.
    let mut other = h1_client(outbound).await;
    let refused = other
        .send_request(Request::get("/").header("host", "s").body(empty()).unwrap())
        .await;
    assert!(
        refused.is_err(),
        "a second connection was served: {refused:?}"
    );

    // Closed, it frees its place.
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    drop(ws);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut h1 = h1_client(outbound).await;
        let sent = h1
            .send_request(Request::get("/").header("host", "s").body(empty()).unwrap())
            .await;
        if sent.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no connection served after the WebSocket closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An app that answers before it has read the request (a gRPC error from an interceptor, a
/// 413): the caller's stream is not reset under it, the proxies read the rest of its body
/// (`drain`). Reset, the caller's late DATA frames would be protocol errors that h2 counts
/// until it closes the connection (GOAWAY) with every call on it.
#[tokio::test]
async fn a_request_answered_before_its_body_ends_is_read_on_not_reset() {
    let mesh = Mesh::start().await;
    let (app, _) = apps::http_app().await;
    let pair = mesh.open_pair(app).await;
    let mut client = h2c_client(pair.outbound).await;
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(1);
    let body = BodyExt::boxed(StreamBody::new(futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
    })));
    // `/headers` answers at once, without reading the body.
    let req = Request::post("http://server.test/headers")
        .body(body)
        .unwrap();
    let resp = client.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    text(resp).await;
    // The whole response is in and not a byte of the body was sent. A reset stream drops
    // the body (closing this channel) within milliseconds; read on, it stays open until
    // the body ends or the proxy's drain time (5 s) runs out.
    assert!(
        tokio::time::timeout(Duration::from_secs(1), tx.closed())
            .await
            .is_err(),
        "the caller's stream was reset under a body still being sent"
    );
    tx.send(Ok(Frame::data(Bytes::from_static(b"late"))))
        .await
        .expect("the late part of the body is taken");
}
