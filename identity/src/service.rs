//! `warden identity`: the issuance service. `POST /v1/certify` over HTTPS turns an
//! authenticated caller's CSR into an X.509-SVID for the caller's own identity.
//!
//! Order of checks, cheapest and least trusting first: path and method, the caller's rate,
//! the body size (declared, then read with a bound), the caller's identity (its current SVID
//! for a renewal, else the bearer token), the JSON, the CSR; last, a single-use join token is
//! redeemed. Nothing is issued unless every check passed; every outcome is counted and
//! logged, never with the token. Connections are capped and bounded in time by
//! [`crate::server::ServerLimits`].

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::authn::{bearer_token, AuthError, AuthMethod, Authenticator};
use crate::ca::{CaError, CertificateAuthority, SharedCa};
use crate::certify::{CertifyRequest, CertifyResponse, ErrorResponse, CERTIFY_PATH};
use crate::http::{json, read_body, Body, BodyError, VerifiedPeer};
use crate::join_token::Refusal;
use crate::rate_limit::{Rate, RateLimiter};
use crate::rotation::Credentials;
use crate::server::ServerLimits;
use crate::tls::ClientAuth;
use crate::TrustStore;

/// The ALPN protocols the service offers.
const SERVER_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Settings of the issuance endpoint, with defaults.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Lifetime of issued SVIDs (24h).
    pub svid_ttl: Duration,
    /// Largest request body accepted (64 KiB).
    pub max_body_bytes: usize,
    /// Requests allowed per caller address (60/min, burst 20).
    pub rate: Rate,
    /// Bound on a TLS handshake (10s).
    pub handshake_timeout: Duration,
    /// Bound on reading an HTTP/1 request's headers, and on waiting for the next request on
    /// a kept-alive HTTP/1 connection (10s).
    pub header_read_timeout: Duration,
    /// How long in-flight requests may take to finish at shutdown (10s).
    pub shutdown_grace: Duration,
    /// Connections open at once; more are closed at once and counted (1024).
    pub max_connections: usize,
    /// A connection with no request in flight for this long is closed (60s).
    pub idle_timeout: Duration,
    /// A request not answered within this gets 408 (30s).
    pub request_timeout: Duration,
    /// DNS names a caller may have in its certificate, by SPIFFE ID (default: none for
    /// anyone; `warden identity` allows the injector its webhook name).
    pub dns_names: std::collections::BTreeMap<String, Vec<String>>,
}

impl ServiceConfig {
    /// The bounds of the HTTPS server.
    pub fn server_limits(&self) -> ServerLimits {
        ServerLimits {
            max_connections: self.max_connections,
            handshake_timeout: self.handshake_timeout,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            request_timeout: self.request_timeout,
            shutdown_grace: self.shutdown_grace,
        }
    }
}

impl Default for ServiceConfig {
    fn default() -> Self {
        let defaults = ServerLimits::default();
        Self {
            svid_ttl: crate::profile::DEFAULT_SVID_TTL,
            max_body_bytes: 64 * 1024,
            rate: Rate {
                per_minute: 60,
                burst: 20,
            },
            handshake_timeout: defaults.handshake_timeout,
            header_read_timeout: defaults.header_read_timeout,
            shutdown_grace: defaults.shutdown_grace,
            max_connections: defaults.max_connections,
            idle_timeout: defaults.idle_timeout,
            request_timeout: defaults.request_timeout,
            dns_names: std::collections::BTreeMap::new(),
        }
    }
}

/// Why a request was not answered with a certificate. [`CertifyError::status`] is the one
/// place these map to HTTP.
#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    /// Unknown path.
    #[error("not found; POST {CERTIFY_PATH}")]
    NotFound,
    /// Not POST.
    #[error("method not allowed; POST {CERTIFY_PATH}")]
    MethodNotAllowed,
    /// The caller exceeded its rate.
    #[error("too many requests; retry later")]
    RateLimited,
    /// The body is over the limit.
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    /// Missing or invalid token, or the authenticator is down.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Malformed JSON or CSR.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The CA failed to sign (e.g. its issuer expired).
    #[error("cannot issue: {0}")]
    Internal(String),
}

