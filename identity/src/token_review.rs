//! Authenticating a projected ServiceAccount token with the Kubernetes TokenReview API.
//!
//! The service POSTs `{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview",
//! "spec":{"token":..,"audiences":["warden-identity"]}}` to
//! `/apis/authentication.k8s.io/v1/tokenreviews` with its own ServiceAccount token, and
//! accepts the caller only if `status.authenticated` is true, `status.audiences` includes
//! Warden's audience and `status.user.username` is `system:serviceaccount:<ns>:<sa>`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use warden_core::{SpiffeId, TrustDomain};

use crate::authn::AuthError;
use crate::bundle;
use crate::http::{post_json, HttpsTarget};

/// The TokenReview endpoint's path.
pub const TOKEN_REVIEW_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
/// The largest TokenReview reply read.
const MAX_REPLY_BYTES: usize = 256 * 1024;

/// Where and how to reach the Kubernetes API server.
#[derive(Debug, Clone)]
pub struct TokenReviewConfig {
    /// `https://host:port` of the API server.
    pub api_url: String,
    /// PEM CA bundle that signs the API server's certificate.
    pub ca_file: PathBuf,
    /// This service's own ServiceAccount token (re-read at each review: Kubernetes rotates it).
    pub token_file: PathBuf,
    /// The audience callers' tokens must be bound to.
    pub audience: String,
    /// The trust domain of the identities issued.
    pub trust_domain: TrustDomain,
    /// Bound on one review, connect to reply.
    pub timeout: Duration,
}

/// The TokenReview request, as the API server expects it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenReview {
    /// `authentication.k8s.io/v1`.
    pub api_version: String,
    /// `TokenReview`.
    pub kind: String,
    /// What to review.
    pub spec: TokenReviewSpec,
    /// The verdict (in replies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TokenReviewStatus>,
}

/// `spec` of a TokenReview.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct TokenReviewSpec {
    /// The token under review.
    #[serde(default)]
    pub token: String,
    /// The audiences the token must be valid for.
    #[serde(default)]
    pub audiences: Vec<String>,
}

/// `status` of a TokenReview reply.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct TokenReviewStatus {
    /// Whether the token is valid.
    #[serde(default)]
    pub authenticated: bool,
    /// Who the token belongs to.
    #[serde(default)]
    pub user: TokenReviewUser,
    /// The requested audiences the token is valid for.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Why the token was not authenticated.
    #[serde(default)]
    pub error: String,
}

/// `status.user` of a TokenReview reply.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct TokenReviewUser {
    /// `system:serviceaccount:<ns>:<sa>` for ServiceAccount tokens.
    #[serde(default)]
    pub username: String,
}

/// A client of the TokenReview API.
#[derive(Debug)]
pub struct TokenReviewer {
    config: TokenReviewConfig,
    target: HttpsTarget,
    tls: Arc<rustls::ClientConfig>,
}

impl TokenReviewer {
    /// Checks the URL and reads the API server's CA bundle.
    pub fn new(config: TokenReviewConfig) -> Result<Self, String> {
        let target = HttpsTarget::parse(&config.api_url).map_err(|e| e.to_string())?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in bundle::certs_from_pem_file(&config.ca_file).map_err(|e| e.to_string())? {
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", config.ca_file.display()))?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            config,
            target,
            tls: Arc::new(tls),
        })
    }

    /// Reviews a caller's token; returns its SPIFFE ID.
    pub async fn review(&self, token: &str) -> Result<SpiffeId, AuthError> {
        let own_token = std::fs::read_to_string(&self.config.token_file).map_err(|e| {
            AuthError::Unavailable(format!(
                "cannot read the service's own token {}: {e}",
                self.config.token_file.display()
            ))
        })?;
        let request = TokenReview {
            api_version: "authentication.k8s.io/v1".into(),
            kind: "TokenReview".into(),
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: vec![self.config.audience.clone()],
            },
            status: None,
        };
        let body = serde_json::to_vec(&request)
            .map_err(|e| AuthError::Unavailable(format!("encoding the review: {e}")))?;
        let (status, reply) = post_json(
            self.tls.clone(),
            &self.target,
            TOKEN_REVIEW_PATH,
            own_token.trim(),
            body,
            MAX_REPLY_BYTES,
            self.config.timeout,
        )
        .await
        .map_err(|e| AuthError::Unavailable(e.to_string()))?;
        if !status.is_success() {
            // 401/403 mean our own credentials or RBAC are wrong; 5xx that the API is down.
            return Err(AuthError::Unavailable(format!(
                "TokenReview API answered {status}"
            )));
        }
        let review: TokenReview = serde_json::from_slice(&reply)
            .map_err(|e| AuthError::Unavailable(format!("unreadable TokenReview reply: {e}")))?;
        self.verdict(review.status.unwrap_or_default())
    }

    fn verdict(&self, status: TokenReviewStatus) -> Result<SpiffeId, AuthError> {
        if !status.authenticated {
            let why = if status.error.is_empty() {
                "not authenticated".to_string()
            } else {
                status.error
            };
            return Err(AuthError::Invalid(format!("TokenReview: {why}")));
        }
        if !status.audiences.iter().any(|a| a == &self.config.audience) {
            return Err(AuthError::Invalid(format!(
                "token is not bound to the audience {:?}",
                self.config.audience
            )));
        }
        service_account_id(&self.config.trust_domain, &status.user.username)
    }
}

/// `system:serviceaccount:<ns>:<sa>` -> `spiffe://<td>/ns/<ns>/sa/<sa>`.
pub fn service_account_id(td: &TrustDomain, username: &str) -> Result<SpiffeId, AuthError> {
    let not_sa = || AuthError::Invalid(format!("{username:?} is not a ServiceAccount"));
    let rest = username
        .strip_prefix("system:serviceaccount:")
        .ok_or_else(not_sa)?;
    let (ns, sa) = rest.split_once(':').ok_or_else(not_sa)?;
    if ns.is_empty() || sa.is_empty() || sa.contains(':') {
        return Err(not_sa());
    }
    SpiffeId::for_service_account(td, ns, sa).map_err(|e| AuthError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        let td = TrustDomain::default();
        let ok = service_account_id(&td, "system:serviceaccount:shop:web").unwrap();
        assert_eq!(ok.as_str(), "spiffe://cluster.local/ns/shop/sa/web");
        for bad in [
            "alice",
            "system:serviceaccount:shop",
            "system:serviceaccount::web",
            "system:serviceaccount:shop:",
            "system:serviceaccount:shop:web:x",
            "system:node:worker-1",
            "system:serviceaccount:sh/op:web",
        ] {
            assert!(service_account_id(&td, bad).is_err(), "{bad}");
        }
    }
}
