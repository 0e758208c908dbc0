//! A small mesh on 127.0.0.1: an in-process identity service (join tokens) and proxies
//! started exactly as `warden proxy` starts them, from a `ProxyConfig`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warden_core::{SpiffeId, TrustDomain};
use warden_identity::authn::Authenticator;
use warden_identity::ca::{self, InitOptions, SharedCa};
use warden_identity::join_token::{self, JoinTokens};
use warden_identity::service::{self, IdentityService, ServiceConfig, ServingIdentity};
use warden_proxy::authz::Authorizer;
use warden_proxy::config::{
    AppProtocol, InboundListener, OutboundRoute, ProxyConfig, RouteProtocol,
};
use warden_proxy::proxy::{self, BoundAddrs, Listeners};

#[path = "../../../identity/tests/support/front.rs"]
mod front;
#[path = "../../../tests/support/ports.rs"]
mod ports;
use front::Front;
pub use ports::{closed_port, reserved_port};

/// Replaces the file at `path` with `contents` in one step (a sibling written, then renamed
/// over it), as a ConfigMap volume changes: a watcher never reads it half-written.
pub fn replace_file(path: &std::path::Path, contents: &str) {
    let mut staged = path.as_os_str().to_owned();
    staged.push(".staged");
    std::fs::write(&staged, contents).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

/// The identity of workload `name`.
pub fn id(name: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://cluster.local/ns/test/sa/{name}")).unwrap()
}

/// The CA and identity service shared by a test's proxies.
pub struct Mesh {
    pub dir: tempfile::TempDir,
    pub ca: Arc<SharedCa>,
    /// The CA's certificates and keys, so tests can sign what the CA never would.
    pub generated: ca::GeneratedCa,
    pub identity_url: String,
    bundle: PathBuf,
    tokens: PathBuf,
    stop: CancellationToken,
    /// The identity service and who it is (to take it down and up).
    identity: (Arc<IdentityService>, ServingIdentity),
    /// The fixed address proxies dial; it forwards to the serving task's address.
    front: Front,
    serving: std::sync::Mutex<(CancellationToken, Option<tokio::task::JoinHandle<()>>)>,
    pub metrics: PrometheusHandle,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.stop.cancel();
        self.serving.lock().unwrap().0.cancel();
    }
}

impl Mesh {
    pub async fn start() -> Self {
        Self::start_with_ttl(ServiceConfig::default().svid_ttl).await
    }

