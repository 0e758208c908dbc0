//! The policy CRDs, `warden.dev/v1alpha1`: the Rust types are the single source of truth for
//! the committed CRD YAML (`deploy/kubernetes/base/crds.yaml`, checked by a test).
//!
//! - `AuthorizationPolicy` (namespaced, for teams): DESIGN section 4's shape, the same YAML
//!   `warden policy check` reads.
//! - `MeshPolicy` (cluster-scoped, for operators): mesh-wide rules for the namespaces it
//!   selects, the mesh default, `meshOnly`, and which enforcement-weakening pod annotations
//!   are allowed.
//!
//! The structural schema and CEL rules let the API server refuse at apply time what can never
//! be right, with a message naming the field; what needs deeper checks (a SPIFFE ID's exact
//! grammar) is checked by the controller, which marks the object Invalid in its status.
//! List and string sizes are bounded (32 rules, 32 identities of at most 512 bytes, ...) so
//! the API server can bound the cost of the CEL rules, as it requires.

// kube's `printcolumn(name = .., type_ = ..)` repeats keys across columns by design.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use warden_core::policy;

/// What a matching policy or rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Action {
    /// If any ALLOW applies to a workload, a request must match one.
    #[serde(rename = "ALLOW")]
    Allow,
    /// A matching DENY denies, whatever else matches.
    #[serde(rename = "DENY")]
    Deny,
    /// An allow-list in dry run: never denies, records what it would have denied.
    #[serde(rename = "AUDIT")]
    Audit,
}

/// `spec.selector`: the workloads of the namespace a policy protects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Selector {
    /// ServiceAccount names of the protected workloads.
    #[schemars(length(min = 1, max = 64), inner(length(max = 253)))]
    #[x_kube(validation = Rule::new("self.all(sa, sa.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$'))").message("serviceAccounts are ServiceAccount names (lower-case DNS subdomains)"))]
    pub service_accounts: Vec<String>,
}

/// `rules[].from`: who is calling.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
pub struct From {
    /// Caller SPIFFE IDs: exact, `prefix*`, `*suffix` or `*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32), inner(length(max = 512)))]
    #[x_kube(validation = Rule::new(r"self.all(i, i == '*' || i.matches('^spiffe://[a-z0-9._-]+(/[A-Za-z0-9._-]+)*(/?\\*)?$') || i.matches('^\\*[A-Za-z0-9._/-]+$'))").message("identities are SPIFFE IDs (spiffe://trust-domain/path), a prefix ending in '*', a suffix starting with '*', or '*'"))]
    pub identities: Option<Vec<String>>,
    /// Caller namespaces, read from the caller's SPIFFE ID in the workload's trust domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), inner(length(max = 63)))]
    #[x_kube(validation = Rule::new("self.all(n, n == '*' || n.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))").message("namespaces are namespace names or '*'"))]
    pub namespaces: Option<Vec<String>>,
    /// Matches callers without an identity (permissive mode) too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unauthenticated: bool,
}

/// `rules[].to`: what is being called.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("!has(self.opaque) || !self.opaque || (!has(self.methods) && !has(self.paths))").message("a rule for opaque TCP (opaque: true) cannot name methods or paths"))]
pub struct To {
    /// App ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), inner(range(min = 1, max = 65535)))]
    pub ports: Option<Vec<u16>>,
    /// HTTP methods, upper-case (never match opaque TCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16), inner(length(max = 32)))]
    #[x_kube(validation = Rule::new("self.all(m, m.matches('^[A-Z][A-Z-]*$'))").message("methods are upper-case HTTP methods, e.g. GET"))]
    pub methods: Option<Vec<String>>,
    /// HTTP paths: exact, `prefix*`, `*suffix` or `*` (never match opaque TCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32), inner(length(max = 1024)))]
    #[x_kube(validation = Rule::new(r"self.all(p, p.matches('^(\\*|/[^*]*\\*?|\\*[^*]+)$'))").message("paths start with '/' (an exact path or a prefix ending in '*'), or are '*suffix' or '*'"))]
    pub paths: Option<Vec<String>>,
    /// The rule is for opaque TCP: as an ALLOW or AUDIT rule it matches no HTTP request.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub opaque: bool,
}

