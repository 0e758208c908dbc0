//! `warden.discovery.v1.Destinations/Subscribe`: a proxy adds the addresses its app connects
//! to and removes idle ones, all on one stream, and receives who must answer at each
//! ([`Destinations::resolve`]) at once and again whenever it changes. Any workload of the trust
//! domain may ask: the answer says who serves an address, which its callers must learn anyway.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use warden_api::discovery::v1;
use warden_api::grpc::MAX_WATCHED_DESTINATIONS;

use crate::destinations::{Changes, Destinations, Kind, Protocol, Resolution};
use crate::open_streams::{OpenStream, OpenStreams};
use crate::serve::{peer_of, until_synced, ServeLimits};

/// The generated server side of `warden.discovery.v1`.
#[allow(missing_docs, clippy::doc_lazy_continuation)]
pub(crate) mod generated {
    include!(concat!(env!("OUT_DIR"), "/warden.discovery.v1.rs"));
}

pub use generated::destinations_server::DestinationsServer;

/// The contract's form of a resolution.
pub fn to_proto(resolution: &Resolution) -> v1::Destination {
    let kind = match resolution.kind {
        Kind::Unknown => v1::Kind::Unknown,
        Kind::Pod => v1::Kind::Pod,
        Kind::Service => v1::Kind::Service,
    };
    let protocol = match resolution.protocol {
        Protocol::Detect => v1::Protocol::Detect,
        Protocol::Opaque => v1::Protocol::Opaque,
        Protocol::Http1 => v1::Protocol::Http1,
        Protocol::Http2 => v1::Protocol::Http2,
    };
    v1::Destination {
        kind: kind as i32,
        name: resolution.name.clone(),
        meshed: resolution.meshed,
        identities: resolution
            .identities
            .iter()
            .map(|i| i.to_string())
            .collect(),
        protocol: protocol as i32,
        no_endpoints: resolution.no_endpoints,
    }
}

/// Wakes the streams whose answers may have changed: those watching a changed IP, or all of
/// them after a re-list (so a change costs what it touches, not what every proxy watches).
#[derive(Debug)]
pub struct Notifier {
    all: watch::Sender<u64>,
    by_ip: Mutex<HashMap<IpAddr, HashMap<u64, Arc<Inbox>>>>,
    next_id: AtomicU64,
}

/// One stream's pending wake-ups: the IPs that changed since it last looked.
#[derive(Debug, Default)]
struct Inbox {
    changed: Mutex<HashSet<IpAddr>>,
    wake: Notify,
}

