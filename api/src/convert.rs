//! Between warden-core's policy model and the contract's messages. What a proxy receives is
//! checked as a policy file would be: a message that does not make a valid policy is
//! refused whole (the proxy keeps the snapshot it has), never half applied.

use warden_core::policy::evaluate::DefaultPolicy;
use warden_core::policy::{Action, AuthorizationPolicy, From, Rule, Selector, Spec, To};

use crate::policy::v1;

/// Why a received policy is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// The action is unspecified or unknown.
    #[error("policy {0}: no action")]
    NoAction(String),
    /// A port over 65535.
    #[error("policy {policy}: port {port} is not a port")]
    Port {
        /// `namespace/name`.
        policy: String,
        /// The value received.
        port: u32,
    },
    /// What the core checks refuse.
    #[error("policy {policy}: {field}: {message}")]
    Invalid {
        /// `namespace/name`.
        policy: String,
        /// The field.
        field: String,
        /// The problem.
        message: String,
    },
}

fn strings(list: &Option<Vec<String>>) -> Option<v1::Strings> {
    list.as_ref().map(|values| v1::Strings {
        values: values.clone(),
    })
}

fn from_strings(list: &Option<v1::Strings>) -> Option<Vec<String>> {
    list.as_ref().map(|s| s.values.clone())
}

/// The message for `policy`.
pub fn to_proto(policy: &AuthorizationPolicy) -> v1::Policy {
    let action = match policy.spec.action {
        Action::Allow => v1::Action::Allow,
        Action::Deny => v1::Action::Deny,
        Action::Audit => v1::Action::Audit,
    };
    v1::Policy {
        namespace: policy.metadata.namespace.clone(),
        name: policy.metadata.name.clone(),
        mesh: policy.metadata.mesh,
        selector: policy.spec.selector.as_ref().map(|s| v1::Strings {
            values: s.service_accounts.clone(),
        }),
        action: action as i32,
        rules: policy
            .spec
            .rules
            .iter()
            .map(|r| v1::Rule {
                identities: strings(&r.from.identities),
                namespaces: strings(&r.from.namespaces),
                unauthenticated: r.from.unauthenticated,
                ports: r.to.ports.as_ref().map(|p| v1::Ports {
                    values: p.iter().map(|&p| u32::from(p)).collect(),
                }),
                methods: strings(&r.to.methods),
                paths: strings(&r.to.paths),
                opaque: r.to.opaque,
            })
            .collect(),
    }
}

/// The policy in `message`, checked as a policy file is.
pub fn from_proto(message: &v1::Policy) -> Result<AuthorizationPolicy, ConvertError> {
    let id = format!("{}/{}", message.namespace, message.name);
    let action = match v1::Action::try_from(message.action) {
        Ok(v1::Action::Allow) => Action::Allow,
        Ok(v1::Action::Deny) => Action::Deny,
        Ok(v1::Action::Audit) => Action::Audit,
        Ok(v1::Action::Unspecified) | Err(_) => return Err(ConvertError::NoAction(id)),
    };
    let mut rules = Vec::with_capacity(message.rules.len());
    for r in &message.rules {
        let ports = match &r.ports {
            None => None,
            Some(p) => Some(
                p.values
                    .iter()
                    .map(|&port| {
                        u16::try_from(port).map_err(|_| ConvertError::Port {
                            policy: id.clone(),
                            port,
                        })
                    })
                    .collect::<Result<Vec<u16>, _>>()?,
            ),
        };
        rules.push(Rule {
            from: From {
                identities: from_strings(&r.identities),
                namespaces: from_strings(&r.namespaces),
                unauthenticated: r.unauthenticated,
            },
            to: To {
                ports,
                methods: from_strings(&r.methods),
                paths: from_strings(&r.paths),
                opaque: r.opaque,
            },
        });
    }
    let spec = Spec {
        selector: message.selector.as_ref().map(|s| Selector {
            service_accounts: s.values.clone(),
        }),
        action,
        rules,
    };
    AuthorizationPolicy::checked(
        message.name.clone(),
        message.namespace.clone(),
        message.mesh,
        spec,
    )
    .map_err(|(field, message)| ConvertError::Invalid {
        policy: id,
        field,
        message,
    })
}

/// One workload's snapshot as warden-core models it: what a proxy enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySnapshot {
    /// Changes with every snapshot.
    pub version: String,
    /// The policies to enforce, in order.
    pub policies: Vec<AuthorizationPolicy>,
    /// The mesh default.
    pub default: DefaultPolicy,
    /// Refuse unmeshed destinations outbound.
    pub mesh_only: bool,
    /// Refuse destinations the controller does not know, outbound.
    pub refuse_unknown: bool,
    /// Pod annotations allowed to weaken enforcement.
    pub allowed_annotations: Vec<String>,
}

