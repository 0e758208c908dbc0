//! Authorization policies: the `AuthorizationPolicy` resources operators write
//! (`warden.dev/v1alpha1`), parsed from multi-document YAML and validated, with errors that
//! name the file, the document, the field and the problem.
//!
//! ```yaml
//! apiVersion: warden.dev/v1alpha1
//! kind: AuthorizationPolicy
//! metadata: {name: backend-allow-frontend, namespace: shop}
//! spec:
//!   selector: {serviceAccounts: [backend]}     # omitted: every workload of the namespace
//!   action: ALLOW                              # ALLOW | DENY | AUDIT
//!   rules:
//!     - from: {identities: ["spiffe://cluster.local/ns/shop/sa/frontend"], namespaces: [shop]}
//!       to:   {ports: [8080], methods: [GET, POST], paths: ["/api/*"]}
//! ```

pub mod cases;
pub mod diff;
pub mod evaluate;
pub mod lint;
pub mod netpol;
pub mod path;
pub mod suggest;

use std::fmt;

use serde::{Deserialize, Serialize};

/// The resource's `apiVersion`.
pub const API_VERSION: &str = "warden.dev/v1alpha1";
/// The resource's `kind`.
pub const KIND: &str = "AuthorizationPolicy";

/// One `AuthorizationPolicy` resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    /// Must be `warden.dev/v1alpha1`.
    pub api_version: String,
    /// Must be `AuthorizationPolicy`.
    pub kind: String,
    /// Name and namespace.
    pub metadata: Metadata,
    /// What it does.
    pub spec: Spec,
}

/// `metadata`: the policy applies to workloads of `namespace`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// The policy's name (named in decisions and audit records).
    pub name: String,
    /// The namespace whose workloads it protects.
    pub namespace: String,
    /// Kubernetes labels and the like are allowed and ignored.
    #[serde(default, flatten, skip_serializing)]
    pub other: std::collections::BTreeMap<String, serde_json::Value>,
    /// A mesh-wide rule set from an operator's `MeshPolicy` (set by the control plane, never
    /// read from YAML): it protects every workload of the set it is in, whatever `namespace`.
    #[serde(skip)]
    pub mesh: bool,
}

/// `spec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    /// Which workloads of the namespace it applies to (omitted: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    /// `ALLOW`, `DENY` or `AUDIT`.
    pub action: Action,
    /// Any rule may match; a policy without rules matches nothing.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// `spec.selector`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Selector {
    /// The ServiceAccounts of the protected workloads.
    pub service_accounts: Vec<String>,
}

/// What a matching policy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    /// If any ALLOW policy applies to a workload, a request must match one.
    #[serde(rename = "ALLOW")]
    Allow,
    /// A matching DENY policy denies, whatever else matches.
    #[serde(rename = "DENY")]
    Deny,
    /// An allow-list in dry run: never denies, records what it would have denied.
    #[serde(rename = "AUDIT")]
    Audit,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
        })
    }
}

/// One rule: every field given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Who is calling (omitted: any authenticated caller).
    #[serde(default)]
    pub from: From,
    /// What is being called (omitted: anything).
    #[serde(default)]
    pub to: To,
}

/// `rules[].from`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct From {
    /// Caller SPIFFE IDs: exact, `prefix*`, `*suffix` or `*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identities: Option<Vec<String>>,
    /// Caller namespaces, read from the caller's SPIFFE ID in the workload's trust domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
    /// Matches callers without an identity (permissive mode) too; only such rules do.
    #[serde(default)]
    pub unauthenticated: bool,
}

/// `rules[].to`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct To {
    /// App ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<u16>>,
    /// HTTP methods (never match opaque TCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// HTTP paths: exact, `prefix*`, `*suffix` or `*` (never match opaque TCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    /// The rule is for opaque TCP: an ALLOW or AUDIT rule then matches no HTTP request (a
    /// DENY rule still does: being HTTP never slips past a DENY). Excludes methods and paths.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub opaque: bool,
}

