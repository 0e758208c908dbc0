//! The authorization decision, as a pure function of the policies, the protected workload
//! and the request:
//!
//! 1. any matching DENY policy denies;
//! 2. if any ALLOW policy applies to the workload, one must match;
//! 3. otherwise the mesh default decides: `deny`, `all-authenticated` (any identity of the
//!    workload's trust domain), or `audit` (allowed, and recorded as what `deny` would refuse);
//! 4. AUDIT policies are allow-lists in dry run: they never deny, but a request they would
//!    have denied is flagged so the audit log records it.

use std::collections::HashMap;

use super::{Action, AuthorizationPolicy, Pattern, Rule};
use crate::SpiffeId;

/// The workload a policy protects: where its SPIFFE ID places it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Its trust domain.
    pub trust_domain: String,
    /// Its namespace and ServiceAccount, when its ID has the Kubernetes form.
    pub service_account: Option<(String, String)>,
}

impl Workload {
    /// The workload identified by `id`.
    pub fn from_id(id: &SpiffeId) -> Self {
        Self {
            trust_domain: id.trust_domain_name().to_string(),
            service_account: id
                .service_account()
                .map(|(ns, sa)| (ns.to_string(), sa.to_string())),
        }
    }
}

/// What is being authorized.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The verified caller; `None` for an unauthenticated (permissive-mode) caller.
    pub client: Option<&'a SpiffeId>,
    /// The app port.
    pub port: u16,
    /// `(method, normalized path)` for HTTP; `None` for opaque TCP.
    pub http: Option<(&'a str, &'a str)>,
}

/// What decides when no policy applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultPolicy {
    /// Zero trust: nothing without a policy.
    #[default]
    Deny,
    /// Any identity of the workload's trust domain (while adopting the mesh).
    AllAuthenticated,
    /// Allow, but flag every such request so the audit log records what `deny` would refuse.
    Audit,
}

/// A request an AUDIT policy would have denied (it was not denied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditFinding {
    /// The AUDIT policies that apply and none of which matched.
    pub policies: Vec<String>,
}

/// The decision, and what made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Let the request through.
    pub allowed: bool,
    /// The policy that decided (`namespace/name`), if one did.
    pub policy: Option<String>,
    /// The index of its rule that matched, if one did.
    pub rule: Option<usize>,
    /// Why, as data; [`Decision::reason`] says it in a sentence.
    pub why: Reason,
    /// Set when an AUDIT policy would have denied an allowed request.
    pub audit: Option<AuditFinding>,
}

/// Why a decision was made. Kept as data and put into words only when read (audit records,
/// logs, the CLI): formatting a sentence on every request was ~2,000 instructions (callgrind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// No good policy set has been loaded yet.
    NotLoaded,
    /// A DENY rule matched (the decision names the policy and rule).
    MatchedDeny,
    /// Opaque TCP to a port some rule constrains by HTTP fields.
    HttpOnlyPort {
        /// The port.
        port: u16,
    },
    /// An ALLOW rule matched.
    MatchedAllow,
    /// ALLOW policies apply and none matched.
    NoAllowMatched {
        /// The ALLOW policies that apply, comma-separated.
        names: String,
    },
    /// No policy applies and the default is deny.
    DefaultDeny,
    /// No policy applies and the default allows this authenticated caller.
    DefaultAllowsAuthenticated,
    /// No policy applies, the default allows the authenticated, and the caller is of
    /// another trust domain.
    OtherTrustDomain,
    /// No policy applies, the default allows the authenticated, and the caller is not.
    Unauthenticated,
    /// No policy applies and the default audits.
    DefaultAudit,
    /// Refused before any policy was asked (a request the proxy would refuse as malformed).
    Refused(String),
}

impl Decision {
    /// `allow`, `deny`, or `audit` (allowed, but an AUDIT policy would have denied it).
    pub fn label(&self) -> &'static str {
        match (self.allowed, &self.audit) {
            (false, _) => "deny",
            (true, Some(_)) => "audit",
            (true, None) => "allow",
        }
    }

    /// The `policy` label of metrics: the deciding policy, `no-match` or `default`.
    pub fn policy_label(&self) -> &str {
        match (&self.policy, &self.why) {
            (Some(p), _) => p,
            (None, Reason::NoAllowMatched { .. }) => "no-match",
            (None, Reason::NotLoaded) => "not-loaded",
            (None, _) => "default",
        }
    }

    /// Why, in a sentence.
    pub fn reason(&self) -> String {
        let policy = self.policy.as_deref().unwrap_or("-");
        let rule = self.rule.map_or_else(|| "-".to_string(), |r| r.to_string());
        match &self.why {
            Reason::NotLoaded => {
                "no good policy set has been loaded yet; denying everything".into()
            }
            Reason::MatchedDeny => format!("matched DENY policy {policy} rule {rule}"),
            Reason::HttpOnlyPort { port } => format!(
                "port {port} is constrained by HTTP fields (policy {policy} rule {rule}); opaque TCP is refused there"
            ),
            Reason::MatchedAllow => format!("matched ALLOW policy {policy} rule {rule}"),
            Reason::NoAllowMatched { names } => {
                format!("no ALLOW policy for this workload matched ({names})")
            }
            Reason::DefaultDeny => "no policy applies; the mesh default is deny".into(),
            Reason::DefaultAllowsAuthenticated => {
                "no policy applies; the mesh default allows all authenticated".into()
            }
            Reason::OtherTrustDomain => {
                "no policy applies; the caller is of another trust domain".into()
            }
            Reason::Unauthenticated => {
                "no policy applies; the caller is not authenticated".into()
            }
            Reason::DefaultAudit => "no policy applies; the mesh default audit allows it and records it as what deny would refuse".into(),
            Reason::Refused(why) => why.clone(),
        }
    }
}

