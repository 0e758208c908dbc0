//! `warden.discovery.v1.Destinations/Watch`: a proxy names an address its app connected to
//! and receives who must answer there ([`Destinations::resolve`]), then a new answer whenever
//! it changes, until it closes the stream (an idle destination). Any workload of the trust
//! domain may ask: the answer says who serves an address, which its callers must learn anyway.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use warden_api::discovery::v1;

use crate::destinations::{Destinations, Kind, Protocol, Resolution};
use crate::serve::Peer;

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

/// What the discovery API serves from.
#[derive(Clone)]
pub struct DiscoveryService {
    destinations: Arc<Mutex<Destinations>>,
    revision: watch::Receiver<u64>,
    synced: watch::Receiver<bool>,
    trust_domain: String,
    sync_wait: Duration,
    shutdown: CancellationToken,
}

impl DiscoveryService {
    /// The service over `destinations`, woken by `revision`; streams end (UNAVAILABLE) at
    /// `shutdown`.
    pub fn new(
        destinations: Arc<Mutex<Destinations>>,
        revision: watch::Receiver<u64>,
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
            revision,
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
            self.service.revision.borrow_and_update();
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
                changed = self.service.revision.changed() => {
                    if changed.is_err() {
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
        let peer = request
            .extensions()
            .get::<Peer>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
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
        let mut synced = self.synced.clone();
        let listed = tokio::time::timeout(self.sync_wait, synced.wait_for(|s| *s)).await;
        if !matches!(listed, Ok(Ok(_))) {
            return Err(Status::unavailable(
                "the controller has not listed every watch yet; retry",
            ));
        }
        metrics::gauge!("warden_controller_destination_watches").increment(1.0);
        let state = Watching {
            service: self.clone(),
            addr,
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
