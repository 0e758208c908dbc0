//! The thin part: the API server's watches of Namespaces, Pods, AuthorizationPolicies and
//! MeshPolicies feed the policy [`Index`], and Pods, Services and EndpointSlices the
//! discovery index ([`Destinations`]); the status of every policy whose verdict changed is
//! written back. The API server is the only store: a restarted
//! controller rebuilds everything from the watches, and a re-list replaces what it knew.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};

use crate::crd::{AuthorizationPolicy, MeshPolicy, PolicyStatus};
use crate::destinations::{Destinations, PodEndpoint, ServiceInfo, ServicePort, Slice};
use crate::index::{Index, PodInfo, Verdict};
use crate::status;
use warden_core::contract;

/// How often, at most, the status writer recomputes and writes policy statuses.
const STATUS_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// The field manager of the controller's status writes.
pub const FIELD_MANAGER: &str = "warden-controller";

/// One change from any watch (a Pod is large: boxed, so every change is small).
enum Change {
    Namespace(Event<Namespace>),
    Pod(Event<Box<Pod>>),
    Policy(Event<AuthorizationPolicy>),
    Mesh(Event<MeshPolicy>),
    Service(Event<Box<Service>>),
    Slice(Event<Box<EndpointSlice>>),
}

/// Objects buffered between `Init` and `InitDone` of each watch.
#[derive(Default)]
struct Relists {
    namespaces: Option<Vec<(String, BTreeMap<String, String>)>>,
    pods: Option<Vec<(String, String, PodInfo, PodEndpoint)>>,
    services: Option<Vec<(String, String, ServiceInfo)>>,
    slices: Option<Vec<(String, String, Slice)>>,
    policies: Option<Vec<AuthorizationPolicy>>,
    mesh: Option<Vec<MeshPolicy>>,
}

fn watch<K>(api: Api<K>) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default,
{
    watcher::watcher(api, watcher::Config::default()).default_backoff()
}

/// The same event with its object boxed.
fn boxed<K>(event: Event<K>) -> Event<Box<K>> {
    match event {
        Event::Apply(k) => Event::Apply(Box::new(k)),
        Event::Delete(k) => Event::Delete(Box::new(k)),
        Event::Init => Event::Init,
        Event::InitApply(k) => Event::InitApply(Box::new(k)),
        Event::InitDone => Event::InitDone,
    }
}

fn namespace_entry(ns: &Namespace) -> Option<(String, BTreeMap<String, String>)> {
    Some((
        ns.metadata.name.clone()?,
        ns.metadata.labels.clone().unwrap_or_default(),
    ))
}

fn pod_entry(pod: &Pod) -> Option<(String, String, PodInfo)> {
    let spec = pod.spec.as_ref();
    let info = PodInfo {
        service_account: spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".to_string()),
        ips: pod_ips(pod),
    };
    Some((
        pod.metadata.namespace.clone()?,
        pod.metadata.name.clone()?,
        info,
    ))
}

/// A pod's IPs: every family's (`podIPs`), and `podIP` if it is not among them.
fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let status = pod.status.as_ref();
    let mut ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if let Some(ip) = status
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse().ok())
    {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    ips
}

/// What discovery keeps of a pod: its IPs, ServiceAccount, sidecar, phase, opaque ports.
fn pod_endpoint(pod: &Pod) -> PodEndpoint {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let ips = pod_ips(pod);
    let has_proxy = |containers: Option<&Vec<k8s_openapi::api::core::v1::Container>>| {
        containers
            .into_iter()
            .flatten()
            .any(|c| c.name == contract::PROXY_CONTAINER)
    };
    let meshed = spec
        .is_some_and(|s| has_proxy(s.init_containers.as_ref()) || has_proxy(Some(&s.containers)));
    let opaque_ports = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(contract::annotations::OPAQUE_PORTS))
        .and_then(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::parse::<u16>)
                .collect::<Result<Vec<_>, _>>()
                .ok()
        });
    PodEndpoint {
        service_account: spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".to_string()),
        ips,
        meshed,
        terminal: matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ),
        opaque_ports,
        created: pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second()),
    }
}

