//! A plaintext admin endpoint: `/live`, `/ready` (with its reason in the body) and
//! Prometheus `/metrics`. Kept off the serving port so probes and scrapes need no token.

use std::convert::Infallible;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::http::{text, Body};

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

/// Answers one admin request.
pub fn respond(
    req: &Request<Incoming>,
    readiness: &Readiness,
    metrics: &PrometheusHandle,
) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" => {
            let status = if readiness.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, format!("{}\n", readiness.detail))
        }
        "/metrics" => {
            let mut resp = text(StatusCode::OK, metrics.render());
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        _ => text(StatusCode::NOT_FOUND, "not found: /live /ready /metrics\n"),
    }
}

/// Serves the admin endpoint on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    readiness: watch::Receiver<Readiness>,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) {
    // Histograms are drained into their buckets by upkeep; run it even between scrapes so
    // memory stays flat.
    let upkeep = metrics.clone();
    let upkeep_stop = shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = upkeep_stop.cancelled() => return,
                _ = tick.tick() => upkeep.run_upkeep(),
            }
        }
    });
    loop {
        let tcp = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let readiness = readiness.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let handler = hyper::service::service_fn(move |req| {
                let resp = respond(&req, &readiness.borrow(), &metrics);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), handler)
                .await;
        });
    }
}
