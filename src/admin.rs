//! The admin endpoint of the control-plane commands (`identity`, `injector`).

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use warden_identity::admin::{self, Readiness};

/// Binds `addr` and serves `/live`, `/ready` (from the returned sender), `/metrics` and
/// `/log-level` until `shutdown`; returns the readiness sender and the bound address.
pub async fn start(
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<(watch::Sender<Readiness>, SocketAddr)> {
    let (ready_tx, ready_rx) = watch::channel(Readiness::not_ready("starting"));
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the admin address {addr}"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(admin::serve(
        listener,
        ready_rx,
        warden_proxy::logging::telemetry(),
        shutdown,
    ));
    Ok((ready_tx, bound))
}
