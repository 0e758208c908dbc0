//! Certificate rotation against a real identity service with lifetimes of seconds: live
//! connections survive rotation, new handshakes use the new certificate, and a CA outage
//! longer than a renewal period is ridden out and recovered from.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use warden_core::contract::ALPN_TCP;
use warden_core::{SpiffeId, TrustDomain};
use warden_identity::authn::Authenticator;
use warden_identity::ca::{self, InitOptions, SharedCa};
use warden_identity::client::{CertifyClient, CertifyClientConfig};
use warden_identity::join_token::{self, JoinTokens};
use warden_identity::rotation::{self, CertSource, Credentials, RotationOptions, TlsOptions};
use warden_identity::service::{self, IdentityService, ServiceConfig, ServingIdentity};
use warden_identity::tls::{self, ClientAuth};
use warden_identity::{telemetry, TrustStore};

const SERVER_ID: &str = "spiffe://cluster.local/ns/warden-system/sa/warden-identity";

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

mod support {
    pub mod front;
}
use support::front::Front;

/// An identity service for two workloads, `a` and `b`, that can be stopped and restarted
/// behind the same address.
struct Cluster {
    ca: Arc<SharedCa>,
    trust: TrustStore,
    tokens: std::path::PathBuf,
    ttl: Duration,
    front: Front,
    stop: CancellationToken,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Cluster {
    async fn new(dir: &Path, ttl: Duration) -> Self {
        let authority = ca::generate(&InitOptions::new(TrustDomain::default()))
            .unwrap()
            .authority()
            .unwrap();
        let trust = TrustStore::single(authority.bundle().clone());
        let tokens = dir.join("tokens");
        let mut lines = String::new();
        for name in ["a", "b"] {
            let who = id(&format!("spiffe://cluster.local/ns/test/sa/{name}"));
            let (token, line) = join_token::new_token(&who);
            std::fs::write(dir.join(format!("{name}.token")), token).unwrap();
            lines.push_str(&line);
        }
        std::fs::write(&tokens, lines).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut cluster = Self {
            ca: Arc::new(SharedCa::new(authority)),
            trust,
            tokens,
            ttl,
            front: Front::bind().await,
            stop: CancellationToken::new(),
            server: None,
        };
        cluster.serve(listener).await;
        cluster
    }

    async fn serve(&mut self, listener: TcpListener) {
        let authn =
            Authenticator::JoinTokens(JoinTokens::load(&self.tokens, Duration::ZERO).unwrap());
        let config = ServiceConfig {
            svid_ttl: self.ttl,
            ..ServiceConfig::default()
        };
        let svc = Arc::new(IdentityService::new(self.ca.clone(), authn, config));
        let serving = ServingIdentity {
            id: id(SERVER_ID),
            dns_names: vec![],
        };
        self.front.set(Some(listener.local_addr().unwrap()));
        self.stop = CancellationToken::new();
        self.server = service::start(listener, svc, serving, self.stop.clone()).await;
    }

    async fn down(&mut self) {
        self.front.set(None);
        self.stop.cancel();
        if let Some(server) = self.server.take() {
            server.await.unwrap();
        }
    }

    async fn up(&mut self) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.serve(listener).await;
    }

    /// Starts rotation for workload `name`; renewal retries are quick for the test.
    async fn workload(
        &self,
        dir: &Path,
        name: &str,
    ) -> (watch::Receiver<Arc<Credentials>>, CancellationToken) {
        let client = CertifyClient::new(
            CertifyClientConfig {
                url: format!("https://{}", self.front.addr),
                server_id: id(SERVER_ID),
                token_file: dir.join(format!("{name}.token")),
                expected_id: Some(id(&format!("spiffe://cluster.local/ns/test/sa/{name}"))),
                timeout: Duration::from_secs(2),
            },
            self.trust.clone(),
        )
        .unwrap();
        let tls = TlsOptions {
            server_alpn: vec![ALPN_TCP.to_vec()],
            client_alpn: vec![ALPN_TCP.to_vec()],
            client_auth: ClientAuth::Required,
        };
        let opts = RotationOptions {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
            ..RotationOptions::default()
        };
        let stop = CancellationToken::new();
        let rotation = rotation::start(CertSource::Remote(client), tls, opts, stop.clone())
            .await
            .unwrap();
        (rotation.credentials, stop)
    }
}