impl CertifyError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            CertifyError::NotFound => StatusCode::NOT_FOUND,
            CertifyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            CertifyError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            CertifyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            CertifyError::Auth(AuthError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            CertifyError::Auth(_) => StatusCode::UNAUTHORIZED,
            CertifyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            CertifyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `result` label of `warden_ca_certificates_issued_total`.
    pub fn result_label(&self) -> &'static str {
        match self {
            CertifyError::NotFound | CertifyError::MethodNotAllowed => "not_found",
            CertifyError::RateLimited => "rate_limited",
            CertifyError::TooLarge(_) => "too_large",
            CertifyError::Auth(AuthError::Unavailable(_)) => "unavailable",
            CertifyError::Auth(AuthError::JoinToken(Refusal::Expired)) => "expired_token",
            CertifyError::Auth(AuthError::JoinToken(Refusal::Used)) => "used_token",
            CertifyError::Auth(_) => "unauthenticated",
            CertifyError::BadRequest(_) => "bad_request",
            CertifyError::Internal(_) => "error",
        }
    }
}

/// The issuance service's state.
#[derive(Debug)]
pub struct IdentityService {
    ca: Arc<SharedCa>,
    authenticator: Authenticator,
    limiter: RateLimiter<IpAddr>,
    config: ServiceConfig,
    tls: Mutex<Option<ServingTls>>,
}

/// The serving TLS configuration last built, and what it was built from.
#[derive(Debug)]
struct ServingTls {
    credentials: Arc<Credentials>,
    ca: Arc<CertificateAuthority>,
    config: Arc<rustls::ServerConfig>,
}

impl IdentityService {
    /// A service signing with `ca` for callers `authenticator` admits.
    pub fn new(ca: Arc<SharedCa>, authenticator: Authenticator, config: ServiceConfig) -> Self {
        describe_metrics();
        Self {
            ca,
            limiter: RateLimiter::new(config.rate),
            authenticator,
            config,
            tls: Mutex::new(None),
        }
    }

    /// The TLS configuration for the next handshake. When callers may renew with their SVID,
    /// it verifies client certificates against the CA's bundle as it is now (not as it was
    /// when the serving certificate was issued), so a root added to the bundle is trusted
    /// for renewals at once; it is rebuilt only when the certificate or the CA changed.
    fn server_config(&self, credentials: &Arc<Credentials>) -> Arc<rustls::ServerConfig> {
        let client_auth = self.authenticator.client_auth();
        if client_auth == ClientAuth::None {
            return credentials.server.clone();
        }
        let ca = self.ca.get();
        let mut cached = self.tls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tls) = cached.as_ref() {
            if Arc::ptr_eq(&tls.credentials, credentials) && Arc::ptr_eq(&tls.ca, &ca) {
                return tls.config.clone();
            }
        }
        let trust = Arc::new(TrustStore::single(ca.bundle().clone()));
        match crate::tls::server_config(&credentials.svid, trust, SERVER_ALPN, client_auth) {
            Ok(config) => {
                let config = Arc::new(config);
                *cached = Some(ServingTls {
                    credentials: credentials.clone(),
                    ca,
                    config: config.clone(),
                });
                config
            }
            Err(e) => {
                // Rotation built a configuration from this certificate already, so this is
                // not expected; if it happens, serve without renewals by certificate rather
                // than not at all.
                tracing::error!(error = %e, "cannot build the TLS configuration for renewals");
                credentials.server.clone()
            }
        }
    }

    /// Answers one HTTP request, counting and logging the outcome.
    pub async fn handle(&self, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let (response, result) = match self.certify(peer, req).await {
            Ok((reply, method)) => {
                tracing::info!(%peer, id = %reply.spiffe_id, auth = method.as_str(), expires_at = %reply.expires_at, "issued");
                (json(StatusCode::OK, &reply), "issued")
            }
            Err(e) => {
                let status = e.status();
                if status.is_server_error() {
                    tracing::error!(%peer, %status, error = %e, "certify failed");
                } else {
                    tracing::warn!(%peer, %status, error = %e, "certify refused");
                }
                let body = ErrorResponse {
                    error: e.to_string(),
                };
                (json(status, &body), e.result_label())
            }
        };
        metrics::counter!("warden_ca_certificates_issued_total", "result" => result).increment(1);
        metrics::histogram!("warden_ca_request_duration_seconds", "result" => result)
            .record(started.elapsed().as_secs_f64());
        response
    }

    async fn certify(
        &self,
        peer: SocketAddr,
        req: Request<Incoming>,
    ) -> Result<(CertifyResponse, AuthMethod), CertifyError> {
        if req.uri().path() != CERTIFY_PATH {
            return Err(CertifyError::NotFound);
        }
        if req.method() != Method::POST {
            return Err(CertifyError::MethodNotAllowed);
        }
        if !self.limiter.check(&peer.ip()) {
            return Err(CertifyError::RateLimited);
        }
        let (parts, body) = req.into_parts();
        let declared_too_large = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            .is_some_and(|n| n > self.config.max_body_bytes);
        if declared_too_large {
            return Err(CertifyError::TooLarge(self.config.max_body_bytes));
        }
        // Read the (bounded) body before answering anything else: replying while the client
        // is still uploading makes some HTTP/2 clients lose the reply to the stream reset.
        let body = read_body(&parts.headers, body, self.config.max_body_bytes)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge(n) => CertifyError::TooLarge(n),
                BodyError::Read(r) => CertifyError::BadRequest(r),
            })?;
        // A renewal presents the current SVID; the bearer token (maybe expired or used by now)
        // is then not looked at. The handshake verified the SVID, but a connection can outlive
        // it, or the root that vouched for it: it is verified again, now, against the CA's
        // bundle as it is.
        let caller = match parts.extensions.get::<VerifiedPeer>() {
            Some(peer) => {
                let trust = TrustStore::single(self.ca.get().bundle().clone());
                let algorithms = crate::tls::crypto_provider().signature_verification_algorithms;
                let (leaf, intermediates) = peer.chain.split_first().ok_or(AuthError::Missing)?;
                crate::verify::verify_svid(
                    &trust,
                    leaf,
                    intermediates,
                    rustls::pki_types::UnixTime::now(),
                    crate::verify::PeerRole::Client,
                    &algorithms,
                )
                .map_err(|e| {
                    AuthError::Invalid(format!("the certificate this connection presented: {e}"))
                })?;
                self.authenticator.renewal(&peer.id)?
            }
            None => {
                let token = parts
                    .headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(bearer_token)
                    .ok_or(AuthError::Missing)?;
                self.authenticator.authenticate(token).await?
            }
        };
        let request: CertifyRequest = serde_json::from_slice(&body)
            .map_err(|e| CertifyError::BadRequest(format!("malformed JSON: {e}")))?;
        if let Some(refused) = request.dns_names.iter().find(|name| {
            !self
                .config
                .dns_names
                .get(caller.id.as_str())
                .is_some_and(|allowed| allowed.contains(name))
        }) {
            return Err(CertifyError::BadRequest(format!(
                "DNS name {refused:?} is not allowed for {}",
                caller.id
            )));
        }
        let ca = self.ca.get();
        let issued = ca
            .sign_csr_with_dns(
                &request.csr,
                &caller.id,
                &request.dns_names,
                self.config.svid_ttl,
            )
            .map_err(|e| match e {
                CaError::Csr(e) => CertifyError::BadRequest(e.to_string()),
                other => CertifyError::Internal(other.to_string()),
            })?;
        let expires_at = time::OffsetDateTime::from(issued.not_after)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let reply = CertifyResponse {
            spiffe_id: issued.id.to_string(),
            certificate_chain: crate::bundle::certs_to_pem(&issued.chain),
            trust_bundle: ca.bundle().to_pem(),
            expires_at,
        };
        // Last: a single-use token is redeemed (durably) only for a certificate that is ready,
        // and of concurrent requests with it only the one that redeems it gets its certificate.
        self.authenticator.commit(&caller)?;
        Ok((reply, caller.method))
    }
}

