//! Unmodified apps the proxies sit in front of: they know nothing of the mesh.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

type AppBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(body: impl Into<Bytes>) -> AppBody {
    Full::new(body.into()).boxed()
}

/// FNV-1a over the bytes: a cheap check that a body arrived intact.
pub fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

/// The pattern of a download of `n` bytes.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// A gRPC message frame: compressed flag, big-endian length, payload.
pub fn grpc_frame(payload: &[u8]) -> Bytes {
    let mut out = vec![0u8];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.into()
}

/// Splits a body of gRPC frames into payloads.
pub fn grpc_messages(mut body: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        out.push(body[5..5 + len].to_vec());
        body = &body[5 + len..];
    }
    out
}

fn grpc_trailers(status: &str) -> http::HeaderMap {
    let mut t = http::HeaderMap::new();
    t.insert("grpc-status", status.parse().unwrap());
    t.insert("grpc-message", "ok".parse().unwrap());
    t
}

async fn route(req: Request<Incoming>) -> Response<AppBody> {
    let path = req.uri().path().to_string();
    let target = req.uri().path_and_query().map_or("", |p| p.as_str());
    let mut lines = format!(
        "version: {:?}\nmethod: {}\npath: {}\ntarget: {target}\n",
        req.version(),
        req.method(),
        path
    );
    for (k, v) in req.headers() {
        lines.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
    }
    let head = lines.clone();
    match path.as_str() {
        "/headers" => Response::new(full(head)),
        "/chunked" => {
            let chunks = ["first,", "second,", "third"]
                .map(|c| Ok::<_, Infallible>(Frame::data(Bytes::from(c))));
            Response::new(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
                chunks,
            ))))
        }
        "/grpc.test.Echo/SlowCount" => {
            // Client streaming read late: counts the messages after half a second.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let count = grpc_messages(&body).len().to_string();
            grpc_response(vec![
                Ok(Frame::data(grpc_frame(count.as_bytes()))),
                Ok(Frame::trailers(grpc_trailers("0"))),
            ])
        }
        "/trailers" => {
            // The request's trailers, one per line.
            let collected = req.into_body().collect().await.unwrap();
            let mut seen = String::new();
            for (k, v) in collected.trailers().into_iter().flatten() {
                seen.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
            }
            Response::new(full(seen))
        }
        "/upload" => {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            Response::new(full(format!("{} {}", body.len(), checksum(&body))))
        }
        p if p.starts_with("/download/") => {
            let n: usize = p["/download/".len()..].parse().unwrap();
            Response::new(full(pattern(n)))
        }
        p if p.starts_with("/slow/") => {
            let ms: u64 = p["/slow/".len()..].parse().unwrap();
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(full("slow done"))
        }
        "/grpc.test.Echo/Unary" => {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let msg = grpc_messages(&body).concat();
            let frames = vec![
                Ok::<_, Infallible>(Frame::data(grpc_frame(&[b"echo: ", &msg[..]].concat()))),
                Ok(Frame::trailers(grpc_trailers("0"))),
            ];
            grpc_response(frames)
        }
        p if p.starts_with("/status/") => {
            let mut r = Response::new(full(head));
            *r.status_mut() = StatusCode::from_u16(p["/status/".len()..].parse().unwrap()).unwrap();
            r
        }
        "/grpc.health.v1.Health/Check" => {
            // SERVING (1) for the server and any service but "down" (NOT_SERVING, 2).
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let request = grpc_messages(&body).concat();
            let status = if request.ends_with(b"down") { 2 } else { 1 };
            let frames = vec![
                Ok::<_, Infallible>(Frame::data(grpc_frame(&[0x08, status]))),
                Ok(Frame::trailers(grpc_trailers("0"))),
            ];
            grpc_response(frames)
        }
        p if p.starts_with("/grpc.test.Echo/Tiny/") => {
            // Server streaming of many one-byte messages: a DATA frame each.
            let n: usize = p["/grpc.test.Echo/Tiny/".len()..].parse().unwrap();
            let mut frames: Vec<Result<Frame<Bytes>, Infallible>> =
                (0..n).map(|_| Ok(Frame::data(grpc_frame(b"t")))).collect();
            frames.push(Ok(Frame::trailers(grpc_trailers("0"))));
            grpc_response(frames)
        }
        "/grpc.test.Echo/Stream" => {
            let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = (0..5)
                .map(|i| Ok(Frame::data(grpc_frame(format!("message {i}").as_bytes()))))
                .collect();
            frames.push(Ok(Frame::trailers(grpc_trailers("0"))));
            grpc_response(frames)
        }
        _ => {
            let mut r = Response::new(full("hello from app"));
            *r.status_mut() = StatusCode::OK;
            r
        }
    }
}

fn grpc_response(frames: Vec<Result<Frame<Bytes>, Infallible>>) -> Response<AppBody> {
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
        frames,
    ))));
    r.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    r
}

/// An HTTP app speaking HTTP/1.1 and h2c. The counter tells how many requests reached it.
pub async fn http_app() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async move { Ok::<_, Infallible>(route(req).await) }
                });
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                // A large window: h2 allows half of it in unread small DATA frames, so the app
                // is not what closes a connection carrying thousands of tiny messages.
                builder
                    .http2()
                    .initial_connection_window_size(16 * 1024 * 1024)
                    .initial_stream_window_size(16 * 1024 * 1024);
                let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
            });
        }
    });
    (addr, hits)
}

/// A WebSocket app echoing every message, prefixed with what it saw of the caller.
// The handshake callback's signature (with its large error type) is tungstenite's.
#[allow(clippy::result_large_err)]
pub async fn websocket_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut client_id = String::new();
                let callback = |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                                resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
                    client_id = req
                        .headers()
                        .get("x-warden-client-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_string();
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() {
                        let reply = format!("{client_id} said {}", msg.to_text().unwrap());
                        if ws.send(reply.into()).await.is_err() {
                            return;
                        }
                    } else if msg.is_close() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A TCP app that echoes; `banner` is sent first on connect (server-speaks-first).
pub async fn tcp_app(banner: Option<&'static str>) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counter = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Some(banner) = banner {
                    if tcp.write_all(banner.as_bytes()).await.is_err() {
                        return;
                    }
                }
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, conns)
}

/// A TCP app that reads until the client half-closes, then answers how much it got.
pub async fn half_close_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut all = Vec::new();
                if tcp.read_to_end(&mut all).await.is_ok() {
                    let _ = tcp
                        .write_all(format!("got {} bytes", all.len()).as_bytes())
                        .await;
                }
            });
        }
    });
    addr
}
