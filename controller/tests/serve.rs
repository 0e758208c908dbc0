//! The proxies' API over real sockets and real mTLS, with SVIDs from a real CA and an index
//! fed by hand (the watches are tested against the real API server elsewhere): what a
//! subscriber receives, and what hostile or broken clients get (oversized and malformed
//! messages, thousands of subscriptions, expired, foreign and missing certificates) while
//! everyone else keeps being served.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use warden_api::grpc::{self, code, FrameDecoder};
use warden_api::policy::v1;
use warden_controller::destinations::Destinations;
use warden_controller::discovery_api::{DiscoveryService, Notifier};
use warden_controller::index::{Index, PodInfo};
use warden_controller::policy_api::PolicyService;
use warden_controller::serve::{self, ServeLimits};
use warden_core::{SpiffeId, TrustDomain};
use warden_identity::ca::{self, InitOptions};
use warden_identity::rotation::{Credentials, TlsOptions};
use warden_identity::tls::ClientAuth;
use warden_identity::{CertificateAuthority, ExpectedPeer, Svid, TrustStore};

fn id(text: &str) -> SpiffeId {
    SpiffeId::parse(text).unwrap()
}

fn new_ca(trust_domain: &str) -> CertificateAuthority {
    ca::generate(&InitOptions::new(TrustDomain::parse(trust_domain).unwrap()))
        .unwrap()
        .authority()
        .unwrap()
}

fn web_pod() -> PodInfo {
    PodInfo {
        service_account: "web".into(),
        ips: vec!["127.0.0.1".parse().unwrap()],
    }
}

const ALLOW: &str = "apiVersion: warden.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: web-allow, namespace: shop, generation: 1}\nspec: {action: ALLOW, rules: [{from: {namespaces: [shop]}}]}\n";

/// A controller serving an index it does not watch: the test changes it and bumps the
/// revision as the watches would.
struct Controller {
    addr: SocketAddr,
    ca: CertificateAuthority,
    index: Arc<Mutex<Index>>,
    revision: watch::Sender<u64>,
    synced: watch::Sender<bool>,
    stop: CancellationToken,
    destinations: Arc<Mutex<Destinations>>,
    notifier: Arc<Notifier>,
    _credentials: watch::Sender<Arc<Credentials>>,
}

