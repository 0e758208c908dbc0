//! The authorization hook: every inbound HTTP request and TCP connection is checked here
//! before anything reaches the app. In production it evaluates the operators' policies
//! (`warden_core::policy`), counts each decision and writes the audit log; tests may plug in
//! a plain function.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use tokio::sync::watch;
use warden_core::audit::DecisionFields;
use warden_core::policy::evaluate::{DefaultPolicy, PolicySet, Request, Workload};
use warden_core::SpiffeId;

use crate::audit::{AuditLog, AuditUnavailable};
use crate::policy_dir::PolicyStatus;

/// What is being authorized.
#[derive(Debug, Clone, Copy)]
pub struct AuthzRequest<'a> {
    /// The verified client identity (`None` for an unauthenticated, permissive-mode client).
    pub client: Option<&'a SpiffeId>,
    /// The app port the traffic is for.
    pub port: u16,
    /// Method and normalized path, for HTTP requests; `None` for opaque TCP.
    pub http: Option<(&'a str, &'a str)>,
}

/// Who asks, for the audit record.
#[derive(Debug, Clone, Copy)]
pub struct AuthzContext<'a> {
    /// The protected workload (this proxy's own identity).
    pub workload: &'a SpiffeId,
    /// The caller's address.
    pub client_addr: Option<SocketAddr>,
    /// The request id (returned to the client on denial).
    pub request_id: &'a str,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through.
    Allow,
    /// Refuse it; `policy` names what decided, for the logs only.
    Deny {
        /// The deciding policy (or `default`, `no-match`).
        policy: String,
    },
    /// Allowed, but its audit record cannot be kept and `audit_failure` is `deny`: refuse it
    /// as unavailable (503, or the connection closed).
    Unrecorded(AuditUnavailable),
}

/// The operators' policies and what goes with them.
#[derive(Debug, Clone)]
pub struct PolicyEngine {
    /// The policies in force.
    pub policies: watch::Receiver<Arc<PolicySet>>,
    /// The loader's state, for `/ready`.
    pub status: watch::Receiver<PolicyStatus>,
    /// What decides when no policy applies.
    pub default: DefaultPolicy,
    /// Where decisions are recorded (none: not recorded).
    pub audit: Option<Arc<AuditLog>>,
}

type DecideFn = dyn Fn(&AuthzRequest<'_>) -> Verdict + Send + Sync;

enum Engine {
    Function(Box<DecideFn>),
    /// The policies, and the control-plane feed until `run` takes it to start the client.
    Policies(
        PolicyEngine,
        std::sync::Mutex<Option<crate::control_plane::PolicyFeed>>,
    ),
}

/// A shared decision maker.
#[derive(Clone)]
pub struct Authorizer(Arc<Engine>);

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authorizer")
    }
}

thread_local! {
    /// This proxy's workload, parsed from its SPIFFE ID once rather than on every request.
    static OWN_WORKLOAD: RefCell<Option<(SpiffeId, Rc<Workload>)>> = const { RefCell::new(None) };
}

/// The workload `id` names (cached per thread; the ID changes only with a new SVID's).
fn own_workload(id: &SpiffeId) -> Rc<Workload> {
    OWN_WORKLOAD.with_borrow_mut(|cached| match cached {
        Some((cached_id, workload)) if cached_id == id => workload.clone(),
        _ => {
            let workload = Rc::new(Workload::from_id(id));
            *cached = Some((id.clone(), workload.clone()));
            workload
        }
    })
}

impl PolicyEngine {
    fn decide(&self, request: &AuthzRequest<'_>, ctx: &AuthzContext<'_>) -> Verdict {
        let set = self.policies.borrow().clone();
        let workload = own_workload(ctx.workload);
        let eval = Request {
            client: request.client,
            port: request.port,
            http: request.http,
        };
        let decision = set.evaluate(&workload, &eval, self.default);
        let label = decision.label();
        crate::metrics::authz_decision(label, decision.policy_label());
        if let Some(audit) = &self.audit {
            if label != "allow" || audit.log_allowed {
                let time = warden_identity::timestamp::now_rfc3339();
                let reason = decision.reason();
                let recorded = audit.record(&DecisionFields {
                    time: &time,
                    direction: "inbound",
                    client: request.client.map(SpiffeId::as_str),
                    client_addr: ctx.client_addr,
                    workload: ctx.workload.as_str(),
                    port: request.port,
                    method: request.http.map(|(m, _)| m),
                    path: request.http.map(|(_, p)| p),
                    decision: label,
                    policy: decision.policy.as_deref(),
                    rule: decision.rule,
                    reason: &reason,
                    audit_policies: decision.audit.as_ref().map(|a| a.policies.as_slice()),
                    request_id: Some(ctx.request_id),
                });
                if let (Err(e), true) = (recorded, decision.allowed) {
                    return Verdict::Unrecorded(e);
                }
            }
        }
        if decision.allowed {
            Verdict::Allow
        } else {
            Verdict::Deny {
                policy: decision.policy_label().to_string(),
            }
        }
    }
}

