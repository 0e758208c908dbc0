//! A plaintext admin endpoint: `/live`, `/ready` (with its reason in the body), Prometheus
//! `/metrics` (with process metrics), and `/log-level` (GET to read; PUT, from loopback only,
//! to change the log filter at runtime). Kept off the serving port so probes and scrapes need
//! no token.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::http::{read_body, text, Body};
use crate::server::{serve_connection, ConnectionCap, ServerLimits};

/// Whether the process is ready to serve, and why (shown on `/ready`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// Ready to serve.
    pub ready: bool,
    /// One line per condition, for operators.
    pub detail: String,
}

impl Readiness {
    /// Not ready, for the given reason.
    pub fn not_ready(reason: impl Into<String>) -> Self {
        Self {
            ready: false,
            detail: reason.into(),
        }
    }
}

/// Reads (`None`) or replaces (`Some(filter)`) the log filter; returns the filter in force.
pub type LogLevel = Arc<dyn Fn(Option<&str>) -> Result<String, String> + Send + Sync>;

/// A response being computed by an extra route.
pub type RouteFuture = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

/// Extra GET routes of the owning process (the proxy's app probes): given the path, the
/// response, or `None` when the path is not one of them.
pub type ExtraRoutes = Arc<dyn Fn(&str) -> Option<RouteFuture> + Send + Sync>;

/// What the admin endpoint exposes besides readiness.
#[derive(Clone)]
pub struct Telemetry {
    /// The Prometheus recorder's handle.
    pub metrics: PrometheusHandle,
    /// The runtime log filter control, if the process has one.
    pub log_level: Option<LogLevel>,
    /// Extra GET routes, tried before answering 404.
    pub extra_routes: Option<ExtraRoutes>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("log_level", &self.log_level.is_some())
            .field("extra_routes", &self.extra_routes.is_some())
            .finish()
    }
}

impl Telemetry {
    /// Metrics only (tests, benchmarks).
    pub fn new(metrics: PrometheusHandle) -> Self {
        Self {
            metrics,
            log_level: None,
            extra_routes: None,
        }
    }
}

/// Answers one admin request.
pub async fn respond(
    req: Request<Incoming>,
    peer: SocketAddr,
    readiness: &Readiness,
    telemetry: &Telemetry,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET | Method::HEAD, "/live") => text(StatusCode::OK, "live\n"),
        (Method::GET | Method::HEAD, "/ready") => {
            let status = if readiness.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, format!("{}\n", readiness.detail))
        }
        (Method::GET | Method::HEAD, "/metrics") => {
            let mut exposition = telemetry.metrics.render();
            exposition.push_str(&crate::process_metrics::render());
            let mut resp = text(StatusCode::OK, exposition);
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        (method, "/log-level") => {
            let Some(log_level) = &telemetry.log_level else {
                return text(
                    StatusCode::NOT_FOUND,
                    "no runtime log control in this process\n",
                );
            };
            match method {
                Method::GET => match log_level(None) {
                    Ok(filter) => text(StatusCode::OK, format!("{filter}\n")),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
                },
                // The admin port is reachable from other pods; only the pod itself may change
                // what the proxy logs.
                Method::PUT if !peer.ip().to_canonical().is_loopback() => text(
                    StatusCode::FORBIDDEN,
                    "the log level can only be changed from the pod itself (loopback)\n",
                ),
                Method::PUT => {
                    let headers = req.headers().clone();
                    let body = match read_body(&headers, req.into_body(), 1024).await {
                        Ok(body) => body,
                        Err(e) => return text(StatusCode::PAYLOAD_TOO_LARGE, format!("{e}\n")),
                    };
                    let filter = String::from_utf8_lossy(&body).trim().to_string();
                    match log_level(Some(&filter)) {
                        Ok(now) => text(StatusCode::OK, format!("{now}\n")),
                        Err(e) => text(
                            StatusCode::BAD_REQUEST,
                            format!("log filter {filter:?}: {e}\n"),
                        ),
                    }
                }
                _ => text(StatusCode::METHOD_NOT_ALLOWED, "GET or PUT\n"),
            }
        }
        (Method::GET | Method::HEAD, path) => {
            match telemetry
                .extra_routes
                .as_ref()
                .and_then(|routes| routes(path))
            {
                Some(response) => response.await,
                None => text(
                    StatusCode::NOT_FOUND,
                    "not found: /live /ready /metrics /log-level\n",
                ),
            }
        }
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n"),
    }
}

/// Serves the admin endpoint on `listener` until `shutdown`, within the default
/// [`ServerLimits`].
pub async fn serve(
    listener: TcpListener,
    readiness: watch::Receiver<Readiness>,
    telemetry: Telemetry,
    shutdown: CancellationToken,
) {
    serve_with_limits(
        listener,
        readiness,
        telemetry,
        ServerLimits::default(),
        shutdown,
    )
    .await;
}

/// Serves the admin endpoint on `listener` until `shutdown`, within `limits` (its connection
/// cap, header, idle and request timeouts; it has no TLS handshake).
pub async fn serve_with_limits(
    listener: TcpListener,
    readiness: watch::Receiver<Readiness>,
    telemetry: Telemetry,
    limits: ServerLimits,
    shutdown: CancellationToken,
) {
    // Histogram samples are folded into their buckets by the recorder's own upkeep thread
    // (`telemetry::prometheus`) and by each scrape, never here: on a proxy this task would
    // share the first worker's thread with requests.
    let cap = ConnectionCap::new(limits.max_connections, "admin");
    while let Some((tcp, peer, permit)) = cap.accept(&listener, &shutdown).await {
        let readiness = readiness.clone();
        let telemetry = telemetry.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let handler = move |req| {
                let readiness = readiness.borrow().clone();
                let telemetry = telemetry.clone();
                async move { respond(req, peer, &readiness, &telemetry).await }
            };
            if let Err(e) = serve_connection(tcp, handler, &limits, None).await {
                tracing::debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
}
