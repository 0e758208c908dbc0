//! `warden.policy.v1.InboundPolicy/Watch`: a proxy presents its SVID and names its pod; the
//! controller admits the subscription only when the pod exists in the SVID's namespace, runs
//! as the SVID's ServiceAccount and has the connection's source IP ([`admit`], pure and
//! table-tested), then streams one full snapshot and a new one whenever the index changes
//! what that pod enforces.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::Stream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use warden_api::convert::{snapshot_to_proto, PolicySnapshot};
use warden_api::policy::v1;
use warden_core::policy::evaluate::DefaultPolicy;
use warden_core::SpiffeId;

use crate::crd::MeshDefault;
use crate::index::{Index, Snapshot};
use crate::open_streams::{OpenStream, OpenStreams};
use crate::serve::{peer_of, until_synced, ServeLimits};

/// The generated server side of `warden.policy.v1`.
#[allow(missing_docs, clippy::doc_lazy_continuation)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/warden.policy.v1.rs"));
}

use generated::inbound_policy_server::InboundPolicy;
pub use generated::inbound_policy_server::InboundPolicyServer;

/// Why a subscription is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The SVID is not a Kubernetes workload's of this trust domain.
    #[error("{id} is not a workload identity of trust domain {trust_domain}")]
    NotAWorkload {
        /// The caller's ID.
        id: String,
        /// The controller's trust domain.
        trust_domain: String,
    },
    /// The request names no valid pod.
    #[error("{0:?} is not a pod name")]
    BadName(String),
    /// No such pod in the SVID's namespace.
    #[error("no pod {namespace}/{pod}")]
    NoPod {
        /// The SVID's namespace.
        namespace: String,
        /// The claimed pod.
        pod: String,
    },
    /// The pod runs as another ServiceAccount.
    #[error("pod {namespace}/{pod} runs as ServiceAccount {actual}, not as {claimed}")]
    OtherServiceAccount {
        /// The SVID's namespace.
        namespace: String,
        /// The claimed pod.
        pod: String,
        /// The SVID's ServiceAccount.
        claimed: String,
        /// The pod's.
        actual: String,
    },
    /// The pod has another IP (or none yet) than the connection comes from.
    #[error("pod {namespace}/{pod} has IP {actual}, not the caller's {source_ip}")]
    OtherAddress {
        /// The SVID's namespace.
        namespace: String,
        /// The claimed pod.
        pod: String,
        /// The connection's source IP.
        source_ip: IpAddr,
        /// The pod's IPs (`none` before it has one).
        actual: String,
    },
}

impl Refusal {
    /// The gRPC status for this refusal (one place maps errors to statuses).
    pub fn status(&self) -> Status {
        match self {
            Refusal::NotAWorkload { .. } => Status::unauthenticated(self.to_string()),
            Refusal::BadName(_) => Status::invalid_argument(self.to_string()),
            Refusal::NoPod { .. } => Status::not_found(self.to_string()),
            Refusal::OtherServiceAccount { .. } | Refusal::OtherAddress { .. } => {
                Status::permission_denied(self.to_string())
            }
        }
    }

    /// A short label for the refusal metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NotAWorkload { .. } => "not-a-workload",
            Refusal::BadName(_) => "bad-name",
            Refusal::NoPod { .. } => "no-pod",
            Refusal::OtherServiceAccount { .. } => "other-service-account",
            Refusal::OtherAddress { .. } => "other-address",
        }
    }
}

/// Whether `caller`, connecting from `source`, may read the policies of pod `pod`; on
/// success, the pod's namespace. A proxy can only ever read its own pod's policies.
pub fn admit(
    index: &Index,
    trust_domain: &str,
    caller: &SpiffeId,
    pod: &str,
    source: IpAddr,
) -> Result<String, Refusal> {
    let not_a_workload = || Refusal::NotAWorkload {
        id: caller.to_string(),
        trust_domain: trust_domain.to_string(),
    };
    if caller.trust_domain_name() != trust_domain {
        return Err(not_a_workload());
    }
    let (namespace, service_account) = caller.service_account().ok_or_else(not_a_workload)?;
    if !is_dns_subdomain(pod) {
        return Err(Refusal::BadName(pod.chars().take(300).collect()));
    }
    let info = index.pod(namespace, pod).ok_or_else(|| Refusal::NoPod {
        namespace: namespace.to_string(),
        pod: pod.to_string(),
    })?;
    if info.service_account != service_account {
        return Err(Refusal::OtherServiceAccount {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            claimed: service_account.to_string(),
            actual: info.service_account.clone(),
        });
    }
    if !info.ips.contains(&source.to_canonical()) {
        let actual: Vec<String> = info.ips.iter().map(IpAddr::to_string).collect();
        return Err(Refusal::OtherAddress {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            source_ip: source.to_canonical(),
            actual: if actual.is_empty() {
                "none".to_string()
            } else {
                actual.join(", ")
            },
        });
    }
    Ok(namespace.to_string())
}