/// The message for `snapshot`.
pub fn snapshot_to_proto(snapshot: &PolicySnapshot) -> v1::Snapshot {
    let default = match snapshot.default {
        DefaultPolicy::Deny => v1::MeshDefault::Deny,
        DefaultPolicy::AllAuthenticated => v1::MeshDefault::AllAuthenticated,
        DefaultPolicy::Audit => v1::MeshDefault::Audit,
    };
    v1::Snapshot {
        version: snapshot.version.clone(),
        policies: snapshot.policies.iter().map(to_proto).collect(),
        default: default as i32,
        mesh_only: snapshot.mesh_only,
        refuse_unknown_destinations: snapshot.refuse_unknown,
        allowed_annotations: snapshot.allowed_annotations.clone(),
    }
}

/// The snapshot in `message`; any invalid policy refuses it whole. An unspecified or
/// unknown default reads as `deny` (fail closed).
pub fn snapshot_from_proto(message: &v1::Snapshot) -> Result<PolicySnapshot, ConvertError> {
    let default = match v1::MeshDefault::try_from(message.default) {
        Ok(v1::MeshDefault::AllAuthenticated) => DefaultPolicy::AllAuthenticated,
        Ok(v1::MeshDefault::Audit) => DefaultPolicy::Audit,
        Ok(v1::MeshDefault::Deny | v1::MeshDefault::Unspecified) | Err(_) => DefaultPolicy::Deny,
    };
    Ok(PolicySnapshot {
        version: message.version.clone(),
        policies: message
            .policies
            .iter()
            .map(from_proto)
            .collect::<Result<_, _>>()?,
        default,
        mesh_only: message.mesh_only,
        refuse_unknown: message.refuse_unknown_destinations,
        allowed_annotations: message.allowed_annotations.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    const POLICIES: &str = r#"
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: backend-allow-frontend, namespace: shop}
spec:
  selector: {serviceAccounts: [backend]}
  action: ALLOW
  rules:
    - from: {identities: ["spiffe://cluster.local/ns/shop/sa/frontend"], namespaces: [shop]}
      to: {ports: [8080], methods: [GET, POST], paths: ["/api/*"]}
    - from: {unauthenticated: true}
      to: {ports: [5432], opaque: true}
    - {}
---
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-evil, namespace: shop}
spec: {action: DENY, rules: [{from: {identities: ["spiffe://cluster.local/ns/evil/*"]}}]}
"#;

    #[test]
    fn policies_survive_the_wire_unchanged() {
        let mut policies = warden_core::policy::parse(POLICIES, "t.yaml").unwrap();
        policies[1].metadata.mesh = true;
        for policy in policies {
            let bytes = to_proto(&policy).encode_to_vec();
            let decoded = v1::Policy::decode(bytes.as_slice()).unwrap();
            assert_eq!(from_proto(&decoded).unwrap(), policy);
        }
    }

    #[test]
    fn snapshots_survive_the_wire_and_an_unknown_default_fails_closed() {
        let snapshot = PolicySnapshot {
            version: "7".into(),
            policies: warden_core::policy::parse(POLICIES, "t.yaml").unwrap(),
            default: DefaultPolicy::Audit,
            mesh_only: true,
            refuse_unknown: true,
            allowed_annotations: vec!["warden.dev/inbound-mode".into()],
        };
        let bytes = snapshot_to_proto(&snapshot).encode_to_vec();
        let decoded = v1::Snapshot::decode(bytes.as_slice()).unwrap();
        assert_eq!(snapshot_from_proto(&decoded).unwrap(), snapshot);

        for unknown in [0, 42] {
            let mut message = decoded.clone();
            message.default = unknown;
            assert_eq!(
                snapshot_from_proto(&message).unwrap().default,
                DefaultPolicy::Deny
            );
        }
        let mut bad = decoded;
        bad.policies[0].action = 0;
        assert!(snapshot_from_proto(&bad).is_err(), "refused whole");
    }

    #[test]
    fn a_message_that_is_no_valid_policy_is_refused_whole() {
        let good = to_proto(&warden_core::policy::parse(POLICIES, "t.yaml").unwrap()[0]);
        let mut no_action = good.clone();
        no_action.action = 0;
        let mut unknown_action = good.clone();
        unknown_action.action = 9;
        let mut big_port = good.clone();
        big_port.rules[0].ports = Some(v1::Ports {
            values: vec![70000],
        });
        let mut bad_id = good.clone();
        bad_id.rules[0].identities = Some(v1::Strings {
            values: vec!["spiffe://Bad/x".into()],
        });
        let mut bad_ns = good;
        bad_ns.namespace = "Not_A_Namespace".into();
        let cases = [
            (no_action, "policy shop/backend-allow-frontend: no action"),
            (unknown_action, "no action"),
            (big_port, "port 70000 is not a port"),
            (bad_id, "spec.rules[0].from.identities[0]: "),
            (bad_ns, "metadata.namespace: "),
        ];
        for (message, want) in cases {
            let err = from_proto(&message).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }
}
