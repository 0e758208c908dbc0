//! The discovery index (DESIGN section 9, Linkerd's destination model): a plain data
//! structure fed by the watches of Pods, Services and EndpointSlices that answers, for one
//! address a proxy's app connected to, who must answer there: a pod (meshed or not, its
//! SPIFFE ID), a Service (the identities of its ready endpoints, and whether they are all
//! meshed), or nothing known. No I/O here.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use warden_core::{SpiffeId, TrustDomain};

pub use warden_core::contract::DEFAULT_OPAQUE_PORTS;

/// What discovery keeps of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEndpoint {
    /// Its ServiceAccount.
    pub service_account: String,
    /// Its IPs (IPv4 and IPv6).
    pub ips: Vec<IpAddr>,
    /// It has Warden's sidecar (its server side speaks mTLS).
    pub meshed: bool,
    /// It has finished (Succeeded or Failed): its IP may already be someone else's.
    pub terminal: bool,
    /// Its `warden.dev/opaque-ports`, if set (replaces the defaults).
    pub opaque_ports: Option<Vec<u16>>,
    /// When it was created (seconds since the epoch): of two pods claiming one IP, the
    /// newer one holds it.
    pub created: i64,
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// The port's name (EndpointSlices name their ports after it).
    pub name: Option<String>,
    /// The Service port.
    pub port: u16,
    /// Its `appProtocol`.
    pub app_protocol: Option<String>,
}

/// What discovery keeps of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Its cluster IPs (none for a headless Service: its pods resolve as pods).
    pub cluster_ips: Vec<IpAddr>,
    /// Its ports.
    pub ports: Vec<ServicePort>,
}

/// What discovery keeps of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slice {
    /// The Service it belongs to (`kubernetes.io/service-name`).
    pub service: String,
    /// Its ports: name and target port.
    pub ports: Vec<(Option<String>, u16)>,
    /// Its endpoints: addresses, and whether ready.
    pub endpoints: Vec<(Vec<IpAddr>, bool)>,
}

/// What is at an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Nothing the controller knows.
    Unknown,
    /// A pod.
    Pod,
    /// A Service's cluster IP.
    Service,
}

/// How the server at a destination speaks, when known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Detect it from the app's first bytes.
    Detect,
    /// Opaque TCP.
    Opaque,
    /// HTTP/1.
    Http1,
    /// HTTP/2.
    Http2,
}

/// The answer for one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// What is there.
    pub kind: Kind,
    /// `namespace/name` of the pod or Service (empty when unknown).
    pub name: String,
    /// Every endpoint has Warden's sidecar: mTLS, and one of `identities` must answer.
    pub meshed: bool,
    /// The SPIFFE IDs the server may present, sorted.
    pub identities: Vec<SpiffeId>,
    /// How it speaks.
    pub protocol: Protocol,
    /// A Service without ready endpoints.
    pub no_endpoints: bool,
}

impl Resolution {
    fn unknown() -> Self {
        Self {
            kind: Kind::Unknown,
            name: String::new(),
            meshed: false,
            identities: Vec::new(),
            protocol: Protocol::Detect,
            no_endpoints: false,
        }
    }
}

type Key = (String, String);

/// The addresses whose answers may have changed since the last [`Destinations::take_changes`]:
/// only the watches of those are woken.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Everything may have (a re-list).
    pub all: bool,
    /// These IPs' answers may have.
    pub ips: HashSet<IpAddr>,
}

impl Changes {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        !self.all && self.ips.is_empty()
    }
}

/// The index.
#[derive(Debug)]
pub struct Destinations {
    trust_domain: TrustDomain,
    pods: HashMap<Key, PodEndpoint>,
    pods_by_ip: HashMap<IpAddr, BTreeSet<Key>>,
    services: HashMap<Key, ServiceInfo>,
    services_by_ip: HashMap<IpAddr, Key>,
    /// Slices by `(namespace, slice name)`.
    slices: HashMap<Key, Slice>,
    /// Slice names by `(namespace, service)`.
    slices_by_service: HashMap<Key, BTreeSet<String>>,
    changes: Changes,
}

