//! Outbound HTTP: serves the app's HTTP/1.x or HTTP/2 and forwards each request as HTTP/2
//! over the pooled mTLS connection to the destination's proxy. HTTP/1.1 upgrades (WebSocket)
//! travel as HTTP/2 extended CONNECT tunnels (RFC 8441).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::uri::{Authority, PathAndQuery};
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::task::TaskTracker;

use super::pool::PoolKey;
use super::OutboundTarget;
use crate::access_log;
use crate::detect::Protocol;
use crate::http::{
    boxed, check_target, empty, forwarded_uri, is_grpc, names, request_id, strip_hop_by_hop,
    upgrade_protocol, ProxyBody, ProxyError,
};
use crate::metrics::{self, Direction};
use crate::shared::{RunControl, Shared};
use crate::stall::StreamExecutor;

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
    let service_shared = shared.clone();
    let service = hyper::service::service_fn(move |req| {
        let shared = service_shared.clone();
        let route = route.clone();
        async move {
            let (key, tunnels) = &*route;
            Ok::<_, Infallible>(forward(req, key, &shared, tunnels).await)
        }
    });
    let limits = &shared.config.limits;
    let timeouts = &shared.config.timeouts;
    let result = if protocol == Protocol::Http2 {
        let mut builder = hyper::server::conn::http2::Builder::new(StreamExecutor::new(
            shared.config.timeouts.idle,
        ));
        builder
            .timer(TokioTimer::new())
            // The app's small messages, read late, must not close its connection (see
            // `pool::CONNECTION_WINDOW`).
            .initial_connection_window_size(super::pool::CONNECTION_WINDOW)
            .initial_stream_window_size(super::pool::CONNECTION_WINDOW / 4)
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(limits.max_concurrent_streams);
        let conn = builder.serve_connection(TokioIo::new(io), service);
        run.serve_http(conn, |c| c.graceful_shutdown()).await
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(timeouts.idle)
            .max_buf_size(limits.max_header_bytes.max(8192));
        let conn = builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        run.serve_http(conn, |c| c.graceful_shutdown()).await
    };
    // Counted, limited and waited for at shutdown as the connection it still is.
    tunnels.close();
    tokio::select! {
        () = tunnels.wait() => {}
        () = run.hard_stop.cancelled() => {}
    }
    result.map_err(|e| tracing::debug!(error = %e, "outbound HTTP connection ended"))
}

/// Forwards one request; errors become the proxy's own response.
async fn forward(
    req: Request<Incoming>,
    key: &PoolKey,
    shared: &Shared,
    tunnels: &TaskTracker,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let grpc = is_grpc(req.headers());
    let access = access_log::enabled().then(|| (req.method().clone(), req.uri().clone()));
    let mut id = None;
    let (response, peer) = match forward_inner(req, key, shared, tunnels).await {
        Ok(pair) => pair,
        Err(e) => {
            let id = id.insert(request_id());
            tracing::warn!(request_id = %id, destination = %key.addr, status = e.status().as_u16(), error = %e, "outbound request failed");
            let peer: Arc<str> = match &*key.expected {
                [id] => Arc::from(id.as_str()),
                _ => Arc::from("-"),
            };
            (e.to_response(grpc, id), peer)
        }
    };
    let own = shared.own_id();
    let status = response.status().as_u16();
    metrics::request(Direction::Outbound, &own, &peer, status, started.elapsed());
    if let Some((method, uri)) = access {
        access_log::request(&access_log::Request {
            direction: Direction::Outbound,
            request_id: id.as_deref().unwrap_or("-"),
            client_id: &own,
            server_id: &peer,
            method: method.as_str(),
            path: uri.path(),
            status,
            elapsed: started.elapsed(),
        });
    }
    response
}

async fn forward_inner(
    mut req: Request<Incoming>,
    key: &PoolKey,
    shared: &Shared,
    tunnels: &TaskTracker,
) -> Result<(Response<ProxyBody>, Arc<str>), ProxyError> {
    let from_http1 = req.version() < Version::HTTP_2;
    check_target(&req)?;
    let upgrade = if from_http1 {
        upgrade_protocol(req.headers())
    } else {
        None
    };
    let app_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));

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
    let body = match &upgrade {
        Some(protocol) => {
            parts.method = Method::CONNECT;
            parts
                .extensions
                .insert(hyper::ext::Protocol::from(protocol.as_str()));
            empty()
        }
        // The peer may answer before it has all of it (see `drain`).
        None => boxed(crate::drain::DrainOnDrop::new(body)),
    };

    #[cfg(feature = "hop-timing")]
    let sent = crate::hop_timing::outbound_request(&mut parts.headers);
    let pooled = shared.pool.get(key, &shared.mesh).await?;
    let mut sender = pooled.sender.clone();
    let timeout = shared.config.timeouts.response;
    let response = match tokio::time::timeout(
        timeout,
        sender.send_request(Request::from_parts(parts, body)),
    )
    .await
    {
        Err(_) => return Err(ProxyError::ResponseTimeout(timeout)),
        Ok(Err(e)) => {
            if e.is_closed() || e.is_canceled() {
                shared.pool.evict(key).await;
            }
            return Err(ProxyError::Upstream(format!(
                "the peer proxy at {} failed mid-request ({}); check its log",
                key.addr,
                crate::http::error_chain(&e)
            )));
        }
        Ok(Ok(response)) => response,
    };

    if let (Some(app_upgrade), Some(protocol)) = (app_upgrade, upgrade) {
        return Ok((
            tunnel(response, app_upgrade, &protocol, shared, tunnels),
            pooled.peer,
        ));
    }
    let (mut parts, body) = response.into_parts();
    if from_http1 {
        parts.version = Version::HTTP_11;
    }
    let body = boxed(body);
    #[cfg(feature = "hop-timing")]
    let body = crate::hop_timing::outbound_response(&shared.hops, sent, &mut parts.headers, body);
    Ok((Response::from_parts(parts, body), pooled.peer))
}

/// Completes an upgrade: on the peer's 200 to the extended CONNECT, answers the app 101 and
/// joins the two upgraded streams (a task in `tunnels`); any other answer goes back to the
/// app as it is.
fn tunnel(
    mut response: Response<Incoming>,
    app_upgrade: hyper::upgrade::OnUpgrade,
    protocol: &str,
    shared: &Shared,
    tunnels: &TaskTracker,
) -> Response<ProxyBody> {
    if response.status() != StatusCode::OK {
        return response.map(boxed);
    }
    let peer_upgrade = hyper::upgrade::on(&mut response);
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
        app_upgrade,
        peer_upgrade,
        idle,
        std::future::pending(), // the inbound proxy enforces policy on it
        "outbound",
    ));
    switching
}
