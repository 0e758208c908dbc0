//! Authenticating a projected ServiceAccount token with the Kubernetes TokenReview API.
//!
//! The service POSTs `{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview",
//! "spec":{"token":..,"audiences":["warden-identity"]}}` to
//! `/apis/authentication.k8s.io/v1/tokenreviews` with its own credentials, and accepts the
//! caller only if `status.authenticated` is true, `status.audiences` includes Warden's
//! audience and `status.user.username` is `system:serviceaccount:<ns>:<sa>`.
//!
//! The client is the `kube` crate's (TLS, connection pool, timeouts, kubeconfig handling,
//! the `k8s-openapi` types), behind the `kubernetes` cargo feature: the CLI enables it, the
//! proxy does not, so the sidecar never links kube-rs (DESIGN section 1). Without the feature
//! only [`service_account_id`] and [`TOKEN_REVIEW_PATH`] are here.
//!
//! Two ways to reach the API server:
//! - [`TokenReviewer::new`]: a URL, the CA file and the service's own token file (in a pod:
//!   `KUBERNETES_SERVICE_HOST`/`_PORT` and the mounted ServiceAccount files). The token file
//!   is re-read at every review (Kubernetes rotates it; surrounding whitespace is ignored)
//!   and the client is rebuilt when it changed; the CA file is re-read by kube about once a
//!   minute.
//! - [`TokenReviewer::from_kubeconfig`]: a kubeconfig file, for runs outside the cluster;
//!   kube handles its credentials (`token`, `tokenFile` re-read about once a minute, client
//!   certificates, exec plugins).
//!
//! The caller's token is never logged: the reply (which echoes it in `spec.token`) is parsed
//! here rather than by `kube::Api::create`, whose client logs a reply it cannot parse at
//! `warn`, and every error text is scrubbed of it.

#[cfg(feature = "kubernetes")]
use std::path::{Path, PathBuf};
#[cfg(feature = "kubernetes")]
use std::sync::Mutex;
#[cfg(feature = "kubernetes")]
use std::time::Duration;

use warden_core::{SpiffeId, TrustDomain};

use crate::authn::AuthError;

#[cfg(feature = "kubernetes")]
pub use k8s_openapi::api::authentication::v1::{
    TokenReview, TokenReviewSpec, TokenReviewStatus, UserInfo,
};

/// The TokenReview endpoint's path.
pub const TOKEN_REVIEW_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

/// Where and how to reach the Kubernetes API server with a token file (in a pod, the
/// mounted ServiceAccount credentials).
#[cfg(feature = "kubernetes")]
#[derive(Debug, Clone)]
pub struct TokenReviewConfig {
    /// `https://host:port` of the API server.
    pub api_url: String,
    /// PEM CA bundle that signs the API server's certificate (re-read about once a minute).
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

/// A client of the TokenReview API.
#[cfg(feature = "kubernetes")]
pub struct TokenReviewer {
    access: Access,
    audience: String,
    trust_domain: TrustDomain,
    timeout: Duration,
}

/// How the reviewer authenticates to the API server.
#[cfg(feature = "kubernetes")]
enum Access {
    /// A kubeconfig: kube's client carries its credentials.
    Kubeconfig(kube::Client),
    /// A token file read at each review; the client for the token last read.
    TokenFile {
        config: Box<kube::Config>,
        token_file: PathBuf,
        current: Mutex<Option<(String, kube::Client)>>,
    },
}

#[cfg(feature = "kubernetes")]
impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = f.debug_struct("TokenReviewer");
        match &self.access {
            Access::Kubeconfig(_) => s.field("access", &"kubeconfig"),
            Access::TokenFile {
                config, token_file, ..
            } => s
                .field("api_url", &config.cluster_url.to_string())
                .field("token_file", token_file),
        };
        s.field("audience", &self.audience)
            .field("trust_domain", &self.trust_domain)
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[cfg(feature = "kubernetes")]
impl TokenReviewer {
    /// Checks the URL and reads the API server's CA bundle. The client itself is built at
    /// the first review, with the token file as it is then.
    pub fn new(config: TokenReviewConfig) -> Result<Self, String> {
        crate::tls::install_crypto_provider();
        let url: http::Uri = config
            .api_url
            .parse()
            .map_err(|e| format!("API server URL {:?}: {e}", config.api_url))?;
        if url.scheme_str() != Some("https") || url.host().is_none() {
            return Err(format!(
                "API server URL {:?}: must be https://host[:port]",
                config.api_url
            ));
        }
        let roots = crate::bundle::certs_from_pem_file(&config.ca_file)
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|der| der.to_vec())
            .collect();
        let mut kube_config = kube::Config::new(url);
        kube_config.root_cert = Some(roots);
        // kube's verifier re-reads this file about once a minute: a rotated cluster CA is
        // picked up without a restart.
        kube_config.root_cert_file = Some(config.ca_file.clone());
        Ok(Self {
            access: Access::TokenFile {
                config: Box::new(bounded(kube_config, config.timeout)),
                token_file: config.token_file,
                current: Mutex::new(None),
            },
            audience: config.audience,
            trust_domain: config.trust_domain,
            timeout: config.timeout,
        })
    }

    /// A reviewer reaching the API server as the kubeconfig file's current context says.
    /// Must run within a Tokio runtime.
    pub async fn from_kubeconfig(
        path: &Path,
        audience: String,
        trust_domain: TrustDomain,
        timeout: Duration,
    ) -> Result<Self, String> {
        crate::tls::install_crypto_provider();
        let kubeconfig = kube::config::Kubeconfig::read_from(path)
            .map_err(|e| format!("kubeconfig {}: {}", path.display(), chain(&e)))?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .map_err(|e| format!("kubeconfig {}: {}", path.display(), chain(&e)))?;
        let client = kube::Client::try_from(bounded(config, timeout))
            .map_err(|e| format!("kubeconfig {}: {}", path.display(), chain(&e)))?;
        Ok(Self {
            access: Access::Kubeconfig(client),
            audience,
            trust_domain,
            timeout,
        })
    }