impl To {
    /// Whether the rule names HTTP fields (and so can never match opaque TCP).
    pub fn is_http(&self) -> bool {
        self.methods.is_some() || self.paths.is_some()
    }
}

/// A string pattern: exact, `prefix*`, `*suffix`, or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern<'a> {
    /// Equal.
    Exact(&'a str),
    /// Starts with.
    Prefix(&'a str),
    /// Ends with.
    Suffix(&'a str),
    /// Anything.
    Any,
}

impl<'a> Pattern<'a> {
    /// Reads a pattern (a `*` only at one end, or alone).
    pub fn parse(s: &'a str) -> Result<Self, &'static str> {
        let pattern = if s == "*" {
            Pattern::Any
        } else if let Some(p) = s.strip_suffix('*') {
            Pattern::Prefix(p)
        } else if let Some(p) = s.strip_prefix('*') {
            Pattern::Suffix(p)
        } else {
            Pattern::Exact(s)
        };
        let inner = match &pattern {
            Pattern::Exact(v) | Pattern::Prefix(v) | Pattern::Suffix(v) => *v,
            Pattern::Any => "",
        };
        if s.is_empty() {
            return Err("is empty");
        }
        if inner.contains('*') {
            return Err("may have one '*', at its start or end, or be '*'");
        }
        Ok(pattern)
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Exact(v) => value == *v,
            Pattern::Prefix(p) => value.starts_with(p),
            Pattern::Suffix(s) => value.ends_with(s),
            Pattern::Any => true,
        }
    }
}

/// A policy set that failed to load: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}{}: {message}", .document.map(|d| format!(": document {d}")).unwrap_or_default(), if .field.is_empty() { String::new() } else { format!(": field {}", .field) })]
pub struct PolicyError {
    /// The file.
    pub file: String,
    /// The document in the file (1-based), if known.
    pub document: Option<usize>,
    /// The field path, e.g. `spec.rules[0].to.ports[1]`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Parses every `AuthorizationPolicy` in a multi-document YAML text (empty documents are
/// skipped) and validates each; `source` names the text in errors.
pub fn parse(text: &str, source: &str) -> Result<Vec<AuthorizationPolicy>, PolicyError> {
    let err = |document, field: String, message: String| PolicyError {
        file: source.to_string(),
        document,
        field,
        message,
    };
    let mut options = serde_saphyr::options::Options::default();
    options.with_snippet = false;
    let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple_with_options(text, options)
        .map_err(|e| {
            let message = e.to_string();
            let first = message.lines().next().unwrap_or(&message).trim();
            err(
                None,
                String::new(),
                first.strip_prefix("error: ").unwrap_or(first).to_string(),
            )
        })?;
    let mut policies = Vec::new();
    for (i, document) in documents.into_iter().enumerate() {
        if document.is_null() {
            continue;
        }
        policies.push(from_document(document, source, i + 1)?);
    }
    Ok(policies)
}

/// Document `index` (1-based) of `source`, already parsed from YAML, as a checked policy.
pub fn from_document(
    document: serde_json::Value,
    source: &str,
    index: usize,
) -> Result<AuthorizationPolicy, PolicyError> {
    let err = |field: String, message: String| PolicyError {
        file: source.to_string(),
        document: Some(index),
        field,
        message,
    };
    let policy: AuthorizationPolicy = serde_path_to_error::deserialize(document)
        .map_err(|e| err(e.path().to_string(), e.inner().to_string()))?;
    policy
        .validate()
        .map_err(|(field, message)| err(field, message))?;
    Ok(policy)
}

fn kubernetes_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

impl AuthorizationPolicy {
    /// `namespace/name`, how decisions and audit records name the policy; `MeshPolicy/name`
    /// for a mesh-wide one (no namespace is spelled with capitals).
    pub fn id(&self) -> String {
        // Built by hand: it runs on every decision, and `format!` costs several times more.
        let scope = if self.metadata.mesh {
            "MeshPolicy"
        } else {
            &self.metadata.namespace
        };
        let mut id = String::with_capacity(scope.len() + 1 + self.metadata.name.len());
        id.push_str(scope);
        id.push('/');
        id.push_str(&self.metadata.name);
        id
    }

    /// A policy built from its parts by the control plane (not read from YAML), checked as a
    /// policy file is; errors are `(field, problem)`.
    pub fn checked(
        name: String,
        namespace: String,
        mesh: bool,
        spec: Spec,
    ) -> Result<Self, (String, String)> {
        let policy = Self {
            api_version: API_VERSION.to_string(),
            kind: KIND.to_string(),
            metadata: Metadata {
                name,
                namespace,
                other: std::collections::BTreeMap::new(),
                mesh,
            },
            spec,
        };
        policy.validate()?;
        Ok(policy)
    }

    /// Checks what the types do not: kind and version, names, patterns, methods and ports.
    /// Errors are `(field, problem)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |field: &str, message: String| Err((field.to_string(), message));
        if self.api_version != API_VERSION {
            return bad(
                "apiVersion",
                format!("{:?} is not {API_VERSION:?}", self.api_version),
            );
        }
        if self.kind != KIND {
            return bad("kind", format!("{:?} is not {KIND:?}", self.kind));
        }
        if !kubernetes_name(&self.metadata.name) {
            return bad(
                "metadata.name",
                format!("{:?} is not a Kubernetes name", self.metadata.name),
            );
        }
        if !kubernetes_name(&self.metadata.namespace) || self.metadata.namespace.contains('.') {
            return bad(
                "metadata.namespace",
                format!("{:?} is not a namespace name", self.metadata.namespace),
            );
        }
        if let Some(selector) = &self.spec.selector {
            if selector.service_accounts.is_empty() {
                // It would apply to no workload: a DENY would deny nothing.
                return bad(
                    "spec.selector.serviceAccounts",
                    "an empty list selects no workload (omit the selector to select every \
                     workload of the namespace)"
                        .into(),
                );
            }
            for (i, sa) in selector.service_accounts.iter().enumerate() {
                if !kubernetes_name(sa) {
                    return bad(
                        &format!("spec.selector.serviceAccounts[{i}]"),
                        format!("{sa:?} is not a ServiceAccount name"),
                    );
                }
            }
        }
        for (r, rule) in self.spec.rules.iter().enumerate() {
            let at = |field: &str| format!("spec.rules[{r}].{field}");
            // An empty list matches nothing, so its rule could never match: a DENY would deny
            // nothing. Omitting the field is how a rule matches any value.
            let listed = [
                (
                    "from.identities",
                    rule.from.identities.as_ref().map(Vec::len),
                ),
                (
                    "from.namespaces",
                    rule.from.namespaces.as_ref().map(Vec::len),
                ),
                ("to.ports", rule.to.ports.as_ref().map(Vec::len)),
                ("to.methods", rule.to.methods.as_ref().map(Vec::len)),
                ("to.paths", rule.to.paths.as_ref().map(Vec::len)),
            ];
            if let Some((field, _)) = listed.iter().find(|(_, len)| *len == Some(0)) {
                return bad(
                    &at(field),
                    "an empty list matches nothing, so the rule could never match (omit the \
                     field to match any value)"
                        .into(),
                );
            }
            for (i, id) in rule.from.identities.iter().flatten().enumerate() {
                let field = at(&format!("from.identities[{i}]"));
                match Pattern::parse(id) {
                    Err(why) => return bad(&field, format!("{id:?} {why}")),
                    Ok(Pattern::Exact(exact)) => {
                        if let Err(e) = crate::SpiffeId::parse(exact) {
                            return bad(&field, e.to_string());
                        }
                    }
                    Ok(Pattern::Prefix(p))
                        if !p.starts_with("spiffe://") && !"spiffe://".starts_with(p) =>
                    {
                        return bad(&field, format!("{id:?} can never match a SPIFFE ID"));
                    }
                    Ok(_) => {}
                }
            }
            for (i, ns) in rule.from.namespaces.iter().flatten().enumerate() {
                if ns != "*" && (!kubernetes_name(ns) || ns.contains('.')) {
                    return bad(
                        &at(&format!("from.namespaces[{i}]")),
                        format!("{ns:?} is not a namespace name"),
                    );
                }
            }
            for (i, port) in rule.to.ports.iter().flatten().enumerate() {
                if *port == 0 {
                    return bad(
                        &at(&format!("to.ports[{i}]")),
                        "port 0 is not a port".into(),
                    );
                }
            }
            for (i, method) in rule.to.methods.iter().flatten().enumerate() {
                let token = !method.is_empty()
                    && method.bytes().all(|b| b.is_ascii_uppercase() || b == b'-');
                if !token {
                    return bad(
                        &at(&format!("to.methods[{i}]")),
                        format!("{method:?} is not an upper-case HTTP method"),
                    );
                }
            }
            if rule.to.opaque && rule.to.is_http() {
                return bad(
                    &at("to.opaque"),
                    "a rule for opaque TCP cannot name methods or paths".into(),
                );
            }
            for (i, path) in rule.to.paths.iter().flatten().enumerate() {
                let field = at(&format!("to.paths[{i}]"));
                match Pattern::parse(path) {
                    Err(why) => return bad(&field, format!("{path:?} {why}")),
                    Ok(Pattern::Exact(p) | Pattern::Prefix(p)) if !p.starts_with('/') => {
                        return bad(
                            &field,
                            format!("{path:?} must start with '/' (or be '*' or '*suffix')"),
                        );
                    }
                    Ok(_) => {}
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: backend-allow-frontend, namespace: shop, labels: {team: a}}
spec:
  selector: {serviceAccounts: [backend]}
  action: ALLOW
  rules:
    - from: {identities: ["spiffe://cluster.local/ns/shop/sa/frontend"], namespaces: [shop]}
      to:   {ports: [8080], methods: [GET, POST], paths: ["/api/*"]}
---
# an empty document is fine
---
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  action: DENY
  rules: [{to: {paths: ["/admin*"]}}]
"#;

    #[test]
    fn multi_document_files_parse() {
        let policies = parse(GOOD, "shop.yaml").unwrap();
        assert_eq!(policies.len(), 2);
        assert_eq!(policies[0].id(), "shop/backend-allow-frontend");
        assert_eq!(policies[0].spec.action, Action::Allow);
        assert_eq!(policies[1].spec.action, Action::Deny);
        assert!(policies[1].spec.rules[0].to.is_http());
    }

    #[test]
    fn errors_name_file_document_field_and_problem() {
        let head = "apiVersion: warden.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\n";
        let cases = [
            (format!("{head}spec: {{action: ALLOW, rules: [{{to: {{ports: [99999]}}}}]}}"), "p.yaml: document 1: field spec.rules[0].to.ports[0]: "),
            (format!("{head}spec: {{action: ALLOW, bogus: 1}}"), "p.yaml: document 1: field spec.bogus: unknown field `bogus`"),
            (format!("{head}spec: {{action: allow}}"), "p.yaml: document 1: field spec.action: unknown variant `allow`"),
            (format!("---\n{head}spec: {{action: DENY}}\n---\n{head}spec: {{action: ALLOW, rules: [{{from: {{identities: [\"spiffe://Bad/x\"]}}}}]}}"), "p.yaml: document 2: field spec.rules[0].from.identities[0]: invalid SPIFFE ID"),
            (format!("{head}spec: {{action: ALLOW, rules: [{{from: {{identities: [\"*a*\"]}}}}]}}"), "field spec.rules[0].from.identities[0]: \"*a*\" may have one '*'"),
            (format!("{head}spec: {{action: ALLOW, rules: [{{from: {{identities: [\"http://*\"]}}}}]}}"), "can never match a SPIFFE ID"),
            (format!("{head}spec: {{action: ALLOW, rules: [{{to: {{methods: [get]}}}}]}}"), "field spec.rules[0].to.methods[0]: \"get\" is not an upper-case HTTP method"),
            (format!("{head}spec: {{action: ALLOW, rules: [{{to: {{paths: [api]}}}}]}}"), "field spec.rules[0].to.paths[0]: \"api\" must start with '/'"),
            (format!("{head}spec: {{action: ALLOW, rules: [{{to: {{ports: [0]}}}}]}}"), "field spec.rules[0].to.ports[0]: port 0"),
            (format!("{head}spec: {{action: DENY, rules: [{{from: {{identities: []}}}}]}}"), "field spec.rules[0].from.identities: an empty list matches nothing"),
            (format!("{head}spec: {{action: DENY, rules: [{{}}, {{to: {{methods: []}}}}]}}"), "field spec.rules[1].to.methods: an empty list"),
            (format!("{head}spec: {{action: ALLOW, rules: [{{to: {{opaque: true, paths: [/a]}}}}]}}"), "field spec.rules[0].to.opaque: a rule for opaque TCP cannot name methods or paths"),
            (format!("{head}spec: {{action: ALLOW, selector: {{serviceAccounts: [Web]}}}}"), "field spec.selector.serviceAccounts[0]"),
            (format!("{head}spec: {{action: DENY, selector: {{serviceAccounts: []}}, rules: [{{}}]}}"), "field spec.selector.serviceAccounts: an empty list selects no workload"),
            (format!("{head}spec: {{action: ALLOW, rules: [{{from: {{namespaces: [a.b]}}}}]}}"), "field spec.rules[0].from.namespaces[0]"),
            ("apiVersion: v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec: {action: ALLOW}".to_string(), "field apiVersion: \"v1\" is not"),
            ("apiVersion: warden.dev/v1alpha1\nkind: ConfigMap\nmetadata: {name: p, namespace: shop}\nspec: {action: ALLOW}".to_string(), "field kind: "),
            ("apiVersion: warden.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: P_, namespace: shop}\nspec: {action: ALLOW}".to_string(), "field metadata.name"),
            ("apiVersion: warden.dev/v1alpha1\nkind: AuthorizationPolicy\nspec: {action: ALLOW}".to_string(), "missing field `metadata`"),
            ("key: [unclosed".to_string(), "p.yaml: "),
        ];
        for (text, want) in cases {
            let got = parse(&text, "p.yaml").unwrap_err().to_string();
            assert!(got.contains(want), "want {want:?} in {got:?}");
            assert_eq!(got.lines().count(), 1, "{got}");
        }
    }

    #[test]
    fn patterns() {
        let cases = [
            ("spiffe://td/ns/a/sa/b", "spiffe://td/ns/a/sa/b", true),
            ("spiffe://td/ns/a/sa/b", "spiffe://td/ns/a/sa/bb", false),
            ("spiffe://td/ns/a/*", "spiffe://td/ns/a/sa/b", true),
            ("spiffe://td/ns/a/*", "spiffe://td/ns/ab/sa/b", false),
            ("*/sa/b", "spiffe://td/ns/a/sa/b", true),
            ("*", "anything", true),
            ("/api/*", "/api/v1", true),
            ("/api/*", "/apiv1", false),
        ];
        for (pattern, value, want) in cases {
            assert_eq!(
                Pattern::parse(pattern).unwrap().matches(value),
                want,
                "{pattern} {value}"
            );
        }
        assert!(Pattern::parse("").is_err());
        assert!(Pattern::parse("**").is_err());
        assert!(
            Pattern::parse("a*b").is_err(),
            "a '*' in the middle is not a pattern"
        );
    }
}