/// Policies indexed by the workloads they protect, so evaluation only looks at those.
#[derive(Debug, Clone)]
pub struct PolicySet {
    policies: Vec<AuthorizationPolicy>,
    /// A fast, per-process seeded hasher: looked up on every request.
    by_namespace: HashMap<String, NamespaceIndex, foldhash::fast::RandomState>,
    /// Mesh-wide policies: they protect every workload.
    mesh_wide: Vec<usize>,
    /// False for the placeholder of a proxy that has never had a good policy set: it denies
    /// everything (fail closed), whatever the mesh default says.
    loaded: bool,
    /// The mesh default that came with the set (the control plane's), overriding the
    /// proxy's configured one.
    default: Option<DefaultPolicy>,
}

/// The policies of one namespace, in file order.
#[derive(Debug, Clone, Default)]
struct NamespaceIndex {
    /// Policies without a selector: they protect every workload of the namespace.
    everyone: Vec<usize>,
    /// For each ServiceAccount a selector names: its policies plus `everyone`, merged.
    by_service_account: HashMap<String, Vec<usize>, foldhash::fast::RandomState>,
}

impl PolicySet {
    /// Indexes `policies`, their path patterns in the form request paths are matched in
    /// (see [`normal_pattern`](super::path::normal_pattern)).
    pub fn new(mut policies: Vec<AuthorizationPolicy>) -> Self {
        for rule in policies.iter_mut().flat_map(|p| p.spec.rules.iter_mut()) {
            for path in rule.to.paths.iter_mut().flatten() {
                if let Some(normal) = super::path::normal_pattern(path) {
                    *path = normal;
                }
            }
        }
        let mut by_namespace: HashMap<String, NamespaceIndex, _> = HashMap::default();
        let mut mesh_wide = Vec::new();
        for (i, p) in policies.iter().enumerate() {
            if p.metadata.mesh {
                mesh_wide.push(i);
                continue;
            }
            let index = by_namespace
                .entry(p.metadata.namespace.clone())
                .or_default();
            match &p.spec.selector {
                None => index.everyone.push(i),
                Some(selector) => {
                    for sa in &selector.service_accounts {
                        let list = index.by_service_account.entry(sa.clone()).or_default();
                        if list.last() != Some(&i) {
                            list.push(i);
                        }
                    }
                }
            }
        }
        // Each ServiceAccount's list also holds the namespace-wide policies, in file order,
        // so the first match is the same as a scan of all policies would find.
        for index in by_namespace.values_mut() {
            for list in index.by_service_account.values_mut() {
                list.extend_from_slice(&index.everyone);
                list.sort_unstable();
            }
        }
        Self {
            policies,
            by_namespace,
            mesh_wide,
            loaded: true,
            default: None,
        }
    }

    /// The same set carrying the mesh default that decides when no policy applies.
    pub fn with_default(mut self, default: DefaultPolicy) -> Self {
        self.default = Some(default);
        self
    }

    /// The mesh default the set carries, if any.
    pub fn default_policy(&self) -> Option<DefaultPolicy> {
        self.default
    }

    /// The set of a proxy that has never loaded a good policy set: it denies everything.
    pub fn not_loaded() -> Self {
        Self {
            policies: Vec::new(),
            by_namespace: HashMap::default(),
            mesh_wide: Vec::new(),
            loaded: false,
            default: None,
        }
    }

    /// Whether this is a loaded set (and not [`PolicySet::not_loaded`]).
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// Every policy.
    pub fn policies(&self) -> &[AuthorizationPolicy] {
        &self.policies
    }

    /// The policies that protect `workload`.
    pub fn applying<'a>(
        &'a self,
        workload: &'a Workload,
    ) -> impl Iterator<Item = &'a AuthorizationPolicy> + 'a {
        let indices = workload
            .service_account
            .as_ref()
            .and_then(|(ns, sa)| {
                let index = self.by_namespace.get(ns)?;
                Some(index.by_service_account.get(sa).unwrap_or(&index.everyone))
            })
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        indices
            .iter()
            .chain(&self.mesh_wide)
            .map(|&i| &self.policies[i])
    }

    /// The decision for `request` to `workload`; `default` decides when no policy applies,
    /// unless the set carries its own.
    pub fn evaluate(
        &self,
        workload: &Workload,
        request: &Request<'_>,
        default: DefaultPolicy,
    ) -> Decision {
        let decide = |allowed,
                      policy: Option<&AuthorizationPolicy>,
                      rule: Option<usize>,
                      why: Reason| Decision {
            allowed,
            policy: policy.map(AuthorizationPolicy::id),
            rule,
            why,
            audit: None,
        };
        if !self.loaded {
            return decide(false, None, None, Reason::NotLoaded);
        }
        let default = self.default.unwrap_or(default);
        let applying: Vec<&AuthorizationPolicy> = self.applying(workload).collect();
        let first_match = |action: Action| {
            applying
                .iter()
                .filter(|p| p.spec.action == action)
                .find_map(|p| matching_rule(p, workload, request).map(|r| (*p, r)))
        };

        let http_only = || {
            request
                .http
                .is_none()
                .then(|| http_constraint(&applying, request.port))
                .flatten()
        };
        let mut decision = if let Some((policy, rule)) = first_match(Action::Deny) {
            decide(false, Some(policy), Some(rule), Reason::MatchedDeny)
        } else if let Some((policy, rule)) = http_only() {
            let why = Reason::HttpOnlyPort { port: request.port };
            decide(false, Some(policy), Some(rule), why)
        } else if let Some((policy, rule)) = first_match(Action::Allow) {
            decide(true, Some(policy), Some(rule), Reason::MatchedAllow)
        } else if applying.iter().any(|p| p.spec.action == Action::Allow) {
            let names = ids(&applying, Action::Allow);
            decide(false, None, None, Reason::NoAllowMatched { names })
        } else {
            match default {
                DefaultPolicy::Deny => decide(false, None, None, Reason::DefaultDeny),
                DefaultPolicy::AllAuthenticated => match request.client {
                    Some(id) if id.trust_domain_name() == workload.trust_domain => {
                        decide(true, None, None, Reason::DefaultAllowsAuthenticated)
                    }
                    Some(_) => decide(false, None, None, Reason::OtherTrustDomain),
                    None => decide(false, None, None, Reason::Unauthenticated),
                },
                DefaultPolicy::Audit => Decision {
                    audit: Some(AuditFinding {
                        policies: vec!["default".into()],
                    }),
                    ..decide(true, None, None, Reason::DefaultAudit)
                },
            }
        };
        let audits: Vec<&&AuthorizationPolicy> = applying
            .iter()
            .filter(|p| p.spec.action == Action::Audit)
            .collect();
        if decision.allowed && !audits.is_empty() && first_match(Action::Audit).is_none() {
            decision.audit = Some(AuditFinding {
                policies: audits.iter().map(|p| p.id()).collect(),
            });
        }
        decision
    }
}