/// What discovery keeps of a Service: its cluster IPs and TCP ports.
fn service_entry(service: &Service) -> Option<(String, String, ServiceInfo)> {
    let spec = service.spec.as_ref()?;
    let mut ips: Vec<String> = spec.cluster_ips.clone().unwrap_or_default();
    ips.extend(spec.cluster_ip.clone());
    let mut cluster_ips: Vec<IpAddr> = ips.iter().filter_map(|ip| ip.parse().ok()).collect();
    cluster_ips.sort();
    cluster_ips.dedup();
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .filter_map(|p| {
            Some(ServicePort {
                name: p.name.clone(),
                port: u16::try_from(p.port).ok()?,
                app_protocol: p.app_protocol.clone(),
            })
        })
        .collect();
    Some((
        service.metadata.namespace.clone()?,
        service.metadata.name.clone()?,
        ServiceInfo { cluster_ips, ports },
    ))
}

/// What discovery keeps of an EndpointSlice: its Service, TCP ports and endpoints.
fn slice_entry(slice: &EndpointSlice) -> Option<(String, String, Slice)> {
    let service = slice
        .metadata
        .labels
        .as_ref()?
        .get("kubernetes.io/service-name")?
        .clone();
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .filter_map(|p| Some((p.name.clone(), u16::try_from(p.port?).ok()?)))
        .collect();
    let endpoints = slice
        .endpoints
        .iter()
        .map(|e| {
            let ips = e.addresses.iter().filter_map(|a| a.parse().ok()).collect();
            // Unknown readiness reads as ready (the API's own advice).
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            (ips, ready)
        })
        .collect();
    Some((
        slice.metadata.namespace.clone()?,
        slice.metadata.name.clone()?,
        Slice {
            service,
            ports,
            endpoints,
        },
    ))
}

/// Applies one watch event to the indexes; whether policy snapshots may have changed (the
/// discovery index records which of its answers may have: [`Destinations::take_changes`]).
/// Events buffered during a re-list change nothing until it completes.
fn apply(
    index: &mut Index,
    destinations: &mut Destinations,
    relists: &mut Relists,
    change: Change,
) -> bool {
    match change {
        Change::Namespace(event) => match event {
            Event::Apply(ns) | Event::InitApply(ns) if relists.namespaces.is_none() => {
                namespace_entry(&ns)
                    .is_some_and(|(name, labels)| index.apply_namespace(&name, labels))
            }
            Event::InitApply(ns) | Event::Apply(ns) => {
                let buffer = relists.namespaces.get_or_insert_default();
                buffer.extend(namespace_entry(&ns));
                false
            }
            Event::Delete(ns) => ns
                .metadata
                .name
                .as_ref()
                .is_some_and(|name| index.delete_namespace(name)),
            Event::Init => {
                relists.namespaces = Some(Vec::new());
                false
            }
            Event::InitDone => {
                index.replace_namespaces(relists.namespaces.take().unwrap_or_default());
                true
            }
        },
        Change::Pod(event) => match event {
            Event::Apply(pod) | Event::InitApply(pod) if relists.pods.is_none() => {
                match pod_entry(&pod) {
                    Some((ns, name, info)) => {
                        destinations.apply_pod(&ns, &name, pod_endpoint(&pod));
                        index.apply_pod(&ns, &name, info)
                    }
                    None => false,
                }
            }
            Event::InitApply(pod) | Event::Apply(pod) => {
                // Only what the indexes keep: a re-list of 10,000 pods must not hold 10,000
                // Pod objects.
                if let Some((ns, name, info)) = pod_entry(&pod) {
                    let endpoint = pod_endpoint(&pod);
                    relists
                        .pods
                        .get_or_insert_default()
                        .push((ns, name, info, endpoint));
                }
                false
            }
            Event::Delete(pod) => match (&pod.metadata.namespace, &pod.metadata.name) {
                (Some(ns), Some(name)) => {
                    destinations.delete_pod(ns, name);
                    index.delete_pod(ns, name)
                }
                _ => false,
            },
            Event::Init => {
                relists.pods = Some(Vec::new());
                false
            }
            Event::InitDone => {
                let all = relists.pods.take().unwrap_or_default();
                let (policy, discovery): (Vec<_>, Vec<_>) = all
                    .into_iter()
                    .map(|(ns, name, info, endpoint)| {
                        ((ns.clone(), name.clone(), info), (ns, name, endpoint))
                    })
                    .unzip();
                destinations.replace_pods(discovery);
                index.replace_pods(policy);
                true
            }
        },
        Change::Policy(event) => match event {
            Event::Apply(p) | Event::InitApply(p) if relists.policies.is_none() => {
                index.apply_policy(&p)
            }
            Event::InitApply(p) | Event::Apply(p) => {
                relists.policies.get_or_insert_default().push(p);
                false
            }
            Event::Delete(p) => match (&p.metadata.namespace, &p.metadata.name) {
                (Some(ns), Some(name)) => index.delete_policy(ns, name),
                _ => false,
            },
            Event::Init => {
                relists.policies = Some(Vec::new());
                false
            }
            Event::InitDone => {
                index.replace_policies(&relists.policies.take().unwrap_or_default());
                true
            }
        },
        Change::Mesh(event) => match event {
            Event::Apply(m) | Event::InitApply(m) if relists.mesh.is_none() => {
                index.apply_mesh_policy(&m)
            }
            Event::InitApply(m) | Event::Apply(m) => {
                relists.mesh.get_or_insert_default().push(m);
                false
            }
            Event::Delete(m) => m
                .metadata
                .name
                .as_ref()
                .is_some_and(|name| index.delete_mesh_policy(name)),
            Event::Init => {
                relists.mesh = Some(Vec::new());
                false
            }
            Event::InitDone => {
                index.replace_mesh_policies(&relists.mesh.take().unwrap_or_default());
                true
            }
        },
        Change::Service(event) => {
            apply_service(destinations, relists, event);
            false
        }
        Change::Slice(event) => {
            apply_slice(destinations, relists, event);
            false
        }
    }
}