impl Destinations {
    /// An empty index for `trust_domain`.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            pods: HashMap::new(),
            pods_by_ip: HashMap::new(),
            services: HashMap::new(),
            services_by_ip: HashMap::new(),
            slices: HashMap::new(),
            slices_by_service: HashMap::new(),
            changes: Changes::default(),
        }
    }

    /// What changed since the last call.
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    /// Marks the cluster IPs of Service `key` changed.
    fn touch_service(&mut self, key: &Key) {
        if let Some(service) = self.services.get(key) {
            self.changes.ips.extend(service.cluster_ips.iter().copied());
        }
    }

    /// Marks `ips` changed, and the Services with an endpoint at any of them.
    fn touch_pod_ips(&mut self, ips: &[IpAddr]) {
        self.changes.ips.extend(ips.iter().copied());
        let services: Vec<Key> = self
            .slices
            .iter()
            .filter(|(_, slice)| {
                slice
                    .endpoints
                    .iter()
                    .any(|(addresses, _)| addresses.iter().any(|a| ips.contains(a)))
            })
            .map(|((namespace, _), slice)| (namespace.clone(), slice.service.clone()))
            .collect();
        for key in &services {
            self.touch_service(key);
        }
    }

    /// A pod was added or changed; whether anything discovery answers changed.
    pub fn apply_pod(&mut self, namespace: &str, name: &str, pod: PodEndpoint) -> bool {
        let key = (namespace.to_string(), name.to_string());
        if self.pods.get(&key) == Some(&pod) {
            return false;
        }
        self.delete_pod(namespace, name);
        for ip in &pod.ips {
            self.pods_by_ip.entry(*ip).or_default().insert(key.clone());
        }
        self.touch_pod_ips(&pod.ips);
        self.pods.insert(key, pod);
        true
    }

    /// A pod was deleted; whether it was known.
    pub fn delete_pod(&mut self, namespace: &str, name: &str) -> bool {
        let key = (namespace.to_string(), name.to_string());
        let Some(old) = self.pods.remove(&key) else {
            return false;
        };
        for ip in &old.ips {
            if let Some(keys) = self.pods_by_ip.get_mut(ip) {
                keys.remove(&key);
                if keys.is_empty() {
                    self.pods_by_ip.remove(ip);
                }
            }
        }
        self.touch_pod_ips(&old.ips);
        true
    }

    /// A Service was added or changed; whether anything changed.
    pub fn apply_service(&mut self, namespace: &str, name: &str, service: ServiceInfo) -> bool {
        let key = (namespace.to_string(), name.to_string());
        if self.services.get(&key) == Some(&service) {
            return false;
        }
        self.delete_service(namespace, name);
        for ip in &service.cluster_ips {
            self.services_by_ip.insert(*ip, key.clone());
        }
        self.changes.ips.extend(service.cluster_ips.iter().copied());
        self.services.insert(key, service);
        true
    }

    /// A Service was deleted; whether it was known.
    pub fn delete_service(&mut self, namespace: &str, name: &str) -> bool {
        let key = (namespace.to_string(), name.to_string());
        let Some(old) = self.services.remove(&key) else {
            return false;
        };
        for ip in &old.cluster_ips {
            if self.services_by_ip.get(ip) == Some(&key) {
                self.services_by_ip.remove(ip);
            }
        }
        self.changes.ips.extend(old.cluster_ips.iter().copied());
        true
    }

    /// An EndpointSlice was added or changed; whether anything changed.
    pub fn apply_slice(&mut self, namespace: &str, name: &str, slice: Slice) -> bool {
        let key = (namespace.to_string(), name.to_string());
        if self.slices.get(&key) == Some(&slice) {
            return false;
        }
        self.delete_slice(namespace, name);
        let service = (namespace.to_string(), slice.service.clone());
        self.slices_by_service
            .entry(service.clone())
            .or_default()
            .insert(name.to_string());
        self.slices.insert(key, slice);
        self.touch_service(&service);
        true
    }

    /// An EndpointSlice was deleted; whether it was known.
    pub fn delete_slice(&mut self, namespace: &str, name: &str) -> bool {
        let key = (namespace.to_string(), name.to_string());
        let Some(old) = self.slices.remove(&key) else {
            return false;
        };
        let service = (namespace.to_string(), old.service);
        if let Some(names) = self.slices_by_service.get_mut(&service) {
            names.remove(name);
            if names.is_empty() {
                self.slices_by_service.remove(&service);
            }
        }
        self.touch_service(&service);
        true
    }

    /// Replaces every pod (after a re-list).
    pub fn replace_pods(&mut self, all: Vec<(String, String, PodEndpoint)>) {
        self.pods.clear();
        self.pods_by_ip.clear();
        for (namespace, name, pod) in all {
            self.apply_pod(&namespace, &name, pod);
        }
        self.changes.all = true;
    }

    /// Replaces every Service (after a re-list).
    pub fn replace_services(&mut self, all: Vec<(String, String, ServiceInfo)>) {
        self.services.clear();
        self.services_by_ip.clear();
        for (namespace, name, service) in all {
            self.apply_service(&namespace, &name, service);
        }
        self.changes.all = true;
    }

    /// Replaces every EndpointSlice (after a re-list).
    pub fn replace_slices(&mut self, all: Vec<(String, String, Slice)>) {
        self.slices.clear();
        self.slices_by_service.clear();
        for (namespace, name, slice) in all {
            self.apply_slice(&namespace, &name, slice);
        }
        self.changes.all = true;
    }

    /// The pod holding `ip` now: of several (a finished pod not yet deleted, a watch that
    /// has not caught up), the newest that has not finished.
    fn pod_at(&self, ip: IpAddr) -> Option<(&Key, &PodEndpoint)> {
        self.pods_by_ip
            .get(&ip)?
            .iter()
            .filter_map(|key| Some((key, self.pods.get(key)?)))
            .filter(|(_, pod)| !pod.terminal)
            .max_by_key(|(key, pod)| (pod.created, (*key).clone()))
    }

    fn identity(&self, namespace: &str, pod: &PodEndpoint) -> Option<SpiffeId> {
        SpiffeId::for_service_account(&self.trust_domain, namespace, &pod.service_account).ok()
    }

    /// Who must answer at `addr`.
    pub fn resolve(&self, addr: SocketAddr) -> Resolution {
        let ip = addr.ip().to_canonical();
        if let Some(key) = self.services_by_ip.get(&ip) {
            return self.resolve_service(key, addr.port());
        }
        let Some((key, pod)) = self.pod_at(ip) else {
            return Resolution::unknown();
        };
        let identities = if pod.meshed {
            self.identity(&key.0, pod).into_iter().collect()
        } else {
            Vec::new()
        };
        Resolution {
            kind: Kind::Pod,
            name: format!("{}/{}", key.0, key.1),
            meshed: pod.meshed && !identities.is_empty(),
            identities,
            protocol: if is_opaque(pod, addr.port()) {
                Protocol::Opaque
            } else {
                Protocol::Detect
            },
            no_endpoints: false,
        }
    }

    fn resolve_service(&self, key: &Key, port: u16) -> Resolution {
        let service = &self.services[key];
        let mut resolution = Resolution {
            kind: Kind::Service,
            name: format!("{}/{}", key.0, key.1),
            ..Resolution::unknown()
        };
        let Some(service_port) = service.ports.iter().find(|p| p.port == port) else {
            // kube-proxy has no rule for this port: nothing answers there.
            resolution.no_endpoints = true;
            return resolution;
        };
        resolution.protocol = app_protocol(service_port.app_protocol.as_deref());
        let mut identities = BTreeMap::new();
        let mut all_meshed = true;
        let mut any = false;
        let mut opaque = false;
        let names = self.slices_by_service.get(key).into_iter().flatten();
        for slice in names.filter_map(|n| self.slices.get(&(key.0.clone(), n.clone()))) {
            let Some(target) = slice
                .ports
                .iter()
                .find(|(name, _)| *name == service_port.name)
                .map(|(_, target)| *target)
            else {
                continue;
            };
            for (ips, ready) in &slice.endpoints {
                let Some(ip) = ips.first().filter(|_| *ready) else {
                    continue;
                };
                any = true;
                match self.pod_at(ip.to_canonical()) {
                    Some((pod_key, pod)) if pod.meshed => {
                        if let Some(id) = self.identity(&pod_key.0, pod) {
                            identities.insert(id.to_string(), id);
                        }
                        opaque |= is_opaque(pod, target);
                    }
                    // An endpoint that is not a meshed pod (a VM, a pod without the sidecar).
                    _ => all_meshed = false,
                }
            }
        }
        resolution.no_endpoints = !any;
        resolution.meshed = any && all_meshed;
        if resolution.meshed {
            resolution.identities = identities.into_values().collect();
        }
        if opaque {
            resolution.protocol = Protocol::Opaque;
        }
        resolution
    }
}