/// The first ALLOW or DENY rule of `applying` that constrains `port` by HTTP fields: such a
/// port accepts only HTTP, since opaque TCP could not be held to the rule (AUDIT rules never
/// constrain: they never deny).
fn http_constraint<'a>(
    applying: &[&'a AuthorizationPolicy],
    port: u16,
) -> Option<(&'a AuthorizationPolicy, usize)> {
    applying
        .iter()
        .filter(|p| p.spec.action != Action::Audit)
        .find_map(|p| {
            let rule = p.spec.rules.iter().position(|r| {
                r.to.is_http()
                    && r.to
                        .ports
                        .as_ref()
                        .is_none_or(|ports| ports.contains(&port))
            })?;
            Some((*p, rule))
        })
}

fn ids(policies: &[&AuthorizationPolicy], action: Action) -> String {
    policies
        .iter()
        .filter(|p| p.spec.action == action)
        .map(|p| p.id())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `policy` protects `workload` (its namespace, and its selector if any).
/// The index of the first rule of `policy` that matches.
pub fn matching_rule(
    policy: &AuthorizationPolicy,
    workload: &Workload,
    request: &Request<'_>,
) -> Option<usize> {
    let deny = policy.spec.action == Action::Deny;
    policy
        .spec
        .rules
        .iter()
        .position(|rule| rule_matches(rule, workload, request, deny))
}

fn any_pattern(patterns: &[String], value: &str) -> bool {
    patterns
        .iter()
        .any(|p| Pattern::parse(p).is_ok_and(|p| p.matches(value)))
}

/// Whether every field `rule` gives matches the request. `deny` says the rule is a DENY
/// rule: those fail closed, matching unauthenticated callers unless they name identities.
pub fn rule_matches(rule: &Rule, workload: &Workload, request: &Request<'_>, deny: bool) -> bool {
    let from = &rule.from;
    match request.client {
        None => {
            // A caller without an identity can never satisfy an identity or namespace
            // condition. ALLOW and AUDIT rules match it only when they say so; DENY rules
            // without such conditions match it anyway, so a DENY can never be slipped past
            // by dropping the client certificate.
            if from.identities.is_some() || from.namespaces.is_some() {
                return false;
            }
            if !from.unauthenticated && !deny {
                return false;
            }
        }
        Some(id) => {
            if let Some(identities) = &from.identities {
                if !any_pattern(identities, id.as_str()) {
                    return false;
                }
            }
            if let Some(namespaces) = &from.namespaces {
                // A namespace is only meaningful inside the workload's own trust domain.
                let ns = id
                    .namespace()
                    .filter(|_| id.trust_domain_name() == workload.trust_domain);
                let ok = ns.is_some_and(|ns| namespaces.iter().any(|n| n == "*" || n == ns));
                if !ok {
                    return false;
                }
            }
        }
    }
    let to = &rule.to;
    if let Some(ports) = &to.ports {
        if !ports.contains(&request.port) {
            return false;
        }
    }
    if to.opaque && request.http.is_some() && !deny {
        return false;
    }
    if to.is_http() {
        let Some((method, path)) = request.http else {
            // Opaque TCP: an ALLOW or AUDIT rule with HTTP conditions fails closed; a DENY
            // rule applies on what remains once they are dropped (Istio's semantics), so
            // making a connection look non-HTTP never slips past a DENY.
            return deny;
        };
        if let Some(methods) = &to.methods {
            // Methods compare upper-case: `delete` is DELETE.
            if !methods.iter().any(|m| m.eq_ignore_ascii_case(method)) {
                return false;
            }
        }
        if let Some(paths) = &to.paths {
            if !any_pattern(paths, path) {
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    const POLICIES: &str = r#"
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: backend-allow, namespace: shop}
spec:
  selector: {serviceAccounts: [backend]}
  action: ALLOW
  rules:
    - from: {identities: ["spiffe://cluster.local/ns/shop/sa/frontend"]}
      to: {ports: [8080], methods: [GET, POST], paths: ["/api/*"]}
    - from: {namespaces: [ops]}
      to: {ports: [1234, 8080], methods: [GET]}
    - from: {identities: ["spiffe://cluster.local/ns/batch/*"]}
      to: {ports: [9000]}
    - from: {unauthenticated: true}
      to: {ports: [8080], paths: ["/public/*", "/healthz"]}
    - from: {identities: ["*/sa/reporter"]}
      to: {ports: [80], paths: ["*.csv"]}
---
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: backend-deny-admin, namespace: shop}
spec:
  selector: {serviceAccounts: [backend]}
  action: DENY
  rules:
    - to: {ports: [8080], paths: ["/api/admin*"]}
    - from: {identities: ["spiffe://cluster.local/ns/shop/sa/banned"]}
---
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: cart-audit, namespace: shop}
spec:
  selector: {serviceAccounts: [cart]}
  action: AUDIT
  rules:
    - from: {identities: ["spiffe://cluster.local/ns/shop/sa/frontend"]}
---
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: db-deny-all, namespace: data}
spec:
  action: DENY
  rules: [{}]
---
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: nothing, namespace: empty}
spec:
  action: ALLOW
