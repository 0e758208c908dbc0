//! Inbound: mTLS from peer proxies, terminated here. The client must present a valid SVID;
//! ALPN says what follows: `warden/h2` (HTTP, forwarded to the app as it speaks) or
//! `warden/tcp` (bytes). Every request and connection passes the authorization hook first.

pub mod http;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use warden_core::contract::{ALPN_HTTP2, ALPN_TCP};
use warden_core::SpiffeId;
use warden_identity::tls;

use crate::authz::{AuthzRequest, Verdict};
use crate::config::AppProtocol;
use crate::metrics::{self, Direction};
use crate::shared::{RunControl, Shared};

/// Where traffic accepted on an inbound listener goes.
#[derive(Debug, Clone)]
pub struct InboundTarget {
    /// The local app.
    pub app: SocketAddr,
    /// How to speak HTTP to it.
    pub protocol: AppProtocol,
}

/// One accepted, authenticated mesh connection.
#[derive(Debug)]
pub struct InboundConn {
    /// The peer's verified identity.
    pub client: SpiffeId,
    /// `TLSv1.3/X25519MLKEM768`-style description of the hop, for the app.
    pub tls: String,
    /// Where its traffic goes.
    pub target: InboundTarget,
}

/// Serves one inbound listener until shutdown.
pub async fn serve(
    listener: TcpListener,
    target: InboundTarget,
    shared: Arc<Shared>,
    run: RunControl,
) {
    let target = Arc::new(target);
    let max = shared.config.limits.max_connections;
    let control = run.clone();
    crate::listener::accept_loop(listener, Direction::Inbound, max, run, move |tcp, peer| {
        handle(tcp, peer, target.clone(), shared.clone(), control.clone())
    })
    .await;
}

async fn handle(
    tcp: TcpStream,
    peer: SocketAddr,
    target: Arc<InboundTarget>,
    shared: Arc<Shared>,
    run: RunControl,
) -> Result<(), ()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(shared.credentials.borrow().server.clone());
    let started = Instant::now();
    let stream =
        match tokio::time::timeout(shared.config.timeouts.handshake, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                // Plaintext, a bad certificate, no certificate: refused before any byte reaches the app.
                metrics::tls_handshake(Direction::Inbound, "failure", started.elapsed());
                tracing::info!(%peer, error = %e, "inbound TLS handshake refused");
                return Err(());
            }
            Err(_) => {
                metrics::tls_handshake(Direction::Inbound, "timeout", started.elapsed());
                tracing::info!(%peer, "inbound TLS handshake timed out");
                return Err(());
            }
        };
    metrics::tls_handshake(Direction::Inbound, "success", started.elapsed());
    let (_, conn) = stream.get_ref();
    let Some(client) = tls::peer_identity(conn) else {
        return Err(()); // unreachable: the verifier requires an SVID
    };
    let version = conn
        .protocol_version()
        .map_or("-".into(), |v| format!("{v:?}").replace('_', "."));
    let tls_desc = format!("{version}/{}", tls::key_exchange_name(conn));
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let inbound = Arc::new(InboundConn {
        client,
        tls: tls_desc,
        target: (*target).clone(),
    });
    match alpn.as_deref() {
        Some(p) if p == ALPN_HTTP2 => http::serve(stream, inbound, shared, run).await,
        Some(p) if p == ALPN_TCP => forward_tcp(stream, &inbound, &shared, &run).await,
        _ => {
            tracing::info!(%peer, "inbound connection without a Warden ALPN; closing");
            Err(())
        }
    }
}

/// Opaque TCP to the app, if the hook allows the connection.
async fn forward_tcp(
    stream: TlsStream<TcpStream>,
    conn: &InboundConn,
    shared: &Shared,
    run: &RunControl,
) -> Result<(), ()> {
    let request = AuthzRequest {
        client: Some(&conn.client),
        port: conn.target.app.port(),
        http: None,
    };
    if let Verdict::Deny { policy } = shared.authz.check(&request) {
        tracing::info!(client = %conn.client, port = request.port, %policy, "inbound TCP denied");
        return Err(()); // closed before any byte reaches the app
    }
    let app = match tokio::time::timeout(
        shared.config.timeouts.connect,
        TcpStream::connect(conn.target.app),
    )
    .await
    {
        Ok(Ok(app)) => app,
        Ok(Err(e)) => {
            tracing::warn!(app = %conn.target.app, error = %e, "inbound TCP: the app is unreachable");
            return Err(());
        }
        Err(_) => {
            tracing::warn!(app = %conn.target.app, "inbound TCP: connecting to the app timed out");
            return Err(());
        }
    };
    let _ = app.set_nodelay(true);
    let idle = shared.config.timeouts.idle;
    run.relay(
        stream,
        app,
        idle,
        Direction::Inbound,
        conn.client.as_str(),
        &shared.own_id(),
    )
    .await
}
