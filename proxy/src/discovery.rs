//! The discovery client (DESIGN section 9, Linkerd's destination model over one stream, as
//! Istio's on-demand delta xDS): the proxy adds each address its app connects to to its one
//! `warden.discovery.v1.Destinations/Subscribe` stream on first use and removes it once it has
//! been idle for a while, so its memory follows its app's fan-out, not the cluster's size; the
//! stream shares the proxy's one HTTP/2 connection to the controller with its policy stream.
//! While the controller is unreachable, known destinations keep their last answer (and are
//! added again, whole, on the next stream); a destination never answered is unknown (the
//! caller applies the rule for unknown destinations).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
// Tokio's clock, so tests with paused time can age destinations.
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use warden_api::discovery::v1;
use warden_api::grpc::{self, MAX_ADDRESSES_PER_MESSAGE, MAX_SNAPSHOT_BYTES};
use warden_core::SpiffeId;
use warden_identity::rotation::{backoff, random_unit, RotationOptions};

use crate::grpc_client::{
    self, ChannelState, ControlPlaneError, Messages, RequestBody, SharedChannel,
};
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
    /// A destination not looked up for this long is dropped (removed from the stream).
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
    answer: watch::Sender<Option<Arc<Resolved>>>,
    last_used_ms: u64,
}

/// The watched destinations, and the current stream's request side (none between
/// streams). One lock for both, so the stream learns of additions and removals in the
/// order the map makes them.
#[derive(Default)]
struct State {
    destinations: HashMap<SocketAddr, Watched>,
    requests: Option<mpsc::UnboundedSender<Bytes>>,
}

impl State {
    /// Sends `add` and `remove` on the current stream, if there is one (the next stream
    /// adds every destination anyway).
    fn send(&self, add: &[SocketAddr], remove: &[SocketAddr]) {
        if let Some(requests) = &self.requests {
            send(requests, add, remove);
        }
    }
}

