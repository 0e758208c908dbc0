//! Outbound HTTP: serves the app's HTTP/1.x or HTTP/2 and forwards each request as HTTP/2
//! over the pooled mTLS connection to the destination's proxy. HTTP/1.1 upgrades (WebSocket)
//! travel as HTTP/2 extended CONNECT tunnels (RFC 8441).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Body;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::task::TaskTracker;

use super::http1::Served;
use super::pool::PoolKey;
use super::OutboundTarget;
use crate::access_log;
use crate::detect::Protocol;
use crate::h2_client::{Responding, TrySend, Tunnel};
use crate::h2_server;
use crate::http::{
    boxed, check_target, empty, forwarded_uri, is_grpc, names, request_id, strip_hop_by_hop,
    upgrade_protocol, BoxError, ProxyBody, ProxyError,
};
use crate::metrics::{self, Direction};
use crate::shared::{RunControl, Shared};

/// Serves the app's HTTP connection (already detected as `protocol`).
pub async fn serve<I>(
    io: I,
    protocol: Protocol,
    target: Arc<OutboundTarget>,
    shared: Arc<Shared>,
    run: RunControl,
) -> Result<(), ()>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // An upgraded HTTP/1.1 connection (WebSocket) is relayed by a task of its own after
    // hyper lets go of it; the connection is open until that ends.
    let tunnels = TaskTracker::new();
    // One clone per request for both (it is on the request path).
    let route = Arc::new((
        PoolKey {
            addr: target.addr,
            expected: target.expected.clone(),
        },
        tunnels.clone(),
    ));
    let limits = &shared.config.limits;
    let timeouts = &shared.config.timeouts;
    let result = if protocol == Protocol::Http2 {
        let settings = h2_server::Settings {
            // The app's small messages, read late, must not close its connection (see
            // `pool::CONNECTION_WINDOW`).
            stream_window: super::pool::CONNECTION_WINDOW / 4,
            connection_window: super::pool::CONNECTION_WINDOW,
            max_header_list_size: u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX),
            max_concurrent_streams: limits.max_concurrent_streams,
            connect_protocol: false,
            keepalive: None,
            stream_idle: timeouts.idle,
        };
        h2_server::serve(io, &settings, &run, |req| handle(req, &route, &shared))
            .await
            .map_err(|e| e.to_string())
    } else {
        let http1_limits = super::http1::Limits {
            max_head: limits.max_header_bytes,
            head_within: timeouts.idle,
        };
        let fast = super::http1::serve(io, &http1_limits, &run.shutdown, |req| {
            handle(req, &route, &shared)
        });
        let served = tokio::select! {
            biased;
            served = fast => served,
            () = run.hard_stop.cancelled() => Ok(Served::Closed),
        };
        match served {
            Ok(Served::Closed) => Ok(()),
            Err(e) => Err(e.to_string()),
            Ok(Served::Handover(io)) => {
                let service_shared = shared.clone();
                let service =
                    hyper::service::service_fn(move |req| handle(req, &route, &service_shared));
                let conn = crate::http::http1_server(&shared.config)
                    .serve_connection(TokioIo::new(io), service)
                    .with_upgrades();
                run.serve_http(conn, |c| c.graceful_shutdown())
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    };
    // Counted, limited and waited for at shutdown as the connection it still is.
    tunnels.close();
    tokio::select! {
        () = tunnels.wait() => {}
        () = run.hard_stop.cancelled() => {}
    }
    result.map_err(|e| tracing::debug!(error = %e, "outbound HTTP connection ended"))
}

/// The pooled connection's key, and the tasks of the connection's upgraded requests.
type Route = Arc<(PoolKey, TaskTracker)>;

/// Starts one request. Everything up to handing it to the pooled connection runs here,
/// before the first poll, so the future hyper holds for the request (and copies as it moves)
/// carries the call in flight and what its accounting needs, not the request as well: an
/// `async fn` keeps its arguments, and each call it awaits, side by side. Connecting (rare)
/// is boxed.
fn handle<B>(req: Request<B>, route: &Route, shared: &Arc<Shared>) -> Exchange
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let started = Instant::now();
    let grpc = is_grpc(req.headers());
    let access = access_log::enabled().then(|| (req.method().clone(), req.uri().clone()));
    let from_http1 = req.version() < Version::HTTP_2;
    let mut upgrade = None;
    let prepared = prepare(req, &route.0, &mut upgrade);
    #[cfg(feature = "hop-timing")]
    let (prepared, sent) = match prepared {
        Ok(mut request) => {
            let sent = crate::hop_timing::outbound_request(request.headers_mut());
            (Ok(request), sent)
        }
        Err(e) => (Err(e), 0),
    };
    let call = match prepared {
        Err(error) => Call::Failed { error: Some(error) },
        Ok(request) => match shared.pool.try_get(&route.0) {
            Some(pooled) => match pooled.sender.try_send(request) {
                TrySend::Sent(responding) => Call::Sent {
                    sent: tokio::time::timeout(shared.config.timeouts.response, responding),
                    peer: Some(pooled.peer),
                    connection: pooled.id,
                },
                TrySend::Refused(e) => Call::Failed {
                    error: Some(refused(shared, &route.0, pooled.id, &e)),
                },
                TrySend::NotNow(request) => Call::Boxed {
                    call: Box::pin(connect_and_send(shared.clone(), route.clone(), request)),
                },
            },
            None => Call::Boxed {
                call: Box::pin(connect_and_send(shared.clone(), route.clone(), request)),
            },
        },
    };
    Exchange {
        call,
        done: Done {
            started,
            grpc,
            access,
            from_http1,
            upgrade,
            route: route.clone(),
            shared: shared.clone(),
            #[cfg(feature = "hop-timing")]
            sent,
        },
    }
}