impl Authorizer {
    /// Allows everything that passed mTLS (tests and benchmarks).
    pub fn allow_all() -> Self {
        Self::from_fn(|_| Verdict::Allow)
    }

    /// Decides with `f` (tests).
    pub fn from_fn(f: impl Fn(&AuthzRequest<'_>) -> Verdict + Send + Sync + 'static) -> Self {
        Self(Arc::new(Engine::Function(Box::new(f))))
    }

    /// Decides with the operators' policies.
    pub fn policies(engine: PolicyEngine) -> Self {
        metrics::describe_counter!(
            "warden_authz_decisions_total",
            "Authorization decisions, by decision (allow, deny, audit) and deciding policy."
        );
        Self(Arc::new(Engine::Policies(engine, Default::default())))
    }

    /// Decides with the policies the control plane sends through `feed` (which the proxy
    /// takes with [`Authorizer::take_feed`] once it has credentials to subscribe with).
    pub fn from_control_plane(
        engine: PolicyEngine,
        feed: crate::control_plane::PolicyFeed,
    ) -> Self {
        let authorizer = Self::policies(engine);
        if let Engine::Policies(_, slot) = &*authorizer.0 {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(feed);
        }
        authorizer
    }

    /// The control-plane feed, once (none without a control plane).
    pub fn take_feed(&self) -> Option<crate::control_plane::PolicyFeed> {
        match &*self.0 {
            Engine::Policies(_, slot) => slot.lock().unwrap_or_else(|p| p.into_inner()).take(),
            Engine::Function(_) => None,
        }
    }

    /// The decision for `request`.
    pub fn check(&self, request: &AuthzRequest<'_>, ctx: &AuthzContext<'_>) -> Verdict {
        match &*self.0 {
            Engine::Function(f) => f(request),
            Engine::Policies(engine, _) => engine.decide(request, ctx),
        }
    }

    /// For `/ready`: how many policies are in force, and the last reload error if any.
    pub fn status_line(&self) -> Option<String> {
        let Engine::Policies(engine, _) = &*self.0 else {
            return None;
        };
        let status = engine.status.borrow();
        let default = engine
            .policies
            .borrow()
            .default_policy()
            .unwrap_or(engine.default);
        Some(match (&status.error, &status.snapshot) {
            (None, None) => format!(
                "policies: {} in force (default {default:?})",
                status.policies
            ),
            (_, Some(snapshot)) => format!(
                "policies: {} in force (default {default:?}); {}{}",
                status.policies,
                crate::control_plane::describe(snapshot),
                status
                    .error
                    .as_ref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ),
            (Some(e), None) => format!(
                "policies: the last reload failed ({e}); keeping the last good {}",
                status.policies
            ),
        })
    }

    /// Why the proxy cannot authorize yet (it has never had a good policy set), if so: a
    /// proxy in that state denies everything and is not ready.
    pub fn not_loaded(&self) -> Option<String> {
        let Engine::Policies(engine, _) = &*self.0 else {
            return None;
        };
        if engine.policies.borrow().is_loaded() {
            return None;
        }
        let status = engine.status.borrow();
        Some(match &status.error {
            Some(e) => format!("no good policy set has been loaded ({e})"),
            None => "no policy set has been loaded yet".to_string(),
        })
    }

    /// The audit log, if decisions are recorded.
    pub fn audit(&self) -> Option<&Arc<AuditLog>> {
        match &*self.0 {
            Engine::Policies(engine, _) => engine.audit.as_ref(),
            Engine::Function(_) => None,
        }
    }

    /// Changes of the loader's state, to keep `/ready` current.
    pub fn status_changes(&self) -> Option<watch::Receiver<PolicyStatus>> {
        match &*self.0 {
            Engine::Policies(engine, _) => Some(engine.status.clone()),
            Engine::Function(_) => None,
        }
    }

    /// Resolves when a policy change denies `live`, which was allowed (then it must be
    /// closed); never resolves without policies. Changes count from this call, not from the
    /// future's first poll: call it before the connection's check, so a change landing
    /// between the check and the relay is not missed.
    pub fn until_revoked(
        &self,
        live: LiveConnection,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let changes = match &*self.0 {
            Engine::Policies(engine, _) => {
                let mut changes = engine.policies.clone();
                changes.borrow_and_update();
                Some(changes)
            }
            Engine::Function(_) => None,
        };
        let this = self.clone();
        async move {
            let (Some(changes), Engine::Policies(engine, _)) = (changes, &*this.0) else {
                return std::future::pending().await;
            };
            revoked(engine, changes, live).await
        }
    }
}

/// A live connection that a policy change may revoke.
#[derive(Debug, Clone)]
pub struct LiveConnection {
    /// The caller (none: unauthenticated).
    pub client: Option<SpiffeId>,
    /// The app's port.
    pub port: u16,
    /// For an upgraded HTTP request (a WebSocket), the method and path it was authorized as;
    /// none for opaque TCP.
    pub http: Option<(String, String)>,
    /// This workload.
    pub workload: SpiffeId,
    /// The caller's address.
    pub client_addr: Option<SocketAddr>,
}

/// The loop of [`Authorizer::until_revoked`].
async fn revoked(
    engine: &PolicyEngine,
    mut changes: watch::Receiver<Arc<PolicySet>>,
    live: LiveConnection,
) {
    loop {
        if changes.changed().await.is_err() {
            return std::future::pending().await;
        }
        let request = AuthzRequest {
            client: live.client.as_ref(),
            port: live.port,
            http: live.http.as_ref().map(|(m, p)| (m.as_str(), p.as_str())),
        };
        // Still allowed: nothing was decided for anyone, so nothing is recorded or counted.
        let set = changes.borrow_and_update().clone();
        let eval = Request {
            client: request.client,
            port: request.port,
            http: request.http,
        };
        if set
            .evaluate(&own_workload(&live.workload), &eval, engine.default)
            .allowed
        {
            continue;
        }
        // Denied now: decided (and audited) as the enforcement it is.
        let id = crate::http::request_id();
        let ctx = AuthzContext {
            workload: &live.workload,
            client_addr: live.client_addr,
            request_id: &id,
        };
        if let Verdict::Deny { policy } = engine.decide(&request, &ctx) {
            let what = if live.http.is_some() {
                "upgraded HTTP (WebSocket)"
            } else {
                "TCP"
            };
            tracing::info!(client = ?live.client.as_ref().map(SpiffeId::as_str), port = live.port, %policy, "a policy change denies a live {what} connection; closing it");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ALLOW for `ns/shop/sa/frontend` alone (`frontend: true`), or for nobody we use.
    fn set(frontend: bool) -> Arc<PolicySet> {
        let caller = if frontend { "frontend" } else { "other" };
        let text = format!(
            "apiVersion: warden.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: a, namespace: shop}}\nspec: {{action: ALLOW, rules: [{{from: {{identities: [\"spiffe://cluster.local/ns/shop/sa/{caller}\"]}}}}]}}\n"
        );
        Arc::new(PolicySet::new(
            warden_core::policy::parse(&text, "t.yaml").unwrap(),
        ))
    }

    #[tokio::test]
    async fn a_policy_change_between_the_check_and_the_relay_still_revokes() {
        let (set_tx, policies) = watch::channel(set(true));
        let (_status_tx, status) = watch::channel(PolicyStatus::default());
        let authz = Authorizer::policies(PolicyEngine {
            policies,
            status,
            default: DefaultPolicy::Deny,
            audit: None,
        });
        let client = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/frontend").unwrap();
        let workload = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/backend").unwrap();
        // The connection's watcher is made before its check, as inbound does...
        let revoked = authz.until_revoked(LiveConnection {
            client: Some(client),
            port: 8080,
            http: None,
            workload,
            client_addr: None,
        });
        // ...and the change lands before the relay first polls it (the app connect).
        set_tx.send_replace(set(false));
        tokio::time::timeout(std::time::Duration::from_secs(5), revoked)
            .await
            .expect("the change that denies the connection closes it");
    }
}