/// The discovery client.
pub struct Discovery {
    channel: Arc<SharedChannel>,
    options: DiscoveryOptions,
    state: Mutex<State>,
    /// Whether a stream has been open (the controller accepted it) since the start.
    opened: watch::Sender<bool>,
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
    /// A client asking the controller on `channel`, once [`Discovery::run`] runs.
    pub fn new(channel: Arc<SharedChannel>, options: DiscoveryOptions) -> Arc<Self> {
        describe_metrics();
        Arc::new(Self {
            channel,
            options,
            state: Mutex::default(),
            opened: watch::channel(false).0,
            started: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The answer for `addr`: at once when it is watched already, else after the first
    /// answer (at most `lookup_timeout`). `None`: unknown, because the controller did not
    /// answer in time (it may still answer later connections).
    pub async fn resolve(&self, addr: SocketAddr) -> Option<Arc<Resolved>> {
        let mut answer = {
            let now = self.now_ms();
            let mut state = self.lock();
            if let Some(watched) = state.destinations.get_mut(&addr) {
                watched.last_used_ms = now;
                if let Some(known) = watched.answer.borrow().clone() {
                    metrics::counter!("warden_discovery_lookups_total", "result" => "cached")
                        .increment(1);
                    return Some(known);
                }
                watched.answer.subscribe()
            } else if state.destinations.len() >= self.options.max_destinations {
                metrics::counter!("warden_discovery_lookups_total", "result" => "full")
                    .increment(1);
                return None;
            } else {
                let (answer, waiting) = watch::channel(None);
                state.destinations.insert(
                    addr,
                    Watched {
                        answer,
                        last_used_ms: now,
                    },
                );
                state.send(&[addr], &[]);
                metrics::gauge!("warden_discovery_destinations")
                    .set(state.destinations.len() as f64);
                waiting
            }
        };
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
        self.lock()
            .destinations
            .get(&addr)
            .map(|w| w.answer.subscribe())
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

    /// Why the proxy is not ready yet, if so: no discovery stream has been open yet (its
    /// first lookups would wait for one). Once one has, an outage keeps it ready: known
    /// destinations keep their answers.
    pub fn not_ready(&self) -> Option<String> {
        (!*self.opened.borrow()).then(|| {
            format!(
                "no discovery stream to the controller yet ({})",
                self.describe()
            )
        })
    }

    /// Turns true when the first stream opens, to keep `/ready` current.
    pub fn opened(&self) -> watch::Receiver<bool> {
        self.opened.subscribe()
    }

    /// Destinations watched now.
    pub fn watched(&self) -> usize {
        self.lock().destinations.len()
    }

    /// Keeps the answers current and drops idle destinations until `shutdown`; call once.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        tokio::select! {
            () = self.stream() => {}
            () = self.sweep_until(shutdown) => {}
        }
    }

    /// The discovery stream, again and again: on a new connection (to the next address)
    /// after the controller said UNAVAILABLE, with backoff otherwise.
    async fn stream(&self) {
        let retry = RotationOptions {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            ..Default::default()
        };
        let (mut attempt, mut next_address) = (0u32, 0usize);
        loop {
            let mut connected = None;
            let result = self
                .stream_once(next_address, &mut connected, &mut attempt)
                .await;
            self.lock().requests = None;
            next_address = next_address.wrapping_add(1);
            let unavailable = matches!(&result, Err(ControlPlaneError::Status { status, .. })
                if status.code == grpc::code::UNAVAILABLE);
            if let (true, Some(address)) = (unavailable, &connected) {
                self.channel.give_up(address).await;
            }
            let delay = if unavailable && attempt == 0 {
                Duration::ZERO
            } else {
                backoff(attempt, &retry, random_unit())
            };
            attempt = attempt.saturating_add(1);
            match result {
                Ok(()) => {
                    tracing::debug!(retry_in = ?delay, "the controller ended the discovery stream")
                }
                Err(error) => {
                    tracing::debug!(%error, retry_in = ?delay, "discovery stream ended; known destinations keep their last answers")
                }
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// One stream: every destination watched now is added at its start (later additions and
    /// removals are sent as they happen), and answers are applied as they come, until it
    /// ends.
    async fn stream_once(
        &self,
        next_address: usize,
        connected: &mut Option<String>,
        attempt: &mut u32,
    ) -> Result<(), ControlPlaneError> {
        // Boxed: connecting holds a TLS handshake's state, which the long-lived stream
        // future would otherwise keep room for.
        let (address, mut channel) = Box::pin(self.channel.get(next_address)).await?;
        *connected = Some(address.clone());
        let (body, requests) = RequestBody::channel();
        {
            let mut state = self.lock();
            let all: Vec<SocketAddr> = state.destinations.keys().copied().collect();
            send(&requests, &all, &[]);
            state.requests = Some(requests);
        }
        let response = Box::pin(grpc_client::call(
            &mut channel,
            &address,
            grpc::SUBSCRIBE_DESTINATIONS,
            body,
        ))
        .await?;
        self.opened
            .send_if_modified(|opened| !std::mem::replace(opened, true));
        let mut updates = Messages::new(response, &address, MAX_SNAPSHOT_BYTES);
        while let Some(update) = updates.next::<v1::Update>().await? {
            *attempt = 0;
            self.apply(&update);
        }
        Ok(())
    }

    /// Makes `update` the answer for its address, if that is still watched.
    fn apply(&self, update: &v1::Update) {
        let Ok(addr) = update.address.parse::<SocketAddr>() else {
            tracing::error!(address = %update.address, "refused a destination answer for an address this proxy never asked about");
            return;
        };
        let resolved = match update.destination.as_ref().map(Resolved::from_proto) {
            Some(Ok(resolved)) => resolved,
            Some(Err(error)) => {
                tracing::error!(destination = %addr, %error, "refused a destination answer; keeping the last one");
                return;
            }
            None => {
                tracing::error!(destination = %addr, "refused an empty destination answer; keeping the last one");
                return;
            }
        };
        if let Some(watched) = self.lock().destinations.get(&addr) {
            watched.answer.send_if_modified(|current| {
                let changed = current.as_deref() != Some(&resolved);
                if changed {
                    *current = Some(Arc::new(resolved));
                }
                changed
            });
        }
    }

    /// Drops destinations idle longer than `idle`, every quarter of it, until `shutdown`;
    /// then drops them all.
    pub async fn sweep_until(&self, shutdown: CancellationToken) {
        let period = (self.options.idle / 4).max(Duration::from_millis(10));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(period) => {}
            }
            self.sweep();
        }
        self.lock().destinations.clear();
    }

    /// Drops the destinations idle longer than `idle` now.
    pub fn sweep(&self) {
        let now = self.now_ms();
        let idle = self.options.idle.as_millis() as u64;
        let mut state = self.lock();
        let mut removed = Vec::new();
        state.destinations.retain(|addr, watched| {
            let keep = now.saturating_sub(watched.last_used_ms) < idle;
            if !keep {
                removed.push(*addr);
            }
            keep
        });
        state.send(&[], &removed);
        metrics::gauge!("warden_discovery_destinations").set(state.destinations.len() as f64);
    }
}

/// Sends `add` and `remove` on a stream's request side, in messages of at most
/// [`MAX_ADDRESSES_PER_MESSAGE`] addresses.
fn send(requests: &mpsc::UnboundedSender<Bytes>, add: &[SocketAddr], remove: &[SocketAddr]) {
    let text = |addrs: &[SocketAddr]| addrs.iter().map(ToString::to_string).collect();
    for chunk in remove.chunks(MAX_ADDRESSES_PER_MESSAGE) {
        let message = v1::Subscription {
            add: Vec::new(),
            remove: text(chunk),
        };
        let _ = requests.send(grpc::frame(&message));
    }
    for chunk in add.chunks(MAX_ADDRESSES_PER_MESSAGE) {
        let message = v1::Subscription {
            add: text(chunk),
            remove: Vec::new(),
        };
        let _ = requests.send(grpc::frame(&message));
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

    fn update(address: &str, identity: &str) -> v1::Update {
        v1::Update {
            address: address.into(),
            destination: Some(v1::Destination {
                kind: v1::Kind::Pod as i32,
                name: "shop/api-1".into(),
                meshed: true,
                identities: vec![identity.into()],
                protocol: v1::Protocol::Detect as i32,
                no_endpoints: false,
            }),
        }
    }

    /// The subscriptions sent so far, as `+address` and `-address`.
    fn drain(requests: &mut mpsc::UnboundedReceiver<Bytes>) -> Vec<String> {
        std::iter::from_fn(|| requests.try_recv().ok())
            .flat_map(|framed| {
                let message = <v1::Subscription as prost::Message>::decode(&framed[5..]).unwrap();
                let removed = message.remove.into_iter().map(|a| format!("-{a}"));
                removed.chain(message.add.into_iter().map(|a| format!("+{a}")))
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn destinations_are_added_once_answered_from_the_stream_and_removed_when_idle() {
        let discovery = client();
        // A stream is open (its request side only: the controller's answers are applied
        // below as the stream would).
        let (tx, mut requests) = mpsc::unbounded_channel();
        discovery.lock().requests = Some(tx);
        let api: SocketAddr = "10.0.0.7:8080".parse().unwrap();
        let why = discovery
            .not_ready()
            .expect("not ready before a stream opened");
        assert!(
            why.starts_with("no discovery stream to the controller yet"),
            "{why}"
        );

        // No answer within the lookup timeout: unknown, but watched (and asked for once).
        assert_eq!(discovery.resolve(api).await, None);
        assert_eq!(discovery.resolve(api).await, None);
        assert_eq!(drain(&mut requests), ["+10.0.0.7:8080"]);

        // Answers for the address apply; others, and bad ones, do not.
        let identity = "spiffe://cluster.local/ns/shop/sa/api";
        discovery.apply(&update("10.0.0.7:8080", identity));
        discovery.apply(&update("10.0.0.8:8080", identity));
        discovery.apply(&update("10.0.0.7:8080", "not a SPIFFE ID"));
        discovery.apply(&update("nowhere", identity));
        let found = discovery.resolve(api).await.expect("answered");
        assert_eq!(found.identities[0].to_string(), identity);
        assert_eq!(discovery.watched(), 1);

        // Idle for longer than `idle`: removed, and the removal sent.
        tokio::time::advance(DiscoveryOptions::default().idle).await;
        discovery.sweep();
        assert_eq!(discovery.watched(), 0);
        assert_eq!(drain(&mut requests), ["-10.0.0.7:8080"]);
        assert!(discovery.changes(api).is_none());
    }

    #[test]
    fn changes_are_sent_in_messages_the_controller_accepts() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let addrs: Vec<SocketAddr> = (0..150u32)
            .map(|i| {
                SocketAddr::new(
                    std::net::Ipv6Addr::from(u128::MAX - i as u128).into(),
                    65535,
                )
            })
            .collect();
        send(&tx, &addrs, &addrs[..1]);
        let mut messages = Vec::new();
        while let Ok(framed) = rx.try_recv() {
            assert!(
                framed.len() - 5 <= grpc::MAX_REQUEST_BYTES,
                "{} bytes",
                framed.len()
            );
            messages.push(<v1::Subscription as prost::Message>::decode(&framed[5..]).unwrap());
        }
        let sizes: Vec<_> = messages
            .iter()
            .map(|m| (m.add.len(), m.remove.len()))
            .collect();
        // Removals first: an address dropped and added again in one batch stays watched.
        assert_eq!(sizes, [(0, 1), (64, 0), (64, 0), (22, 0)]);
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
