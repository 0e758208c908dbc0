//! `warden policy netpol`: Kubernetes NetworkPolicies (L3/L4) that mirror the ALLOW
//! policies, as defense in depth the CNI enforces even if a sidecar is bypassed.
//!
//! Each NetworkPolicy allows a superset of what its AuthorizationPolicy allows, never less
//! (methods and paths, and identities the CNI cannot see, widen to what it can): the
//! sidecar stays the precise check. Pods are selected by the label the injector sets to
//! their ServiceAccount ([`SERVICE_ACCOUNT_LABEL`]); namespaces by the
//! `kubernetes.io/metadata.name` label the API server sets. The proxy's admin port stays
//! open to every source (kubelet probes, Prometheus scrapes). A MeshPolicy's ALLOW rules join
//! every object generated (they apply to every workload). DENY and AUDIT policies are not
//! mirrored: the first only narrow, AUDIT never denies.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::{Action, AuthorizationPolicy, Pattern, Rule};
use crate::contract::{is_label_value, ADMIN_PORT, SERVICE_ACCOUNT_LABEL};
use crate::SpiffeId;

/// The label the API server puts on every namespace, its name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The mesh's trust domain: identities of other domains come from outside the cluster.
    pub trust_domain: String,
    /// The proxy's admin port, kept open.
    pub admin_port: u16,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".into(),
            admin_port: ADMIN_PORT,
        }
    }
}

/// One generated NetworkPolicy and what a reader should know about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// The NetworkPolicy object.
    pub object: Value,
    /// Where it allows more than its AuthorizationPolicy.
    pub notes: Vec<String>,
}

/// The NetworkPolicies for `policies`, and a line per policy not mirrored.
pub fn generate(
    policies: &[AuthorizationPolicy],
    options: &Options,
) -> (Vec<Generated>, Vec<String>) {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    // A MeshPolicy's ALLOW rules apply to every workload: they join every object generated
    // (its namespace selector widens to all: never narrower).
    let mesh_allow: Vec<&AuthorizationPolicy> = policies
        .iter()
        .filter(|p| p.metadata.mesh && p.spec.action == Action::Allow)
        .collect();
    for policy in policies {
        let id = policy.id();
        match policy.spec.action {
            Action::Deny => {
                skipped.push(format!(
                    "{id}: DENY policies only narrow what is allowed; the sidecar enforces them"
                ));
                continue;
            }
            Action::Audit => {
                skipped.push(format!(
                    "{id}: AUDIT policies never deny; apply them as ALLOW to mirror them"
                ));
                continue;
            }
            Action::Allow if policy.metadata.mesh => {
                skipped.push(format!(
                    "{id}: its rules are added to every NetworkPolicy generated (a mesh-wide allow-list has no object of its own)"
                ));
                continue;
            }
            Action::Allow => {}
        }
        // Pods of a ServiceAccount whose name is too long for a label carry none: the
        // policy is mirrored for the others.
        let mut policy = policy.clone();
        if let Some(selector) = &mut policy.spec.selector {
            let (valid, long): (Vec<String>, Vec<String>) = selector
                .service_accounts
                .drain(..)
                .partition(|sa| is_label_value(sa));
            if !long.is_empty() {
                skipped.push(format!(
                    "{id}: ServiceAccount(s) {long:?} too long for a label: their pods cannot be selected"
                ));
            }
            if valid.is_empty() {
                continue;
            }
            selector.service_accounts = valid;
        }
        out.push(mirror(&policy, &mesh_allow, options));
    }
    (out, skipped)
}

