//! The authorization hook: every inbound HTTP request and TCP connection is checked here
//! before anything reaches the app. The policy engine plugs in as an [`Authorizer`]; until
//! one is configured, everything authenticated is allowed.

use std::sync::Arc;

use warden_core::SpiffeId;

/// What is being authorized.
#[derive(Debug, Clone, Copy)]
pub struct AuthzRequest<'a> {
    /// The verified client identity (`None` for an unauthenticated, permissive-mode client).
    pub client: Option<&'a SpiffeId>,
    /// The app port the traffic is for.
    pub port: u16,
    /// Method and path, for HTTP requests; `None` for opaque TCP.
    pub http: Option<(&'a str, &'a str)>,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through.
    Allow,
    /// Refuse it; `policy` names what decided, for the logs only.
    Deny {
        /// The deciding policy.
        policy: String,
    },
}

/// A shared, swappable decision function.
#[derive(Clone)]
pub struct Authorizer(Arc<dyn Fn(&AuthzRequest<'_>) -> Verdict + Send + Sync>);

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authorizer")
    }
}

impl Authorizer {
    /// Allows everything that passed mTLS.
    pub fn allow_all() -> Self {
        Self::from_fn(|_| Verdict::Allow)
    }

    /// Decides with `f`.
    pub fn from_fn(f: impl Fn(&AuthzRequest<'_>) -> Verdict + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// The decision for `request`.
    pub fn check(&self, request: &AuthzRequest<'_>) -> Verdict {
        (self.0)(request)
    }
}
