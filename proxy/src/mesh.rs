//! Originating mTLS to peer proxies: TCP connect and TLS handshake, each bounded by its
//! timeout, with the latest SVID and a verifier for the expected peer identity. Client
//! configurations are cached per expected peer and ALPN until the SVID rotates (so TLS
//! session resumption works between rotations).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::client::TlsStream;
use warden_core::SpiffeId;
use warden_identity::rotation::Credentials;
use warden_identity::{tls, ExpectedPeer};

use crate::http::ProxyError;
use crate::metrics::{self, Direction};

/// A connected, verified mesh connection and who is at the other end.
#[derive(Debug)]
pub struct MeshStream {
    /// The TLS stream.
    pub stream: TlsStream<TcpStream>,
    /// The peer's verified SPIFFE ID.
    pub peer: SpiffeId,
}

/// Who may answer a mesh connection: one of these identities (a pod's, or a Service's
/// endpoints'); empty: any identity of a trusted trust domain (an explicit route without an
/// identity). Shared, so pool keys and targets clone it cheaply.
pub type Expected = Arc<[SpiffeId]>;

/// Any identity of a trusted trust domain.
pub fn any_trusted() -> Expected {
    Arc::from(Vec::new())
}

type CacheKey = (Vec<SpiffeId>, &'static [u8]);

/// Client configurations built from one generation of credentials.
#[derive(Debug, Default)]
struct ConfigCache {
    built_from: Option<Arc<Credentials>>,
    configs: HashMap<CacheKey, Arc<ClientConfig>>,
}

/// Opens mTLS connections to peer proxies.
#[derive(Debug)]
pub struct MeshConnector {
    credentials: watch::Receiver<Arc<Credentials>>,
    cache: Mutex<ConfigCache>,
    connect_timeout: Duration,
    handshake_timeout: Duration,
}

impl MeshConnector {
    /// A connector presenting the latest credentials from `credentials`.
    pub fn new(
        credentials: watch::Receiver<Arc<Credentials>>,
        connect_timeout: Duration,
        handshake_timeout: Duration,
    ) -> Self {
        Self {
            credentials,
            cache: Mutex::new(ConfigCache::default()),
            connect_timeout,
            handshake_timeout,
        }
    }

    fn client_config(
        &self,
        expected: &[SpiffeId],
        alpn: &'static [u8],
    ) -> Result<Arc<ClientConfig>, ProxyError> {
        let current = self.credentials.borrow().clone();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if !cache
            .built_from
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, &current))
        {
            // The SVID rotated: configs built with the old one are stale.
            *cache = ConfigCache {
                built_from: Some(current.clone()),
                configs: HashMap::new(),
            };
        }
        let key = (expected.to_vec(), alpn);
        if let Some(config) = cache.configs.get(&key) {
            return Ok(config.clone());
        }
        let peer = match expected {
            [] => ExpectedPeer::AnyTrusted,
            [id] => ExpectedPeer::Exact(id.clone()),
            ids => ExpectedPeer::OneOf(ids.to_vec()),
        };
        let config = tls::client_config(&current.svid, current.trust.clone(), peer, &[alpn])
            .map_err(|e| ProxyError::Tls {
                target: "-".into(),
                reason: e.to_string(),
            })?;
        let config = Arc::new(config);
        cache.configs.insert(key, config.clone());
        Ok(config)
    }

    /// Connects to `addr`, completes mTLS with ALPN `alpn`, and checks the peer's identity.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        expected: &[SpiffeId],
        alpn: &'static [u8],
    ) -> Result<MeshStream, ProxyError> {
        let target = addr.to_string();
        self.check_own_svid(&target)?;
        let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => {
                return Err(ProxyError::Unreachable {
                    target,
                    reason: e.to_string(),
                })
            }
            Err(_) => return Err(ProxyError::ConnectTimeout(target)),
        };
        let _ = tcp.set_nodelay(true);
        let config = self.client_config(expected, alpn)?;
        let started = Instant::now();
        let handshake =
            tokio_rustls::TlsConnector::from(config).connect(tls::mesh_server_name(), tcp);
        let stream = match tokio::time::timeout(self.handshake_timeout, handshake).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                metrics::tls_handshake(Direction::Outbound, "failure", started.elapsed());
                return Err(ProxyError::Tls {
                    target,
                    reason: warden_identity::verify::describe_handshake_error(&e),
                });
            }
            Err(_) => {
                metrics::tls_handshake(Direction::Outbound, "timeout", started.elapsed());
                return Err(ProxyError::ConnectTimeout(target));
            }
        };
        let conn = stream.get_ref().1;
        // Before the handshake counts as a success: a resumed session is checked here.
        let peer = match tls::peer_identity(conn) {
            Ok(peer) => peer,
            Err(e) => {
                metrics::tls_handshake(Direction::Outbound, "failure", started.elapsed());
                return Err(ProxyError::Tls {
                    target,
                    reason: e.to_string(),
                });
            }
        };
        metrics::tls_handshake(Direction::Outbound, "success", started.elapsed());
        if conn.alpn_protocol() != Some(alpn) {
            return Err(ProxyError::Tls {
                target,
                reason: format!(
                    "peer did not agree to ALPN {:?}",
                    String::from_utf8_lossy(alpn)
                ),
            });
        }
        Ok(MeshStream { stream, peer })
    }

    /// Refuses to connect with an SVID past its `notAfter` (its renewal failing): every peer
    /// would refuse it in a full handshake, and one that resumes a session made with it
    /// closes the connection after the handshake (see `tls::peer_identity`), a failure that
    /// would say less than this.
    fn check_own_svid(&self, target: &str) -> Result<(), ProxyError> {
        let svid = &self.credentials.borrow().svid;
        if svid.not_after() > std::time::SystemTime::now() {
            return Ok(());
        }
        let expired = time::OffsetDateTime::from(svid.not_after());
        Err(ProxyError::Tls {
            target: target.to_string(),
            reason: format!(
                "this proxy's SVID {} expired at {}; its renewal is failing (see the identity client's log)",
                svid.id(),
                warden_identity::timestamp::rfc3339_seconds(expired)
            ),
        })
    }
}
