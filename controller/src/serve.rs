//! The proxies' API on port 7160 (DESIGN section 9): one mTLS listener serving
//! `warden.policy.v1` ([`crate::policy_api`]) and `warden.discovery.v1`
//! ([`crate::discovery_api`]). TLS, connection limits and routing by gRPC service are here;
//! HTTP/2 and gRPC framing in tonic (without its router); every decision in the indexes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use warden_api::grpc::{MAX_REQUEST_BYTES, MAX_SNAPSHOT_BYTES};
use warden_core::SpiffeId;
use warden_identity::rotation::Credentials;

use crate::discovery_api::{DestinationsServer, DiscoveryService};
use crate::policy_api::{InboundPolicyServer, PolicyService};

/// Bounds on what callers can make the controller hold.
#[derive(Debug, Clone)]
pub struct ServeLimits {
    /// TLS connections open at once; more are closed at once.
    pub max_connections: usize,
    /// A TLS handshake.
    pub handshake_timeout: Duration,
    /// Concurrent streams on one HTTP/2 connection.
    pub max_streams_per_connection: u32,
    /// Subscriptions open at once for one pod (a proxy needs one; a reconnect briefly two).
    pub max_subscriptions_per_pod: usize,
    /// How long a subscription waits for the first list of every watch before it is told
    /// to retry (so nothing half-listed is served as a snapshot).
    pub sync_wait: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_connections: 20_000,
            handshake_timeout: Duration::from_secs(10),
            // A proxy needs two (its policy stream and its discovery stream), and briefly
            // more while one is replaced.
            max_streams_per_connection: 16,
            max_subscriptions_per_pod: 4,
            sync_wait: Duration::from_secs(10),
        }
    }
}

/// Who is on the other end of a connection: its verified SPIFFE ID and address.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The SPIFFE ID of the client's SVID (verified in the handshake).
    pub id: SpiffeId,
    /// The connection's source address.
    pub addr: SocketAddr,
}

/// A TLS connection with its verified peer, holding a connection slot until dropped.
pub struct PeerConnection {
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    peer: Peer,
    _slot: Open,
}

/// A verified connection's place under the connection cap, counted in
/// `warden_controller_connections` while it is open.
struct Open {
    _permit: OwnedSemaphorePermit,
}

impl Open {
    fn new(permit: OwnedSemaphorePermit) -> Self {
        metrics::gauge!("warden_controller_connections").increment(1.0);
        Self { _permit: permit }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        metrics::gauge!("warden_controller_connections").decrement(1.0);
    }
}

impl Connected for PeerConnection {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for PeerConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }
}

/// Accepts TCP connections and completes their mTLS handshakes (each in its own task,
/// bounded in time and number) with the current SVID, yielding verified connections.
fn incoming(
    listener: TcpListener,
    credentials: watch::Receiver<Arc<Credentials>>,
    limits: &ServeLimits,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<PeerConnection, std::io::Error>> {
    metrics::describe_gauge!(
        "warden_controller_connections",
        "Verified mTLS connections from proxies open now (one per proxy: its policy stream and destination watches share it)."
    );
    let (tx, rx) = tokio::sync::mpsc::channel::<PeerConnection>(64);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let handshake_timeout = limits.handshake_timeout;
    tokio::spawn(async move {
        loop {
            let (tcp, addr) = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                metrics::counter!("warden_controller_connections_refused_total").increment(1);
                tracing::warn!(%addr, "connection limit reached; closing a new connection");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(credentials.borrow().server.clone());
            let tx = tx.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        let why = warden_identity::verify::describe_handshake_error(&e);
                        tracing::info!(%addr, error = %why, "mTLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(%addr, "mTLS handshake timed out");
                        return;
                    }
                };
                let id = match warden_identity::tls::peer_identity(tls.get_ref().1) {
                    Ok(id) => id,
                    Err(error) => {
                        tracing::info!(%addr, %error, "mTLS connection refused");
                        return;
                    }
                };
                let peer = Peer { id, addr };
                let _ = tx
                    .send(PeerConnection {
                        tls,
                        peer,
                        _slot: Open::new(slot),
                    })
                    .await;
            });
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        let connection = rx.recv().await?;
        Some((Ok(connection), rx))
    })
}

/// The verified peer of a call (set on every connection by [`incoming`]).
pub(crate) fn peer_of<T>(request: &tonic::Request<T>) -> Result<Peer, tonic::Status> {
    request
        .extensions()
        .get::<Peer>()
        .cloned()
        .ok_or_else(|| tonic::Status::unauthenticated("no client certificate"))
}

/// Waits (at most `wait`) until every watch has listed: nothing half-listed is served.
pub(crate) async fn until_synced(
    synced: &watch::Receiver<bool>,
    wait: Duration,
) -> Result<(), tonic::Status> {
    let mut synced = synced.clone();
    let listed = tokio::time::timeout(wait, synced.wait_for(|s| *s))
        .await
        .is_ok_and(|r| r.is_ok());
    if listed {
        Ok(())
    } else {
        Err(tonic::Status::unavailable(
            "the controller has not listed every watch yet; retry",
        ))
    }
}

/// Both APIs on one port: each request goes to its gRPC service by path.
#[derive(Clone)]
struct Routes {
    policy: InboundPolicyServer<PolicyService>,
    discovery: DestinationsServer<DiscoveryService>,
}

impl tower_service::Service<http::Request<tonic::body::Body>> for Routes {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if request
            .uri()
            .path()
            .starts_with("/warden.discovery.v1.Destinations/")
        {
            self.discovery.call(request)
        } else {
            // Anything else gets the policy service's UNIMPLEMENTED for unknown methods.
            self.policy.call(request)
        }
    }
}

/// Serves the proxies' APIs on `listener` until `shutdown`: streams end with UNAVAILABLE, so
/// proxies reconnect to another replica at once, keeping what they have meanwhile.
pub async fn run(
    listener: TcpListener,
    policy: PolicyService,
    discovery: DiscoveryService,
    credentials: watch::Receiver<Arc<Credentials>>,
    limits: ServeLimits,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let incoming = incoming(listener, credentials, &limits, shutdown.clone());
    let routes = Routes {
        policy: InboundPolicyServer::new(policy)
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(MAX_SNAPSHOT_BYTES),
        discovery: DestinationsServer::new(discovery)
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(MAX_SNAPSHOT_BYTES),
    };
    tonic::transport::Server::builder()
        .max_concurrent_streams(Some(limits.max_streams_per_connection))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .serve_with_incoming_shutdown(routes, incoming, shutdown.cancelled_owned())
        .await
}