impl Notifier {
    /// A notifier no stream listens to yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            all: watch::channel(0).0,
            by_ip: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        })
    }

    /// Wakes the streams `changes` concerns.
    pub fn notify(&self, changes: &Changes) {
        if changes.all {
            self.all.send_modify(|r| *r += 1);
            return;
        }
        let by_ip = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        for ip in &changes.ips {
            for inbox in by_ip.get(ip).into_iter().flat_map(HashMap::values) {
                lock(&inbox.changed).insert(*ip);
                inbox.wake.notify_one();
            }
        }
    }

    /// A stream's subscriber, watching no IP yet.
    fn subscriber(self: &Arc<Self>) -> Subscriber {
        Subscriber {
            notifier: self.clone(),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            inbox: Arc::default(),
            all: self.all.subscribe(),
            ips: HashMap::new(),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// What woke a stream.
#[derive(Debug, PartialEq, Eq)]
enum Wakeup {
    /// Everything may have changed (a re-list).
    All,
    /// These IPs' answers may have changed.
    Ips(HashSet<IpAddr>),
    /// The notifier is gone.
    Closed,
}

/// One stream's registration with the [`Notifier`]: the IPs it watches (counted, since
/// several ports share an IP); they are unregistered when it drops.
struct Subscriber {
    notifier: Arc<Notifier>,
    id: u64,
    inbox: Arc<Inbox>,
    all: watch::Receiver<u64>,
    ips: HashMap<IpAddr, u32>,
}

impl Subscriber {
    /// Starts waking this stream on changes of `ip`.
    fn add(&mut self, ip: IpAddr) {
        let count = self.ips.entry(ip).or_insert(0);
        *count += 1;
        if *count == 1 {
            lock(&self.notifier.by_ip)
                .entry(ip)
                .or_default()
                .insert(self.id, self.inbox.clone());
        }
    }

    /// Stops waking this stream on changes of `ip` once no watched address has it.
    fn remove(&mut self, ip: IpAddr) {
        let Some(count) = self.ips.get_mut(&ip) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            self.ips.remove(&ip);
            self.unregister(ip);
        }
    }

    fn unregister(&self, ip: IpAddr) {
        let mut by_ip = lock(&self.notifier.by_ip);
        if let Some(streams) = by_ip.get_mut(&ip) {
            streams.remove(&self.id);
            if streams.is_empty() {
                by_ip.remove(&ip);
            }
        }
    }

    /// Resolves on the next wake-up; changes that came before are not lost (the inbox keeps
    /// them, and a re-list is a new watch value).
    async fn changed(&mut self) -> Wakeup {
        loop {
            tokio::select! {
                r = self.all.changed() => {
                    return if r.is_ok() { Wakeup::All } else { Wakeup::Closed };
                }
                () = self.inbox.wake.notified() => {
                    let ips = std::mem::take(&mut *lock(&self.inbox.changed));
                    if !ips.is_empty() {
                        return Wakeup::Ips(ips);
                    }
                }
            }
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        for ip in self.ips.keys() {
            self.unregister(*ip);
        }
    }
}

/// What the discovery API serves from.
#[derive(Clone)]
pub struct DiscoveryService {
    destinations: Arc<Mutex<Destinations>>,
    notifier: Arc<Notifier>,
    synced: watch::Receiver<bool>,
    trust_domain: String,
    sync_wait: Duration,
    /// Streams open per caller (identity and source address: one pod), each bounded by
    /// `MAX_WATCHED_DESTINATIONS`, so one workload cannot fill the controller's memory.
    open: OpenStreams<(String, IpAddr)>,
    shutdown: CancellationToken,
}

impl DiscoveryService {
    /// The service over `destinations`, its streams woken by `notifier`, within `limits`;
    /// streams end (UNAVAILABLE) at `shutdown`.
    pub fn new(
        destinations: Arc<Mutex<Destinations>>,
        notifier: Arc<Notifier>,
        synced: watch::Receiver<bool>,
        trust_domain: String,
        limits: &ServeLimits,
        shutdown: CancellationToken,
    ) -> Self {
        metrics::describe_gauge!(
            "warden_controller_destination_watches",
            "Destinations watched now, over all proxies' streams."
        );
        Self {
            destinations,
            notifier,
            synced,
            trust_domain,
            sync_wait: limits.sync_wait,
            open: OpenStreams::new(limits.max_subscriptions_per_pod),
            shutdown,
        }
    }
}

/// One proxy's stream: the addresses it watches with the answer last sent for each, and
/// the updates not sent yet.
struct Session {
    service: DiscoveryService,
    _open: OpenStream<(String, IpAddr)>,
    requests: Streaming<v1::Subscription>,
    watched: HashMap<SocketAddr, Resolution>,
    subscriber: Subscriber,
    outbox: VecDeque<v1::Update>,
    done: bool,
}

impl Session {
    async fn next(mut self) -> Option<(Result<v1::Update, Status>, Self)> {
        loop {
            if let Some(update) = self.outbox.pop_front() {
                return Some((Ok(update), self));
            }
            if self.done {
                return None;
            }
            tokio::select! {
                () = self.service.shutdown.cancelled() => {
                    self.done = true;
                    let status = Status::unavailable("the controller is shutting down; reconnect");
                    return Some((Err(status), self));
                }
                request = self.requests.message() => match request {
                    Ok(Some(subscription)) => {
                        if let Err(status) = self.apply(subscription) {
                            self.done = true;
                            return Some((Err(status), self));
                        }
                    }
                    // The proxy ended its side, or the connection broke.
                    Ok(None) | Err(_) => return None,
                },
                wakeup = self.subscriber.changed() => match wakeup {
                    Wakeup::All => self.refresh(|_| true),
                    Wakeup::Ips(ips) => self.refresh(|addr| ips.contains(&addr.ip().to_canonical())),
                    Wakeup::Closed => return None,
                },
            }
        }
    }

    /// Adds and removes addresses, queueing the answer for each added one; a malformed
    /// address, or more than a proxy may watch, ends the stream.
    fn apply(&mut self, subscription: v1::Subscription) -> Result<(), Status> {
        for text in &subscription.remove {
            let addr = parse_address(text)?;
            if self.watched.remove(&addr).is_some() {
                self.subscriber.remove(addr.ip().to_canonical());
                metrics::gauge!("warden_controller_destination_watches").decrement(1.0);
            }
        }
        let destinations = lock(&self.service.destinations);
        for text in &subscription.add {
            let addr = parse_address(text)?;
            if let Some(sent) = self.watched.get(&addr) {
                // The proxy may have dropped and re-added it in one batch: answer again.
                self.outbox.push_back(update(addr, sent));
                continue;
            }
            if self.watched.len() >= MAX_WATCHED_DESTINATIONS {
                return Err(Status::resource_exhausted(format!(
                    "more than {MAX_WATCHED_DESTINATIONS} destinations on one stream"
                )));
            }
            let now = destinations.resolve(addr);
            self.outbox.push_back(update(addr, &now));
            self.watched.insert(addr, now);
            self.subscriber.add(addr.ip().to_canonical());
            metrics::gauge!("warden_controller_destination_watches").increment(1.0);
        }
        Ok(())
    }

    /// Queues the answers that changed among the watched addresses `affected` selects.
    fn refresh(&mut self, affected: impl Fn(&SocketAddr) -> bool) {
        let destinations = lock(&self.service.destinations);
        for (addr, sent) in self.watched.iter_mut().filter(|(a, _)| affected(a)) {
            let now = destinations.resolve(*addr);
            if *sent != now {
                self.outbox.push_back(update(*addr, &now));
                *sent = now;
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        metrics::gauge!("warden_controller_destination_watches")
            .decrement(self.watched.len() as f64);
    }
}

/// An address a proxy sent; malformed, the stream ends with INVALID_ARGUMENT naming it.
fn parse_address(text: &str) -> Result<SocketAddr, Status> {
    text.parse().map_err(|_| {
        Status::invalid_argument(format!(
            "{:?} is not ip:port",
            text.chars().take(100).collect::<String>()
        ))
    })
}

/// The update for `address` (written in its canonical form, as the proxy sends it).
fn update(address: SocketAddr, resolution: &Resolution) -> v1::Update {
    v1::Update {
        address: address.to_string(),
        destination: Some(to_proto(resolution)),
    }
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<v1::Update, Status>> + Send>>;

#[tonic::async_trait]
impl generated::destinations_server::Destinations for DiscoveryService {
    type SubscribeStream = UpdateStream;

    async fn subscribe(
        &self,
        request: Request<Streaming<v1::Subscription>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let peer = peer_of(&request)?;
        if peer.id.trust_domain_name() != self.trust_domain || peer.id.service_account().is_none() {
            tracing::warn!(caller = %peer.id, source = %peer.addr, "refused a discovery stream: not a workload of this trust domain");
            return Err(Status::unauthenticated(format!(
                "{} is not a workload identity of trust domain {}",
                peer.id, self.trust_domain
            )));
        }
        until_synced(&self.synced, self.sync_wait).await?;
        let caller = (peer.id.to_string(), peer.addr.ip().to_canonical());
        let open = self.open.try_open(caller).map_err(|count| {
            tracing::warn!(caller = %peer.id, source = %peer.addr, open = count, "refused a discovery stream: too many open for this caller");
            Status::resource_exhausted(format!(
                "{} already has {count} discovery streams open from {}",
                peer.id,
                peer.addr.ip()
            ))
        })?;
        let session = Session {
            service: self.clone(),
            _open: open,
            requests: request.into_inner(),
            watched: HashMap::new(),
            subscriber: self.notifier.subscriber(),
            outbox: VecDeque::new(),
            done: false,
        };
        Ok(Response::new(Box::pin(futures::stream::unfold(
            session,
            Session::next,
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn changes(ips: &[&str]) -> Changes {
        Changes {
            all: false,
            ips: ips.iter().map(|i| ip(i)).collect(),
        }
    }

    #[tokio::test]
    async fn a_stream_is_woken_by_the_ips_it_watches_only() {
        let notifier = Notifier::new();
        let mut one = notifier.subscriber();
        let mut two = notifier.subscriber();
        one.add(ip("10.0.0.1"));
        one.add(ip("10.0.0.1")); // a second port
        one.add(ip("10.0.0.2"));
        two.add(ip("10.0.0.2"));
        notifier.notify(&changes(&["10.0.0.1", "10.0.0.9"]));
        notifier.notify(&changes(&["10.0.0.2"]));
        let both: HashSet<_> = [ip("10.0.0.1"), ip("10.0.0.2")].into();
        assert_eq!(one.changed().await, Wakeup::Ips(both));
        assert_eq!(two.changed().await, Wakeup::Ips([ip("10.0.0.2")].into()));

        // One port of 10.0.0.1 removed: still woken; both removed: no longer.
        one.remove(ip("10.0.0.1"));
        notifier.notify(&changes(&["10.0.0.1"]));
        assert_eq!(one.changed().await, Wakeup::Ips([ip("10.0.0.1")].into()));
        one.remove(ip("10.0.0.1"));
        notifier.notify(&changes(&["10.0.0.1"]));
        // Looked at directly: `changed` would pick at random between this and the re-list.
        assert!(!lock(&notifier.by_ip).contains_key(&ip("10.0.0.1")));
        assert!(
            lock(&one.inbox.changed).is_empty(),
            "not woken for 10.0.0.1"
        );
        notifier.notify(&Changes {
            all: true,
            ips: HashSet::new(),
        });
        assert_eq!(one.changed().await, Wakeup::All, "a re-list, not 10.0.0.1");

        // A dropped stream leaves nothing behind.
        drop(one);
        drop(two);
        assert!(lock(&notifier.by_ip).is_empty());
    }
}
