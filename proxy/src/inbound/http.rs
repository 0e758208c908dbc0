//! Inbound HTTP: serves proxy-to-proxy HTTP/2 and forwards each request to the app over
//! HTTP/1.1 or h2c (pooled), after the authorization hook. The app sees
//! `x-warden-client-id` (the verified caller) and `x-warden-tls`; any such header a client
//! sent is removed first.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Frame};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use warden_core::policy::path::normalize;

use super::app::AppError;
use super::InboundConn;
use crate::access_log;
use crate::authz::{AuthzContext, AuthzRequest, LiveConnection, Verdict};
use crate::config::AppProtocol;
use crate::detect::Protocol;
use crate::drain::DrainOnDrop;
use crate::h2_client::Keepalive;
use crate::h2_server::{self, OnTunnel};
use crate::http::{
    boxed, check_target, empty, error_chain, forwarded_uri, is_grpc, names, request_id,
    strip_hop_by_hop, BoxError, ProxyBody, ProxyError, WEBSOCKET,
};
use crate::metrics::{self, Direction};
use crate::shared::{RunControl, Shared};

/// Serves one inbound HTTP connection: proxy-to-proxy HTTP/2 over mTLS, or (permissive
/// mode) a plaintext caller's HTTP/1.1 or HTTP/2.
pub async fn serve<I>(
    io: I,
    protocol: Protocol,
    conn: Arc<InboundConn>,
    shared: Arc<Shared>,
    run: RunControl,
) -> Result<(), ()>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = &shared.config.limits;
    if protocol == Protocol::Http2 {
        let settings = h2_server::Settings {
            // As on the client side of the pooled connection (see `outbound::pool`): a larger
            // window raises h2's budget for unread small DATA frames, so a slow app reading
            // a client stream of small messages does not close the connection other calls
            // from the same peer proxy share.
            stream_window: crate::outbound::pool::CONNECTION_WINDOW / 4,
            connection_window: crate::outbound::pool::CONNECTION_WINDOW,
            max_header_list_size: u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX),
            max_concurrent_streams: limits.max_concurrent_streams,
            connect_protocol: true,
            keepalive: Some(Keepalive {
                interval: Duration::from_secs(30),
                timeout: Duration::from_secs(10),
            }),
            stream_idle: shared.config.timeouts.idle,
        };
        let served = h2_server::serve(io, &settings, &run, |req| handle(req, &conn, &shared));
        return served
            .await
            .map_err(|e| tracing::debug!(error = %e, "inbound HTTP/2 connection ended"));
    }
    let service_shared = shared.clone();
    let service = hyper::service::service_fn(move |req| handle(req, &conn, &service_shared));
    let conn = crate::http::http1_server(&shared.config)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    run.serve_http(conn, |c| c.graceful_shutdown())
        .await
        .map_err(|e| tracing::debug!(error = %e, "inbound HTTP/1 connection ended"))
}

/// Starts one request. Everything up to the app call runs here, before the first poll, so
/// the future each HTTP/2 stream's task holds (and copies as it moves) carries the call in
/// flight and what its accounting needs, not the request as well: an `async fn` keeps its
/// arguments, and each call it awaits, side by side.
fn handle<B>(
    req: Request<B>,
    conn: &Arc<InboundConn>,
    shared: &Arc<Shared>,
) -> Exchange<impl Future<Output = Result<Response<ProxyBody>, AppError>> + Send + 'static>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let started = Instant::now();
    let grpc = is_grpc(req.headers());
    let id = request_id();
    let access = access_log::enabled().then(|| (req.method().clone(), req.uri().clone()));
    #[cfg(feature = "hop-timing")]
    let timed = crate::hop_timing::inbound_request(req.headers(), crate::hop_timing::now_ns());
    let call = match prepare(req, conn, shared, &id) {
        Ok(Prepared::App { http1, request }) => Call::App {
            sent: tokio::time::timeout(
                shared.config.timeouts.response,
                shared.apps.send(conn.target.app, http1, request),
            ),
        },
        Ok(Prepared::Upgrade(upgrade)) => {
            let (conn, shared) = (conn.clone(), shared.clone());
            // Boxed: rare, and its state would otherwise enlarge every request's future.
            Call::Boxed {
                call: Box::pin(async move { upgrade.run(&conn, &shared).await }),
            }
        }
        Err(error) => Call::Failed { error: Some(error) },
    };
    Exchange {
        call,
        done: Done {
            started,
            grpc,
            id,
            access,
            conn: conn.clone(),
            shared: shared.clone(),
            #[cfg(feature = "hop-timing")]
            timed: timed.map(|arrived| (arrived, crate::hop_timing::now_ns())),
        },
    }
}

