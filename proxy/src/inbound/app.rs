//! Pooled connections to the local app: HTTP/1.1 connections reused one request at a time
//! (newest first), one shared h2c connection per app. HTTP/1.1 is [`super::app_http1`]: the
//! app is one known address, so there is no resolver, no per-request pool key to hash, and
//! no task per connection; a connection goes back to the pool when its response body ends.
//! h2c uses [`crate::h2_client`], as the proxy-to-proxy connections do.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response};
use tokio::net::TcpStream;
use tokio_util::either::Either;

use super::app_http1::{self, Conn, Encoded, Http1Error};
use crate::h2_client::{self, TrySend, Unsent};
use crate::http::{boxed, ProxyBody};

/// Why a request could not be answered by the app.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The app refused or reset the connection attempt.
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The app did not accept the connection in time.
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// The HTTP/1.1 exchange failed after the connection was made.
    #[error(transparent)]
    Http1(#[from] Http1Error),
    /// The h2c connection failed after it was made.
    #[error(transparent)]
    H2c(#[from] h2::Error),
}

/// An HTTP/1.1 connection waiting for its next request.
#[derive(Debug)]
struct IdleHttp1 {
    conn: Conn,
    since: Instant,
}

/// The shared h2c connection to one app (`None` until first used or after it closed).
type H2cSlot = Arc<tokio::sync::Mutex<Option<h2_client::Sender>>>;

/// The send paths that are boxed: connecting, and h2c.
type BoxedSend = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, AppError>> + Send>>;

/// The shared h2c connection's settings: hyper's defaults, which it had before; no pings
/// (the app is on the same host, and a busy app is not a dead one).
const H2C: h2_client::Settings = h2_client::Settings {
    stream_window: 2 * 1024 * 1024,
    connection_window: 5 * 1024 * 1024,
    max_header_list_size: 16 * 1024,
    keepalive: None,
};

/// Hashed with a fast, per-process seeded hasher: looked up on every request.
type AppMap<T> = HashMap<SocketAddr, T, foldhash::fast::RandomState>;

#[derive(Debug)]
struct Inner {
    connect_timeout: Duration,
    idle: Duration,
    /// What each HTTP/1.1 exchange is allowed.
    http1_options: app_http1::Options,
    /// Per app, newest last.
    http1: Mutex<AppMap<Vec<IdleHttp1>>>,
    h2c: Mutex<AppMap<H2cSlot>>,
}

/// Pooled HTTP clients towards the local app (cheap to clone; clones share the pool).
#[derive(Debug, Clone)]
pub struct AppClients {
    inner: Arc<Inner>,
}

impl AppClients {
    /// Clients that connect within `connect_timeout`, keep idle connections for `idle`, and
    /// take response heads of at most `max_head` bytes.
    pub fn new(connect_timeout: Duration, idle: Duration, max_head: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                connect_timeout,
                idle,
                http1_options: app_http1::Options {
                    max_head,
                    finish_within: idle,
                },
                http1: Mutex::new(AppMap::default()),
                h2c: Mutex::new(AppMap::default()),
            }),
        }
    }

    /// Sends `req` (absolute URI, as for HTTP/2) to `app` over HTTP/1.1 or h2c. A request for
    /// an idle pooled HTTP/1.1 connection is handed to it here, before the first poll, so the
    /// future returned holds only the exchange in flight: every HTTP/2 stream's task holds
    /// it, and copies it as it moves. Connecting (rare) and h2c are boxed.
    pub fn send(
        &self,
        app: SocketAddr,
        http1: bool,
        req: Request<ProxyBody>,
    ) -> impl Future<Output = Result<Response<ProxyBody>, AppError>> + Send + 'static {
        if !http1 {
            return Either::Right(Box::pin(self.clone().send_h2c(app, req)) as BoxedSend);
        }
        let request = app_http1::encode(req, app);
        let Some(conn) = self.checkout_http1(app) else {
            return Either::Right(Box::pin(self.clone().send_http1_new(app, request)));
        };
        let mut sending =
            app_http1::send(conn, request, self.inner.http1_options, self.on_idle(app));
        let clients = self.clone();
        Either::Left(async move {
            match (&mut sending).await {
                Ok(response) => Ok(response.map(boxed)),
                // The app closed the pooled connection as the request went out (it timed the
                // connection out): a request that can go twice goes on a new connection.
                Err(Http1Error::ClosedBeforeResponse) => match sending.again() {
                    Some(again) => Box::pin(clients.send_http1_new(app, again)).await,
                    None => Err(Http1Error::ClosedBeforeResponse.into()),
                },
                Err(e) => Err(e.into()),
            }
        })
    }

    /// Sends `request` on a new HTTP/1.1 connection to `app`.
    async fn send_http1_new(
        self,
        app: SocketAddr,
        request: Encoded,
    ) -> Result<Response<ProxyBody>, AppError> {
        let conn = Conn::new(self.connect(app).await?);
        let sending = app_http1::send(conn, request, self.inner.http1_options, self.on_idle(app));
        Ok(sending.await?.map(boxed))
    }

    /// What a response body calls when it has ended and its connection can go again.
    fn on_idle(&self, app: SocketAddr) -> impl FnOnce(Conn) + Send + Unpin + 'static {
        let inner = self.inner.clone();
        move |conn| AppClients::give_back(&inner, app, conn)
    }

    /// The newest idle connection to `app` that can take a request now; drops expired ones
    /// and ones the app closed on the way.
    fn checkout_http1(&self, app: SocketAddr) -> Option<Conn> {
        let mut pools = lock(&self.inner.http1);
        let idle = pools.get_mut(&app)?;
        let now = Instant::now();
        while let Some(newest) = idle.pop() {
            if now.duration_since(newest.since) >= self.inner.idle {
                // Older entries are older still.
                idle.clear();
                break;
            }
            if newest.conn.is_usable() {
                return Some(newest.conn);
            }
        }
        None
    }

    /// Returns a connection whose exchange has ended to the pool.
    fn give_back(inner: &Inner, app: SocketAddr, conn: Conn) {
        lock(&inner.http1).entry(app).or_default().push(IdleHttp1 {
            conn,
            since: Instant::now(),
        });
    }

    async fn send_h2c(
        self,
        app: SocketAddr,
        req: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, AppError> {
        let slot = lock(&self.inner.h2c).entry(app).or_default().clone();
        let (sender, reused) = {
            let mut guard = slot.lock().await;
            match guard.as_ref().filter(|s| s.is_open()) {
                Some(sender) => (sender.clone(), true),
                None => {
                    // Boxed: connecting is rare, and would enlarge every request's future.
                    let sender = Box::pin(self.connect_h2c(app)).await?;
                    *guard = Some(sender.clone());
                    (sender, false)
                }
            }
        };
        let responding = match sender.try_send(req) {
            TrySend::Sent(responding) => responding,
            TrySend::Refused(e) => return Err(e.into()),
            // Closed, or a request waits for a stream: in turn.
            TrySend::NotNow(back) => match sender.send(back).await {
                Ok(responding) => responding,
                // The shared connection went away before the request was sent: once more,
                // on its replacement.
                Err(Unsent {
                    request: Some(back),
                    ..
                }) if reused => {
                    let sender = {
                        let mut guard = slot.lock().await;
                        match guard.as_ref().filter(|s| s.is_open()) {
                            Some(sender) => sender.clone(),
                            None => {
                                let sender = Box::pin(self.connect_h2c(app)).await?;
                                *guard = Some(sender.clone());
                                sender
                            }
                        }
                    };
                    sender.send(back).await.map_err(|unsent| unsent.error)?
                }
                Err(unsent) => return Err(unsent.error.into()),
            },
        };
        let (response, _) = responding.await?;
        Ok(response)
    }

    async fn connect_h2c(&self, app: SocketAddr) -> Result<h2_client::Sender, AppError> {
        let tcp = self.connect(app).await?;
        Ok(h2_client::handshake(tcp, &H2C, app).await?)
    }

    async fn connect(&self, app: SocketAddr) -> Result<TcpStream, AppError> {
        let timeout = self.inner.connect_timeout;
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(app))
            .await
            .map_err(|_| AppError::ConnectTimeout(timeout))?
            .map_err(AppError::Connect)?;
        // Small requests and responses go out at once, not after a delayed ACK.
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    /// Drops HTTP/1.1 connections idle for the idle timeout and closed h2c connections;
    /// returns how many connections remain.
    pub fn sweep(&self) -> usize {
        let idle = self.inner.idle;
        let mut remaining = 0;
        lock(&self.inner.http1).retain(|_, conns| {
            conns.retain(|c| c.since.elapsed() < idle && c.conn.is_usable());
            remaining += conns.len();
            !conns.is_empty()
        });
        lock(&self.inner.h2c).retain(|_, slot| match slot.try_lock() {
            Ok(sender) => {
                let open = sender.as_ref().is_some_and(h2_client::Sender::is_open);
                remaining += usize::from(open);
                open
            }
            // Connecting or being cloned right now.
            Err(_) => true,
        });
        remaining
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::empty;
    use bytes::Bytes;
    use http::{header, HeaderValue};
    use http_body_util::BodyExt;
    use hyper::body::{Body, Incoming};
    use hyper_util::rt::TokioIo;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::net::TcpListener;

    /// An app on 127.0.0.1:0 answering `path` with its text; counts connections accepted.
    async fn app(h2c: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let close = req.uri().path() == "/close";
                        let host = req
                            .headers()
                            .get(header::HOST)
                            .map(|h| h.to_str().unwrap().to_string())
                            .unwrap_or_default();
                        let text = format!(
                            "{} {} {host}",
                            req.version() == http::Version::HTTP_2,
                            req.uri()
                        );
                        let mut response =
                            Response::new(http_body_util::Full::new(Bytes::from(text)));
                        if close {
                            response
                                .headers_mut()
                                .insert(header::CONNECTION, HeaderValue::from_static("close"));
                        }
                        Ok::<_, std::convert::Infallible>(response)
                    });
                    let io = TokioIo::new(tcp);
                    if h2c {
                        let _ = hyper::server::conn::http2::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection(io, service)
                        .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await;
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn request(app: SocketAddr, path: &str) -> Request<ProxyBody> {
        Request::builder()
            .uri(format!("http://{app}{path}"))
            .body(empty())
            .unwrap()
    }

    async fn text(response: Response<ProxyBody>) -> String {
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    fn clients(idle: Duration) -> AppClients {
        AppClients::new(Duration::from_secs(5), idle, 64 * 1024)
    }

    #[tokio::test]
    async fn http1_requests_reuse_one_connection_in_origin_form_with_a_host() {
        let (addr, accepted) = app(false).await;
        let clients = clients(Duration::from_secs(60));
        for path in ["/a?x=1", "/b", ""] {
            let response = clients.send(addr, true, request(addr, path)).await.unwrap();
            let expected = if path.is_empty() { "/" } else { path };
            assert_eq!(text(response).await, format!("false {expected} {addr}"));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(clients.sweep(), 1);
    }

    #[tokio::test]
    async fn http1_connection_closed_by_the_app_is_replaced() {
        let (addr, accepted) = app(false).await;
        let clients = clients(Duration::from_secs(60));
        for path in ["/close", "/after"] {
            let response = clients.send(addr, true, request(addr, path)).await.unwrap();
            assert!(text(response).await.contains(path));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_does_not_return_its_connection() {
        let (addr, accepted) = app(false).await;
        let clients = clients(Duration::from_secs(60));
        let response = clients.send(addr, true, request(addr, "/x")).await.unwrap();
        let (_, body) = response.into_parts();
        // Known length, not read yet: the body has not ended.
        assert!(!body.is_end_stream());
        drop(body);
        assert_eq!(clients.sweep(), 0);
        let response = clients.send(addr, true, request(addr, "/y")).await.unwrap();
        assert!(text(response).await.contains("/y"));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn sweeping_drops_connections_idle_for_the_timeout() {
        let (addr, _) = app(false).await;
        let clients = clients(Duration::ZERO);
        let response = clients.send(addr, true, request(addr, "/x")).await.unwrap();
        text(response).await;
        assert_eq!(clients.sweep(), 0);
        assert!(lock(&clients.inner.http1).is_empty());
    }

    #[tokio::test]
    async fn an_h2c_connection_the_app_closed_is_replaced() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            for n in 1.. {
                let (tcp, _) = listener.accept().await.unwrap();
                let closed_tx = closed_tx.clone();
                tokio::spawn(async move {
                    let (answered_tx, answered) = tokio::sync::oneshot::channel::<()>();
                    let answered_tx = std::sync::Mutex::new(Some(answered_tx));
                    let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                        if let Some(tx) = answered_tx.lock().unwrap().take() {
                            let _ = tx.send(());
                        }
                        async move {
                            let text = format!("connection {n}");
                            Ok::<_, std::convert::Infallible>(Response::new(
                                http_body_util::Full::new(Bytes::from(text)),
                            ))
                        }
                    });
                    let conn = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(TokioIo::new(tcp), service);
                    let mut conn = std::pin::pin!(conn);
                    // Each connection serves one request, then goes away (GOAWAY, then close).
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = answered => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                    let _ = closed_tx.send(n);
                });
            }
        });
        let clients = clients(Duration::from_secs(60));
        let response = clients.send(addr, false, request(addr, "/")).await.unwrap();
        assert_eq!(text(response).await, "connection 1");
        assert_eq!(closed.recv().await, Some(1));
        // Once this side has seen it go (its task reads the GOAWAY and the close).
        let slot = lock(&clients.inner.h2c).get(&addr).unwrap().clone();
        for _ in 0..1000 {
            if !slot.lock().await.as_ref().unwrap().is_open() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!slot.lock().await.as_ref().unwrap().is_open());
        let response = clients.send(addr, false, request(addr, "/")).await.unwrap();
        assert_eq!(text(response).await, "connection 2");
    }

    #[tokio::test]
    async fn h2c_requests_share_one_connection_and_keep_the_absolute_uri() {
        let (addr, accepted) = app(true).await;
        let clients = clients(Duration::from_secs(60));
        let calls = (0..4).map(|i| {
            let clients = clients.clone();
            async move {
                let path = format!("/call{i}");
                let response = clients
                    .send(addr, false, request(addr, &path))
                    .await
                    .unwrap();
                assert_eq!(text(response).await, format!("true http://{addr}{path} "));
            }
        });
        futures_util::future::join_all(calls).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(clients.sweep(), 1);
    }

    /// An app whose first connection answers one request, then closes as the next comes
    /// in, unanswered (as an app that timed the idle connection out just then); later
    /// connections answer with their number.
    async fn app_closing_its_first_connection() -> SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        async fn read_head(tcp: &mut TcpStream) {
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                head.push(tcp.read_u8().await.unwrap());
            }
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for n in 1.. {
                let (mut tcp, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    read_head(&mut tcp).await;
                    let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n{n}");
                    tcp.write_all(answer.as_bytes()).await.unwrap();
                    if n == 1 {
                        read_head(&mut tcp).await;
                        return;
                    }
                    let _ = tcp.read_u8().await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_request_that_can_go_twice_is_retried_when_its_pooled_connection_closes() {
        let addr = app_closing_its_first_connection().await;
        let clients = clients(Duration::from_secs(60));
        let first = clients.send(addr, true, request(addr, "/")).await.unwrap();
        assert_eq!(text(first).await, "1");
        let second = clients.send(addr, true, request(addr, "/")).await.unwrap();
        assert_eq!(text(second).await, "2");
    }

    #[tokio::test]
    async fn a_request_that_cannot_go_twice_is_not_retried() {
        let addr = app_closing_its_first_connection().await;
        let clients = clients(Duration::from_secs(60));
        let first = clients.send(addr, true, request(addr, "/")).await.unwrap();
        assert_eq!(text(first).await, "1");
        let mut post = request(addr, "/");
        *post.method_mut() = http::Method::POST;
        let error = clients.send(addr, true, post).await.unwrap_err();
        assert!(
            matches!(error, AppError::Http1(Http1Error::ClosedBeforeResponse)),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn an_app_not_listening_is_a_connect_error() {
        // Bound and not listening: connections are refused, and the port stays ours.
        let closed = tokio::net::TcpSocket::new_v4().unwrap();
        closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = closed.local_addr().unwrap();
        let clients = clients(Duration::from_secs(60));
        for http1 in [true, false] {
            let error = clients
                .send(addr, http1, request(addr, "/"))
                .await
                .unwrap_err();
            assert!(matches!(error, AppError::Connect(_)), "{error:?}");
        }
    }
}
