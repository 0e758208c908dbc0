//! Authenticating callers of the issuance endpoint: a bearer token becomes a SPIFFE ID, via
//! the Kubernetes TokenReview API or a join-token file; with join tokens, a renewal may
//! instead present the caller's current SVID. Tokens are never logged.

use warden_core::SpiffeId;

use crate::join_token::{Admission, JoinTokens, RedeemError, Refusal};
use crate::tls::ClientAuth;
#[cfg(feature = "kubernetes")]
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
    /// A join token that is unknown, expired or already used.
    #[error(transparent)]
    JoinToken(#[from] Refusal),
    /// The authenticator could not give a verdict (e.g. the API server is down).
    #[error("authenticator unavailable: {0}")]
    Unavailable(String),
}

impl From<RedeemError> for AuthError {
    fn from(e: RedeemError) -> Self {
        match e {
            RedeemError::Refused(refusal) => refusal.into(),
            RedeemError::Record(e) => AuthError::Unavailable(e.to_string()),
        }
    }
}

/// How callers prove who they are.
#[derive(Debug)]
pub enum Authenticator {
    /// Projected ServiceAccount tokens checked with TokenReview (feature `kubernetes`).
    #[cfg(feature = "kubernetes")]
    Kubernetes(TokenReviewer),
    /// Tokens whose SHA-256 hashes are listed in a file.
    JoinTokens(JoinTokens),
}

/// An authenticated caller, and what issuing to it still takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The identity to issue.
    pub id: SpiffeId,
    /// How it authenticated.
    pub method: AuthMethod,
    /// The join token's admission; a single-use one is redeemed before the certificate is
    /// returned.
    redeem: Option<Admission>,
}

/// How a caller authenticated, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// A bearer token.
    Token,
    /// Its current SVID as the TLS client certificate (a renewal).
    Svid,
}

impl AuthMethod {
    /// A short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Token => "token",
            AuthMethod::Svid => "svid",
        }
    }
}

impl Authenticator {
    /// The identity a bearer token authenticates as. A single-use join token is checked but
    /// not yet redeemed: [`Authenticator::commit`] does that once the certificate is ready.
    pub async fn authenticate(&self, token: &str) -> Result<Caller, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let (id, redeem) = match self {
            #[cfg(feature = "kubernetes")]
            Authenticator::Kubernetes(reviewer) => (reviewer.review(token).await?, None),
            Authenticator::JoinTokens(tokens) => {
                let admission = tokens.check(token)?;
                (admission.id.clone(), Some(admission))
            }
        };
        Ok(Caller {
            id,
            method: AuthMethod::Token,
            redeem,
        })
    }

    /// A renewal: the caller presented a valid SVID for `id` (the TLS handshake verified it
    /// against the CA's bundle). With join tokens, the token admitted the workload once and
    /// its SVID authenticates it since (as SPIRE's agents do), for as long as some line of the
    /// file still names `id`. With Kubernetes, the ServiceAccount token is checked at every
    /// call instead, so a deleted ServiceAccount stops renewals; no certificate is asked for.
    pub fn renewal(&self, id: &SpiffeId) -> Result<Caller, AuthError> {
        match self {
            Authenticator::JoinTokens(tokens) if tokens.lists(id) => Ok(Caller {
                id: id.clone(),
                method: AuthMethod::Svid,
                redeem: None,
            }),
            Authenticator::JoinTokens(_) => Err(AuthError::Invalid(format!(
                "{id} is no longer in the join-token file"
            ))),
            #[cfg(feature = "kubernetes")]
            Authenticator::Kubernetes(_) => Err(AuthError::Invalid(
                "present a ServiceAccount token; certificates do not authenticate here".into(),
            )),
        }
    }

    /// Completes an authentication right before the certificate is returned: redeems a
    /// single-use join token, durably. Of concurrent callers with one such token, exactly one
    /// gets `Ok`.
    pub fn commit(&self, caller: &Caller) -> Result<(), AuthError> {
        match (self, &caller.redeem) {
            (Authenticator::JoinTokens(tokens), Some(admission)) => Ok(tokens.redeem(admission)?),
            _ => Ok(()),
        }
    }

    /// Whether the TLS server asks callers for a certificate: join-token deployments accept
    /// (and verify) a current SVID for renewals; Kubernetes ones never ask.
    pub fn client_auth(&self) -> ClientAuth {
        match self {
            #[cfg(feature = "kubernetes")]
            Authenticator::Kubernetes(_) => ClientAuth::None,
            Authenticator::JoinTokens(_) => ClientAuth::Optional,
        }
    }

    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            #[cfg(feature = "kubernetes")]
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