/// A pod name: a DNS subdomain (lower-case alphanumerics, `-` and `.`, at most 253).
fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// The contract's form of an index snapshot.
pub fn to_policy_snapshot(snapshot: &Snapshot, version: u64) -> PolicySnapshot {
    PolicySnapshot {
        version: version.to_string(),
        policies: snapshot.policies.clone(),
        default: match snapshot.default {
            MeshDefault::Deny => DefaultPolicy::Deny,
            MeshDefault::AllAuthenticated => DefaultPolicy::AllAuthenticated,
            MeshDefault::Audit => DefaultPolicy::Audit,
        },
        mesh_only: snapshot.mesh_only,
        refuse_unknown: snapshot.refuse_unknown,
        allowed_annotations: snapshot
            .allowed_annotations
            .iter()
            .filter_map(|a| serde_json::to_value(a).ok()?.as_str().map(str::to_string))
            .collect(),
    }
}

/// What the API serves from: the index, its revision (bumped on every change), whether every
/// watch has listed, and the subscriptions open per pod.
#[derive(Clone)]
pub struct PolicyService {
    index: Arc<Mutex<Index>>,
    revision: watch::Receiver<u64>,
    synced: watch::Receiver<bool>,
    trust_domain: String,
    limits: ServeLimits,
    /// Subscriptions open per pod (namespace, name).
    open: OpenStreams<(String, String)>,
    shutdown: CancellationToken,
}

