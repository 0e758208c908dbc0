//! Outbound: the local app's connections to other workloads. The protocol is detected from
//! the first bytes: HTTP travels as proxy-to-proxy HTTP/2 over pooled mTLS connections;
//! anything else (and opaque ports) as bytes over one mTLS connection per app connection.

pub mod http;
pub mod pool;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use warden_core::contract::ALPN_TCP;
use warden_core::SpiffeId;

use crate::detect::{detect, Detection, Protocol, MAX_REQUEST_LINE};
use crate::io::PrefixedIo;
use crate::metrics::Direction;
use crate::shared::{RunControl, Shared};

/// Where an app connection accepted on an outbound listener goes.
#[derive(Debug, Clone)]
pub struct OutboundTarget {
    /// The peer proxy's address.
    pub addr: SocketAddr,
    /// The identity the peer must present (`None`: any of the trust domain).
    pub expected: Option<SpiffeId>,
    /// Skip detection: always opaque TCP.
    pub opaque: bool,
}

/// Serves one outbound listener until shutdown.
pub async fn serve(
    listener: TcpListener,
    target: OutboundTarget,
    shared: Arc<Shared>,
    run: RunControl,
) {
    let target = Arc::new(target);
    let max = shared.config.limits.max_connections;
    let control = run.clone();
    crate::listener::accept_loop(
        listener,
        Direction::Outbound,
        max,
        run,
        move |tcp, _peer| handle(tcp, target.clone(), shared.clone(), control.clone()),
    )
    .await;
}

async fn handle(
    mut tcp: TcpStream,
    target: Arc<OutboundTarget>,
    shared: Arc<Shared>,
    run: RunControl,
) -> Result<(), ()> {
    let opaque = target.opaque || shared.config.opaque_ports.contains(&target.addr.port());
    let (protocol, prefix) = if opaque {
        (Protocol::Opaque, Bytes::new())
    } else {
        read_preface(&mut tcp, shared.config.timeouts.detect).await?
    };
    match protocol {
        Protocol::Http1 | Protocol::Http2 => {
            http::serve(PrefixedIo::new(prefix, tcp), protocol, target, shared, run).await
        }
        Protocol::Opaque => forward_tcp(tcp, prefix, &target, &shared, &run).await,
    }
}

/// Reads until the protocol is known. No bytes within `timeout` (a server-speaks-first
/// protocol) or a non-HTTP start means opaque.
async fn read_preface(tcp: &mut TcpStream, timeout: Duration) -> Result<(Protocol, Bytes), ()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if let Detection::Known(protocol) = detect(&buf) {
            return Ok((protocol, buf.freeze()));
        }
        if buf.len() >= MAX_REQUEST_LINE {
            return Ok((Protocol::Opaque, buf.freeze()));
        }
        buf.reserve(1024);
        match tokio::time::timeout_at(deadline, tcp.read_buf(&mut buf)).await {
            Err(_) => return Ok((Protocol::Opaque, buf.freeze())),
            Ok(Ok(0)) if buf.is_empty() => return Err(()), // closed before saying anything
            Ok(Ok(0)) => return Ok((Protocol::Opaque, buf.freeze())),
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Err(()),
        }
    }
}

/// Opaque TCP: one mTLS connection (ALPN `warden/tcp`) per app connection. If the peer
/// cannot be reached the app's connection is reset, as it would be by a dead server.
async fn forward_tcp(
    tcp: TcpStream,
    prefix: Bytes,
    target: &OutboundTarget,
    shared: &Shared,
    run: &RunControl,
) -> Result<(), ()> {
    let mesh = match shared
        .mesh
        .connect(target.addr, target.expected.as_ref(), ALPN_TCP)
        .await
    {
        Ok(mesh) => mesh,
        Err(e) => {
            tracing::warn!(destination = %target.addr, error = %e, "outbound TCP: cannot reach the peer; resetting");
            let _ = tcp.set_zero_linger();
            return Err(());
        }
    };
    let app = PrefixedIo::new(prefix, tcp);
    let idle = shared.config.timeouts.idle;
    run.relay(
        app,
        mesh.stream,
        idle,
        Direction::Outbound,
        &shared.own_id(),
        mesh.peer.as_str(),
    )
    .await
}
