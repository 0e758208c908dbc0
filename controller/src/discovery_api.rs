//! `warden.discovery.v1.Destinations/Watch`: a proxy names an address its app connected to
//! and receives who must answer there ([`Destinations::resolve`]), then a new answer whenever
//! it changes, until it closes the stream (an idle destination). Any workload of the trust
//! domain may ask: the answer says who serves an address, which its callers must learn anyway.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use warden_api::discovery::v1;

use crate::destinations::{Changes, Destinations, Kind, Protocol, Resolution};
use crate::serve::{peer_of, until_synced};

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

/// Wakes the destination watches whose answers may have changed: those of the changed
/// addresses, or all of them after a re-list (so a change costs what it touches, not what
/// every proxy watches).
#[derive(Debug)]
pub struct Notifier {
    all: watch::Sender<u64>,
    by_ip: Mutex<HashMap<IpAddr, watch::Sender<u64>>>,
}

impl Notifier {
    /// A notifier no watch listens to yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            all: watch::channel(0).0,
            by_ip: Mutex::new(HashMap::new()),
        })
    }

    /// Wakes the watches `changes` concerns.
    pub fn notify(&self, changes: &Changes) {
        if changes.all {
            self.all.send_modify(|r| *r += 1);
            return;
        }
        let by_ip = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        for ip in &changes.ips {
            if let Some(tx) = by_ip.get(ip) {
                tx.send_modify(|r| *r += 1);
            }
        }
    }

    /// Receivers for re-lists and for changes of `ip`.
    fn subscribe(self: &Arc<Self>, ip: IpAddr) -> Subscription {
        let mut by_ip = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        let one = by_ip
            .entry(ip)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        Subscription {
            notifier: self.clone(),
            ip,
            all: self.all.subscribe(),
            one: Some(one),
        }
    }
}

/// A watch's wake-ups; its address's entry goes with the last watch of it.
struct Subscription {
    notifier: Arc<Notifier>,
    ip: IpAddr,
    all: watch::Receiver<u64>,
    one: Option<watch::Receiver<u64>>,
}

impl Subscription {
    /// Marks everything seen so far.
    fn seen(&mut self) {
        self.all.borrow_and_update();
        if let Some(one) = &mut self.one {
            one.borrow_and_update();
        }
    }

    /// Resolves on the next wake-up; `false` if the notifier is gone.
    async fn changed(&mut self) -> bool {
        let Some(one) = &mut self.one else {
            return false;
        };
        tokio::select! {
            r = self.all.changed() => r.is_ok(),
            r = one.changed() => r.is_ok(),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.one = None;
        let mut by_ip = self
            .notifier
            .by_ip
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if by_ip
            .get(&self.ip)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            by_ip.remove(&self.ip);
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
    shutdown: CancellationToken,
}

impl DiscoveryService {
    /// The service over `destinations`, its watches woken by `notifier`; streams end
    /// (UNAVAILABLE) at `shutdown`.
    pub fn new(
        destinations: Arc<Mutex<Destinations>>,
        notifier: Arc<Notifier>,
        synced: watch::Receiver<bool>,
        trust_domain: String,
        sync_wait: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        metrics::describe_gauge!(
            "warden_controller_destination_watches",
            "Destination watches open now."
        );
        Self {
            destinations,
            notifier,
            synced,
            trust_domain,
            sync_wait,
            shutdown,
        }
    }

    fn resolve(&self, addr: SocketAddr) -> Resolution {
        self.destinations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .resolve(addr)
    }
}

/// Counts one open watch until dropped.
struct Open;

impl Drop for Open {
    fn drop(&mut self) {
        metrics::gauge!("warden_controller_destination_watches").decrement(1.0);
    }
}

/// One destination watch's stream state.
struct Watching {
    service: DiscoveryService,
    addr: SocketAddr,
    wakeups: Subscription,
    sent: Option<Resolution>,
    done: bool,
    _open: Open,
}

impl Watching {
    async fn next(mut self) -> Option<(Result<v1::Destination, Status>, Self)> {
        loop {
            if self.done {
                return None;
            }
            self.wakeups.seen();
            let now = self.service.resolve(self.addr);
            if self.sent.as_ref() != Some(&now) {
                let message = to_proto(&now);
                self.sent = Some(now);
                return Some((Ok(message), self));
            }
            tokio::select! {
                () = self.service.shutdown.cancelled() => {
                    self.done = true;
                    let status = Status::unavailable("the controller is shutting down; reconnect");
                    return Some((Err(status), self));
                }
                alive = self.wakeups.changed() => {
                    if !alive {
                        return None;
                    }
                }
            }
        }
    }
}

type DestinationStream = Pin<Box<dyn Stream<Item = Result<v1::Destination, Status>> + Send>>;

#[tonic::async_trait]
impl generated::destinations_server::Destinations for DiscoveryService {
    type WatchStream = DestinationStream;

    async fn watch(
        &self,
        request: Request<v1::DestinationRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let peer = peer_of(&request)?;
        if peer.id.trust_domain_name() != self.trust_domain || peer.id.service_account().is_none() {
            tracing::warn!(caller = %peer.id, source = %peer.addr, "refused a destination watch: not a workload of this trust domain");
            return Err(Status::unauthenticated(format!(
                "{} is not a workload identity of trust domain {}",
                peer.id, self.trust_domain
            )));
        }
        let text = request.into_inner().address;
        let addr: SocketAddr = text.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "{:?} is not ip:port",
                text.chars().take(100).collect::<String>()
            ))
        })?;
        until_synced(&self.synced, self.sync_wait).await?;
        metrics::gauge!("warden_controller_destination_watches").increment(1.0);
        let state = Watching {
            service: self.clone(),
            addr,
            wakeups: self.notifier.subscribe(addr.ip().to_canonical()),
            sent: None,
            done: false,
            _open: Open,
        };
        Ok(Response::new(Box::pin(futures::stream::unfold(
            state,
            Watching::next,
        ))))
    }
}