/// A Service event; whether the index changed (which answers: [`Destinations::take_changes`]).
fn apply_service(
    destinations: &mut Destinations,
    relists: &mut Relists,
    event: Event<Box<Service>>,
) -> bool {
    match event {
        Event::Apply(s) | Event::InitApply(s) if relists.services.is_none() => service_entry(&s)
            .is_some_and(|(ns, name, info)| destinations.apply_service(&ns, &name, info)),
        Event::Apply(s) | Event::InitApply(s) => {
            relists
                .services
                .get_or_insert_default()
                .extend(service_entry(&s));
            false
        }
        Event::Delete(s) => match (&s.metadata.namespace, &s.metadata.name) {
            (Some(ns), Some(name)) => destinations.delete_service(ns, name),
            _ => false,
        },
        Event::Init => {
            relists.services = Some(Vec::new());
            false
        }
        Event::InitDone => {
            destinations.replace_services(relists.services.take().unwrap_or_default());
            true
        }
    }
}

/// An EndpointSlice event; whether the index changed (which answers: [`Destinations::take_changes`]).
fn apply_slice(
    destinations: &mut Destinations,
    relists: &mut Relists,
    event: Event<Box<EndpointSlice>>,
) -> bool {
    match event {
        Event::Apply(s) | Event::InitApply(s) if relists.slices.is_none() => slice_entry(&s)
            .is_some_and(|(ns, name, slice)| destinations.apply_slice(&ns, &name, slice)),
        Event::Apply(s) | Event::InitApply(s) => {
            relists
                .slices
                .get_or_insert_default()
                .extend(slice_entry(&s));
            false
        }
        Event::Delete(s) => match (&s.metadata.namespace, &s.metadata.name) {
            (Some(ns), Some(name)) => destinations.delete_slice(ns, name),
            _ => false,
        },
        Event::Init => {
            relists.slices = Some(Vec::new());
            false
        }
        Event::InitDone => {
            destinations.replace_slices(relists.slices.take().unwrap_or_default());
            true
        }
    }
}

/// Each policy's status as the API server has it (`namespace/name`, or `MeshPolicy/name`),
/// from the watch: a status equal to it is not written again, and a new writer (a restart, a
/// failover) continues from it instead of from nothing.
type Stored = HashMap<String, PolicyStatus>;

fn policy_key(p: &AuthorizationPolicy) -> Option<String> {
    Some(format!(
        "{}/{}",
        p.metadata.namespace.as_ref()?,
        p.metadata.name.as_ref()?
    ))
}

