//! The control plane's in-memory index (Linkerd's policy-controller model): a plain data
//! structure fed by the watches (namespaces, pods, AuthorizationPolicies, MeshPolicies) that
//! answers, for one workload, the policies a proxy must enforce, and, for one policy, the
//! status the controller writes. No I/O here; the watch and serving code stays thin.
//!
//! A policy the schema let through but the core checks refuse is Invalid: its status says why
//! and its last good version (if any) stays in force, so a bad edit never takes effect.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use warden_core::policy::{self, AuthorizationPolicy as CorePolicy};

use crate::crd::{
    self, AuthorizationPolicy, MeshDefault, MeshPolicy, NamespaceSelector, WeakeningAnnotation,
};

/// What the index keeps of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// Its ServiceAccount.
    pub service_account: String,
    /// Its IPs (one per address family), once it has them.
    pub ips: Vec<IpAddr>,
}

/// One stored policy: the verdict on its current version and the last good version.
#[derive(Debug, Clone)]
struct Entry {
    generation: Option<i64>,
    /// `Err(why)` when the current version is Invalid.
    current: Result<(), String>,
    /// What is enforced: the current version when valid, else the last valid one.
    in_force: Option<CorePolicy>,
}

/// A mesh policy's rules as a core policy (if it has rules), and its settings.
#[derive(Debug, Clone)]
struct MeshEntry {
    entry: Entry,
    /// The last valid version's settings: an invalid edit keeps them, as it keeps the
    /// rules; none for a policy never valid, which then changes nothing.
    settings: Option<MeshSettings>,
}

/// What a MeshPolicy sets for the namespaces it selects.
#[derive(Debug, Clone)]
struct MeshSettings {
    namespace_selector: NamespaceSelector,
    default: Option<MeshDefault>,
    mesh_only: bool,
    refuse_unknown: bool,
    allowed_annotations: Vec<WeakeningAnnotation>,
}

/// What one workload's proxy enforces: sent whole on every change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Namespace policies selecting the workload, then mesh policies for its namespace.
    pub policies: Vec<CorePolicy>,
    /// The mesh default (the strictest any MeshPolicy for the namespace sets; `deny` when
    /// none does).
    pub default: MeshDefault,
    /// Refuse unmeshed destinations outbound (any MeshPolicy for the namespace says so).
    pub mesh_only: bool,
    /// Refuse destinations the controller does not know, outbound (likewise).
    pub refuse_unknown: bool,
    /// Enforcement-weakening annotations pods may use (the MeshPolicies for the namespace).
    pub allowed_annotations: Vec<WeakeningAnnotation>,
}

/// `Accepted` or why not, and how many workloads a policy selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The generation judged.
    pub generation: Option<i64>,
    /// `Err(why)` when Invalid.
    pub accepted: Result<(), String>,
    /// Pods the policy selects now.
    pub workloads: usize,
}

/// The index.
#[derive(Debug, Default)]
pub struct Index {
    namespaces: HashMap<String, BTreeMap<String, String>>,
    pods: HashMap<String, BTreeMap<String, PodInfo>>,
    policies: HashMap<String, BTreeMap<String, Entry>>,
    mesh: BTreeMap<String, MeshEntry>,
}

/// Whether an object of `generation` is news to an index holding `previous` (objects
/// without a generation always are).
fn is_new_generation(previous: Option<&Entry>, generation: Option<i64>) -> bool {
    generation.is_none() || previous.map(|p| p.generation) != Some(generation)
}

/// Judges a new version against the entry it replaces (keeping the last good one).
fn judge(
    previous: Option<Entry>,
    generation: Option<i64>,
    core: Result<CorePolicy, crd::CrdError>,
) -> Entry {
    match core {
        Ok(policy) => Entry {
            generation,
            current: Ok(()),
            in_force: Some(policy),
        },
        Err(e) => Entry {
            generation,
            current: Err(e.to_string()),
            in_force: previous.and_then(|p| p.in_force),
        },
    }
}