pin_project_lite::pin_project! {
    /// One request from its app call (or the error that replaced it) to its response, with
    /// the call's future held in place.
    struct Exchange<F> {
        #[pin]
        call: Call<F>,
        done: Done,
    }
}

pin_project_lite::pin_project! {
    /// Where a request stands once it has been checked.
    #[project = CallProj]
    enum Call<F> {
        /// With the app, within the response timeout.
        App { #[pin] sent: tokio::time::Timeout<F> },
        /// A WebSocket upgrade.
        Boxed { call: Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, ProxyError>> + Send>> },
        /// Refused before it reached the app.
        Failed { error: Option<ProxyError> },
    }
}

/// What a request's accounting needs once it is answered.
struct Done {
    started: Instant,
    grpc: bool,
    id: String,
    access: Option<(Method, Uri)>,
    conn: Arc<InboundConn>,
    shared: Arc<Shared>,
    /// When the request arrived and when it left for the app (a `hop-timing` build).
    #[cfg(feature = "hop-timing")]
    timed: Option<(u64, u64)>,
}

impl<F> Future for Exchange<F>
where
    F: Future<Output = Result<Response<ProxyBody>, AppError>>,
{
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match this.call.project() {
            CallProj::App { sent } => match ready!(sent.poll(cx)) {
                Err(_) => Err(ProxyError::ResponseTimeout(
                    this.done.shared.config.timeouts.response,
                )),
                Ok(answer) => from_app(answer, this.done),
            },
            CallProj::Boxed { call } => ready!(call.as_mut().poll(cx)),
            CallProj::Failed { error } => match error.take() {
                Some(error) => Err(error),
                // Polled again after it completed.
                None => return Poll::Pending,
            },
        };
        Poll::Ready(Ok(this.done.finish(result)))
    }
}

impl Done {
    /// The response (the proxy's own, for an error), counted and logged.
    fn finish(&self, result: Result<Response<ProxyBody>, ProxyError>) -> Response<ProxyBody> {
        let (conn, id) = (&self.conn, &self.id);
        let response = match result {
            Ok(response) => response,
            Err(e) => {
                match &e {
                    ProxyError::Denied { policy } => {
                        tracing::info!(request_id = %id, client = conn.client_label(), %policy, "inbound request denied")
                    }
                    other => {
                        tracing::warn!(request_id = %id, client = conn.client_label(), app = %conn.target.app, error = %other, "inbound request failed")
                    }
                }
                e.to_response(self.grpc, id)
            }
        };
        let own = self.shared.own_id();
        let status = response.status().as_u16();
        metrics::request(
            Direction::Inbound,
            conn.client_label(),
            &own,
            status,
            self.started.elapsed(),
        );
        if let Some((method, uri)) = &self.access {
            access_log::request(&access_log::Request {
                direction: Direction::Inbound,
                request_id: id,
                client_id: conn.client_label(),
                server_id: &own,
                method: method.as_str(),
                path: uri.path(),
                status,
                elapsed: self.started.elapsed(),
            });
        }
        response
    }
}

/// The app's answer as the caller gets it, or why there is none.
fn from_app(
    answer: Result<Response<ProxyBody>, AppError>,
    #[cfg_attr(not(feature = "hop-timing"), allow(unused_variables))] done: &Done,
) -> Result<Response<ProxyBody>, ProxyError> {
    let app = done.conn.target.app;
    let response = match answer {
        Err(AppError::Connect(e)) => {
            return Err(ProxyError::Unreachable {
                target: app.to_string(),
                reason: e.to_string(),
            })
        }
        Err(AppError::ConnectTimeout(_)) => {
            return Err(ProxyError::ConnectTimeout(app.to_string()))
        }
        Err(AppError::Http1(e)) => return Err(app_failed(app, &e)),
        Err(AppError::H2c(e)) => return Err(app_failed(app, &e)),
        Ok(response) => response,
    };
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.version = Version::HTTP_2;
    #[cfg(feature = "hop-timing")]
    if let Some((arrived, to_app)) = done.timed {
        crate::hop_timing::inbound_response(arrived, to_app, &mut parts.headers);
    }
    Ok(Response::from_parts(parts, body))
}

/// The path of a request target as it was sent, without its query.
fn path_as_sent(target: &PathAndQuery) -> &str {
    let text = target.as_str();
    text.split_once('?').map_or(text, |(path, _)| path)
}

