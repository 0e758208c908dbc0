//! Which weakening annotations MeshPolicies allow in each namespace (`allowedAnnotations` of
//! every MeshPolicy whose `namespaceSelector` matches the namespace's labels; the union, as
//! the controller computes it for the proxies). A plain data structure fed by `warden
//! injector`'s watches of MeshPolicies and Namespaces and read by the webhook; no I/O here.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::SecurityAnnotation;

/// What one MeshPolicy grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshGrant {
    /// The labels a namespace must all have (empty: every namespace).
    pub match_labels: BTreeMap<String, String>,
    /// The annotations its pods may use.
    pub allowed: BTreeSet<SecurityAnnotation>,
}

/// Every MeshPolicy's grant and every namespace's labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceGrants {
    mesh: BTreeMap<String, MeshGrant>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

/// One change of a watched kind, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update<T> {
    /// Added or changed.
    Set(String, T),
    /// Deleted.
    Remove(String),
    /// Everything, after a re-list: what is not here is gone.
    Replace(Vec<(String, T)>),
}

impl<T> Update<T> {
    fn apply(self, map: &mut BTreeMap<String, T>) {
        match self {
            Update::Set(name, value) => {
                map.insert(name, value);
            }
            Update::Remove(name) => {
                map.remove(&name);
            }
            Update::Replace(all) => *map = all.into_iter().collect(),
        }
    }
}

impl NamespaceGrants {
    /// Applies a change of the MeshPolicies.
    pub fn update_mesh_policies(&mut self, update: Update<MeshGrant>) {
        update.apply(&mut self.mesh);
    }

    /// Applies a change of the namespaces' labels.
    pub fn update_namespaces(&mut self, update: Update<BTreeMap<String, String>>) {
        update.apply(&mut self.namespaces);
    }

    /// Adds or replaces MeshPolicy `name`'s grant.
    pub fn set_mesh_policy(&mut self, name: &str, grant: MeshGrant) {
        self.update_mesh_policies(Update::Set(name.to_string(), grant));
    }

    /// Adds or replaces namespace `name`'s labels.
    pub fn set_namespace(&mut self, name: &str, labels: BTreeMap<String, String>) {
        self.update_namespaces(Update::Set(name.to_string(), labels));
    }

    /// The MeshPolicy that lets pods of `namespace` use `annotation`, if one does. A
    /// namespace not seen yet counts as one without labels: only MeshPolicies without a
    /// selector apply to it (fail closed).
    pub fn granted_by(&self, namespace: &str, annotation: SecurityAnnotation) -> Option<&str> {
        let labels = self.namespaces.get(namespace);
        self.mesh
            .iter()
            .find(|(_, grant)| {
                grant.allowed.contains(&annotation)
                    && grant
                        .match_labels
                        .iter()
                        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            })
            .map(|(name, _)| name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SecurityAnnotation::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn grant(selector: &[(&str, &str)], allowed: &[SecurityAnnotation]) -> MeshGrant {
        MeshGrant {
            match_labels: labels(selector),
            allowed: allowed.iter().copied().collect(),
        }
    }

    #[test]
    fn a_grant_applies_where_its_selector_matches() {
        let mut grants = NamespaceGrants::default();
        grants.set_mesh_policy("lab", grant(&[("env", "lab")], &[PermissiveInbound]));
        grants.set_mesh_policy("probes", grant(&[], &[SkipInboundPorts]));
        grants.set_namespace("lab-a", labels(&[("env", "lab"), ("team", "a")]));
        grants.set_namespace("prod", labels(&[("env", "prod")]));
        let rows = [
            ("lab-a", PermissiveInbound, Some("lab")),
            ("prod", PermissiveInbound, None),
            ("unseen", PermissiveInbound, None), // no labels known: fail closed
            ("lab-a", SkipInboundPorts, Some("probes")),
            ("prod", SkipInboundPorts, Some("probes")),
            ("unseen", SkipInboundPorts, Some("probes")),
            ("lab-a", SkipOutboundCidrs, None),
        ];
        for (namespace, annotation, want) in rows {
            assert_eq!(
                grants.granted_by(namespace, annotation),
                want,
                "{namespace} {annotation:?}"
            );
        }
    }

    #[test]
    fn changes_and_relists_take_effect() {
        let mut grants = NamespaceGrants::default();
        grants.set_mesh_policy("lab", grant(&[("env", "lab")], &[PermissiveInbound]));
        grants.set_namespace("a", labels(&[("env", "lab")]));
        assert_eq!(grants.granted_by("a", PermissiveInbound), Some("lab"));
        // The namespace loses its label.
        grants.set_namespace("a", labels(&[]));
        assert_eq!(grants.granted_by("a", PermissiveInbound), None);
        grants.set_namespace("a", labels(&[("env", "lab")]));
        grants.update_mesh_policies(Update::Remove("lab".into()));
        assert_eq!(grants.granted_by("a", PermissiveInbound), None);
        grants.update_mesh_policies(Update::Replace(vec![(
            "new".into(),
            grant(&[], &[PermissiveInbound]),
        )]));
        assert_eq!(grants.granted_by("a", PermissiveInbound), Some("new"));
        grants.update_mesh_policies(Update::Replace(vec![]));
        assert_eq!(grants.granted_by("a", PermissiveInbound), None);
        grants.set_mesh_policy("lab", grant(&[("env", "lab")], &[PermissiveInbound]));
        grants.update_namespaces(Update::Remove("a".into()));
        assert_eq!(grants.granted_by("a", PermissiveInbound), None);
        grants.update_namespaces(Update::Replace(vec![(
            "a".into(),
            labels(&[("env", "lab")]),
        )]));
        assert_eq!(grants.granted_by("a", PermissiveInbound), Some("lab"));
    }
}
