//! What every HTTP server of this crate shares (the identity service, the injector's webhook
//! through [`crate::http::serve_tls`], and the admin endpoint of every process, the proxy's
//! included): a cap on open connections, and bounds on the time a connection may take to
//! handshake, to send a request's headers, to sit idle, and to be answered.
//!
//! Past the cap, a new connection is accepted and closed at once (and counted), so the
//! listener keeps draining its backlog and a refused client learns it immediately instead of
//! waiting in the kernel queue. Idle means no request in flight: bytes that never complete a
//! request (a slow preface, HTTP/2 pings) do not keep a connection alive.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{header, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::http::{text, Body};

/// The counter of connections closed at the cap.
const REFUSED_METRIC: &str = "warden_server_connections_refused_total";

/// Bounds of an HTTP server's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections open at once; more are accepted and closed at once, and counted (1024).
    pub max_connections: usize,
    /// A TLS handshake, on TLS servers (10s).
    pub handshake_timeout: Duration,
    /// Reading one HTTP/1 request's headers, counted from its first byte, and waiting for the
    /// next request on a kept-alive HTTP/1 connection (10s).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (60s).
    pub idle_timeout: Duration,
    /// A request not answered within this gets 408 and its connection is closed; this is
    /// what bounds a request body trickled in slowly (30s).
    pub request_timeout: Duration,
    /// How long in-flight requests may take to finish at shutdown (10s).
    pub shutdown_grace: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// The connection cap of one server, named `server` in metrics and logs.
#[derive(Debug)]
pub(crate) struct ConnectionCap {
    permits: Arc<Semaphore>,
    max: usize,
    server: &'static str,
}

impl ConnectionCap {
    /// A cap of `max` connections (the refusal counter starts at zero).
    pub(crate) fn new(max: usize, server: &'static str) -> Self {
        metrics::describe_counter!(
            REFUSED_METRIC,
            "Connections to Warden's own HTTP servers (admin, identity, webhook) closed at their connection cap, by server."
        );
        metrics::counter!(REFUSED_METRIC, "server" => server).increment(0);
        let max = max.min(Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
            server,
        }
    }

    /// Accepts on `listener` until a connection fits under the cap, or `shutdown`. Those over
    /// the cap are closed at once and counted.
    pub(crate) async fn accept(
        &self,
        listener: &TcpListener,
        shutdown: &CancellationToken,
    ) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => return None,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: pause instead of spinning.
                        tracing::warn!(server = self.server, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    let _ = tcp.set_nodelay(true);
                    return Some((tcp, peer, permit));
                }
                Err(_) => {
                    metrics::counter!(REFUSED_METRIC, "server" => self.server).increment(1);
                    tracing::warn!(server = self.server, %peer, max_connections = self.max, "connection limit reached; closing");
                    drop(tcp);
                }
            }
        }
    }
}

/// Requests in flight on one connection, and when that last changed.
#[derive(Debug)]
struct Activity(Mutex<(usize, Instant)>);

/// One request in flight; dropping it ends the request.
struct InFlight(Arc<Activity>);

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self(Mutex::new((0, Instant::now()))))
    }

    fn update(&self, f: impl FnOnce(&mut usize)) {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut state.0);
        state.1 = Instant::now();
    }

    fn start(self: &Arc<Self>) -> InFlight {
        self.update(|n| *n += 1);
        InFlight(self.clone())
    }

    /// Resolves once no request has been in flight for `timeout`.
    async fn idle(&self, timeout: Duration) {
        loop {
            let wait = {
                let (in_flight, since) = *self.0.lock().unwrap_or_else(|p| p.into_inner());
                if in_flight > 0 {
                    timeout
                } else {
                    match timeout.checked_sub(since.elapsed()) {
                        Some(left) if !left.is_zero() => left,
                        _ => return,
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.update(|n| *n = n.saturating_sub(1));
    }
}

/// The answer to a request that took longer than the request timeout.
fn timed_out(limit: Duration) -> Response<Body> {
    let mut resp = text(
        StatusCode::REQUEST_TIMEOUT,
        format!("request not completed within {}s\n", limit.as_secs_f64()),
    );
    resp.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    resp
}

/// Serves HTTP/1.1 and HTTP/2 on one accepted connection within `limits` (headers, idle and
/// request timeouts), until the client leaves, a timeout hits, or `watcher`'s shutdown
/// finishes it gracefully.
pub(crate) async fn serve_connection<I, H, F>(
    io: I,
    handler: H,
    limits: &ServerLimits,
    watcher: Option<Watcher>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let activity = Activity::new();
    let tracker = activity.clone();
    let request_timeout = limits.request_timeout;
    let service = hyper::service::service_fn(move |req| {
        let in_flight = tracker.start();
        let response = handler(req);
        async move {
            let response = tokio::time::timeout(request_timeout, response)
                .await
                .unwrap_or_else(|_| timed_out(request_timeout));
            drop(in_flight);
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    let conn: Pin<Box<dyn Future<Output = _> + Send>> = match watcher {
        Some(watcher) => Box::pin(watcher.watch(conn)),
        None => Box::pin(conn),
    };
    tokio::select! {
        result = conn => result,
        () = activity.idle(limits.idle_timeout) => {
            tracing::debug!("closing an idle connection");
            Ok(())
        }
    }
}
