//! Authenticating callers of the issuance endpoint: a bearer token becomes a SPIFFE ID, via
//! the Kubernetes TokenReview API or a join-token file. Tokens are never logged.

use warden_core::SpiffeId;

use crate::join_token::JoinTokens;
use crate::token_review::TokenReviewer;

/// Why a caller was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("missing \"Authorization: Bearer <token>\" header")]
    Missing,
    /// The token is unknown, expired, for another audience, or not a ServiceAccount's.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The authenticator could not give a verdict (e.g. the API server is down).
    #[error("authenticator unavailable: {0}")]
    Unavailable(String),
}

/// How callers prove who they are.
#[derive(Debug)]
pub enum Authenticator {
    /// Projected ServiceAccount tokens checked with TokenReview.
    Kubernetes(TokenReviewer),
    /// Tokens whose SHA-256 hashes are listed in a file.
    JoinTokens(JoinTokens),
}

impl Authenticator {
    /// The identity a bearer token authenticates as.
    pub async fn authenticate(&self, token: &str) -> Result<SpiffeId, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        match self {
            Authenticator::Kubernetes(reviewer) => reviewer.review(token).await,
            Authenticator::JoinTokens(tokens) => tokens
                .lookup(token)
                .ok_or_else(|| AuthError::Invalid("unknown join token".into())),
        }
    }

    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Authenticator::Kubernetes(_) => "kubernetes",
            Authenticator::JoinTokens(_) => "join-token",
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header value, if that is its form.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_forms() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer"), None);
    }
}
