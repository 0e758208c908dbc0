//! Inbound: mTLS from peer proxies, terminated here. The client must present a valid SVID;
//! ALPN says what follows: `warden/h2` (HTTP, forwarded to the app as it speaks) or
//! `warden/tcp` (bytes). Every request and connection passes the authorization hook first.
//! In permissive mode, plaintext from callers without a sidecar is accepted as
//! unauthenticated (still subject to the hook); in strict mode it is refused.

pub mod app;
pub mod app_http1;
pub mod http;
pub mod opaque_guard;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use warden_core::contract::{ALPN_HTTP2, ALPN_TCP};
use warden_core::SpiffeId;
use warden_identity::tls;

use crate::authz::{AuthzContext, AuthzRequest, LiveConnection, Verdict};
use crate::config::{AppProtocol, InboundMode};
use crate::detect::Protocol;
use crate::io::{read_preface, PrefixedIo};
use crate::metrics::{self, Direction};
use crate::original_dst::original_dst;
use crate::shared::{Accounting, RunControl, Shared};
use crate::workers::Workers;
use opaque_guard::OpaqueGuard;

/// Where traffic accepted on an inbound listener goes.
#[derive(Debug, Clone)]
pub struct InboundTarget {
    /// The local app.
    pub app: SocketAddr,
    /// How to speak HTTP to it.
    pub protocol: AppProtocol,
}

/// How an inbound listener finds the app for each connection.
#[derive(Debug, Clone)]
pub enum AppTarget {
    /// A configured app (explicit mode).
    Fixed(InboundTarget),
    /// The original destination of a redirected connection (transparent mode).
    OriginalDst,
}

/// One accepted inbound connection.
#[derive(Debug)]
pub struct InboundConn {
    /// The peer's verified identity; `None` for a permissive-mode plaintext caller.
    pub client: Option<SpiffeId>,
    /// The caller's address.
    pub peer: SocketAddr,
    /// Where its traffic goes.
    pub target: InboundTarget,
    /// The app's address as a URI authority, formatted once for all the requests.
    pub app_authority: ::http::uri::Authority,
    /// What every request to the app carries about the caller, built once.
    pub headers: CallerHeaders,
}

/// The `x-warden-client-id` and `x-warden-tls` values for a connection's requests.
#[derive(Debug)]
pub struct CallerHeaders {
    /// The verified caller (none for an unauthenticated one).
    pub client_id: Option<::http::HeaderValue>,
    /// The TLS hop, `TLSv1.3/X25519MLKEM768`-style (none for plaintext).
    pub tls: Option<::http::HeaderValue>,
}

impl InboundConn {
    /// A connection from `peer` for `target` (`None`, logged, in the impossible case that
    /// the app's address is not a URI authority).
    pub fn new(
        client: Option<SpiffeId>,
        tls: Option<String>,
        peer: SocketAddr,
        target: InboundTarget,
    ) -> Option<Self> {
        // Cannot fail (an IP and port are a valid authority); a connection, not the proxy,
        // would end if it did.
        let app_authority = ::http::uri::Authority::try_from(target.app.to_string()).map_err(
            |e| tracing::warn!(app = %target.app, error = %e, "app address is not a URI authority"),
        ).ok()?;
        let headers = CallerHeaders {
            client_id: client
                .as_ref()
                .and_then(|c| ::http::HeaderValue::from_str(c.as_str()).ok()),
            tls: tls
                .as_deref()
                .and_then(|t| ::http::HeaderValue::from_str(t).ok()),
        };
        Some(Self {
            client,
            peer,
            target,
            app_authority,
            headers,
        })
    }

    /// The caller for metrics and logs.
    pub fn client_label(&self) -> &str {
        self.client
            .as_ref()
            .map_or("unauthenticated", SpiffeId::as_str)
    }
}

/// Serves one inbound listener until shutdown.
pub async fn serve(
    listener: TcpListener,
    target: AppTarget,
    workers: Arc<Workers>,
    run: RunControl,
) {
    let target = Arc::new(target);
    let control = run.clone();
    crate::listener::accept_loop(
        listener,
        Direction::Inbound,
        workers,
        run,
        move |tcp, peer, shared| handle(tcp, peer, target.clone(), shared, control.clone()),
    )
    .await;
}

