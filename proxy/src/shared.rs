//! What every connection handler of a running proxy shares, and how they are told to stop.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warden_identity::rotation::Credentials;

use crate::authz::Authorizer;
use crate::config::ProxyConfig;
use crate::inbound::app::AppClients;
use crate::mesh::MeshConnector;
use crate::outbound::pool::Pool;

/// State shared by both directions.
#[derive(Debug)]
pub struct Shared {
    /// The latest SVID and the TLS configurations built from it.
    pub credentials: watch::Receiver<Arc<Credentials>>,
    /// The resolved configuration (timeouts, limits, opaque ports).
    pub config: Arc<ProxyConfig>,
    /// Originates mTLS to peer proxies (one for all workers).
    pub mesh: Arc<MeshConnector>,
    /// Pooled proxy-to-proxy HTTP/2 connections.
    pub pool: Pool,
    /// HTTP clients towards the local app.
    pub apps: AppClients,
    /// The authorization hook.
    pub authz: Authorizer,
    /// Who must answer at each destination (transparent mode with a control plane); without
    /// it, `transparent.mesh_networks` decides what is meshed.
    pub discovery: Option<Arc<crate::discovery::Discovery>>,
    /// The mesh policy's rules for outbound connections (`meshOnly`, unknown destinations).
    pub outbound_rules: watch::Receiver<crate::control_plane::OutboundRules>,
    /// Per-hop latency samples (bench-only builds).
    #[cfg(feature = "hop-timing")]
    pub hops: Arc<crate::hop_timing::Recorder>,
}

impl Shared {
    /// This workload's SPIFFE ID (as of its current certificate).
    pub fn own_id(&self) -> Arc<str> {
        Arc::from(self.credentials.borrow().svid.id().as_str())
    }
}

/// Which series a relayed connection's bytes are counted under.
#[derive(Debug, Clone, Copy)]
pub enum Accounting<'a> {
    /// A mesh connection between two identities.
    Mesh {
        /// Inbound or outbound.
        direction: crate::metrics::Direction,
        /// The calling side's identity.
        client_id: &'a str,
        /// The called side's identity.
        server_id: &'a str,
    },
    /// Plain TCP from the local app to a destination without a sidecar, or outside the
    /// mesh: no identity answers, so it is counted and logged as `tls="false"`.
    Plain {
        /// The local workload's identity.
        client_id: &'a str,
        /// Where the app connected.
        destination: std::net::SocketAddr,
    },
}

/// How connection handlers learn that the proxy is stopping.
#[derive(Debug, Clone)]
pub struct RunControl {
    /// Fires at SIGTERM: stop accepting; HTTP connections are asked to finish (GOAWAY).
    pub shutdown: CancellationToken,
    /// Fires when the grace period is over: whatever is still open is dropped.
    pub hard_stop: CancellationToken,
    /// Tracks every connection task, so shutdown can wait for them.
    pub tasks: TaskTracker,
}

impl RunControl {
    /// A control for a proxy stopped by `shutdown`.
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            shutdown,
            hard_stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// Relays bytes between `a` (the client side) and `b` until both finish, the connection
    /// idles out, `until` resolves (e.g. a policy change revoked it), or the hard stop; counts the bytes as `accounting` says. `Err(())` if it
    /// ended badly.
    pub async fn relay<A, B>(
        &self,
        a: A,
        b: B,
        idle: std::time::Duration,
        accounting: Accounting<'_>,
        until: impl Future<Output = ()>,
    ) -> Result<(), ()>
    where
        A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
        B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let started = std::time::Instant::now();
        let result = tokio::select! {
            r = crate::io::copy_bidirectional(a, b, idle) => r,
            _ = self.hard_stop.cancelled() => return Err(()),
            () = until => return Err(()),
        };
        let (moved, outcome) = match result {
            Ok(moved) => (moved, Ok(())),
            Err((e, moved)) => {
                if refused_http(&e) {
                    tracing::info!(?accounting, error = %e, "TCP relay closed");
                } else {
                    tracing::debug!(?accounting, error = %e, "TCP relay ended");
                }
                (moved, Err(()))
            }
        };
        let (direction, client_id, server_id, tls) = match accounting {
            Accounting::Mesh {
                direction,
                client_id,
                server_id,
            } => (direction, client_id, server_id, true),
            Accounting::Plain { client_id, .. } => {
                (crate::metrics::Direction::Outbound, client_id, "", false)
            }
        };
        crate::metrics::tcp_bytes(
            direction,
            client_id,
            server_id,
            tls,
            moved.a_to_b,
            moved.b_to_a,
        );
        if crate::access_log::enabled() {
            crate::access_log::connection(&accounting, &moved, started.elapsed(), outcome.is_ok());
        }
        outcome
    }

    /// Drives an HTTP connection; at shutdown asks it to finish gracefully (`graceful`:
    /// HTTP/1 closes after the current response, HTTP/2 sends GOAWAY), and drops it at the
    /// hard stop.
    pub async fn serve_http<C, E>(&self, conn: C, graceful: fn(Pin<&mut C>)) -> Result<(), E>
    where
        C: Future<Output = Result<(), E>>,
    {
        let mut conn = std::pin::pin!(conn);
        // The connection first: one handed over with a request already read (by the
        // outbound proxy's own HTTP/1.1 path) must take that request in before it is told
        // to shut down, or hyper, having read nothing yet, closes it unanswered.
        tokio::select! {
            biased;
            result = conn.as_mut() => return result,
            _ = self.shutdown.cancelled() => {}
        }
        graceful(conn.as_mut());
        tokio::select! {
            result = conn => result,
            _ = self.hard_stop.cancelled() => Ok(()),
        }
    }
}

/// Whether a relay ended because the inbound guard refused an HTTP request sent as opaque
/// TCP (logged where operators look, unlike a peer's ordinary reset).
fn refused_http(error: &crate::io::CopyError) -> bool {
    matches!(error, crate::io::CopyError::Io(e)
        if e.get_ref().is_some_and(|inner| inner.is::<crate::inbound::opaque_guard::HttpOverOpaque>()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::Full;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    #[tokio::test]
    async fn a_connection_handed_over_with_a_request_read_answers_it_even_after_shutdown() {
        // What the outbound proxy's own HTTP/1.1 path hands hyper: the connection, and the
        // request it already read. Shutdown began before hyper first ran.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let run = RunControl::new(CancellationToken::new());
        run.shutdown.cancel();
        let read = Bytes::from_static(b"POST / HTTP/1.1\r\nhost: s\r\ncontent-length: 2\r\n\r\nhi");
        let io = hyper_util::rt::TokioIo::new(crate::io::PrefixedIo::new(read, tcp));
        let service = hyper::service::service_fn(|_req| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from("ok"))))
        });
        let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
        run.serve_http(conn, |c| c.graceful_shutdown())
            .await
            .unwrap();
        client.shutdown().await.unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer:?}");
        assert!(answer.ends_with("\r\n\r\nok"), "{answer:?}");
    }
}
