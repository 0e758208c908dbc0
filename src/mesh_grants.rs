//! `warden injector`'s watches of MeshPolicies and Namespaces: they keep the webhook's
//! [`NamespaceGrants`] (which weakening annotations MeshPolicies allow where) current. Thin:
//! the grants are a plain data structure with its own tests (`warden_injector::grants`).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ApiResource, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use warden_controller::crd::MeshPolicy;
use warden_injector::config::{InjectorConfig, SecurityAnnotation};
use warden_injector::grants::{MeshGrant, NamespaceGrants, Update};

/// One change from either watch.
enum Change {
    Mesh(Event<DynamicObject>),
    Namespace(Event<PartialObjectMeta<Namespace>>),
}

/// Where the watches are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantsSync {
    /// Not everything listed yet; the last error, if any (a missing CRD, a 403).
    Waiting(Option<String>),
    /// Both listed once: the grants are in force.
    Listed,
}

/// Watches until `shutdown`, publishing every change of the grants into `config`; `sync`
/// says whether both watches have listed everything once, or what they last failed with.
pub async fn run(
    client: Client,
    config: watch::Sender<Arc<InjectorConfig>>,
    sync: watch::Sender<GrantsSync>,
    shutdown: CancellationToken,
) {
    // Read as JSON, not as the controller's types: a MeshPolicy of a newer release (an
    // annotation this one does not know) must not fail the whole list; what is not
    // understood grants nothing.
    let resource = ApiResource::erase::<MeshPolicy>(&());
    let mesh = watcher::watcher(
        Api::<DynamicObject>::all_with(client.clone(), &resource),
        Default::default(),
    )
    .default_backoff()
    .map_ok(Change::Mesh);
    // Labels are all it needs: metadata-only requests.
    let namespaces = Api::<PartialObjectMeta<Namespace>>::all(client);
    let namespaces = watcher::watcher(namespaces, Default::default())
        .default_backoff()
        .map_ok(Change::Namespace);
    let mut changes = std::pin::pin!(futures::stream::select(mesh.boxed(), namespaces.boxed()));
    let mut grants = NamespaceGrants::default();
    let mut mesh_policies = Watched::default();
    let mut namespaces = Watched::default();
    loop {
        let change = tokio::select! {
            change = changes.next() => change,
            () = shutdown.cancelled() => return,
        };
        let change = match change {
            Some(Ok(change)) => change,
            Some(Err(e)) => {
                // Retried with backoff; until then the last grants stay.
                tracing::warn!(error = %e, "watching MeshPolicies and Namespaces for allowedAnnotations");
                warden_injector::webhook::count_grant_watch_error();
                if *sync.borrow() != GrantsSync::Listed {
                    sync.send_replace(GrantsSync::Waiting(Some(e.to_string())));
                }
                continue;
            }
            None => return,
        };
        let changed = match change {
            Change::Mesh(event) => mesh_policies
                .step(event, mesh_grant)
                .map(|update| grants.update_mesh_policies(update)),
            Change::Namespace(event) => namespaces
                .step(event, namespace_labels)
                .map(|update| grants.update_namespaces(update)),
        }
        .is_some();
        if changed {
            let next = Arc::new(grants.clone());
            config.send_modify(|c| {
                let mut updated = InjectorConfig::clone(c);
                updated.grants = next;
                *c = Arc::new(updated);
            });
        }
        if mesh_policies.listed && namespaces.listed && *sync.borrow() != GrantsSync::Listed {
            tracing::info!("MeshPolicies and Namespaces listed: allowedAnnotations in force");
            sync.send_replace(GrantsSync::Listed);
        }
    }
}

/// One watch's state: what a re-list has sent so far, and whether it has listed once.
struct Watched<T> {
    relist: Option<Vec<(String, T)>>,
    listed: bool,
}

impl<T> Default for Watched<T> {
    fn default() -> Self {
        Self {
            relist: None,
            listed: false,
        }
    }
}

impl<T> Watched<T> {
    /// The update `event` makes, if any, its object read by `entry`: a re-list is buffered
    /// until it is complete, then replaces everything (what it did not list is gone).
    fn step<K: kube::Resource>(
        &mut self,
        event: Event<K>,
        entry: impl Fn(&K) -> Option<(String, T)>,
    ) -> Option<Update<T>> {
        match event {
            Event::Init => {
                self.relist = Some(Vec::new());
                None
            }
            Event::InitApply(object) | Event::Apply(object) => match &mut self.relist {
                Some(buffer) => {
                    buffer.extend(entry(&object));
                    None
                }
                None => entry(&object).map(|(name, t)| Update::Set(name, t)),
            },
            Event::Delete(object) => object.meta().name.clone().map(Update::Remove),
            Event::InitDone => {
                self.listed = true;
                Some(Update::Replace(self.relist.take().unwrap_or_default()))
            }
        }
    }
}