fn mesh_key(m: &MeshPolicy) -> Option<String> {
    Some(format!("MeshPolicy/{}", m.metadata.name.as_ref()?))
}

/// Records the status the API server holds for the policy in `change`.
fn remember(stored: &mut Stored, change: &Change) {
    let (key, status, gone) = match change {
        Change::Policy(Event::Apply(p) | Event::InitApply(p)) => {
            (policy_key(p), p.status.clone(), false)
        }
        Change::Policy(Event::Delete(p)) => (policy_key(p), None, true),
        Change::Mesh(Event::Apply(m) | Event::InitApply(m)) => {
            (mesh_key(m), m.status.clone(), false)
        }
        Change::Mesh(Event::Delete(m)) => (mesh_key(m), None, true),
        _ => return,
    };
    let Some(key) = key else { return };
    match status {
        Some(status) if !gone => {
            stored.insert(key, status);
        }
        _ => {
            stored.remove(&key);
        }
    }
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A policy whose status the controller writes.
enum Target {
    /// An AuthorizationPolicy: namespace, name.
    Namespaced(String, String),
    /// A MeshPolicy: name.
    Mesh(String),
}

/// Every policy's verdict at one moment (taken under the index lock, written without it).
fn verdicts(index: &Index) -> Vec<(Target, Verdict)> {
    let namespaced = index.policy_names().into_iter().filter_map(|(ns, name)| {
        let verdict = index.policy_verdict(&ns, &name)?;
        Some((Target::Namespaced(ns, name), verdict))
    });
    let mesh = index.mesh_policy_names().into_iter().filter_map(|name| {
        let verdict = index.mesh_verdict(&name)?;
        Some((Target::Mesh(name), verdict))
    });
    namespaced.chain(mesh).collect()
}

/// Writes the status of every policy whose status changed.
async fn write_statuses(client: &Client, verdicts: &[(Target, Verdict)], stored: &Mutex<Stored>) {
    let now = now();
    for (target, verdict) in verdicts {
        let key = match &target {
            Target::Namespaced(ns, name) => format!("{ns}/{name}"),
            Target::Mesh(name) => format!("MeshPolicy/{name}"),
        };
        let next = {
            let stored = stored.lock().unwrap_or_else(|p| p.into_inner());
            let next = status::status(verdict, stored.get(&key), &now);
            if stored.get(&key) == Some(&next) {
                continue;
            }
            next
        };
        let result = match &target {
            Target::Namespaced(ns, name) => {
                let api: Api<AuthorizationPolicy> = Api::namespaced(client.clone(), ns);
                patch_status(&api, name, &next).await
            }
            Target::Mesh(name) => {
                let api: Api<MeshPolicy> = Api::all(client.clone());
                patch_status(&api, name, &next).await
            }
        };
        match result {
            Ok(()) => {
                stored
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, next);
            }
            Err(e) => tracing::warn!(policy = %key, error = %e, "cannot write the policy's status"),
        }
    }
}

async fn patch_status<K>(api: &Api<K>, name: &str, status: &PolicyStatus) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let patch = serde_json::json!({ "status": status });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

/// What the watches keep current, and the revisions that tell the APIs something changed.
pub struct Feeds {
    /// The policy index.
    pub index: Arc<Mutex<Index>>,
    /// Bumped when a policy snapshot may have changed.
    pub policy_revision: tokio::sync::watch::Sender<u64>,
    /// The discovery index.
    pub destinations: Arc<Mutex<Destinations>>,
    /// Wakes the destination watches a change concerns.
    pub notifier: Arc<crate::discovery_api::Notifier>,
}