/// Who the identity service is to its callers: the SPIFFE ID and DNS names of its serving
/// certificate (issued by its own CA and renewed like any SVID).
#[derive(Debug, Clone)]
pub struct ServingIdentity {
    /// The service's SPIFFE ID; clients expect exactly it.
    pub id: warden_core::SpiffeId,
    /// DNS SANs, for clients that verify by host name.
    pub dns_names: Vec<String>,
}

/// Starts the whole service: issues its own serving certificate, keeps it renewed, and serves
/// `listener` until `shutdown`. Returns the serving task, or `None` if `shutdown` came first.
pub async fn start(
    listener: TcpListener,
    service: Arc<IdentityService>,
    serving: ServingIdentity,
    shutdown: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let source = crate::rotation::CertSource::Local {
        ca: service.ca.clone(),
        id: serving.id,
        dns_names: serving.dns_names,
        ttl: service.config.svid_ttl,
    };
    let tls = crate::rotation::TlsOptions {
        server_alpn: SERVER_ALPN.iter().map(|p| p.to_vec()).collect(),
        client_alpn: vec![],
        client_auth: crate::tls::ClientAuth::None,
    };
    let rotation =
        crate::rotation::start(source, tls, Default::default(), shutdown.clone()).await?;
    Some(tokio::spawn(serve(
        listener,
        rotation.credentials,
        service,
        shutdown,
    )))
}