    /// Reviews a caller's token; returns its SPIFFE ID.
    pub async fn review(&self, token: &str) -> Result<SpiffeId, AuthError> {
        let unavailable = |what: String| AuthError::Unavailable(redact(what, token));
        let client = self.client()?;
        let request = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let body = serde_json::to_vec(&request)
            .map_err(|e| unavailable(format!("encoding the review: {e}")))?;
        let request = kube::core::Request::new(TOKEN_REVIEW_PATH)
            .create(&Default::default(), body)
            .map_err(|e| unavailable(format!("building the review: {e}")))?;
        // `request_text`, not `request::<TokenReview>`: the latter logs a reply it cannot
        // parse, and the reply holds the caller's token.
        let reply = match tokio::time::timeout(self.timeout, client.request_text(request)).await {
            Err(_) => {
                return Err(unavailable(format!(
                    "TokenReview API did not answer within {:?}",
                    self.timeout
                )))
            }
            Ok(Err(kube::Error::Api(status))) => {
                // 401/403 mean our own credentials or RBAC are wrong; 5xx that the API is
                // down. The API server's explanation (it names this service's account) is
                // for the operator's log, not for the unauthenticated caller.
                let code = http::StatusCode::from_u16(status.code)
                    .map(|c| c.to_string())
                    .unwrap_or_else(|_| status.code.to_string());
                tracing::warn!(
                    status = %code,
                    message = %redact(status.message.clone(), token),
                    "the TokenReview API refused this service's request"
                );
                return Err(unavailable(format!("TokenReview API answered {code}")));
            }
            Ok(Err(e)) => return Err(unavailable(format!("TokenReview API: {}", chain(&e)))),
            Ok(Ok(reply)) => reply,
        };
        // serde's messages may quote the input: say only where it broke.
        let review: TokenReview = serde_json::from_str(&reply).map_err(|e| {
            AuthError::Unavailable(format!(
                "unreadable TokenReview reply ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            ))
        })?;
        self.verdict(review.status.unwrap_or_default())
            .map_err(|e| match e {
                AuthError::Invalid(why) => AuthError::Invalid(redact(why, token)),
                other => other,
            })
    }

    /// The client to review with: in token-file mode, one carrying the token as the file
    /// holds it now.
    fn client(&self) -> Result<kube::Client, AuthError> {
        let (config, token_file, current) = match &self.access {
            Access::Kubeconfig(client) => return Ok(client.clone()),
            Access::TokenFile {
                config,
                token_file,
                current,
            } => (config, token_file, current),
        };
        let own = std::fs::read_to_string(token_file).map_err(|e| {
            AuthError::Unavailable(format!(
                "cannot read the service's own token {}: {e}",
                token_file.display()
            ))
        })?;
        let own = own.trim();
        if own.is_empty() {
            return Err(AuthError::Unavailable(format!(
                "the service's own token file {} is empty",
                token_file.display()
            )));
        }
        let mut current = current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((token, client)) = current.as_ref() {
            if token == own {
                return Ok(client.clone());
            }
        }
        let mut config = kube::Config::clone(config);
        config.auth_info.token = Some(own.to_string().into());
        let client = kube::Client::try_from(config).map_err(|e| {
            AuthError::Unavailable(redact(format!("Kubernetes client: {}", chain(&e)), own))
        })?;
        *current = Some((own.to_string(), client.clone()));
        Ok(client)
    }

    fn verdict(&self, status: TokenReviewStatus) -> Result<SpiffeId, AuthError> {
        if status.authenticated != Some(true) {
            let why = match status.error {
                Some(error) if !error.is_empty() => error,
                _ => "not authenticated".to_string(),
            };
            return Err(AuthError::Invalid(format!("TokenReview: {why}")));
        }
        if !status
            .audiences
            .iter()
            .flatten()
            .any(|a| a == &self.audience)
        {
            return Err(AuthError::Invalid(format!(
                "token is not bound to the audience {:?}",
                self.audience
            )));
        }
        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        service_account_id(&self.trust_domain, &username)
    }
}

/// The timeouts of one review on a kube client configuration; no automatic retries (the
/// caller retries with backoff, and a 503 must reach it as one).
#[cfg(feature = "kubernetes")]
fn bounded(mut config: kube::Config, timeout: Duration) -> kube::Config {
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    config.write_timeout = Some(timeout);
    config.reset_reader_on_write = true;
    config.default_retry = false;
    config
}

/// An error and its sources, `: `-separated.
#[cfg(feature = "kubernetes")]
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// `text` with every occurrence of `secret` replaced.
#[cfg(feature = "kubernetes")]
fn redact(text: String, secret: &str) -> String {
    if secret.is_empty() || !text.contains(secret) {
        text
    } else {
        text.replace(secret, "<redacted>")
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

    #[cfg(feature = "kubernetes")]
    #[test]
    fn the_path_is_the_resources() {
        use kube::Resource;
        assert_eq!(TokenReview::url_path(&(), None), TOKEN_REVIEW_PATH);
    }

    #[cfg(feature = "kubernetes")]
    #[test]
    fn secrets_are_redacted() {
        assert_eq!(
            redact("a tok b tok".into(), "tok"),
            "a <redacted> b <redacted>"
        );
        assert_eq!(redact("nothing".into(), ""), "nothing");
    }
}