async fn handle(
    tcp: TcpStream,
    peer: SocketAddr,
    target: Arc<AppTarget>,
    shared: Arc<Shared>,
    run: RunControl,
) -> Result<(), ()> {
    let target = match &*target {
        AppTarget::Fixed(target) => target.clone(),
        AppTarget::OriginalDst => {
            let app = original_dst(&tcp).map_err(|e| {
                tracing::info!(%peer, error = %e, "inbound connection was not redirected; closing");
            })?;
            if shared.config.own_ports().contains(&app.port()) {
                // The proxy's own ports are never an app: forwarding there would loop.
                tracing::warn!(%peer, destination = %app, "inbound connection to the proxy's own port; closing");
                return Err(());
            }
            InboundTarget {
                app,
                protocol: AppProtocol::Auto,
            }
        }
    };
    if shared.config.inbound_mode == InboundMode::Permissive
        && !starts_with_tls(&tcp, &shared).await?
    {
        // Boxed, as opaque TCP below: a connection's task is as large as its largest state,
        // and mTLS HTTP connections (most of them) should not carry the others'.
        return Box::pin(plaintext(tcp, peer, target, &shared, &run)).await;
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(shared.credentials.borrow().server.clone());
    let started = Instant::now();
    let stream =
        match tokio::time::timeout(shared.config.timeouts.handshake, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                // Plaintext, a bad certificate, no certificate: refused before any byte reaches the app.
                metrics::tls_handshake(Direction::Inbound, "failure", started.elapsed());
                let error = warden_identity::verify::describe_handshake_error(&e);
                tracing::info!(%peer, %error, "inbound TLS handshake refused");
                return Err(());
            }
            Err(_) => {
                metrics::tls_handshake(Direction::Inbound, "timeout", started.elapsed());
                tracing::info!(%peer, "inbound TLS handshake timed out");
                return Err(());
            }
        };
    let (_, conn) = stream.get_ref();
    let client = match tls::peer_identity(conn) {
        Ok(client) => Some(client),
        Err(error) => {
            // A session resumed past its certificate's validity (the verifier requires an
            // SVID of every full handshake).
            metrics::tls_handshake(Direction::Inbound, "failure", started.elapsed());
            tracing::info!(%peer, %error, "inbound TLS handshake refused");
            return Err(());
        }
    };
    metrics::tls_handshake(Direction::Inbound, "success", started.elapsed());
    let version = conn
        .protocol_version()
        .map_or("-".into(), |v| format!("{v:?}").replace('_', "."));
    let tls_desc = format!("{version}/{}", tls::key_exchange_name(conn));
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let inbound = Arc::new(InboundConn::new(client, Some(tls_desc), peer, target).ok_or(())?);
    // Each branch boxed, as above: opaque connections do not carry the HTTP/2 server's state.
    match alpn.as_deref() {
        Some(p) if p == ALPN_HTTP2 => {
            Box::pin(http::serve(stream, Protocol::Http2, inbound, shared, run)).await
        }
        Some(p) if p == ALPN_TCP => Box::pin(forward_tcp(stream, &inbound, &shared, &run)).await,
        _ => {
            tracing::info!(%peer, "inbound connection without a Warden ALPN; closing");
            Err(())
        }
    }
}

/// Whether the connection opens with a TLS handshake record (peeked, not consumed).
async fn starts_with_tls(tcp: &TcpStream, shared: &Shared) -> Result<bool, ()> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(shared.config.timeouts.detect, tcp.peek(&mut first)).await {
        Ok(Ok(1)) => Ok(first[0] == 0x16),
        Ok(_) => Err(()),
        // Silent: a plaintext server-speaks-first client.
        Err(_) => Ok(false),
    }
}

/// Permissive mode: a caller without a sidecar, as an unauthenticated client.
async fn plaintext(
    mut tcp: TcpStream,
    peer: SocketAddr,
    target: InboundTarget,
    shared: &Arc<Shared>,
    run: &RunControl,
) -> Result<(), ()> {
    let (protocol, prefix) = read_preface(&mut tcp, shared.config.timeouts.detect).await?;
    let conn = Arc::new(InboundConn::new(None, None, peer, target).ok_or(())?);
    let io = PrefixedIo::new(prefix, tcp);
    match protocol {
        Protocol::Http1 | Protocol::Http2 => {
            http::serve(io, protocol, conn, shared.clone(), run.clone()).await
        }
        Protocol::Opaque => forward_tcp(io, &conn, shared, run).await,
    }
}

/// Opaque TCP to the app, if the hook allows the connection.
async fn forward_tcp<I>(
    stream: I,
    conn: &InboundConn,
    shared: &Shared,
    run: &RunControl,
) -> Result<(), ()>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    if conn.target.protocol != AppProtocol::Auto {
        // The app is declared to speak HTTP: bytes relayed unread could carry an HTTP request
        // with a forged `x-warden-client-id`, which only the HTTP path removes.
        tracing::info!(client = conn.client_label(), app = %conn.target.app, "inbound opaque TCP to an app declared HTTP; closing");
        return Err(());
    }
    let request = AuthzRequest {
        client: conn.client.as_ref(),
        port: conn.target.app.port(),
        http: None,
    };
    let workload = shared.credentials.borrow().svid.id().clone();
    let request_id = crate::http::request_id();
    let ctx = AuthzContext {
        workload: &workload,
        client_addr: Some(conn.peer),
        request_id: &request_id,
    };
    // Watching for policy changes starts before the check, so none is missed in between.
    let revoked = shared.authz.until_revoked(LiveConnection {
        client: conn.client.clone(),
        port: request.port,
        http: None,
        workload: workload.clone(),
        client_addr: Some(conn.peer),
    });
    match shared.authz.check(&request, &ctx) {
        Verdict::Allow => {}
        Verdict::Deny { policy } => {
            tracing::info!(client = conn.client_label(), port = request.port, %policy, %request_id, "inbound TCP denied");
            return Err(()); // closed before any byte reaches the app
        }
        Verdict::Unrecorded(e) => {
            tracing::warn!(client = conn.client_label(), port = request.port, %request_id, error = %e, "inbound TCP refused: its audit record cannot be kept");
            return Err(());
        }
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
    let own = shared.own_id();
    let accounting = Accounting::Mesh {
        direction: Direction::Inbound,
        client_id: conn.client_label(),
        server_id: &own,
    };
    // An app left at `auto` may speak HTTP: unless the port is opaque, an HTTP request in
    // these bytes (a forged `x-warden-client-id` in it) ends the connection.
    let guarded = !shared.config.is_opaque_app_port(conn.target.app.port());
    run.relay(
        OpaqueGuard::new(stream, guarded),
        app,
        shared.config.timeouts.idle,
        accounting,
        revoked,
    )
    .await
}