// Not `Rule`: the derives bring kube's CEL `Rule` into scope.
/// One rule: every field given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PolicyRule {
    /// Who is calling (omitted: any authenticated caller).
    #[serde(default, skip_serializing_if = "is_default")]
    pub from: From,
    /// What is being called (omitted: anything).
    #[serde(default, skip_serializing_if = "is_default")]
    pub to: To,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// An allow-list, deny-list or audit-list for workloads of one namespace.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "warden.dev",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    plural = "authorizationpolicies",
    shortname = "wap",
    namespaced,
    status = "PolicyStatus",
    doc = "Who may call the workloads of a namespace (DESIGN section 4).",
    printcolumn(name = "Action", type_ = "string", json_path = ".spec.action"),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(name = "Workloads", type_ = "integer", json_path = ".status.workloads"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.action == 'ALLOW' || (has(self.rules) && size(self.rules) > 0)").message("a DENY or AUDIT policy needs at least one rule (without rules it matches nothing)"))]
pub struct AuthorizationPolicySpec {
    /// Which workloads of the namespace it applies to (omitted: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    /// `ALLOW`, `DENY` or `AUDIT`.
    pub action: Action,
    /// Any rule may match; an ALLOW policy without rules allows nothing.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub rules: Vec<PolicyRule>,
}

/// The mesh default: what decides when no policy applies to a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MeshDefault {
    /// Zero trust: nothing without a policy.
    Deny,
    /// Any identity of the trust domain (while adopting the mesh).
    AllAuthenticated,
    /// Allow, but record what `deny` would have refused.
    Audit,
}

/// What becomes of outbound connections to addresses the controller does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum UnknownDestinations {
    /// Plain TCP, as without a mesh.
    Passthrough,
    /// Refused (reset).
    Refuse,
}

impl MeshDefault {
    /// Where several MeshPolicies set a default the strictest wins, the one that lets fewer
    /// callers through: deny, then all-authenticated (callers of the trust domain), then
    /// audit (which lets every caller through and records what deny would refuse).
    pub fn strictness(self) -> u8 {
        match self {
            MeshDefault::Deny => 2,
            MeshDefault::AllAuthenticated => 1,
            MeshDefault::Audit => 0,
        }
    }
}

/// A pod annotation that weakens enforcement, which pods may use only where allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum WeakeningAnnotation {
    /// Inbound ports left unintercepted.
    #[serde(rename = "warden.dev/skip-inbound-ports")]
    SkipInboundPorts,
    /// Outbound ports left unintercepted.
    #[serde(rename = "warden.dev/skip-outbound-ports")]
    SkipOutboundPorts,
    /// Outbound networks left unintercepted.
    #[serde(rename = "warden.dev/skip-outbound-cidrs")]
    SkipOutboundCidrs,
    /// Plaintext inbound accepted (`permissive`).
    #[serde(rename = "warden.dev/inbound-mode")]
    InboundMode,
}

/// Which namespaces mesh-wide rules apply to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceSelector {
    /// Labels a namespace must all have (omitted or empty: every namespace).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

/// Mesh-wide settings and rules, for operators (cluster-scoped; namespace users' RBAC does
/// not reach it).
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "warden.dev",
    version = "v1alpha1",
    kind = "MeshPolicy",
    plural = "meshpolicies",
    shortname = "wmp",
    status = "PolicyStatus",
    doc = "Mesh-wide rules and settings for operators (DESIGN sections 4 and 9).",
    printcolumn(name = "Action", type_ = "string", json_path = ".spec.action"),
    printcolumn(name = "Default", type_ = "string", json_path = ".spec.default"),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.action) == (has(self.rules) && size(self.rules) > 0)").message("action and rules go together: mesh-wide rules need an action, and an action needs rules"))]
pub struct MeshPolicySpec {
    /// The namespaces this MeshPolicy applies to, its rules and every setting below alike
    /// (omitted: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<NamespaceSelector>,
    /// What the rules do; a mesh DENY cannot be overridden by a namespace ALLOW.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// Mesh-wide rules (with `action`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub rules: Vec<PolicyRule>,
    /// The mesh default; where several MeshPolicies set one, the strictest wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<MeshDefault>,
    /// Outbound: refuse destinations without a sidecar instead of passing them through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_only: Option<bool>,
    /// Outbound: what becomes of connections to addresses the controller does not know
    /// (outside the cluster): `passthrough` (the default) or `refuse`. Any MeshPolicy saying
    /// `refuse` wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_destinations: Option<UnknownDestinations>,
    /// Enforcement-weakening pod annotations pods may use (default: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_annotations: Vec<WeakeningAnnotation>,
}

/// A status condition (`Accepted`: `True`, or `False` with reason `Invalid`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Accepted`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase reason, e.g. `Invalid`.
    pub reason: String,
    /// What is wrong, naming the field.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// The generation the condition is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// What the controller says about a policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// The generation last processed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// How many workloads (pods) the policy selects now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workloads: Option<i64>,
}

/// Why a stored policy cannot be enforced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrdError {
    /// The object has no name or namespace.
    #[error("the object has no {0}")]
    Metadata(&'static str),
    /// What the core policy checks refuse (the message names the field).
    #[error("{0}")]
    Invalid(String),
}