/// A checked request, ready to go.
enum Prepared {
    /// To the app over HTTP/1.1 (`http1`) or h2c.
    App {
        http1: bool,
        request: Request<ProxyBody>,
    },
    /// A WebSocket upgrade (an extended CONNECT from the peer).
    Upgrade(Upgrade),
}

/// Checks `req` (target, method, path, policy) and rewrites it for the app.
fn prepare<B>(
    mut req: Request<B>,
    conn: &InboundConn,
    shared: &Shared,
    request_id: &str,
) -> Result<Prepared, ProxyError>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    check_target(&req)?;
    // An extended CONNECT (RFC 8441) is the caller's WebSocket upgrade: the app receives it
    // as the GET it was, so it is authorized and audited as that GET.
    let tunnel = req
        .extensions()
        .get::<h2::ext::Protocol>()
        .map(|p| p.as_str().to_ascii_lowercase())
        .filter(|_| req.method() == Method::CONNECT);
    if tunnel.as_deref().is_some_and(|p| p != WEBSOCKET) {
        // An h2c tunnel would let the caller speak HTTP/2 to the app unchecked.
        return Err(ProxyError::BadRequest(
            "only WebSocket is carried through an extended CONNECT".into(),
        ));
    }
    if tunnel.is_some() {
        *req.method_mut() = Method::GET;
    } else {
        upper_case_method(req.method_mut())?;
    }
    // Policies see, and the app gets, the normalized path (no dot-segment tricks).
    let path = normalize(req.uri().path()).map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    let workload = shared.credentials.borrow().svid.id().clone();
    // A tunnel outlives this request: a policy change that denies its GET closes it, counted
    // from before the check.
    let revoked = tunnel.is_some().then(|| {
        let revoked: Pin<Box<dyn Future<Output = ()> + Send>> =
            Box::pin(shared.authz.until_revoked(LiveConnection {
                client: conn.client.clone(),
                port: conn.target.app.port(),
                http: Some((Method::GET.to_string(), path.clone())),
                workload: workload.clone(),
                client_addr: Some(conn.peer),
            }));
        revoked
    });
    let request = AuthzRequest {
        client: conn.client.as_ref(),
        port: conn.target.app.port(),
        http: Some((req.method().as_str(), &path)),
    };
    let ctx = AuthzContext {
        workload: &workload,
        client_addr: Some(conn.peer),
        request_id,
    };
    match shared.authz.check(&request, &ctx) {
        Verdict::Allow => {}
        Verdict::Deny { policy } => return Err(ProxyError::Denied { policy }),
        Verdict::Unrecorded(_) => return Err(ProxyError::AuditUnavailable),
    }
    // A path normalization left as it was (the usual case) is passed on as parsed. Compared
    // as sent: `PathAndQuery::path` says `/` for a target with none (`?x`), which the app
    // would otherwise get as it came, not as it was authorized.
    let path_and_query = match req.uri().path_and_query() {
        Some(parsed) if path_as_sent(parsed) == path => parsed.clone(),
        parsed => {
            let text = match parsed.and_then(|p| p.query()) {
                Some(query) => format!("{path}?{query}"),
                None => path,
            };
            PathAndQuery::try_from(text).map_err(|e| ProxyError::BadRequest(e.to_string()))?
        }
    };
    // Only the HTTP/2 server takes extended CONNECT, and it hands each one's stream over.
    let peer_upgrade =
        match tunnel {
            Some(_) => Some(req.extensions_mut().remove::<OnTunnel>().ok_or_else(|| {
                ProxyError::BadRequest("an extended CONNECT outside HTTP/2".into())
            })?),
            None => None,
        };

    let (mut parts, body) = req.into_parts();
    if parts.version < Version::HTTP_2 {
        // A plaintext caller's HTTP/1 request (permissive mode): its hop-by-hop headers
        // (`Connection`, `Upgrade`: an h2c upgrade above all) are for this hop, not the app.
        // Peer proxies speak HTTP/2, which carries none.
        strip_hop_by_hop(&mut parts.headers);
    }
    let orig_proto = parts.headers.remove(names::ORIG_PROTO);
    // The caller's identity is the one we verified, whatever the request claims, under any
    // spelling an app could read as ours (`x_warden_client_id` is the same header to CGI).
    strip_warden_headers(&mut parts.headers);
    if let Some(v) = &conn.headers.client_id {
        parts.headers.insert(names::CLIENT_ID, v.clone());
    }
    if let Some(v) = &conn.headers.tls {
        parts.headers.insert(names::TLS, v.clone());
    }
    let authority = parts.uri.authority().cloned();
    parts.uri = forwarded_uri(conn.app_authority.clone(), path_and_query)?;
    let http1 = app_speaks_http1(conn.target.protocol, orig_proto.as_ref(), parts.version);
    if http1 || tunnel.is_some() {
        parts.version = Version::HTTP_11;
        if let Some(host) = authority
            .as_ref()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            parts.headers.insert(header::HOST, host);
        }
    } else {
        parts.version = Version::HTTP_2;
    }

    if let (Some(protocol), Some(peer_upgrade), Some(revoked)) = (tunnel, peer_upgrade, revoked) {
        return Ok(Prepared::Upgrade(Upgrade {
            parts,
            protocol,
            peer_upgrade,
            revoked,
        }));
    }
    // The app may answer before reading all of it (see `drain`).
    let body = if http1 {
        // The HTTP/1.1 client passes no request trailers on (`app_http1`).
        boxed(DrainOnDrop::new(body))
    } else {
        // Over h2c a caller's trailers reach the app: no `x-warden-*` among them either.
        boxed(http_body_util::BodyExt::map_frame(
            DrainOnDrop::new(body),
            strip_warden_trailers,
        ))
    };
    Ok(Prepared::App {
        http1,
        request: Request::from_parts(parts, body),
    })
}