impl Controller {
    async fn start() -> Self {
        warden_identity::tls::install_crypto_provider();
        let ca = new_ca("cluster.local");
        let svid = ca
            .issue(
                &id("spiffe://cluster.local/ns/warden-system/sa/warden-controller"),
                Duration::from_secs(3600),
            )
            .unwrap();
        let options = TlsOptions {
            server_alpn: vec![b"h2".to_vec()],
            client_alpn: vec![],
            client_auth: ClientAuth::Required,
        };
        let trust = Arc::new(TrustStore::single(ca.bundle().clone()));
        let credentials = Arc::new(Credentials::build(svid, trust, &options).unwrap());
        let (credentials_tx, credentials) = watch::channel(credentials);
        let mut index = Index::new();
        index.apply_pod("shop", "web-1", web_pod());
        let index = Arc::new(Mutex::new(index));
        let (revision, revision_rx) = watch::channel(0);
        let (synced, synced_rx) = watch::channel(true);
        let stop = CancellationToken::new();
        let limits = ServeLimits {
            sync_wait: Duration::from_millis(300),
            ..Default::default()
        };
        let service = PolicyService::new(
            index.clone(),
            revision_rx,
            synced_rx.clone(),
            "cluster.local".into(),
            limits.clone(),
            stop.clone(),
        );
        let destinations = Arc::new(Mutex::new(Destinations::new(TrustDomain::default())));
        let notifier = Notifier::new();
        let discovery = DiscoveryService::new(
            destinations.clone(),
            notifier.clone(),
            synced_rx,
            "cluster.local".into(),
            &limits,
            stop.clone(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve::run(
            listener,
            service,
            discovery,
            credentials,
            limits,
            stop.clone(),
        ));
        Self {
            addr,
            ca,
            index,
            revision,
            synced,
            stop,
            destinations,
            notifier,
            _credentials: credentials_tx,
        }
    }

    /// Changes the index and, if it says something changed, tells the subscribers, as the
    /// watches do.
    fn change(&self, f: impl FnOnce(&mut Index) -> bool) {
        if f(&mut self.index.lock().unwrap()) {
            self.revision.send_modify(|r| *r += 1);
        }
    }

    fn svid(&self, text: &str) -> Svid {
        self.ca.issue(&id(text), Duration::from_secs(600)).unwrap()
    }

    /// An HTTP/2 connection over mTLS presenting `svid` (none: no client certificate).
    async fn connect<B>(
        &self,
        svid: Option<&Svid>,
    ) -> Result<hyper::client::conn::http2::SendRequest<B>, String>
    where
        B: hyper::body::Body<Data = Bytes, Error = Infallible> + Send + Unpin + 'static,
    {
        let trust = Arc::new(TrustStore::single(self.ca.bundle().clone()));
        let expected = ExpectedPeer::Exact(id(
            "spiffe://cluster.local/ns/warden-system/sa/warden-controller",
        ));
        let config = match svid {
            Some(svid) => {
                warden_identity::tls::client_config(svid, trust, expected, &[b"h2"]).unwrap()
            }
            None => warden_identity::tls::anonymous_client_config(trust, expected, &[b"h2"]),
        };
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(warden_identity::tls::mesh_server_name(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        Ok(sender)
    }
}

/// Starts a policy `Watch` call with `body` as the request stream.
async fn call(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    body: Bytes,
) -> Result<http::Response<Incoming>, hyper::Error> {
    call_path(sender, grpc::WATCH_INBOUND_POLICY, body).await
}

/// Starts the call at `path` with `body` as the request stream.
async fn call_path(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    path: &str,
    body: Bytes,
) -> Result<http::Response<Incoming>, hyper::Error> {
    sender.ready().await?;
    let request = http::Request::post(format!("http://controller{path}"))
        .header("content-type", grpc::CONTENT_TYPE)
        .header("te", "trailers")
        .body(Full::new(body))
        .unwrap();
    sender.send_request(request).await
}

fn watch_request(pod: &str) -> Bytes {
    grpc::frame(&v1::WatchRequest { pod: pod.into() })
}

/// One subscription's stream, message by message (`M`: the message type).
struct Stream<M = v1::Snapshot> {
    body: Incoming,
    decoder: FrameDecoder,
    _message: std::marker::PhantomData<M>,
}

enum Next<M> {
    Snapshot(M),
    Status(grpc::Status),
}

impl<M: Message + Default + std::fmt::Debug> Stream<M> {
    /// A subscription, or the status it was refused with.
    fn open(response: http::Response<Incoming>) -> Result<Self, grpc::Status> {
        if let Some(status) = grpc::status(response.headers()) {
            return Err(status);
        }
        Ok(Self {
            body: response.into_body(),
            decoder: FrameDecoder::new(grpc::MAX_SNAPSHOT_BYTES),
            _message: std::marker::PhantomData,
        })
    }

    async fn next(&mut self) -> Next<M> {
        loop {
            if let Some(message) = self.decoder.next_message().unwrap() {
                return Next::Snapshot(M::decode(message).unwrap());
            }
            let frame = tokio::time::timeout(Duration::from_secs(10), self.body.frame())
                .await
                .expect("a message within 10 s")
                .expect("the stream goes on")
                .unwrap();
            if let Some(trailers) = frame.trailers_ref() {
                return Next::Status(grpc::status(trailers).unwrap());
            }
            self.decoder.push(&frame.into_data().unwrap());
        }
    }

    async fn snapshot(&mut self) -> M {
        match self.next().await {
            Next::Snapshot(s) => s,
            Next::Status(s) => panic!("a snapshot, not {s}"),
        }
    }

    async fn status(&mut self) -> grpc::Status {
        match self.next().await {
            Next::Status(s) => s,
            Next::Snapshot(s) => panic!("a status, not {s:?}"),
        }
    }
}

async fn subscribe(
    controller: &Controller,
    svid: &Svid,
    pod: &str,
) -> Result<Stream, grpc::Status> {
    let mut sender = controller.connect(Some(svid)).await.unwrap();
    let response = call(&mut sender, watch_request(pod)).await.unwrap();
    Stream::open(response)
}

#[tokio::test]
async fn a_subscriber_gets_a_snapshot_then_one_per_change_that_concerns_it() {
    let controller = Controller::start().await;
    let web = controller.svid("spiffe://cluster.local/ns/shop/sa/web");
    let mut stream = subscribe(&controller, &web, "web-1").await.unwrap();
    let first = stream.snapshot().await;
    assert!(first.policies.is_empty());
    assert_eq!(first.default, v1::MeshDefault::Deny as i32);

    // A change elsewhere sends nothing; the next message is the change that concerns it.
    // The stream's task has time to see the first change on its own (were it to answer it,
    // the next message would be a snapshot without the policy); no time is asserted.
    controller.change(|i| {
        i.apply_pod(
            "other",
            "x-1",
            PodInfo {
                service_account: "x".into(),
                ips: Vec::new(),
            },
        )
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    controller.change(|i| i.apply_policy(&serde_saphyr::from_str(ALLOW).unwrap()));
    let second = stream.snapshot().await;
    assert_eq!(second.policies.len(), 1);
    assert_eq!(second.policies[0].name, "web-allow");
    assert_ne!(second.version, first.version);

    // The pod goes: the stream ends, saying why.
    controller.change(|i| i.delete_pod("shop", "web-1"));
    let status = stream.status().await;
    assert_eq!(status.code, code::NOT_FOUND, "{status}");

    // At shutdown every stream ends with UNAVAILABLE: proxies reconnect elsewhere at once.
    controller.change(|i| i.apply_pod("shop", "web-1", web_pod()));
    let mut stream = subscribe(&controller, &web, "web-1").await.unwrap();
    stream.snapshot().await;
    controller.stop.cancel();
    let status = stream.status().await;
    assert_eq!(status.code, code::UNAVAILABLE, "{status}");
}

#[tokio::test]
async fn before_every_watch_has_listed_nothing_is_served_as_a_snapshot() {
    let controller = Controller::start().await;
    controller.synced.send_replace(false);
    let web = controller.svid("spiffe://cluster.local/ns/shop/sa/web");
    let refused = subscribe(&controller, &web, "web-1").await.err().unwrap();
    assert_eq!(refused.code, code::UNAVAILABLE, "{refused}");
    controller.synced.send_replace(true);
    subscribe(&controller, &web, "web-1")
        .await
        .unwrap()
        .snapshot()
        .await;
}

#[tokio::test]
async fn hostile_clients_get_errors_and_everyone_else_is_still_served() {
    let controller = Controller::start().await;
    let web = controller.svid("spiffe://cluster.local/ns/shop/sa/web");
    let mut sender = controller.connect(Some(&web)).await.unwrap();

    // A request message over the limit (4 KiB), and one that is not protobuf.
    let huge = watch_request(&"a".repeat(64 * 1024));
    let status = Stream::<v1::Snapshot>::open(call(&mut sender, huge).await.unwrap());
    let status = match status {
        Err(s) => s,
        Ok(mut stream) => stream.status().await,
    };
    assert!(
        status.code == code::RESOURCE_EXHAUSTED || status.code == 11,
        "{status}"
    );
    let garbage = Bytes::from_static(&[0, 0, 0, 0, 3, 0xff, 0xff, 0xff]);
    let status = match Stream::<v1::Snapshot>::open(call(&mut sender, garbage).await.unwrap()) {
        Err(s) => s,
        Ok(mut stream) => stream.status().await,
    };
    assert_ne!(status.code, code::OK, "{status}");

    // Thousands of subscriptions for its pod, over many connections: a few are admitted,
    // the rest refused, and the controller holds only those few.
    let mut admitted = Vec::new();
    let mut refused = 0;
    for _ in 0..250 {
        let mut sender = controller.connect(Some(&web)).await.unwrap();
        for _ in 0..8 {
            match Stream::<v1::Snapshot>::open(
                call(&mut sender, watch_request("web-1")).await.unwrap(),
            ) {
                Ok(stream) => admitted.push((stream, sender.clone())),
                Err(status) => {
                    assert_eq!(status.code, code::RESOURCE_EXHAUSTED, "{status}");
                    refused += 1;
                }
            }
        }
    }
    assert_eq!(
        admitted.len(),
        ServeLimits::default().max_subscriptions_per_pod
    );
    assert_eq!(refused, 2000 - admitted.len());
    // Closing one frees its place.
    admitted.pop();
    let mut again = None;
    for _ in 0..100 {
        if let Ok(stream) = subscribe(&controller, &web, "web-1").await {
            again = Some(stream);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    again.expect("a place is free again").snapshot().await;

    // Certificates the handshake refuses: expired, of a foreign trust domain, none at all.
    let expired = controller
        .ca
        .issue(
            &id("spiffe://cluster.local/ns/shop/sa/web"),
            Duration::from_secs(1),
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let foreign_ca = new_ca("other.example");
    let foreign = foreign_ca
        .issue(
            &id("spiffe://other.example/ns/shop/sa/web"),
            Duration::from_secs(600),
        )
        .unwrap();
    for (what, svid) in [
        ("expired", Some(&expired)),
        ("foreign", Some(&foreign)),
        ("none", None),
    ] {
        let refused = match controller.connect(svid).await {
            Err(_) => true,
            // TLS 1.3: the client may finish before the server refuses its certificate.
            Ok(mut sender) => call(&mut sender, watch_request("web-1")).await.is_err(),
        };
        assert!(refused, "{what} certificate refused");
    }

    // Another pod's proxy is served all along.
    controller.change(|i| {
        i.apply_pod(
            "shop",
            "db-1",
            PodInfo {
                service_account: "db".into(),
                ips: vec!["127.0.0.1".parse().unwrap()],
            },
        )
    });
    let db = controller.svid("spiffe://cluster.local/ns/shop/sa/db");
    subscribe(&controller, &db, "db-1")
        .await
        .unwrap()
        .snapshot()
        .await;
}

/// A discovery stream's request side: frames sent through it are the proxy's subscriptions.
type Subscriptions = futures::channel::mpsc::UnboundedSender<Result<Frame<Bytes>, Infallible>>;
type SubscriptionBody =
    StreamBody<futures::channel::mpsc::UnboundedReceiver<Result<Frame<Bytes>, Infallible>>>;

/// Adds and removes addresses on a discovery stream.
fn subscription(requests: &Subscriptions, add: &[&str], remove: &[&str]) {
    let message = warden_api::discovery::v1::Subscription {
        add: add.iter().map(|a| a.to_string()).collect(),
        remove: remove.iter().map(|a| a.to_string()).collect(),
    };
    requests
        .unbounded_send(Ok(Frame::data(grpc::frame(&message))))
        .unwrap();
}

/// Opens a discovery stream on `sender`: its request side, and its updates (or the status
/// it was refused with).
async fn open_discovery(
    sender: &mut hyper::client::conn::http2::SendRequest<SubscriptionBody>,
) -> (
    Subscriptions,
    Result<Stream<warden_api::discovery::v1::Update>, grpc::Status>,
) {
    let (requests, body) = futures::channel::mpsc::unbounded();
    sender.ready().await.unwrap();
    let request = http::Request::post(format!("http://controller{}", grpc::SUBSCRIBE_DESTINATIONS))
        .header("content-type", grpc::CONTENT_TYPE)
        .header("te", "trailers")
        .body(StreamBody::new(body))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    (requests, Stream::open(response))
}

#[tokio::test]
async fn a_discovery_stream_follows_pods_services_and_endpoints() {
    use warden_api::discovery::v1::{Kind, Protocol};
    use warden_controller::destinations::{PodEndpoint, ServiceInfo, ServicePort, Slice};
    let controller = Controller::start().await;
    let change = |f: &dyn Fn(&mut Destinations) -> bool| {
        let mut destinations = controller.destinations.lock().unwrap();
        f(&mut destinations);
        let changes = destinations.take_changes();
        drop(destinations);
        controller.notifier.notify(&changes);
    };
    let web = controller.svid("spiffe://cluster.local/ns/shop/sa/web");
    let mut sender = controller.connect(Some(&web)).await.unwrap();
    let (requests, updates) = open_discovery(&mut sender).await;
    let mut updates = updates.unwrap();
    subscription(&requests, &["10.0.0.7:8080", "10.96.0.10:80"], &[]);
    let mut next = async || {
        let update = updates.snapshot().await;
        (update.address, update.destination.unwrap())
    };
    for address in ["10.0.0.7:8080", "10.96.0.10:80"] {
        let (got, destination) = next().await;
        assert_eq!(
            (got.as_str(), destination.kind),
            (address, Kind::Unknown as i32)
        );
    }

    // The pod appears (meshed), then the Service with it as its one ready endpoint.
    let api = PodEndpoint {
        service_account: "api".into(),
        ips: vec!["10.0.0.7".parse().unwrap()],
        meshed: true,
        terminal: false,
        opaque_ports: None,
        created: 1,
    };
    change(&|d| d.apply_pod("shop", "api-1", api.clone()));
    let (address, got) = next().await;
    assert_eq!(
        (
            address.as_str(),
            got.kind,
            got.name.as_str(),
            got.meshed,
            got.identities.clone()
        ),
        (
            "10.0.0.7:8080",
            Kind::Pod as i32,
            "shop/api-1",
            true,
            vec!["spiffe://cluster.local/ns/shop/sa/api".to_string()]
        )
    );
    change(&|d| {
        d.apply_service(
            "shop",
            "api",
            ServiceInfo {
                cluster_ips: vec!["10.96.0.10".parse().unwrap()],
                ports: vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    app_protocol: Some("kubernetes.io/h2c".into()),
                }],
            },
        )
    });
    let (address, got) = next().await;
    assert_eq!(address, "10.96.0.10:80");
    assert!(got.no_endpoints && !got.meshed, "{got:?}");
    let slice = |ready: bool| Slice {
        service: "api".into(),
        ports: vec![(Some("http".into()), 8080)],
        endpoints: vec![(vec!["10.0.0.7".parse().unwrap()], ready)],
    };
    change(&|d| d.apply_slice("shop", "api-x", slice(true)));
    let (address, got) = next().await;
    assert_eq!(
        (
            address.as_str(),
            got.meshed,
            got.protocol,
            got.identities.len()
        ),
        ("10.96.0.10:80", true, Protocol::Http2 as i32, 1),
        "{got:?}"
    );

    // Removed: its changes are no longer sent. Added again: answered again, at once.
    // (The stream is answered in order: once the new address is, the removal was applied.)
    subscription(&requests, &["10.2.0.1:80"], &["10.96.0.10:80"]);
    assert_eq!(next().await.0, "10.2.0.1:80");
    change(&|d| d.apply_slice("shop", "api-x", slice(false)));
    subscription(&requests, &["10.96.0.10:80", "10.0.0.7:8080"], &[]);
    let (address, got) = next().await;
    assert_eq!(address, "10.96.0.10:80");
    assert!(
        got.no_endpoints,
        "the answer now, not the one before: {got:?}"
    );
    let (address, got) = next().await;
    assert_eq!((address.as_str(), got.meshed), ("10.0.0.7:8080", true));

    // Many destinations on one stream, answered in order.
    let many: Vec<String> = (0..1000)
        .map(|i| format!("10.1.{}.{}:80", i / 250, i % 250 + 1))
        .collect();
    for chunk in many.chunks(grpc::MAX_ADDRESSES_PER_MESSAGE) {
        let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
        subscription(&requests, &chunk, &[]);
    }
    for address in &many {
        assert_eq!(&next().await.0, address);
    }

    // A malformed address, added or removed, ends the stream with INVALID_ARGUMENT, naming it.
    subscription(&requests, &[], &["nowhere"]);
    let refused = updates.status().await;
    assert_eq!(refused.code, 3, "INVALID_ARGUMENT: {refused}");
    assert!(refused.message.contains("\"nowhere\""), "{refused}");

    // Not a workload identity: refused.
    let vm = controller.svid("spiffe://cluster.local/vm/legacy");
    let mut sender = controller.connect(Some(&vm)).await.unwrap();
    let (_requests, refused) = open_discovery(&mut sender).await;
    let refused = match refused {
        Err(status) => status,
        Ok(mut stream) => stream.status().await,
    };
    assert_eq!(refused.code, code::UNAUTHENTICATED, "{refused}");
}

#[tokio::test]
async fn one_caller_holds_a_bounded_number_of_discovery_streams() {
    let controller = Controller::start().await;
    let web = controller.svid("spiffe://cluster.local/ns/shop/sa/web");
    let mut sender = controller.connect(Some(&web)).await.unwrap();
    let max = ServeLimits::default().max_subscriptions_per_pod;
    let mut open = Vec::new();
    for _ in 0..max {
        let (requests, updates) = open_discovery(&mut sender).await;
        open.push((requests, updates.expect("within the caller's share")));
    }
    let (_requests, refused) = open_discovery(&mut sender).await;
    let status = refused.err().expect("one more is refused");
    assert_eq!(status.code, code::RESOURCE_EXHAUSTED, "{status}");
    assert!(
        status.message.contains("discovery streams open"),
        "{status}"
    );

    // Another workload is not held back by this one's streams.
    let db = controller.svid("spiffe://cluster.local/ns/shop/sa/db");
    let mut other = controller.connect(Some(&db)).await.unwrap();
    let (_db_requests, db_updates) = open_discovery(&mut other).await;
    db_updates.expect("another caller's stream");

    // A stream the caller ends frees its place.
    drop(open.pop());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (requests, updates) = open_discovery(&mut sender).await;
        if let Ok(updates) = updates {
            open.push((requests, updates));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the ended stream's place was never freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
