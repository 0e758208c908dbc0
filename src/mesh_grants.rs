//! `warden injector`'s watches of MeshPolicies and Namespaces: they keep the webhook's
//! [`NamespaceGrants`] (which weakening annotations MeshPolicies allow where) current. Thin:
//! the grants are a plain data structure with its own tests (`warden_injector::grants`).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use warden_controller::crd::{MeshPolicy, WeakeningAnnotation};
use warden_injector::config::{InjectorConfig, SecurityAnnotation};
use warden_injector::grants::{MeshGrant, NamespaceGrants};

/// One change from either watch.
enum Change {
    Mesh(Event<MeshPolicy>),
    Namespace(Event<PartialObjectMeta<Namespace>>),
}

/// Watches until `shutdown`, publishing every change of the grants into `config`; `synced`
/// turns true once both watches have listed everything once.
pub async fn run(
    client: Client,
    config: watch::Sender<Arc<InjectorConfig>>,
    synced: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let mesh = watcher::watcher(Api::<MeshPolicy>::all(client.clone()), Default::default())
        .default_backoff()
        .map_ok(Change::Mesh);
    // Labels are all it needs: metadata-only requests.
    let namespaces = Api::<PartialObjectMeta<Namespace>>::all(client);
    let namespaces = watcher::watcher(namespaces, Default::default())
        .default_backoff()
        .map_ok(Change::Namespace);
    let mut changes = std::pin::pin!(futures::stream::select(mesh.boxed(), namespaces.boxed()));
    let mut grants = NamespaceGrants::default();
    let mut mesh_relist: Option<Vec<(String, MeshGrant)>> = None;
    let mut namespace_relist: Option<Vec<(String, BTreeMap<String, String>)>> = None;
    let (mut mesh_listed, mut namespaces_listed) = (false, false);
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
                continue;
            }
            None => return,
        };
        let changed = match change {
            Change::Mesh(event) => match event {
                Event::Init => {
                    mesh_relist = Some(Vec::new());
                    false
                }
                Event::InitApply(m) | Event::Apply(m) if mesh_relist.is_some() => {
                    mesh_relist.get_or_insert_default().extend(mesh_grant(&m));
                    false
                }
                Event::InitApply(m) | Event::Apply(m) => {
                    if let Some((name, grant)) = mesh_grant(&m) {
                        grants.set_mesh_policy(&name, grant);
                    }
                    true
                }
                Event::Delete(m) => {
                    if let Some(name) = &m.metadata.name {
                        grants.remove_mesh_policy(name);
                    }
                    true
                }
                Event::InitDone => {
                    grants.replace_mesh_policies(mesh_relist.take().unwrap_or_default());
                    mesh_listed = true;
                    true
                }
            },
            Change::Namespace(event) => match event {
                Event::Init => {
                    namespace_relist = Some(Vec::new());
                    false
                }
                Event::InitApply(ns) | Event::Apply(ns) if namespace_relist.is_some() => {
                    namespace_relist
                        .get_or_insert_default()
                        .extend(namespace_labels(&ns));
                    false
                }
                Event::InitApply(ns) | Event::Apply(ns) => {
                    if let Some((name, labels)) = namespace_labels(&ns) {
                        grants.set_namespace(&name, labels);
                    }
                    true
                }
                Event::Delete(ns) => {
                    if let Some(name) = &ns.metadata.name {
                        grants.remove_namespace(name);
                    }
                    true
                }
                Event::InitDone => {
                    grants.replace_namespaces(namespace_relist.take().unwrap_or_default());
                    namespaces_listed = true;
                    true
                }
            },
        };
        if changed {
            let next = Arc::new(grants.clone());
            config.send_modify(|c| {
                let mut updated = InjectorConfig::clone(c);
                updated.grants = next;
                *c = Arc::new(updated);
            });
        }
        if mesh_listed && namespaces_listed && !*synced.borrow() {
            tracing::info!("MeshPolicies and Namespaces listed: allowedAnnotations in force");
            synced.send_replace(true);
        }
    }
}

/// A MeshPolicy's name and grant.
fn mesh_grant(m: &MeshPolicy) -> Option<(String, MeshGrant)> {
    let name = m.metadata.name.clone()?;
    let match_labels = m
        .spec
        .namespace_selector
        .as_ref()
        .map(|s| s.match_labels.clone())
        .unwrap_or_default();
    let allowed = m
        .spec
        .allowed_annotations
        .iter()
        .map(|a| match a {
            WeakeningAnnotation::SkipInboundPorts => SecurityAnnotation::SkipInboundPorts,
            WeakeningAnnotation::SkipOutboundPorts => SecurityAnnotation::SkipOutboundPorts,
            WeakeningAnnotation::SkipOutboundCidrs => SecurityAnnotation::SkipOutboundCidrs,
            WeakeningAnnotation::InboundMode => SecurityAnnotation::PermissiveInbound,
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