/// Watches until `shutdown` resolves, keeping the indexes of `feeds` current and bumping
/// their revisions after changes that can alter what proxies are sent (subscriptions
/// recompute then); sets `synced` once every watch has listed; writes policy statuses while
/// `leader` says this replica holds the Lease.
pub async fn run(
    client: Client,
    feeds: Feeds,
    synced: tokio::sync::watch::Sender<bool>,
    mut leader: tokio::sync::watch::Receiver<bool>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let Feeds {
        index,
        policy_revision: revision,
        destinations,
        notifier,
    } = feeds;
    let changes = futures::stream::select_all([
        watch(Api::<Namespace>::all(client.clone()))
            .map(|e| e.map(Change::Namespace))
            .boxed(),
        watch(Api::<Pod>::all(client.clone()))
            .map(|e| e.map(|e| Change::Pod(boxed(e))))
            .boxed(),
        watch(Api::<AuthorizationPolicy>::all(client.clone()))
            .map(|e| e.map(Change::Policy))
            .boxed(),
        watch(Api::<MeshPolicy>::all(client.clone()))
            .map(|e| e.map(Change::Mesh))
            .boxed(),
        watch(Api::<Service>::all(client.clone()))
            .map(|e| e.map(|e| Change::Service(boxed(e))))
            .boxed(),
        watch(Api::<EndpointSlice>::all(client.clone()))
            .map(|e| e.map(|e| Change::Slice(boxed(e))))
            .boxed(),
    ]);
    let mut changes = std::pin::pin!(changes);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut relists = Relists::default();
    let stored = Arc::new(Mutex::new(Stored::new()));
    // The writer runs apart, so thousands of status writes (a first sync, a failover) never
    // hold up the events proxies wait for; it always writes the latest verdicts.
    let (verdicts_tx, mut verdicts_rx) = tokio::sync::watch::channel(Arc::new(Vec::new()));
    let writer = {
        let (client, stored) = (client.clone(), stored.clone());
        tokio::spawn(async move {
            while verdicts_rx.changed().await.is_ok() {
                let verdicts = verdicts_rx.borrow_and_update().clone();
                write_statuses(&client, &verdicts, &stored).await;
            }
        })
    };
    let _stop_writer = AbortOnDrop(writer);
    let mut listed = 0u8;
    // Statuses are written at most every STATUS_INTERVAL: a verdict costs a pass over every
    // policy and its namespace's pods, so not once per event in a churning cluster.
    let mut status_tick = tokio::time::interval(STATUS_INTERVAL);
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut statuses_due = false;
    loop {
        let writer = *leader.borrow() && *synced.borrow();
        tokio::select! {
            () = &mut shutdown => return,
            // Leadership gained: write what differs from what the API server has.
            Ok(()) = leader.changed() => statuses_due = true,
            _ = status_tick.tick(), if statuses_due && writer => {
                statuses_due = false;
                let verdicts = verdicts(&index.lock().unwrap_or_else(|p| p.into_inner()));
                verdicts_tx.send_replace(Arc::new(verdicts));
            }
            change = changes.next() => {
                let change = match change {
                    None => return,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "a watch failed; retrying with backoff");
                        continue;
                    }
                    Some(Ok(change)) => change,
                };
                let (changed, discovery) = {
                    let mut index = index.lock().unwrap_or_else(|p| p.into_inner());
                    let mut destinations = destinations.lock().unwrap_or_else(|p| p.into_inner());
                    if !*synced.borrow() {
                        listed |= initial_list_done(&change);
                        if listed == ALL_LISTED {
                            synced.send_replace(true);
                        }
                    }
                    remember(&mut stored.lock().unwrap_or_else(|p| p.into_inner()), &change);
                    let changed = apply(&mut index, &mut destinations, &mut relists, change);
                    (changed, destinations.take_changes())
                };
                // Subscriptions recompute only when something they depend on may have
                // changed.
                if changed {
                    revision.send_modify(|r| *r += 1);
                }
                if !discovery.is_empty() {
                    notifier.notify(&discovery);
                }
                statuses_due = true;
            }
        }
    }
}

/// Every watch's bit in `initial_list_done`.
const ALL_LISTED: u8 = 0b11_1111;

/// Aborts a task when dropped (the status writer ends with the watches).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The bit of the watch whose first list `change` completes (0 for any other change).
fn initial_list_done(change: &Change) -> u8 {
    match change {
        Change::Namespace(Event::InitDone) => 1,
        Change::Pod(Event::InitDone) => 2,
        Change::Policy(Event::InitDone) => 4,
        Change::Mesh(Event::InitDone) => 8,
        Change::Service(Event::InitDone) => 16,
        Change::Slice(Event::InitDone) => 32,
        _ => 0,
    }
}