/// A MeshPolicy's name and grant, from its JSON. What this release does not understand
/// grants nothing (logged): an annotation it does not know, or a selector with more than
/// `matchLabels` (ignoring a part of it would widen the grant).
fn mesh_grant(m: &DynamicObject) -> Option<(String, MeshGrant)> {
    let name = m.metadata.name.clone()?;
    let spec = &m.data["spec"];
    let selector = &spec["namespaceSelector"];
    let match_labels: Option<BTreeMap<String, String>> = match &selector["matchLabels"] {
        _ if !selector.is_null()
            && !selector
                .as_object()
                .is_some_and(|o| o.keys().all(|k| k == "matchLabels")) =>
        {
            None
        }
        Value::Null => Some(BTreeMap::new()),
        Value::Object(labels) => labels
            .iter()
            .map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect(),
        _ => None,
    };
    let Some(match_labels) = match_labels else {
        tracing::warn!(mesh_policy = %name, "namespaceSelector not understood; its allowedAnnotations grant nothing");
        return Some((name, MeshGrant::default()));
    };
    let allowed = spec["allowedAnnotations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|key| {
            SecurityAnnotation::parse(key)
                .map_err(|e| tracing::warn!(mesh_policy = %name, error = %e, "allowedAnnotations entry not understood; it grants nothing"))
                .ok()
        })
        .collect();
    Some((
        name,
        MeshGrant {
            match_labels,
            allowed,
        },
    ))
}

/// A namespace's name and labels.
fn namespace_labels(
    ns: &PartialObjectMeta<Namespace>,
) -> Option<(String, BTreeMap<String, String>)> {
    Some((
        ns.metadata.name.clone()?,
        ns.metadata.labels.clone().unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn grant(spec: Value) -> MeshGrant {
        let object = DynamicObject::new("p", &ApiResource::erase::<MeshPolicy>(&())).data(json!({
            "spec": spec
        }));
        mesh_grant(&object).unwrap().1
    }

    #[test]
    fn what_is_not_understood_grants_nothing() {
        let inbound = SecurityAnnotation::PermissiveInbound;
        let rows = [
            (
                json!({"allowedAnnotations": ["warden.dev/inbound-mode"]}),
                true,
            ),
            (
                json!({"namespaceSelector": {"matchLabels": {"env": "lab"}},
                       "allowedAnnotations": ["warden.dev/inbound-mode", "warden.dev/new-thing"]}),
                true,
            ),
            // A selector part this release would ignore would widen the grant.
            (
                json!({"namespaceSelector": {"matchLabels": {"env": "lab"},
                                             "matchExpressions": [{"key": "tier", "operator": "Exists"}]},
                       "allowedAnnotations": ["warden.dev/inbound-mode"]}),
                false,
            ),
            (
                json!({"namespaceSelector": {"matchLabels": {"env": 1}},
                       "allowedAnnotations": ["warden.dev/inbound-mode"]}),
                false,
            ),
            (
                json!({"allowedAnnotations": ["warden.dev/new-thing"]}),
                false,
            ),
            (json!({}), false),
        ];
        for (spec, grants) in rows {
            let g = grant(spec.clone());
            assert_eq!(g.allowed.contains(&inbound), grants, "{spec}");
        }
        let g = grant(json!({"namespaceSelector": {"matchLabels": {"env": "lab"}},
                             "allowedAnnotations": ["warden.dev/inbound-mode"]}));
        assert_eq!(
            g.match_labels,
            BTreeMap::from([("env".to_string(), "lab".to_string())])
        );
    }

    #[test]
    fn a_relist_is_buffered_then_replaces_everything() {
        let object = |name: &str| DynamicObject::new(name, &ApiResource::erase::<MeshPolicy>(&()));
        let entry = |o: &DynamicObject| o.metadata.name.clone().map(|n| (n, ()));
        let names = |step: Option<Update<()>>| match step {
            None => "nothing".to_string(),
            Some(Update::Set(n, ())) => format!("set {n}"),
            Some(Update::Remove(n)) => format!("remove {n}"),
            Some(Update::Replace(all)) => format!(
                "replace {}",
                all.into_iter()
                    .map(|(n, ())| n)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        };
        let mut watched = Watched::default();
        let events = [
            (Event::Init, "nothing"),
            (Event::InitApply(object("a")), "nothing"),
            (Event::InitApply(object("b")), "nothing"),
            (Event::InitDone, "replace a,b"),
            (Event::Apply(object("c")), "set c"),
            (Event::Delete(object("a")), "remove a"),
            // A re-list after a watch error: nothing changes until it is complete.
            (Event::Init, "nothing"),
            (Event::InitApply(object("c")), "nothing"),
            (Event::InitDone, "replace c"),
        ];
        assert!(!watched.listed);
        for (event, want) in events {
            assert_eq!(names(watched.step(event, entry)), want);
        }
        assert!(watched.listed);
    }
}