pin_project_lite::pin_project! {
    /// One request from its hand-over to the pooled connection (or the error that replaced
    /// it) to its response, with the call's future held in place.
    struct Exchange {
        #[pin]
        call: Call,
        done: Done,
    }
}

/// The peer's response, and for an upgrade that it accepted, the tunnel.
type Answer = (Response<ProxyBody>, Option<Tunnel>);

/// The connect path: the answer and the peer's identity.
type BoxedCall = Pin<Box<dyn Future<Output = Result<(Answer, Arc<str>), ProxyError>> + Send>>;

pin_project_lite::pin_project! {
    /// Where a request stands once it has been checked.
    #[project = CallProj]
    enum Call {
        /// On pooled connection `connection` to the peer (`peer`: its identity), within the
        /// response timeout.
        Sent {
            #[pin]
            sent: tokio::time::Timeout<Responding>,
            peer: Option<Arc<str>>,
            connection: u64,
        },
        /// Waiting for the pool to connect first.
        Boxed { call: BoxedCall },
        /// Refused before it left.
        Failed { error: Option<ProxyError> },
    }
}

/// What a request's accounting and its response need once the peer has answered.
struct Done {
    started: Instant,
    grpc: bool,
    access: Option<(Method, Uri)>,
    from_http1: bool,
    /// The app's upgrade and its protocol, for an HTTP/1.1 upgrade request.
    upgrade: Option<(hyper::upgrade::OnUpgrade, String)>,
    route: Route,
    shared: Arc<Shared>,
    /// When the request left (a `hop-timing` build).
    #[cfg(feature = "hop-timing")]
    sent: u64,
}

impl Future for Exchange {
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answered = match this.call.project() {
            CallProj::Sent {
                sent,
                peer,
                connection,
            } => match ready!(sent.poll(cx)) {
                Err(_) => Err(ProxyError::ResponseTimeout(
                    this.done.shared.config.timeouts.response,
                )),
                Ok(Err(e)) => Err(peer_failed(
                    &this.done.shared,
                    &this.done.route.0,
                    *connection,
                    &e,
                )),
                Ok(Ok(response)) => Ok((response, peer.take().unwrap_or_else(|| Arc::from("-")))),
            },
            CallProj::Boxed { call } => ready!(call.as_mut().poll(cx)),
            CallProj::Failed { error } => match error.take() {
                Some(error) => Err(error),
                // Polled again after it completed.
                None => return Poll::Pending,
            },
        };
        let done = this.done;
        let result = answered.map(|(response, peer)| (done.respond(response), peer));
        Poll::Ready(Ok(done.finish(result)))
    }
}

