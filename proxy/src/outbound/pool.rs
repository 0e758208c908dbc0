//! Pooled proxy-to-proxy HTTP/2 connections: one mTLS connection per destination and
//! expected identity, shared by every app connection and request to it. A closed connection
//! is replaced on next use; one unused for the idle timeout is dropped by [`Pool::sweep`],
//! so the pool follows the app's current fan-out, not every destination it ever called.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use warden_core::contract::ALPN_HTTP2;

use crate::h2_client::{self, Sender};
use crate::http::ProxyError;
use crate::mesh::{Expected, MeshConnector};

/// Where a pooled connection goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The peer proxy's address.
    pub addr: SocketAddr,
    /// The identities that may answer (empty: any of a trusted trust domain). Part of the
    /// key: a connection verified for one set is never reused for another.
    pub expected: Expected,
}

/// A usable pooled connection and the peer's verified identity.
#[derive(Debug, Clone)]
pub struct Pooled {
    /// Opens streams on the shared connection.
    pub sender: Sender,
    /// The peer's SPIFFE ID (for metrics and logs).
    pub peer: Arc<str>,
    /// Which connection this is: a failed one is forgotten only while it is still the
    /// pooled one, never the connection that replaced it.
    pub id: u64,
}

type Slot = Arc<tokio::sync::Mutex<Option<Pooled>>>;

/// The receive window of a pooled connection (bytes); each stream gets a quarter of it.
pub const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

/// How often a pooled connection is pinged, idle or not.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// How long a ping may go unanswered before its connection is closed.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A destination's slot and when it was last asked for.
#[derive(Debug)]
struct Entry {
    slot: Slot,
    last_used: Instant,
}

/// The pool.
#[derive(Debug, Default)]
pub struct Pool {
    /// Hashed with a fast, per-process seeded hasher: looked up on every request.
    slots: Mutex<HashMap<PoolKey, Entry, foldhash::fast::RandomState>>,
    max_header_bytes: u32,
}

impl Pool {
    /// An empty pool; connections accept response headers up to `max_header_bytes`.
    pub fn new(max_header_bytes: usize) -> Self {
        Self {
            slots: Mutex::new(HashMap::default()),
            max_header_bytes: u32::try_from(max_header_bytes).unwrap_or(u32::MAX),
        }
    }