"#;

    #[test]
    fn the_mesh_default_decides_only_where_no_policy_applies_and_a_set_may_carry_its_own() {
        let set = PolicySet::new(parse(POLICIES, "t.yaml").unwrap());
        let lonely = Workload::from_id(&id("spiffe://cluster.local/ns/quiet/sa/x"));
        let backend = Workload::from_id(&id("spiffe://cluster.local/ns/shop/sa/backend"));
        let caller = id("spiffe://cluster.local/ns/shop/sa/stranger");
        let foreign = id("spiffe://other.example/ns/shop/sa/web");
        let request = |client| Request {
            client,
            port: 8080,
            http: Some(("DELETE", "/x")),
        };
        // (workload, caller, default, label, policy label)
        let rows: [(&Workload, Option<&SpiffeId>, DefaultPolicy, &str, &str); 8] = [
            (
                &lonely,
                Some(&caller),
                DefaultPolicy::Deny,
                "deny",
                "default",
            ),
            (
                &lonely,
                Some(&caller),
                DefaultPolicy::AllAuthenticated,
                "allow",
                "default",
            ),
            (
                &lonely,
                Some(&foreign),
                DefaultPolicy::AllAuthenticated,
                "deny",
                "default",
            ),
            (
                &lonely,
                None,
                DefaultPolicy::AllAuthenticated,
                "deny",
                "default",
            ),
            // Audit allows what deny would refuse, flagged for the audit log.
            (
                &lonely,
                Some(&caller),
                DefaultPolicy::Audit,
                "audit",
                "default",
            ),
            (&lonely, None, DefaultPolicy::Audit, "audit", "default"),
            // Where an ALLOW policy applies, the default never decides.
            (
                &backend,
                Some(&caller),
                DefaultPolicy::Audit,
                "deny",
                "no-match",
            ),
            (
                &backend,
                Some(&caller),
                DefaultPolicy::AllAuthenticated,
                "deny",
                "no-match",
            ),
        ];
        for (workload, client, default, label, policy) in rows {
            let d = set.evaluate(workload, &request(client), default);
            assert_eq!(
                (d.label(), d.policy_label()),
                (label, policy),
                "{client:?} {default:?}: {d:?}"
            );
        }
        // A set carrying a default (the control plane's) overrides the configured one.
        let carried = set.clone().with_default(DefaultPolicy::Audit);
        assert_eq!(carried.default_policy(), Some(DefaultPolicy::Audit));
        let d = carried.evaluate(&lonely, &request(Some(&caller)), DefaultPolicy::Deny);
        assert_eq!(d.label(), "audit", "{d:?}");
        assert_eq!(d.audit.unwrap().policies, ["default"]);
    }

    #[test]
    fn decision_table() {
        let set = PolicySet::new(parse(POLICIES, "t.yaml").unwrap());
        let backend = Workload::from_id(&id("spiffe://cluster.local/ns/shop/sa/backend"));
        let cart = Workload::from_id(&id("spiffe://cluster.local/ns/shop/sa/cart"));
        let db = Workload::from_id(&id("spiffe://cluster.local/ns/data/sa/db"));
        let lonely = Workload::from_id(&id("spiffe://cluster.local/ns/empty/sa/x"));
        let other = Workload::from_id(&id("spiffe://cluster.local/ns/misc/sa/x"));
        let plain = Workload::from_id(&id("spiffe://cluster.local/vm/legacy"));
        use DefaultPolicy::{AllAuthenticated as AA, Deny as D};
        // (workload, client, port, http, default, decision label, deciding policy, rule)
        type Row<'a> = (
            &'a Workload,
            Option<&'a str>,
            u16,
            Option<(&'a str, &'a str)>,
            DefaultPolicy,
            &'a str,
            Option<&'a str>,
            Option<usize>,
        );
        let frontend = "spiffe://cluster.local/ns/shop/sa/frontend";
        let cases: Vec<Row> = vec![
            // ALLOW rule 0: identity + port + method + path all required
            (
                &backend,
                Some(frontend),
                8080,
                Some(("GET", "/api/orders")),
                D,
                "allow",
                Some("shop/backend-allow"),
                Some(0),
            ),
            (
                &backend,
                Some(frontend),
                8080,
                Some(("POST", "/api/orders")),
                D,
                "allow",
                Some("shop/backend-allow"),
                Some(0),
            ),
            (
                &backend,
                Some(frontend),
                8080,
                Some(("DELETE", "/api/orders")),
                D,
                "deny",
                None,
                None,
            ),
            (
                &backend,
                Some(frontend),
                8081,
                Some(("GET", "/api/orders")),
                D,
                "deny",
                None,
                None,
            ),
            (
                &backend,
                Some(frontend),
                8080,
                Some(("GET", "/apix")),
                D,
                "deny",
                None,
                None,
            ),
            (
                &backend,
                Some(frontend),
                8080,
                Some(("GET", "/other")),
                D,
                "deny",
                None,
                None,
            ),
            // opaque TCP to a port with DENY path rules: the DENY applies without them
            (
                &backend,
                Some(frontend),
                8080,
                None,
                D,
                "deny",
                Some("shop/backend-deny-admin"),
                Some(0),
            ),
            (
                &backend,
                Some("spiffe://cluster.local/ns/shop/sa/frontend2"),
                8080,
                Some(("GET", "/api/x")),
                D,
                "deny",
                None,
                None,
            ),
            // ALLOW rule 1: namespaces from the caller's ID, any port
            (
                &backend,
                Some("spiffe://cluster.local/ns/ops/sa/anyone"),
                1234,
                Some(("GET", "/x")),
                D,
                "allow",
                Some("shop/backend-allow"),
                Some(1),
            ),
            (
                &backend,
                Some("spiffe://cluster.local/ns/ops/sa/anyone"),
                1234,
                Some(("PUT", "/x")),
                D,
                "deny",
                None,
                None,
            ),
            (
                &backend,
                Some("spiffe://other.org/ns/ops/sa/anyone"),
                1234,
                Some(("GET", "/x")),
                D,
                "deny",
                None,
                None,
            ), // other trust domain
            (
                &backend,
                Some("spiffe://cluster.local/ops/sa/anyone"),
                1234,
                Some(("GET", "/x")),
                D,
                "deny",
                None,
                None,
            ), // no /ns/ in the ID
            // ALLOW rule 2: prefix identity, TCP allowed
            (
                &backend,
                Some("spiffe://cluster.local/ns/batch/sa/job"),
                9000,
                None,
                D,
                "allow",
                Some("shop/backend-allow"),
                Some(2),
            ),
            (
                &backend,
                Some("spiffe://cluster.local/ns/batch/sa/job"),
                9000,
                Some(("GET", "/")),
                D,
                "allow",
                Some("shop/backend-allow"),
                Some(2),
            ),
            (
                &backend,
                Some("spiffe://cluster.local/ns/batch/sa/job"),
                9001,
                None,
                D,
                "deny",
                None,
                None,
            ),
            (
                &backend,
                Some("spiffe://cluster.local/ns/batchx/sa/job"),
                9000,
                None,
                D,
                "deny",
                None,
                None,
            ),
            // ALLOW rule 3: unauthenticated callers only where a rule says so
            (
                &backend,
                None,
                8080,
                Some(("GET", "/public/index.html")),
                D,
                "allow",
                Some("shop/backend-allow"),
                Some(3),
            ),
            (
                &backend,
                None,
                8080,
                Some(("GET", "/healthz")),
                D,
                "allow",
                Some("shop/backend-allow"),
                Some(3),
            ),
            (
                &backend,
                None,
                8080,
                Some(("GET", "/api/orders")),
                D,
                "deny",
                None,
                None,
            ),
            (
                &backend,
                None,
                8080,
                None,
                D,
                "deny",
                Some("shop/backend-deny-admin"),
                Some(0),
            ),
            (
                &backend,
                Some(frontend),
                8080,
                Some(("GET", "/public/x")),
                D,
                "allow",
                Some("shop/backend-allow"),
                Some(3),
            ),
            // ALLOW rule 4: suffix identity and suffix path
            (
                &backend,
                Some("spiffe://cluster.local/ns/fin/sa/reporter"),
                80,
                Some(("GET", "/r/q3.csv")),
                D,
                "allow",
                Some("shop/backend-allow"),
                Some(4),
            ),
            (
                &backend,
                Some("spiffe://cluster.local/ns/fin/sa/reporter"),
                80,
                Some(("GET", "/r/q3.pdf")),
                D,
                "deny",
                None,
                None,
            ),
            // DENY first, whatever ALLOW says
            (
                &backend,
                Some(frontend),
                8080,
                Some(("GET", "/api/admin/users")),
                D,
                "deny",
                Some("shop/backend-deny-admin"),
                Some(0),
            ),
            (
                &backend,
                Some(frontend),
                8080,
                Some(("GET", "/api/admin")),
                AA,
                "deny",
                Some("shop/backend-deny-admin"),
                Some(0),
            ),
            (
                &backend,
                None,
                8080,
                Some(("GET", "/api/admin")),
                D,
                "deny",
                Some("shop/backend-deny-admin"),
                Some(0),
            ),
            (
                &backend,
                Some("spiffe://cluster.local/ns/shop/sa/banned"),
                8080,
                Some(("GET", "/public/x")),
                D,
                "deny",
                Some("shop/backend-deny-admin"),
                Some(1),
            ),
            (
                &backend,
                Some("spiffe://cluster.local/ns/shop/sa/banned"),
                9000,
                None,
                D,
                "deny",
                Some("shop/backend-deny-admin"),
                Some(1),
            ),
            // a DENY rule with HTTP fields applies to TCP on its own ports only
            (
                &backend,
                Some("spiffe://cluster.local/ns/batch/sa/job"),
                9000,
                None,
                D,
                "allow",
                Some("shop/backend-allow"),
                Some(2),
            ),
            // DENY with an empty rule: everything
            (
                &db,
                Some(frontend),
                5432,
                None,
                AA,
                "deny",
                Some("data/db-deny-all"),
                Some(0),
            ),
            (
                &db,
                Some(frontend),
                5432,
                Some(("GET", "/")),
                AA,
                "deny",
                Some("data/db-deny-all"),
                Some(0),
            ),
            (
                &db,
                None,
                5432,
                None,
                AA,
                "deny",
                Some("data/db-deny-all"),
                Some(0),
            ), // DENY rules fail closed for the unauthenticated
            // AUDIT: never denies, flags what it would have denied
            (
                &cart,
                Some(frontend),
                80,
                Some(("GET", "/")),
                AA,
                "allow",
                None,
                None,
            ),
            (
                &cart,
                Some("spiffe://cluster.local/ns/shop/sa/intruder"),
                80,
                Some(("GET", "/")),
                AA,
                "audit",
                None,
                None,
            ),
            (
                &cart,
                Some("spiffe://cluster.local/ns/shop/sa/intruder"),
                80,
                Some(("GET", "/")),
                D,
                "deny",
                None,
                None,
            ),
            // no policy applies: the mesh default
            (&other, Some(frontend), 80, None, D, "deny", None, None),
            (&other, Some(frontend), 80, None, AA, "allow", None, None),
            (
                &other,
                Some("spiffe://other.org/ns/x/sa/y"),
                80,
                None,
                AA,
                "deny",
                None,
                None,
            ),
            (&other, None, 80, None, AA, "deny", None, None),
            (&plain, Some(frontend), 80, None, AA, "allow", None, None), // not a Kubernetes ID: no policy selects it
            // an ALLOW policy without rules allows nothing
            (
                &lonely,
                Some(frontend),
                80,
                Some(("GET", "/")),
                AA,
                "deny",
                None,
                None,
            ),
            // the selector: backend's policies do not protect cart
            (
                &cart,
                Some("spiffe://cluster.local/ns/shop/sa/banned"),
                80,
                Some(("GET", "/api/admin")),
                AA,
                "audit",
                None,
                None,
            ),
        ];
        assert!(cases.len() >= 40, "{}", cases.len());
        let mut failures = Vec::new();
        for (i, (workload, client, port, http, default, label, policy, rule)) in
            cases.into_iter().enumerate()
        {
            let client = client.map(id);
            let request = Request {
                client: client.as_ref(),
                port,
                http,
            };
            let d = set.evaluate(workload, &request, default);
            if (d.label(), d.policy.as_deref(), d.rule) != (label, policy, rule) {
                failures.push(format!("case {i}: {d:?}"));
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }

    /// The review's bypasses: a caller allowed to a port, and a DENY on some of its paths or
    /// methods. Whatever the caller makes the connection look like, the DENY holds.
    #[test]
    fn a_deny_with_http_fields_cannot_be_slipped_past() {
        let policies = r#"
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: allow-frontend, namespace: shop}
spec:
  selector: {serviceAccounts: [backend]}
  action: ALLOW
  rules:
    - from: {identities: ["spiffe://cluster.local/ns/shop/sa/frontend"]}
      to: {ports: [8080]}
    - from: {identities: ["spiffe://cluster.local/ns/shop/sa/frontend"]}
      to: {ports: [5432], opaque: true}
---
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  selector: {serviceAccounts: [backend]}
  action: DENY
  rules:
    - to: {ports: [8080], paths: ["/admin*"]}
    - from: {identities: ["spiffe://cluster.local/ns/shop/sa/intern"]}
      to: {ports: [8080, 9090], methods: [DELETE]}
    - from: {identities: ["spiffe://cluster.local/ns/shop/sa/intern"]}
      to: {ports: [6379], opaque: true}
"#;
        let set = PolicySet::new(parse(policies, "t.yaml").unwrap());
        let backend = Workload::from_id(&id("spiffe://cluster.local/ns/shop/sa/backend"));
        let frontend = id("spiffe://cluster.local/ns/shop/sa/frontend");
        let intern = id("spiffe://cluster.local/ns/shop/sa/intern");
        // (caller, port, HTTP method and path, decision, deciding policy label)
        type Row<'a> = (
            &'a SpiffeId,
            u16,
            Option<(&'a str, &'a str)>,
            &'a str,
            &'a str,
        );
        let cases: Vec<Row> = vec![
            (
                &frontend,
                8080,
                Some(("GET", "/api")),
                "allow",
                "shop/allow-frontend",
            ),
            (
                &frontend,
                8080,
                Some(("GET", "/admin/x")),
                "deny",
                "shop/deny-admin",
            ),
            // opaque TCP to a port a DENY constrains by path: the DENY applies without its
            // HTTP fields (Istio), and the port accepts only HTTP anyway
            (&frontend, 8080, None, "deny", "shop/deny-admin"),
            // methods compare upper-case
            (
                &intern,
                8080,
                Some(("delete", "/api")),
                "deny",
                "shop/deny-admin",
            ),
            (
                &intern,
                8080,
                Some(("Delete", "/api")),
                "deny",
                "shop/deny-admin",
            ),
            (
                &intern,
                9090,
                Some(("delete", "/x")),
                "deny",
                "shop/deny-admin",
            ),
            // the intern's DENY names a method: on opaque TCP it still denies its ports
            (&intern, 9090, None, "deny", "shop/deny-admin"),
            // 9090 is HTTP-only for everyone (rule 1 constrains it by method)
            (&frontend, 9090, None, "deny", "shop/deny-admin"),
            (&frontend, 7000, None, "deny", "no-match"),
            // an opaque-only ALLOW never allows HTTP; an opaque DENY still denies HTTP
            (&frontend, 5432, None, "allow", "shop/allow-frontend"),
            (&frontend, 5432, Some(("GET", "/")), "deny", "no-match"),
            (&intern, 6379, Some(("GET", "/")), "deny", "shop/deny-admin"),
        ];
        for (client, port, http, want, policy) in cases {
            let request = Request {
                client: Some(client),
                port,
                http,
            };
            let d = set.evaluate(&backend, &request, DefaultPolicy::Deny);
            assert_eq!(d.label(), want, "{client} {port} {http:?}: {}", d.reason());
            assert_eq!(
                d.policy_label(),
                policy,
                "{client} {port} {http:?}: {}",
                d.reason()
            );
        }
    }

    #[test]
    fn a_mesh_wide_deny_wins_over_a_namespace_allow_and_is_named_as_such() {
        let text = r#"
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: shop}
spec: {action: ALLOW, rules: [{}]}
---
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-debug, namespace: shop}
spec: {action: DENY, rules: [{to: {paths: ["/debug*"]}}]}
"#;
        let mut policies = parse(text, "t.yaml").unwrap();
        policies[1].metadata.mesh = true;
        policies[1].metadata.namespace = "anything".into();
        let set = PolicySet::new(policies);
        let web = Workload::from_id(&id("spiffe://cluster.local/ns/shop/sa/web"));
        let caller = id("spiffe://cluster.local/ns/shop/sa/caller");
        let get = |path| Request {
            client: Some(&caller),
            port: 80,
            http: Some(("GET", path)),
        };
        let d = set.evaluate(&web, &get("/debug/pprof"), DefaultPolicy::Deny);
        assert!(!d.allowed);
        assert_eq!(d.policy.as_deref(), Some("MeshPolicy/no-debug"));
        assert!(set.evaluate(&web, &get("/"), DefaultPolicy::Deny).allowed);
        // It protects workloads of every namespace in the set.
        let other = Workload::from_id(&id("spiffe://cluster.local/ns/other/sa/x"));
        assert!(
            !set.evaluate(&other, &get("/debug"), DefaultPolicy::AllAuthenticated)
                .allowed
        );
    }

    #[test]
    fn a_port_constrained_by_http_fields_refuses_opaque_tcp() {
        let policies = r#"
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: api, namespace: shop}
spec:
  action: ALLOW
  rules:
    - from: {namespaces: [shop]}
      to: {ports: [8080], paths: ["/api/*"]}
    - from: {namespaces: [shop]}
      to: {ports: [8080, 6379]}