impl Done {
    /// The peer's response as the app gets it (for an upgrade: the app's 101, and the
    /// tunnel started).
    fn respond(&mut self, (response, tunnel): Answer) -> Response<ProxyBody> {
        if let (Some((app_upgrade, protocol)), Some(tunnel)) = (self.upgrade.take(), tunnel) {
            return join_tunnel(
                &response,
                tunnel,
                app_upgrade,
                &protocol,
                &self.shared,
                &self.route.1,
            );
        }
        let (mut parts, body) = response.into_parts();
        if self.from_http1 {
            parts.version = Version::HTTP_11;
        }
        #[cfg(feature = "hop-timing")]
        let body = crate::hop_timing::outbound_response(
            &self.shared.hops,
            self.sent,
            &mut parts.headers,
            body,
        );
        Response::from_parts(parts, body)
    }

    /// The response (the proxy's own, for an error), counted and logged.
    fn finish(
        &self,
        result: Result<(Response<ProxyBody>, Arc<str>), ProxyError>,
    ) -> Response<ProxyBody> {
        let key = &self.route.0;
        let mut id = None;
        let (response, peer) = match result {
            Ok(pair) => pair,
            Err(e) => {
                let id = id.insert(request_id());
                tracing::warn!(request_id = %id, destination = %key.addr, status = e.status().as_u16(), error = %e, "outbound request failed");
                let peer: Arc<str> = match &*key.expected {
                    [id] => Arc::from(id.as_str()),
                    _ => Arc::from("-"),
                };
                (e.to_response(self.grpc, id), peer)
            }
        };
        let own = self.shared.own_id();
        let status = response.status().as_u16();
        metrics::request(
            Direction::Outbound,
            &own,
            &peer,
            status,
            self.started.elapsed(),
        );
        if let Some((method, uri)) = &self.access {
            access_log::request(&access_log::Request {
                direction: Direction::Outbound,
                request_id: id.as_deref().unwrap_or("-"),
                client_id: &own,
                server_id: &peer,
                method: method.as_str(),
                path: uri.path(),
                status,
                elapsed: self.started.elapsed(),
            });
        }
        response
    }
}

/// The connect path: a connection from the pool (made now, or by a request before this one
/// while this one waited), then the request on it.
async fn connect_and_send(
    shared: Arc<Shared>,
    route: Route,
    request: Request<ProxyBody>,
) -> Result<(Answer, Arc<str>), ProxyError> {
    let key = &route.0;
    let pooled = shared.pool.get(key, &shared.mesh).await?;
    let timeout = shared.config.timeouts.response;
    // Given up within the timeout, a request waiting for a stream is never sent.
    let sent = async {
        match pooled.sender.send(request).await {
            Ok(responding) => responding.await,
            Err(unsent) => Err(unsent.error),
        }
    };
    match tokio::time::timeout(timeout, sent).await {
        Err(_) => Err(ProxyError::ResponseTimeout(timeout)),
        Ok(Err(e)) => Err(peer_failed(&shared, key, pooled.id, &e)),
        Ok(Ok(response)) => Ok((response, pooled.peer)),
    }
}

/// The error for a request pooled connection `connection` failed; a connection that failed
/// as a whole (not just the request's stream) is forgotten (by a task: the app gets its
/// answer without waiting for the pool), so the next request reconnects.
fn peer_failed(shared: &Arc<Shared>, key: &PoolKey, connection: u64, e: &h2::Error) -> ProxyError {
    if e.is_go_away() || e.is_io() {
        let (shared, key) = (shared.clone(), key.clone());
        tokio::spawn(async move { shared.pool.evict(&key, connection).await });
    }
    if e.is_reset() && !e.is_remote() && !e.is_library() {
        // This proxy reset the stream: the app's request body failed before its end.
        return ProxyError::Upstream(format!(
            "the request to {} ended before its body did ({})",
            key.addr,
            crate::http::error_chain(e)
        ));
    }
    ProxyError::Upstream(format!(
        "the peer proxy at {} failed mid-request ({}); check its log",
        key.addr,
        crate::http::error_chain(e)
    ))
}

