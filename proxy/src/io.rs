//! Byte-level plumbing: replaying bytes read during detection, and copying both ways with
//! half-close and an idle timeout.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::detect::{detect, Detection, Protocol, MAX_REQUEST_LINE};

/// A stream whose first bytes were already read (to detect the protocol): reads return them
/// first, then continue from the stream.
#[derive(Debug)]
pub struct PrefixedIo<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> PrefixedIo<T> {
    /// Wraps `inner`, replaying `prefix` before its own bytes.
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Self { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for PrefixedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Free the detection buffer now, not when the connection ends.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// Implements `AsyncWrite` for a wrapper `$ty<T>` by passing every write to its `$field`:
/// wrappers that change only what is read.
macro_rules! delegate_async_write {
    ($ty:ident, $field:ident) => {
        impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $ty<T> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.$field).poll_write(cx, buf)
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.$field).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.$field).poll_shutdown(cx)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.$field).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.$field.is_write_vectored()
            }
        }
    };
}
pub(crate) use delegate_async_write;

delegate_async_write!(PrefixedIo, inner);

/// Reads a connection's first bytes until its protocol is known. No bytes within `timeout`
/// (a server-speaks-first protocol) or a non-HTTP start means opaque. Returns the protocol
/// and the bytes read, to be replayed with [`PrefixedIo`]; `Err` if the peer closed first.
pub async fn read_preface<R: AsyncRead + Unpin>(
    io: &mut R,
    timeout: Duration,
) -> Result<(Protocol, Bytes), ()> {
    let deadline = Instant::now() + timeout;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if let Detection::Known(protocol) = detect(&buf) {
            return Ok((protocol, buf.freeze()));
        }
        if buf.len() >= MAX_REQUEST_LINE {
            return Ok((Protocol::Opaque, buf.freeze()));
        }
        buf.reserve(1024);
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Err(_) => return Ok((Protocol::Opaque, buf.freeze())),
            Ok(Ok(0)) if buf.is_empty() => return Err(()),
            Ok(Ok(0)) => return Ok((Protocol::Opaque, buf.freeze())),
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Err(()),
        }
    }
}

/// Bytes moved by [`copy_bidirectional`], per direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    /// From `a` to `b`.
    pub a_to_b: u64,
    /// From `b` to `a`.
    pub b_to_a: u64,
}

/// Why a copy ended early.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Neither side sent anything for the idle timeout.
    #[error("idle for {0:?}")]
    Idle(Duration),
    /// A read or write failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The buffer each direction copies through while bytes are moving: large enough for bulk
/// throughput. It is reserved when the direction polls its reader and given back as soon as
/// the reader has nothing for now, so an idle relay (a pooled database connection, say)
/// holds no buffer at all.
const COPY_BUF: usize = 64 * 1024;

