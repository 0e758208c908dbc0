//! The admission webhook: `POST /mutate` with an `admission.k8s.io/v1` AdmissionReview.
//!
//! It answers with the request's `uid`, `allowed: true`, and a base64 JSON patch with
//! `patchType: JSONPatch` only when there is one; skipped pods get a warning saying why. A pod
//! that would get around the mesh (a fake Warden container, an app running as the proxy's
//! UID) is refused: `allowed: false` with a 403 status saying why, and so is an ephemeral
//! (debug) container added to an injected pod that would run as the proxy's UID. A malformed body or the
//! wrong apiVersion is 400, an oversized body 413; a non-Pod object, another operation or a
//! dry run is allowed unchanged.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use k8s_openapi::api::core::v1::Pod;
use kube_core::admission::{AdmissionReview, Operation};
use kube_core::DynamicObject;
use serde_json::{json, Value};
use warden_identity::http::{json as json_response, read_body, text, Body, BodyError};

use crate::config::InjectorConfig;
use crate::patch::{debug_container_refusal, inject, NotInjected};

/// The admission API version served.
pub const API_VERSION: &str = "admission.k8s.io/v1";
/// The webhook path.
pub const PATH: &str = "/mutate";
/// The largest AdmissionReview accepted (Kubernetes objects are at most ~1.5 MiB).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// Why a review could not be answered (the API server sees the status).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// Not JSON, or not the shape of an AdmissionReview.
    #[error("malformed AdmissionReview: {0}")]
    Malformed(String),
    /// Another apiVersion or kind than admission.k8s.io/v1 AdmissionReview.
    #[error("expected apiVersion admission.k8s.io/v1, kind AdmissionReview; got {0}")]
    WrongVersion(String),
    /// No `request` in the review.
    #[error("the AdmissionReview has no request")]
    NoRequest,
}

impl ReviewError {
    /// The HTTP status (all are the caller's fault).
    pub fn status(&self) -> StatusCode {
        StatusCode::BAD_REQUEST
    }
}

/// An answered review: the response document and the outcome (a metrics label).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The AdmissionReview to return.
    pub review: Value,
    /// `injected`, `skipped`, `refused`, `ignored` (not a pod creation), `dry_run` or
    /// `invalid_pod`.
    pub outcome: &'static str,
}