/// An mTLS echo server whose every handshake uses the latest credentials.
async fn echo_server(creds: watch::Receiver<Arc<Credentials>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(creds.borrow().server.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let (read, mut write) = tokio::io::split(stream);
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if write
                        .write_all(format!("{line}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

type Conn = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect(creds: &watch::Receiver<Arc<Credentials>>, addr: SocketAddr) -> Conn {
    let config = creds.borrow().client.clone();
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(tls::mesh_server_name(), tcp)
        .await
        .unwrap()
}

fn server_leaf(conn: &Conn) -> CertificateDer<'static> {
    conn.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

async fn echo(conn: &mut Conn, msg: &str) -> String {
    conn.write_all(format!("{msg}\n").as_bytes()).await.unwrap();
    let mut line = String::new();
    let mut reader = BufReader::new(conn);
    tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line))
        .await
        .expect("echo within 5s")
        .unwrap();
    line.trim_end().to_string()
}

async fn next_credentials(
    rx: &mut watch::Receiver<Arc<Credentials>>,
    within: Duration,
) -> Arc<Credentials> {
    tokio::time::timeout(within, rx.changed())
        .await
        .expect("a new certificate in time")
        .unwrap();
    rx.borrow_and_update().clone()
}

#[tokio::test]
async fn rotation_keeps_live_connections_and_new_handshakes_get_the_new_certificate() {
    let metrics = telemetry::prometheus(); // before anything is counted
    let dir = tempfile::tempdir().unwrap();
    // SVIDs of 6 s: b renews 3.6-4.2 s after it got `first`, so the connection below is
    // made with `first` even on a slow machine.
    let cluster = Cluster::new(dir.path(), Duration::from_secs(6)).await;
    let (a, _stop_a) = cluster.workload(dir.path(), "a").await;
    let (mut b, _stop_b) = cluster.workload(dir.path(), "b").await;
    let first = b.borrow_and_update().clone();
    let addr = echo_server(b.clone()).await;

    let mut live = connect(&a, addr).await;
    assert_eq!(echo(&mut live, "before").await, "before");
    assert_eq!(server_leaf(&live), first.svid.chain()[0]);

    // Renewal at 60-70% of 6 s.
    let second = next_credentials(&mut b, Duration::from_secs(10)).await;
    assert_eq!(second.svid.id(), first.svid.id());
    assert_ne!(
        second.svid.chain()[0],
        first.svid.chain()[0],
        "a new certificate"
    );
    assert!(second.svid.not_after() > first.svid.not_after());

    let mut fresh = connect(&a, addr).await;
    assert_eq!(
        server_leaf(&fresh),
        second.svid.chain()[0],
        "new handshakes see the new cert"
    );
    assert_eq!(echo(&mut fresh, "fresh").await, "fresh");
    assert_eq!(
        echo(&mut live, "during").await,
        "during",
        "the old connection keeps working"
    );

    // Even after the first certificate has expired, the connection made with it goes on.
    let expired_for = first.svid.not_after() + Duration::from_millis(300);
    if let Ok(wait) = expired_for.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    assert_eq!(echo(&mut live, "after expiry").await, "after expiry");
    let metrics = metrics.render();
    assert!(
        metrics.contains("warden_identity_renewals_total{result=\"success\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("warden_identity_cert_expiry_timestamp_seconds"));
}

#[tokio::test]
async fn a_ca_outage_longer_than_a_renewal_period_is_ridden_out() {
    let metrics = telemetry::prometheus(); // before anything is counted
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(dir.path(), Duration::from_secs(6)).await;
    let (mut a, _stop) = cluster.workload(dir.path(), "a").await;
    let first = a.borrow_and_update().clone();
    let got_at = SystemTime::now();

    cluster.down().await;
    // Renewal is due at 60-70% of the certificate's life from when it was obtained (at or
    // before `got_at`; its notAfter is whole seconds, so that life is 5-6 s): wait past the
    // latest such moment while the CA is down, which leaves a second and more before expiry.
    let life = first.svid.not_after().duration_since(got_at).unwrap();
    let due_by = got_at + life.mul_f64(0.7) + Duration::from_millis(300);
    if let Ok(wait) = due_by.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    assert!(!a.has_changed().unwrap(), "no new certificate without a CA");
    assert_eq!(
        a.borrow().svid.chain()[0],
        first.svid.chain()[0],
        "still serving the current one"
    );
    assert!(
        first.svid.not_after() > SystemTime::now(),
        "and it is still valid"
    );
    let metrics = metrics.render();
    assert!(
        metrics.contains("warden_identity_renewals_total{result=\"failure\"}"),
        "{metrics}"
    );

    cluster.up().await;
    let renewed = next_credentials(&mut a, Duration::from_secs(5)).await;
    assert_eq!(renewed.svid.id(), first.svid.id());
    assert_ne!(
        renewed.svid.chain()[0],
        first.svid.chain()[0],
        "recovered by itself"
    );
}