/// The core policy model of a stored `AuthorizationPolicy`, after the checks the schema cannot
/// make (the exact SPIFFE ID grammar, for one).
pub fn to_core(object: &AuthorizationPolicy) -> Result<policy::AuthorizationPolicy, CrdError> {
    let name = object
        .metadata
        .name
        .clone()
        .ok_or(CrdError::Metadata("name"))?;
    let namespace = object
        .metadata
        .namespace
        .clone()
        .ok_or(CrdError::Metadata("namespace"))?;
    core_policy(
        name,
        namespace,
        &object.spec.selector,
        object.spec.action,
        &object.spec.rules,
    )
}

/// The core model of a policy's parts: the two CRDs share the rule grammar, which is core's
/// (same JSON), so it is converted through JSON and validated by core.
pub fn core_policy(
    name: String,
    namespace: String,
    selector: &Option<Selector>,
    action: Action,
    rules: &[PolicyRule],
) -> Result<policy::AuthorizationPolicy, CrdError> {
    let mut spec = serde_json::Map::new();
    if let Some(selector) = selector {
        spec.insert("selector".into(), serde_json::json!(selector));
    }
    spec.insert("action".into(), serde_json::json!(action));
    spec.insert("rules".into(), serde_json::json!(rules));
    let spec: policy::Spec = serde_json::from_value(serde_json::Value::Object(spec))
        .map_err(|e| CrdError::Invalid(format!("spec: {e}")))?;
    policy::AuthorizationPolicy::checked(name, namespace, false, spec)
        .map_err(|(field, message)| CrdError::Invalid(format!("{field}: {message}")))
}

/// A MeshPolicy's rules as a mesh-wide core policy (`MeshPolicy/<name>` in decisions), or
/// `None` for a MeshPolicy of settings only.
pub fn mesh_rules(object: &MeshPolicy) -> Result<Option<policy::AuthorizationPolicy>, CrdError> {
    let name = object
        .metadata
        .name
        .clone()
        .ok_or(CrdError::Metadata("name"))?;
    let Some(action) = object.spec.action else {
        return Ok(None);
    };
    let mut policy = core_policy(name, "mesh".to_string(), &None, action, &object.spec.rules)?;
    policy.metadata.mesh = true;
    Ok(Some(policy))
}

/// The CRDs, as the YAML committed in `deploy/kubernetes/base/crds.yaml`.
pub fn crds_yaml() -> String {
    let header = "# Generated from controller/src/crd.rs by `warden controller crds`: edit the Rust types, not this file.\n";
    let docs: Vec<String> = [AuthorizationPolicy::crd(), MeshPolicy::crd()]
        .iter()
        .map(|crd| serde_saphyr::to_string(crd).expect("a CRD serializes to YAML"))
        .collect();
    format!("{header}---\n{}", docs.join("---\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_crds_are_the_generated_ones() {
        let committed = include_str!("../../deploy/kubernetes/base/crds.yaml");
        let generated = crds_yaml();
        if committed != generated {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/crds.generated.yaml");
            let _ = std::fs::write(path, &generated);
            panic!(
                "deploy/kubernetes/base/crds.yaml differs from the Rust types: run \
                 `cargo run -- controller crds > deploy/kubernetes/base/crds.yaml` (generated \
                 copy written to {path})"
            );
        }
    }

    #[test]
    fn the_crd_yaml_reads_as_core_policy_yaml() {
        let text = r#"
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: backend-allow-frontend, namespace: shop}
spec:
  selector: {serviceAccounts: [backend]}
  action: ALLOW
  rules:
    - from: {identities: ["spiffe://cluster.local/ns/shop/sa/frontend"], namespaces: [shop]}
      to: {ports: [8080], methods: [GET, POST], paths: ["/api/*"]}
    - to: {ports: [5432], opaque: true}
"#;
        let object: AuthorizationPolicy = serde_saphyr::from_str(text).unwrap();
        let core = to_core(&object).unwrap();
        assert_eq!(core, policy::parse(text, "t.yaml").unwrap()[0]);
    }

    #[test]
    fn deeper_checks_than_the_schema_name_the_field() {
        let text = r#"
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec:
  action: ALLOW
  rules: [{from: {identities: ["spiffe://cluster.local/ns//sa/x"]}}]
"#;
        let object: AuthorizationPolicy = serde_saphyr::from_str(text).unwrap();
        let err = to_core(&object).unwrap_err().to_string();
        assert!(
            err.starts_with("spec.rules[0].from.identities[0]: "),
            "{err}"
        );
    }
}
