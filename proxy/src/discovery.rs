//! The discovery client (DESIGN section 9, Linkerd's destination model): for each address
//! the app connects to, one `warden.discovery.v1.Destinations/Watch` stream at the controller,
//! opened on first use and closed when the destination has been idle for a while, so the
//! proxy's memory follows its app's fan-out, not the cluster's size. All streams share the
//! proxy's one HTTP/2 connection to the controller with its policy stream. While the controller is unreachable, known destinations keep their
//! last answer; a destination never answered is unknown (the caller applies the rule for
//! unknown destinations).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use warden_api::discovery::v1;
use warden_api::grpc::{self, MAX_SNAPSHOT_BYTES};
use warden_core::SpiffeId;
use warden_identity::rotation::{backoff, random_unit, RotationOptions};

use crate::grpc_client::{self, ChannelState, SharedChannel};

/// What is at a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Nothing the controller knows (outside the cluster, or not yet known).
    Unknown,
    /// A pod.
    Pod,
    /// A Service's cluster IP.
    Service,
}

/// How the server at a destination speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolHint {
    /// Detect it from the app's first bytes.
    Detect,
    /// Opaque TCP: no detection wait.
    Opaque,
    /// HTTP/1.
    Http1,
    /// HTTP/2.
    Http2,
}

/// The controller's answer for one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// What is there.
    pub kind: Kind,
    /// `namespace/name` of the pod or Service.
    pub name: String,
    /// mTLS, and one of `identities` must answer.
    pub meshed: bool,
    /// Who may answer (non-empty when meshed).
    pub identities: Arc<[SpiffeId]>,
    /// How it speaks.
    pub protocol: ProtocolHint,
    /// A Service without ready endpoints.
    pub no_endpoints: bool,
}