/// An AdmissionReview carrying `response`.
fn envelope(response: Value) -> Value {
    json!({"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response})
}

fn response(uid: &str, patch: Option<&Value>, warnings: Vec<String>) -> Value {
    let mut response = json!({"uid": uid, "allowed": true});
    if let Some(patch) = patch {
        let bytes = serde_json::to_vec(patch).unwrap_or_default();
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    if !warnings.is_empty() {
        response["warnings"] = json!(warnings);
    }
    envelope(response)
}

/// A refusal: the API server denies the request and shows `message`.
fn denial(uid: &str, message: String) -> Value {
    envelope(json!({
        "uid": uid,
        "allowed": false,
        "status": {"status": "Failure", "code": 403, "reason": "Forbidden", "message": message},
    }))
}

/// Answers one AdmissionReview body.
pub fn review(body: &[u8], config: &InjectorConfig) -> Result<Answer, ReviewError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ReviewError::Malformed(e.to_string()))?;
    let version = (
        value.get("apiVersion").and_then(Value::as_str),
        value.get("kind").and_then(Value::as_str),
    );
    if version != (Some(API_VERSION), Some("AdmissionReview")) {
        return Err(ReviewError::WrongVersion(format!(
            "apiVersion {}, kind {}",
            version.0.unwrap_or("(none)"),
            version.1.unwrap_or("(none)")
        )));
    }
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_value(value).map_err(|e| ReviewError::Malformed(e.to_string()))?;
    let request = review.request.ok_or(ReviewError::NoRequest)?;
    let answer = |patch: Option<&Value>, warnings: Vec<String>, outcome| Answer {
        review: response(&request.uid, patch, warnings),
        outcome,
    };
    let kind = &request.kind;
    let ephemeral = request.sub_resource.as_deref() == Some("ephemeralcontainers")
        && matches!(request.operation, Operation::Update);
    if !kind.group.is_empty()
        || kind.kind != "Pod"
        || !(ephemeral || matches!(request.operation, Operation::Create))
        || (request.sub_resource.is_some() && !ephemeral)
    {
        return Ok(answer(None, vec![], "ignored"));
    }
    if request.dry_run {
        return Ok(answer(None, vec![], "dry_run"));
    }
    let pod: Result<Pod, String> = request
        .object
        .as_ref()
        .ok_or_else(|| "the request carries no object".to_string())
        .and_then(|o| serde_json::to_value(o).map_err(|e| e.to_string()))
        .and_then(|v| serde_json::from_value(v).map_err(|e| e.to_string()));
    let mut pod = match pod {
        Ok(pod) => pod,
        Err(e) => {
            let warning = format!("warden: not injected: the object is not a valid Pod ({e})");
            return Ok(answer(None, vec![warning], "invalid_pod"));
        }
    };
    if ephemeral {
        // `kubectl debug` adds a container to a running pod, past pod creation: one running
        // as the proxy's UID would bypass the mesh in an injected pod.
        return Ok(match debug_container_refusal(&pod) {
            Some(reason) => Answer {
                review: denial(&request.uid, format!("warden: {reason}")),
                outcome: "refused",
            },
            None => answer(None, vec![], "ignored"),
        });
    }
    // The request's namespace is where the pod goes (the object may not name one), and its
    // MeshPolicies decide which annotations the pod may use: never what the object claims.
    if request.namespace.is_some() {
        pod.metadata.namespace = request.namespace.clone();
    }
    Ok(match inject(&pod, config) {
        Ok(injection) => answer(Some(&injection.patch), injection.warnings, "injected"),
        Err(skip @ NotInjected::Skipped(_)) => {
            answer(None, vec![format!("warden: {skip}")], "skipped")
        }
        Err(NotInjected::Refused(reason)) => Answer {
            review: denial(&request.uid, format!("warden: {reason}")),
            outcome: "refused",
        },
    })
}

/// Answers one HTTP request to the webhook server.
pub async fn handle(req: Request<Incoming>, config: Arc<InjectorConfig>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/live" | "/ready") => return text(StatusCode::OK, "ok\n"),
        (&Method::POST, PATH) => {}
        (_, PATH) => return text(StatusCode::METHOD_NOT_ALLOWED, "POST an AdmissionReview\n"),
        _ => return text(StatusCode::NOT_FOUND, "not found: POST /mutate\n"),
    }
    let (parts, body) = req.into_parts();
    let body: Bytes = match read_body(&parts.headers, body, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(BodyError::TooLarge(n)) => {
            count("too_large");
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("AdmissionReview larger than {n} bytes\n"),
            );
        }
        Err(BodyError::Read(e)) => {
            count("malformed");
            return text(StatusCode::BAD_REQUEST, format!("{e}\n"));
        }
    };
    match review(&body, &config) {
        Ok(answer) => {
            count(answer.outcome);
            if matches!(answer.outcome, "injected" | "skipped" | "refused") {
                tracing::info!(outcome = answer.outcome, "admission review");
            }
            json_response(StatusCode::OK, &answer.review)
        }
        Err(e) => {
            count("malformed");
            tracing::warn!(error = %e, "admission review refused");
            text(e.status(), format!("{e}\n"))
        }
    }
}

/// Counts an error of the MeshPolicy or Namespace watch (retried; the last grants stay).
pub fn count_grant_watch_error() {
    metrics::counter!("warden_injector_grant_watch_errors_total").increment(1);
}

fn count(result: &'static str) {
    metrics::counter!("warden_injector_reviews_total", "result" => result).increment(1);
}

/// Registers the injector's metrics.
pub fn describe() {
    metrics::describe_gauge!(
        "warden_injector_serving_cert_expiry_timestamp_seconds",
        "When the webhook's serving certificate expires (Unix seconds)."
    );
    metrics::describe_gauge!(
        "warden_injector_serving_cert_not_before_timestamp_seconds",
        "When the webhook's serving certificate became valid (Unix seconds)."
    );
    metrics::describe_counter!(
        "warden_injector_trust_anchor_reloads_total",
        "Reloads of the trust anchors handed to proxies after the file changed, by result."
    );
    metrics::describe_counter!(
        "warden_injector_grant_watch_errors_total",
        "Errors of the MeshPolicy and Namespace watches behind allowedAnnotations (retried; the last grants stay in force meanwhile)."
    );
    metrics::counter!("warden_injector_grant_watch_errors_total").increment(0);
    metrics::describe_counter!(
        "warden_injector_reviews_total",
        "AdmissionReviews answered, by result (injected, skipped, refused, ignored, dry_run, invalid_pod, malformed, too_large)."
    );
    for result in [
        "injected",
        "skipped",
        "refused",
        "ignored",
        "dry_run",
        "invalid_pod",
        "malformed",
        "too_large",
    ] {
        metrics::counter!("warden_injector_reviews_total", "result" => result).increment(0);
    }
}