impl NamespaceSelector {
    /// Whether a namespace with `labels` is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    }
}

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// A namespace was added or changed; whether what the index knows changed.
    pub fn apply_namespace(&mut self, name: &str, labels: BTreeMap<String, String>) -> bool {
        self.namespaces.insert(name.to_string(), labels.clone()) != Some(labels)
    }

    /// A namespace was deleted; whether it was known.
    pub fn delete_namespace(&mut self, name: &str) -> bool {
        self.namespaces.remove(name).is_some()
    }

    /// A pod was added or changed; whether what the index knows changed (most pod events
    /// are status updates that change neither its ServiceAccount nor its IP).
    pub fn apply_pod(&mut self, namespace: &str, name: &str, pod: PodInfo) -> bool {
        self.pods
            .entry(namespace.to_string())
            .or_default()
            .insert(name.to_string(), pod.clone())
            != Some(pod)
    }

    /// A pod was deleted; whether it was known.
    pub fn delete_pod(&mut self, namespace: &str, name: &str) -> bool {
        self.pods
            .get_mut(namespace)
            .is_some_and(|pods| pods.remove(name).is_some())
    }

    /// The pod `namespace/name`, if known.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&PodInfo> {
        self.pods.get(namespace)?.get(name)
    }

    /// An AuthorizationPolicy was added or changed; whether its spec changed (an update of
    /// its status alone keeps its generation).
    pub fn apply_policy(&mut self, object: &AuthorizationPolicy) -> bool {
        let (Some(namespace), Some(name)) = (&object.metadata.namespace, &object.metadata.name)
        else {
            return false;
        };
        let policies = self.policies.entry(namespace.clone()).or_default();
        let previous = policies.remove(name);
        let changed = is_new_generation(previous.as_ref(), object.metadata.generation);
        let entry = judge(previous, object.metadata.generation, crd::to_core(object));
        policies.insert(name.clone(), entry);
        changed
    }

    /// An AuthorizationPolicy was deleted; whether it was known.
    pub fn delete_policy(&mut self, namespace: &str, name: &str) -> bool {
        self.policies
            .get_mut(namespace)
            .is_some_and(|policies| policies.remove(name).is_some())
    }

    /// A MeshPolicy was added or changed; whether its spec changed.
    pub fn apply_mesh_policy(&mut self, object: &MeshPolicy) -> bool {
        let Some(name) = &object.metadata.name else {
            return false;
        };
        let (previous, previous_settings) = match self.mesh.remove(name) {
            Some(m) => (Some(m.entry), m.settings),
            None => (None, None),
        };
        let changed = is_new_generation(previous.as_ref(), object.metadata.generation);
        let spec = &object.spec;
        let settings = MeshSettings {
            namespace_selector: spec.namespace_selector.clone().unwrap_or_default(),
            default: spec.default,
            mesh_only: spec.mesh_only.unwrap_or(false),
            refuse_unknown: spec.unknown_destinations == Some(crd::UnknownDestinations::Refuse),
            allowed_annotations: spec.allowed_annotations.clone(),
        };
        let generation = object.metadata.generation;
        let (entry, settings) = match crd::mesh_rules(object) {
            // Settings only: nothing to enforce as rules.
            Ok(None) => {
                let entry = Entry {
                    generation,
                    current: Ok(()),
                    in_force: None,
                };
                (entry, Some(settings))
            }
            Ok(Some(policy)) => (judge(previous, generation, Ok(policy)), Some(settings)),
            // Invalid: the last valid version stays in force whole, its settings included.
            Err(e) => (judge(previous, generation, Err(e)), previous_settings),
        };
        self.mesh
            .insert(name.clone(), MeshEntry { entry, settings });
        changed
    }

    /// A MeshPolicy was deleted; whether it was known.
    pub fn delete_mesh_policy(&mut self, name: &str) -> bool {
        self.mesh.remove(name).is_some()
    }

    fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        self.namespaces.get(namespace).cloned().unwrap_or_default()
    }

    /// What the proxy of pod `namespace/name` enforces, or `None` for an unknown pod.
    pub fn snapshot(&self, namespace: &str, name: &str) -> Option<Snapshot> {
        let pod = self.pod(namespace, name)?;
        let mut policies: Vec<CorePolicy> = self
            .policies
            .get(namespace)
            .into_iter()
            .flat_map(BTreeMap::values)
            .filter_map(|e| e.in_force.as_ref())
            .filter(|p| selects(p, &pod.service_account))
            .cloned()
            .collect();
        let labels = self.namespace_labels(namespace);
        let mut default = MeshDefault::Deny;
        let mut strictest: Option<MeshDefault> = None;
        let mut mesh_only = false;
        let mut refuse_unknown = false;
        let mut allowed = Vec::new();
        // Everything a MeshPolicy says applies where its selector matches: a default or
        // outbound setting meant for some namespaces must not reach the others.
        for (mesh, in_force) in self
            .mesh
            .values()
            .filter_map(|m| Some((m.settings.as_ref()?, &m.entry.in_force)))
            .filter(|(settings, _)| settings.namespace_selector.matches(&labels))
        {
            if let Some(d) = mesh.default {
                if strictest.is_none_or(|s| d.strictness() > s.strictness()) {
                    strictest = Some(d);
                }
            }
            mesh_only |= mesh.mesh_only;
            refuse_unknown |= mesh.refuse_unknown;
            for a in &mesh.allowed_annotations {
                if !allowed.contains(a) {
                    allowed.push(*a);
                }
            }
            if let Some(p) = in_force {
                policies.push(p.clone());
            }
        }
        if let Some(d) = strictest {
            default = d;
        }
        Some(Snapshot {
            policies,
            default,
            mesh_only,
            refuse_unknown,
            allowed_annotations: allowed,
        })
    }

    /// Replaces every namespace (after a re-list: what was not listed is gone).
    pub fn replace_namespaces(&mut self, all: Vec<(String, BTreeMap<String, String>)>) {
        self.namespaces = all.into_iter().collect();
    }

    /// Replaces every pod (after a re-list).
    pub fn replace_pods(&mut self, all: Vec<(String, String, PodInfo)>) {
        self.pods.clear();
        for (namespace, name, pod) in all {
            self.apply_pod(&namespace, &name, pod);
        }
    }

    /// Replaces every AuthorizationPolicy (after a re-list); versions still listed keep their
    /// last good version.
    pub fn replace_policies(&mut self, all: &[AuthorizationPolicy]) {
        let mut old = std::mem::take(&mut self.policies);
        for object in all {
            if let (Some(ns), Some(name)) = (&object.metadata.namespace, &object.metadata.name) {
                if let Some(entry) = old.get_mut(ns).and_then(|p| p.remove(name)) {
                    self.policies
                        .entry(ns.clone())
                        .or_default()
                        .insert(name.clone(), entry);
                }
            }
            self.apply_policy(object);
        }
    }

    /// Replaces every MeshPolicy (after a re-list).
    pub fn replace_mesh_policies(&mut self, all: &[MeshPolicy]) {
        let mut old = std::mem::take(&mut self.mesh);
        for object in all {
            if let Some(entry) = object.metadata.name.as_ref().and_then(|n| old.remove(n)) {
                self.mesh
                    .insert(object.metadata.name.clone().unwrap_or_default(), entry);
            }
            self.apply_mesh_policy(object);
        }
    }

    /// `(namespace, name)` of every stored AuthorizationPolicy.
    pub fn policy_names(&self) -> Vec<(String, String)> {
        self.policies
            .iter()
            .flat_map(|(ns, p)| p.keys().map(move |n| (ns.clone(), n.clone())))
            .collect()
    }

    /// The name of every stored MeshPolicy.
    pub fn mesh_policy_names(&self) -> Vec<String> {
        self.mesh.keys().cloned().collect()
    }

    /// The status of AuthorizationPolicy `namespace/name`, if stored.
    pub fn policy_verdict(&self, namespace: &str, name: &str) -> Option<Verdict> {
        let entry = self.policies.get(namespace)?.get(name)?;
        let workloads = match &entry.in_force {
            Some(p) => self
                .pods
                .get(namespace)
                .into_iter()
                .flat_map(BTreeMap::values)
                .filter(|pod| selects(p, &pod.service_account))
                .count(),
            None => 0,
        };
        Some(Verdict {
            generation: entry.generation,
            accepted: entry.current.clone(),
            workloads,
        })
    }

    /// The status of MeshPolicy `name`, if stored.
    pub fn mesh_verdict(&self, name: &str) -> Option<Verdict> {
        let mesh = self.mesh.get(name)?;
        let workloads = match (&mesh.entry.in_force, &mesh.settings) {
            (Some(_), Some(settings)) => self
                .pods
                .iter()
                .filter(|(ns, _)| {
                    settings
                        .namespace_selector
                        .matches(&self.namespace_labels(ns))
                })
                .map(|(_, pods)| pods.len())
                .sum(),
            _ => 0,
        };
        Some(Verdict {
            generation: mesh.entry.generation,
            accepted: mesh.entry.current.clone(),
            workloads,
        })
    }
}