/// The app's connection failed after it was reached (it closed or reset it mid-request).
fn app_failed(app: std::net::SocketAddr, error: &dyn std::error::Error) -> ProxyError {
    ProxyError::Upstream(format!(
        "the app at {app} failed mid-request ({}); check the app's log",
        error_chain(error)
    ))
}

/// Methods compare upper-case in policies; the app receives the method that was authorized.
fn upper_case_method(method: &mut Method) -> Result<(), ProxyError> {
    if method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        *method = Method::from_bytes(method.as_str().to_ascii_uppercase().as_bytes())
            .map_err(|e| ProxyError::BadRequest(format!("method {method}: {e}")))?;
    }
    Ok(())
}

/// Whether the request goes to the app as HTTP/1.1 (else h2c): as configured, or in `auto`
/// as the caller's app sent it. A peer proxy says so in `x-warden-orig-proto`; a plaintext
/// caller (permissive mode) speaks to us as it speaks to the app.
fn app_speaks_http1(
    protocol: AppProtocol,
    orig_proto: Option<&HeaderValue>,
    version: Version,
) -> bool {
    match (protocol, orig_proto) {
        (AppProtocol::Http1, _) => true,
        (AppProtocol::H2c, _) => false,
        (AppProtocol::Auto, Some(orig)) => orig == "HTTP/1.1",
        (AppProtocol::Auto, None) => version < Version::HTTP_2,
    }
}

/// Whether an app could read `name` as one of Warden's `x-warden-*` headers: CGI, WSGI, PHP
/// and Rack turn `-` and `_` alike into `_`, and some gateways turn any character that is
/// not a letter or digit into `_`.
pub fn is_warden_header(name: &str) -> bool {
    const PREFIX: &[u8] = b"x-warden-";
    let name = name.as_bytes();
    name.len() >= PREFIX.len()
        && name.iter().zip(PREFIX).all(|(n, p)| {
            n.to_ascii_lowercase() == *p || (*p == b'-' && !n.is_ascii_alphanumeric())
        })
}

/// Removes every header an app could read as one of Warden's.
fn strip_warden_headers(headers: &mut http::HeaderMap) {
    let spoofed: Vec<header::HeaderName> = headers
        .keys()
        .filter(|name| is_warden_header(name.as_str()))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(&name);
    }
}

/// A body frame with every trailer an app could read as one of Warden's removed.
fn strip_warden_trailers(mut frame: Frame<Bytes>) -> Frame<Bytes> {
    if let Some(trailers) = frame.trailers_mut() {
        strip_warden_headers(trailers);
    }
    frame
}