impl PolicyService {
    /// The service over `index`; streams end (UNAVAILABLE: reconnect elsewhere) at `shutdown`.
    pub fn new(
        index: Arc<Mutex<Index>>,
        revision: watch::Receiver<u64>,
        synced: watch::Receiver<bool>,
        trust_domain: String,
        limits: ServeLimits,
        shutdown: CancellationToken,
    ) -> Self {
        describe_metrics();
        Self {
            index,
            revision,
            synced,
            trust_domain,
            open: OpenStreams::new(limits.max_subscriptions_per_pod),
            limits,
            shutdown,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn describe_metrics() {
    metrics::describe_gauge!(
        "warden_controller_subscriptions",
        "Policy subscriptions open now."
    );
    metrics::describe_counter!(
        "warden_controller_subscriptions_refused_total",
        "Policy subscriptions refused, by reason."
    );
    metrics::describe_counter!(
        "warden_controller_snapshots_sent_total",
        "Policy snapshots sent to proxies."
    );
}

/// Counts one open subscription of a pod until dropped (and in the gauge).
struct Subscription {
    _open: OpenStream<(String, String)>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        metrics::gauge!("warden_controller_subscriptions").decrement(1.0);
    }
}

/// One subscription's stream state.
struct Watching {
    service: PolicyService,
    namespace: String,
    pod: String,
    caller: SpiffeId,
    source: IpAddr,
    sent: Option<Snapshot>,
    done: bool,
    _subscription: Subscription,
}

impl Watching {
    /// The next message: a changed snapshot, or the status that ends the stream.
    async fn next(mut self) -> Option<(Result<v1::Snapshot, Status>, Self)> {
        loop {
            if self.done {
                return None;
            }
            let revision = *self.service.revision.borrow_and_update();
            let current = {
                let index = self.service.lock();
                admit(
                    &index,
                    &self.service.trust_domain,
                    &self.caller,
                    &self.pod,
                    self.source,
                )
                .map(|_| index.snapshot(&self.namespace, &self.pod))
            };
            match current {
                Err(refusal) => {
                    // The pod is gone, or now someone else's: the stream ends.
                    tracing::info!(pod = %format!("{}/{}", self.namespace, self.pod), %refusal, "ending a policy subscription");
                    self.done = true;
                    return Some((Err(refusal.status()), self));
                }
                Ok(Some(snapshot)) if self.sent.as_ref() != Some(&snapshot) => {
                    let message = snapshot_to_proto(&to_policy_snapshot(&snapshot, revision));
                    self.sent = Some(snapshot);
                    metrics::counter!("warden_controller_snapshots_sent_total").increment(1);
                    return Some((Ok(message), self));
                }
                Ok(_) => {}
            }
            tokio::select! {
                () = self.service.shutdown.cancelled() => {
                    self.done = true;
                    let status = Status::unavailable("the controller is shutting down; reconnect");
                    return Some((Err(status), self));
                }
                changed = self.service.revision.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
            }
        }
    }
}

/// The stream of snapshots one subscription receives.
type SnapshotStream = Pin<Box<dyn Stream<Item = Result<v1::Snapshot, Status>> + Send>>;

#[tonic::async_trait]
impl InboundPolicy for PolicyService {
    type WatchStream = SnapshotStream;

    async fn watch(
        &self,
        request: Request<v1::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let peer = peer_of(&request)?;
        let pod = request.into_inner().pod;
        until_synced(&self.synced, self.limits.sync_wait).await?;
        let admitted = admit(
            &self.lock(),
            &self.trust_domain,
            &peer.id,
            &pod,
            peer.addr.ip(),
        );
        let namespace = match admitted {
            Ok(namespace) => namespace,
            Err(refusal) => {
                tracing::warn!(caller = %peer.id, source = %peer.addr, claimed_pod = %pod.chars().take(300).collect::<String>(), %refusal, "refused a policy subscription");
                metrics::counter!("warden_controller_subscriptions_refused_total", "reason" => refusal.reason()).increment(1);
                return Err(refusal.status());
            }
        };
        let open = match self.open.try_open((namespace.clone(), pod.clone())) {
            Ok(open) => open,
            Err(count) => {
                tracing::warn!(caller = %peer.id, pod = %format!("{namespace}/{pod}"), open = count, "refused a policy subscription: too many open for this pod");
                metrics::counter!("warden_controller_subscriptions_refused_total", "reason" => "too-many").increment(1);
                return Err(Status::resource_exhausted(format!(
                    "pod {namespace}/{pod} already has {count} policy subscriptions open"
                )));
            }
        };
        metrics::gauge!("warden_controller_subscriptions").increment(1.0);
        tracing::debug!(caller = %peer.id, pod = %format!("{namespace}/{pod}"), "policy subscription");
        let state = Watching {
            service: self.clone(),
            namespace,
            pod,
            caller: peer.id,
            source: peer.addr.ip(),
            sent: None,
            done: false,
            _subscription: Subscription { _open: open },
        };
        let stream = futures::stream::unfold(state, Watching::next);
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::PodInfo;

    fn id(text: &str) -> SpiffeId {
        SpiffeId::parse(text).unwrap()
    }

    #[test]
    fn a_proxy_may_read_only_its_own_pods_policies() {
        let mut index = Index::new();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        index.apply_pod(
            "shop",
            "web-1",
            PodInfo {
                service_account: "web".into(),
                ips: vec![ip("10.0.0.7")],
            },
        );
        index.apply_pod(
            "shop",
            "db-1",
            PodInfo {
                service_account: "db".into(),
                ips: vec![ip("10.0.0.9")],
            },
        );
        index.apply_pod(
            "shop",
            "web-2",
            PodInfo {
                service_account: "web".into(),
                ips: Vec::new(),
            },
        );
        index.apply_pod(
            "shop",
            "web-3",
            PodInfo {
                service_account: "web".into(),
                ips: vec![ip("10.0.0.11"), ip("fd00::11")],
            },
        );
        let web = id("spiffe://cluster.local/ns/shop/sa/web");
        // (caller, claimed pod, source, outcome: the namespace or the refusal's reason)
        let cases: [(SpiffeId, &str, &str, Result<&str, &str>); 12] = [
            (web.clone(), "web-1", "10.0.0.7", Ok("shop")),
            // A dual-stack pod calls from either family's address.
            (web.clone(), "web-3", "fd00::11", Ok("shop")),
            (web.clone(), "web-3", "10.0.0.11", Ok("shop")),
            // IPv4-mapped IPv6 (a dual-stack listener) is the same address.
            (web.clone(), "web-1", "::ffff:10.0.0.7", Ok("shop")),
            (web.clone(), "web-1", "10.0.0.8", Err("other-address")),
            (web.clone(), "web-2", "10.0.0.7", Err("other-address")),
            (
                web.clone(),
                "db-1",
                "10.0.0.9",
                Err("other-service-account"),
            ),
            (web.clone(), "nope", "10.0.0.7", Err("no-pod")),
            (web.clone(), "../db-1", "10.0.0.7", Err("bad-name")),
            // Another namespace's pod is looked up in the SVID's namespace: not found.
            (
                id("spiffe://cluster.local/ns/other/sa/web"),
                "web-1",
                "10.0.0.7",
                Err("no-pod"),
            ),
            (
                id("spiffe://elsewhere.example/ns/shop/sa/web"),
                "web-1",
                "10.0.0.7",
                Err("not-a-workload"),
            ),
            (
                id("spiffe://cluster.local/vm/legacy"),
                "web-1",
                "10.0.0.7",
                Err("not-a-workload"),
            ),
        ];
        for (caller, pod, source, want) in cases {
            let got = admit(&index, "cluster.local", &caller, pod, ip(source));
            match (got, want) {
                (Ok(ns), Ok(want)) => assert_eq!(ns, want),
                (Err(refusal), Err(want)) => {
                    assert_eq!(refusal.reason(), want, "{caller} {pod} {source}: {refusal}")
                }
                (got, want) => panic!("{caller} {pod} {source}: {got:?}, want {want:?}"),
            }
        }
        let refusal = admit(&index, "cluster.local", &web, "db-1", ip("10.0.0.9")).unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "pod shop/db-1 runs as ServiceAccount db, not as web"
        );
        assert_eq!(refusal.status().code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn pod_names_are_dns_subdomains() {
        for good in ["web-1", "a", "web.v2-abc"] {
            assert!(is_dns_subdomain(good), "{good}");
        }
        for bad in ["", "Web", "-a", "a-", "a/b", "a b", &"a".repeat(254)] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }
}
