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
use crate::inbound::http::AppClients;
use crate::mesh::MeshConnector;
use crate::outbound::pool::Pool;

/// State shared by both directions.
#[derive(Debug)]
pub struct Shared {
    /// The latest SVID and the TLS configurations built from it.
    pub credentials: watch::Receiver<Arc<Credentials>>,
    /// The resolved configuration (timeouts, limits, opaque ports).
    pub config: Arc<ProxyConfig>,
    /// Originates mTLS to peer proxies.
    pub mesh: MeshConnector,
    /// Pooled proxy-to-proxy HTTP/2 connections.
    pub pool: Pool,
    /// HTTP clients towards the local app.
    pub apps: AppClients,
    /// The authorization hook.
    pub authz: Authorizer,
}

impl Shared {
    /// This workload's SPIFFE ID (as of its current certificate).
    pub fn own_id(&self) -> Arc<str> {
        Arc::from(self.credentials.borrow().svid.id().as_str())
    }
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

    /// Relays bytes between `a` and `b` until both finish, the connection idles out, or the
    /// hard stop; counts the bytes under `client_id`/`server_id`. `Err(())` if it ended badly.
    pub async fn relay<A, B>(
        &self,
        a: A,
        b: B,
        idle: std::time::Duration,
        direction: crate::metrics::Direction,
        client_id: &str,
        server_id: &str,
    ) -> Result<(), ()>
    where
        A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
        B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let result = tokio::select! {
            r = crate::io::copy_bidirectional(a, b, idle) => r,
            _ = self.hard_stop.cancelled() => return Err(()),
        };
        let (moved, outcome) = match result {
            Ok(moved) => (moved, Ok(())),
            Err((e, moved)) => {
                tracing::debug!(direction = direction.as_str(), client = client_id, server = server_id, error = %e, "TCP relay ended");
                (moved, Err(()))
            }
        };
        crate::metrics::tcp_bytes(direction, client_id, server_id, moved.a_to_b, moved.b_to_a);
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
        tokio::select! {
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
