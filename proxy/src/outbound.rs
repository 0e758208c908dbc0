//! Outbound: the local app's connections to other workloads. The protocol is detected from
//! the first bytes: HTTP travels as proxy-to-proxy HTTP/2 over pooled mTLS connections;
//! anything else (and opaque ports) as bytes over one mTLS connection per app connection.
//! In transparent mode the destination is the connection's original destination; discovery
//! (or, without a control plane, the mesh networks) says who must answer there, and
//! destinations without a sidecar pass through as plain TCP (`tls="false"`).

pub mod http;
pub mod http1;
pub mod pool;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use warden_core::contract::{self, ALPN_TCP};

use crate::detect::Protocol;
use crate::io::{read_preface, PrefixedIo};
use crate::mesh::Expected;
use crate::metrics::{self, Direction};
use crate::original_dst::original_dst;
use crate::shared::{Accounting, RunControl, Shared};
use crate::workers::Workers;

/// Where an app connection accepted on an outbound listener goes.
#[derive(Debug, Clone)]
pub struct OutboundTarget {
    /// The peer proxy's address.
    pub addr: SocketAddr,
    /// The identities that may answer (empty: any of a trusted trust domain).
    pub expected: Expected,
    /// Skip detection: always opaque TCP.
    pub opaque: bool,
}

/// How an outbound listener finds the destination of each connection.
#[derive(Debug, Clone)]
pub enum Destination {
    /// A configured route (explicit mode).
    Route(OutboundTarget),
    /// The original destination of a redirected connection (transparent mode).
    OriginalDst,
}

/// Serves one outbound listener until shutdown.
pub async fn serve(
    listener: TcpListener,
    destination: Destination,
    workers: Arc<Workers>,
    run: RunControl,
) {
    let destination = Arc::new(destination);
    let control = run.clone();
    crate::listener::accept_loop(
        listener,
        Direction::Outbound,
        workers,
        run,
        move |tcp, _peer, shared| dispatch(tcp, destination.clone(), shared, control.clone()),
    )
    .await;
}

async fn dispatch(
    tcp: TcpStream,
    destination: Arc<Destination>,
    shared: Arc<Shared>,
    run: RunControl,
) -> Result<(), ()> {
    let target = match &*destination {
        Destination::Route(target) => target.clone(),
        Destination::OriginalDst => {
            let orig = original_dst(&tcp).map_err(|e| {
                tracing::info!(error = %e, "outbound connection was not redirected; closing");
            })?;
            let listener = tcp.local_addr().map_err(|_| ())?;
            if orig == listener || (orig.ip().is_loopback() && orig.port() == listener.port()) {
                tracing::warn!(%orig, "outbound connection to the proxy itself; closing");
                return Err(());
            }
            // Boxed, as the branches below: a connection's task is as large as its largest
            // state, and the HTTP path (most connections) should not carry the others'.
            match admin_port_plain(orig, Box::pin(decide(orig, &shared)).await) {
                Route::Mesh(target) => target,
                Route::Plain => return Box::pin(plain(tcp, orig, &shared, &run)).await,
                Route::Refuse(why) => {
                    metrics::outbound_refused(why);
                    tracing::info!(destination = %orig, reason = why, "outbound connection refused");
                    let _ = tcp.set_zero_linger();
                    return Err(());
                }
            }
        }
    };
    metrics::outbound_connection(true);
    handle(tcp, target, shared, run).await
}