/// A peer: the pods of one ServiceAccount, or of one namespace (also for a ServiceAccount
/// whose name is too long for the label, so no pod carries it).
fn peer(namespace: &str, service_account: Option<&str>) -> Value {
    let mut peer = json!({"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: namespace}}});
    if let Some(sa) = service_account.filter(|sa| is_label_value(sa)) {
        peer["podSelector"] = json!({"matchLabels": {SERVICE_ACCOUNT_LABEL: sa}});
    }
    peer
}

/// The peers that can make a request matching `pattern` (`None`: any source).
fn identity_peers(pattern: &str, trust_domain: &str) -> Option<Value> {
    let within = format!("spiffe://{trust_domain}/ns/");
    match Pattern::parse(pattern).ok()? {
        Pattern::Exact(exact) => {
            let id = SpiffeId::parse(exact).ok()?;
            if id.trust_domain_name() != trust_domain {
                return None;
            }
            let (ns, sa) = id.service_account()?;
            Some(peer(ns, Some(sa)))
        }
        // `spiffe://td/ns/<ns>/...*`: the namespace is fixed when the prefix spells it out.
        Pattern::Prefix(prefix) => {
            let rest = prefix.strip_prefix(&within)?;
            let (ns, _) = rest.split_once('/')?;
            Some(peer(ns, None))
        }
        Pattern::Suffix(_) | Pattern::Any => None,
    }
}

/// The `from` of one rule (`None`: any source), and whether it had to widen.
fn sources(rule: &Rule, trust_domain: &str) -> (Option<Vec<Value>>, bool) {
    let from = &rule.from;
    if from.unauthenticated {
        return (None, false);
    }
    if let Some(identities) = &from.identities {
        let peers: Option<Vec<Value>> = identities
            .iter()
            .map(|p| identity_peers(p, trust_domain))
            .collect();
        return match peers {
            Some(peers) => (Some(peers), false),
            None => (None, true),
        };
    }
    if let Some(namespaces) = &from.namespaces {
        if namespaces.iter().any(|n| n == "*") {
            return (None, true);
        }
        return (
            Some(namespaces.iter().map(|n| peer(n, None)).collect()),
            false,
        );
    }
    // Any authenticated caller: the CNI cannot tell meshed callers from others.
    (None, true)
}

fn tcp_ports(ports: &[u16]) -> Value {
    Value::Array(
        ports
            .iter()
            .map(|p| json!({"port": p, "protocol": "TCP"}))
            .collect(),
    )
}

fn mirror(
    policy: &AuthorizationPolicy,
    mesh_allow: &[&AuthorizationPolicy],
    options: &Options,
) -> Generated {
    let mut notes = Vec::new();
    let mut ingress: Vec<Value> = vec![json!({"ports": tcp_ports(&[options.admin_port])})];
    let mut seen = BTreeSet::new();
    let own = policy
        .spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("rule {i}"), r));
    let mesh = mesh_allow.iter().flat_map(|m| {
        m.spec
            .rules
            .iter()
            .enumerate()
            .map(move |(i, r)| (format!("{} rule {i}", m.id()), r))
    });
    for (i, rule) in own.chain(mesh) {
        let (from, widened) = sources(rule, &options.trust_domain);
        if widened {
            notes.push(format!(
                "{i}: its callers cannot be told apart at L3, any source may connect"
            ));
        }
        if rule.to.is_http() {
            notes.push(format!(
                "{i}: methods and paths are checked by the sidecar only"
            ));
        }
        let mut entry = json!({});
        if let Some(from) = from {
            entry["from"] = Value::Array(from);
        }
        if let Some(ports) = &rule.to.ports {
            entry["ports"] = tcp_ports(ports);
        }
        if seen.insert(entry.to_string()) {
            ingress.push(entry);
        }
    }
    let pods = match &policy.spec.selector {
        Some(selector) => {
            json!({"matchExpressions": [{"key": SERVICE_ACCOUNT_LABEL, "operator": "In", "values": selector.service_accounts}]})
        }
        // Every meshed pod of the namespace (an unmeshed one has no such label).
        None => json!({"matchExpressions": [{"key": SERVICE_ACCOUNT_LABEL, "operator": "Exists"}]}),
    };
    let object = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": netpol_name(&policy.metadata.name),
            "namespace": policy.metadata.namespace,
            "labels": {"app.kubernetes.io/managed-by": "warden"},
            "annotations": {"warden.dev/mirrors": policy.id()},
        },
        "spec": {
            "podSelector": pods,
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    });
    Generated { object, notes }
}