/// Whether namespace policy `p` protects workloads running as `service_account`.
fn selects(p: &CorePolicy, service_account: &str) -> bool {
    p.spec
        .selector
        .as_ref()
        .is_none_or(|s| s.service_accounts.iter().any(|sa| sa == service_account))
}

/// The core policy set of a snapshot, as a proxy evaluates it.
pub fn policy_set(snapshot: &Snapshot) -> policy::evaluate::PolicySet {
    policy::evaluate::PolicySet::new(snapshot.policies.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_core::policy::evaluate::{DefaultPolicy, Request, Workload};
    use warden_core::SpiffeId;

    fn policy(yaml: &str) -> AuthorizationPolicy {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn mesh(yaml: &str) -> MeshPolicy {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn pod(sa: &str) -> PodInfo {
        PodInfo {
            service_account: sa.into(),
            ips: Vec::new(),
        }
    }

    const ALLOW_FRONTEND: &str = r#"
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: backend-allow-frontend, namespace: shop, generation: 1}
spec:
  selector: {serviceAccounts: [backend]}
  action: ALLOW
  rules: [{from: {identities: ["spiffe://cluster.local/ns/shop/sa/frontend"]}}]
"#;

    fn index() -> Index {
        let mut index = Index::new();
        index.apply_namespace("shop", BTreeMap::from([("env".into(), "prod".into())]));
        index.apply_namespace("lab", BTreeMap::new());
        index.apply_pod("shop", "backend-1", pod("backend"));
        index.apply_pod("shop", "backend-2", pod("backend"));
        index.apply_pod("shop", "frontend-1", pod("frontend"));
        index.apply_pod("lab", "x-1", pod("x"));
        index.apply_policy(&policy(ALLOW_FRONTEND));
        index
    }

    fn names(snapshot: &Snapshot) -> Vec<String> {
        snapshot.policies.iter().map(CorePolicy::id).collect()
    }

    #[test]
    fn only_what_can_alter_a_snapshot_counts_as_a_change() {
        let mut index = Index::new();
        let prod = BTreeMap::from([("env".to_string(), "prod".to_string())]);
        let with_ip = PodInfo {
            service_account: "web".into(),
            ips: vec!["10.0.0.7".parse().unwrap()],
        };
        let allow = policy(ALLOW_FRONTEND);
        let mut edited = allow.clone();
        edited.metadata.generation = Some(2);
        let deny_mesh = mesh("apiVersion: warden.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {name: m, generation: 1}\nspec: {action: DENY, rules: [{}]}\n");
        // (what happened, whether it counts)
        let steps: Vec<(&str, bool, bool)> = vec![
            (
                "new namespace",
                index.apply_namespace("shop", prod.clone()),
                true,
            ),
            (
                "same labels",
                index.apply_namespace("shop", prod.clone()),
                false,
            ),
            (
                "new pod",
                index.apply_pod("shop", "web-1", pod("web")),
                true,
            ),
            (
                "a pod status update",
                index.apply_pod("shop", "web-1", pod("web")),
                false,
            ),
            (
                "the pod gets its IP",
                index.apply_pod("shop", "web-1", with_ip.clone()),
                true,
            ),
            ("new policy", index.apply_policy(&allow), true),
            ("its status written", index.apply_policy(&allow), false),
            ("its spec edited", index.apply_policy(&edited), true),
            ("new mesh policy", index.apply_mesh_policy(&deny_mesh), true),
            (
                "its status written",
                index.apply_mesh_policy(&deny_mesh),
                false,
            ),
            ("mesh policy deleted", index.delete_mesh_policy("m"), true),
            ("deleted again", index.delete_mesh_policy("m"), false),
            (
                "policy deleted",
                index.delete_policy("shop", "backend-allow-frontend"),
                true,
            ),
            ("unknown policy", index.delete_policy("shop", "nope"), false),
            ("pod deleted", index.delete_pod("shop", "web-1"), true),
            ("unknown pod", index.delete_pod("shop", "web-1"), false),
            ("namespace deleted", index.delete_namespace("shop"), true),
            ("unknown namespace", index.delete_namespace("shop"), false),
        ];
        for (what, changed, want) in steps {
            assert_eq!(changed, want, "{what}");
        }
    }

    #[test]
    fn a_workload_gets_the_policies_selecting_it_and_no_others() {
        let index = index();
        let cases = [
            ("shop", "backend-1", vec!["shop/backend-allow-frontend"]),
            ("shop", "frontend-1", vec![]),
            ("lab", "x-1", vec![]),
        ];
        for (ns, pod, want) in cases {
            let snapshot = index.snapshot(ns, pod).unwrap();
            assert_eq!(names(&snapshot), want, "{ns}/{pod}");
            assert_eq!(
                snapshot.default,
                MeshDefault::Deny,
                "deny without a MeshPolicy"
            );
        }
        assert_eq!(
            index.snapshot("shop", "nobody"),
            None,
            "an unknown pod gets nothing"
        );
        let verdict = index
            .policy_verdict("shop", "backend-allow-frontend")
            .unwrap();
        assert_eq!(verdict.accepted, Ok(()));
        assert_eq!(verdict.workloads, 2);
        assert_eq!(verdict.generation, Some(1));
    }

    #[test]
    fn an_invalid_edit_is_reported_and_the_last_good_version_stays_in_force() {
        let mut index = index();
        let bad = ALLOW_FRONTEND
            .replace("generation: 1", "generation: 2")
            .replace("sa/frontend", "sa//frontend");
        index.apply_policy(&policy(&bad));
        let verdict = index
            .policy_verdict("shop", "backend-allow-frontend")
            .unwrap();
        let why = verdict.accepted.unwrap_err();
        assert!(
            why.starts_with("spec.rules[0].from.identities[0]: "),
            "{why}"
        );
        assert_eq!(verdict.generation, Some(2));
        let snapshot = index.snapshot("shop", "backend-1").unwrap();
        let identity = snapshot.policies[0].spec.rules[0].from.identities.clone();
        assert_eq!(
            identity,
            Some(vec![
                "spiffe://cluster.local/ns/shop/sa/frontend".to_string()
            ]),
            "the last good version"
        );
        // A policy that was never valid enforces nothing (and says why).
        let never = bad.replace("backend-allow-frontend", "never-good");
        index.apply_policy(&policy(&never));
        assert!(index
            .policy_verdict("shop", "never-good")
            .unwrap()
            .accepted
            .is_err());
        assert_eq!(
            names(&index.snapshot("shop", "backend-1").unwrap()).len(),
            1
        );
        // Deleted: gone from every snapshot.
        index.delete_policy("shop", "backend-allow-frontend");
        assert!(index
            .snapshot("shop", "backend-1")
            .unwrap()
            .policies
            .is_empty());
    }

    #[test]
    fn an_invalid_mesh_policy_changes_no_setting_and_an_invalid_edit_keeps_the_last_good_ones() {
        let mut index = index();
        let settings = |index: &Index| {
            let s = index.snapshot("lab", "x-1").unwrap();
            (s.default, s.mesh_only, s.refuse_unknown, names(&s))
        };
        let untouched = settings(&index);
        assert_eq!(untouched, (MeshDefault::Deny, false, false, vec![]));
        // Never valid (an identity with an empty segment): it changes nothing, its settings
        // included.
        let invalid = "apiVersion: warden.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {name: open, generation: 1}\nspec: {default: all-authenticated, meshOnly: true, action: DENY, rules: [{from: {identities: [\"spiffe://cluster.local/ns/a//b\"]}}]}\n";
        index.apply_mesh_policy(&mesh(invalid));
        assert!(index.mesh_verdict("open").unwrap().accepted.is_err());
        assert_eq!(settings(&index), untouched, "a policy never valid");
        assert_eq!(index.mesh_verdict("open").unwrap().workloads, 0);
        // Valid, then edited into an invalid one that would open every namespace: the last
        // good version stays in force, its settings and its rules.
        let good = "apiVersion: warden.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {name: open, generation: 2}\nspec: {meshOnly: true, action: DENY, rules: [{to: {paths: [\"/debug*\"]}}]}\n";
        index.apply_mesh_policy(&mesh(good));
        let in_force = (
            MeshDefault::Deny,
            true,
            false,
            vec!["MeshPolicy/open".to_string()],
        );
        assert_eq!(settings(&index), in_force);
        let edited = invalid.replace("generation: 1", "generation: 3");
        index.apply_mesh_policy(&mesh(&edited));
        assert!(index.mesh_verdict("open").unwrap().accepted.is_err());
        assert_eq!(settings(&index), in_force, "the last good version, whole");
    }

    #[test]
    fn mesh_policies_apply_by_namespace_labels_and_the_strictest_default_wins() {
        let mut index = index();
        index.apply_mesh_policy(&mesh(
            r#"
apiVersion: warden.dev/v1alpha1
kind: MeshPolicy
metadata: {name: no-debug-in-prod}
spec:
  namespaceSelector: {matchLabels: {env: prod}}
  action: DENY
  rules: [{to: {paths: ["/debug*"]}}]
"#,
        ));
        for (default, name) in [("all-authenticated", "adopting"), ("audit", "auditing")] {
            index.apply_mesh_policy(&mesh(&format!(
                "apiVersion: warden.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {{name: {name}}}\nspec: {{default: {default}, meshOnly: {}, allowedAnnotations: [warden.dev/inbound-mode]}}\n",
                name == "auditing"
            )));
        }
        let prod = index.snapshot("shop", "frontend-1").unwrap();
        assert_eq!(names(&prod), ["MeshPolicy/no-debug-in-prod"]);
        assert_eq!(
            prod.default,
            MeshDefault::AllAuthenticated,
            "all-authenticated lets fewer callers through than audit, which lets all through"
        );
        assert!(prod.mesh_only);
        assert!(
            !prod.refuse_unknown,
            "passthrough unless a MeshPolicy refuses"
        );
        index.apply_mesh_policy(&mesh("apiVersion: warden.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {name: closed}\nspec: {unknownDestinations: refuse}\n"));
        assert!(index.snapshot("shop", "frontend-1").unwrap().refuse_unknown);
        index.delete_mesh_policy("closed");
        assert_eq!(prod.allowed_annotations, [WeakeningAnnotation::InboundMode]);
        let lab = index.snapshot("lab", "x-1").unwrap();
        assert!(lab.policies.is_empty(), "lab is not prod");
        assert_eq!(
            lab.default,
            MeshDefault::AllAuthenticated,
            "unscoped MeshPolicies apply everywhere"
        );

        assert_eq!(index.mesh_verdict("no-debug-in-prod").unwrap().workloads, 3);

        // A mesh DENY wins over the namespace's ALLOW, in the proxy's own evaluation.
        let snapshot = index.snapshot("shop", "backend-1").unwrap();
        let set = policy_set(&snapshot);
        let backend = Workload::from_id(
            &SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/backend").unwrap(),
        );
        let frontend = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/frontend").unwrap();
        let get = |path| Request {
            client: Some(&frontend),
            port: 8080,
            http: Some(("GET", path)),
        };
        assert!(
            set.evaluate(&backend, &get("/api"), DefaultPolicy::Deny)
                .allowed
        );
        let d = set.evaluate(&backend, &get("/debug/vars"), DefaultPolicy::Deny);
        assert!(!d.allowed);
        assert_eq!(d.policy.as_deref(), Some("MeshPolicy/no-debug-in-prod"));

        index.delete_mesh_policy("adopting");
        assert_eq!(
            index.snapshot("shop", "frontend-1").unwrap().default,
            MeshDefault::Audit
        );

        // A MeshPolicy's settings reach only the namespaces its selector matches: a looser
        // default for lab must not open prod, a stricter one for prod must not close lab.
        index.delete_mesh_policy("auditing");
        index.apply_namespace("lab", BTreeMap::from([("env".into(), "lab".into())]));
        index.apply_mesh_policy(&mesh("apiVersion: warden.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {name: lab-open}\nspec: {namespaceSelector: {matchLabels: {env: lab}}, default: all-authenticated, allowedAnnotations: [warden.dev/inbound-mode]}\n"));
        index.apply_mesh_policy(&mesh("apiVersion: warden.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {name: prod-closed}\nspec: {namespaceSelector: {matchLabels: {env: prod}}, meshOnly: true, unknownDestinations: refuse}\n"));
        let prod = index.snapshot("shop", "frontend-1").unwrap();
        let lab = index.snapshot("lab", "x-1").unwrap();
        let settings = |s: &Snapshot| {
            (
                s.default,
                s.mesh_only,
                s.refuse_unknown,
                s.allowed_annotations.clone(),
            )
        };
        assert_eq!(
            settings(&prod),
            (MeshDefault::Deny, true, true, vec![]),
            "prod"
        );
        assert_eq!(
            settings(&lab),
            (
                MeshDefault::AllAuthenticated,
                false,
                false,
                vec![WeakeningAnnotation::InboundMode]
            ),
            "lab"
        );
    }

    #[test]
    fn pods_and_namespaces_come_and_go() {
        let mut index = index();
        index.delete_pod("shop", "backend-2");
        assert_eq!(
            index
                .policy_verdict("shop", "backend-allow-frontend")
                .unwrap()
                .workloads,
            1
        );
        index.apply_pod("shop", "backend-2", pod("frontend")); // the name reused, another SA
        assert!(index
            .snapshot("shop", "backend-2")
            .unwrap()
            .policies
            .is_empty());
        index.delete_namespace("shop");
        index.apply_mesh_policy(&mesh(
            "apiVersion: warden.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {name: prod}\nspec: {namespaceSelector: {matchLabels: {env: prod}}, action: DENY, rules: [{}]}\n",
        ));
        assert_eq!(
            names(&index.snapshot("shop", "backend-1").unwrap()),
            ["shop/backend-allow-frontend"],
            "a namespace without labels is not selected by a labelled selector"
        );
    }
}