    /// The connection for `key` if there is one now (no wait: none while another request
    /// connects or checks the slot), open or not (sending says); the usual case, without
    /// `get`'s future.
    pub fn try_get(&self, key: &PoolKey) -> Option<Pooled> {
        // The map's lock is not held while the slot is looked at.
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let entry = slots.get_mut(key)?;
            entry.last_used = Instant::now();
            entry.slot.clone()
        };
        let pooled = slot.try_lock().ok()?;
        pooled.clone()
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
            let entry = slots.entry(key.clone()).or_insert_with(|| Entry {
                slot: Slot::default(),
                last_used: Instant::now(),
            });
            entry.last_used = Instant::now();
            entry.slot.clone()
        };
        let mut guard = slot.lock().await;
        if let Some(pooled) = guard.as_ref() {
            if pooled.sender.is_open() {
                return Ok(pooled.clone());
            }
        }
        // Boxed: connecting holds a TLS handshake's state (kilobytes), which every request's
        // future would otherwise carry, and copy each time it moves, for the rare request
        // that connects.
        let pooled = Box::pin(self.connect(key, connector)).await?;
        *guard = Some(pooled.clone());
        Ok(pooled)
    }

    /// A new mTLS HTTP/2 connection for `key`.
    async fn connect(
        &self,
        key: &PoolKey,
        connector: &MeshConnector,
    ) -> Result<Pooled, ProxyError> {
        let mesh = connector
            .connect(key.addr, &key.expected, ALPN_HTTP2)
            .await?;
        let settings = h2_client::Settings {
            // Fixed windows, not adaptive ones starting at 64 KiB: h2 closes a connection
            // on which more small DATA frames sit unread than a budget of half the
            // connection window allows (~130 frames at 64 KiB). One slow reader of a
            // stream of small gRPC messages would otherwise fail every call sharing the
            // connection. 4 MiB: ~8,000 such frames; memory is only used while a reader lags.
            stream_window: CONNECTION_WINDOW / 4,
            connection_window: CONNECTION_WINDOW,
            max_header_list_size: self.max_header_bytes,
            keepalive: Some(h2_client::Keepalive {
                interval: KEEPALIVE_INTERVAL,
                timeout: KEEPALIVE_TIMEOUT,
            }),
        };
        let sender = h2_client::handshake(mesh.stream, &settings, key.addr)
            .await
            .map_err(|e| ProxyError::Tls {
                target: key.addr.to_string(),
                reason: format!("HTTP/2 handshake: {e}"),
            })?;
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Ok(Pooled {
            sender,
            peer: Arc::from(mesh.peer.as_str()),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Forgets connection `id` for `key` (after it failed), so the next request reconnects;
    /// a newer connection in its place stays.
    pub async fn evict(&self, key: &PoolKey, id: u64) {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .map(|e| e.slot.clone());
        if let Some(slot) = slot {
            let mut pooled = slot.lock().await;
            if pooled.as_ref().is_some_and(|p| p.id == id) {
                *pooled = None;
            }
        }
    }

    /// Drops the destinations not asked for within `idle` (their connection closes once the
    /// requests still using it end) and those whose connection has closed; returns how many
    /// remain.
    pub fn sweep(&self, idle: Duration) -> usize {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|_, entry| {
            if entry.last_used.elapsed() >= idle {
                return false;
            }
            // A slot in use (connecting or being read) stays.
            match entry.slot.try_lock() {
                Ok(pooled) => pooled.as_ref().is_some_and(|p| p.sender.is_open()),
                Err(_) => true,
            }
        });
        slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> PoolKey {
        PoolKey {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            expected: crate::mesh::any_trusted(),
        }
    }

    #[tokio::test]
    async fn evicting_a_failed_connection_keeps_the_one_that_replaced_it() {
        // A real HTTP/2 client over an in-memory pipe whose server end is never read: open
        // while that end is held.
        let (io, _server) = tokio::io::duplex(64 * 1024);
        let settings = h2_client::Settings {
            stream_window: 65_535,
            connection_window: 65_535,
            max_header_list_size: 16 * 1024,
            keepalive: None,
        };
        let sender = h2_client::handshake(io, &settings, "test").await.unwrap();
        let pool = Pool::new(16 * 1024);
        let slot = Slot::default();
        *slot.lock().await = Some(Pooled {
            sender,
            peer: Arc::from("spiffe://cluster.local/ns/a/sa/b"),
            id: 2,
        });
        pool.slots.lock().unwrap().insert(
            key(1),
            Entry {
                slot: slot.clone(),
                last_used: Instant::now(),
            },
        );
        pool.evict(&key(1), 1).await;
        assert_eq!(
            slot.lock().await.as_ref().map(|p| p.id),
            Some(2),
            "a newer connection stays"
        );
        assert_eq!(pool.try_get(&key(1)).map(|p| p.id), Some(2));
        pool.evict(&key(1), 2).await;
        assert!(slot.lock().await.is_none(), "the failed one goes");
        assert!(pool.try_get(&key(1)).is_none());
    }

    #[tokio::test]
    async fn sweeping_drops_idle_and_dead_destinations_and_keeps_busy_ones() {
        let pool = Pool::new(16 * 1024);
        let long_ago = Instant::now() - Duration::from_secs(600);
        let busy = Slot::default();
        let guard = busy.lock().await; // connecting right now
        {
            let mut slots = pool.slots.lock().unwrap();
            for (port, last_used, slot) in [
                (1, long_ago, Slot::default()),       // idle
                (2, Instant::now(), Slot::default()), // never connected (a failed connect)
                (3, Instant::now(), busy.clone()),    // in use
                (4, long_ago, busy.clone()),          // in use, but not asked for in ages
            ] {
                slots.insert(key(port), Entry { slot, last_used });
            }
        }
        assert_eq!(pool.sweep(Duration::from_secs(300)), 1);
        assert!(pool.slots.lock().unwrap().contains_key(&key(3)));
        drop(guard);
        assert_eq!(
            pool.sweep(Duration::from_secs(300)),
            0,
            "an empty slot goes"
        );
    }
}
