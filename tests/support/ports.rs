//! Ports a test picks before the process that listens on them starts (or restarts).
//!
//! Such a port must lie outside the kernel's ephemeral range. Inside it, between the pick and
//! the server's bind the port can be taken by any socket bound to port 0 (a listener of a
//! test running alongside) or given to an outgoing connection as its source port; a client
//! retrying a port where nobody listens yet can even connect to itself (TCP simultaneous
//! open) and hold it. The server then fails with "address already in use". The kernel hands
//! out neither kind below the range, so a port there that is free now stays free until the
//! test's own server binds it; the tests of one binary take distinct ones.
//!
//! A port a test expects to be refused is held the other way: [`closed_port`].

#![allow(dead_code)] // each test binary uses its own part

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// Where this process's next candidate comes from (its tests run on parallel threads).
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A port on 127.0.0.1 that is free now and that no outgoing connection can take.
pub fn reserved_port() -> u16 {
    let (low, high) = candidates();
    let span = u32::from(high - low);
    // Test binaries may run side by side: each starts at its own place in the span.
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = low + offset as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {low}..{high}");
}

/// An address where nothing listens, kept so while this lives: a socket bound there that
/// does not listen refuses every connection, and no other socket (a listener bound to port 0
/// by a test running alongside, a client's source port) can take the port meanwhile.
pub struct ClosedPort {
    _socket: tokio::net::TcpSocket,
    /// The address.
    pub addr: std::net::SocketAddr,
}

/// A fresh [`ClosedPort`] on 127.0.0.1.
pub fn closed_port() -> ClosedPort {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    ClosedPort {
        _socket: socket,
        addr,
    }
}

/// The ports below the kernel's ephemeral range (net.ipv4.ip_local_port_range), above the
/// well-known ones.
fn candidates() -> (u16, u16) {
    let path = "/proc/sys/net/ipv4/ip_local_port_range";
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let first: u16 = text
        .split_whitespace()
        .next()
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("{path}: not a port range: {text:?}"));
    let low = 10_000;
    assert!(
        first > low + 1_000,
        "{path} starts at {first}: tests need ports {low}..{first} outside the ephemeral range"
    );
    (low, first)
}