    /// A mesh whose identity service issues SVIDs valid for `svid_ttl`.
    pub async fn start_with_ttl(svid_ttl: Duration) -> Self {
        let metrics = warden_identity::telemetry::prometheus();
        let dir = tempfile::tempdir().unwrap();
        let generated = ca::generate(&InitOptions::new(TrustDomain::default())).unwrap();
        let authority = generated.authority().unwrap();
        let bundle = dir.path().join("bundle.crt");
        std::fs::write(&bundle, authority.bundle().to_pem()).unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, "").unwrap();
        let ca = Arc::new(SharedCa::new(authority));
        let authn = Authenticator::JoinTokens(JoinTokens::load(&tokens, Duration::ZERO).unwrap());
        let config = ServiceConfig {
            rate: warden_identity::rate_limit::Rate {
                per_minute: 6000,
                burst: 1000,
            },
            svid_ttl,
            ..ServiceConfig::default()
        };
        let svc = Arc::new(IdentityService::new(ca.clone(), authn, config));
        let front = Front::bind().await;
        let identity_url = format!("https://{}", front.addr);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        front.set(Some(listener.local_addr().unwrap()));
        let serving = ServingIdentity {
            id: SpiffeId::parse("spiffe://cluster.local/ns/warden-system/sa/warden-identity")
                .unwrap(),
            dns_names: vec![],
        };
        let stop = CancellationToken::new();
        let identity_stop = CancellationToken::new();
        let task = service::start(
            listener,
            svc.clone(),
            serving.clone(),
            identity_stop.clone(),
        )
        .await
        .unwrap();
        Self {
            dir,
            ca,
            generated,
            identity_url,
            bundle,
            tokens,
            stop,
            identity: (svc, serving),
            front,
            serving: std::sync::Mutex::new((identity_stop, Some(task))),
            metrics,
        }
    }

    /// Stops the identity service (an outage: new connections are closed at once); proxies
    /// keep what they have.
    pub async fn identity_down(&self) {
        self.front.set(None);
        let task = {
            let mut serving = self.serving.lock().unwrap();
            serving.0.cancel();
            serving.1.take()
        };
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }

    /// Starts the identity service again behind the same front address.
    pub async fn identity_up(&self) {
        let (svc, serving) = &self.identity;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = service::start(listener, svc.clone(), serving.clone(), stop.clone())
            .await
            .unwrap();
        *self.serving.lock().unwrap() = (stop, Some(task));
        self.front.set(Some(addr));
    }

    /// A proxy config for workload `name`, admitted by a fresh join token.
    pub fn workload(&self, name: &str) -> ProxyConfig {
        let (token, line) = join_token::new_token(&id(name));
        let mut all = std::fs::read_to_string(&self.tokens).unwrap();
        all.push_str(&line);
        std::fs::write(&self.tokens, all).unwrap();
        let token_file = self.dir.path().join(format!("{name}.token"));
        std::fs::write(&token_file, token).unwrap();
        let mut config = ProxyConfig::default();
        config.identity.url = self.identity_url.clone();
        config.identity.trust_bundle = self.bundle.clone();
        config.identity.token_file = token_file;
        config.identity.namespace = Some("test".into());
        config.identity.service_account = Some(name.into());
        config.admin.listen = "127.0.0.1:0".parse().unwrap();
        // Short, for the tests of what comes after it, and long enough that a test client's
        // first write is never late for it on a busy machine.
        config.timeouts.detect = Duration::from_secs(1);
        config.timeouts.response = Duration::from_secs(5);
        config.timeouts.shutdown_grace = Duration::from_secs(3);
        // Two workers whatever the machine: connections are handed between threads in
        // every test, as in a sidecar with two CPUs.
        config.worker_threads = Some(2);
        config
    }

    /// Starts a proxy and waits until it is ready.
    pub async fn proxy(&self, config: ProxyConfig, authz: Authorizer) -> Proxy {
        let proxy = self.spawn_proxy(config, authz).await;
        for _ in 0..1200 {
            if proxy.admin("/ready").await.starts_with("HTTP/1.1 200") {
                return proxy;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("proxy not ready: {}", proxy.admin("/ready").await);
    }

    /// Starts a proxy without waiting for it to be ready.
    pub async fn spawn_proxy(&self, config: ProxyConfig, authz: Authorizer) -> Proxy {
        config.validate().unwrap();
        let listeners = Listeners::bind(&config).await.unwrap();
        let addrs = listeners.addrs();
        let source = proxy::cert_source(&config).unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(proxy::run(
            config,
            listeners,
            source,
            authz,
            warden_identity::admin::Telemetry::new(self.metrics.clone()),
            shutdown.clone(),
        ));
        Proxy {
            addrs,
            shutdown,
            task: Some(task),
        }
    }

    /// Starts a proxy whose authorizer comes from its own config, as `warden proxy` does.
    pub async fn proxy_from_config(&self, config: ProxyConfig) -> Proxy {
        let authz = proxy::authorizer(&config, self.stop.clone()).unwrap();
        self.proxy(config, authz).await
    }

    /// A client proxy (identity `client_name`) with one route to `server`'s first inbound
    /// listener.
    pub async fn client_named(
        &self,
        client_name: &str,
        server: &Proxy,
        route: RouteProtocol,
    ) -> Proxy {
        let mut client = self.workload(client_name);
        client.outbound = vec![OutboundRoute {
            listen: "127.0.0.1:0".parse().unwrap(),
            destination: server.addrs.inbound[0],
            identity: Some(id("server")),
            protocol: route,
        }];
        self.proxy(client, Authorizer::allow_all()).await
    }

    /// A server proxy (identity `server`, allowing everyone) in front of `app`.
    pub async fn server(&self, app: SocketAddr) -> Proxy {
        let mut server = self.workload("server");
        server.inbound = vec![InboundListener {
            listen: "127.0.0.1:0".parse().unwrap(),
            app,
            protocol: AppProtocol::Auto,
        }];
        self.proxy(server, Authorizer::allow_all()).await
    }

    /// A server proxy in front of `app` and a client proxy with one route to it.
    pub async fn pair(
        &self,
        app: SocketAddr,
        app_protocol: AppProtocol,
        route: RouteProtocol,
        authz: Authorizer,
    ) -> Pair {
        self.pair_with(app, app_protocol, route, authz, |_| {})
            .await
    }

    /// The usual pair: an app speaking what its caller speaks, detected routes, every caller
    /// allowed.
    pub async fn open_pair(&self, app: SocketAddr) -> Pair {
        self.pair(
            app,
            AppProtocol::Auto,
            RouteProtocol::Detect,
            Authorizer::allow_all(),
        )
        .await
    }

    /// A pair whose client sends everything as opaque TCP (an opaque route), every caller
    /// allowed.
    pub async fn opaque_pair(&self, app: SocketAddr) -> Pair {
        self.pair(
            app,
            AppProtocol::Auto,
            RouteProtocol::Opaque,
            Authorizer::allow_all(),
        )
        .await
    }

    /// Like [`pair`](Self::pair), with the server's config adjusted by `tweak`.
    pub async fn pair_with(
        &self,
        app: SocketAddr,
        app_protocol: AppProtocol,
        route: RouteProtocol,
        authz: Authorizer,
        tweak: impl FnOnce(&mut ProxyConfig),
    ) -> Pair {
        let mut server = self.workload("server");
        tweak(&mut server);
        server.inbound = vec![InboundListener {
            listen: "127.0.0.1:0".parse().unwrap(),
            app,
            protocol: app_protocol,
        }];
        let server = self.proxy(server, authz).await;
        let client = self
            .client_to(server.addrs.inbound[0], Some(id("server")), route)
            .await;
        Pair {
            outbound: client.addrs.outbound[0],
            client,
            server,
        }
    }

    /// A client proxy with one route to `destination`.
    pub async fn client_to(
        &self,
        destination: SocketAddr,
        identity: Option<SpiffeId>,
        protocol: RouteProtocol,
    ) -> Proxy {
        let client = self.client_config(destination, identity, protocol);
        self.proxy(client, Authorizer::allow_all()).await
    }

    /// The configuration `client_to` starts its proxy with.
    pub fn client_config(
        &self,
        destination: SocketAddr,
        identity: Option<SpiffeId>,
        protocol: RouteProtocol,
    ) -> ProxyConfig {
        let mut client = self.workload("client");
        client.outbound = vec![OutboundRoute {
            listen: "127.0.0.1:0".parse().unwrap(),
            destination,
            identity,
            protocol,
        }];
        client
    }
}

/// A running proxy.
pub struct Proxy {
    pub addrs: BoundAddrs,
    pub shutdown: CancellationToken,
    pub task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Proxy {
    /// GETs an admin path; returns the raw HTTP response.
    pub async fn admin(&self, path: &str) -> String {
        raw_get(self.addrs.admin, path).await
    }
}

/// Two proxies: the client's outbound route leads to the server's inbound listener.
pub struct Pair {
    /// Held so that the client proxy runs as long as the pair (only the hop-timing tests
    /// look inside).
    #[cfg_attr(not(feature = "hop-timing"), allow(dead_code))]
    pub client: Proxy,
    pub server: Proxy,
    pub outbound: SocketAddr,
}

/// A one-shot HTTP/1.1 GET over plain TCP, returning the whole response.
pub async fn raw_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    let req = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
    if tcp.write_all(req.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A TCP relay that counts the connections it carries (to prove connection pooling).
pub async fn counting_relay(to: SocketAddr) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, count)
}