/// What becomes of a redirected connection.
enum Route {
    /// mTLS to the destination's proxy.
    Mesh(OutboundTarget),
    /// Plain TCP passthrough.
    Plain,
    /// Refused (reset), with the reason for the metric.
    Refuse(&'static str),
}

/// Another meshed pod's proxy admin port is plaintext by design (its inbound rules skip it,
/// so Prometheus can scrape it): a connection the mesh would carry there passes through
/// plain instead. Only that: one the mesh policy refuses (`meshOnly`, unknown destinations)
/// stays refused, whatever its port.
fn admin_port_plain(orig: SocketAddr, route: Route) -> Route {
    match route {
        Route::Mesh(_) if orig.port() == contract::ADMIN_PORT => Route::Plain,
        other => other,
    }
}

/// Where a redirected connection to `orig` goes: by discovery when there is a controller
/// (the right identities, protocol hints, plain TCP to pods without a sidecar), else by the
/// mesh networks.
async fn decide(orig: SocketAddr, shared: &Shared) -> Route {
    let Some(discovery) = &shared.discovery else {
        return if shared.config.transparent.is_mesh(orig.ip()) {
            Route::Mesh(OutboundTarget {
                addr: orig,
                expected: crate::mesh::any_trusted(),
                opaque: false,
            })
        } else {
            Route::Plain
        };
    };
    let rules = *shared.outbound_rules.borrow();
    match discovery.resolve(orig).await {
        Some(found) if found.meshed => Route::Mesh(OutboundTarget {
            addr: orig,
            expected: found.identities.clone(),
            opaque: found.protocol == crate::discovery::ProtocolHint::Opaque,
        }),
        // A pod or Service without the sidecar: plain TCP, unless the mesh is mesh-only.
        Some(found) if found.kind != crate::discovery::Kind::Unknown => {
            if rules.mesh_only {
                Route::Refuse("unmeshed-destination")
            } else {
                Route::Plain
            }
        }
        // Outside the cluster, or not known (yet): passed through as without a mesh, unless
        // the mesh policy refuses unknown destinations (then unanswered lookups are too).
        _ if rules.refuse_unknown => Route::Refuse("unknown-destination"),
        _ => Route::Plain,
    }
}

async fn handle(
    mut tcp: TcpStream,
    target: OutboundTarget,
    shared: Arc<Shared>,
    run: RunControl,
) -> Result<(), ()> {
    let opaque = target.opaque || shared.config.opaque_ports.contains(&target.addr.port());
    let (protocol, prefix) = if opaque {
        (Protocol::Opaque, Bytes::new())
    } else {
        read_preface(&mut tcp, shared.config.timeouts.detect).await?
    };
    // Each branch boxed: a connection's task is as large as its largest state, and an
    // opaque connection (a pooled database connection, say) should not carry hyper's.
    match protocol {
        Protocol::Http1 | Protocol::Http2 => {
            Box::pin(http::serve(
                PrefixedIo::new(prefix, tcp),
                protocol,
                Arc::new(target),
                shared,
                run,
            ))
            .await
        }
        Protocol::Opaque => Box::pin(forward_tcp(tcp, prefix, &target, &shared, &run)).await,
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
        .connect(target.addr, &target.expected, ALPN_TCP)
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
    let own = shared.own_id();
    let accounting = Accounting::Mesh {
        direction: Direction::Outbound,
        client_id: &own,
        server_id: mesh.peer.as_str(),
    };
    run.relay(
        app,
        mesh.stream,
        shared.config.timeouts.idle,
        accounting,
        std::future::pending(),
    )
    .await
}

/// A destination without a sidecar or outside the mesh: plain TCP, as if there were no
/// proxy, counted and logged with `tls="false"`.
async fn plain(
    tcp: TcpStream,
    orig: SocketAddr,
    shared: &Shared,
    run: &RunControl,
) -> Result<(), ()> {
    metrics::outbound_connection(false);
    let upstream = match tokio::time::timeout(
        shared.config.timeouts.connect,
        TcpStream::connect(orig),
    )
    .await
    {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(e)) => {
            tracing::info!(destination = %orig, error = %e, "plain TCP: destination unreachable; resetting");
            let _ = tcp.set_zero_linger();
            return Err(());
        }
        Err(_) => {
            tracing::info!(destination = %orig, "plain TCP: connect timed out; resetting");
            let _ = tcp.set_zero_linger();
            return Err(());
        }
    };
    let _ = upstream.set_nodelay(true);
    let own = shared.own_id();
    run.relay(
        tcp,
        upstream,
        shared.config.timeouts.idle,
        Accounting::Plain {
            client_id: &own,
            destination: orig,
        },
        std::future::pending(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_port_passes_plain_only_where_the_mesh_would_carry_the_connection() {
        let admin = |ip: &str| SocketAddr::new(ip.parse().unwrap(), contract::ADMIN_PORT);
        let mesh = || {
            Route::Mesh(OutboundTarget {
                addr: admin("10.0.0.7"),
                expected: crate::mesh::any_trusted(),
                opaque: false,
            })
        };
        let app_port: SocketAddr = "10.0.0.7:8080".parse().unwrap();
        // (destination, what the mesh decided, what becomes of it: "mesh", "plain" or the
        // reason it is refused)
        let cases = [
            (
                "a meshed pod's admin port",
                admin("10.0.0.7"),
                mesh(),
                "plain",
            ),
            ("a meshed pod's app port", app_port, mesh(), "mesh"),
            (
                "an unmeshed destination",
                admin("10.0.0.8"),
                Route::Plain,
                "plain",
            ),
            (
                "an unknown destination the mesh refuses",
                admin("169.254.169.254"),
                Route::Refuse("unknown-destination"),
                "unknown-destination",
            ),
            (
                "an unmeshed pod in a mesh-only mesh",
                admin("10.0.0.9"),
                Route::Refuse("unmeshed-destination"),
                "unmeshed-destination",
            ),
        ];
        for (case, orig, decided, expected) in cases {
            let got = match admin_port_plain(orig, decided) {
                Route::Mesh(_) => "mesh",
                Route::Plain => "plain",
                Route::Refuse(why) => why,
            };
            assert_eq!(got, expected, "{case}");
        }
    }
}
