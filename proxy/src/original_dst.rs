//! The destination a connection was headed for before iptables redirected it to the proxy:
//! `SO_ORIGINAL_DST` (IPv4) and `IP6T_SO_ORIGINAL_DST` (IPv6), read from conntrack.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

/// `SO_ORIGINAL_DST` from `<linux/netfilter_ipv4.h>`; `IP6T_SO_ORIGINAL_DST` has the same value.
const SO_ORIGINAL_DST: libc::c_int = 80;

/// The original destination of a redirected TCP connection. Errors (`ENOENT`) when the
/// connection was not redirected.
pub fn original_dst(socket: &tokio::net::TcpStream) -> io::Result<SocketAddr> {
    let local = socket.local_addr()?;
    let fd = socket.as_raw_fd();
    // An IPv4 connection (also one accepted on a dual-stack socket) has an IPv4 conntrack
    // entry; an IPv6 one an IPv6 entry.
    let v4 = match local {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().is_some(),
    };
    if v4 {
        getsockopt_v4(fd).map(SocketAddr::V4)
    } else {
        getsockopt_v6(fd).map(SocketAddr::V6)
    }
}

fn getsockopt_v4(fd: libc::c_int) -> io::Result<SocketAddrV4> {
    let mut addr = MaybeUninit::<libc::sockaddr_in>::zeroed();
    let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `addr` is a writable sockaddr_in of `len` bytes; the kernel writes at most
    // `len` bytes and reports how many. `fd` is a live socket borrowed for this call.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            addr.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the call succeeded, so the kernel initialized the structure.
    let addr = unsafe { addr.assume_init() };
    Ok(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
        u16::from_be(addr.sin_port),
    ))
}

fn getsockopt_v6(fd: libc::c_int) -> io::Result<SocketAddrV6> {
    let mut addr = MaybeUninit::<libc::sockaddr_in6>::zeroed();
    let mut len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    // SAFETY: as above, for a sockaddr_in6.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_IPV6,
            SO_ORIGINAL_DST,
            addr.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the call succeeded, so the kernel initialized the structure.
    let addr = unsafe { addr.assume_init() };
    Ok(SocketAddrV6::new(
        Ipv6Addr::from(addr.sin6_addr.s6_addr),
        u16::from_be(addr.sin6_port),
        addr.sin6_flowinfo,
        addr.sin6_scope_id,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_that_was_not_redirected_has_no_original_destination() {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(listener) = tokio::net::TcpListener::bind(bind).await else {
                continue;
            };
            let addr = listener.local_addr().unwrap();
            let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            assert!(original_dst(&server).is_err(), "{bind}");
        }
    }
}