/// The error for a request h2 would not send: one HTTP/2 cannot carry (a 400), or, if the
/// connection failed just then, as [`peer_failed`].
fn refused(shared: &Arc<Shared>, key: &PoolKey, connection: u64, e: &h2::Error) -> ProxyError {
    if e.is_go_away() || e.is_io() {
        return peer_failed(shared, key, connection, e);
    }
    ProxyError::BadRequest(format!(
        "HTTP/2 cannot carry this request to {} ({})",
        key.addr,
        crate::http::error_chain(e)
    ))
}

/// Checks `req` and rewrites it for the peer proxy: an HTTP/2 request (an HTTP/1.1 upgrade
/// becomes an extended CONNECT, its app side left in `upgrade`).
fn prepare<B>(
    mut req: Request<B>,
    key: &PoolKey,
    upgrade: &mut Option<(hyper::upgrade::OnUpgrade, String)>,
) -> Result<Request<ProxyBody>, ProxyError>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let from_http1 = req.version() < Version::HTTP_2;
    check_target(&req)?;
    let protocol = if from_http1 {
        upgrade_protocol(req.headers())
    } else {
        None
    };

    // The URI is assembled from the parts already parsed, not re-parsed from strings.
    let authority = match req.uri().authority() {
        Some(authority) => authority.clone(),
        None => match req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
        {
            Some(host) => Authority::try_from(host).map_err(|e| {
                ProxyError::BadRequest(format!("cannot forward to Host {host:?}: {e}"))
            })?,
            None => Authority::try_from(key.addr.to_string()).map_err(|e| {
                ProxyError::BadRequest(format!("cannot forward to {}: {e}", key.addr))
            })?,
        },
    };
    let path_and_query = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let app_upgrade = protocol.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    parts.uri = forwarded_uri(authority, path_and_query)?;
    parts.version = Version::HTTP_2;
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::HOST);
    if from_http1 {
        parts
            .headers
            .insert(names::ORIG_PROTO, HeaderValue::from_static("HTTP/1.1"));
    } else {
        // Only this proxy says how the app spoke.
        parts.headers.remove(names::ORIG_PROTO);
    }
    let body = match (protocol, app_upgrade) {
        (Some(protocol), Some(app_upgrade)) => {
            parts.method = Method::CONNECT;
            parts
                .extensions
                .insert(h2::ext::Protocol::from(protocol.as_str()));
            *upgrade = Some((app_upgrade, protocol));
            empty()
        }
        // The peer may answer before it has all of it (see `drain`).
        _ => boxed(crate::drain::DrainOnDrop::new(body)),
    };
    Ok(Request::from_parts(parts, body))
}

/// Completes an upgrade the peer accepted (its 200 to the extended CONNECT): answers the
/// app 101 and joins the app's upgraded connection to the tunnel (a task in `tunnels`).
fn join_tunnel(
    response: &Response<ProxyBody>,
    tunnel: Tunnel,
    app_upgrade: hyper::upgrade::OnUpgrade,
    protocol: &str,
    shared: &Shared,
    tunnels: &TaskTracker,
) -> Response<ProxyBody> {
    let mut switching = Response::new(empty());
    *switching.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *switching.headers_mut() = response.headers().clone();
    let h = switching.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(protocol) {
        h.insert(header::UPGRADE, v);
    }
    let idle = shared.config.timeouts.idle;
    tunnels.spawn(crate::http::bridge_upgrades(
        crate::http::upgraded(app_upgrade),
        std::future::ready(Ok::<_, std::convert::Infallible>(tunnel)),
        idle,
        std::future::pending(), // the inbound proxy enforces policy on it
        "outbound",
    ));
    switching
}
