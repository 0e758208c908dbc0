//! The accept loop both directions share: a connection limit, TCP metrics, and tracked
//! connection tasks that shutdown can wait for.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::metrics::{self, Direction};
use crate::shared::{RunControl, Shared};
use crate::workers::Workers;

/// Accepts on `listener` until shutdown, running `handle` for each connection on the
/// least-loaded of `workers`, with that worker's shared state, while fewer than
/// `limits.max_connections` are open (others are closed at once and counted). `handle` returns
/// `Err(())` when the connection ended in an error (for the metrics).
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    direction: Direction,
    workers: Arc<Workers>,
    run: RunControl,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, Arc<Shared>) -> Fut,
    Fut: Future<Output = Result<(), ()>> + Send + 'static,
{
    let max_connections = workers.first().config.limits.max_connections;
    let limit = Arc::new(Semaphore::new(max_connections));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = run.shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(direction = direction.as_str(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            metrics::refused(direction);
            tracing::warn!(direction = direction.as_str(), %peer, max_connections, "connection limit reached; refusing");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let assigned = match workers.assign(tcp) {
            Ok(assigned) => assigned,
            Err(e) => {
                tracing::warn!(direction = direction.as_str(), %peer, error = %e, "could not hand the connection to a worker; closing");
                continue;
            }
        };
        metrics::tcp_opened(direction);
        // Boxed: a connection's future is up to a few kilobytes, and the task below would
        // otherwise hold it by value, copied at each step of spawning.
        let connection = Box::pin(handle(assigned.tcp, peer, assigned.shared));
        assigned.placement.spawn(&run.tasks, async move {
            let result = connection.await;
            metrics::tcp_closed(direction, result.is_err());
            drop(permit);
        });
    }
}
