//! Warnings for `warden policy check`: rules that can never match, and rules an earlier rule
//! of the same policy already covers (so they never decide anything).

use super::{AuthorizationPolicy, Pattern, Rule};

/// A warning about one rule (or one policy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// `namespace/name` of the policy.
    pub policy: String,
    /// The rule, if the warning is about one.
    pub rule: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.rule {
            Some(r) => write!(f, "{} rule {r}: {}", self.policy, self.message),
            None => write!(f, "{}: {}", self.policy, self.message),
        }
    }
}

/// Every warning for a set of policies.
pub fn lint(policies: &[AuthorizationPolicy]) -> Vec<Warning> {
    let mut warnings = Vec::new();
    for policy in policies {
        let warn = |rule, message: String| Warning {
            policy: policy.id(),
            rule,
            message,
        };
        if policy.spec.rules.is_empty() {
            warnings.push(warn(
                None,
                format!(
                    "no rules: this {} policy matches nothing",
                    policy.spec.action
                ),
            ));
        }
        for (i, rule) in policy.spec.rules.iter().enumerate() {
            for pattern in rule.to.paths.iter().flatten() {
                if let Some(why) = super::path::unmatchable(pattern) {
                    warnings.push(warn(
                        Some(i),
                        format!("path {pattern:?} can never match a request: {why}"),
                    ));
                }
            }
            if let Some(why) = never_matches(rule) {
                warnings.push(warn(Some(i), format!("can never match: {why}")));
                continue;
            }
            if policy.spec.action != super::Action::Audit
                && rule.to.is_http()
                && rule.to.ports.is_none()
            {
                warnings.push(warn(
                    Some(i),
                    "HTTP fields without ports make every port of the selected workloads \
                     HTTP-only (opaque TCP to them is refused); name the ports to keep others \
                     open to TCP"
                        .into(),
                ));
            }
            if let Some(j) = (0..i).find(|&j| covers(&policy.spec.rules[j], rule)) {
                warnings.push(warn(
                    Some(i),
                    format!("is shadowed by rule {j}, which matches everything it does"),
                ));
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    for policy in policies {
        if !seen.insert(policy.id()) {
            warnings.push(Warning {
                policy: policy.id(),
                rule: None,
                message: "defined more than once; every definition applies".into(),
            });
        }
    }
    warnings
}

/// Why a valid rule can never match (an empty list is already invalid: see `validate`).
fn never_matches(rule: &Rule) -> Option<String> {
    let from = &rule.from;
    if let (Some(ids), Some(namespaces)) = (&from.identities, &from.namespaces) {
        // Exact identities whose namespace is none of the listed ones.
        let exact: Vec<_> = ids
            .iter()
            .filter_map(|i| match Pattern::parse(i) {
                Ok(Pattern::Exact(e)) => crate::SpiffeId::parse(e).ok(),
                _ => None,
            })
            .collect();
        if exact.len() == ids.len()
            && !namespaces.iter().any(|n| n == "*")
            && exact.iter().all(|id| {
                id.namespace()
                    .is_none_or(|ns| !namespaces.iter().any(|n| n == ns))
            })
        {
            return Some("none of its identities is in its namespaces".into());
        }
    }
    None
}

/// Whether `a` matches every request `b` matches (conservatively: only when provable from
/// absent conditions, `*`, or listed values that include `b`'s).
fn covers(a: &Rule, b: &Rule) -> bool {
    fn list<T: PartialEq>(
        a: &Option<Vec<T>>,
        b: &Option<Vec<T>>,
        any: impl Fn(&T) -> bool,
    ) -> bool {
        match (a, b) {
            (None, _) => true,
            (Some(a), _) if a.iter().any(&any) => true,
            (Some(a), Some(b)) => b.iter().all(|x| a.contains(x)),
            (Some(_), None) => false,
        }
    }
    fn patterns(a: &Option<Vec<String>>, b: &Option<Vec<String>>) -> bool {
        match (a, b) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => b.iter().all(|x| a.iter().any(|y| pattern_covers(y, x))),
        }
    }
    let star = |s: &String| s == "*";
    (a.from.unauthenticated || !b.from.unauthenticated)
        && (!a.to.opaque || b.to.opaque)
        && patterns(&a.from.identities, &b.from.identities)
        && list(&a.from.namespaces, &b.from.namespaces, star)
        && list(&a.to.ports, &b.to.ports, |_: &u16| false)
        && list(&a.to.methods, &b.to.methods, |_: &String| false)
        && patterns(&a.to.paths, &b.to.paths)
}

/// Whether pattern `a` matches every value pattern `b` matches.
fn pattern_covers(a: &str, b: &str) -> bool {
    match (Pattern::parse(a), Pattern::parse(b)) {
        (Ok(Pattern::Any), _) => true,
        (Ok(Pattern::Prefix(p)), Ok(Pattern::Exact(v) | Pattern::Prefix(v))) => v.starts_with(p),
        (Ok(Pattern::Suffix(s)), Ok(Pattern::Exact(v) | Pattern::Suffix(v))) => v.ends_with(s),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse;

    #[test]
    fn warnings_table() {
        let text = r#"
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec:
  action: ALLOW
  rules:
    - from: {namespaces: [shop]}
      to: {ports: [8080]}
    - from: {namespaces: [shop]}
      to: {ports: [8080], methods: [GET]}
    - from: {identities: ["spiffe://cluster.local/ns/ops/sa/x"], namespaces: [shop]}
    - to: {ports: [9090]}
    - from: {identities: ["spiffe://cluster.local/ns/a/sa/x"]}
    - from: {identities: ["spiffe://cluster.local/ns/a/*"]}
      to: {paths: ["/api/*"]}
    - from: {identities: ["spiffe://cluster.local/ns/a/sa/y"]}
      to: {paths: ["/api/v1", "/api/v2/*"]}
---
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: empty, namespace: shop}
spec: {action: DENY, selector: {serviceAccounts: [nobody]}}
---
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: empty, namespace: shop}
spec: {action: DENY, rules: [{}]}
"#;
        let warnings: Vec<String> = lint(&parse(text, "t").unwrap())
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            warnings,
            [
                "shop/p rule 1: is shadowed by rule 0, which matches everything it does",
                "shop/p rule 2: can never match: none of its identities is in its namespaces",
                "shop/p rule 5: HTTP fields without ports make every port of the selected workloads HTTP-only (opaque TCP to them is refused); name the ports to keep others open to TCP",
                "shop/p rule 6: HTTP fields without ports make every port of the selected workloads HTTP-only (opaque TCP to them is refused); name the ports to keep others open to TCP",
                "shop/p rule 6: is shadowed by rule 5, which matches everything it does",
                "shop/empty: no rules: this DENY policy matches nothing",
                "shop/empty: defined more than once; every definition applies",
            ]
        );
    }
}