/// Serves HTTPS (HTTP/1.1 and HTTP/2) on `listener` until `shutdown`, then lets in-flight
/// requests finish within the grace period. Each handshake uses the latest certificate.
pub async fn serve(
    listener: TcpListener,
    credentials: watch::Receiver<Arc<Credentials>>,
    service: Arc<IdentityService>,
    shutdown: CancellationToken,
) {
    let limits = service.config.server_limits();
    let tls_service = service.clone();
    let tls = move || tls_service.server_config(&credentials.borrow());
    let handler = move |peer, req| {
        let service = service.clone();
        async move { service.handle(peer, req).await }
    };
    crate::http::serve_tls(listener, tls, handler, limits, shutdown).await;
}

/// Polls the CA directory every `interval` and swaps in the CA when its files change; a CA
/// that fails to load is logged and the last good one kept. This is how an issuer is rotated,
/// or a new root added to the bundle (with an overlap), without a restart.
pub async fn reload_ca_on_change(
    dir: std::path::PathBuf,
    trust_domain: Option<warden_core::TrustDomain>,
    ca: Arc<SharedCa>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let stamp = || {
        [
            crate::ca::ISSUER_CERT,
            crate::ca::ISSUER_KEY,
            crate::ca::BUNDLE,
        ]
        .map(|f| {
            std::fs::metadata(dir.join(f))
                .and_then(|m| m.modified().map(|t| (t, m.len())))
                .ok()
        })
    };
    let mut last = stamp();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let now = stamp();
        if now == last {
            continue;
        }
        last = now;
        match crate::CertificateAuthority::load(&dir, trust_domain.as_ref()) {
            Ok(loaded) => {
                tracing::info!(dir = %dir.display(), "CA files changed; reloaded");
                metrics::counter!("warden_ca_reloads_total", "result" => "success").increment(1);
                publish_expiry(&loaded);
                ca.replace(loaded);
            }
            Err(e) => {
                tracing::error!(error = %e, "CA files changed but do not load; keeping the last good CA");
                metrics::counter!("warden_ca_reloads_total", "result" => "failure").increment(1);
            }
        }
    }
}

/// Sets the expiry gauges of the issuer and of the trust anchor that expires first (what
/// alerts watch: after the issuer's `notAfter` nothing can be issued).
pub fn publish_expiry(ca: &crate::CertificateAuthority) {
    let issuer = ca
        .issuer_not_after()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    metrics::gauge!("warden_ca_issuer_expiry_timestamp_seconds").set(issuer);
    if let Some(root) = crate::inspect::earliest_not_after(ca.bundle().roots()) {
        metrics::gauge!("warden_ca_trust_anchor_expiry_timestamp_seconds").set(root as f64);
    }
}

fn describe_metrics() {
    metrics::describe_gauge!(
        "warden_ca_issuer_expiry_timestamp_seconds",
        "When the issuer certificate expires (Unix seconds); nothing is issued after it."
    );
    metrics::describe_gauge!(
        "warden_ca_trust_anchor_expiry_timestamp_seconds",
        "When the first trust anchor of the bundle expires (Unix seconds)."
    );
    metrics::describe_counter!(
        "warden_ca_reloads_total",
        "Reloads of the CA files after they changed, by result."
    );
    metrics::describe_counter!(
        "warden_ca_certificates_issued_total",
        "Certificate requests answered by the identity service, by result (issued or why not)."
    );
    metrics::describe_histogram!(
        "warden_ca_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time to answer a certificate request, by result."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_its_status_and_label() {
        let cases: Vec<(CertifyError, u16, &str)> = vec![
            (CertifyError::NotFound, 404, "not_found"),
            (CertifyError::MethodNotAllowed, 405, "not_found"),
            (CertifyError::RateLimited, 429, "rate_limited"),
            (CertifyError::TooLarge(1), 413, "too_large"),
            (AuthError::Missing.into(), 401, "unauthenticated"),
            (
                AuthError::Invalid("x".into()).into(),
                401,
                "unauthenticated",
            ),
            (
                AuthError::JoinToken(Refusal::Unknown).into(),
                401,
                "unauthenticated",
            ),
            (
                AuthError::JoinToken(Refusal::Expired).into(),
                401,
                "expired_token",
            ),
            (
                AuthError::JoinToken(Refusal::Used).into(),
                401,
                "used_token",
            ),
            (
                AuthError::Unavailable("x".into()).into(),
                503,
                "unavailable",
            ),
            (CertifyError::BadRequest("x".into()), 400, "bad_request"),
            (CertifyError::Internal("x".into()), 500, "error"),
        ];
        for (err, status, label) in cases {
            assert_eq!(err.status().as_u16(), status, "{err}");
            assert_eq!(err.result_label(), label, "{err}");
        }
    }
}