impl Resolved {
    /// The answer in `message`; an identity that is not a SPIFFE ID refuses it whole.
    pub fn from_proto(message: &v1::Destination) -> Result<Self, String> {
        let identities = message
            .identities
            .iter()
            .map(|i| SpiffeId::parse(i).map_err(|e| format!("identity {i:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let kind = match v1::Kind::try_from(message.kind) {
            Ok(v1::Kind::Pod) => Kind::Pod,
            Ok(v1::Kind::Service) => Kind::Service,
            _ => Kind::Unknown,
        };
        let protocol = match v1::Protocol::try_from(message.protocol) {
            Ok(v1::Protocol::Opaque) => ProtocolHint::Opaque,
            Ok(v1::Protocol::Http1) => ProtocolHint::Http1,
            Ok(v1::Protocol::Http2) => ProtocolHint::Http2,
            _ => ProtocolHint::Detect,
        };
        Ok(Self {
            kind,
            name: message.name.clone(),
            // Meshed with nobody to expect cannot be verified: treat as not meshed.
            meshed: message.meshed && !identities.is_empty(),
            identities: identities.into(),
            protocol,
            no_endpoints: message.no_endpoints,
        })
    }
}

/// Bounds and timings of the discovery client.
#[derive(Debug, Clone)]
pub struct DiscoveryOptions {
    /// How long a connection waits for the first answer about a new destination before the
    /// rule for unknown destinations applies.
    pub lookup_timeout: Duration,
    /// A destination not looked up for this long is dropped (its stream closed).
    pub idle: Duration,
    /// Destinations watched at once; beyond it new ones are unknown (and counted).
    pub max_destinations: usize,
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        Self {
            lookup_timeout: Duration::from_secs(1),
            idle: Duration::from_secs(300),
            max_destinations: grpc::MAX_WATCHED_DESTINATIONS,
        }
    }
}

/// One watched destination: its latest answer and when it was last used.
struct Watched {
    answer: watch::Receiver<Option<Arc<Resolved>>>,
    last_used_ms: AtomicU64,
    task: tokio::task::AbortHandle,
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The discovery client.
pub struct Discovery {
    channel: Arc<SharedChannel>,
    options: DiscoveryOptions,
    destinations: Mutex<HashMap<SocketAddr, Arc<Watched>>>,
    started: Instant,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("channel", &self.channel)
            .field("destinations", &self.watched())
            .finish()
    }
}

fn describe_metrics() {
    metrics::describe_gauge!(
        "warden_discovery_destinations",
        "Destinations this proxy watches now."
    );
    metrics::describe_counter!(
        "warden_discovery_lookups_total",
        "Destination lookups, by result (cached, fetched, timeout: handled as unknown, full)."
    );
}

impl Discovery {
    /// A client asking the controller on `channel`.
    pub fn new(channel: Arc<SharedChannel>, options: DiscoveryOptions) -> Arc<Self> {
        describe_metrics();
        Arc::new(Self {
            channel,
            options,
            destinations: Mutex::new(HashMap::new()),
            started: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The answer for `addr`: at once when it is watched already, else after the first
    /// answer (at most `lookup_timeout`). `None`: unknown, because the controller did not
    /// answer in time (it may still answer later connections).
    pub async fn resolve(self: &Arc<Self>, addr: SocketAddr) -> Option<Arc<Resolved>> {
        let watched = {
            let mut destinations = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
            match destinations.get(&addr) {
                Some(w) => w.clone(),
                None if destinations.len() >= self.options.max_destinations => {
                    metrics::counter!("warden_discovery_lookups_total", "result" => "full")
                        .increment(1);
                    return None;
                }
                None => {
                    let (tx, rx) = watch::channel(None);
                    let task = tokio::spawn(self.clone().watch_destination(addr, tx));
                    let watched = Arc::new(Watched {
                        answer: rx,
                        last_used_ms: AtomicU64::new(0),
                        task: task.abort_handle(),
                    });
                    destinations.insert(addr, watched.clone());
                    metrics::gauge!("warden_discovery_destinations").set(destinations.len() as f64);
                    watched
                }
            }
        };
        watched.last_used_ms.store(self.now_ms(), Ordering::Relaxed);
        let mut answer = watched.answer.clone();
        if let Some(known) = answer.borrow().clone() {
            metrics::counter!("warden_discovery_lookups_total", "result" => "cached").increment(1);
            return Some(known);
        }
        let waited = tokio::time::timeout(
            self.options.lookup_timeout,
            answer.wait_for(Option::is_some),
        )
        .await;
        match waited {
            Ok(Ok(known)) => {
                metrics::counter!("warden_discovery_lookups_total", "result" => "fetched")
                    .increment(1);
                known.clone()
            }
            _ => {
                metrics::counter!("warden_discovery_lookups_total", "result" => "timeout")
                    .increment(1);
                tracing::info!(destination = %addr, "no answer from the controller in time; handling the destination as unknown");
                None
            }
        }
    }

    /// The answers for `addr` as they change, if it is watched (after [`Discovery::resolve`]).
    pub fn changes(&self, addr: SocketAddr) -> Option<watch::Receiver<Option<Arc<Resolved>>>> {
        self.destinations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
            .map(|w| w.answer.clone())
    }

    /// `/ready`'s line: how many destinations are watched, and the connection's state.
    pub fn describe(&self) -> String {
        let connection = match self.channel.state() {
            ChannelState::Connected(address) => format!("connected to the controller at {address}"),
            ChannelState::Disconnected => {
                "not connected to the controller (known destinations keep their last answers)"
                    .to_string()
            }
            ChannelState::Connecting => "connecting to the controller".to_string(),
        };
        format!("{} destinations watched; {connection}", self.watched())
    }

    /// Destinations watched now.
    pub fn watched(&self) -> usize {
        self.destinations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Keeps `answer` current for `addr` until aborted (when the destination goes idle),
    /// reconnecting with backoff; the last answer stays while the controller is away.
    async fn watch_destination(
        self: Arc<Self>,
        addr: SocketAddr,
        answer: watch::Sender<Option<Arc<Resolved>>>,
    ) {
        let retry = RotationOptions {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            ..Default::default()
        };
        let mut attempt = 0u32;
        loop {
            let result = async {
                let (address, mut channel) = self.channel.get(attempt as usize).await?;
                let request = grpc::frame(&v1::DestinationRequest {
                    address: addr.to_string(),
                });
                let body =
                    grpc_client::call(&mut channel, &address, grpc::WATCH_DESTINATION, request)
                        .await?;
                attempt = 0;
                grpc_client::read_messages(
                    body,
                    &address,
                    MAX_SNAPSHOT_BYTES,
                    |message: v1::Destination| match Resolved::from_proto(&message) {
                        Ok(resolved) => {
                            answer.send_if_modified(|current| {
                                let changed = current.as_deref() != Some(&resolved);
                                if changed {
                                    *current = Some(Arc::new(resolved));
                                }
                                changed
                            });
                        }
                        Err(error) => {
                            tracing::error!(destination = %addr, %error, "refused a destination answer; keeping the last one");
                        }
                    },
                )
                .await
            }
            .await;
            let delay = backoff(attempt, &retry, random_unit());
            attempt = attempt.saturating_add(1);
            if let Err(error) = result {
                tracing::debug!(destination = %addr, %error, retry_in = ?delay, "destination watch ended");
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// Drops destinations idle longer than `idle`, every quarter of it, until `shutdown`;
    /// then drops them all.
    pub async fn sweep_until(self: Arc<Self>, shutdown: CancellationToken) {
        let period = (self.options.idle / 4).max(Duration::from_millis(10));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(period) => {}
            }
            self.sweep();
        }
        self.destinations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Drops the destinations idle longer than `idle` now.
    pub fn sweep(&self) {
        let now = self.now_ms();
        let idle = self.options.idle.as_millis() as u64;
        let mut destinations = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
        destinations
            .retain(|_, w| now.saturating_sub(w.last_used_ms.load(Ordering::Relaxed)) < idle);
        metrics::gauge!("warden_discovery_destinations").set(destinations.len() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client with a real SVID whose controller is nowhere (nothing connects here).
    fn client() -> Arc<Discovery> {
        use warden_identity::rotation::{Credentials, TlsOptions};
        let generated = warden_identity::ca::generate(&warden_identity::ca::InitOptions::new(
            warden_core::TrustDomain::default(),
        ))
        .unwrap();
        let ca = generated.authority().unwrap();
        let id = SpiffeId::parse("spiffe://cluster.local/ns/a/sa/b").unwrap();
        let svid = ca.issue(&id, Duration::from_secs(3600)).unwrap();
        let trust = Arc::new(warden_identity::TrustStore::single(ca.bundle().clone()));
        let options = TlsOptions {
            server_alpn: vec![],
            client_alpn: vec![],
            client_auth: warden_identity::tls::ClientAuth::Required,
        };
        let (_, credentials) =
            watch::channel(Arc::new(Credentials::build(svid, trust, &options).unwrap()));
        let target = grpc_client::ControlPlaneClient {
            addresses: vec!["127.0.0.1:9".into()],
            server_id: id,
            pod: String::new(),
            connect_timeout: Duration::from_secs(1),
        };
        Discovery::new(
            SharedChannel::new(target, credentials),
            DiscoveryOptions::default(),
        )
    }

    #[test]
    fn a_watched_destination_costs_little_memory() {
        let discovery = client();
        let (tx, _rx) = watch::channel(None);
        let task = discovery.watch_destination("10.0.0.1:80".parse().unwrap(), tx);
        let size = std::mem::size_of_val(&task);
        eprintln!("watch task: {size} bytes");
        assert!(size <= 1024, "a watch task's future is {size} bytes");
    }

    #[test]
    fn answers_are_read_whole_and_meshed_needs_someone_to_expect() {
        let message = |meshed: bool, identities: &[&str]| v1::Destination {
            kind: v1::Kind::Service as i32,
            name: "shop/web".into(),
            meshed,
            identities: identities.iter().map(|s| s.to_string()).collect(),
            protocol: v1::Protocol::Http2 as i32,
            no_endpoints: false,
        };
        let r = Resolved::from_proto(&message(true, &["spiffe://cluster.local/ns/shop/sa/web"]))
            .unwrap();
        assert!(r.meshed && r.identities.len() == 1 && r.protocol == ProtocolHint::Http2);
        assert!(!Resolved::from_proto(&message(true, &[])).unwrap().meshed);
        let bad = Resolved::from_proto(&message(true, &["spiffe://Bad/x"])).unwrap_err();
        assert!(bad.starts_with("identity \"spiffe://Bad/x\""), "{bad}");
        let unknown = v1::Destination {
            kind: 42,
            protocol: 42,
            ..Default::default()
        };
        let r = Resolved::from_proto(&unknown).unwrap();
        assert_eq!((r.kind, r.protocol), (Kind::Unknown, ProtocolHint::Detect));
    }
}
