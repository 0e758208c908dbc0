//! Pooled proxy-to-proxy HTTP/2 connections: one mTLS connection per destination and
//! expected identity, shared by every app connection and request to it. A closed connection
//! is replaced on next use.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use warden_core::contract::ALPN_HTTP2;
use warden_core::SpiffeId;

use crate::http::{ProxyBody, ProxyError};
use crate::mesh::MeshConnector;

/// Where a pooled connection goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The peer proxy's address.
    pub addr: SocketAddr,
    /// The identity it must present (`None`: any of the trust domain).
    pub expected: Option<SpiffeId>,
}

/// A usable pooled connection and the peer's verified identity.
#[derive(Debug, Clone)]
pub struct Pooled {
    /// Sends requests on the shared connection.
    pub sender: SendRequest<ProxyBody>,
    /// The peer's SPIFFE ID (for metrics and logs).
    pub peer: Arc<str>,
}

type Slot = Arc<tokio::sync::Mutex<Option<Pooled>>>;

/// The pool.
#[derive(Debug, Default)]
pub struct Pool {
    slots: Mutex<HashMap<PoolKey, Slot>>,
    max_header_bytes: u32,
}

impl Pool {
    /// An empty pool; connections accept response headers up to `max_header_bytes`.
    pub fn new(max_header_bytes: usize) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            max_header_bytes: u32::try_from(max_header_bytes).unwrap_or(u32::MAX),
        }
    }

    /// A live connection for `key`, connecting if there is none. Concurrent callers for the
    /// same key wait for one connection rather than each opening their own.
    pub async fn get(
        &self,
        key: &PoolKey,
        connector: &MeshConnector,
    ) -> Result<Pooled, ProxyError> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.entry(key.clone()).or_default().clone()
        };
        let mut guard = slot.lock().await;
        if let Some(pooled) = guard.as_ref() {
            if !pooled.sender.is_closed() {
                return Ok(pooled.clone());
            }
        }
        let mesh = connector
            .connect(key.addr, key.expected.as_ref(), ALPN_HTTP2)
            .await?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .adaptive_window(true)
            .max_header_list_size(self.max_header_bytes)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(TokioIo::new(mesh.stream))
            .await
            .map_err(|e| ProxyError::Tls {
                target: key.addr.to_string(),
                reason: format!("HTTP/2 handshake: {e}"),
            })?;
        let addr = key.addr;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%addr, error = %e, "pooled connection ended");
            }
        });
        let pooled = Pooled {
            sender,
            peer: Arc::from(mesh.peer.as_str()),
        };
        *guard = Some(pooled.clone());
        Ok(pooled)
    }

    /// Forgets the connection for `key` (after it failed), so the next request reconnects.
    pub async fn evict(&self, key: &PoolKey) {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned();
        if let Some(slot) = slot {
            *slot.lock().await = None;
        }
    }
}