/// A WebSocket upgrade from the peer, checked and on its way to the app.
struct Upgrade {
    parts: http::request::Parts,
    protocol: String,
    peer_upgrade: OnTunnel,
    /// Ends when a policy change denies the tunnel.
    revoked: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Upgrade {
    /// An extended CONNECT from the peer becomes an HTTP/1.1 upgrade request to the app; on
    /// the app's 101, the peer gets 200 and the two streams are joined.
    async fn run(
        self,
        conn: &InboundConn,
        shared: &Shared,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let Upgrade {
            mut parts,
            protocol,
            peer_upgrade,
            revoked,
        } = self;
        let protocol = protocol.as_str();
        let app = conn.target.app;
        parts.method = Method::GET;
        parts.uri = parts.uri.path_and_query().map_or_else(
            || Uri::from_static("/"),
            |p| Uri::try_from(p.as_str()).unwrap_or_else(|_| Uri::from_static("/")),
        );
        parts.extensions = http::Extensions::new();
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Ok(v) = HeaderValue::from_str(protocol) {
            parts.headers.insert(header::UPGRADE, v);
        }
        let tcp =
            match tokio::time::timeout(shared.config.timeouts.connect, TcpStream::connect(app))
                .await
            {
                Ok(Ok(tcp)) => tcp,
                Ok(Err(e)) => {
                    return Err(ProxyError::Unreachable {
                        target: app.to_string(),
                        reason: e.to_string(),
                    })
                }
                Err(_) => return Err(ProxyError::ConnectTimeout(app.to_string())),
            };
        let _ = tcp.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| app_failed(app, &e))?;
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        let timeout = shared.config.timeouts.response;
        let mut response = match tokio::time::timeout(
            timeout,
            sender.send_request(Request::from_parts(parts, empty())),
        )
        .await
        {
            Err(_) => return Err(ProxyError::ResponseTimeout(timeout)),
            Ok(Err(e)) => return Err(app_failed(app, &e)),
            Ok(Ok(response)) => response,
        };
        if response.status().is_success() {
            // A 2xx to the peer's CONNECT would say the tunnel is open; it is not.
            return Err(ProxyError::Upstream(format!(
                "the app at {app} answered a WebSocket upgrade with {} instead of 101",
                response.status()
            )));
        }
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            parts.version = Version::HTTP_2;
            return Ok(Response::from_parts(parts, boxed(body)));
        }
        let app_upgrade = hyper::upgrade::on(&mut response);
        let mut ok = Response::new(empty());
        *ok.headers_mut() = response.headers().clone();
        strip_hop_by_hop(ok.headers_mut());
        let idle = shared.config.timeouts.idle;
        // The peer's connection stays open (and counted) while this stream of it lives.
        tokio::spawn(crate::http::bridge_upgrades(
            peer_upgrade.tunnel(),
            crate::http::upgraded(app_upgrade),
            idle,
            revoked,
            "inbound",
        ));
        Ok(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_protocol_follows_the_config_then_the_caller() {
        let h1 = HeaderValue::from_static("HTTP/1.1");
        let h2 = HeaderValue::from_static("HTTP/2.0");
        let cases = [
            (
                "configured http1",
                AppProtocol::Http1,
                None,
                Version::HTTP_2,
                true,
            ),
            (
                "configured h2c",
                AppProtocol::H2c,
                Some(&h1),
                Version::HTTP_11,
                false,
            ),
            (
                "a peer proxy's HTTP/1.1 caller",
                AppProtocol::Auto,
                Some(&h1),
                Version::HTTP_2,
                true,
            ),
            (
                "a peer proxy's HTTP/2 caller",
                AppProtocol::Auto,
                Some(&h2),
                Version::HTTP_2,
                false,
            ),
            (
                "a plaintext HTTP/1.1 caller",
                AppProtocol::Auto,
                None,
                Version::HTTP_11,
                true,
            ),
            (
                "a plaintext HTTP/1.0 caller",
                AppProtocol::Auto,
                None,
                Version::HTTP_10,
                true,
            ),
            (
                "a plaintext h2c caller",
                AppProtocol::Auto,
                None,
                Version::HTTP_2,
                false,
            ),
        ];
        for (name, protocol, orig, version, want) in cases {
            assert_eq!(app_speaks_http1(protocol, orig, version), want, "{name}");
        }
    }

    #[test]
    fn every_spelling_an_app_could_read_as_a_warden_header_is_one() {
        for name in [
            "x-warden-client-id",
            "X-Warden-Client-Id",
            "x_warden_client_id",
            "x.warden.client-id",
            "x-warden-",
            "x~warden~tls",
        ] {
            assert!(is_warden_header(name), "{name}");
        }
        for name in [
            "x-warde",
            "x-wardenclient-id",
            "xx-warden-client-id",
            "x-forwarded-for",
        ] {
            assert!(!is_warden_header(name), "{name}");
        }
    }
}