/// `warden-<name>`, within the 253 characters of an object name.
fn netpol_name(policy: &str) -> String {
    let mut name = format!("warden-{policy}");
    name.truncate(253);
    name.trim_end_matches(['-', '.']).to_string()
}

/// The NetworkPolicies as YAML documents, each headed by its notes.
pub fn to_yaml(generated: &[Generated]) -> Result<String, String> {
    let mut out = String::new();
    for g in generated {
        out.push_str("---\n");
        for note in &g.notes {
            out.push_str(&format!("# {note}\n"));
        }
        out.push_str(&serde_saphyr::to_string(&g.object).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse;

    fn policy(spec: &str) -> AuthorizationPolicy {
        let text = format!("apiVersion: warden.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: backend, namespace: shop}}\nspec: {spec}\n");
        parse(&text, "p.yaml").unwrap().remove(0)
    }

    fn ingress_of(spec: &str) -> (Vec<Value>, Vec<String>) {
        let (mut out, skipped) = generate(&[policy(spec)], &Options::default());
        assert!(skipped.is_empty(), "{skipped:?}");
        let g = out.remove(0);
        (
            g.object["spec"]["ingress"].as_array().unwrap()[1..].to_vec(),
            g.notes,
        )
    }

    #[test]
    fn rules_become_peers_and_ports_no_narrower_than_the_policy() {
        let sa = |ns: &str, sa: &str| peer(ns, Some(sa));
        let ns = |ns: &str| peer(ns, None);
        let tcp = |p: u16| json!([{"port": p, "protocol": "TCP"}]);
        let cases: Vec<(&str, Value, bool)> = vec![
            (
                r#"{from: {identities: ["spiffe://cluster.local/ns/web/sa/frontend"]}, to: {ports: [8080]}}"#,
                json!({"from": [sa("web", "frontend")], "ports": tcp(8080)}),
                false,
            ),
            (
                r#"{from: {identities: ["spiffe://cluster.local/ns/batch/*"]}, to: {ports: [5432]}}"#,
                json!({"from": [ns("batch")], "ports": tcp(5432)}),
                false,
            ),
            (
                r#"{from: {identities: ["spiffe://cluster.local/ns/a/sa/x", "spiffe://cluster.local/ns/b/sa/job-*"]}}"#,
                json!({"from": [sa("a", "x"), ns("b")]}),
                false,
            ),
            (
                r#"{from: {namespaces: [shop, web]}, to: {ports: [80, 443]}}"#,
                json!({"from": [ns("shop"), ns("web")], "ports": [{"port": 80, "protocol": "TCP"}, {"port": 443, "protocol": "TCP"}]}),
                false,
            ),
            // What the CNI cannot see widens to any source, never narrows.
            (
                r#"{from: {identities: ["*/sa/admin"]}, to: {ports: [9000]}}"#,
                json!({"ports": tcp(9000)}),
                true,
            ),
            (
                r#"{from: {identities: ["spiffe://other.org/ns/a/sa/b"]}, to: {ports: [9000]}}"#,
                json!({"ports": tcp(9000)}),
                true,
            ),
            (
                r#"{from: {identities: ["spiffe://cluster.local/ns/a/sa/b", "spiffe://cluster.local/*"]}}"#,
                json!({}),
                true,
            ),
            (
                r#"{from: {namespaces: ["*"]}, to: {ports: [1]}}"#,
                json!({"ports": tcp(1)}),
                true,
            ),
            (
                r#"{to: {ports: [8080]}}"#,
                json!({"ports": tcp(8080)}),
                true,
            ),
            (
                r#"{from: {unauthenticated: true}, to: {ports: [8080]}}"#,
                json!({"ports": tcp(8080)}),
                false,
            ),
        ];
        for (rule, want, widened) in cases {
            let (ingress, notes) = ingress_of(&format!("{{action: ALLOW, rules: [{rule}]}}"));
            assert_eq!(ingress, std::slice::from_ref(&want), "{rule}");
            assert_eq!(
                notes.iter().any(|n| n.contains("any source")),
                widened,
                "{rule}: {notes:?}"
            );
        }
    }

    #[test]
    fn mesh_allow_rules_join_every_object_and_long_names_are_left_out_alone() {
        let mut mesh = policy(
            r#"{action: ALLOW, rules: [{from: {namespaces: [monitoring]}, to: {ports: [9090]}}]}"#,
        );
        mesh.metadata.mesh = true;
        mesh.metadata.name = "scrapes".into();
        let long = "a".repeat(64);
        let own = policy(&format!(
            r#"{{selector: {{serviceAccounts: [backend, {long}]}}, action: ALLOW, rules: [{{to: {{ports: [8080]}}}}]}}"#
        ));
        let (out, skipped) = generate(&[own, mesh], &Options::default());
        assert_eq!(out.len(), 1);
        let object = &out[0].object;
        assert_eq!(
            object["spec"]["podSelector"]["matchExpressions"][0]["values"],
            json!(["backend"])
        );
        let ingress = object["spec"]["ingress"].as_array().unwrap();
        assert!(ingress.contains(&json!({"from": [peer("monitoring", None)], "ports": [{"port": 9090, "protocol": "TCP"}]})), "{ingress:?}");
        assert!(
            skipped.iter().any(|s| s.contains("too long for a label")),
            "{skipped:?}"
        );
        assert!(
            skipped
                .iter()
                .any(|s| s.starts_with("MeshPolicy/scrapes: its rules are added")),
            "{skipped:?}"
        );
    }

    #[test]
    fn workloads_admin_port_and_what_is_not_mirrored() {
        let allow = policy(
            r#"{selector: {serviceAccounts: [backend, api]}, action: ALLOW, rules: [{to: {ports: [8080], paths: ["/api/*"]}}, {to: {ports: [8080], paths: ["/v2/*"]}}]}"#,
        );
        let mut deny = policy("{action: DENY, rules: [{to: {ports: [22]}}]}");
        deny.metadata.name = "no-ssh".into();
        let mut audit = policy("{action: AUDIT}");
        audit.metadata.name = "trial".into();
        let mut mesh = policy("{action: ALLOW}");
        mesh.metadata.mesh = true;
        let nobody = policy("{action: ALLOW}");
        let (out, skipped) = generate(&[allow, deny, audit, mesh, nobody], &Options::default());
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(skipped[0].starts_with("shop/no-ssh: DENY"));
        assert!(skipped[1].starts_with("shop/trial: AUDIT"));
        assert!(skipped[2]
            .starts_with("MeshPolicy/backend: its rules are added to every NetworkPolicy"));
        let first = &out[0].object;
        assert_eq!(first["metadata"]["name"], "warden-backend");
        assert_eq!(
            first["metadata"]["annotations"]["warden.dev/mirrors"],
            "shop/backend"
        );
        assert_eq!(
            first["spec"]["podSelector"],
            json!({"matchExpressions": [{"key": "warden.dev/service-account", "operator": "In", "values": ["backend", "api"]}]})
        );
        // The admin port first; two rules differing only by path are one entry.
        assert_eq!(
            first["spec"]["ingress"],
            json!([{"ports": [{"port": 7191, "protocol": "TCP"}]}, {"ports": [{"port": 8080, "protocol": "TCP"}]}])
        );
        assert!(out[0]
            .notes
            .iter()
            .any(|n| n.contains("methods and paths are checked by the sidecar only")));
        // An ALLOW policy without rules allows nothing: only the admin port stays open, on
        // every meshed pod of the namespace.
        let last = &out[1].object;
        assert_eq!(
            last["spec"]["ingress"],
            json!([{"ports": [{"port": 7191, "protocol": "TCP"}]}])
        );
        assert_eq!(
            last["spec"]["podSelector"],
            json!({"matchExpressions": [{"key": "warden.dev/service-account", "operator": "Exists"}]})
        );
        let yaml = to_yaml(&out).unwrap();
        assert!(
            yaml.starts_with("---\n# rule 0: its callers cannot be told apart"),
            "{yaml}"
        );
        assert_eq!(yaml.matches("kind: NetworkPolicy").count(), 2);
    }
}