/// Copies `a` <-> `b` until both directions reach end of stream, passing each half-close on
/// (a side that finishes sending has its peer's write side shut down, while the other
/// direction goes on). Ends with [`CopyError::Idle`] when no byte moved either way for
/// `idle`.
pub async fn copy_bidirectional<A, B>(
    a: A,
    b: B,
    idle: Duration,
) -> Result<Transferred, (CopyError, Transferred)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let (mut a_read, mut a_write) = tokio::io::split(a);
    let (mut b_read, mut b_write) = tokio::io::split(b);
    let a_to_b = AtomicU64::new(0);
    let b_to_a = AtomicU64::new(0);
    let forward = copy_half(&mut a_read, &mut b_write, &last, start, &a_to_b);
    let backward = copy_half(&mut b_read, &mut a_write, &last, start, &b_to_a);
    let watchdog = async {
        loop {
            let since = Duration::from_millis(last.load(Ordering::Relaxed));
            let deadline = start + since + idle;
            if Instant::now() >= deadline {
                return CopyError::Idle(idle);
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    let result = tokio::select! {
        r = async { tokio::try_join!(forward, backward) } => r.map(|_| ()).map_err(CopyError::Io),
        e = watchdog => Err(e),
    };
    let moved = Transferred {
        a_to_b: a_to_b.load(Ordering::Relaxed),
        b_to_a: b_to_a.load(Ordering::Relaxed),
    };
    match result {
        Ok(()) => Ok(moved),
        Err(e) => Err((e, moved)),
    }
}

/// Copies `reader` to `writer` until end of stream, then shuts `writer` down. Whenever the
/// reader has nothing more for now, the writer is flushed: a TLS stream accepts bytes it cannot
/// send yet (its socket is full) and sends them only on a later write or a flush, so a sender
/// that waits for an answer after its last bytes would otherwise wait forever.
async fn copy_half<R, W>(
    reader: &mut R,
    writer: &mut W,
    last: &AtomicU64,
    start: Instant,
    count: &AtomicU64,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::new();
    let mut unflushed = false;
    loop {
        let n = std::future::poll_fn(|cx| {
            // Reserved, not zeroed: the read fills what it returns, and only the pages it
            // touches become resident.
            buf.reserve(COPY_BUF);
            match tokio_util::io::poll_read_buf(Pin::new(&mut *reader), cx, &mut buf) {
                Poll::Ready(result) => Poll::Ready(result),
                Poll::Pending => {
                    // Nothing to copy for now (every byte read so far is written): give the
                    // buffer back rather than hold it for as long as the connection idles.
                    buf = BytesMut::new();
                    if unflushed {
                        std::task::ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                        unflushed = false;
                    }
                    Poll::Pending
                }
            }
        })
        .await?;
        if n == 0 {
            // The sender is done: pass the half-close on (shutting down flushes), keep the
            // other direction open.
            writer.shutdown().await?;
            return Ok(());
        }
        writer.write_all(&buf).await?;
        buf.clear();
        unflushed = true;
        count.fetch_add(n as u64, Ordering::Relaxed);
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn prefix_is_replayed_before_the_stream() {
        let (client, mut server) = tokio::io::duplex(64);
        let mut io = PrefixedIo::new(Bytes::from_static(b"GET "), client);
        server.write_all(b"/ HTTP/1.1").await.unwrap();
        drop(server);
        let mut out = String::new();
        io.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "GET / HTTP/1.1");
    }

    #[tokio::test]
    async fn copies_both_ways_and_passes_half_close_on() {
        let (app, mut app_peer) = tokio::io::duplex(1024);
        let (upstream, mut upstream_peer) = tokio::io::duplex(1024);
        let copy = tokio::spawn(copy_bidirectional(app, upstream, Duration::from_secs(5)));
        app_peer.write_all(b"request").await.unwrap();
        app_peer.shutdown().await.unwrap(); // the client half-closes
        let mut got = Vec::new();
        upstream_peer.read_to_end(&mut got).await.unwrap(); // sees EOF after the request
        assert_eq!(got, b"request");
        upstream_peer.write_all(b"late reply").await.unwrap(); // the other way still works
        upstream_peer.shutdown().await.unwrap();
        let mut reply = Vec::new();
        app_peer.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"late reply");
        let moved = copy.await.unwrap().unwrap();
        assert_eq!(
            moved,
            Transferred {
                a_to_b: 7,
                b_to_a: 10
            }
        );
    }

    #[tokio::test]
    async fn bursts_between_pauses_arrive_whole_and_in_order() {
        // Each pause leaves the reader with nothing, so the copy gives its buffer back and
        // takes a new one for the next burst; one burst is three buffers long and crosses a
        // pipe smaller than the buffer, so it arrives in many reads, some after a give-back.
        let (app, mut app_peer) = tokio::io::duplex(4096);
        let (upstream, mut upstream_peer) = tokio::io::duplex(4096);
        let copy = tokio::spawn(copy_bidirectional(app, upstream, Duration::from_secs(60)));
        let sizes = [1, 700, 3 * COPY_BUF + 5, 2, 4096];
        let mut sent = 0u64;
        for (i, size) in sizes.into_iter().enumerate() {
            let burst: Vec<u8> = (0..size).map(|b| (b * 7 + i) as u8).collect();
            let reader = async {
                let mut got = vec![0u8; size];
                upstream_peer.read_exact(&mut got).await.unwrap();
                got
            };
            let (_, got) =
                tokio::join!(async { app_peer.write_all(&burst).await.unwrap() }, reader);
            assert!(got == burst, "burst {i} of {size} bytes arrived changed");
            sent += size as u64;
            // The answer for this burst, the other way.
            upstream_peer.write_all(&[i as u8]).await.unwrap();
            let mut answer = [0u8; 1];
            app_peer.read_exact(&mut answer).await.unwrap();
            assert_eq!(answer[0], i as u8);
            tokio::task::yield_now().await;
        }
        drop(app_peer);
        drop(upstream_peer);
        let moved = copy.await.unwrap().unwrap();
        assert_eq!(
            moved,
            Transferred {
                a_to_b: sent,
                b_to_a: sizes.len() as u64
            }
        );
    }

    /// Both ends of a mesh connection: mutual TLS 1.3 with SVIDs from our CA, as between two
    /// sidecars, over a pipe that holds only `capacity` bytes. The server's side is ready once
    /// the client's has been read from (its session tickets come after the handshake).
    async fn mtls_over_pipe(
        capacity: usize,
    ) -> (
        tokio_rustls::client::TlsStream<tokio::io::DuplexStream>,
        tokio::task::JoinHandle<tokio_rustls::server::TlsStream<tokio::io::DuplexStream>>,
    ) {
        use warden_core::{SpiffeId, TrustDomain};
        use warden_identity::ca::{self, InitOptions};
        use warden_identity::tls::{self, ClientAuth};
        use warden_identity::{ExpectedPeer, TrustStore};
        let authority = ca::generate(&InitOptions::new(TrustDomain::default()))
            .unwrap()
            .authority()
            .unwrap();
        let store = Arc::new(TrustStore::single(authority.bundle().clone()));
        let id = |sa: &str| SpiffeId::parse(&format!("spiffe://cluster.local/ns/t/sa/{sa}"));
        let (client_id, server_id) = (id("client").unwrap(), id("server").unwrap());
        let hour = Duration::from_secs(3600);
        let server = tls::server_config(
            &authority.issue(&server_id, hour).unwrap(),
            store.clone(),
            &[],
            ClientAuth::Required,
        )
        .unwrap();
        let client = tls::client_config(
            &authority.issue(&client_id, hour).unwrap(),
            store,
            ExpectedPeer::Exact(server_id),
            &[],
        )
        .unwrap();
        let (client_io, server_io) = tokio::io::duplex(capacity);
        let accept = tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
            acceptor.accept(server_io).await.unwrap()
        });
        let name = rustls::pki_types::ServerName::try_from("server.mesh").unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        (connector.connect(name, client_io).await.unwrap(), accept)
    }

    #[tokio::test(start_paused = true)]
    async fn what_the_tls_stream_holds_is_flushed_when_the_sender_pauses() {
        // Over a 64-byte pipe the TLS stream sends a piece of each record and keeps the rest
        // (as with a full socket), sending it only when written to or flushed again. The
        // sender's bytes, then it waits for an answer without closing: they must all reach
        // the other sidecar, not stay in the stream (a bulk transfer stalled so).
        let (upstream, accept) = mtls_over_pipe(64).await;
        let (app, mut app_peer) = tokio::io::duplex(1 << 16);
        let copy = tokio::spawn(copy_bidirectional(app, upstream, Duration::from_secs(300)));
        let mut upstream_peer = accept.await.unwrap();
        let request: Vec<u8> = (0..=255u8).cycle().take(20_000).collect();
        app_peer.write_all(&request).await.unwrap();
        let mut got = vec![0u8; request.len()];
        tokio::time::timeout(Duration::from_secs(60), upstream_peer.read_exact(&mut got))
            .await
            .expect("the copied bytes stayed in the TLS stream")
            .unwrap();
        assert_eq!(got, request);
        // The answer comes back the same way.
        upstream_peer.write_all(b"20000").await.unwrap();
        upstream_peer.flush().await.unwrap();
        let mut answer = [0u8; 5];
        app_peer.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"20000");
        copy.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_closed() {
        let (app, _app_peer) = tokio::io::duplex(1024);
        let (upstream, _upstream_peer) = tokio::io::duplex(1024);
        let err = copy_bidirectional(app, upstream, Duration::from_secs(30))
            .await
            .unwrap_err();
        assert!(matches!(err.0, CopyError::Idle(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_in_either_direction_keeps_it_open() {
        let (app, mut app_peer) = tokio::io::duplex(1024);
        let (upstream, mut upstream_peer) = tokio::io::duplex(1024);
        let copy = tokio::spawn(copy_bidirectional(app, upstream, Duration::from_secs(30)));
        // Only the server talks, every 20 s, for 100 s: never idle for 30 s.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(20)).await;
            upstream_peer.write_all(b"tick").await.unwrap();
            let mut buf = [0u8; 4];
            app_peer.read_exact(&mut buf).await.unwrap();
        }
        assert!(!copy.is_finished());
        drop(app_peer);
        drop(upstream_peer);
        let _ = copy.await.unwrap();
    }
}