---
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: audit-all, namespace: shop}
spec:
  action: AUDIT
  rules: [{to: {methods: [GET]}}]
"#;
        let set = PolicySet::new(parse(policies, "t.yaml").unwrap());
        let web = Workload::from_id(&id("spiffe://cluster.local/ns/shop/sa/web"));
        let caller = id("spiffe://cluster.local/ns/shop/sa/caller");
        let tcp = |port| Request {
            client: Some(&caller),
            port,
            http: None,
        };
        let d = set.evaluate(&web, &tcp(8080), DefaultPolicy::Deny);
        assert!(
            !d.allowed,
            "rule 1 would allow opaque TCP to 8080, but 8080 is HTTP-only"
        );
        assert_eq!(d.policy.as_deref(), Some("shop/api"));
        assert_eq!(d.rule, Some(0));
        assert!(
            d.reason()
                .contains("port 8080 is constrained by HTTP fields"),
            "{}",
            d.reason()
        );
        let d = set.evaluate(&web, &tcp(6379), DefaultPolicy::Deny);
        assert!(
            d.allowed,
            "6379 is not constrained by HTTP fields: {}",
            d.reason()
        );
        assert_eq!(
            d.label(),
            "audit",
            "the AUDIT rule with HTTP fields flags it"
        );
    }

    #[test]
    fn reasons_and_labels_explain_the_decision() {
        let set = PolicySet::new(parse(POLICIES, "t.yaml").unwrap());
        let backend = Workload::from_id(&id("spiffe://cluster.local/ns/shop/sa/backend"));
        let intruder = id("spiffe://cluster.local/ns/shop/sa/intruder");
        let request = Request {
            client: Some(&intruder),
            port: 8080,
            http: Some(("GET", "/api/x")),
        };
        let d = set.evaluate(&backend, &request, DefaultPolicy::Deny);
        assert_eq!(
            d.reason(),
            "no ALLOW policy for this workload matched (shop/backend-allow)"
        );
        assert_eq!(d.policy_label(), "no-match");
        let other = Workload::from_id(&id("spiffe://cluster.local/ns/misc/sa/x"));
        let d = set.evaluate(&other, &request, DefaultPolicy::Deny);
        assert_eq!(d.policy_label(), "default");
        let cart = Workload::from_id(&id("spiffe://cluster.local/ns/shop/sa/cart"));
        let d = set.evaluate(&cart, &request, DefaultPolicy::AllAuthenticated);
        assert_eq!(
            d.audit,
            Some(AuditFinding {
                policies: vec!["shop/cart-audit".into()]
            })
        );
    }

    /// A small deterministic generator (xorshift64*), so the property test is repeatable.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545F4914F6CDD1D)
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[(self.next() % items.len() as u64) as usize]
        }
        fn coin(&mut self) -> bool {
            self.next().is_multiple_of(2)
        }
    }

    fn random_rule(rng: &mut Rng) -> String {
        let mut from = Vec::new();
        if rng.coin() {
            from.push(format!(
                "identities: [\"{}\"]",
                rng.pick(&[
                    "*",
                    "spiffe://cluster.local/ns/shop/*",
                    "*/sa/a",
                    "spiffe://cluster.local/ns/shop/sa/a"
                ])
            ));
        }
        if rng.coin() {
            from.push(format!(
                "namespaces: [{}]",
                rng.pick(&["shop", "ops", "\"*\""])
            ));
        }
        if rng.coin() {
            from.push("unauthenticated: true".into());
        }
        let mut to = Vec::new();
        if rng.coin() {
            to.push(format!("ports: [{}]", rng.pick(&["80", "8080", "9000"])));
        }
        if rng.coin() {
            to.push(format!("methods: [{}]", rng.pick(&["GET", "POST"])));
        }
        if rng.coin() {
            to.push(format!(
                "paths: [\"{}\"]",
                rng.pick(&["/*", "/api/*", "*.csv", "/x"])
            ));
        }
        format!(
            "{{from: {{{}}}, to: {{{}}}}}",
            from.join(", "),
            to.join(", ")
        )
    }

    #[test]
    fn property_a_matching_deny_always_wins() {
        let mut rng = Rng(0x9E3779B97F4A7C15);
        let workload = Workload::from_id(&id("spiffe://cluster.local/ns/shop/sa/backend"));
        let clients = [
            Some(id("spiffe://cluster.local/ns/shop/sa/a")),
            Some(id("spiffe://cluster.local/ns/ops/sa/b")),
            Some(id("spiffe://other.org/ns/shop/sa/a")),
            None,
        ];
        let mut denies_seen = 0;
        for round in 0..2000 {
            let mut docs = Vec::new();
            for p in 0..(1 + rng.next() % 5) {
                let action = rng.pick(&["ALLOW", "DENY", "AUDIT"]);
                let selector = if rng.coin() {
                    "selector: {serviceAccounts: [backend]}, "
                } else {
                    ""
                };
                let rules: Vec<String> = (0..(rng.next() % 3))
                    .map(|_| random_rule(&mut rng))
                    .collect();
                docs.push(format!(
                    "apiVersion: warden.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: p{p}, namespace: shop}}\nspec: {{{selector}action: {action}, rules: [{}]}}\n",
                    rules.join(", ")
                ));
            }
            let set = PolicySet::new(parse(&docs.join("---\n"), "random").unwrap());
            let client = &clients[(rng.next() % clients.len() as u64) as usize];
            let http = if rng.coin() {
                Some((
                    rng.pick(&["GET", "POST"]),
                    rng.pick(&["/api/x", "/x", "/r.csv"]),
                ))
            } else {
                None
            };
            let request = Request {
                client: client.as_ref(),
                port: rng.pick(&["80", "8080", "9000"]).parse().unwrap(),
                http,
            };
            let matching_deny = set.applying(&workload).any(|p| {
                p.spec.action == Action::Deny && matching_rule(p, &workload, &request).is_some()
            });
            for default in [
                DefaultPolicy::Deny,
                DefaultPolicy::AllAuthenticated,
                DefaultPolicy::Audit,
            ] {
                let d = set.evaluate(&workload, &request, default);
                if matching_deny {
                    denies_seen += 1;
                    assert!(!d.allowed, "round {round}: a matching DENY must win: {d:?}");
                    assert!(
                        d.reason().starts_with("matched DENY"),
                        "round {round}: {d:?}"
                    );
                }
                if d.allowed {
                    assert!(!matching_deny);
                }
            }
        }
        assert!(
            denies_seen > 200,
            "the generator exercised DENY ({denies_seen})"
        );
    }

    #[test]
    fn a_deny_written_in_another_spelling_still_denies_the_path_it_names() {
        let text = r#"
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec: {action: DENY, rules: [{to: {paths: ["/%61dmin*", "/api//internal", "/a/../debug"]}}]}
"#;
        let set = PolicySet::new(parse(text, "t").unwrap());
        let workload = Workload::from_id(&id("spiffe://cluster.local/ns/shop/sa/web"));
        let client = id("spiffe://cluster.local/ns/shop/sa/frontend");
        for (path, denied) in [
            ("/admin/users", true),
            ("/api/internal", true),
            ("/debug", true),
            ("/api", false),
        ] {
            let request = Request {
                client: Some(&client),
                port: 8080,
                http: Some(("GET", path)),
            };
            let d = set.evaluate(&workload, &request, DefaultPolicy::AllAuthenticated);
            assert_eq!(!d.allowed, denied, "{path}");
        }
    }

    #[test]
    fn only_the_policies_protecting_a_workload_apply_in_file_order() {
        let text = r#"
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: p0-everyone, namespace: shop}
spec: {action: DENY, rules: [{to: {paths: ["/admin"]}}]}
---
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: p1-backend, namespace: shop}
spec: {selector: {serviceAccounts: [backend, backend]}, action: ALLOW, rules: [{}]}
---
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: p2-everyone, namespace: shop}
spec: {action: AUDIT, rules: [{}]}
---
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: p3-both, namespace: shop}
spec: {selector: {serviceAccounts: [web, backend]}, action: ALLOW, rules: [{}]}
---
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: p4-other-namespace, namespace: ops}
spec: {action: ALLOW, rules: [{}]}
"#;
        let set = PolicySet::new(parse(text, "t").unwrap());
        let names = |id_text: &str| -> Vec<String> {
            let workload = Workload::from_id(&id(id_text));
            set.applying(&workload)
                .map(|p| p.metadata.name.clone())
                .collect()
        };
        let cases: &[(&str, &[&str])] = &[
            (
                "spiffe://cluster.local/ns/shop/sa/backend",
                &["p0-everyone", "p1-backend", "p2-everyone", "p3-both"],
            ),
            (
                "spiffe://cluster.local/ns/shop/sa/web",
                &["p0-everyone", "p2-everyone", "p3-both"],
            ),
            (
                "spiffe://cluster.local/ns/shop/sa/unnamed",
                &["p0-everyone", "p2-everyone"],
            ),
            (
                "spiffe://cluster.local/ns/ops/sa/web",
                &["p4-other-namespace"],
            ),
            ("spiffe://cluster.local/ns/empty/sa/web", &[]),
            ("spiffe://cluster.local/not-kubernetes", &[]),
        ];
        for (workload, want) in cases {
            assert_eq!(names(workload), *want, "{workload}");
        }
    }
}