/// Whether `port` of `pod` is proxied as opaque TCP.
fn is_opaque(pod: &PodEndpoint, port: u16) -> bool {
    match &pod.opaque_ports {
        Some(ports) => ports.contains(&port),
        None => DEFAULT_OPAQUE_PORTS.contains(&port),
    }
}

/// The protocol a Service port's `appProtocol` promises.
fn app_protocol(value: Option<&str>) -> Protocol {
    match value.map(str::to_ascii_lowercase).as_deref() {
        Some("kubernetes.io/h2c" | "h2c" | "grpc" | "http2") => Protocol::Http2,
        // A WebSocket opens with an HTTP/1.1 upgrade, which the proxies carry as HTTP: its
        // request is authorized with its path, and the app gets the caller's identity.
        Some("http" | "kubernetes.io/http" | "kubernetes.io/ws") => Protocol::Http1,
        Some("kubernetes.io/wss" | "https" | "tls" | "mysql" | "redis") => Protocol::Opaque,
        _ => Protocol::Detect,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn pod(sa: &str, ips: &[&str], meshed: bool, created: i64) -> PodEndpoint {
        PodEndpoint {
            service_account: sa.into(),
            ips: ips.iter().map(|s| ip(s)).collect(),
            meshed,
            terminal: false,
            opaque_ports: None,
            created,
        }
    }

    fn service(ips: &[&str], ports: &[(&str, u16, Option<&str>)]) -> ServiceInfo {
        ServiceInfo {
            cluster_ips: ips.iter().map(|s| ip(s)).collect(),
            ports: ports
                .iter()
                .map(|(name, port, proto)| ServicePort {
                    name: Some(name.to_string()),
                    port: *port,
                    app_protocol: proto.map(str::to_string),
                })
                .collect(),
        }
    }

    fn slice(service: &str, port: (&str, u16), endpoints: &[(&str, bool)]) -> Slice {
        Slice {
            service: service.into(),
            ports: vec![(Some(port.0.to_string()), port.1)],
            endpoints: endpoints.iter().map(|(a, r)| (vec![ip(a)], *r)).collect(),
        }
    }

    fn cluster() -> Destinations {
        let mut d = Destinations::new(TrustDomain::default());
        d.apply_pod(
            "shop",
            "web-1",
            pod("web", &["10.0.0.1", "fd00::1"], true, 1),
        );
        d.apply_pod("shop", "web-2", pod("web", &["10.0.0.2"], true, 2));
        d.apply_pod("shop", "api-1", pod("api", &["10.0.0.3"], true, 3));
        d.apply_pod("shop", "legacy-1", pod("legacy", &["10.0.0.4"], false, 4));
        let mut db = pod("db", &["10.0.0.5"], true, 5);
        db.opaque_ports = Some(vec![7000]);
        d.apply_pod("data", "db-1", db);
        d.apply_service(
            "shop",
            "web",
            service(&["10.96.0.10"], &[("http", 80, None)]),
        );
        d.apply_slice(
            "shop",
            "web-abc",
            slice(
                "web",
                ("http", 8080),
                &[("10.0.0.1", true), ("10.0.0.2", true)],
            ),
        );
        d.apply_service(
            "shop",
            "mixed",
            service(
                &["10.96.0.11", "fd00:96::11"],
                &[("grpc", 9090, Some("kubernetes.io/h2c"))],
            ),
        );
        d.apply_slice(
            "shop",
            "mixed-1",
            slice(
                "mixed",
                ("grpc", 9090),
                &[("10.0.0.3", true), ("10.0.0.4", true)],
            ),
        );
        d.apply_service(
            "shop",
            "empty",
            service(&["10.96.0.12"], &[("http", 80, None)]),
        );
        d.apply_slice(
            "shop",
            "empty-1",
            slice("empty", ("http", 8080), &[("10.0.0.3", false)]),
        );
        d.apply_service(
            "data",
            "db",
            service(&["10.96.0.13"], &[("tcp", 7000, None)]),
        );
        d.apply_slice(
            "data",
            "db-1",
            slice("db", ("tcp", 7000), &[("10.0.0.5", true)]),
        );
        d
    }

    #[test]
    fn resolution_table() {
        let d = cluster();
        const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
        const DB: &str = "spiffe://cluster.local/ns/data/sa/db";
        // (address, kind, name, meshed, identities, protocol, no endpoints)
        type Row<'a> = (&'a str, Kind, &'a str, bool, &'a [&'a str], Protocol, bool);
        let rows: Vec<Row> = vec![
            // Pods, by any of their IPs; IPv4-mapped IPv6 is the IPv4 address.
            (
                "10.0.0.1:8080",
                Kind::Pod,
                "shop/web-1",
                true,
                &[WEB],
                Protocol::Detect,
                false,
            ),
            (
                "[fd00::1]:8080",
                Kind::Pod,
                "shop/web-1",
                true,
                &[WEB],
                Protocol::Detect,
                false,
            ),
            (
                "[::ffff:10.0.0.2]:8080",
                Kind::Pod,
                "shop/web-2",
                true,
                &[WEB],
                Protocol::Detect,
                false,
            ),
            // Server-speaks-first defaults; a pod's own list replaces them.
            (
                "10.0.0.1:3306",
                Kind::Pod,
                "shop/web-1",
                true,
                &[WEB],
                Protocol::Opaque,
                false,
            ),
            (
                "10.0.0.5:3306",
                Kind::Pod,
                "data/db-1",
                true,
                &[DB],
                Protocol::Detect,
                false,
            ),
            (
                "10.0.0.5:7000",
                Kind::Pod,
                "data/db-1",
                true,
                &[DB],
                Protocol::Opaque,
                false,
            ),
            // A pod without the sidecar: plain TCP.
            (
                "10.0.0.4:80",
                Kind::Pod,
                "shop/legacy-1",
                false,
                &[],
                Protocol::Detect,
                false,
            ),
            // A Service: its ready endpoints' identities, deduplicated.
            (
                "10.96.0.10:80",
                Kind::Service,
                "shop/web",
                true,
                &[WEB],
                Protocol::Detect,
                false,
            ),
            // One endpoint without the sidecar: the Service is not meshed.
            (
                "10.96.0.11:9090",
                Kind::Service,
                "shop/mixed",
                false,
                &[],
                Protocol::Http2,
                false,
            ),
            (
                "[fd00:96::11]:9090",
                Kind::Service,
                "shop/mixed",
                false,
                &[],
                Protocol::Http2,
                false,
            ),
            // No ready endpoint; a port the Service does not have.
            (
                "10.96.0.12:80",
                Kind::Service,
                "shop/empty",
                false,
                &[],
                Protocol::Detect,
                true,
            ),
            (
                "10.96.0.10:81",
                Kind::Service,
                "shop/web",
                false,
                &[],
                Protocol::Detect,
                true,
            ),
            // The backends' opaque target port makes the Service opaque.
            (
                "10.96.0.13:7000",
                Kind::Service,
                "data/db",
                true,
                &[DB],
                Protocol::Opaque,
                false,
            ),
            // Outside the cluster.
            (
                "192.0.2.1:443",
                Kind::Unknown,
                "",
                false,
                &[],
                Protocol::Detect,
                false,
            ),
        ];
        for (addr, kind, name, meshed, ids, protocol, none) in rows {
            let r = d.resolve(addr.parse().unwrap());
            let got: Vec<String> = r.identities.iter().map(|i| i.to_string()).collect();
            assert_eq!(
                (
                    r.kind,
                    r.name.as_str(),
                    r.meshed,
                    got,
                    r.protocol,
                    r.no_endpoints
                ),
                (
                    kind,
                    name,
                    meshed,
                    ids.iter().map(|s| s.to_string()).collect(),
                    protocol,
                    none
                ),
                "{addr}"
            );
        }
    }

    #[test]
    fn a_reused_ip_belongs_to_the_newest_running_pod_and_changes_are_reported() {
        let mut d = cluster();
        let at = |d: &Destinations| d.resolve("10.0.0.1:8080".parse().unwrap());
        // web-1 finishes; a pod of another ServiceAccount gets its IP.
        let mut finished = pod("web", &["10.0.0.1"], true, 1);
        finished.terminal = true;
        assert!(d.apply_pod("shop", "web-1", finished));
        assert!(d.apply_pod("shop", "pay-1", pod("pay", &["10.0.0.1"], true, 9)));
        assert_eq!(at(&d).name, "shop/pay-1");
        assert_eq!(
            at(&d).identities[0].as_str(),
            "spiffe://cluster.local/ns/shop/sa/pay"
        );
        // Even before the old one is marked finished, the newer pod holds the IP.
        let mut d = cluster();
        d.apply_pod("shop", "pay-1", pod("pay", &["10.0.0.1"], true, 9));
        assert_eq!(at(&d).name, "shop/pay-1");
        d.delete_pod("shop", "pay-1");
        assert_eq!(at(&d).name, "shop/web-1");
        assert!(d.delete_pod("shop", "web-1"));
        assert_eq!(at(&d).kind, Kind::Unknown);

        // Change reporting: an identical update is not a change.
        assert!(!d.apply_pod("shop", "web-2", pod("web", &["10.0.0.2"], true, 2)));
        assert!(!d.apply_service(
            "shop",
            "web",
            service(&["10.96.0.10"], &[("http", 80, None)])
        ));
        assert!(d.delete_slice("shop", "web-abc"));
        assert!(!d.delete_slice("shop", "web-abc"));
        let r = d.resolve("10.96.0.10:80".parse().unwrap());
        assert!(r.no_endpoints && !r.meshed);
        assert!(d.delete_service("shop", "web"));
        assert_eq!(
            d.resolve("10.96.0.10:80".parse().unwrap()).kind,
            Kind::Unknown
        );
    }

    #[test]
    fn changes_name_exactly_the_addresses_whose_answers_may_differ() {
        let mut d = cluster();
        d.take_changes();
        let ips = |list: &[&str]| -> HashSet<IpAddr> { list.iter().map(|s| ip(s)).collect() };
        // A pod behind a Service: its IPs and the Service's cluster IP.
        d.apply_pod("shop", "web-2", pod("web", &["10.0.0.2"], false, 2));
        assert_eq!(d.take_changes().ips, ips(&["10.0.0.2", "10.96.0.10"]));
        // An identical update changes nothing.
        d.apply_pod("shop", "web-2", pod("web", &["10.0.0.2"], false, 2));
        assert!(d.take_changes().is_empty());
        // A slice: its Service's cluster IPs (both families).
        d.apply_slice(
            "shop",
            "mixed-1",
            slice("mixed", ("grpc", 9090), &[("10.0.0.3", false)]),
        );
        assert_eq!(d.take_changes().ips, ips(&["10.96.0.11", "fd00:96::11"]));
        // A Service: its cluster IPs, old and new.
        d.apply_service(
            "shop",
            "empty",
            service(&["10.96.0.99"], &[("http", 80, None)]),
        );
        assert_eq!(d.take_changes().ips, ips(&["10.96.0.12", "10.96.0.99"]));
        // A pod deleted: its IPs (no Service has it as an endpoint since the slice change).
        d.delete_pod("shop", "legacy-1");
        assert_eq!(d.take_changes().ips, ips(&["10.0.0.4"]));
        // A pod that is an endpoint (ready or not): its IPs and its Services'.
        d.delete_pod("shop", "api-1");
        assert_eq!(
            d.take_changes().ips,
            ips(&["10.0.0.3", "10.96.0.11", "fd00:96::11", "10.96.0.99"])
        );
        // A re-list: everything.
        d.replace_services(Vec::new());
        assert!(d.take_changes().all);
    }

    #[test]
    fn re_lists_replace_what_was_known() {
        let mut d = cluster();
        d.replace_pods(vec![(
            "shop".into(),
            "web-9".into(),
            pod("web", &["10.0.0.9"], true, 1),
        )]);
        assert_eq!(
            d.resolve("10.0.0.1:80".parse().unwrap()).kind,
            Kind::Unknown
        );
        assert_eq!(d.resolve("10.0.0.9:80".parse().unwrap()).name, "shop/web-9");
        d.replace_slices(Vec::new());
        assert!(d.resolve("10.96.0.10:80".parse().unwrap()).no_endpoints);
        d.replace_services(Vec::new());
        assert_eq!(
            d.resolve("10.96.0.10:80".parse().unwrap()).kind,
            Kind::Unknown
        );
    }

    #[test]
    fn service_app_protocols_map_to_how_callers_send() {
        let rows = [
            (None, Protocol::Detect),
            (Some("kubernetes.io/h2c"), Protocol::Http2),
            (Some("GRPC"), Protocol::Http2),
            (Some("http"), Protocol::Http1),
            // A WebSocket's upgrade is HTTP, authorized by path with the caller's identity.
            (Some("kubernetes.io/ws"), Protocol::Http1),
            (Some("kubernetes.io/wss"), Protocol::Opaque),
            (Some("tls"), Protocol::Opaque),
            (Some("mysql"), Protocol::Opaque),
            (Some("example.com/custom"), Protocol::Detect),
        ];
        for (value, want) in rows {
            assert_eq!(app_protocol(value), want, "{value:?}");
        }
    }
}
